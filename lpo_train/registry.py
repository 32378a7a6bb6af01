"""Where tasks register what they provide: built-in rewards (by name) and model specs (by prefix,
e.g. ``toy:small``). ``rewards`` and ``models`` read the registry and never import a task; the
task package registers its entries when it is first needed (``load_builtin_tasks``)."""

from __future__ import annotations

from collections.abc import Callable

REWARDS: dict[str, Callable] = {}
MODEL_SPECS: dict[str, Callable[[str], str]] = {}  # spec prefix -> resolver(spec) -> a model folder


def register_reward(name: str, fn: Callable) -> Callable:
    if REWARDS.get(name, fn) is not fn:
        raise ValueError(f"A reward named {name!r} is already registered.")
    REWARDS[name] = fn
    return fn


def register_model_spec(prefix: str, resolver: Callable[[str], str]) -> None:
    MODEL_SPECS[prefix] = resolver


def load_builtin_tasks() -> None:
    """Import the task package once: its modules register their rewards and model specs."""
    import lpo_train.tasks  # noqa: F401


def builtin_rewards() -> dict[str, Callable]:
    load_builtin_tasks()
    return REWARDS


def model_spec_resolver(spec: str) -> Callable[[str], str] | None:
    load_builtin_tasks()
    return next((r for prefix, r in MODEL_SPECS.items() if spec == prefix or spec.startswith(prefix + ":")), None)
