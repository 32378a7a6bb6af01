"""reasoning-gym task suites (offline procedural generators with answer verifiers) as prompt datasets.

``dataset_name: reasoning_gym:TASK[+TASK...][:SIZE]`` (e.g. ``reasoning_gym:basic_arithmetic+chain_sum:64``)
gives SIZE prompts per task in TRL's conversational format, with columns ``family`` (the task),
``answer`` (the gold answer) and ``rg_entry`` (the generator's entry, JSON); the built-in reward
``reasoning_gym`` scores a completion with the task's own verifier (1 = correct).
"""

from __future__ import annotations

import json

NAME = "reasoning_gym"
PREFIX = NAME + ":"


def is_reasoning_gym(name: str | None) -> bool:
    return bool(name) and name.startswith(PREFIX)


def _import():
    try:
        import reasoning_gym
    except ImportError as e:  # pragma: no cover
        raise ImportError("reasoning-gym task suites need the eval extra: pip install 'lpo-train[eval]'") from e
    return reasoning_gym


def make_reasoning_gym_rows(name: str, seed: int = 0, default_size: int = 32) -> list[dict]:
    rg = _import()
    spec = name[len(PREFIX):]
    tasks, _, size = spec.partition(":")
    if not tasks:
        raise ValueError(f"Give a task: '{PREFIX}basic_arithmetic' or '{PREFIX}basic_arithmetic+chain_sum:64'.")
    try:
        size = int(size) if size else default_size
    except ValueError as e:
        raise ValueError(f"The size after the task names must be an integer, got {size!r} in {name!r}.") from e
    rows = []
    for task in tasks.split("+"):
        try:
            data = rg.create_dataset(task, size=size, seed=seed)
        except Exception as e:
            raise ValueError(f"reasoning-gym has no task {task!r} (or it failed to build: {e}).") from e
        for entry in data:
            rows.append({"prompt": [{"role": "user", "content": entry["question"]}], "family": task,
                         "answer": str(entry["answer"]), "rg_entry": json.dumps(entry, default=str)})
    return rows


def reasoning_gym_reward(prompts, completions, family, rg_entry, **kwargs) -> list[float]:
    """The task's own verifier on the completion text (reasoning-gym ``score_answer``)."""
    from lpo_train.text import completion_text

    rg = _import()
    fns: dict = {}
    out = []
    for c, task, entry in zip(completions, family, rg_entry, strict=True):
        if task not in fns:
            fns[task] = rg.get_score_answer_fn(task)
        out.append(float(fns[task](answer=completion_text(c).strip(), entry=json.loads(entry))))
    return out


def load_reasoning_gym(spec: str, seed: int = 0, split: str = "train", **options) -> list[dict]:
    """``dataset_name: reasoning_gym:TASK[+TASK][:SIZE]``."""
    return make_reasoning_gym_rows(spec, seed)


def _register() -> None:
    from lpo_train.registry import register_dataset, register_reward

    register_reward(NAME, reasoning_gym_reward)
    register_dataset(NAME, load_reasoning_gym)


_register()
