"""The training-path defects of the objectives issue, each end to end on the toy LM: duplicate prompts, runs that
learn nothing, stale offline files, a continued head's settings, huge and infinite rewards."""

import math

import pytest

from lpo_train import AdaptiveDecoderConfig, AdaptiveDecoderHead
from lpo_train.rewards import compute_rewards
from lpo_train.trainers import LPOTrainer
from lpo_train.trainers.lpo import LPOTrainingFailed
from tests.helpers.configs import toy_lpo_config

_config = toy_lpo_config


def _one_prompt_eight_times(trainer_args):
    from lpo_train.config import PromptDataArguments

    rows = PromptDataArguments(dataset_name="toy", toy_families=["story"], toy_prompts_per_family=1).load_prompts()
    import datasets

    return datasets.Dataset.from_list([rows[0]] * 8)


def test_duplicate_prompts_get_distinct_samples(toy_lm_folder, tmp_path):
    import pandas as pd

    dataset = _one_prompt_eight_times(None)
    trainer = LPOTrainer(model=str(toy_lm_folder), train_dataset=dataset,
                         args=_config(tmp_path, max_steps=1, per_device_train_batch_size=8, level="token"))
    trainer.train()
    written = pd.read_parquet(tmp_path / "out" / "completions" / "completions_00001.parquet")
    assert len(written) == 32 and written["completion"].nunique() > 8  # not 4 texts copied 8 times


def test_a_short_run_whose_every_group_tied_fails_loudly(toy_lm_folder, tmp_path):
    def constant(prompts, completions, **kw):
        return [1.0] * len(completions)

    trainer = LPOTrainer(model=str(toy_lm_folder), reward_funcs=[constant],
                         args=_config(tmp_path, max_steps=1, max_steps_without_pairs=5))
    with pytest.raises(LPOTrainingFailed, match="in any of the run's 1 steps"):
        trainer.train()


def test_a_stale_offline_file_is_an_error_naming_what_differs(toy_lm_folder, tmp_path):
    pairs = str(tmp_path / "pairs.parquet")
    LPOTrainer(model=str(toy_lm_folder), args=_config(tmp_path, protocol="offline", pairs_path=pairs, max_steps=1))
    for change, field in (({"seed": 1}, "seed"), ({"level": "token"}, "level"), ({"grid": [0.0, 1.0]}, "grid"),
                          ({"num_generations": 2}, "num_generations"), ({"loss_type": "lpo"}, "loss_type"),
                          ({"top_k": 5}, "top_k")):
        with pytest.raises(ValueError, match=f"{field}: file"):
            LPOTrainer(model=str(toy_lm_folder), args=_config(tmp_path / field, protocol="offline", pairs_path=pairs,
                                                              **change))


def test_offline_regression_trains_on_stored_groups(toy_lm_folder, tmp_path):
    pairs = str(tmp_path / "pairs.parquet")
    trainer = LPOTrainer(model=str(toy_lm_folder), args=_config(tmp_path, protocol="offline", pairs_path=pairs,
                                                                max_steps=2))
    assert "group_rewards" in trainer.train_dataset.column_names and len(trainer.train_dataset) == 8
    trainer.train()
    assert math.isfinite(trainer.state.log_history[0]["loss"])


def test_a_continued_head_decides_its_settings_and_a_conflict_is_an_error(toy_lm_folder, tmp_path):
    head = AdaptiveDecoderHead(AdaptiveDecoderConfig(hidden_size=64, level="token", grid=(0.0, 0.5, 1.0)))
    head.save_pretrained(tmp_path / "head")
    trainer = LPOTrainer(model=str(toy_lm_folder), args=_config(tmp_path, head_name_or_path=str(tmp_path / "head")))
    assert trainer.args.level == "token" and trainer.args.grid == [0.0, 0.5, 1.0]
    for change, field in (({"level": "sequence"}, "level"), ({"grid": ["0", "1"]}, "grid")):
        with pytest.raises(ValueError, match=f"--{field} .* conflicts with the head being continued"):
            LPOTrainer(model=str(toy_lm_folder), args=_config(tmp_path / field, head_name_or_path=str(tmp_path / "head"),
                                                              **change))


def test_huge_rewards_stay_finite_and_infinite_ones_are_invalid():
    def huge(prompts, completions, **kw):
        return [1e40, 2e40, float("inf"), None]

    total, per_func = compute_rewards([huge], [1.0], ["p"] * 4, ["a", "b", "c", "d"])
    assert total[0].item() == 1e40 and total[1].item() == 2e40  # float64: distinct, not inf, not tied
    assert math.isnan(total[2].item()) and math.isnan(total[3].item())


def test_an_in_memory_model_trains_with_its_tokenizer_as_processing_class(toy_lm_folder, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(toy_lm_folder)
    model = AutoModelForCausalLM.from_pretrained(toy_lm_folder).eval()
    model.config.name_or_path = ""  # as a model built in memory: nothing to reload a tokenizer from
    trainer = LPOTrainer(model=model, processing_class=tokenizer, args=_config(tmp_path, max_steps=1))
    assert trainer.processing_class is tokenizer and trainer.tokenizer is tokenizer
    trainer.train()
    assert trainer.state.global_step == 1 and trainer.processing_class is tokenizer
