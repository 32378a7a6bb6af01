"""lpo_train.utils.io: atomic writes (files and folders), JSON lines, fingerprints."""

import json
from pathlib import Path

import pytest

from lpo_train.utils.io import (
    atomic_path,
    json_fingerprint,
    partial_path,
    read_json_lines,
    texts_fingerprint,
    write_json_lines,
    write_results_json,
    write_text_atomic,
)


class Crash(Exception):
    pass


def test_the_temporary_is_a_partial_sibling(tmp_path):
    assert partial_path(tmp_path / "results.json") == tmp_path / "results.json.partial"
    assert partial_path(tmp_path / "plot.png", keep_suffix=True) == tmp_path / "plot.partial.png"
    with atomic_path(tmp_path / "a.txt") as tmp:
        assert tmp == tmp_path / "a.txt.partial" and not tmp.exists()
        tmp.write_text("x")
        assert not (tmp_path / "a.txt").exists()  # nothing under the final name before the block ends
    assert (tmp_path / "a.txt").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_a_crash_leaves_no_final_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(Crash):
        with atomic_path(target) as tmp:
            tmp.write_text('{"half": ')  # half written when the run dies
            raise Crash
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_crash_keeps_the_previous_version(tmp_path):
    target = write_text_atomic(tmp_path / "out.json", "old")
    with pytest.raises(Crash):
        with atomic_path(target) as tmp:
            tmp.write_text("new, half")
            raise Crash
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_success_replaces_an_existing_file(tmp_path):
    target = write_text_atomic(tmp_path / "out.json", "a much longer old version")
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_a_stale_temporary_from_a_killed_run_is_removed_first(tmp_path):
    (tmp_path / "model.partial").mkdir()
    (tmp_path / "model.partial" / "stale.bin").write_text("from a killed run")
    with atomic_path(tmp_path / "model") as tmp:
        assert not tmp.exists()
        tmp.mkdir()
        (tmp / "config.json").write_text("{}")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json"]


def test_folders_are_written_and_replaced_whole(tmp_path):
    target = tmp_path / "model"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "weights.bin").write_text("v1")
        (tmp / "only_in_v1.txt").write_text("v1")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "weights.bin").write_text("v2")
    assert sorted(p.name for p in target.iterdir()) == ["weights.bin"]  # nothing of v1 left beside v2
    assert (target / "weights.bin").read_text() == "v2"
    with pytest.raises(Crash):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "weights.bin").write_text("v3, half")
            raise Crash
    assert (target / "weights.bin").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_failed_folder_replace_keeps_the_previous_folder(tmp_path, monkeypatch):
    """The old folder steps aside before the new one moves in: when that move fails, the old one comes back."""
    import lpo_train.utils.io as io_module

    target = tmp_path / "model"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "weights.bin").write_text("v1")
    real = io_module.os.replace

    def failing(src, dst):
        if Path(src).name == "model.partial":
            raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr(io_module.os, "replace", failing)
    with pytest.raises(OSError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "weights.bin").write_text("v2")
    assert (target / "weights.bin").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_json_lines_round_trip(tmp_path):
    rows = [{"prompt": "a"}, {"prompt": [{"role": "user", "content": "b\nc"}], "n": 2}]
    path = write_json_lines(tmp_path / "new" / "rows.jsonl", rows)
    assert path.read_text().count("\n") == 2
    assert read_json_lines(path) == rows
    with pytest.raises(TypeError):  # not rows: nothing is left behind
        write_json_lines(tmp_path / "bad.jsonl", 5)
    assert not list(tmp_path.glob("bad.jsonl*"))


def test_results_json_names_no_machine_path(tmp_path):
    root = tmp_path / "repo"
    head = f"{root.resolve()}/outputs/seed0/head"
    value = {"verdict": f"**head:{head} beats every baseline: no**", f"meanshift(head:{head})": [f"{head}:sample", 1.5],
             "other": f"{tmp_path}/elsewhere", "n": None}
    out = write_results_json(tmp_path / "results" / "r.json", value, root)
    assert json.loads(out.read_text()) == {"verdict": "**head:outputs/seed0/head beats every baseline: no**",
                                           "meanshift(head:outputs/seed0/head)": ["outputs/seed0/head:sample", 1.5],
                                           "other": f"{tmp_path}/elsewhere", "n": None}  # outside root: kept as is


def test_committed_results_name_no_machine_path():
    """What the replication scripts wrote into docs/results/ holds no absolute path of the machine that ran them."""
    import re

    pattern = re.compile(r"(?<![\w.])/(?:work|tmp|home|root|Users|mnt)/")
    found = [f"{p.name}: {m.group(0)}" for p in Path(__file__).resolve().parents[1].glob("docs/results/*.json")
             for m in pattern.finditer(p.read_text())]
    assert not found, found


def test_fingerprints():
    assert json_fingerprint({"a": 1, "b": [1, 2]}) == json_fingerprint({"b": [1, 2], "a": 1})
    assert json_fingerprint({"a": 1}) != json_fingerprint({"a": 2})
    assert len(json_fingerprint([])) == 32
    assert json_fingerprint({"p": object}) == json_fingerprint({"p": str(object)})  # default=str
    with pytest.raises(TypeError):
        json_fingerprint({"p": object}, default=None)
    assert texts_fingerprint(["ab", "c"]) != texts_fingerprint(["a", "bc"])
    assert texts_fingerprint(iter(["x"])) == texts_fingerprint(["x"])


def test_a_failed_completions_file_leaves_nothing(tmp_path, monkeypatch):
    """The completions writer (a background thread) goes through atomic_path: a write that dies half way leaves
    neither a final file nor a .partial, and the error reaches the training thread."""
    import pyarrow.parquet as pq

    from lpo_train.trainers.lpo_io import CompletionsWriter

    def half_write(table, where, **kwargs):
        with open(where, "wb") as f:
            f.write(b"PAR1 half")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", half_write)
    writer = CompletionsWriter()
    writer.write([{"prompt": "p", "completion": "c", "choices": [0]}], str(tmp_path), 3, None)
    with pytest.raises(OSError, match="disk full"):
        writer.flush()
    assert list((tmp_path / "completions").iterdir()) == []
