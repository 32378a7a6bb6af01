"""Companion trainers for guided decoding: preference pairs, DPO (TRL) and the explicit value model."""

import json

import pytest
import torch

from lpo_train.trainers.value import (
    ExplicitValueConfig,
    ExplicitValueTrainer,
    ValueDataArguments,
    build_preference_pairs,
    pairwise_accuracy,
    train_implicit_value,
)


def _rec(i, reward, text="x"):
    return {"prompt_index": i, "prompt": [{"role": "user", "content": f"p{i}"}], "completion": text,
            "prompt_ids": [1, 2], "completion_ids": [3], "reward": reward}


def test_best_worst_pairs_pick_extremes_and_skip_ties():
    recs = [_rec(0, 0.1, "a"), _rec(0, 0.9, "b"), _rec(0, -0.5, "c"), _rec(1, 0.3, "d"), _rec(1, 0.3, "e")]
    pairs = build_preference_pairs(recs, "best_worst")
    assert len(pairs) == 1  # prompt 1 ties
    assert pairs[0]["chosen"] == [{"role": "assistant", "content": "b"}]
    assert pairs[0]["rejected"] == [{"role": "assistant", "content": "c"}]
    assert pairs[0]["prompt"] == [{"role": "user", "content": "p0"}]


def test_bradley_terry_labels_follow_the_sigmoid():
    recs = [r for i in range(400) for r in (_rec(i, 1.0, "good"), _rec(i, 0.0, "bad"))]
    sharp = build_preference_pairs(recs, "bradley_terry", bt_scale=50.0, seed=1)
    assert all(p["chosen"][0]["content"] == "good" for p in sharp)
    soft = build_preference_pairs(recs, "bradley_terry", bt_scale=1.0, seed=1)
    share = sum(p["chosen"][0]["content"] == "good" for p in soft) / len(soft)
    assert abs(share - 1 / (1 + torch.e ** -1.0)) < 0.06  # sigmoid(1) = 0.731, 400 draws
    with pytest.raises(ValueError, match="mode must be one of"):
        build_preference_pairs(recs, "random")


def test_value_pairs_by_hand():
    """Which pairs form, computed by hand: best_worst takes the first record among equal best (worst) rewards and
    skips all-tied prompts; bradley_terry pairs each prompt's first two records with one draw of
    random.Random("pairs-<seed>") per prompt (in prompt_index order, whatever the record order) against
    sigmoid(bt_scale * (r_a - r_b)); a prompt with one response gives no pair and no draw."""
    import math
    import random

    recs = [_rec(3, 0.2, "d0"), _rec(1, 0.5, "b0"), _rec(3, 0.7, "d1"), _rec(1, 0.5, "b1"), _rec(2, 0.4, "c0"),
            _rec(3, 0.7, "d2"), _rec(0, 1.0, "a0"), _rec(3, 0.2, "d3"), _rec(0, -1.0, "a1")]

    def texts(pairs):
        return [(p["chosen"][0]["content"], p["rejected"][0]["content"], p["chosen_reward"], p["rejected_reward"])
                for p in pairs]

    assert texts(build_preference_pairs(recs, "best_worst")) == [("a0", "a1", 1.0, -1.0), ("d1", "d0", 0.7, 0.2)]
    draws = random.Random("pairs-4")
    u0, u1, u3 = draws.random(), draws.random(), draws.random()  # prompts 0, 1, 3 (prompt 2 has one response)
    p0, p3 = 1 / (1 + math.exp(-2.0 * 2.0)), 1 / (1 + math.exp(-2.0 * -0.5))
    assert texts(build_preference_pairs(recs, "bradley_terry", bt_scale=2.0, seed=4)) == [
        ("a0", "a1", 1.0, -1.0) if u0 < p0 else ("a1", "a0", -1.0, 1.0),
        ("b0", "b1", 0.5, 0.5) if u1 < 0.5 else ("b1", "b0", 0.5, 0.5),
        ("d0", "d1", 0.2, 0.7) if u3 < p3 else ("d1", "d0", 0.7, 0.2)]


def test_pairwise_accuracy_by_hand():
    # group a: pairs (0,1) right, (0,2) wrong, (1,2) tie in reward -> skipped; group b: score tie -> 0.5
    scores, rewards, groups = [3.0, 1.0, 5.0, 2.0, 2.0], [1.0, 0.0, 0.0, 1.0, 0.5], ["a", "a", "a", "b", "b"]
    assert pairwise_accuracy(scores, rewards, groups) == pytest.approx((1 + 0 + 0.5) / 3)
    assert pairwise_accuracy([1.0], [1.0], ["a"]) is None


def test_explicit_value_trainer_learns_a_token_rule(tiny_lm, tmp_path):
    """Reward = +1 when a response ends in an even token id: the value model's end score must learn it."""
    from lpo_train.guidance import make_value_model

    base, tok = tiny_lm
    gen = torch.Generator().manual_seed(0)
    recs = []
    for i in range(160):
        ids = torch.randint(10, 200, (4,), generator=gen).tolist()
        recs.append({"prompt_index": i // 4, "prompt": "p", "completion": "", "prompt_ids": [5, 6, 7],
                     "completion_ids": ids, "reward": 1.0 if ids[-1] % 2 == 0 else -1.0})
    args = ExplicitValueConfig(output_dir=str(tmp_path), value_loss="mse", learning_rate=3e-2, num_train_epochs=6,
                               per_device_train_batch_size=16, use_cpu=True, report_to="none", save_strategy="no",
                               logging_steps=50)
    model = make_value_model(base)
    trainer = ExplicitValueTrainer(model, args, recs[:120], recs[120:], processing_class=tok)
    assert args.remove_unused_columns is True and trainer.args is not args  # the caller's args are left as they were
    assert trainer.args.remove_unused_columns is False
    before = trainer.pairwise_accuracy(recs[:120])
    trainer.train()
    after = trainer.pairwise_accuracy(recs[:120])
    assert before == 0.5  # zero head: every end score ties
    assert after > 0.9
    with pytest.raises(ValueError, match="needs a value model"):
        ExplicitValueTrainer(base, args, recs, processing_class=tok)


def test_implicit_value_dpo_end_to_end(tiny_lm_path, tmp_path):
    """Sample from the untuned model, label with a reward, DPO with TRL: the tuned model prefers the chosen."""
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig

    data = ValueDataArguments(model_name_or_path=str(tiny_lm_path), dataset_name=str(tmp_path / "p.jsonl"),
                              reward_funcs=["tests.helpers.my_rewards:length_reward"], num_generations=4,
                              max_completion_length=8, pair_mode="best_worst", eval_fraction=0.0)
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": f"story number {i}"}) + "\n" for i in range(24)))
    args = DPOConfig(output_dir=str(tmp_path / "tuned"), learning_rate=5e-3, num_train_epochs=3,
                     per_device_train_batch_size=8, use_cpu=True, bf16=False, report_to="none",
                     save_strategy="no", logging_steps=50, max_length=64, beta=0.1)
    metrics = train_implicit_value(data, args)
    assert metrics["train_pairs"] > 10
    assert metrics["label_agreement_with_reward"] == 1.0  # best vs worst: chosen always has the higher reward
    assert json.loads((tmp_path / "tuned" / "value_metrics.json").read_text()) == metrics
    assert metrics["train_rewards_margin"] > 0 and metrics["train_rewards_accuracy"] > 0.5  # DPO fitted the pairs
    tuned = AutoModelForCausalLM.from_pretrained(tmp_path / "tuned")
    untuned = AutoModelForCausalLM.from_pretrained(tiny_lm_path)
    assert not torch.equal(tuned.model.embed_tokens.weight, untuned.model.embed_tokens.weight)


def test_explicit_value_gradient_accumulation_matches_one_big_batch(tiny_lm, tmp_path):
    """One SGD step over 16 responses: batch 16 equals 2 accumulated micro-batches of 8."""
    from lpo_train.guidance import make_value_model

    base, tok = tiny_lm
    gen = torch.Generator().manual_seed(1)
    recs = [{"prompt_index": i, "prompt": "p", "completion": "", "prompt_ids": [5, 6],
             "completion_ids": torch.randint(10, 200, (3,), generator=gen).tolist(), "reward": float(i % 3) - 1.0}
            for i in range(16)]
    heads = []
    for batch, accumulate in ((16, 1), (8, 2)):
        args = ExplicitValueConfig(output_dir=str(tmp_path / f"b{batch}"), value_loss="mse", optim="sgd",
                                   learning_rate=0.5, max_steps=1, per_device_train_batch_size=batch,
                                   gradient_accumulation_steps=accumulate, max_grad_norm=1e9, use_cpu=True,
                                   report_to="none", save_strategy="no", lr_scheduler_type="constant")
        model = make_value_model(base)
        ExplicitValueTrainer(model, args, recs, processing_class=tok).train()
        heads.append(model.get_output_embeddings().weight.detach().clone())
    assert heads[0].abs().sum() > 0
    assert torch.allclose(heads[0], heads[1], atol=1e-6)


def test_explicit_value_rejects_a_sampler_with_another_tokenizer(tiny_lm_path, tmp_path):
    from lpo_train.models import build_tiny_lm, train_bpe_tokenizer
    from lpo_train.trainers.value import train_explicit_value

    other_tok = train_bpe_tokenizer(vocab_size=300)
    build_tiny_lm(other_tok, hidden_size=32, num_layers=1, num_heads=4, seed=0).save_pretrained(tmp_path / "other")
    other_tok.save_pretrained(tmp_path / "other")
    data = ValueDataArguments(model_name_or_path=str(tiny_lm_path), sampler_model=str(tmp_path / "other"),
                              reward_funcs=["tests.helpers.my_rewards:length_reward"])
    args = ExplicitValueConfig(output_dir=str(tmp_path / "v"), use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match="different tokenizers"):
        train_explicit_value(data, args)


def _story_value_run(tiny_lm_path, tmp_path, **config):
    """Data and config of a small train_explicit_value run: 16 prompts x 4 samples of the tiny LM, length reward."""
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": f"story number {i}"}) + "\n" for i in range(16)))
    data = ValueDataArguments(model_name_or_path=str(tiny_lm_path), dataset_name=str(tmp_path / "p.jsonl"),
                              reward_funcs=["tests.helpers.my_rewards:length_reward"], num_generations=4,
                              max_completion_length=8, eval_fraction=0.25)
    args = ExplicitValueConfig(output_dir=str(tmp_path / "v"), value_loss="mse", learning_rate=1e-2,
                               per_device_train_batch_size=8, use_cpu=True, report_to="none", save_strategy="no",
                               **config)
    return data, args


@pytest.mark.parametrize("value_head", ["token", "shared"])
def test_explicit_value_on_a_lora_backbone_saves_a_plain_value_model(tiny_lm_path, tmp_path, value_head):
    """--use_peft for the explicit value: a LoRA backbone, the value head fully trained beside it, merged into
    one plain value-model checkpoint (loadable as before), the backbone's other weights unchanged. With the
    shared head (the SmolLM2 recipe) the saved rows are all equal and the flag names the head."""
    from transformers import AutoModelForCausalLM

    from lpo_train.config import LoraArguments
    from lpo_train.guidance.value_model import load_value_model, value_head_kind
    from lpo_train.trainers.value import train_explicit_value

    data, args = _story_value_run(tiny_lm_path, tmp_path, num_train_epochs=2, value_head=value_head)
    lora = LoraArguments(use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0)
    peft_config = lora.peft_config()
    metrics = train_explicit_value(data, args, peft_config)
    assert peft_config.modules_to_save is None and args.remove_unused_columns is True  # the caller's, unchanged
    assert metrics["lora_backbone"] is True and metrics["eval_pairwise_accuracy"] is not None
    assert metrics["value_head"] == value_head and metrics["backbone"] == "lora"
    value, _ = load_value_model(tmp_path / "v")  # a plain checkpoint: no adapter files, the flag in its config
    assert not (tmp_path / "v" / "adapter_config.json").exists()
    assert value_head_kind(value) == value_head
    rows = value.get_output_embeddings().weight
    assert rows.abs().sum() > 0  # the zero head was trained (modules_to_save)
    assert torch.equal(rows, rows[:1].expand_as(rows)) == (value_head == "shared")
    base = AutoModelForCausalLM.from_pretrained(tiny_lm_path)
    assert torch.equal(value.model.embed_tokens.weight, base.model.embed_tokens.weight)  # not a LoRA target
    assert not torch.equal(value.model.layers[0].self_attn.q_proj.weight,  # LoRA merged into its target
                           base.model.layers[0].self_attn.q_proj.weight)


def test_shared_value_head_is_one_vector_and_saves_as_equal_rows():
    """SharedValueHead(h) = w . h on every vocabulary entry; its saved Linear computes the same."""
    from lpo_train.guidance.value_model import SharedValueHead

    head = SharedValueHead(6, 11)
    with torch.no_grad():
        head.vector.copy_(torch.arange(6.0) - 2.5)
    h = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(0))
    by_hand = (h * head.vector).sum(-1)  # [2, 3]
    out = head(h)
    assert out.shape == (2, 3, 11)
    assert torch.allclose(out, by_hand[..., None].expand(2, 3, 11), atol=1e-6)
    layer = head.to_linear()
    assert layer.bias is None and torch.equal(layer.weight, head.vector.detach().expand(11, 6))
    assert torch.allclose(layer(h), out, atol=1e-5)


def _prefix_rule_records(n_prompts=40):
    """Completions of 4 tokens from {20, 21, 22, 23}; reward +1 when the second-to-last is 20 or 21: the
    hidden state h_{T-1} (the input that predicts the last token) carries it, whatever the last token is."""
    gen = torch.Generator().manual_seed(2)
    recs = []
    for i in range(4 * n_prompts):
        ids = (20 + torch.randint(0, 4, (4,), generator=gen)).tolist()
        recs.append({"prompt_index": i // 4, "prompt": "p", "completion": "", "prompt_ids": [5, 6, 7],
                     "completion_ids": ids, "reward": 1.0 if ids[-2] in (20, 21) else -1.0})
    return recs


def test_shared_value_head_on_a_frozen_backbone_learns_a_prefix_rule(tiny_lm, tmp_path):
    """value_head 'shared' trained as a probe on frozen hidden states: it ranks held-out responses, the backbone
    is unchanged, and the saved checkpoint is a plain value model (all rows equal) whose end scores are the
    trained ones; token-level explicit guidance refuses it."""
    from lpo_train.guidance import ExplicitGuidance, end_scores, make_value_model
    from lpo_train.guidance.value_model import freeze_to_head, load_value_model, value_head_kind

    base, tok = tiny_lm
    recs = _prefix_rule_records()
    args = ExplicitValueConfig(output_dir=str(tmp_path / "v"), value_loss="mse", learning_rate=5e-2,
                               num_train_epochs=8, per_device_train_batch_size=16, use_cpu=True, report_to="none",
                               save_strategy="no", logging_steps=50, value_head="shared")
    model = freeze_to_head(make_value_model(base, head=args.value_head))
    trainer = ExplicitValueTrainer(model, args, recs[:120], recs[120:], processing_class=tok)
    assert trainer.pairwise_accuracy(recs[120:]) == 0.5  # zero head: every end score ties
    trainer.train()
    held = trainer.pairwise_accuracy(recs[120:])
    assert held > 0.9
    trainer.save_model()  # a SharedValueHead saves as the plain layer
    value, _ = load_value_model(tmp_path / "v")
    assert value_head_kind(value) == "shared"
    rows = value.get_output_embeddings().weight
    assert rows.abs().sum() > 0 and torch.equal(rows, rows[:1].expand_as(rows))
    for name, p in value.model.named_parameters():  # the backbone did not move
        assert torch.equal(p, dict(base.model.named_parameters())[name]), name
    ids = torch.tensor([[5, 6, 7] + r["completion_ids"] for r in recs[120:]])
    scores = end_scores(value, ids, torch.ones_like(ids))
    assert pairwise_accuracy(scores.tolist(), [r["reward"] for r in recs[120:]],
                             [r["prompt_index"] for r in recs[120:]]) == pytest.approx(held)
    with pytest.raises(ValueError, match="'shared' head"):
        ExplicitGuidance(value, tokenizer=tok, prompts=["p"])


def test_train_explicit_value_with_a_frozen_backbone_and_a_shared_head(tiny_lm_path, tmp_path):
    """End to end through train_explicit_value: only the head trains; metrics name the head and the backbone;
    the shared head and use_peft / freeze_backbone conflicts are clear errors."""
    from transformers import AutoModelForCausalLM

    from lpo_train.config import LoraArguments
    from lpo_train.guidance.value_model import load_value_model
    from lpo_train.trainers.value import train_explicit_value

    data, args = _story_value_run(tiny_lm_path, tmp_path, num_train_epochs=1, value_head="shared", freeze_backbone=True)
    metrics = train_explicit_value(data, args)
    assert metrics["value_head"] == "shared" and metrics["backbone"] == "frozen"
    value, _ = load_value_model(tmp_path / "v")
    base = AutoModelForCausalLM.from_pretrained(tiny_lm_path)
    assert all(torch.equal(p, dict(base.model.named_parameters())[n]) for n, p in value.model.named_parameters())
    rows = value.get_output_embeddings().weight
    assert rows.abs().sum() > 0 and torch.equal(rows, rows[:1].expand_as(rows))
    with pytest.raises(ValueError, match="set one of them"):
        train_explicit_value(data, args, LoraArguments(use_peft=True, lora_r=4).peft_config())
    with pytest.raises(ValueError, match="value_head must be one of"):
        ExplicitValueConfig(output_dir=str(tmp_path / "x"), value_head="scalar")


def test_shared_head_checkpoints_load_as_value_models_and_resume(tiny_lm, tmp_path):
    """A mid-training checkpoint of a shared head holds the plain layer (rows equal), loads with load_value_model,
    and resuming from it ends where the uninterrupted run ends."""
    from lpo_train.guidance import end_scores, make_value_model
    from lpo_train.guidance.value_model import load_value_model

    base, tok = tiny_lm
    recs = _prefix_rule_records(16)

    def run(out, max_steps, resume=None):
        args = ExplicitValueConfig(output_dir=str(out), value_loss="mse", learning_rate=5e-2, max_steps=max_steps,
                                   per_device_train_batch_size=16, use_cpu=True, report_to="none",
                                   save_strategy="steps", save_steps=2, value_head="shared", seed=0,
                                   lr_scheduler_type="constant")
        model = make_value_model(base, head="shared")
        trainer = ExplicitValueTrainer(model, args, recs, processing_class=tok)
        trainer.train(resume_from_checkpoint=resume)
        return model.get_output_embeddings().vector.detach().clone()

    full = run(tmp_path / "full", 4)
    value, _ = load_value_model(tmp_path / "full" / "checkpoint-4")
    rows = value.get_output_embeddings().weight
    assert torch.allclose(rows, full.expand_as(rows), atol=1e-6)  # the checkpoint is the trained head, all rows
    ids = torch.tensor([[5, 6, 7] + r["completion_ids"] for r in recs])
    assert end_scores(value, ids, torch.ones_like(ids)).abs().sum() > 0
    run(tmp_path / "cut", 2)
    resumed = run(tmp_path / "cut", 4, resume=str(tmp_path / "cut" / "checkpoint-2"))
    assert torch.allclose(resumed, full, atol=1e-6)


def test_train_value_checks_its_output_dir_before_sampling(tmp_path):
    """An output_dir that cannot be written, or that holds a trained model, is refused before anything is loaded or
    sampled (the model here does not exist: reaching it fails otherwise); --overwrite_output_dir replaces it."""
    from trl import DPOConfig, RewardConfig

    from lpo_train.trainers.value import train_explicit_value, train_reward_model

    data = ValueDataArguments(model_name_or_path=str(tmp_path / "no" / "model"))
    (tmp_path / "a_file").write_text("")

    def config(cls, folder):
        return cls(output_dir=str(folder), use_cpu=True, bf16=False, report_to="none")

    with pytest.raises(OSError, match=r"output_dir .*a_file/v cannot be written: .*a_file is a file, not a folder"):
        train_explicit_value(data, config(ExplicitValueConfig, tmp_path / "a_file" / "v"))
    trained = tmp_path / "trained"
    trained.mkdir()
    (trained / "model.safetensors").write_bytes(b"")
    for train, cls in ((train_explicit_value, ExplicitValueConfig), (train_implicit_value, DPOConfig),
                       (train_reward_model, RewardConfig)):
        with pytest.raises(FileExistsError, match="already holds another run .model.safetensors.*--overwrite"):
            train(data, config(cls, trained))
    adapter = tmp_path / "adapter"  # an implicit value trained as a LoRA adapter: no model.safetensors
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    (adapter / "value_metrics.json").write_text("{}")
    with pytest.raises(FileExistsError, match="already holds a trained model .value_metrics.json"):
        train_implicit_value(data, config(DPOConfig, adapter))
    data.overwrite_output_dir = True
    for folder, old in ((trained, "model.safetensors"), (adapter, "value_metrics.json")):
        with pytest.raises(FileNotFoundError, match="is not a local folder"):  # past the check: the missing model
            train_explicit_value(data, config(ExplicitValueConfig, folder))
        assert not (folder / old).exists()
