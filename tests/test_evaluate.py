import json

import pytest

from lpo_train import AdaptiveDecoderHead
from lpo_train.evaluation import harness
from lpo_train.evaluation.harness import EvalConfig, evaluate, parse_strategy


def _config(tmp_path, toy_lm_folder, **kw):
    base = dict(model_name_or_path=str(toy_lm_folder), toy_prompts_per_family=4, num_generations=2,
                max_completion_length=40, temperatures=[0.0, 1.0], n_boot=50, output_dir=str(tmp_path / "eval"))
    base.update(kw)
    return EvalConfig(**base)


def test_evaluate_writes_results_report_plot_and_resumes(toy_lm_folder, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(toy_lm_folder)
    head = AdaptiveDecoderHead.for_model(lm, level="sequence", grid=[0.0, 1.0])
    head.save_pretrained(tmp_path / "head")
    config = _config(tmp_path, toy_lm_folder, strategies=["edt:T0=1,theta=1", "min_p:0.2", f"head:{tmp_path / 'head'}"])
    summary = evaluate(config)
    out = tmp_path / "eval"
    results = json.loads((out / "results.json").read_text())["strategies"]
    head = f"head:{tmp_path / 'head'}"
    # the head's MeanShift baseline runs beside it: an untrained head always picks T = 0, its mean
    assert set(results) == {"T=0", "T=1", "edt:T0=1,theta=1", "min_p:0.2", head, f"meanshift({head})=T0"}
    assert results[f"meanshift({head})=T0"]["mean_reward"] == results["T=0"]["mean_reward"]
    assert results["T=0"]["win_rate_vs_fixed"]["0"]["win_rate"] == 50.0  # against itself: all ties
    assert results["T=0"]["percent_non_greedy"] == 0 and results["T=1"]["percent_non_greedy"] == 100
    low, high = results["T=1"]["win_rate_vs_fixed"]["0"]["ci95"]
    assert low <= results["T=1"]["win_rate_vs_fixed"]["0"]["win_rate"] <= high
    # an untrained head ties its argmax to the first grid value (T = 0): it decodes greedily
    assert results[f"head:{tmp_path / 'head'}"]["mean_value_by_family"]["arith"] == 0.0
    assert set(results["T=0"]["mean_reward_by_family"]) == {"arith", "story"}
    assert "| T=0 |" in (out / "report.md").read_text() and (out / "reward_vs_temperature.png").exists()
    assert (out / "temperature_histogram.png").exists()
    assert results["T=1"]["mean_value_sentence_start"] == results["T=1"]["mean_value_other"] == 1.0
    raw = json.loads((out / "strategies" / "T=0.json").read_text())
    assert all(flags[0] for item in raw["sentence_start"] for flags in item)  # the first token opens a sentence
    assert summary == results

    def must_not_run(*a, **k):
        raise AssertionError("a finished strategy was recomputed")

    monkeypatch.setattr(harness, "run_strategy", must_not_run)
    assert evaluate(config) == summary  # resumed entirely from the per-strategy files


def test_partial_strategy_files_are_not_trusted(toy_lm_folder, tmp_path):
    config = _config(tmp_path, toy_lm_folder)
    (tmp_path / "eval" / "strategies").mkdir(parents=True)
    (tmp_path / "eval" / "strategies" / "T=0.partial").write_text("{broken")
    summary = evaluate(config)
    assert set(summary) == {"T=0", "T=1"}


def test_sentence_starts(tokenizer):
    ids = tokenizer("Hi there. Second one! Third?", add_special_tokens=False)["input_ids"]
    flags = harness.sentence_starts(tokenizer, ids)
    pieces = tokenizer.batch_decode([[t] for t in ids])
    starts = [p for p, f in zip(pieces, flags) if f]
    assert starts[0] == pieces[0] and len(starts) == 3 and flags.count(True) == 3


@pytest.mark.parametrize("spec", ["edt:T0=x", "head:", "nucleus:0.9", "min_p:"])
def test_bad_strategies_are_rejected_before_loading(spec):
    with pytest.raises(ValueError, match="Cannot read strategy"):
        parse_strategy(spec)
    with pytest.raises(ValueError, match="Cannot read strategy"):
        EvalConfig(strategies=[spec])


def test_cli_evaluate(toy_lm_folder, tmp_path, capsys):
    from lpo_train.cli import main

    main(["evaluate", "--model_name_or_path", str(toy_lm_folder), "--toy_prompts_per_family", "2",
          "--num_generations", "2", "--temperatures", "0", "1", "--n_boot", "20", "--output_dir", str(tmp_path / "e")])
    assert "win vs T=0" in capsys.readouterr().out and (tmp_path / "e" / "results.json").exists()


def test_rerun_with_other_settings_recomputes_and_same_settings_resume(toy_lm_folder, tmp_path, capsys):
    out = tmp_path / "eval"
    first = evaluate(_config(tmp_path, toy_lm_folder, temperatures=[1.0], num_generations=2))
    assert "resumed" not in capsys.readouterr().out
    same = evaluate(_config(tmp_path, toy_lm_folder, temperatures=[1.0], num_generations=2))
    assert "resumed: reused 1 finished strategies" in capsys.readouterr().out
    assert same["T=1"]["mean_reward"] == first["T=1"]["mean_reward"]
    other = evaluate(_config(tmp_path, toy_lm_folder, temperatures=[1.0], num_generations=3))
    assert "computed with other settings" in capsys.readouterr().out  # never the stale N = 2 numbers
    raw = json.loads((out / "strategies" / "T=1.json").read_text())
    assert all(len(r) == 3 for r in raw["rewards"]) and other["T=1"]["mean_reward"] is not None
