"""LPOTrainer's evaluation (TRL's eval_dataset / eval_strategy / eval_steps): the head's held-out reward and choices."""

import math

import pytest
import torch
from datasets import Dataset

from lpo_train.decoding import FixedTemperature, SamplingParams, generate
from lpo_train.rewards import PRIVATE_COLUMN, compute_rewards, resolve_rewards
from lpo_train.tasks.toy import make_prompts
from lpo_train.trainers import LPOConfig, LPOTrainer
from lpo_train.trainers.lpo_eval import eval_seed
from lpo_train.trainers.lpo_rollout import with_positions
from tests.helpers.configs import toy_lpo_config


def _force_choice(head, index: int) -> None:
    """Make the head pick grid value ``index`` on every input (its last layer outputs a constant)."""
    last = [m for m in head.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(-10.0)
        last.bias[index] = 10.0


@pytest.fixture(scope="module")
def eval_rows():
    return make_prompts(["arith", "story"], 3, seed=7)  # 6 held-out prompts, two families


def test_eval_reward_equals_fixed_temperature_sampling_with_the_same_seeds(toy_lm_folder, tmp_path, eval_rows):
    # A head that always picks T = grid[2]: its held-out samples are the engine's at that fixed T with the
    # evaluation's seeds, so its eval metrics equal a hand computation on independently drawn samples.
    trainer = LPOTrainer(model=str(toy_lm_folder), args=toy_lpo_config(tmp_path, grid=[0.0, 0.5, 1.0]),
                         eval_dataset=Dataset.from_list(eval_rows))
    _force_choice(trainer.bare_head(), 2)
    metrics = trainer.evaluate()
    rows = with_positions(Dataset.from_list(eval_rows)).to_list()
    traces = generate(trainer.lm, trainer.tokenizer, [r["prompt"] for r in rows], FixedTemperature(1.0),
                      SamplingParams(max_new_tokens=48, num_samples=4, prompt_seeds=[eval_seed(trainer, r) for r in rows]))
    funcs, weights = resolve_rewards(["toy"], None)
    rewards, _ = compute_rewards(funcs, weights, [rows[t.prompt_index]["prompt"] for t in traces],
                                 [t.text for t in traces],
                                 **{k: [rows[t.prompt_index][k] for t in traces] for k in rows[0]
                                    if k not in ("prompt", PRIVATE_COLUMN)})
    assert metrics["eval_reward"] == pytest.approx(rewards.mean().item(), abs=1e-9)
    for family in ("arith", "story"):
        mine = [r for t, r in zip(traces, rewards.tolist()) if rows[t.prompt_index]["family"] == family]
        assert metrics[f"eval_reward/{family}"] == pytest.approx(sum(mine) / len(mine), abs=1e-9)
    assert metrics["eval_completions/mean_length"] == pytest.approx(sum(len(t.token_ids) for t in traces) / 24)
    assert metrics["eval_choice/frac_1"] == 1.0 and metrics["eval_choice/frac_0"] == 0.0
    assert metrics["eval_choice/mean_value"] == 1.0 and metrics["eval_frac_rewards_invalid"] == 0.0
    assert metrics["eval_choice/entropy"] < 1e-3  # the forced head is (nearly) certain
    assert metrics["eval_choice/kl_from_uniform"] == pytest.approx(math.log(3) - metrics["eval_choice/entropy"])
    # the same seeds at every evaluation: a second call reports the same numbers; it is in the log history
    assert trainer.evaluate()["eval_reward"] == metrics["eval_reward"]
    assert [e["eval_reward"] for e in trainer.state.log_history if "eval_reward" in e] == [metrics["eval_reward"]] * 2
    trainer.args.per_device_eval_batch_size = 1  # sampled a prompt at a time: the same samples, the same numbers
    assert trainer.evaluate() | {"eval_runtime": 0} == metrics | {"eval_runtime": 0}


def test_evaluation_at_eval_steps_keeps_the_training_metrics(toy_lm_folder, tmp_path, eval_rows):
    # eval every step, log every 2: the training metrics of step 1 must reach the step-2 training log, not the
    # step-1 evaluation entry (which holds eval_* keys only)
    args = toy_lpo_config(tmp_path, eval_strategy="steps", eval_steps=1, logging_steps=2, max_steps=2)
    trainer = LPOTrainer(model=str(toy_lm_folder), args=args, eval_dataset=Dataset.from_list(eval_rows))
    trainer.train()
    evals = [e for e in trainer.state.log_history if "eval_reward" in e]
    trains = [e for e in trainer.state.log_history if "loss" in e]
    assert [e["step"] for e in evals] == [1, 2] and [e["step"] for e in trains] == [2]
    assert all(not any(k == "reward" or k.startswith("choice/") for k in e) for e in evals)
    assert "reward" in trains[0] and "choice/entropy" in trains[0]
    assert all(math.isfinite(e["eval_reward"]) for e in evals)


def test_eval_dataset_name_loads_prompts_and_turns_evaluation_on(toy_lm_folder, tmp_path, eval_rows):
    path = tmp_path / "held_out.jsonl"
    Dataset.from_list(eval_rows).to_json(str(path))
    args = toy_lpo_config(tmp_path, eval_dataset_name=str(path))
    assert args.eval_strategy == "steps" and args.eval_steps == args.logging_steps
    trainer = LPOTrainer(model=str(toy_lm_folder), args=args)
    assert len(trainer.eval_dataset) == 6 and trainer.eval_dataset["prompt"] == [r["prompt"] for r in eval_rows]


def test_a_generated_eval_dataset_is_drawn_apart_from_the_training_prompts(toy_lm_folder, tmp_path):
    """eval_dataset_name 'toy' (a generated dataset, no splits) is drawn with another seed than the training
    prompts, so it is not the training set evaluated again."""
    trainer = LPOTrainer(model=str(toy_lm_folder), args=toy_lpo_config(tmp_path, eval_dataset_name="toy",
                                                                       toy_prompts_per_family=16))
    train = [str(p) for p in trainer.train_dataset["prompt"]]
    held = [str(p) for p in trainer.eval_dataset["prompt"]]
    assert len(held) == len(train) == 32 and held != train
    assert sum(p in set(train) for p in held) < len(held) / 2, sum(p in set(train) for p in held)


def test_named_eval_datasets_are_evaluated_each_under_its_name(toy_lm_folder, tmp_path, eval_rows):
    """TRL's dict of eval datasets: each is evaluated at eval_steps and by evaluate() as eval_<name>_<metric>, with
    the numbers it gets alone (its own rows, positions and seeds)."""
    named = {family: Dataset.from_list([r for r in eval_rows if r["family"] == family]) for family in ("arith", "story")}
    args = toy_lpo_config(tmp_path, eval_strategy="steps", eval_steps=2, max_steps=2)
    trainer = LPOTrainer(model=str(toy_lm_folder), args=args, eval_dataset=named)
    trainer.train()
    logged = {k for e in trainer.state.log_history for k in e if k.endswith("_reward")}
    assert {"eval_arith_reward", "eval_story_reward"} <= logged and "eval_reward" not in logged
    metrics = trainer.evaluate()
    assert metrics["eval_arith_reward"] == metrics["eval_arith_reward/arith"]
    assert trainer.evaluate(named["story"])["eval_reward"] == metrics["eval_story_reward"]
    assert trainer.evaluate("arith", metric_key_prefix="eval_arith")["eval_arith_reward"] == \
        metrics["eval_arith_reward"]


def test_bad_evaluation_settings_are_clear_errors(toy_lm_folder, tmp_path):
    with pytest.raises(ValueError, match="metric_for_best_model"):
        toy_lpo_config(tmp_path, eval_dataset_name="toy", load_best_model_at_end=True, save_strategy="steps")
    with pytest.raises(ValueError, match="eval prompt dataset needs a 'prompt' column"):
        LPOTrainer(model=str(toy_lm_folder), args=toy_lpo_config(tmp_path),
                   eval_dataset=Dataset.from_list([{"text": "hi"}]))
    trainer = LPOTrainer(model=str(toy_lm_folder), args=toy_lpo_config(tmp_path))
    with pytest.raises(ValueError, match="Nothing to evaluate on"):
        trainer.evaluate()


def test_best_model_by_eval_reward_is_accepted(tmp_path):
    args = toy_lpo_config(tmp_path, eval_dataset_name="toy", load_best_model_at_end=True, save_strategy="steps",
                          metric_for_best_model="reward")
    assert isinstance(args, LPOConfig) and args.greater_is_better
