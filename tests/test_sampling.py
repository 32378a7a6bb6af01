"""The sampling layer equals transformers' own warpers (temperature, top-k, top-p, min-p, in HF's order)."""

import itertools

import pytest
import torch
from transformers import MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from lpo_train.decoding.sampling import Truncation, knob_distribution, warp


def hf_probs(logits, temperature, top_k=0, top_p=1.0, min_p=0.0):
    """What HF generate(do_sample=True) samples from, built from transformers' warpers in its order."""
    scores = logits.clone()
    ids = torch.zeros((logits.shape[0], 1), dtype=torch.long)
    chain = [TemperatureLogitsWarper(temperature)]
    if top_k:
        chain.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        chain.append(TopPLogitsWarper(top_p))
    if min_p > 0:
        chain.append(MinPLogitsWarper(min_p))
    for w in chain:
        scores = w(ids, scores)
    return torch.softmax(scores, -1)


TEMPS, TOP_KS, TOP_PS, MIN_PS = (0.5, 1.0, 1.7), (0, 3, 50), (1.0, 0.9, 0.5), (0.0, 0.05, 0.2)


@pytest.mark.parametrize("temperature,top_k,top_p,min_p", list(itertools.product(TEMPS, TOP_KS, TOP_PS, MIN_PS)))
def test_every_combination_equals_the_hf_warpers(temperature, top_k, top_p, min_p):
    torch.manual_seed(hash((temperature, top_k, top_p, min_p)) % 2**31)
    logits = torch.randn(16, 200) * 3
    ours = warp(logits, torch.full((16,), temperature), Truncation(top_k, top_p, min_p))
    ref = hf_probs(logits, temperature, top_k, top_p, min_p)
    assert (ours - ref).abs().max() < 1e-6
    assert torch.equal(ours > 0, ref > 0)  # the same kept set, token for token


def test_top_k_then_top_p_renormalises_the_top_k_mass():
    # the bug this layer fixes: top-p must see the top-k mass renormalised, as HF and vLLM do
    probs = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    out = warp(probs.log(), torch.ones(1), Truncation(top_k=2, top_p=0.6))
    # top-2 renormalised: 0.571, 0.429 -> 0.571 < 0.6, so both stay (not only the first, as on raw mass)
    assert torch.allclose(out, torch.tensor([[4 / 7, 3 / 7, 0.0, 0.0]]))


@pytest.mark.parametrize("knob,grid", [("top_k", [1, 3, 0, 7]), ("top_p", [0.3, 0.9, 1.0, 0.6]),
                                       ("min_p", [0.0, 0.2, 0.6, 0.05])])
@pytest.mark.parametrize("fixed", [Truncation(), Truncation(top_k=5), Truncation(top_p=0.8),
                                   Truncation(min_p=0.1), Truncation(top_k=10, top_p=0.9, min_p=0.02)])
def test_head_knobs_take_their_place_in_the_hf_chain(knob, grid, fixed):
    torch.manual_seed(3)
    logits = torch.randn(4, 60) * 2
    ours = knob_distribution(logits, knob, torch.tensor(grid, dtype=torch.float), base_temperature=0.7,
                             truncation=fixed)
    for row, value in enumerate(grid):
        settings = {"top_k": fixed.top_k, "top_p": fixed.top_p, "min_p": fixed.min_p}
        settings[knob] = int(value) if knob == "top_k" else value
        ref = hf_probs(logits[row:row + 1], 0.7, **settings)
        assert (ours[row] - ref[0]).abs().max() < 1e-6


def test_temperature_knob_with_truncations_equals_hf_per_row():
    torch.manual_seed(4)
    logits = torch.randn(3, 80)
    temps = torch.tensor([0.3, 1.0, 1.5])
    fixed = Truncation(top_k=50, top_p=0.9)
    ours = knob_distribution(logits, "temperature", temps, truncation=fixed)
    for row in range(3):
        ref = hf_probs(logits[row:row + 1], float(temps[row]), 50, 0.9)
        assert (ours[row] - ref[0]).abs().max() < 1e-6


def test_tempered_logits_are_the_tempered_distribution_before_softmax():
    from lpo_train.decoding.sampling import tempered, tempered_logits

    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    t = torch.tensor([0.0, 0.5, 1e-5, 2.0])  # two greedy rows (T = 0 and T below MIN_TEMPERATURE)
    scaled = tempered_logits(logits, t)
    assert torch.equal(scaled[[1, 3]], logits[[1, 3]] / t[[1, 3], None])
    for r in (0, 2):  # only the argmax stays
        assert scaled[r].isfinite().sum() == 1 and scaled[r, logits[r].argmax()] == logits[r].max()
    assert torch.equal(torch.softmax(scaled, -1), tempered(logits, t))
    assert torch.equal(tempered(logits, t)[[0, 2]], torch.nn.functional.one_hot(logits[[0, 2]].argmax(-1), 50).float())
