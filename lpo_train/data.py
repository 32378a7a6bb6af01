"""The one prompt-data layer: every trainer, ``evaluate``, ``generate`` and the value trainers load
prompts here.

``dataset_name`` is one of: a registered dataset (``NAME`` or ``NAME:OPTIONS``; the tasks in
``lpo_train/tasks`` register theirs, a user registers one with ``lpo_train.registry.register_dataset``),
a local ``.json`` / ``.jsonl`` / ``.parquet`` / ``.csv`` file or a folder of such files, or a Hub dataset id.
Registered datasets take ``seed``: the caller passes its own prompt seed explicitly (nothing is guessed).
This module reads the dataset registry and never names a task.
"""

from __future__ import annotations

import json
from pathlib import Path

from lpo_train.utils.io import write_json_lines  # noqa: F401  (its home before lpo_train.utils.io; kept importable)

LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}  # datasets' builders
LOCAL_SUFFIXES = tuple(LOCAL_BUILDERS)


def _check_json_lines(path: Path) -> None:
    """Clear errors for what ``datasets`` reports obscurely: an empty file, a malformed line."""
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"The prompt file {path} is empty: write one JSON object per line with a 'prompt' field.")
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); fix the file.") from e
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {number}: not valid JSON ({e.msg}). Each line must be one JSON object, "
                             f'e.g. {{"prompt": "..."}}.') from e
        if not isinstance(row, dict):
            raise ValueError(f"{path}, line {number}: expected a JSON object with a 'prompt' field, got "
                             f"{type(row).__name__}.")


def load_prompt_dataset(name: str | None, split: str = "train", seed: int = 0, toy_families=None,
                        toy_prompts_per_family: int = 64, prompt_column: str = "prompt"):
    """A ``datasets.Dataset`` of prompts (TRL prompt-only format plus any reward columns). A registered
    dataset's loader gets ``name``, ``seed``, ``split`` and the options ``toy_families`` and
    ``toy_prompts_per_family`` (``lpo_train.registry.register_dataset``)."""
    import datasets

    from lpo_train.registry import DATASETS

    if name is None:
        raise ValueError(f"No prompt dataset: set dataset_name (a {'/'.join(LOCAL_SUFFIXES)} file, a Hub id or a "
                         f"registered dataset: {DATASETS.names()}).")
    loader = DATASETS.find(name)
    if loader is not None:
        data = loader(name, seed=seed, split=split, toy_families=toy_families,
                      toy_prompts_per_family=toy_prompts_per_family)
        if isinstance(data, list):
            data = datasets.Dataset.from_list(data)
        elif not isinstance(data, datasets.Dataset):
            raise TypeError(f"The dataset loader registered as {DATASETS.key(name)!r} returned "
                            f"{type(data).__name__}; it must return a list of rows (dicts) or a datasets.Dataset.")
        return _checked(data, name, prompt_column)
    if Path(name).suffix.lower() in LOCAL_SUFFIXES or _looks_local(name) or Path(name).exists():
        return _checked(_load_local(name, split), name, prompt_column)
    if ":" in name:  # NAME:OPTIONS with an unregistered NAME (a Hub id never holds ':')
        raise ValueError(DATASETS.unknown(name, "dataset_name"))
    try:
        data = datasets.load_dataset(name, split=split)
    except (FileNotFoundError, ConnectionError) as e:  # no such Hub dataset, or offline
        raise FileNotFoundError(
            f"dataset_name {name!r} is not a local file or folder, and as a Hub dataset id it could not be loaded "
            f"({type(e).__name__}: {e}). Give an existing {'/'.join(LOCAL_SUFFIXES)} file, a Hub dataset id or a "
            f"registered dataset: {DATASETS.names()} (lpo_train.registry.register_dataset adds one).") from e
    return _checked(data, name, prompt_column)


def _looks_local(name: str) -> bool:
    """A path rather than a Hub id (``org/name``): starts with . / ~, or has more than one '/' or a backslash."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name or name.endswith("/")


def _load_local(name: str, split: str):
    """A local prompt file by its suffix, or a folder of data files (``datasets`` finds its splits)."""
    import datasets

    path = Path(name).expanduser()
    suffix = path.suffix.lower()
    if not path.exists():
        from lpo_train.registry import DATASETS

        raise FileNotFoundError(f"The prompt file or folder {name} does not exist (dataset_name). Give an existing "
                                f"{'/'.join(LOCAL_SUFFIXES)} file or folder, a Hub dataset id or a registered "
                                f"dataset: {DATASETS.names()}.")
    if path.is_dir():
        return datasets.load_dataset(str(path), split=split)
    if suffix not in LOCAL_BUILDERS:
        raise ValueError(f"The prompt file {path} has suffix {suffix or '(none)'!r}, which is not a data file "
                         f"type read here (dataset_name); save it as {', '.join(LOCAL_SUFFIXES)}.")
    if suffix in (".json", ".jsonl"):
        _check_json_lines(path)
    elif suffix == ".csv" and not path.read_text(encoding="utf-8").strip():
        raise ValueError(f"The prompt file {path} is empty: write a header line with a 'prompt' column, then one "
                         "prompt per line.")
    return datasets.load_dataset(LOCAL_BUILDERS[suffix], data_files=str(path), split="train")


def _checked(data, where: str, prompt_column: str):
    if len(data) == 0:
        raise ValueError(f"The prompt dataset {where} has no rows.")
    if prompt_column not in data.column_names:
        raise ValueError(f"The prompt dataset {where} needs a {prompt_column!r} column (TRL prompt-only format); "
                         f"it has {data.column_names}.")
    return data
