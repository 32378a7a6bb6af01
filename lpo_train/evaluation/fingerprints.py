"""Fingerprints that key ``lpo-train evaluate``'s per-strategy results.

A finished strategy is reused only when everything that determines its numbers is unchanged: the
LM's weights, its tokenizer and chat template, the suite's rows, the sampling settings, each
reward (its source and the user's own modules it imports; a reward model's weights and tokenizer),
and the strategy itself (its spec, truncations, a head's files, KLD's evidence column).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import inspect
import json
import sys
import sysconfig
from pathlib import Path

import torch

from lpo_train.utils.io import json_fingerprint, new_digest


def weights_fingerprint(module) -> str:
    """A hash of a model's weights (names, shapes, dtypes and bytes)."""
    digest = new_digest()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def file_fingerprint(*paths: Path) -> str:
    """A hash of the files' bytes (a missing file hashes as missing)."""
    digest = new_digest()
    for p in paths:
        digest.update(Path(p).read_bytes() if Path(p).exists() else b"<missing>")
    return digest.hexdigest()


def rows_fingerprint(rows: list[dict]) -> str:
    return json_fingerprint(rows)


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what turns a prompt into ids and ids into text: the vocabulary, merges, normaliser and
    special tokens (a fast tokenizer's whole serialised state) and the chat template."""
    if getattr(tokenizer, "is_fast", False):
        backend = tokenizer.backend_tokenizer.to_str()
    else:
        backend = json.dumps(sorted(tokenizer.get_vocab().items()))
    state = {"class": type(tokenizer).__name__, "backend": backend,
             "chat_template": getattr(tokenizer, "chat_template", None),
             "special_tokens": {k: str(v) for k, v in tokenizer.special_tokens_map.items()}}
    return json_fingerprint(state)


@functools.lru_cache(maxsize=1)
def _installed_top_level() -> frozenset[str]:
    """Top-level module names that belong to an installed distribution (this package included)."""
    from importlib.metadata import packages_distributions

    return frozenset(packages_distributions())


def _library_dirs() -> list[Path]:
    paths = sysconfig.get_paths()
    return [Path(paths[k]).resolve() for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths]


def _is_users_module(name: str, file: Path) -> bool:
    top = name.partition(".")[0]
    if top in sys.stdlib_module_names or top in _installed_top_level():
        return False
    return not any(file.is_relative_to(d) for d in _library_dirs())


def _module_file(name: str) -> Path | None:
    module = sys.modules.get(name)
    file = getattr(module, "__file__", None) if module is not None else None
    if file is None and module is None:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):  # a relative name gone wrong, a missing parent: not a local module
            return None
        file = spec.origin if spec is not None else None
    return Path(file).resolve() if file and str(file).endswith(".py") else None


def _imported_names(file: Path, name: str) -> set[str]:
    """Absolute names of the modules ``file`` (module ``name``) imports, anywhere in it (also inside
    functions); for ``from a import b`` both ``a`` and ``a.b`` (b may be a submodule)."""
    package = name if file.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            bases = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            try:
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            except (ImportError, ValueError):
                continue
            bases = [base] + [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]
        else:
            continue
        for base in bases:  # 'import a.b.c' also imports a and a.b
            parts = base.split(".")
            out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return out


def reward_source_files(fn) -> list[Path]:
    """The source file of a reward function (or of a callable object's class) and, transitively, of every
    module of the user's own that it imports: not the standard library, not an installed package. A built-in
    reward of this package gives its own file only."""
    target = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else type(fn)
    module = inspect.getmodule(target)
    try:
        own = Path(inspect.getsourcefile(target)).resolve()
    except (OSError, TypeError):
        return []
    files, todo, seen = {own}, [module.__name__] if module is not None else [], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        file = _module_file(name)
        if file is None or not (file == own or _is_users_module(name, file)):
            continue
        files.add(file)
        todo.extend(_imported_names(file, name) - seen)
    return sorted(files)


def reward_fingerprint(fn) -> dict:
    """What determines one reward's scores: its name, its source with the user's modules it imports, and for
    a reward model (an object holding a ``model``) the model's weights, its tokenizer and chat template."""
    from lpo_train.rewards import reward_name

    files = reward_source_files(fn)
    out = {"name": reward_name(fn), "source": file_fingerprint(*files) if files else None}
    model = getattr(fn, "model", None)
    if isinstance(model, torch.nn.Module):
        out["weights"] = weights_fingerprint(model)
        tokenizer = getattr(fn, "tokenizer", None)
        out["tokenizer"] = tokenizer_fingerprint(tokenizer) if tokenizer is not None else None
        out["max_length"] = getattr(fn, "max_length", None)
    return out


def run_fingerprint(config, model, tokenizer, rows: list[dict], funcs) -> dict:
    """Everything shared by the strategies of a run that determines their numbers."""
    return {"model": weights_fingerprint(model), "tokenizer": tokenizer_fingerprint(tokenizer),
            "suite": rows_fingerprint(rows), "num_generations": config.num_generations, "seed": config.seed,
            "max_completion_length": config.max_completion_length, "truncation": config.truncation(),
            "rewards": [reward_fingerprint(f) for f in funcs], "reward_weights": config.reward_weights,
            **sampler_fingerprint(config)}


def sampler_fingerprint(config) -> dict:
    """vLLM's samples are not the engine's (other random numbers): with ``use_vllm`` its version keys the results
    (the engine's keys are unchanged)."""
    if not getattr(config, "use_vllm", False):
        return {}
    import vllm

    return {"sampler": f"vllm {vllm.__version__}", "vllm_max_model_length": config.vllm_max_model_length}


def strategy_fingerprint(base: dict, name: str, overrides: dict, extra: dict | None = None) -> str:
    """The run's fingerprint plus the strategy itself: its name (temperatures, rule options), its
    truncations and ``extra`` (a head's files, KLD's evidence column)."""
    key = {**base, "strategy": name, "overrides": overrides, **(extra or {})}
    return json_fingerprint(key, default=None)


def head_files_fingerprint(folder: Path) -> str:
    """A hash of a saved head's files (and of the LoRA adapter saved beside a jointly trained head)."""
    folder = Path(folder)
    joint = [folder / "adapter_config.json", folder / "adapter_model.safetensors"]
    return file_fingerprint(folder / "config.json", folder / "model.safetensors",
                            *(joint if joint[1].exists() else []))
