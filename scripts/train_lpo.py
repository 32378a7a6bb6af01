"""Train an AdaptiveDecoder head with LPO; same as ``lpo-train train``, for ``accelerate launch``:

    accelerate launch --config_file accelerate_configs/ddp.yaml scripts/train_lpo.py --config recipes/toy/lpo_seq.yaml
"""

from lpo_train.train import main

if __name__ == "__main__":
    main()
