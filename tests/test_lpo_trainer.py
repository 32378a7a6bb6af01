import json
import math

import pytest
import torch

from lpo_train import AdaptiveDecoderHead
from lpo_train.trainers import LPOTrainer
from tests.helpers.configs import toy_lpo_config

_config = toy_lpo_config


@pytest.mark.parametrize("level", ["sequence", "token"])
def test_two_steps_train_only_the_head(toy_lm_folder, tmp_path, level):
    trainer = LPOTrainer(model=str(toy_lm_folder), args=_config(tmp_path, level=level, loss_type="lpo"))
    lm_before = {k: v.clone() for k, v in trainer.lm.state_dict().items()}
    head_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert all(torch.equal(v, trainer.lm.state_dict()[k]) for k, v in lm_before.items())
    assert any(not torch.equal(v, trainer.model.state_dict()[k]) for k, v in head_before.items())
    logs = {k for entry in trainer.state.log_history for k in entry}
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                "logps/chosen", "logps/rejected", "reward", "reward_std", "rewards/toy_reward/mean",
                "frac_prompts_tied", "completions/mean_length", "choice/arith/mean_value", "choice/story/mean_value",
                "choice/frac_0", "choice/arith/frac_0", "choice/story/frac_1"):
        assert key in logs, key
    first = trainer.state.log_history[0]
    assert first["frac_reward_zero_std"] == first["frac_prompts_tied"]  # TRL's name and the deprecated alias
    if level == "sequence":  # a uniform head: every pair costs ln 2, and both sides have log P = -log K
        assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
        assert first["logps/chosen"] == pytest.approx(-math.log(6), abs=1e-5)
        assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert first["choice/entropy"] == pytest.approx(math.log(6), abs=1e-4)  # the fresh head is uniform
    assert first["choice/kl_from_uniform"] == pytest.approx(0.0, abs=1e-4)
    assert first["rewards/margins"] == pytest.approx(first["rewards/chosen"] - first["rewards/rejected"], abs=1e-5)
    assert first["pairs/reward_chosen"] > first["pairs/reward_rejected"]
    import pandas as pd

    written = pd.read_parquet(tmp_path / "out" / "completions" / f"completions_{trainer.state.global_step:05d}.parquet")
    last = trainer.last_completions  # the last step's samples, labelled with the step they were sampled for
    assert written.to_dict("records")[0] == {"step": 2, **last[0], "choices": pytest.approx(last[0]["choices"])}
    assert len(written) == len(last) and set(written["step"]) == {2} and trainer.state.global_step == 2
    assert set(written["pair_role"]) <= {"", "chosen", "rejected"} and "chosen" in set(written["pair_role"])
    other = AdaptiveDecoderHead(trainer.bare_head().config)  # the unwrapped head follows a replaced model
    trainer.model = other
    assert trainer.bare_head() is other


def test_default_objective_first_step_loss_is_the_groups_reward_variance_by_hand(toy_lm_folder, tmp_path):
    import pandas as pd

    # a uniform head: every log-ratio is 0, so each group's loss is the sample variance of r / beta (beta = 1)
    trainer = LPOTrainer(model=str(toy_lm_folder), args=_config(tmp_path, max_steps=1))
    trainer.train()
    written = pd.read_parquet(tmp_path / "out" / "completions" / "completions_00001.parquet")
    variances = written.groupby("prompt", sort=False)["reward"].var(ddof=1)
    first = trainer.state.log_history[0]
    assert len(variances) == 4 and first["loss"] == pytest.approx(variances.mean(), rel=1e-4)
    assert set(written["pair_role"]) == {"compared"} and first["num_comparisons"] > 0
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-6)  # no choice preferred yet


def test_save_model_writes_only_the_head_with_a_card(toy_lm_folder, tmp_path):
    trainer = LPOTrainer(model=str(toy_lm_folder), args=_config(tmp_path, max_steps=1))
    trainer.train()
    trainer.save_model()
    out = tmp_path / "out"
    assert (out / "model.safetensors").stat().st_size < 2_000_000  # the head, not the LM
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "adaptive_decoder" and config["level"] == "sequence"
    card = (out / "README.md").read_text()
    assert "| loss | lpo_regression |" in card and "| beta | 1.0 |" in card
    assert (out / "choice_histogram.png").exists()
    head = AdaptiveDecoderHead.from_pretrained(out)
    assert torch.equal(head(torch.ones(1, 64)), trainer.model(torch.ones(1, 64)).detach())


@pytest.mark.parametrize("loss_type", ["lpo_latent", "lpo_joint", "nll_chosen"])
def test_other_losses_run(toy_lm_folder, tmp_path, loss_type):
    trainer = LPOTrainer(model=str(toy_lm_folder), args=_config(tmp_path, loss_type=loss_type, max_steps=1,
                                                                 level="token"))
    trainer.train()
    loss = trainer.state.log_history[0]["loss"]
    if loss_type != "nll_chosen":
        assert loss == pytest.approx(math.log(2), abs=1e-4)
    else:
        assert loss > 0


@pytest.mark.parametrize("kwargs,match", [
    ({"num_generations": 1}, "num_generations"), ({"loss_type": "dpo"}, "loss_type"),
    ({"level": "word"}, "level"), ({"grid": ["0", "-1"]}, ">= 0"), ({"grid": ["hot", "cold"]}, "preset"),
    ({"reward_weights": [1.0, 2.0]}, "reward_weights"),
    ({"loss_type": "group_relative", "protocol": "offline", "pairs_path": "p.parquet"}, "needs protocol 'online'"),
    ({"loss_type": "group_relative", "scale_rewards": "batch"}, "scale_rewards"),
])
def test_bad_config_is_a_clear_error(toy_lm_folder, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        LPOTrainer(model=str(toy_lm_folder), args=_config(tmp_path, **kwargs))


def test_unknown_reward_and_empty_dataset(toy_lm_folder, tmp_path):
    import datasets

    with pytest.raises(ValueError, match="Built-in rewards"):
        LPOTrainer(model=str(toy_lm_folder), args=_config(tmp_path, reward_funcs=["nope"]))
    with pytest.raises(ValueError, match="empty"):
        LPOTrainer(model=str(toy_lm_folder), args=_config(tmp_path),
                   train_dataset=datasets.Dataset.from_list([]))


def test_head_hidden_size_mismatch(toy_lm_folder, tmp_path):
    from lpo_train import AdaptiveDecoderConfig

    with pytest.raises(ValueError, match="hidden size"):
        LPOTrainer(model=str(toy_lm_folder), args=_config(tmp_path),
                   head=AdaptiveDecoderHead(AdaptiveDecoderConfig(hidden_size=65)))


def test_rewards_that_fail_for_whole_groups_are_counted_not_paired(toy_lm_folder, tmp_path):
    def none_for_story(prompts, completions, family, **kw):
        return [None if f == "story" else float(sum(map(ord, c))) for c, f in zip(completions, family)]

    trainer = LPOTrainer(model=str(toy_lm_folder), reward_funcs=[none_for_story], args=_config(tmp_path, max_steps=1))
    trainer.train()
    log = trainer.state.log_history[0]
    assert log["prompts_without_valid_rewards"] == 2  # the two story prompts of the step

    def raises(prompts, completions, **kw):
        raise RuntimeError("reward server down")

    trainer = LPOTrainer(model=str(toy_lm_folder), reward_funcs=[raises], args=_config(tmp_path, max_steps=1))
    with pytest.raises(RuntimeError, match="Reward function .raises. failed on 16 completions: RuntimeError: reward server down"):
        trainer.train()


def test_too_long_prompts_are_dropped_before_training_and_all_too_long_is_an_error(toy_lm_folder, tmp_path):
    import datasets

    short = {"prompt": [{"role": "user", "content": "What is 1 + 2?"}], "family": "arith", "answer": "3"}
    long = {"prompt": [{"role": "user", "content": "What is 1 + 2? " * 20}], "family": "arith", "answer": "3"}
    data = datasets.Dataset.from_list([short, long, short, long])
    trainer = LPOTrainer(model=str(toy_lm_folder), args=_config(tmp_path, max_prompt_length=40), train_dataset=data)
    assert len(trainer.train_dataset) == 2 and trainer.num_prompts_dropped == 2
    with pytest.raises(ValueError, match="Every prompt of the train dataset is longer than max_prompt_length=5"):
        LPOTrainer(model=str(toy_lm_folder), args=_config(tmp_path, max_prompt_length=5))


def test_offline_protocol_builds_pairs_once_then_trains_on_them(toy_lm_folder, tmp_path):
    import datasets

    pairs_path = tmp_path / "pairs.parquet"
    args = _config(tmp_path, protocol="offline", pairs_path=str(pairs_path), loss_type="lpo_latent", level="token",
                   per_device_train_batch_size=2, max_steps=3)
    trainer = LPOTrainer(model=str(toy_lm_folder), args=args)
    pairs = datasets.load_dataset("parquet", data_files=str(pairs_path), split="train")
    assert 0 < len(pairs) <= 8 and len(trainer.train_dataset) == len(pairs)
    row = pairs[0]
    assert row["chosen_reward"] > row["rejected_reward"] and row["num_generations"] == 4
    assert len(row["chosen_hidden"]) == len(row["chosen_choices"]) == len(row["chosen_token_logps"])
    assert len(row["chosen_hidden"][0]) == 64 and row["chosen_text"] and row["family"] in ("arith", "story")
    trainer.train()
    steps = [e for e in trainer.state.log_history if "loss" in e]
    losses = [e["loss"] for e in steps]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-4) and len(losses) == 3
    # the pair-building's sampling metrics once, under their own names; every step logs the same training keys
    assert steps[0]["pairs_build/num_pairs"] == len(pairs) and "pairs_build/reward" in steps[0]
    keys = [{k for k in e if not k.startswith(("pairs_build/", "grad_norm/"))} for e in steps]  # (a 2-pair batch
    assert keys[0] == keys[1] == keys[2]  # may hold one family only: no per-family norm then)
    assert "num_pairs" not in steps[0] and not any(k.startswith("pairs_build/") for k in steps[1])
    import pandas as pd  # the samples the pairs came from: written once, as step 0 (before training), not per log

    files = sorted(p.name for p in (tmp_path / "out" / "completions").iterdir())
    written = pd.read_parquet(tmp_path / "out" / "completions" / "completions_00000.parquet")
    assert files == ["completions_00000.parquet"] and set(written["step"]) == {0}
    assert len(written) == 4 * len(set(written["prompt"])) and set(pairs["chosen_text"]) <= set(written["completion"])
    mtime = pairs_path.stat().st_mtime
    again = LPOTrainer(model=str(toy_lm_folder), args=args)  # reuses the stored pairs
    assert pairs_path.stat().st_mtime == mtime and len(again.train_dataset) == len(pairs)


def test_offline_protocol_needs_a_path_and_a_valid_file(toy_lm_folder, tmp_path):
    with pytest.raises(ValueError, match="pairs_path"):
        _config(tmp_path, protocol="offline")
    bogus = tmp_path / "bogus.parquet"
    import datasets

    datasets.Dataset.from_list([{"x": 1}]).to_parquet(str(bogus))
    with pytest.raises(ValueError, match="does not record what produced it"):
        LPOTrainer(model=str(toy_lm_folder), args=_config(tmp_path, protocol="offline", pairs_path=str(bogus)))


def test_choice_distribution_metrics_sum_to_one_per_family(toy_lm_folder, tmp_path):
    trainer = LPOTrainer(model=str(toy_lm_folder), args=_config(tmp_path, max_steps=1, level="token"))
    trainer.train()
    log = trainer.state.log_history[0]
    for prefix in ("choice", "choice/arith", "choice/story"):
        fracs = [v for k, v in log.items() if k.startswith(f"{prefix}/frac_") and k.count("/") == prefix.count("/") + 1]
        assert len(fracs) == 6 and sum(fracs) == pytest.approx(1.0)


def test_group_relative_trains_on_every_response_of_informative_groups(toy_lm_folder, tmp_path):
    trainer = LPOTrainer(model=str(toy_lm_folder), args=_config(tmp_path, loss_type="group_relative", level="token"))
    head_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    first = trainer.state.log_history[0]
    assert first["num_comparisons"] > 0  # pairs of responses whose rewards differ
    rows = [trainer.train_dataset[i] for i in range(4)]
    features, counts = trainer.training_units(rows)  # every valid response of each group, with its coefficient
    assert all(len(f.sides) == len(f.coefficients) == 4 for f in features)
    assert "num_pairs" not in first and "rewards/margins" not in first  # no pair metrics under another meaning
    assert first["advantages/abs_mean"] > 0 and math.isfinite(first["loss"])
    assert any(not torch.equal(v, trainer.model.state_dict()[k]) for k, v in head_before.items())
