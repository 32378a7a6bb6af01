"""One reward interface, TRL-compatible.

A reward is a callable ``(prompts, completions, completion_ids=None, **dataset_columns) ->
list[float | None]``. ``resolve_rewards`` accepts, like TRL's ``reward_funcs``: callables,
names of built-in rewards, dotted import paths (``package.module:function``, so a user's own
reward file works from YAML and the CLI) and sequence-classification reward models (a model,
or a local path / Hub id), each scored with its own tokenizer and chat template.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from pathlib import Path

import torch

from lpo_train.registry import builtin_rewards, register_reward
from lpo_train.text import completion_text, repetition_rate


def negative_repetition_reward(prompts, completions, **kwargs) -> list[float]:
    """-(3-gram repeat rate): the paper's Wikitext-2 repetition reward."""
    return [-repetition_rate(completion_text(c)) for c in completions]


register_reward("negative_repetition", negative_repetition_reward)


def builtin_reward_names() -> list[str]:
    return sorted(builtin_rewards())


class RewardModel:
    """A sequence-classification model used as a reward: logits[:, 0] of prompt + completion.

    Conversations are rendered with the reward model's own chat template; batches are right
    padded (sequence classifiers read the last non-pad token).
    """

    def __init__(self, model, tokenizer=None, batch_size: int = 16, max_length: int = 1024):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        name = model if isinstance(model, (str, Path)) else getattr(model.config, "name_or_path", "reward_model")
        if isinstance(model, (str, Path)):
            model = AutoModelForSequenceClassification.from_pretrained(model, num_labels=1)
        self.model = model.eval()
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(self.model.config.name_or_path)
        self.tokenizer.padding_side = "right"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size, self.max_length = batch_size, max_length
        self.__name__ = Path(str(name)).name or "reward_model"

    def _render(self, prompt, completion) -> str:
        if isinstance(prompt, list):
            reply = completion if isinstance(completion, list) else [{"role": "assistant", "content": completion}]
            return self.tokenizer.apply_chat_template(prompt + reply, tokenize=False)
        return (prompt or "") + completion_text(completion)

    @torch.no_grad()
    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        prompts = prompts if prompts is not None else [""] * len(completions)
        texts = [self._render(p, c) for p, c in zip(prompts, completions, strict=True)]
        device = next(self.model.parameters()).device
        scores = []
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[i:i + self.batch_size], return_tensors="pt", padding=True,
                                   truncation=True, max_length=self.max_length, add_special_tokens=False)
            scores += self.model(**batch.to(device)).logits[:, 0].float().tolist()
        return scores


def resolve_reward(spec) -> Callable:
    """A reward callable from a callable, built-in name, ``module:function`` path or reward model."""
    if callable(spec) and not isinstance(spec, torch.nn.Module):
        return spec
    if isinstance(spec, torch.nn.Module):
        return RewardModel(spec)
    if not isinstance(spec, (str, Path)):
        raise TypeError(f"A reward must be a callable, a name, 'module:function' or a model; got {type(spec)}.")
    spec = str(spec)
    if spec in builtin_rewards():
        return builtin_rewards()[spec]
    if ":" in spec and not Path(spec).exists():
        module_name, _, attr = spec.partition(":")
        import sys

        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))  # 'my_rewards:score' finds my_rewards.py in the current folder
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"Cannot import reward {spec!r}: {e}. Use 'package.module:function' with the "
                             "module importable: a file in the current folder or on PYTHONPATH.") from e
        if not callable(fn):
            raise ValueError(f"Reward {spec!r} is not callable.")
        return fn
    if Path(spec).is_dir() or "/" in spec:
        return RewardModel(spec)
    raise ValueError(f"Unknown reward {spec!r}. Built-in rewards: {builtin_reward_names()} (with any registered by "
                     "lpo_train.registry.register_reward); or give 'package.module:function', a callable, or a "
                     "sequence-classification model path/id.")


def reward_name(fn) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def resolve_rewards(specs, weights=None) -> tuple[list[Callable], list[float]]:
    specs = specs if isinstance(specs, (list, tuple)) else [specs]
    if not specs:
        raise ValueError("Give at least one reward function.")
    funcs = [resolve_reward(s) for s in specs]
    weights = [1.0] * len(funcs) if weights is None else [float(w) for w in weights]
    if len(weights) != len(funcs):
        raise ValueError(f"reward_weights has {len(weights)} values for {len(funcs)} reward functions.")
    return funcs, weights


def _number(value, fn, index: int) -> float:
    if value is None:
        return math.nan
    try:
        value = float(value)
        return value if math.isfinite(value) else math.nan  # an infinite reward is invalid: dropped and counted
    except (TypeError, ValueError):
        raise TypeError(f"Reward function {reward_name(fn)!r} returned {value!r} ({type(value).__name__}) for completion "
                        f"{index}; a reward must return a number or None for each completion.") from None


def compute_rewards(funcs, weights, prompts, completions, completion_ids=None, **columns
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(total [n], per_function [n, F])``, float64 (a reward of 1e40 stays finite); None and infinite values
    become NaN, the total is the weighted sum over the functions that scored a row (NaN when none did)."""
    per_func = torch.full((len(completions), len(funcs)), float("nan"), dtype=torch.float64)
    for j, fn in enumerate(funcs):
        try:
            out = fn(prompts, completions, completion_ids=completion_ids, **columns)
        except Exception as e:
            raise RuntimeError(f"Reward function {reward_name(fn)!r} failed on {len(completions)} completions: "
                               f"{type(e).__name__}: {e}") from e
        if len(out) != len(completions):
            raise ValueError(f"Reward {reward_name(fn)!r} returned {len(out)} values for {len(completions)} completions.")
        per_func[:, j] = torch.tensor([_number(v, fn, i) for i, v in enumerate(out)], dtype=torch.float64)
    w = torch.tensor(weights, dtype=torch.float64)
    scored = ~per_func.isnan()
    total = torch.where(scored, per_func * w, torch.zeros_like(per_func)).sum(-1)
    total[~scored.any(-1)] = float("nan")
    return total, per_func


PRIVATE_COLUMN = "_lpo_index"  # the trainer's dataset position of each prompt (seeds); never given to a reward


def score_traces(funcs, weights, rows: list[dict], traces) -> tuple[torch.Tensor, torch.Tensor]:
    """``compute_rewards`` on engine traces of ``rows`` (prompt-major, any samples per prompt):
    each trace gets its prompt and every other dataset column of its row."""
    if not traces:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, len(funcs), dtype=torch.float64)
    # every dataset column but the prompt and the trainer's own (``PRIVATE_COLUMN``)
    columns = {k: [rows[t.prompt_index][k] for t in traces] for k in rows[0] if k not in ("prompt", PRIVATE_COLUMN)}
    return compute_rewards(funcs, weights, [rows[t.prompt_index]["prompt"] for t in traces], [t.text for t in traces],
                           completion_ids=[t.token_ids for t in traces], **columns)
