"""``lpo-train train``: YAML recipe + CLI overrides -> LPOTrainer (also ``scripts/train_lpo.py``)."""

from __future__ import annotations

from lpo_train.trainers import LPOConfig, LPOTrainer


def parse_config(argv: list[str] | None = None) -> LPOConfig:
    """``--config recipe.yaml`` sets defaults; ``--key value`` flags override them (TRL's parser)."""
    from lpo_train.cli_args import parse_config as parse

    (config,) = parse([LPOConfig], argv, "lpo-train train", "Train an AdaptiveDecoder head with LPO.")
    return config


def main(argv: list[str] | None = None) -> LPOTrainer:
    config = parse_config(argv)
    trainer = LPOTrainer(args=config)
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    trainer.save_model()
    if config.push_to_hub:
        trainer.push_to_hub()
    if trainer.is_world_process_zero():
        print(f"saved the AdaptiveDecoder head to {config.output_dir}")
    return trainer


if __name__ == "__main__":
    main()
