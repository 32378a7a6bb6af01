"""Evaluation harness features: KLD on suites with evidence, answer/reference metrics, the
by-position temperature figure (Fig. 5) and tracker logging. Expectations are hand-computed."""

import json

import pytest

from lpo_train.evaluation import report
from lpo_train.evaluation.harness import EvalConfig, evaluate, evidence_free_prompts, parse_strategy


def test_kld_spec_and_evidence_free_prompts():
    assert parse_strategy("kld:T0=0.8,sigma=2") == ("kld", {"T0": 0.8, "sigma": 2.0})
    assert parse_strategy("kld") == ("kld", {"T0": 1.0, "sigma": 1.0})
    rows = [{"prompt": [{"role": "user", "content": "Facts: the sky is green. What colour is the sky?"}],
             "evidence": "Facts: the sky is green."},
            {"prompt": "Given x = 3, what is x?", "evidence": "Given x = 3,"}]
    assert evidence_free_prompts(rows) == [[{"role": "user", "content": "What colour is the sky?"}],
                                           "what is x?"]
    with pytest.raises(ValueError, match="does not occur in its prompt"):
        evidence_free_prompts([{"prompt": "abc", "evidence": "xyz"}])


def test_kld_without_an_evidence_column_names_the_fix_before_loading_the_model(tmp_path):
    config = EvalConfig(model_name_or_path=str(tmp_path / "no-such-model"), toy_prompts_per_family=1,
                        strategies=["kld:T0=1,sigma=1"], output_dir=str(tmp_path / "e"))
    with pytest.raises(ValueError, match="add a 'evidence' column"):
        evaluate(config)  # the toy suite has no evidence: fails before the (missing) model is loaded


def test_kld_runs_on_a_suite_with_evidence(tiny_lm_path, tmp_path):
    suite = tmp_path / "suite.jsonl"
    rows = [{"prompt": "Facts: the sky is green. What colour is the sky?", "evidence": "Facts: the sky is green."},
            {"prompt": "Facts: Bob is 7. How old is Bob?", "evidence": "Facts: Bob is 7."}]
    suite.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = EvalConfig(model_name_or_path=str(tiny_lm_path), dataset_name=str(suite), dataset_split="train",
                        reward_funcs=["negative_repetition"], temperatures=[0.0], num_generations=2, max_completion_length=6,
                        strategies=["kld:T0=0.7,sigma=0", "kld:T0=0.9,sigma=1"], n_boot=10,
                        output_dir=str(tmp_path / "e"))
    summary = evaluate(config)
    assert summary["kld:T0=0.7,sigma=0"]["mean_value_by_family"]["all"] == pytest.approx(0.7)  # sigma 0: T = T0
    values = [v for item in json.loads((tmp_path / "e" / "strategies" / "kld_T0=0.9_sigma=1.json").read_text())["values"]
              for seq in item for v in seq]
    assert all(0 < v <= 0.9 + 1e-6 for v in values) and min(values) < 0.9  # the evidence cools some steps


def test_extract_answer():
    assert report.extract_answer("The answer is 12. Or 13?") == "12"
    assert report.extract_answer("3 + 4 = 7", "last_number") == "7"
    assert report.extract_answer("-2.5 degrees") == "-2.5"
    assert report.extract_answer("no number") is None
    assert report.extract_answer("  Paris \n", "text") == "Paris"


def test_task_metrics_only_when_columns_exist():
    config = EvalConfig()
    rows = [{"answer": "7"}, {"answer": "3"}, {"answer": ""}]
    data = {"texts": [["7", "The answer is 7.", "8"], ["3 apples", "4", "4"], ["x", "y", "z"]]}
    out = report.task_metrics(data, rows, config)
    # row 0: votes 7, 7, 8 (2 right, majority 7 right); row 1: 3, 4, 4 (1 right, majority 4 wrong); row 2: no answer
    assert out == {"accuracy": 50.0, "maj_at_n": 50.0, "num_answered": 2}
    # a number extractor skips non-numeric gold answers; the text extractor compares whole texts
    rows_words = rows + [{"answer": "Paris"}]
    data_words = {"texts": data["texts"] + [["Paris", "Rome", "Paris"]]}
    assert report.task_metrics(data_words, rows_words, config)["num_answered"] == 2
    out = report.task_metrics(data_words, rows_words, EvalConfig(answer_extractor="text"))
    # text: row 0 "7" right once; row 1 "3 apples" != "3": none; row 3 Paris twice (majority right)
    assert out == pytest.approx({"accuracy": 100 * 3 / 9, "maj_at_n": 100 * 2 / 3, "num_answered": 3})
    rows = [{"reference": "the cat sat on the mat"}, {"reference": ""}]
    data = {"texts": [["the cat sat on the mat", "the cat"], ["a", "b"]]}
    out = report.task_metrics(data, rows, config)
    # ROUGE-L F: 1.0 for the exact copy; "the cat": P = 1, R = 2/6, F = 0.5 -> mean 0.75
    assert out["rouge_l"] == pytest.approx(0.75) and set(out) == {"rouge_l", "bleu"}
    exact = report.task_metrics({"texts": [["the cat sat on the mat"]]}, rows[:1], config)
    assert exact["bleu"] == pytest.approx(100.0)
    assert report.task_metrics({"texts": [["a"]]}, [{"family": "story"}], config) == {}


def test_values_by_sentence_position():
    values, starts = [[0.0, 1.0, 1.0, 0.2, 0.6]], [[True, False, False, True, False]]
    # positions 0 1 2 0 1 -> position 0: (0 + 0.2) / 2, position 1: (1 + 0.6) / 2, position 2: 1
    assert report.values_by_sentence_position(values, starts, 4) == pytest.approx([0.1, 0.8, 1.0, None])
    by_pos = report.values_by_sentence_position(values, starts, 2)  # positions >= 1 pooled in the last slot
    assert by_pos == pytest.approx([0.1, (1.0 + 1.0 + 0.6) / 3])


def test_position_plot_report_columns_and_tensorboard(toy_lm_folder, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import AutoModelForCausalLM

    from lpo_train import AdaptiveDecoderHead

    lm = AutoModelForCausalLM.from_pretrained(toy_lm_folder)
    AdaptiveDecoderHead.for_model(lm, level="token", grid=[0.0, 1.0]).save_pretrained(tmp_path / "head")
    config = EvalConfig(model_name_or_path=str(toy_lm_folder), toy_families=["arith", "constrained"],
                        toy_prompts_per_family=2, num_generations=2, max_completion_length=24, temperatures=[0.0, 1.0],
                        strategies=[f"head:{tmp_path / 'head'}:sample"], n_boot=10, report_to=["tensorboard"],
                        run_name="t", output_dir=str(tmp_path / "e"))
    summary = evaluate(config)
    out = tmp_path / "e"
    assert (out / "temperature_by_position.png").exists()
    head = summary[f"head:{tmp_path / 'head'}:sample"]
    assert len(head["mean_value_by_sentence_position"]) == config.max_sentence_position
    # an untrained head samples T in {0, 1} uniformly: every value it applied is 0 or 1, about half of each
    raw = json.loads(next((out / "strategies").glob("head*.json")).read_text())
    applied = [v for prompt in raw["values"] for seq in prompt for v in seq]
    assert set(applied) == {0.0, 1.0} and 0.3 < sum(applied) / len(applied) < 0.7
    assert summary["T=1"]["mean_value_by_sentence_position"][0] == 1.0
    report = (out / "report.md").read_text()
    assert "maj@2 %" in report and "3-gram rep. %" in report and "| sentence start | other |" in report
    assert "accuracy" in summary["T=0"] and "rouge_l" not in summary["T=0"]  # toy rows have answers, no references
    events = EventAccumulator(str(out / "runs" / "t"), size_guidance={"images": 0})
    events.Reload()
    images = set(events.Tags()["images"])
    assert images == {"eval/plots/reward_vs_temperature", "eval/plots/temperature_histogram",
                      "eval/plots/temperature_by_position"}
    (image,) = events.Images("eval/plots/temperature_by_position")
    from matplotlib.image import imread

    assert (image.height, image.width) == imread(str(out / "temperature_by_position.png")).shape[:2]
    (scalar,) = events.Scalars("eval/T=1/mean_reward")
    assert scalar.value == pytest.approx(summary["T=1"]["mean_reward"])
    (scalar,) = events.Scalars("eval/T=0/maj_at_n")
    assert scalar.value == pytest.approx(summary["T=0"]["maj_at_n"])


def test_unknown_tracker_is_rejected():
    with pytest.raises(ValueError, match="Unknown tracker"):
        EvalConfig(report_to=["mlflow"])
    assert EvalConfig(report_to=["none"]).report_to == []


def _tiny_png(path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1], [0, 1])
    fig.savefig(path, dpi=20)
    plt.close(fig)
    return path


_SUMMARY = {"T=0": {"mean_reward": 0.25, "average_win_rate": 50.0, "self_bleu": None},
            "head:/x/h": {"mean_reward": 0.75, "maj_at_n": 80.0}}


def test_tracker_scalars_skip_missing_values():
    from lpo_train.evaluation.tracking import scalars

    assert scalars(_SUMMARY) == {"eval/T=0/mean_reward": 0.25, "eval/T=0/average_win_rate": 50.0,
                                 "eval/head:/x/h/mean_reward": 0.75, "eval/head:/x/h/maj_at_n": 80.0}


def test_trackio_gets_the_scalars_and_the_plots(tmp_path):
    import os
    import sqlite3
    import uuid
    from pathlib import Path

    from lpo_train.evaluation.tracking import log_evaluation

    project = f"lpo-train-eval-test-{uuid.uuid4().hex[:8]}"  # TRACKIO_DIR is set by conftest
    plot = _tiny_png(tmp_path / "p.png")
    log_evaluation(["trackio"], _SUMMARY, {"temperature_by_position": plot}, {"seed": 0}, tmp_path, project, "r")
    db = Path(os.environ["TRACKIO_DIR"]) / f"{project}.db"
    rows = [json.loads(m) for (m,) in sqlite3.connect(db).execute("select metrics from metrics")]
    logged = {k: v for row in rows for k, v in row.items()}
    assert logged["eval/head:/x/h/mean_reward"] == 0.75 and logged["eval/T=0/average_win_rate"] == 50.0
    assert logged["eval/plots/temperature_by_position"]["_type"] == "trackio.image"


@pytest.mark.slow
def test_wandb_offline_gets_the_scalars_and_the_plots(tmp_path, monkeypatch):
    from lpo_train.evaluation.tracking import log_evaluation
    from tests.helpers.wandb_reader import history

    for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb"))
    (tmp_path / "wandb").mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    plot = _tiny_png(tmp_path / "p.png")
    import wandb

    try:
        log_evaluation(["wandb"], _SUMMARY, {"reward_vs_temperature": plot}, {"seed": 0}, tmp_path, "lpo-train-tests", "r")
    finally:
        wandb.teardown()  # wandb's process-wide setup keeps this test's folders otherwise (later runs would land here)
    (run_file,) = (tmp_path / "wandb").glob("wandb/offline-run-*/run-*.wandb")
    logged = {k: v for row in history(run_file) for k, v in row.items()}
    assert logged["eval/head:/x/h/maj_at_n"] == 80.0 and logged["eval/T=0/mean_reward"] == 0.25
    assert logged["eval/plots/reward_vs_temperature/_type"] == "image-file"  # the reader flattens nested keys
    from matplotlib.image import imread

    assert [logged[f"eval/plots/reward_vs_temperature/{k}"] for k in ("height", "width")] == list(imread(plot).shape[:2])
