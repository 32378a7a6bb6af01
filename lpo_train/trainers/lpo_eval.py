"""``LPOTrainer.evaluate``: the head's held-out reward and choices on ``eval_dataset`` (TRL's ``eval_dataset`` /
``eval_strategy`` / ``eval_steps``). Each evaluation prompt is sampled ``num_generations`` times with the head at
``argmax`` (what serving uses; no exploration), with seeds that depend on the prompt and its position only, so
every evaluation of a run sees the same random numbers and the curve over steps compares heads, not draws. The
rewards are the training rewards. Metrics (``eval_`` + the training name, docs/metrics.md): ``reward``,
``reward/<family>``, ``rewards/<func>/mean``, ``frac_rewards_invalid``, ``completions/mean_length`` and the
``choice/...`` metrics, each a mean over every sample (or decision) on every process."""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict

from lpo_train.decoding import AdaptiveDecoderRule
from lpo_train.decoding.randomness import seed_for
from lpo_train.rewards import PRIVATE_COLUMN, reward_name, score_traces
from lpo_train.trainers import lpo_rollout
from lpo_train.trainers.lpo_metrics import reduce_across_processes

logger = logging.getLogger(__name__)
EVAL_SEED_OFFSET = 4242  # eval_dataset_name's dataset seed = the training prompts' + this (as the replications draw
# held-out toy prompts): a generated dataset (toy, reasoning_gym) then gives other prompts than training's


def eval_seed(trainer, row) -> int:
    """The same seed at every evaluation of a run: the run's seed, the prompt and its position."""
    return seed_for(trainer.args.seed, "eval", str(row["prompt"]), row.get(PRIVATE_COLUMN))


def each(data, prepare):
    """``prepare(dataset, what)`` on an eval dataset, or on each of TRL's dict of named ones (``what`` names it in
    messages: 'eval' or 'eval <name>')."""
    if isinstance(data, dict):
        return {name: prepare(d, f"eval {name}") for name, d in data.items()}
    return prepare(data, "eval")


def prepare(trainer, args, dataset, what: str = "eval"):
    """Prompts (already checked) made ready to evaluate: over-long ones dropped (and said), rows numbered."""
    return lpo_rollout.with_positions(lpo_rollout.drop_long_prompts(trainer, dataset, args, what))


def evaluate(trainer, eval_dataset=None, prefix: str = "eval") -> dict[str, float]:
    """``LPOTrainer.evaluate``: on ``eval_dataset`` (prompts; or the name of one of the trainer's named eval
    datasets) or the trainer's, logged and returned as ``{prefix}_<metric>``; a dict of named datasets (TRL's form)
    gives ``{prefix}_<name>_<metric>`` for each."""
    from transformers import Trainer

    if isinstance(eval_dataset, str) and isinstance(trainer.eval_dataset, dict):
        dataset = trainer.eval_dataset[eval_dataset]  # Trainer's per-name call during training
    elif eval_dataset is None:
        dataset = trainer.eval_dataset
    else:
        dataset = each(eval_dataset, lambda d, what: prepare(trainer, trainer.args, lpo_rollout.check_prompts(
            d, trainer.args, False, what), what))
    if dataset is None:
        raise ValueError("Nothing to evaluate on: give LPOTrainer(eval_dataset=...), eval_dataset_name, or "
                         "evaluate(eval_dataset=...).")
    named = dataset if isinstance(dataset, dict) else {None: dataset}
    metrics = {}
    for name, d in named.items():
        found = evaluate_head(trainer, d, prefix if name is None else f"{prefix}_{name}")
        Trainer.log(trainer, dict(found))  # not LPOTrainer.log: the training metrics pending stay for their own log
        trainer.control = trainer.callback_handler.on_evaluate(trainer.args, trainer.state, trainer.control, found)
        metrics.update(found)
    return metrics


def evaluate_head(trainer, dataset, prefix: str = "eval") -> dict[str, float]:
    """``{prefix}_<metric>``: the head's held-out metrics on ``dataset`` (prompts already checked and numbered);
    this process samples every ``num_processes``-th prompt, ``per_device_eval_batch_size`` prompts at a time (their
    traced hidden states are dropped once scored); every process makes the same collective calls."""
    start = time.time()
    acc = trainer.accelerator
    rows = [dataset[i] for i in range(acc.process_index, len(dataset), acc.num_processes)]
    size = max(1, trainer.args.per_device_eval_batch_size)
    local: dict[str, list[float]] = defaultdict(list)
    with trainer.head_for_generation() as head:  # under ZeRO-3 a collective gather: every rank enters it once
        rule = AdaptiveDecoderRule(head, "argmax")
        for first in range(0, len(rows), size):
            chunk = rows[first:first + size]
            traces = lpo_rollout.sample(trainer, chunk, head, rule=rule, seeds=[eval_seed(trainer, r) for r in chunk],
                                        for_loss=False)
            _record(trainer, head, chunk, traces, local)
    metrics = reduce_across_processes(acc, local)
    if not math.isfinite(metrics.get("reward", math.nan)):
        logger.warning("Evaluation at step %d: no valid reward on the %d evaluation prompts (every reward None, NaN "
                       "or infinite): eval_reward is NaN. Check that the rewards read the eval dataset's columns.",
                       trainer.state.global_step, len(dataset))
    metrics = {f"{prefix}_{k}": v for k, v in metrics.items()}
    metrics[f"{prefix}_runtime"] = round(time.time() - start, 4)
    return metrics


def _record(trainer, head, rows, traces, local: dict[str, list[float]]) -> None:
    """Score ``traces`` (of ``rows``) and append each sample's metrics (and each decision's) to ``local``."""
    if not traces:
        return
    rewards, per_func = score_traces(trainer.reward_funcs, trainer.reward_weights, rows, traces)
    grid = head.config.grid
    entropies, expected = lpo_rollout.head_decision_stats(head, traces)
    names = [reward_name(f) for f in trainer.reward_funcs]
    for i, t in enumerate(traces):
        family = rows[t.prompt_index].get("family")
        reward = float(rewards[i])
        local["frac_rewards_invalid"].append(float(math.isnan(reward)))
        local["completions/mean_length"].append(float(len(t.token_ids)))
        local["reward"].append(reward)  # NaN (invalid) rewards are left out of every mean, and counted above
        for j, name in enumerate(names):
            local[f"rewards/{name}/mean"].append(float(per_func[i, j]))
        for key in ["choice"] + ([f"choice/{family}"] if family is not None else []):
            local[f"{key}/entropy"].append(entropies[i])
            local[f"{key}/kl_from_uniform"].append(math.log(len(grid)) - entropies[i])
            local[f"{key}/head_mean_value"].append(expected[i])
            local[f"{key}/mean_value"].extend(float(v) for v in t.values)
            for k, g in enumerate(grid):
                local[f"{key}/frac_{g:g}"].extend(float(c == k) for c in t.choices)
        if family is not None:
            local[f"reward/{family}"].append(reward)
