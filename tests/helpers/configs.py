"""Shared test configs."""

from lpo_train.trainers import LPOConfig


def toy_lpo_config(tmp_path, **overrides) -> LPOConfig:
    """A small online LPO run on the toy world's arith + story prompts (CPU, seconds)."""
    base = dict(output_dir=str(tmp_path / "out"), dataset_name="toy", toy_families=["arith", "story"],
                toy_prompts_per_family=4, num_generations=4, max_completion_length=48,
                per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2, beta=1.0,
                save_strategy="no", report_to="none", use_cpu=True, seed=0, logging_steps=1)
    base.update(overrides)
    return LPOConfig(**base)
