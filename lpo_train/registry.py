"""One plug-in registry for what tasks and users provide: rewards, prompt datasets and model specs.

Each kind is a ``Registry``; an entry registers itself in its own module, with the decorator (or by a
plain call)::

    @register_reward("my_reward")            # reward_funcs: ["my_reward"]
    def my_reward(prompts, completions, **columns): ...

    @register_dataset("my_prompts")          # dataset_name: "my_prompts" or "my_prompts:ANY:OPTIONS"
    def my_prompts(spec, seed=0, split="train", **options): ...   # -> list of rows, or a datasets.Dataset

    @register_model("my_lm", hub_id=None)    # model_name_or_path: "my_lm" or "my_lm:ANY:OPTIONS"
    def my_lm(spec): ...                     # -> a model folder or a Hub id

The generic code (``rewards``, ``data``, ``models.loading``) reads the registries and never names a task;
the built-in entries (``lpo_train/tasks/*``, ``lpo_train/models/smollm2.py``) are imported on first lookup
(``load_builtins``). A dataset or model name is matched by the part of the spec before its first ':'
(the rest is the entry's own options, e.g. ``smollm2_mix:eval:capital+copy``); a reward name as a whole.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

BUILTIN_MODULES = ("lpo_train.rewards", "lpo_train.tasks", "lpo_train.models.smollm2")  # modules that register the built-in entries


PLUGIN_GROUP = "lpo_train.plugins"  # entry points of installed packages whose modules register entries
PLUGIN_ENV = "LPO_TRAIN_PLUGINS"  # or modules named here (comma-separated), e.g. for the command line
_plugins_loaded: set[str] = set()


def load_builtins() -> None:
    """Import the modules of the built-in entries once (each registers its own), then the user's plug-ins: the
    modules named in ``$LPO_TRAIN_PLUGINS`` and the ``lpo_train.plugins`` entry points of installed packages, so
    that entries registered there reach the command line too."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    for module in plugin_modules():
        if module in _plugins_loaded:
            continue
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ImportError(f"The lpo-train plug-in module {module!r} (from ${PLUGIN_ENV} or a package's "
                              f"{PLUGIN_GROUP!r} entry point) cannot be imported: {e}. Fix the name, or put its folder "
                              "on PYTHONPATH.") from e
        _plugins_loaded.add(module)


def plugin_modules() -> list[str]:
    """The plug-in modules: ``$LPO_TRAIN_PLUGINS`` (comma-separated), then the ``lpo_train.plugins`` entry points."""
    import os
    from importlib.metadata import entry_points

    named = [m.strip() for m in os.environ.get(PLUGIN_ENV, "").split(",") if m.strip()]
    return named + [ep.value.partition(":")[0] for ep in entry_points(group=PLUGIN_GROUP)]


class Registry:
    """Named entries of one kind (``kind``: what error messages call them). ``prefixed``: a spec names an entry
    by its part before the first ':' (datasets, models); otherwise by the whole string (rewards)."""

    def __init__(self, kind: str, register_with: str, prefixed: bool = False):
        self.kind, self.register_with, self.prefixed = kind, register_with, prefixed
        self._entries: dict[str, object] = {}
        self._extras: dict[str, dict] = {}  # per name, what the entry was registered with (e.g. default rewards)

    def register(self, name: str, entry=None, **extras):
        """Register ``entry`` under ``name`` (with ``extras``, read back by ``extra``); without ``entry``, a
        decorator. A name taken by another entry, built-in ones included, is an error; the same definition again (a
        re-run module or notebook cell) replaces it."""
        if entry is None:
            return lambda obj: self.register(name, obj, **extras)
        load_builtins()  # so that a user's entry meets the built-in names (re-entrant while they register)
        if not isinstance(name, str) or not name.strip() or (self.prefixed and any(c in name for c in ":/\\")):
            rule = "a non-empty string without ':', '/' or '\\'" if self.prefixed else "a non-empty string"
            raise ValueError(f"A {self.kind} name must be {rule}, got {name!r}.")
        old = self._entries.get(name)
        if old is not None and old is not entry and _identity(old) != _identity(entry):
            raise ValueError(f"A {self.kind} named {name!r} is already registered ({_identity(old)}); "
                             f"register yours under another name.")
        self._entries[name] = entry
        self._extras[name] = dict(extras)
        return entry

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)
        self._extras.pop(name, None)

    def extra(self, spec: str, key: str, default=None):
        """What the entry ``spec`` names was registered with under ``key`` (``default`` when none or no entry)."""
        return self._extras.get(self.key(spec), {}).get(key, default) if self.find(spec) is not None else default

    def entries(self) -> dict[str, object]:
        load_builtins()
        return self._entries

    def names(self) -> list[str]:
        return sorted(self.entries())

    def key(self, spec: str) -> str:
        """The name a spec refers to: its part before the first ':' for prefixed kinds, else the spec."""
        return spec.partition(":")[0] if self.prefixed else spec

    def find(self, spec: str):
        """The entry ``spec`` names, or None. A path or Hub id (with '/' or '\\') never names one."""
        if self.prefixed and any(c in spec for c in "/\\"):
            return None
        return self.entries().get(self.key(spec))

    def unknown(self, spec: str, what: str) -> str:
        """The sentence for a spec that names no entry: the registered names and how to add one."""
        return (f"{what} {spec!r}: no {self.kind} named {self.key(spec)!r} is registered. Registered {self.kind}s: "
                f"{self.names()}; register your own with lpo_train.registry.{self.register_with}.")


def _identity(obj) -> str:
    """Where a definition comes from (module, name, first line): equal for the same code run again."""
    obj = obj.resolve if isinstance(obj, ModelSpec) else obj
    line = getattr(getattr(obj, "__code__", None), "co_firstlineno", None)
    return (f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"
            + (f" (line {line})" if line is not None else ""))


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: ``resolve(spec)`` gives a model folder (or a Hub id) for ``spec`` (its name and any
    ':options'); ``hub_id``: what a trained head's config and card record as its base model, so that the
    artifact works on another machine (default: the spec itself), and, offline, an id resolved by ``resolve``."""

    resolve: Callable[[str], str]
    hub_id: str | None = None


REWARDS = Registry("reward", "register_reward")
DATASETS = Registry("dataset", "register_dataset", prefixed=True)
MODELS = Registry("model spec", "register_model", prefixed=True)


def register_reward(name: str, fn: Callable | None = None):
    """A reward by name (``reward_funcs``); TRL's reward signature. A decorator without ``fn``."""
    return REWARDS.register(name, fn)


def register_dataset(name: str, loader: Callable | None = None, default_rewards: list[str] | None = None):
    """A prompt dataset by name (``dataset_name``): ``loader(spec, seed=0, split='train', **options)`` returns its
    rows (dicts with a 'prompt') or a ``datasets.Dataset``; ``options`` are the shared dataset fields
    (``toy_families``, ``toy_prompts_per_family``): accept ``**options``. ``default_rewards``: the reward names
    ``train`` / ``evaluate`` / ``train-value`` use on this dataset when ``reward_funcs`` is not set. A decorator
    without ``loader``."""
    return DATASETS.register(name, loader, default_rewards=list(default_rewards or []))


def default_rewards(dataset_name: str | None) -> list[str]:
    """The rewards registered with ``dataset_name``'s dataset (``register_dataset(..., default_rewards=...)``), or
    [] (then the command needs ``reward_funcs``)."""
    return list(DATASETS.extra(str(dataset_name), "default_rewards", [])) if dataset_name else []


def register_model(name: str, resolve: Callable[[str], str] | None = None, hub_id: str | None = None):
    """A model spec by name (``model_name_or_path``): ``resolve(spec)`` returns a model folder or Hub id;
    ``hub_id`` as in ``ModelSpec``. A decorator without ``resolve`` (it returns the resolver unchanged)."""
    if resolve is None:
        return lambda fn: register_model(name, fn, hub_id)
    spec = MODELS.register(name, ModelSpec(resolve, hub_id))
    return spec.resolve


def builtin_rewards() -> dict[str, Callable]:
    """Every registered reward by name (the built-in ones and any a user registered)."""
    return REWARDS.entries()


def find_model_spec(spec: str, offline: bool = False) -> ModelSpec | None:
    """The registered model ``spec`` names; ``offline``, also one whose ``hub_id`` is ``spec``."""
    found = MODELS.find(spec)
    if found is None and offline:
        name = next((n for n, m in MODELS.entries().items() if m.hub_id == spec), None)
        if name is not None:  # the registered copy stands in for the Hub id
            entry = MODELS.entries()[name]
            return ModelSpec(lambda _: entry.resolve(name), entry.hub_id)
    return found
