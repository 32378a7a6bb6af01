"""Metrics reach the tracker: an offline W&B run is read back from its file."""

import pytest


@pytest.mark.slow
def test_offline_wandb_run_has_the_lpo_metrics(toy_lm_folder, tmp_path, monkeypatch):
    from lpo_train.trainers import LPOConfig, LPOTrainer
    from tests.helpers.wandb_reader import history

    for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb"))
    (tmp_path / "wandb").mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_PROJECT", "lpo-train-tests")
    config = LPOConfig(output_dir=str(tmp_path / "out"), dataset_name="toy", toy_prompts_per_family=4,
                       num_generations=4, max_completion_length=32, per_device_train_batch_size=4, max_steps=2,
                       logging_steps=1, save_strategy="no", report_to=["wandb"], use_cpu=True, beta=1.0)
    trainer = LPOTrainer(model=str(toy_lm_folder), args=config)
    trainer.train()
    import wandb

    wandb.finish()
    (run_file,) = (tmp_path / "wandb").glob("wandb/offline-run-*/run-*.wandb")
    rows = history(run_file)
    keys = {k for row in rows for k in row}
    for key in ("train/loss", "train/rewards/chosen", "train/rewards/margins", "train/rewards/accuracies",
                "train/logps/chosen", "train/reward", "train/frac_prompts_tied", "train/choice/arith/mean_value"):
        assert key in keys, (key, sorted(keys))
    losses = [row["train/loss"] for row in rows if "train/loss" in row]
    logged = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses == pytest.approx(logged)
    assert any("completions" in k for k in keys)  # the completions table


def test_tensorboard_events_have_the_lpo_metrics(toy_lm_folder, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lpo_train.trainers import LPOConfig, LPOTrainer

    config = LPOConfig(output_dir=str(tmp_path / "out"), dataset_name="toy", toy_prompts_per_family=4,
                       num_generations=4, max_completion_length=32, per_device_train_batch_size=4, max_steps=2,
                       logging_steps=1, save_strategy="no", report_to=["tensorboard"], use_cpu=True, beta=1.0)
    trainer = LPOTrainer(model=str(toy_lm_folder), args=config)
    trainer.train()
    (event_dir,) = {p.parent for p in tmp_path.rglob("events.out.tfevents.*")}
    events = EventAccumulator(str(event_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for key in ("train/loss", "train/rewards/accuracies", "train/logps/chosen", "train/frac_prompts_tied"):
        assert key in tags, (key, sorted(tags))
    logged = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert [s.value for s in events.Scalars("train/loss")] == pytest.approx(logged, rel=1e-5)


def test_prompts_from_a_local_jsonl_file_with_extra_columns(toy_lm_folder, tmp_path):
    import json

    from lpo_train.trainers import LPOConfig, LPOTrainer

    seen = {}

    def needs_answer(prompts, completions, answer, difficulty, **kw):
        seen["answer"], seen["difficulty"], seen["prompt"] = answer, difficulty, prompts[0]
        return [float(a in c) for c, a in zip(completions, answer)]

    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": f"What is {a} + {b}?", "answer": str(a + b), "difficulty": "easy"} for a, b in
            [(1, 2), (3, 4), (2, 2), (5, 1)]]  # TRL's standard (non-conversational) prompt-only format
    path.write_text("\n".join(json.dumps(r) for r in rows))
    config = LPOConfig(output_dir=str(tmp_path / "out"), dataset_name=str(path), num_generations=4,
                       max_completion_length=12, per_device_train_batch_size=4, max_steps=1, save_strategy="no",
                       use_cpu=True, report_to="none")
    LPOTrainer(model=str(toy_lm_folder), reward_funcs=[needs_answer], args=config).train()
    assert sorted(set(seen["answer"])) == ["3", "4", "6", "7"] and set(seen["difficulty"]) == {"easy"}
    assert isinstance(seen["prompt"], str) and len(seen["answer"]) == 16
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LPOTrainer(model=str(toy_lm_folder), reward_funcs=[needs_answer],
                   args=LPOConfig(output_dir=str(tmp_path / "o2"), dataset_name=str(tmp_path / "missing.jsonl"),
                                  use_cpu=True, report_to="none"))


def test_trackio_run_has_the_lpo_metrics_and_completions(toy_lm_folder, tmp_path):
    import json
    import os
    import sqlite3
    import uuid
    from pathlib import Path

    from lpo_train.trainers import LPOConfig, LPOTrainer

    project = f"lpo-train-test-{uuid.uuid4().hex[:8]}"  # TRACKIO_DIR is set by conftest (read at import)

    config = LPOConfig(output_dir=str(tmp_path / "out"), dataset_name="toy", toy_prompts_per_family=4,
                       num_generations=4, max_completion_length=32, per_device_train_batch_size=4, max_steps=2,
                       logging_steps=1, save_strategy="no", report_to=["trackio"], use_cpu=True, beta=1.0,
                       project=project, trackio_space_id=None)
    trainer = LPOTrainer(model=str(toy_lm_folder), args=config)
    trainer.train()  # the Trainer's trackio callback finishes the run
    db = Path(os.environ["TRACKIO_DIR"]) / f"{project}.db"
    rows = [json.loads(m) for (m,) in sqlite3.connect(db).execute("select metrics from metrics order by id")]
    keys = {k for row in rows for k in row}
    for key in ("train/loss", "train/rewards/accuracies", "train/logps/chosen", "train/choice/arith/mean_value"):
        assert key in keys, (key, sorted(keys))
    assert "completions" in keys
    logged = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert [row["train/loss"] for row in rows if "train/loss" in row] == pytest.approx(logged)
