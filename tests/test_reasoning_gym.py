"""reasoning-gym suites as prompt datasets, scored by each task's own verifier."""

import json

import pytest

from lpo_train.rewards import resolve_reward
from lpo_train.tasks.reasoning import make_reasoning_gym_rows


def test_rows_and_verifier_reward():
    rows = make_reasoning_gym_rows("reasoning_gym:basic_arithmetic+chain_sum:3", seed=7)
    assert [r["family"] for r in rows] == ["basic_arithmetic"] * 3 + ["chain_sum"] * 3
    assert rows == make_reasoning_gym_rows("reasoning_gym:basic_arithmetic+chain_sum:3", seed=7)  # seeded
    entry = json.loads(rows[0]["rg_entry"])
    assert rows[0]["prompt"] == [{"role": "user", "content": entry["question"]}]
    reward = resolve_reward("reasoning_gym")
    gold = [r["answer"] for r in rows]
    cols = {"family": [r["family"] for r in rows], "rg_entry": [r["rg_entry"] for r in rows]}
    assert reward(None, gold, **cols) == [1.0] * 6
    wrong = [str(int(a) + 1) for a in gold]
    assert reward(None, wrong, **cols) == [0.0] * 6
    with pytest.raises(ValueError, match="no task"):
        make_reasoning_gym_rows("reasoning_gym:no_such_task")
    with pytest.raises(ValueError, match="must be an integer"):
        make_reasoning_gym_rows("reasoning_gym:chain_sum:many")


def test_evaluate_on_a_reasoning_gym_suite(tiny_lm_path, tmp_path):
    from lpo_train.evaluation.harness import EvalConfig, evaluate

    config = EvalConfig(model_name_or_path=str(tiny_lm_path), dataset_name="reasoning_gym:chain_sum:4",
                        reward_funcs=["reasoning_gym"], temperatures=[0.0, 1.0], num_generations=2, max_completion_length=4,
                        output_dir=str(tmp_path))
    summary = evaluate(config)
    assert set(summary) == {"T=0", "T=1"}
    assert summary["T=0"]["mean_reward_by_family"].keys() == {"chain_sum"}
    assert 0.0 <= summary["T=1"]["mean_reward"] <= 1.0
