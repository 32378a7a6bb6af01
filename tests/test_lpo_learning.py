"""LPO that keeps learning: exploration with a confident head, loud failures for runs that learn
nothing, the reference over choices, output-dir hygiene, and the toy-world behaviour."""

import math

import pytest
import torch

from lpo_train import AdaptiveDecoderConfig, AdaptiveDecoderHead
from lpo_train.decoding import AdaptiveDecoderRule, SamplingParams, generate
from lpo_train.decoding.adaptive import exploration_probs, stratified_choices
from lpo_train.losses import lpo_loss, uniform_reference_logps
from lpo_train.trainers import LPOTrainer
from lpo_train.trainers.lpo import LPOTrainingFailed
from tests.helpers.configs import toy_lpo_config

_config = toy_lpo_config


def _peaked_head(hidden_size, level="sequence", favour=0, k=6):
    head = AdaptiveDecoderHead(AdaptiveDecoderConfig(hidden_size=hidden_size, level=level))
    with torch.no_grad():
        head.mlp[-1].bias.fill_(-30.0)
        head.mlp[-1].bias[favour] = 30.0  # P(favour) = 1 - 1e-26: a collapsed head
    return head


def test_stratified_choices_cover_distinct_values_even_for_a_peaked_head():
    probs = torch.full((8, 6), 1e-12)
    probs[:, 2] = 1.0
    group = torch.tensor([11] * 4 + [12] * 4)
    sample = torch.tensor([0, 1, 2, 3] * 2)
    choices = stratified_choices(probs, group, sample)
    assert len(set(choices[:4].tolist())) == 4 and len(set(choices[4:].tolist())) == 4
    assert choices[0] == 2 and choices[4] == 2  # the head's favourite comes first: the first key is its draw
    # in rounds when N > K, and a pure function of the group seed
    many = stratified_choices(probs[:1].expand(12, 6), torch.full((12,), 5), torch.arange(12))
    assert sorted(many[:6].tolist()) == list(range(6)) and torch.equal(many[:6], many[6:])


def test_stratified_draw_without_replacement_has_the_head_as_its_first_marginal():
    probs = torch.tensor([[0.5, 0.3, 0.2]]).expand(30000, 3)
    first = stratified_choices(probs, torch.arange(30000), torch.zeros(30000, dtype=torch.long))
    freq = torch.bincount(first, minlength=3).float() / 30000
    assert (freq - probs[0]).abs().max() < 0.015


def test_uniform_mixture_puts_epsilon_over_k_on_every_choice():
    mixed = exploration_probs(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), 0.2)
    assert torch.allclose(mixed, torch.tensor([[0.85, 0.05, 0.05, 0.05]]))


def test_engine_samples_of_a_prompt_take_distinct_choices_with_a_peaked_head(tiny_lm):
    model, tok = tiny_lm
    head = _peaked_head(model.config.hidden_size)
    rule = AdaptiveDecoderRule(head, "sample", exploration="stratified")
    traces = generate(model, tok, ["hello there", "a cat"], rule, SamplingParams(max_new_tokens=3, num_samples=4))
    for p in range(2):
        assert len({t.choices[0] for t in traces if t.prompt_index == p}) == 4
    plain = generate(model, tok, ["hello there"], AdaptiveDecoderRule(head, "sample"),
                     SamplingParams(max_new_tokens=3, num_samples=4))
    assert {t.choices[0] for t in plain} == {0}  # without exploration every sample shares the choice
    token_rule = AdaptiveDecoderRule(_peaked_head(model.config.hidden_size, "token"), "sample",
                                     exploration="stratified", epsilon=0.5)
    tok_traces = generate(model, tok, ["hello there"], token_rule, SamplingParams(max_new_tokens=8, num_samples=4))
    assert len({c for t in tok_traces for c in t.choices}) > 1


def test_peaked_head_still_forms_pairs_whose_choices_differ(toy_lm_folder, tmp_path):
    trainer = LPOTrainer(model=str(toy_lm_folder), args=_config(tmp_path, loss_type="lpo"), head=_peaked_head(64))
    rows = [trainer.train_dataset[i] for i in range(4)]
    features, counts = trainer.training_units(rows)
    assert counts[0] > 0 and len(features) == int(counts[0])  # best vs worst: a pair per untied prompt
    assert all(not torch.equal(f.chosen.choices, f.rejected.choices) for f in features)


def test_peaked_head_still_compares_distinct_choices_under_the_default_objective(toy_lm_folder, tmp_path):
    trainer = LPOTrainer(model=str(toy_lm_folder), args=_config(tmp_path), head=_peaked_head(64))
    rows = [trainer.train_dataset[i] for i in range(4)]
    features, counts = trainer.training_units(rows)
    assert len(features) == 4 and all(len(f.sides) == 4 for f in features)  # every sample of every group
    for f in features:  # the stratified draw: the N = 4 samples of a prompt take 4 distinct grid values
        assert len({int(s.choices[0]) for s in f.sides}) == 4
    differing = sum(a != b for f in features for i, a in enumerate(f.rewards) for b in f.rewards[i + 1:])
    assert counts[0] == differing > 0


def test_no_pairs_for_consecutive_steps_is_an_error_not_a_trained_head(toy_lm_folder, tmp_path):
    def constant(prompts, completions, **kw):
        return [1.0] * len(completions)

    trainer = LPOTrainer(model=str(toy_lm_folder), reward_funcs=[constant],
                         args=_config(tmp_path, max_steps=4, max_steps_without_pairs=2))
    with pytest.raises(LPOTrainingFailed, match="got different rewards for 2 consecutive optimizer steps"):
        trainer.train()
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_a_step_with_no_valid_reward_is_an_error(toy_lm_folder, tmp_path):
    def nothing(prompts, completions, **kw):
        return [None] * len(completions)

    trainer = LPOTrainer(model=str(toy_lm_folder), reward_funcs=[nothing], args=_config(tmp_path))
    with pytest.raises(LPOTrainingFailed, match="Every reward of step 0 was None, NaN or infinite"):
        trainer.train()


@pytest.mark.parametrize("beta", [0.0, -1.0])
def test_non_positive_beta_is_rejected_when_the_config_is_built(tmp_path, beta):
    with pytest.raises(ValueError, match="beta must be > 0"):
        _config(tmp_path, beta=beta)


def test_uniform_reference_differs_from_omitted_on_unequal_lengths():
    # token-level, K = 4: chosen made 3 decisions, rejected 5; a uniform head gives log P = -T log 4
    k, mask_c, mask_r = 4, torch.ones(1, 3), torch.ones(1, 5)
    logp_c, logp_r = -3 * torch.tensor([math.log(4)]), -5 * torch.tensor([math.log(4)])
    ref_c, ref_r = uniform_reference_logps(mask_c, k), uniform_reference_logps(mask_r, k)
    assert torch.allclose(ref_c, logp_c) and torch.allclose(ref_r, logp_r)
    with_ref = lpo_loss(logp_c, logp_r, 0.5, ref_c, ref_r)
    omitted = lpo_loss(logp_c, logp_r, 0.5)
    assert with_ref.item() == pytest.approx(math.log(2))  # the uniform head is the reference: ln 2
    # omitted: -log sigmoid(0.5 * 2 log 4), by hand
    assert omitted.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.5 * 2 * math.log(4)))))


def test_token_level_metrics_follow_the_reference_setting(toy_lm_folder, tmp_path):
    trainer = LPOTrainer(model=str(toy_lm_folder), args=_config(tmp_path, level="token", max_steps=1,
                                                                 choice_reference="uniform", loss_type="lpo"))
    trainer.train()
    first = trainer.state.log_history[0]
    # a uniform head equals the uniform reference: TRL's implicit rewards are 0, the loss ln 2
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-4) and first["loss"] == pytest.approx(math.log(2))
    omitted = LPOTrainer(model=str(toy_lm_folder), args=_config(tmp_path / "b", level="token", max_steps=1,
                                                                            loss_type="lpo"))
    omitted.train()
    log = omitted.state.log_history[0]
    assert log["rewards/chosen"] == pytest.approx(log["logps/chosen"], abs=1e-4)  # beta 1, no reference
    assert log["rewards/chosen"] < -1.0


def test_output_dir_with_another_run_needs_overwrite(toy_lm_folder, tmp_path):
    trainer = LPOTrainer(model=str(toy_lm_folder), args=_config(tmp_path, max_steps=1))
    trainer.train()
    trainer.save_model()
    out = tmp_path / "out"
    assert (out / "trainer_state.json").exists()  # the log history next to the head
    with pytest.raises(FileExistsError, match="overwrite_output_dir"):
        LPOTrainer(model=str(toy_lm_folder), args=_config(tmp_path, max_steps=1))
    again = LPOTrainer(model=str(toy_lm_folder), args=_config(tmp_path, max_steps=1, overwrite_output_dir=True))
    assert not (out / "model.safetensors").exists() and not (out / "completions").exists()
    assert again is not None


def test_resume_true_takes_the_latest_checkpoint_or_says_there_is_none(toy_lm_folder, tmp_path):
    trainer = LPOTrainer(model=str(toy_lm_folder), args=_config(tmp_path, max_steps=2, save_strategy="steps",
                                                                 save_steps=1))
    trainer.train()
    resumed = LPOTrainer(model=str(toy_lm_folder), args=_config(tmp_path, max_steps=3, save_strategy="no",
                                                                 resume_from_checkpoint="true"))
    resumed.train(resume_from_checkpoint="true")
    assert resumed.state.global_step == 3
    fresh = LPOTrainer(model=str(toy_lm_folder), args=_config(tmp_path / "empty", max_steps=1))
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        fresh.train(resume_from_checkpoint=True)


def test_corrupt_head_weights_name_the_file(tmp_path):
    head = AdaptiveDecoderHead(AdaptiveDecoderConfig(hidden_size=8))
    head.save_pretrained(tmp_path / "h")
    (tmp_path / "h" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"h/model.safetensors is not a readable safetensors file"):
        AdaptiveDecoderHead.from_pretrained(tmp_path / "h")
    with pytest.raises(FileNotFoundError, match="the folder does not exist"):
        AdaptiveDecoderHead.from_pretrained(str(tmp_path / "missing" / "head"))


def test_collapse_warning_fires_only_when_the_head_is_peaked_and_groups_tie():
    from lpo_train.trainers.lpo_metrics import collapse_warning

    k = 6
    assert collapse_warning({"choice/entropy": 0.05, "frac_reward_zero_std": 0.8}, k, 7).startswith(
        "The head's choice distribution has collapsed (entropy 0.050 nats of a possible 1.792) and 80% ")
    assert collapse_warning({"choice/entropy": 0.05, "frac_reward_zero_std": 0.2}, k, 7) is None  # pairs still form
    assert collapse_warning({"choice/entropy": 1.5, "frac_reward_zero_std": 0.9}, k, 7) is None  # not peaked


def test_public_entry_points_and_help_list_config_first():
    import subprocess
    import sys

    from lpo_train import AdaptiveDecoderHead as Head  # noqa: F401
    from lpo_train.models.loading import portable_name

    assert portable_name("smollm2") == "HuggingFaceTB/SmolLM2-135M-Instruct" and portable_name("toy:small") == "toy:small"
    for command in (["train"], ["evaluate"], ["generate"], ["train-value", "explicit"]):
        out = subprocess.run([sys.executable, "-m", "lpo_train.cli", *command, "--help"], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        options = [line.split()[0] for line in out.stdout.splitlines() if line.startswith("  --")]
        assert options[0] == "--config", (command, options[:3])
    train_help = subprocess.run([sys.executable, "-m", "lpo_train.cli", "train", "--help"], capture_output=True,
                                text=True, timeout=120).stdout
    assert train_help.index("--exploration ") < train_help.index("--per_device_train_batch_size ")  # LPO's first


def test_group_relative_with_every_group_tied_is_an_error_too(toy_lm_folder, tmp_path):
    def constant(prompts, completions, **kw):
        return [1.0] * len(completions)

    trainer = LPOTrainer(model=str(toy_lm_folder), reward_funcs=[constant],
                         args=_config(tmp_path, max_steps=4, max_steps_without_pairs=2, loss_type="group_relative"))
    with pytest.raises(LPOTrainingFailed, match="got different rewards for 2 consecutive"):
        trainer.train()
    assert not (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.parametrize("level,loss_type", [("token", "lpo"), ("sequence", "lpo"), ("token", "group_relative"),
                                             ("sequence", "lpo_regression")])
def test_family_grad_norms_equal_each_family_shares_own_autograd_gradient(toy_lm_folder, tmp_path, level,
                                                                          loss_type):
    trainer = LPOTrainer(model=str(toy_lm_folder), args=_config(tmp_path, level=level, loss_type=loss_type,
                                                                toy_prompts_per_family=6, num_generations=6))
    head = trainer.bare_head()
    torch.manual_seed(0)
    with torch.no_grad():  # every layer's weights non-zero, so every layer gets a gradient
        for p in head.parameters():
            p.normal_(0.0, 0.3)
    rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    features, _ = trainer.training_units(rows)
    families = sorted({f.family for f in features})
    assert families == ["arith", "story"]
    trainer.model.train()
    trainer.compute_loss(trainer.model, trainer.collate(features, len(features))).backward()
    measured = trainer.grad_norms.current().pop()
    assert trainer.grad_norms.current().pop() == {}  # popped once
    trainer.model.eval()  # the reference: each family's share of the step's loss, its own backward
    params = [p for p in head.parameters() if p.requires_grad]
    for fam in families:
        share = trainer.compute_loss(trainer.model, trainer.collate([f for f in features if f.family == fam],
                                                                     len(features)))
        grads = torch.autograd.grad(share, params)
        expected = torch.sqrt(sum((g ** 2).sum() for g in grads)).item()
        assert expected > 1e-4
        assert measured[f"grad_norm/{fam}"] == pytest.approx(expected, rel=1e-4)
    assert trainer.grad_norms.current().pop() == {}  # nothing is measured outside training mode


def test_family_grad_norms_are_logged_per_step_in_training(toy_lm_folder, tmp_path):
    trainer = LPOTrainer(model=str(toy_lm_folder), args=_config(tmp_path, max_steps=2))
    trainer.train()
    steps = [log for log in trainer.state.log_history if "loss" in log]
    assert len(steps) == 2 and all(log["grad_norm/arith"] >= 0 and log["grad_norm/story"] >= 0 for log in steps)


def test_family_grad_norms_do_not_depend_on_gradient_accumulation(toy_lm_folder, tmp_path):
    # the same step (same prompts, samples and head) as one batch of 4 or two micro-batches of 2: one applied
    # gradient, so the same grad_norm and the same per-family shares (a micro-batch may hold one family)
    logs = []
    for batch, accumulation in ((4, 1), (2, 2), (1, 4)):
        trainer = LPOTrainer(model=str(toy_lm_folder), args=_config(
            tmp_path / str(batch), max_steps=1, per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation))
        trainer.train()
        logs.append(trainer.state.log_history[0])
    for log in logs[1:]:
        for key in ("grad_norm", "grad_norm/arith", "grad_norm/story", "loss"):
            assert log[key] == pytest.approx(logs[0][key], rel=1e-4), key


def test_completions_writer_finishes_files_before_flush_returns_and_raises_its_errors(tmp_path):
    import pandas as pd

    from lpo_train.trainers.lpo_io import CompletionsWriter

    rows = [{"prompt": "p", "completion": "c", "reward": 0.5, "choices": [0.0, 1.0], "family": "arith",
             "pair_role": "chosen"}]
    writer = CompletionsWriter()
    writer.write(rows, str(tmp_path), 3, "none")
    writer.flush()
    folder = tmp_path / "completions"
    assert sorted(p.name for p in folder.iterdir()) == ["completions_00003.parquet"]  # no .partial left
    assert pd.read_parquet(folder / "completions_00003.parquet").to_dict("records")[0]["step"] == 3
    (tmp_path / "blocked").write_text("a file where the folder should be")
    writer.write(rows, str(tmp_path / "blocked"), 4, "none")
    with pytest.raises(OSError):  # the background thread's error, raised on the training thread
        writer.flush()
    writer.flush()  # reported once


def test_metric_reduction_averages_finite_values_per_key():
    from types import SimpleNamespace

    from lpo_train.trainers.lpo_metrics import reduce_across_processes

    out = reduce_across_processes(SimpleNamespace(num_processes=1),
                                  {"a": [1.0, float("nan"), 2.0], "b": [float("nan")], "c": [0.25]})
    assert out["a"] == 1.5 and out["c"] == 0.25 and math.isnan(out["b"])


def test_family_grad_norms_follow_a_replaced_head(toy_lm_folder, tmp_path):
    trainer = LPOTrainer(model=str(toy_lm_folder), args=_config(tmp_path))
    first, old = trainer.grad_norms.current(), trainer.bare_head()
    assert trainer.grad_norms.current() is first and all(m._forward_hooks for m in first.linears)
    trainer.model = AdaptiveDecoderHead(old.config)
    second = trainer.grad_norms.current()
    assert second.head is trainer.model and second is not first
    assert not any(m._forward_hooks for m in first.linears)  # the old head's hooks are removed
