"""What lpo-train writes to disk, written one way: atomically, through a ``.partial`` sibling renamed over the
final name once complete, so an interrupted, crashed or disk-full run never leaves a truncated file (or a
half-written folder) under the name readers trust. Also JSON-lines files and the content hashes
(fingerprints) that key cached results.

    with atomic_path(out / "results.parquet") as tmp:   # write anything to tmp: a file or a folder
        pq.write_table(table, tmp)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

PARTIAL = ".partial"


def partial_path(path: str | os.PathLike, keep_suffix: bool = False) -> Path:
    """The temporary sibling of ``path``: ``<name>.partial``, or with ``keep_suffix``
    ``<stem>.partial<suffix>`` (for writers that pick the format from the suffix, e.g. matplotlib's PNG)."""
    path = Path(path)
    if keep_suffix and path.suffix:
        return path.with_name(path.stem + PARTIAL + path.suffix)
    return path.with_name(path.name + PARTIAL)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield the temporary path to write ``path``'s content to (a file or a folder; nothing exists there
    when the block starts: a stale leftover of a killed run is removed). When the block ends normally the
    temporary is renamed to ``path`` (``os.replace``; an existing folder at ``path`` is first renamed aside and
    removed only once the new one is in place), replacing any previous version; when it raises, the temporary is
    removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = partial_path(path, keep_suffix)
    old = path.with_name(path.name + ".old" + PARTIAL)
    _remove(tmp)
    _remove(old)
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir() and not path.is_symlink():
            os.replace(path, old)  # os.replace cannot put a folder over a non-empty one: the old one steps aside
        try:
            os.replace(tmp, path)
        except BaseException:
            if old.exists() and not path.exists():
                os.replace(old, path)  # the previous version back
            raise
        _remove(old)
    except BaseException:
        _remove(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """``text`` to ``path`` through ``atomic_path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def write_json_lines(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """``rows`` as JSON lines (one object per line), written atomically; the parent folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def write_results_json(path: str | os.PathLike, value, root: str | os.PathLike) -> Path:
    """``value`` as indented JSON, written atomically, with ``root``'s absolute path cut out of every string and key
    (``/repo/outputs/x`` -> ``outputs/x``): results files committed to a repository name no machine's paths."""
    prefix = str(Path(root).resolve()) + os.sep

    def portable(v):
        if isinstance(v, str):
            return v.replace(prefix, "")
        if isinstance(v, dict):
            return {portable(k): portable(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [portable(x) for x in v]
        return v

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, json.dumps(portable(value), indent=2) + "\n")


def read_json_lines(path: str | os.PathLike) -> list:
    """The objects of a JSON-lines file (blank lines skipped)."""
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]


def new_digest() -> hashlib.blake2b:
    """The hash every fingerprint uses (BLAKE2b, 16 bytes; ``hexdigest()`` gives 32 hex characters)."""
    return hashlib.blake2b(digest_size=16)


def json_fingerprint(value, default=str) -> str:
    """A hash of ``value`` as canonical JSON (keys sorted). ``default`` turns what JSON cannot hold into
    something it can (``str`` by default; ``None`` makes such a value an error)."""
    digest = new_digest()
    digest.update(json.dumps(value, sort_keys=True, default=default).encode())
    return digest.hexdigest()


def texts_fingerprint(texts: Iterable[str]) -> str:
    """A hash of a sequence of strings (each ended by a NUL, so ``["ab", "c"]`` and ``["a", "bc"]`` differ)."""
    digest = new_digest()
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()
