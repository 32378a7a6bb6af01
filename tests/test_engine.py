import pytest
import torch

from lpo_train.decoding import FixedTemperature, SamplingParams, generate, next_token_distribution
from lpo_train.decoding.engine import encode_prompts
from lpo_train.decoding.rules import entropy
from lpo_train.decoding.stream import left_pad

PROMPTS = ["What is the answer?", "hi", "The quick brown fox jumps over the lazy dog and then"]


def _hf_greedy(model, tokenizer, prompts, max_new_tokens):
    input_ids, mask = left_pad(encode_prompts(tokenizer, prompts), tokenizer.pad_token_id)
    out = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=False,
                         max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
    return [row[input_ids.shape[1]:].tolist() for row in out]


def test_greedy_equals_hf_generate_token_for_token(tiny_lm):
    model, tok = tiny_lm
    traces = generate(model, tok, PROMPTS, params=SamplingParams(max_new_tokens=16))
    hf = _hf_greedy(model, tok, PROMPTS, 16)
    assert len({tuple(t.token_ids) for t in traces}) > 1  # the model is not degenerate
    for trace, ref in zip(traces, hf):
        assert trace.token_ids == ref[:len(trace.token_ids)]
        if trace.finish_reason == "length":
            assert len(trace.token_ids) == 16
        assert trace.values == [0.0] * len(trace.token_ids)


def test_greedy_does_not_depend_on_batching(tiny_lm):
    model, tok = tiny_lm
    together = generate(model, tok, PROMPTS, params=SamplingParams(max_new_tokens=12))
    alone = [generate(model, tok, [p], params=SamplingParams(max_new_tokens=12))[0] for p in PROMPTS]
    assert [t.token_ids for t in together] == [t.token_ids for t in alone]


def test_distribution_is_softmax_over_t_and_greedy_is_one_hot():
    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    temps = torch.tensor([0.5, 1.0, 1.7, 0.0])
    probs = next_token_distribution(logits, temps)
    for i in range(3):
        assert torch.allclose(probs[i], torch.softmax(logits[i] / temps[i], -1), atol=1e-7)
    assert probs[3].argmax() == logits[3].argmax() and probs[3].max() == 1.0 and probs[3].sum() == 1.0


def test_truncations_match_hand_computation():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    one = torch.ones(1)
    top2 = next_token_distribution(logits, one, top_k=2)
    assert torch.allclose(top2, torch.tensor([[5 / 7, 2 / 7, 0, 0, 0]]))
    nucleus = next_token_distribution(logits, one, top_p=0.8)  # 0.5+0.2 < 0.8 <= 0.85
    assert torch.allclose(nucleus, torch.tensor([[0.5, 0.2, 0.15, 0, 0]]) / 0.85)
    minp = next_token_distribution(logits, one, min_p=0.25)  # keep p >= 0.125
    assert torch.allclose(minp, torch.tensor([[0.5, 0.2, 0.15, 0, 0]]) / 0.85)


def test_entropy_in_nats():
    assert entropy(torch.zeros(1, 8)).item() == pytest.approx(torch.log(torch.tensor(8.0)).item())


def test_sampling_reproducible_under_seed_and_prompt_major(tiny_lm):
    model, tok = tiny_lm
    params = SamplingParams(max_new_tokens=10, num_samples=3, seed=7)
    a = generate(model, tok, PROMPTS[:2], FixedTemperature(1.0), params)
    b = generate(model, tok, PROMPTS[:2], FixedTemperature(1.0), params)
    c = generate(model, tok, PROMPTS[:2], FixedTemperature(1.0), SamplingParams(max_new_tokens=10, num_samples=3, seed=8))
    assert [t.token_ids for t in a] == [t.token_ids for t in b]
    assert [t.token_ids for t in a] != [t.token_ids for t in c]
    assert [(t.prompt_index, t.sample_index) for t in a] == [(i, s) for i in range(2) for s in range(3)]
    assert all(t.values == [1.0] * len(t.token_ids) for t in a)
    assert all(t.entropies is None for t in a)  # computed only when traced
    traced = generate(model, tok, PROMPTS[:2], FixedTemperature(1.0),
                      SamplingParams(max_new_tokens=10, num_samples=3, seed=7, trace_entropy=True))
    assert [t.token_ids for t in traced] == [t.token_ids for t in a]
    assert all(len(t.entropies) == len(t.token_ids) for t in traced)


def test_eos_and_stop_strings(toy_small):
    model, tok = toy_small
    (t,) = generate(model, tok, ["What is 2 + 3?"], params=SamplingParams(max_new_tokens=20))
    assert t.finish_reason == "eos" and t.token_ids[-1] == tok.eos_token_id
    assert t.text == "The answer is 5."
    (s,) = generate(model, tok, ["Tell a story about the cat."],
                    params=SamplingParams(max_new_tokens=60, stop_strings=("forest",)))
    assert s.finish_reason == "stop" and s.text.endswith("forest") and s.text.count("forest") == 1
    (n,) = generate(model, tok, ["Tell a story about the cat."], params=SamplingParams(max_new_tokens=5))
    assert n.finish_reason == "length" and len(n.token_ids) == 5


def test_bad_input_is_rejected(tiny_lm):
    model, tok = tiny_lm
    with pytest.raises(ValueError, match="no prompts"):
        generate(model, tok, [])
    with pytest.raises(ValueError, match=">= 0"):
        FixedTemperature(-0.1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(TypeError, match="string or a list of messages"):
        generate(model, tok, [123])


def test_vanishing_temperature_is_greedy_not_nan():
    logits = torch.tensor([[10.0, 9.0, -3.0], [0.0, 1.0, 0.5]])
    for t in (1e-30, 1e-8, 0.0):
        probs = next_token_distribution(logits, torch.tensor([t, t]))
        assert torch.equal(probs, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
    sharp = next_token_distribution(logits * 1e6, torch.tensor([1e-3, 1e-3]))  # huge z / T, no overflow
    assert torch.isfinite(sharp).all() and torch.equal(sharp.argmax(-1), torch.tensor([0, 1]))


def test_sample_from_matches_the_distribution_and_never_draws_zero_mass():
    from lpo_train.decoding.randomness import row_uniforms
    from lpo_train.decoding.sampling import sample_from

    probs = torch.tensor([0.5, 0.0, 0.2, 0.3, 0.0]).expand(50000, 5)
    draws = sample_from(probs, row_uniforms(torch.arange(50000), step=0))
    freq = torch.bincount(draws, minlength=5).float() / len(draws)
    assert freq[1] == 0 and freq[4] == 0
    assert (freq - probs[0]).abs().max() < 4 * (0.25 / len(draws)) ** 0.5
    one_hot = torch.zeros(3, 7).scatter_(1, torch.tensor([[6], [0], [3]]), 1.0)
    assert sample_from(one_hot, torch.tensor([0.0, 0.5, 0.999999])).tolist() == [6, 0, 3]


def test_row_uniforms_are_uniform_and_independent_of_the_batch():
    from lpo_train.decoding.randomness import row_uniforms

    seeds = torch.arange(100000)
    u = row_uniforms(seeds, step=3)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.005
    assert abs(u.var().item() - 1 / 12) < 0.002
    assert torch.equal(row_uniforms(seeds[5:9], step=3), u[5:9])
    assert not torch.equal(row_uniforms(seeds[:10], step=4), u[:10])
    assert not torch.equal(row_uniforms(seeds[:10], step=3, purpose=1), u[:10])
    consecutive = torch.stack([row_uniforms(torch.tensor([7]), s) for s in range(2000)]).squeeze()
    assert abs(torch.corrcoef(torch.stack([consecutive[:-1], consecutive[1:]]))[0, 1]) < 0.06


def test_sampling_is_batch_invariant(tiny_lm):
    model, tok = tiny_lm
    params = SamplingParams(max_new_tokens=10, num_samples=2, prompt_seeds=[11, 12, 13])
    together = generate(model, tok, PROMPTS, FixedTemperature(1.0), params)
    small_batches = generate(model, tok, PROMPTS, FixedTemperature(1.0),
                             SamplingParams(max_new_tokens=10, num_samples=2, prompt_seeds=[11, 12, 13], batch_size=1))
    alone = [generate(model, tok, [p], FixedTemperature(1.0),
                      SamplingParams(max_new_tokens=10, num_samples=2, prompt_seeds=[seed]))
             for p, seed in zip(PROMPTS, [11, 12, 13])]
    assert [t.token_ids for t in together] == [t.token_ids for t in small_batches]
    assert [t.token_ids for t in together] == [t.token_ids for pair in alone for t in pair]
    assert len({tuple(t.token_ids) for t in together}) > 3
