"""PEFT: the implicit value from one set of weights (adapter on / off), adapters as base models, and
train-value implicit --use_peft."""

import copy
import json

import pytest
import torch

from lpo_train.decoding import FixedTemperature, SamplingParams, generate
from lpo_train.guidance import ImplicitGuidance, ImplicitScorer, guided_generate
from lpo_train.models.adapters import adapter_off, is_peft_model

PROMPTS = ["the cat sat", "a dog ran far away from home", "hello"]


def _lora(model, seed=0):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj",
                                                                                                 "down_proj"],
                                                          init_lora_weights=False))
    return peft.eval()


def _weights(*models):
    """Distinct parameter storages held by ``models`` (bytes)."""
    seen = {}
    for m in models:
        for p in m.parameters():
            seen[p.untyped_storage().data_ptr()] = p.numel() * p.element_size()
    return sum(seen.values())


@pytest.fixture(scope="module")
def lora(tiny_lm):
    base, tok = tiny_lm
    peft = _lora(base)
    merged = copy.deepcopy(peft).merge_and_unload().eval()
    return base, tok, peft, merged


def _same_traces(a, b, atol=1e-4):
    assert [t.token_ids for t in a] == [t.token_ids for t in b]
    for x, y in zip(a, b):
        assert x.values == pytest.approx(y.values, abs=atol)


def test_adapter_off_is_the_base_model_from_the_same_weights(lora):
    base, tok, peft, merged = lora
    ids = torch.tensor([tok("the cat sat on the mat")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(adapter_off(peft)(ids).logits, base(ids).logits, atol=1e-5)
        assert torch.allclose(peft(ids).logits, merged(ids).logits, atol=1e-4)
        assert not torch.allclose(peft(ids).logits, base(ids).logits, atol=1e-2)  # the adapter does something
    assert is_peft_model(peft) and not is_peft_model(base)
    assert _weights(peft) < 1.1 * _weights(base) < _weights(merged, base)  # one copy of the weights, not two


def test_one_peft_model_equals_the_two_model_path_with_the_merged_adapter(lora):
    base, tok, peft, merged = lora
    params = SamplingParams(max_new_tokens=12, num_samples=2, prompt_seeds=[1, 2, 3])
    one = generate(base, tok, PROMPTS, ImplicitGuidance(peft, beta=0.7), params)
    two = generate(base, tok, PROMPTS, ImplicitGuidance(merged, base, beta=0.7), params)
    _same_traces(one, two)
    assert [t.token_ids for t in one] != [t.token_ids for t in generate(base, tok, PROMPTS, FixedTemperature(1.0),
                                                                        params)]
    # beta = 0 is base sampling, exactly
    zero = generate(base, tok, PROMPTS, ImplicitGuidance(peft, beta=0.0), params)
    assert [t.token_ids for t in zero] == [t.token_ids for t in generate(base, tok, PROMPTS, FixedTemperature(1.0),
                                                                         params)]


@pytest.mark.parametrize("incremental", [True, False])
def test_implicit_scorer_from_one_peft_model(lora, incremental):
    base, tok, peft, merged = lora
    runs = {}
    for name, scorer in {"one": ImplicitScorer(peft, beta=0.5, incremental=incremental),
                         "two": ImplicitScorer(merged, base, beta=0.5, incremental=incremental)}.items():
        ranked = guided_generate(base, tok, PROMPTS, rule=FixedTemperature(1.0), scorer=scorer, width=2, candidates=2,
                                 chunk_length=3, params=SamplingParams(max_new_tokens=9, prompt_seeds=[4, 5, 6]))
        runs[name] = [t for r in ranked for t in r]
    assert [t.token_ids for t in runs["one"]] == [t.token_ids for t in runs["two"]]
    assert [t.score for t in runs["one"]] == pytest.approx([t.score for t in runs["two"]], abs=1e-4)


def test_a_full_tuned_model_without_untuned_is_a_clear_error(tiny_lm):
    base, _ = tiny_lm
    with pytest.raises(ValueError, match="needs the untuned .*PEFT"):
        ImplicitGuidance(base)


def test_adapter_folder_is_a_base_model_spec(lora, tiny_lm_path, tmp_path):
    from lpo_train.models.loading import load_causal_lm

    base, tok, peft, _ = lora
    peft.save_pretrained(tmp_path / "adapter")
    config_path = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = str(tiny_lm_path)
    config_path.write_text(json.dumps(config))
    model, tokenizer = load_causal_lm(str(tmp_path / "adapter"))
    assert is_peft_model(model) and model.lpo_adapter == str(tmp_path / "adapter")
    ids = torch.tensor([tok("hello there")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, peft(ids).logits, atol=1e-5)
    assert len(tokenizer) == len(tok)
    # a wrong or missing base names the file and the field
    config["base_model_name_or_path"] = str(tmp_path / "no-such-base")
    config_path.write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="base_model_name_or_path"):
        load_causal_lm(str(tmp_path / "adapter"))
    config["base_model_name_or_path"] = ""
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="names no base model"):
        load_causal_lm(str(tmp_path / "adapter"))


def _saved_adapter(model, base_spec, folder):
    peft = _lora(model, seed=1)
    peft.save_pretrained(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base_spec
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return peft


def test_lpo_trains_a_head_on_an_adapter_and_its_card_names_both(toy_small, toy_lm_folder, tmp_path):
    from lpo_train.trainers import LPOTrainer
    from tests.helpers.configs import toy_lpo_config

    model, _ = toy_small
    _saved_adapter(model, str(toy_lm_folder), tmp_path / "adapter")
    trainer = LPOTrainer(model=str(tmp_path / "adapter"), args=toy_lpo_config(tmp_path, max_steps=1))
    assert is_peft_model(trainer.lm)
    trainer.train()
    trainer.save_model()
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"| adapter on the base model | `{tmp_path / 'adapter'}` (PEFT) |" in card
    assert f"base_model: {toy_lm_folder}" in card
    from lpo_train import AdaptiveDecoderForCausalLM

    wrapped = AdaptiveDecoderForCausalLM.from_pretrained(tmp_path / "out")  # one line: base + adapter + head
    assert is_peft_model(wrapped.model) and wrapped.model.lpo_adapter == str(tmp_path / "adapter")


def test_train_value_implicit_use_peft_then_generate_with_the_adapter_alone(tiny_lm_path, tmp_path):
    """The CLI path: --use_peft trains a LoRA with TRL's DPOTrainer; its adapter_config names the base;
    ``generate --method eft --tuned_model ADAPTER`` (no untuned model) runs from one copy of the weights."""
    from lpo_train.guidance.run import main as generate_main
    from lpo_train.trainers.value import main as value_main

    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": f"story number {i}"}) + "\n" for i in range(16)))
    metrics = value_main(["implicit", "--model_name_or_path", str(tiny_lm_path), "--dataset_name",
                          str(tmp_path / "p.jsonl"), "--reward_funcs", "tests.helpers.my_rewards:length_reward",
                          "--num_generations", "4", "--max_completion_length", "8", "--pair_mode", "best_worst",
                          "--eval_fraction", "0", "--use_peft", "true", "--lora_r", "4", "--lora_target_modules",
                          "q_proj", "v_proj", "--learning_rate", "5e-3", "--num_train_epochs", "2",
                          "--per_device_train_batch_size", "8", "--use_cpu", "true", "--bf16", "false",
                          "--report_to", "none", "--save_strategy", "no", "--max_length", "64",
                          "--output_dir", str(tmp_path / "tuned")])
    assert metrics["adapter"] and metrics["train_pairs"] > 5
    saved = json.loads((tmp_path / "tuned" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(tiny_lm_path) and saved["r"] == 4
    assert not (tmp_path / "tuned" / "model.safetensors").exists()  # an adapter, not a full copy
    from lpo_train.models.loading import load_causal_lm

    (tuned, tok), (base, _) = load_causal_lm(str(tmp_path / "tuned")), load_causal_lm(str(tiny_lm_path))
    ids = torch.tensor([tok("story number 3")["input_ids"]])
    with torch.no_grad():  # DPO moved the adapter (LoRA starts as the identity), and adapter off is the base
        assert not torch.allclose(tuned(ids).logits, base(ids).logits, atol=1e-4)
        assert torch.allclose(adapter_off(tuned)(ids).logits, base(ids).logits, atol=1e-5)
    out = tmp_path / "eft.jsonl"
    generate_main(["--method", "eft", "--model_name_or_path", str(tiny_lm_path), "--tuned_model",
                   str(tmp_path / "tuned"), "--dataset_name", str(tmp_path / "p.jsonl"), "--max_completion_length",
                   "6", "--output_file", str(out)])
    assert len(out.read_text().splitlines()) == 16
    with pytest.raises(ValueError, match="needs untuned_model"):  # a full model has no adapter to switch off
        generate_main(["--method", "eft", "--model_name_or_path", str(tiny_lm_path), "--tuned_model",
                       str(tiny_lm_path), "--dataset_name", str(tmp_path / "p.jsonl"), "--output_file", str(out)])


def test_train_value_takes_an_adapter_as_its_model(lora, tiny_lm_path, tmp_path):
    """train-value starts from base + adapter: the adapter is merged into the base it names."""
    from transformers import AutoModelForSequenceClassification

    from lpo_train.models.loading import trainable_lm

    base, tok, _, _ = lora
    peft = _saved_adapter(base, str(tiny_lm_path), tmp_path / "adapter")
    lm = trainable_lm(str(tmp_path / "adapter"))
    assert not is_peft_model(lm) and all(p.requires_grad for p in lm.parameters())
    ids = torch.tensor([tok("hello there")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(lm(ids).logits, peft(ids).logits, atol=1e-4)
    rm = trainable_lm(str(tmp_path / "adapter"),
                      lambda path, **kw: AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **kw))
    assert rm.score.out_features == 1
    merged_q = lm.model.layers[0].self_attn.q_proj.weight
    assert torch.allclose(rm.model.layers[0].self_attn.q_proj.weight, merged_q)  # the reward model's backbone too


def test_adapter_off_forward_and_generate_are_the_base_model(lora):
    base, tok, peft, _ = lora
    ids = torch.tensor([tok("the cat sat on the mat")["input_ids"]])
    off = adapter_off(peft)
    with torch.no_grad():
        assert torch.allclose(off.forward(ids).logits, base(ids).logits, atol=1e-5)
        greedy = dict(max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
        assert torch.equal(off.generate(input_ids=ids, **greedy), base.generate(input_ids=ids, **greedy))
    assert off.lpo_adapter is None


def test_an_adapter_over_an_adapter_has_base_plus_first_adapter_as_its_untuned_model(lora, tiny_lm_path, tmp_path):
    from lpo_train.models.loading import load_causal_lm

    base, tok, _, _ = lora
    first = _saved_adapter(base, str(tiny_lm_path), tmp_path / "a")
    merged_first = copy.deepcopy(first).merge_and_unload()
    second = _lora(merged_first, seed=2)
    second.save_pretrained(tmp_path / "b")
    config = json.loads((tmp_path / "b" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "a")  # what train-value --use_peft on adapter a writes
    (tmp_path / "b" / "adapter_config.json").write_text(json.dumps(config))
    model, _ = load_causal_lm(str(tmp_path / "b"))
    ids = torch.tensor([tok("hello there")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(adapter_off(model)(ids).logits, merged_first(ids).logits, atol=1e-4)
        assert torch.allclose(model(ids).logits, second(ids).logits, atol=1e-4)
