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


def _fake_seed(head: str, head_reward: float, fixed: dict[float, float], meanshift: float, win_best: float):
    """One seed's evaluation: the summary entries and results.json's baselines, hand-made."""
    def entry(reward, wins=None):
        return {"mean_reward": reward, "mean_reward_by_family": {"copy": reward, "pick": reward},
                "mean_value_by_family": {"copy": 0.0, "pick": 0.6},
                "win_rate_vs_fixed": {f"{t:g}": {"win_rate": (wins or {}).get(t, 50.0), "ci95": [40.0, 60.0]}
                                      for t in replicate.TEMPS}}

    best = max(fixed, key=fixed.get)
    summary = {f"T={t:g}": entry(r) for t, r in fixed.items()}
    summary[head] = entry(head_reward, {t: (win_best if t == best else 55.0) for t in fixed})
    win = lambda w: {"win_rate": w, "ci95": [w - 9, w + 9], "num_invalid": 0}  # noqa: E731
    baselines = {
        "best_fixed_T": {"temperature": 0.2, "mean_reward": fixed[0.2], "chosen_on": "train",
                         "selection_mean_reward": {f"{t:g}": 0.5 for t in fixed}},
        "per_family_oracle": {"temperature_by_family": {"copy": 0.0, "pick": 0.6}, "mean_reward": 0.6,
                              "mean_reward_by_family": {"copy": 0.6, "pick": 0.6}},
        "meanshift": {head: {"strategy": f"meanshift({head})=T0.3", "value": 0.3, "mean_reward": meanshift}},
        "heads": {head: {"meanshift": win(60.0), "best_fixed_T": win(58.0), "per_family_oracle": win(45.0),
                         "beats_fair_baselines": True, "verdict": "no"}}}
    return {"summary": summary, "baselines": baselines, "heads": {"online": head}}


def test_the_summary_says_whether_the_aim_is_met(tmp_path, monkeypatch):
    monkeypatch.setattr(replicate, "chosen_shares", lambda *a: {"copy": {"0": 1.0}})
    fixed = {0.0: 0.50, 0.2: 0.52, 0.4: 0.55, 0.6: 0.53, 0.8: 0.45, 1.0: 0.33}
    per_seed = {0: _fake_seed("head:/h0", 0.58, fixed, 0.54, 56.0), 1: _fake_seed("head:/h1", 0.57, fixed, 0.55, 52.0)}
    args = replicate.argparse.Namespace(seeds=[0, 1], protocols=["online"], families=list(replicate.DEFAULT_FAMILIES),
                                        tag="", output_dir=str(tmp_path), json_dir=str(tmp_path), num_generations=6,
                                        max_completion_length=32, train_args=[])
    result = replicate.summarise_runs(args, per_seed, {}, [])["online"]
    written = tmp_path / "smollm2_regression_seq.json"  # the default objective's own file; Eq. 10's keep theirs
    assert written.exists() and result["loss_type"] == "lpo_regression"
    assert result["aim"]["met"] and result["aim"]["win_rate_above_50_vs_best_single_fixed_T_per_seed"] == [True, True]
    assert result["mean_reward"]["mean"] == pytest.approx(0.575) and result["meanshift_mean_reward"]["mean"] == 0.545
    record = result["per_seed"][0]
    assert record["best_single_fixed_T"]["T"] == 0.4 and record["best_single_fixed_T"]["win_rate"] == 56.0
    assert record["best_fixed_T_chosen_on_train"]["T"] == 0.2 and record["meanshift"]["T"] == 0.3
    assert record["chosen_T_share_by_family"] == {"copy": {"0": 1.0}}
    # a seed whose win rate vs the best single fixed T is 50 or less misses the aim, whatever the means say
    per_seed[1] = _fake_seed("head:/h1", 0.60, fixed, 0.55, 49.0)
    assert not replicate.summarise_runs(args, per_seed, {}, [])["online"]["aim"]["met"]
    # a head whose mean reward is below MeanShift's misses it too
    per_seed[1] = _fake_seed("head:/h1", 0.57, fixed, 0.70, 56.0)
    aim = replicate.summarise_runs(args, per_seed, {}, [])["online"]["aim"]
    assert not aim["met"] and not aim["mean_reward_above"]["meanshift"] and aim["mean_reward_above"]["T=0.4"]


def test_the_evaluation_chooses_the_best_fixed_t_on_the_train_split(tmp_path):
    args = replicate.argparse.Namespace(families=list(replicate.DEFAULT_FAMILIES), num_generations=6,
                                        max_completion_length=32)
    config = replicate.eval_config([tmp_path / "h"], 1, tmp_path, args)
    assert (config.dataset_name, config.selection_dataset_name) == ("smollm2_mix:eval", "smollm2_mix:train")
    assert config.seed == 1 and config.strategies == [f"head:{tmp_path / 'h'}"]
    assert replicate.result_name("lpo", "offline", "") == "smollm2_mixed_seq_offline.json"
    assert replicate.result_name("lpo_regression", "online", "n4") == "smollm2_regression_seq_n4.json"
