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
