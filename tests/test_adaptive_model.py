"""AdaptiveDecoderForCausalLM: a trained head and its base in one line, with an HF-style generate."""

import pytest
import torch

from lpo_train import AdaptiveDecoderConfig, AdaptiveDecoderForCausalLM, AdaptiveDecoderHead
from lpo_train.decoding import AdaptiveDecoderRule, SamplingParams, generate


def _saved_head(model, folder, level, base_model):
    head = AdaptiveDecoderHead(AdaptiveDecoderConfig(hidden_size=model.config.hidden_size, grid=[0.0, 0.7, 1.4],
                                                     level=level, input_norm="layernorm", base_model=base_model))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    head.save_pretrained(folder)
    return head


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_one_line_loading_and_hf_style_generate_equal_the_engine(toy_small, toy_lm_folder, tmp_path, level):
    model, tok = toy_small
    head = _saved_head(model, tmp_path / "head", level, str(toy_lm_folder))
    wrapped = AdaptiveDecoderForCausalLM.from_pretrained(tmp_path / "head")
    assert wrapped.head.config.level == level
    messages = [[{"role": "user", "content": "What is 2 + 3?"}], [{"role": "user", "content": "Tell a story about the cat."}]]
    tok.padding_side = "left"
    inputs = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True,
                                     padding=True)
    out, traces = wrapped.generate(**inputs, max_new_tokens=20, num_return_sequences=2, seed=3, return_traces=True)
    assert out.shape == (4, inputs["input_ids"].shape[1] + 20)
    engine = generate(model, tok, messages, AdaptiveDecoderRule(head, "argmax", model=model),
                      SamplingParams(max_new_tokens=20, num_samples=2, seed=3))
    width = inputs["input_ids"].shape[1]
    for r, (t, e) in enumerate(zip(traces, engine)):
        assert t.token_ids == e.token_ids and t.choices == e.choices  # the same decoding as the engine
        assert out[r, width:width + len(t.token_ids)].tolist() == t.token_ids
        assert torch.equal(out[r, :width], inputs["input_ids"][r // 2])  # prompt-major, prompt kept
        assert (out[r, width + len(t.token_ids):] == tok.pad_token_id).all()
    assert any(t.finish_reason == "eos" for t in traces)


def test_errors_name_the_fix(toy_small, tmp_path):
    model, tok = toy_small
    _saved_head(model, tmp_path / "nobase", "token", None)
    with pytest.raises(ValueError, match="records no base model"):
        AdaptiveDecoderForCausalLM.from_pretrained(tmp_path / "nobase")
    wrapped = AdaptiveDecoderForCausalLM(model, tok, AdaptiveDecoderHead.for_model(model))
    ids = torch.tensor([tok("hello")["input_ids"]])
    with pytest.raises(TypeError, match="head chooses"):
        wrapped.generate(ids, temperature=0.7)
    with pytest.raises(TypeError, match="do_sample=False"):
        wrapped.generate(ids, do_sample=False)


def test_plain_transformers_custom_generate_runs_the_head(tiny_lm_path, tmp_path):
    """No lpo-train import in the user's code: model.generate(custom_generate=<head folder>, trust_remote_code=True)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_lm_path).eval()
    tok = AutoTokenizer.from_pretrained(tiny_lm_path)
    head = _saved_head(model, tmp_path / "plain", "token", str(tiny_lm_path))
    head.save_pretrained(tmp_path / "head", custom_generate=True)
    assert (tmp_path / "head" / "custom_generate" / "requirements.txt").read_text().strip() == "lpo-train"
    assert repr(str((tmp_path / "head").resolve())) in (tmp_path / "head" / "custom_generate" / "generate.py").read_text()
    tok.padding_side = "left"
    inputs = tok(["the cat sat", "a dog ran far away"], return_tensors="pt", padding=True)
    out = model.generate(**inputs, custom_generate=str(tmp_path / "head"), trust_remote_code=True, max_new_tokens=8)
    prompts = [ids[m.bool()].tolist() for ids, m in zip(inputs["input_ids"], inputs["attention_mask"])]
    engine = generate(model, tok, prompts, AdaptiveDecoderRule(head, "argmax", model=model),
                      SamplingParams(max_new_tokens=8))
    width = inputs["input_ids"].shape[1]
    assert [row[width:width + len(t.token_ids)].tolist() for row, t in zip(out, engine)] == [t.token_ids for t in engine]
    assert len({c for t in engine for c in t.choices}) > 1  # the head really chose, per token
    plain = model.generate(**inputs, do_sample=False, max_new_tokens=8, pad_token_id=tok.pad_token_id)
    assert not torch.equal(out, plain)  # not HF's own decoding
