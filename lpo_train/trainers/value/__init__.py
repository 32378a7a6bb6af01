"""Companion trainers for guided decoding (``lpo-train train-value implicit|explicit|reward``), one module each:

- ``data``: the responses they train on (sampled by a small LM, scored by a gold reward), the held-out split,
  preference pairs (built by ``lpo_train.pairs``) and pairwise accuracy;
- ``implicit``: DPO (TRL's ``DPOTrainer``) of a copy of the small LM; tuned vs untuned give the implicit value;
- ``explicit``: ``ExplicitValueTrainer``, a value model (token or shared head) on every prefix (bce or mse);
- ``reward``: a sequence reward model (TRL's ``RewardTrainer``; best-of-N, ARGS);
- ``cli``: the ``train-value`` subcommands.

Every public name is importable from here.
"""

from lpo_train.trainers.value.cli import KINDS, main
from lpo_train.trainers.value.data import (
    PAIR_MODES,
    ValueDataArguments,
    build_preference_pairs,
    load_prompts,
    pairwise_accuracy,
    prepare_output_dir,
    sample_responses,
    split_by_prompt,
    training_pairs,
    trl_dataset,
    write_metrics,
)
from lpo_train.trainers.value.explicit import (
    VALUE_LOSSES,
    ExplicitValueConfig,
    ExplicitValueTrainer,
    train_explicit_value,
)
from lpo_train.trainers.value.implicit import train_implicit_value
from lpo_train.trainers.value.reward import train_reward_model

__all__ = [
    "KINDS", "PAIR_MODES", "VALUE_LOSSES", "ExplicitValueConfig", "ExplicitValueTrainer", "ValueDataArguments",
    "build_preference_pairs", "load_prompts", "main", "pairwise_accuracy", "prepare_output_dir", "sample_responses",
    "split_by_prompt", "train_explicit_value", "train_implicit_value", "train_reward_model", "training_pairs",
    "trl_dataset", "write_metrics",
]
