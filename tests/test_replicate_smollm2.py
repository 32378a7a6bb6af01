"""scripts/replicate_smollm2.py reuses a trained head only when it was trained from the same settings and prompts."""

import importlib.util
import math
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("replicate_smollm2", Path(__file__).resolve().parents[1]
                                               / "scripts" / "replicate_smollm2.py")
replicate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(replicate)


@pytest.fixture
def fake_training(monkeypatch):
    """lpo_train.train.main replaced by a stand-in that writes a head file and records its arguments."""
    import lpo_train.train

    calls = []

    def train(args):
        calls.append(args)
        out = Path(args[args.index("--output_dir") + 1])
        out.mkdir(parents=True, exist_ok=True)
        (out / "model.safetensors").write_text(str(len(calls)))

    monkeypatch.setattr(lpo_train.train, "main", train)
    return calls


def test_a_head_is_reused_only_for_the_same_settings_and_prompts(tmp_path, fake_training):
    head, seconds = replicate.train_head("online", 0, tmp_path, [])
    assert len(fake_training) == 1 and not math.isnan(seconds) and (head / "replicate_stamp.sha").exists()
    assert math.isnan(replicate.train_head("online", 0, tmp_path, [])[1])  # NaN seconds: reused, not trained
    assert len(fake_training) == 1
    replicate.train_head("online", 0, tmp_path, ["--learning_rate", "1e-3"])  # another setting: retrained
    assert len(fake_training) == 2
    replicate.train_head("online", 0, tmp_path, ["--learning_rate", "1e-3", "--logging_steps", "7"])
    assert len(fake_training) == 3  # logging is a setting too (only where outputs go is not)
    other_suite = ["--learning_rate", "1e-3", "--logging_steps", "7", "--dataset_name", "smollm2_mix:train:arith+capital+pick"]
    replicate.train_head("online", 0, tmp_path, other_suite)  # other train prompts: retrained
    assert len(fake_training) == 4
    (head / "replicate_stamp.sha").unlink()  # a head without a stamp (an older run) is never reused
    replicate.train_head("online", 0, tmp_path, other_suite)
    assert len(fake_training) == 5


def test_a_retrained_offline_head_never_reuses_stale_pairs(tmp_path, fake_training):
    pairs = tmp_path / "pairs_seed1.parquet"
    pairs.write_text("pairs of an older suite")
    replicate.train_head("offline", 1, tmp_path, [])
    assert not pairs.exists() and fake_training[0][fake_training[0].index("--pairs_path") + 1] == str(pairs)
    pairs.write_text("pairs this head was trained on")
    assert math.isnan(replicate.train_head("offline", 1, tmp_path, [])[1]) and pairs.exists()  # reused, pairs kept


def test_other_families_need_a_tag(fake_training, monkeypatch):
    def evaluate_heads(*args):
        raise AssertionError("the run started")

    monkeypatch.setattr(replicate, "evaluate_heads", evaluate_heads)  # a missed check fails fast, runs nothing
    with pytest.raises(SystemExit):
        replicate.main(["--families", "arith", "capital", "pick"])
    with pytest.raises(SystemExit):
        replicate.main(["--families", "arith", "capital", "pick", "--objectives", "lpo"])
    assert not fake_training
