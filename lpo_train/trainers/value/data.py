"""The value trainers' data: sampled, scored responses (``sample_responses``), the held-out split by prompt,
preference pairs for TRL (``build_preference_pairs``, built by ``lpo_train.pairs``), and what the three
trainers share around them (the output-folder check, ``value_metrics.json``, pairwise accuracy)."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from lpo_train.cli_args import help_field as _help
from lpo_train.config import PromptDataArguments, RewardArguments, SamplingArguments, default_of
from lpo_train.pairs import BEST_WORST, BRADLEY_TERRY, VALUE_PAIR_MODES, bradley_terry_pairs, build_pairs
from lpo_train.registry import default_rewards
from lpo_train.utils.io import write_text_atomic

PAIR_MODES = VALUE_PAIR_MODES  # train-value's pair_mode (declared in lpo_train.pairs)


@dataclass
class ValueDataArguments(PromptDataArguments, SamplingArguments, RewardArguments):
    """Where the training responses come from (shared by both kinds). ``dataset_seed`` also seeds the
    sampling and the labels."""

    model_name_or_path: str | None = _help(
        "The model to train: the untuned small LM (implicit) or the value model's backbone (explicit): a path, "
        "a Hub id, 'toy:small' / 'toy:base' or 'smollm2'.", None)
    sampler_model: str | None = _help("The LM that samples the responses (default: model_name_or_path).", None)
    dataset_name: str | None = default_of(PromptDataArguments, "dataset_name", "toy")
    toy_prompts_per_family: int = default_of(PromptDataArguments, "toy_prompts_per_family", 256)
    dataset_seed: int = default_of(PromptDataArguments, "dataset_seed", 0)
    num_generations: int = default_of(SamplingArguments, "num_generations", 4)
    max_completion_length: int = default_of(SamplingArguments, "max_completion_length", 48)
    sampling_temperature: float = _help("Temperature of the sampler.", 1.0)
    pair_mode: str = _help(f"Implicit pairs: one of {PAIR_MODES}.", BRADLEY_TERRY)
    bt_scale: float = _help("Bradley-Terry labels: P(a preferred) = sigmoid(bt_scale * (r_a - r_b)).", 1.0)
    eval_fraction: float = _help("Share of prompts held out for evaluation (pairwise accuracy).", 0.1)
    overwrite_output_dir: bool = _help("Replace a trained model (or checkpoints) already in output_dir.", False)

    def __post_init__(self):
        self.toy_families = self.toy_families or ["sentiment"]
        self.reward_funcs = self.reward_funcs or default_rewards(self.dataset_name)
        if self.pair_mode not in PAIR_MODES:
            raise ValueError(f"pair_mode must be one of {PAIR_MODES}, got {self.pair_mode!r}.")
        if self.num_generations < 2:
            raise ValueError(f"num_generations must be >= 2 to build pairs, got {self.num_generations}.")
        self.check_decoding()
        if not 0 <= self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}.")


def load_prompts(data: ValueDataArguments) -> list[dict]:
    return list(data.load_prompts())


def sample_responses(data: ValueDataArguments, rows: list[dict] | None = None) -> list[dict]:
    """N responses per prompt from the sampler, each with its gold reward: records with ``prompt_index``,
    ``prompt`` (as in the dataset), ``completion`` (text), ``prompt_ids``, ``completion_ids``, ``reward``."""
    from lpo_train.decoding import FixedTemperature, SamplingParams
    from lpo_train.decoding.vllm import sample_with
    from lpo_train.models.loading import load_causal_lm
    from lpo_train.rewards import resolve_rewards, score_traces

    rows = rows if rows is not None else load_prompts(data)
    if not rows:
        raise ValueError("The prompt dataset is empty.")
    funcs, weights = resolve_rewards(data.reward_funcs, data.reward_weights)
    model, tokenizer = load_causal_lm(data.sampler_model or data.model_name_or_path)
    traces = sample_with(data, model, tokenizer, [r["prompt"] for r in rows], FixedTemperature(data.sampling_temperature),
                         SamplingParams(max_new_tokens=data.max_completion_length, num_samples=data.num_generations,
                                        seed=data.dataset_seed, batch_size=data.generation_batch_size,
                                        **data.engine_options()), what="use_vllm (train-value)")
    rewards, _ = score_traces(funcs, weights, rows, traces)
    return [{"prompt_index": t.prompt_index, "prompt": rows[t.prompt_index]["prompt"], "completion": t.text,
             "prompt_ids": t.prompt_ids, "completion_ids": t.token_ids, "reward": float(r)}
            for t, r in zip(traces, rewards.tolist()) if not math.isnan(r)]


def split_by_prompt(records: list[dict], eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    prompts = sorted({r["prompt_index"] for r in records})
    random.Random(f"split-{seed}").shuffle(prompts)
    held = set(prompts[:int(round(eval_fraction * len(prompts)))])
    return ([r for r in records if r["prompt_index"] not in held], [r for r in records if r["prompt_index"] in held])


def _as_message(completion: str, prompt) -> list[dict] | str:
    return [{"role": "assistant", "content": completion}] if isinstance(prompt, list) else completion


def build_preference_pairs(records: list[dict], mode: str = BRADLEY_TERRY, bt_scale: float = 1.0,
                           seed: int = 0) -> list[dict]:
    """TRL preference rows ``{prompt, chosen, rejected}`` (conversational when prompts are), one per prompt
    (in prompt_index order), chosen by ``lpo_train.pairs``:

    ``bradley_terry`` (``bradley_terry_pairs``): the first two responses of each prompt; the first is chosen with
    probability sigmoid(bt_scale * (r_a - r_b)) (a coin flip on ties). ``best_worst`` (``build_pairs``): highest
    vs lowest reward, the first in record order among equal ones; prompts whose responses all tie are skipped.
    NaN rewards are dropped first (``sample_responses`` keeps none).
    """
    if mode not in PAIR_MODES:
        raise ValueError(f"mode must be one of {PAIR_MODES}, got {mode!r}.")
    by_prompt: dict[int, list[dict]] = {}
    for r in records:
        by_prompt.setdefault(r["prompt_index"], []).append(r)
    groups = [group for _, group in sorted(by_prompt.items())]
    rewards = [[r["reward"] for r in group] for group in groups]
    chosen_pairs = (bradley_terry_pairs(rewards, bt_scale, seed) if mode == BRADLEY_TERRY
                    else build_pairs(rewards, BEST_WORST))[0]
    pairs = []
    for pair in chosen_pairs:
        chosen, rejected = groups[pair.prompt_index][pair.chosen], groups[pair.prompt_index][pair.rejected]
        prompt = chosen["prompt"]
        pairs.append({"prompt": prompt, "chosen": _as_message(chosen["completion"], prompt),
                      "rejected": _as_message(rejected["completion"], prompt),
                      "chosen_reward": chosen["reward"], "rejected_reward": rejected["reward"]})
    return pairs


def training_pairs(data: ValueDataArguments) -> tuple[list[dict], list[dict]]:
    """Preference pairs from sampled, scored responses of the training prompts; and the held-out records."""
    train, held = split_by_prompt(sample_responses(data), data.eval_fraction, data.dataset_seed)
    pairs = build_preference_pairs(train, data.pair_mode, data.bt_scale, data.dataset_seed)
    if not pairs:
        raise ValueError("No preference pairs: every prompt's responses tied. Sample more (num_generations) or "
                         "use a reward that separates responses.")
    return pairs, held


def trl_dataset(pairs: list[dict]):
    import datasets

    return datasets.Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])


def pairwise_accuracy(scores: list[float], rewards: list[float], groups: list) -> float | None:
    """Over all pairs within a group with different rewards: how often the higher reward has the higher
    score (score ties count 0.5). None when there is no such pair."""
    by_group: dict = {}
    for s, r, g in zip(scores, rewards, groups):
        by_group.setdefault(g, []).append((s, r))
    right, total = 0.0, 0
    for items in by_group.values():
        for i in range(len(items)):
            for j in range(i + 1, len(items)):
                (si, ri), (sj, rj) = items[i], items[j]
                if ri == rj:
                    continue
                total += 1
                right += 0.5 if si == sj else float((si > sj) == (ri > rj))
    return right / total if total else None


def prepare_output_dir(data: ValueDataArguments, args) -> None:
    """Before any sampling: ``output_dir`` can be written, and it holds no trained model or checkpoints unless
    ``overwrite_output_dir`` (or a resume) says to replace them (then they are removed), as ``lpo-train train``
    checks."""
    from types import SimpleNamespace

    from lpo_train.errors import check_writable
    from lpo_train.trainers import lpo_io

    check_writable(args.output_dir, "output_dir")
    lpo_io.check_output_dir(SimpleNamespace(output_dir=args.output_dir, overwrite_output_dir=data.overwrite_output_dir,
                                            resume_from_checkpoint=args.resume_from_checkpoint,
                                            process_index=args.process_index))
    finished = Path(args.output_dir) / "value_metrics.json"  # any finished run, an adapter-only one too
    if finished.exists() and not (data.overwrite_output_dir or args.resume_from_checkpoint):
        raise FileExistsError(f"{args.output_dir} already holds a trained model ({finished.name}). Set "
                              "--overwrite_output_dir true to replace it, or choose another --output_dir.")
    if data.overwrite_output_dir and not args.resume_from_checkpoint and args.process_index == 0:
        finished.unlink(missing_ok=True)  # never left describing the replaced model if this run stops early


def write_metrics(output_dir, metrics: dict) -> None:
    path = Path(output_dir)
    path.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path / "value_metrics.json", json.dumps(metrics, indent=2))
