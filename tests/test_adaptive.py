import pytest
import torch

from lpo_train import AdaptiveDecoderConfig, AdaptiveDecoderHead
from lpo_train.decoding import (
    AdaptiveDecoderRule,
    FixedTemperature,
    SamplingParams,
    StepInput,
    generate,
    knob_distribution,
    next_token_distribution,
)
from lpo_train.decoding.sampling import sample_from

PROMPTS = ["What is the answer?", "hi", "The quick brown fox jumps over"]


def _head(model, level="token", grid=(0.0, 0.5, 1.0), knob="temperature", favour=None, scale=0.0, seed=0):
    head = AdaptiveDecoderHead.for_model(model, level=level, grid=grid, knob=knob)
    with torch.no_grad():
        if favour is not None:
            head.mlp[-1].bias[favour] = 50.0
        if scale:  # a head whose choice depends on the hidden state
            torch.manual_seed(seed)
            head.mlp[-1].weight.normal_(0, scale)
    return head


def _full_forward(model, trace):
    ids = torch.tensor([trace.prompt_ids + trace.token_ids])
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    n = len(trace.prompt_ids)
    return out.logits[0, n - 1:-1].float(), out.hidden_states[-1][0, n - 1:-1]


def test_sequence_level_records_one_choice_token_level_one_per_token(tiny_lm):
    model, tok = tiny_lm
    params = SamplingParams(max_new_tokens=10, num_samples=2, seed=1)
    seq = generate(model, tok, PROMPTS, AdaptiveDecoderRule(_head(model, "sequence"), "sample"), params)
    tokl = generate(model, tok, PROMPTS, AdaptiveDecoderRule(_head(model, "token"), "sample"), params)
    grid = (0.0, 0.5, 1.0)
    for t in seq:
        assert len(t.choices) == 1 and t.values == [grid[t.choices[0]]] * len(t.token_ids)
    for t in tokl:
        assert len(t.choices) == len(t.token_ids) and t.values == [grid[c] for c in t.choices]
    assert len({c for t in tokl for c in t.choices}) == 3  # a uniform head samples every choice


def test_temperature_zero_choice_is_exact_greedy(tiny_lm):
    model, tok = tiny_lm
    params = SamplingParams(max_new_tokens=12, seed=3)
    greedy = generate(model, tok, PROMPTS, FixedTemperature(0.0), params)
    for level in ("token", "sequence"):
        ad = generate(model, tok, PROMPTS, AdaptiveDecoderRule(_head(model, level, favour=0)), params)
        assert [t.token_ids for t in ad] == [t.token_ids for t in greedy]
        assert all(set(t.values) == {0.0} for t in ad)


def test_argmax_selection_is_deterministic_and_state_dependent(tiny_lm):
    model, tok = tiny_lm
    head = _head(model, "token", scale=5.0)
    params = SamplingParams(max_new_tokens=10)
    a = generate(model, tok, PROMPTS, AdaptiveDecoderRule(head, "argmax"), params)
    _, hidden = _full_forward(model, a[0])
    assert a[0].choices == head(hidden).argmax(-1).tolist()  # the choice comes from h_t
    assert len({c for t in a for c in t.choices}) > 1


def test_kv_cached_decoding_equals_full_recomputation(tiny_lm):
    model, tok = tiny_lm
    head = _head(model, "token", scale=5.0)
    traces = generate(model, tok, PROMPTS, AdaptiveDecoderRule(head, "sample"),
                      SamplingParams(max_new_tokens=10, num_samples=2, seed=5, trace_hidden=True,
                                     trace_choice_logps=True, trace_entropy=True))
    grid = torch.tensor([0.0, 0.5, 1.0])
    for t in traces:
        logits, hidden = _full_forward(model, t)
        assert torch.allclose(t.hidden, hidden, atol=1e-5)
        ent = -(torch.log_softmax(logits, -1).exp() * torch.log_softmax(logits, -1)).sum(-1)
        assert t.entropies == pytest.approx(ent.tolist(), abs=1e-4)
        y = torch.tensor(t.token_ids)
        for k, tau in enumerate(grid.tolist()):
            if tau == 0:
                expected = torch.where(logits.argmax(-1) == y, 0.0, float("-inf"))
                assert torch.equal(t.choice_logps[:, k], expected)
            else:
                expected = torch.log_softmax(logits / tau, -1).gather(-1, y[:, None]).squeeze(-1)
                assert torch.allclose(t.choice_logps[:, k], expected, atol=1e-4)
        # the sampled token is always possible under the choice that produced it
        assert all(t.choice_logps[i, c] > float("-inf") for i, c in enumerate(t.choices))


def test_sequence_level_traces_the_last_prompt_hidden_state(tiny_lm):
    model, tok = tiny_lm
    (t,) = generate(model, tok, PROMPTS[:1], AdaptiveDecoderRule(_head(model, "sequence")),
                    SamplingParams(max_new_tokens=5, trace_hidden=True))
    _, hidden = _full_forward(model, t)
    assert t.hidden.shape == (1, model.config.hidden_size)
    assert torch.allclose(t.hidden[0], hidden[0], atol=1e-5)


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_traced_choice_probs_are_the_heads_own_distribution_not_the_explorations(tiny_lm, level):
    model, tok = tiny_lm
    head = _head(model, level, scale=2.0)
    rule = AdaptiveDecoderRule(head, "sample", exploration="uniform_mix", epsilon=0.5)
    traces = generate(model, tok, PROMPTS, rule, SamplingParams(max_new_tokens=6, num_samples=2, seed=3,
                                                                 trace_hidden=True))
    for t in traces:  # one row per traced decision: every step (token level) or step 0 (sequence level)
        assert t.choice_probs.shape == (len(t.token_ids) if level == "token" else 1, 3)
        with torch.no_grad():
            expected = head.log_probs(t.hidden).exp()
        assert torch.allclose(t.choice_probs, expected, atol=1e-6)
    assert max(float(t.choice_probs.max() - t.choice_probs.min()) for t in traces) > 0.1  # not uniform
    untraced = generate(model, tok, PROMPTS[:1], rule, SamplingParams(max_new_tokens=3))
    assert untraced[0].choice_probs is None  # kept only beside the hidden states


def test_mixture_identity_exact_and_monte_carlo():
    torch.manual_seed(0)
    z = torch.randn(1, 6) * 2
    grid = torch.tensor([0.0, 0.4, 1.0])
    head = AdaptiveDecoderHead(AdaptiveDecoderConfig(hidden_size=4, grid=grid.tolist(), level="token"))
    with torch.no_grad():
        head.mlp[-1].bias.copy_(torch.tensor([0.3, -0.5, 0.9]))
    p_tau = torch.softmax(torch.tensor([0.3, -0.5, 0.9]), -1)
    by_hand = p_tau[0] * torch.nn.functional.one_hot(z.argmax(), 6).float() \
        + p_tau[1] * torch.softmax(z[0] / 0.4, -1) + p_tau[2] * torch.softmax(z[0], -1)
    hidden = torch.zeros(1, 4)
    mix_rule = AdaptiveDecoderRule(head, "mixture")
    out = mix_rule.step(StepInput(logits=z, hidden=hidden, state=mix_rule.init_state(1, "cpu"), step=0))
    assert torch.allclose(out.probs[0], by_hand, atol=1e-6)
    # sampling tau, then y (Eq. 5) has the mixture (Eq. 6) as its marginal
    n = 40000
    rule = AdaptiveDecoderRule(head, "sample")
    zs, hs = z.expand(n, 6), hidden.expand(n, 4)
    inp = StepInput(logits=zs, hidden=hs, state=rule.init_state(n, "cpu"), step=0, row_seeds=torch.arange(n))
    step = rule.step(inp)
    y = sample_from(next_token_distribution(zs, step.temperature), inp.uniforms(purpose=0))
    freq = torch.bincount(y, minlength=6).float() / n
    assert (freq - by_hand).abs().max() < 4 * (0.25 / n) ** 0.5


@pytest.mark.parametrize("knob,grid", [("top_k", [1, 3, 0]), ("top_p", [0.3, 0.9, 1.0]), ("min_p", [0.0, 0.2, 0.6])])
def test_other_knobs_match_the_scalar_truncations(knob, grid):
    torch.manual_seed(1)
    z = torch.randn(3, 20) * 2
    values = torch.tensor(grid, dtype=torch.float)
    per_row = knob_distribution(z, knob, values, base_temperature=0.7)
    for r, v in enumerate(grid):
        kwargs = {"top_k": int(v)} if knob == "top_k" else {knob: v}
        ref = next_token_distribution(z[r:r + 1], torch.tensor([0.7]), **kwargs)
        assert torch.allclose(per_row[r], ref[0], atol=1e-6)


def test_top_k_head_with_k1_is_greedy(tiny_lm):
    model, tok = tiny_lm
    params = SamplingParams(max_new_tokens=10, seed=2)
    greedy = generate(model, tok, PROMPTS, FixedTemperature(0.0), params)
    ad = generate(model, tok, PROMPTS, AdaptiveDecoderRule(_head(model, "token", grid=[1, 5, 0], knob="top_k",
                                                                 favour=0)), params)
    assert [t.token_ids for t in ad] == [t.token_ids for t in greedy]
    assert all(set(t.values) == {1.0} for t in ad)


def test_bad_selection_is_rejected(tiny_lm):
    model, _ = tiny_lm
    with pytest.raises(ValueError, match="selection"):
        AdaptiveDecoderRule(_head(model), "beam")
