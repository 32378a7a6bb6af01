"""The toy world's reason to exist: no single fixed temperature is best for every family."""

import json

import pytest

from lpo_train.evaluation.sweep import mix_gap, sweep_temperatures
from lpo_train.tasks.toy import make_prompts, toy_reward


@pytest.mark.slow
def test_best_temperature_depends_on_the_family(toy_small):
    model, tok = toy_small
    rows = make_prompts(["arith", "story"], n_per_family=24, seed=777)
    table = sweep_temperatures(model, tok, rows, toy_reward, temperatures=(0.0, 0.4, 0.8, 1.0),
                               num_generations=3, seed=1)
    gap = mix_gap(table)
    assert gap["best_T_per_family"]["arith"] <= 0.4 < gap["best_T_per_family"]["story"]
    assert table["arith"][0.0] > table["arith"][1.0] + 0.2  # sampling hurts arithmetic
    assert table["story"][1.0] > table["story"][0.0] + 0.2  # greedy repeats itself
    assert gap["margin"] >= 0.05


def test_cli_sweep_writes_json_and_png(toy_small, tmp_path, capsys):
    from lpo_train.cli import main

    main(["toy-sweep", "--seeds", "0", "--n-per-family", "2", "--num-generations", "1",
          "--temperatures", "0", "1", "--families", "arith", "story", "--output-dir", str(tmp_path)])
    summary = json.loads((tmp_path / "sweep.json").read_text())
    assert set(summary["mean"]) == {"arith", "story"} and set(summary["mean"]["arith"]) == {"0.0", "1.0"}
    assert summary["mix_margin_mean"] == pytest.approx(summary["mix_gap_per_seed"][0]["margin"])
    assert (tmp_path / "sweep.png").stat().st_size > 1000
    assert "arith+story mix" in capsys.readouterr().out


def test_unknown_toy_size_is_rejected():
    from lpo_train.tasks.toy_lm import pretrain_toy_lm

    with pytest.raises(ValueError, match="small"):
        pretrain_toy_lm("huge")
