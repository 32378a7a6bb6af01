"""The one prompt-data layer: every trainer, ``evaluate``, ``generate`` and the value trainers load
prompts here.

``dataset_name`` is one of: ``toy`` (the toy world; ``toy_families``, ``toy_prompts_per_family``),
``smollm2_mix[:train|eval][:FAMILY+FAMILY]`` (the real-model suite), ``reasoning_gym:TASK[+TASK][:SIZE]``,
a local ``.json`` / ``.jsonl`` / ``.parquet`` / ``.csv`` file or a folder of such files, or a Hub dataset id.
Generated suites take ``seed``: the caller passes its own prompt seed explicitly (nothing is guessed).
"""

from __future__ import annotations

import json
from pathlib import Path

LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}  # datasets' builders
LOCAL_SUFFIXES = tuple(LOCAL_BUILDERS)


def write_json_lines(path: Path, rows: list[dict]) -> Path:
    """``rows`` as a JSONL prompt file (one object per line) that ``load_prompt_dataset`` reads back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


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
    """A ``datasets.Dataset`` of prompts (TRL prompt-only format plus any reward columns)."""
    import datasets

    if name is None:
        raise ValueError("No prompt dataset: set dataset_name (a .json/.jsonl/.parquet/.csv file, a Hub id, 'toy' or "
                         "'smollm2_mix').")
    from lpo_train.tasks import reasoning, smollm2_mix

    if name == "toy":
        from lpo_train.tasks.toy import make_prompts

        rows = make_prompts(list(toy_families or ["arith", "story"]), toy_prompts_per_family, seed=seed)
    elif smollm2_mix.is_suite(name):
        rows = smollm2_mix.make_rows(name, seed)
    elif reasoning.is_reasoning_gym(name):
        rows = reasoning.make_reasoning_gym_rows(name, seed)
    elif Path(name).suffix.lower() in LOCAL_SUFFIXES or _looks_local(name) or Path(name).exists():
        return _checked(_load_local(name, split), name, prompt_column)
    else:
        try:
            data = datasets.load_dataset(name, split=split)
        except (FileNotFoundError, ConnectionError) as e:  # no such Hub dataset, or offline
            raise FileNotFoundError(
                f"dataset_name {name!r} is not a local file or folder, and as a Hub dataset id it could not be loaded "
                f"({type(e).__name__}: {e}). Give an existing {'/'.join(LOCAL_SUFFIXES)} file, a Hub dataset id, "
                "'toy', 'smollm2_mix' or 'reasoning_gym:TASK'.") from e
        return _checked(data, name, prompt_column)
    return _checked(datasets.Dataset.from_list(rows), name, prompt_column)


def _looks_local(name: str) -> bool:
    """A path rather than a Hub id (``org/name``): starts with . / ~, or has more than one '/' or a backslash."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name or name.endswith("/")


def _load_local(name: str, split: str):
    """A local prompt file by its suffix, or a folder of data files (``datasets`` finds its splits)."""
    import datasets

    path = Path(name).expanduser()
    suffix = path.suffix.lower()
    if not path.exists():
        raise FileNotFoundError(f"The prompt file or folder {name} does not exist (dataset_name). Give an existing "
                                f"{'/'.join(LOCAL_SUFFIXES)} file or folder, 'toy', 'smollm2_mix' or a Hub dataset id.")
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
