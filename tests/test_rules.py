import math

import pytest
import torch

from lpo_train.decoding import (
    EDT,
    KLD,
    Dynatemp,
    SamplingParams,
    StepInput,
    dynatemp_temperature,
    edt_temperature,
    entropy,
    generate,
    kld_temperature,
)


def test_edt_hand_computed():
    h = torch.tensor([1.0, 0.5, 2.0, 0.0])
    t = edt_temperature(h, T0=1.0, theta=1.0, N=0.8)
    assert t.tolist() == pytest.approx([0.8, 0.64, 0.894427, 0.0], abs=1e-6)
    # only theta * ln(1/N) matters
    assert edt_temperature(torch.tensor([1.3]), 1.0, 2.0, 0.8).item() == pytest.approx(
        edt_temperature(torch.tensor([1.3]), 1.0, 1.0, 0.64).item())


def test_edt_rows_are_independent():
    torch.manual_seed(0)
    logits = torch.randn(5, 40) * torch.tensor([0.1, 1.0, 3.0, 10.0, 30.0])[:, None]
    rule = EDT(T0=1.2, theta=0.7)
    together = rule.step(StepInput(logits=logits, hidden=None, state={}, step=0)).temperature
    alone = torch.cat([rule.step(StepInput(logits=row[None], hidden=None, state={}, step=0)).temperature
                       for row in logits])
    assert torch.equal(together, alone)
    assert len(set(together.tolist())) == 5 and (together <= 1.2).all()


def test_edt_bad_parameters():
    with pytest.raises(ValueError, match="N"):
        EDT(N=1.2)
    with pytest.raises(ValueError, match="T0"):
        EDT(T0=-1)


def test_kld_hand_computed():
    kl = torch.tensor([0.0, 1.0, 2.0, 0.5])
    assert kld_temperature(kl, T0=1.0, sigma=1.0).tolist() == pytest.approx([1.0, 0.5, 0.25, 2 ** -0.5])
    assert kld_temperature(torch.tensor([0.3]), T0=0.9, sigma=0.3).item() == pytest.approx(0.45)
    assert kld_temperature(kl, T0=0.7, sigma=0.0).tolist() == pytest.approx([0.7] * 4)


def test_dynatemp_hand_computed():
    h = torch.tensor([0.5, 0.0, 1.0])
    assert dynatemp_temperature(h, 0.8, 0.3, 1.0).tolist() == pytest.approx([0.8, 0.5, 1.1])
    assert dynatemp_temperature(torch.tensor([0.5]), 0.8, 0.3, 2.0).item() == pytest.approx(0.65)
    assert dynatemp_temperature(torch.tensor([0.0]), 0.2, 0.3).item() == 0.0  # T_min floored at 0
    uniform = torch.zeros(2, 16)
    t = Dynatemp(0.8, 0.3).step(StepInput(logits=uniform, hidden=None, state={}, step=0)).temperature
    assert t.tolist() == pytest.approx([1.1, 1.1])  # normalised entropy 1 -> T_max


def test_entropy_ignores_masked_logits():
    logits = torch.tensor([[0.0, 0.0, float("-inf"), float("-inf")]])
    assert entropy(logits).item() == pytest.approx(math.log(2))


def test_engine_traces_edt_temperatures_from_entropy(tiny_lm):
    model, tok = tiny_lm
    (t,) = generate(model, tok, ["hello"], EDT(T0=1.0, theta=1.0),
                     SamplingParams(max_new_tokens=8, trace_entropy=True))
    expected = edt_temperature(torch.tensor(t.entropies), 1.0, 1.0)
    assert t.values == pytest.approx(expected.tolist(), rel=1e-5)


def test_kld_with_identical_context_free_prompt_keeps_t0(tiny_lm):
    model, tok = tiny_lm
    prompts = ["Evidence: the sky is green. Question: what colour is the sky?", "hi"]
    same = generate(model, tok, prompts, KLD(prompts, T0=0.9, sigma=1.0), SamplingParams(max_new_tokens=6))
    assert all(v == pytest.approx(0.9) for t in same for v in t.values)
    other = generate(model, tok, prompts, KLD(["Question: what colour is the sky?", "hi"], T0=0.9, sigma=0.5),
                     SamplingParams(max_new_tokens=6))
    assert any(v < 0.89 for v in other[0].values)  # the evidence changes the distribution
    assert all(v == pytest.approx(0.9) for v in other[1].values)
    with pytest.raises(ValueError, match="auxiliary prompts"):
        generate(model, tok, prompts, KLD(["only one"]))
