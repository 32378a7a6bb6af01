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
