"""The paper's offline protocol: the training units sampled and scored once with the initial head, stored as
parquet with what produced them (a file built under other settings is an error naming them), then trained on."""

from __future__ import annotations

import logging
from pathlib import Path

from lpo_train.rewards import PRIVATE_COLUMN, reward_name
from lpo_train.trainers.lpo_io import check_pairs_fingerprint, write_pairs_dataset
from lpo_train.trainers.lpo_rollout import LPOTrainingFailed, rollout_units, with_positions
from lpo_train.utils.io import texts_fingerprint

logger = logging.getLogger(__name__)


def offline_pairs(trainer, prompts):
    """Load the units dataset at ``pairs_path``, or build it once (main process) and load it. The file records
    what produced it (``_pairs_fingerprint``): one built under other settings is an error naming them."""
    import datasets

    path = Path(trainer.args.pairs_path)
    if not path.exists():
        with trainer.accelerator.main_process_first():
            if trainer.accelerator.is_main_process and not path.exists():
                build_pairs_dataset(trainer, prompts, path)
    check_pairs_fingerprint(path, pairs_fingerprint(trainer))
    return datasets.load_dataset("parquet", data_files=str(path), split="train")


def pairs_fingerprint(trainer) -> dict:
    """What an offline units file depends on: a file built under any other value is stale."""
    args, head = trainer.args, trainer.bare_head()
    return {"model": str(trainer.lm.config.name_or_path), "level": head.config.level, "knob": head.config.knob,
            "grid": list(head.config.grid), "loss_type": args.loss_type, "unit": trainer.objective.unit,
            "pair_mode": args.pair_mode, "pair_top_k": args.pair_top_k,
            "rewards": [reward_name(f) for f in trainer.reward_funcs], "reward_weights": list(trainer.reward_weights),
            "num_generations": args.num_generations, "seed": args.seed, "exploration": args.exploration,
            "exploration_epsilon": args.exploration_epsilon, **args.truncation(),
            "max_completion_length": args.max_completion_length, "dataset": args.dataset_name,
            "prompts": texts_fingerprint(str(p) for p in trainer.train_dataset["prompt"])}


def build_pairs_dataset(trainer, prompts, path: str | Path | None = None, chunk_size: int = 64):
    """The paper's offline protocol: sample and score once with the current (initial) head, keep the training
    units (pairs, or groups for lpo_regression) with their traced features (and what is needed to re-score
    them), and save them as parquet when ``path`` is given. Returns a ``datasets.Dataset``."""
    import datasets
    from tqdm.auto import tqdm

    records, completions, informative = [], [], 0
    if PRIVATE_COLUMN not in prompts.column_names:
        prompts = with_positions(prompts)
    starts = range(0, len(prompts), chunk_size)
    for start in tqdm(starts, desc="offline LPO: sampling and pairing", unit="chunk",
                      disable=not trainer.is_world_process_zero()):
        chunk = [prompts[i] for i in range(start, min(start + chunk_size, len(prompts)))]
        _, stored, counts = rollout_units(trainer, chunk, keep_records=True)
        records += stored
        informative += int(counts[0])
        completions += trainer.last_completions
        logger.info("offline units: %d from %d prompts", len(records), min(start + chunk_size, len(prompts)))
    if not records or not informative:
        raise LPOTrainingFailed("No pair could be built from the prompts: every group tied or had no valid reward.")
    trainer.last_completions, trainer.completions_step = completions, 0  # every sample, once, as "step 0": before training
    # the pair-building's own sampling metrics, under their own names: not mixed into the first step's
    built = {f"pairs_build/{k}": v for k, v in trainer._metrics.items()}
    trainer._metrics.clear()
    trainer._metrics.update(built)
    dataset = datasets.Dataset.from_list(records)
    if path is not None:
        write_pairs_dataset(dataset, path, pairs_fingerprint(trainer))
    return dataset
