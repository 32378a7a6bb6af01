"""``lpo-train train-value --kind implicit|explicit|reward --config recipe.yaml [--key value ...]``."""

from __future__ import annotations

import json


def main(argv: list[str] | None = None) -> dict:
    """``lpo-train train-value --kind implicit|explicit|reward --config recipe.yaml [--key value ...]``."""
    from trl import DPOConfig, RewardConfig

    from lpo_train.cli_args import parse_config
    from lpo_train.config import LoraArguments
    from lpo_train.trainers.value.data import ValueDataArguments
    from lpo_train.trainers.value.explicit import ExplicitValueConfig, train_explicit_value
    from lpo_train.trainers.value.implicit import train_implicit_value
    from lpo_train.trainers.value.reward import train_reward_model

    argv = [x for a in (argv or []) for x in (a.split("=", 1) if a.startswith("--kind=") else [a])]
    kind = None
    if "--kind" in argv:
        i = argv.index("--kind")
        kind = argv[i + 1] if i + 1 < len(argv) else None
        del argv[i:i + 2]
    kinds = {"implicit": (DPOConfig, train_implicit_value), "explicit": (ExplicitValueConfig, train_explicit_value),
             "reward": (RewardConfig, train_reward_model)}
    if kind is None and any(a in ("-h", "--help") for a in argv):
        kind = "explicit"  # help without a kind: show the shared data options and one kind's
        print("lpo-train train-value --kind implicit|explicit|reward [--config recipe.yaml] [--key value ...]\n"
              "  (options below: the data arguments and --kind explicit's; --kind implicit takes TRL's DPOConfig, "
              "--kind reward TRL's RewardConfig)\n")
    if kind not in kinds:
        raise SystemExit("lpo-train train-value needs --kind implicit (DPO of a small tuned model), --kind explicit "
                         "(a value model) or --kind reward (a sequence reward model, TRL's RewardTrainer).")
    config_cls, train = kinds[kind]
    classes = [ValueDataArguments, config_cls] + ([LoraArguments] if kind in ("implicit", "explicit") else [])
    data, args, *lora = parse_config(classes, argv, f"lpo-train train-value --kind {kind}",
                                     "Train a guidance model for value-guided decoding.")
    metrics = train(data, args, lora[0].peft_config()) if lora else train(data, args)
    print(json.dumps(metrics, indent=2))
    return metrics
