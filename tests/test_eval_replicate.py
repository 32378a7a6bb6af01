"""scripts/replicate_toy.py: the constraint-first win rate and the seed aggregation, on hand-made data."""

import importlib.util
import json
from pathlib import Path

import pytest

from lpo_train.tasks.toy import constrained_parts, constrained_score

_spec = importlib.util.spec_from_file_location("replicate_toy", Path(__file__).resolve().parents[1]
                                               / "scripts" / "replicate_toy.py")
replicate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(replicate)

GOOD = "the big cat sees the dog in the forest"


def test_constrained_parts():
    text = f"then {GOOD}. later {GOOD}."
    # 1 of max(2 sentences, 4) starts with "then"; quality: 2 grammatical of max(2, 4) x distinct 3-grams
    constraint, quality = constrained_parts(text, "then")
    assert constraint == 0.25
    words = (GOOD + " " + GOOD).split()
    distinct = len({tuple(words[i:i + 3]) for i in range(len(words) - 2)}) / (len(words) - 2)
    assert quality == pytest.approx(0.5 * distinct)
    assert constrained_score(text, "then") == pytest.approx(0.7 * 0.25 + 0.3 * quality)


def test_constraint_first_win_rate(tmp_path):
    rows = [{"starter": "then"}, {"starter": "soon"}, {"starter": "soon"}]
    good4 = ("soon the big cat sees the dog in the forest. then the old fox finds the owl near the river. "
             "then the red king meets the bear at the market. then the tall girl helps the wolf on the hill.")
    bad4 = "soon x. soon y. then z. then w."  # keeps 2 of 4 but nothing grammatical
    raw = {"T=0": {"texts": [[f"then {GOOD}."], [f"soon {GOOD}."], [good4]]},
           "head": {"texts": [[good4.replace("soon", "then")], [f"then {GOOD}."], [bad4]]}}
    for name, data in raw.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    # row 2: the head keeps more constraints (0.5 vs 0.25) yet has the lower combined reward
    assert constrained_score(bad4, "soon") < constrained_score(good4, "soon")
    summary = {"T=0": {}, "head": {}}
    replicate.add_constraint_first_win_rates(summary, rows, tmp_path, [0.0])
    # row 0: 1.0 vs 0.25 kept -> win; row 1: 0 vs 0.25 -> loss; row 2: 0.5 vs 0.25 -> win (constraint first)
    assert summary["head"]["constraint_first_win_rate_vs_fixed"]["0"]["win_rate"] == pytest.approx(200 / 3)
    assert summary["T=0"]["constraint_first_win_rate_vs_fixed"]["0"]["win_rate"] == 50.0  # all ties


def test_aggregate_maps_heads_across_seeds():
    def summary(reward, head):
        entry = lambda r: {"mean_reward": r, "average_win_rate": 50.0, "percent_non_greedy": 0.0,  # noqa: E731
                           "win_rate_vs_fixed": {"0": {"win_rate": 50.0}}, "mean_reward_by_family": {"arith": r},
                           "mean_value_by_family": {"arith": 0.0}}
        return {"T=0": entry(0.5), head: entry(reward)}

    per_seed = [(summary(0.6, "head:/s0/h"), {"AD": "head:/s0/h"}), (summary(0.8, "head:/s1/h"), {"AD": "head:/s1/h"})]
    agg = replicate.aggregate("x", per_seed, [0, 1])
    assert agg["seeds"] == 2 and set(agg["strategies"]) == {"T=0", "AD"}
    assert agg["strategies"]["AD"]["mean_reward"]["mean"] == pytest.approx(0.7)
    assert agg["strategies"]["AD"]["mean_reward"]["std"] == pytest.approx(0.1414213, rel=1e-5)
    assert agg["strategies"]["T=0"]["mean_reward"]["std"] == 0.0


def test_aggregate_maps_meanshift_runs_across_seeds():
    """A head's MeanShift run is named by the seed's head path and mean value; seeds are matched by the head's label."""
    def entry(r):
        return {"mean_reward": r, "average_win_rate": 50.0, "percent_non_greedy": 0.0,
                "win_rate_vs_fixed": {"0": {"win_rate": 50.0}}, "mean_reward_by_family": {"arith": r},
                "mean_value_by_family": {"arith": 0.0}}

    def seed(head, value, reward):
        summary = {"T=0": entry(0.5), head: entry(reward), f"meanshift({head})=T{value}": entry(reward - 0.1)}
        win = lambda w: {"win_rate": w, "ci95": [w - 10, w + 10], "num_invalid": 0}  # noqa: E731
        baselines = {"best_fixed_T": {"temperature": 0.0, "chosen_on": "train"},
                     "per_family_oracle": {"temperature_by_family": {"arith": 0.0}, "mean_reward": 0.7},
                     "meanshift": {head: {"strategy": f"meanshift({head})=T{value}", "value": value,
                                          "mean_reward": reward - 0.1}},
                     "heads": {head: {"meanshift": win(60.0), "best_fixed_T": win(70.0), "per_family_oracle": win(40.0),
                                      "beats_every_baseline": False, "beats_fair_baselines": True}}}
        return summary, {"AD": head}, baselines

    per_seed = [seed("head:/s0/h", 0.4, 0.6), seed("head:/s1/h", 0.53, 0.8)]
    agg = replicate.aggregate("x", per_seed, [0, 1])
    assert set(agg["strategies"]) == {"T=0", "AD", "meanshift(AD)"}
    ms = agg["strategies"]["meanshift(AD)"]
    assert ms["mean_reward"]["mean"] == pytest.approx(0.6)
    assert ms["meanshift_strategy"] == ["meanshift(head:/s0/h)=T0.4", "meanshift(head:/s1/h)=T0.53"]
    head = agg["baselines"]["heads"]["AD"]
    assert head["meanshift_value"] == [0.4, 0.53] and head["win_rate_vs_best_fixed_T"]["mean"] == 70.0
    assert head["beats_fair_baselines"] == [True, True]
    # without baselines (no head, or an old two-element tuple) there is no baselines entry
    assert "baselines" not in replicate.aggregate("x", [s[:2] for s in per_seed], [0, 1])
