"""Integrated Value Guidance: token-level guidance rules, chunk scorers and chunk-level beam search."""

from dataclasses import replace

import pytest
import torch

from lpo_train.decoding import FixedTemperature, SamplingParams, generate
from lpo_train.decoding.engine import encode_prompts
from lpo_train.guidance import (
    ChunkBeamSearch,
    ChunkScorer,
    ExplicitGuidance,
    ExplicitScorer,
    ImplicitGuidance,
    ImplicitScorer,
    RewardScorer,
    end_scores,
    guided_generate,
    load_value_model,
    make_value_model,
    token_values,
)
from lpo_train.guidance.token import StepOutput

PROMPTS = ["the cat sat", "a dog ran far away from home", "hello"]


def _random_lm(tokenizer, seed, std=0.5):
    from lpo_train.models import build_tiny_lm

    model = build_tiny_lm(tokenizer, hidden_size=32, num_layers=2, num_heads=4, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model.eval()


@pytest.fixture(scope="module")
def models(tiny_lm):
    base, tok = tiny_lm
    tuned, untuned = _random_lm(tok, 1), _random_lm(tok, 2)
    value = make_value_model(_random_lm(tok, 3))
    with torch.no_grad():
        value.get_output_embeddings().weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(4))
    return base, tok, tuned, untuned, value


def _params(n=12, **kw):
    return SamplingParams(max_new_tokens=n, prompt_seeds=[11, 22, 33][:len(kw.pop("prompts", PROMPTS))], **kw)


def _logps(model, prompt_ids, token_ids):
    ids = torch.tensor([prompt_ids + token_ids])
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    return logits[len(prompt_ids) - 1:-1], torch.log_softmax(logits[len(prompt_ids) - 1:-1], -1)


def _hand_implicit(tuned, untuned, t):
    _, lt = _logps(tuned, t.prompt_ids, t.token_ids)
    _, lu = _logps(untuned, t.prompt_ids, t.token_ids)
    y = torch.tensor(t.token_ids)[:, None]
    return (lt.gather(1, y) - lu.gather(1, y)).sum().item()


def test_width_one_is_plain_sampling(models):
    base, tok, tuned, untuned, _ = models
    plain = generate(base, tok, PROMPTS, FixedTemperature(1.0), _params())
    for scorer in (None, ImplicitScorer(tuned, untuned)):
        guided = guided_generate(base, tok, PROMPTS, scorer=scorer, width=1, candidates=1, chunk_length=3,
                                 params=_params())
        assert [g[0].token_ids for g in guided] == [t.token_ids for t in plain]


def test_best_of_n_is_sampling_then_argmax(models):
    base, tok, tuned, untuned, _ = models
    n = 5
    plain = generate(base, tok, PROMPTS, FixedTemperature(1.0), _params(num_samples=n))
    guided = guided_generate(base, tok, PROMPTS, scorer=ImplicitScorer(tuned, untuned), width=1, candidates=n,
                             chunk_length=None, params=_params())
    for i, ranked in enumerate(guided):
        samples = plain[i * n:(i + 1) * n]
        hand = [_hand_implicit(tuned, untuned, t) for t in samples]
        best = max(range(n), key=lambda s: hand[s])
        assert ranked[0].token_ids == samples[best].token_ids
        assert ranked[0].score == pytest.approx(hand[best], abs=1e-3)
        assert sorted(t.score for t in ranked) == pytest.approx(sorted(hand), abs=1e-3)


class _FixedScorer(ChunkScorer):
    def __init__(self, scores):
        self.scores = torch.tensor(scores)

    def score(self, tokens, lengths):
        return self.scores


def test_fixed_scores_give_expected_survivors():
    # two prompts, W = 2, K = 2: global top-2 per prompt, copied K times as [b1, b2, b1, b2]
    search = ChunkBeamSearch(_FixedScorer([0.1, 0.9, 0.5, 0.3, 2.0, 1.0, 3.0, -1.0]), width=2, candidates=2,
                             chunk_length=4)
    src = search.boundary(None, torch.zeros(8), torch.ones(8, dtype=torch.bool), final=False)
    assert src.tolist() == [1, 2, 1, 2, 6, 4, 6, 4]
    final = search.boundary(None, torch.zeros(8), torch.ones(8, dtype=torch.bool), final=True)
    assert final.tolist() == [1, 2, 3, 0, 6, 4, 5, 7]
    assert search.final_scores.tolist() == pytest.approx([0.9, 0.5, 0.3, 0.1, 3.0, 2.0, 1.0, -1.0])


class _RecordingScorer(ChunkScorer):
    """Scores a row by its token ids (a fixed function of the text) and records every boundary."""

    def begin(self, prompt_index, max_new_tokens):
        self.log = []

    def score(self, tokens, lengths):
        s = torch.tensor([float(sum(tokens[r, :lengths[r]].tolist()) % 97) for r in range(len(lengths))])
        self.log.append(([tokens[r, :lengths[r]].tolist() for r in range(len(lengths))], s))
        return s


def test_survivors_continue_the_top_candidates(models):
    base, tok, *_ = models
    w, k, chunk = 2, 3, 3
    scorer = _RecordingScorer()
    guided_generate(base, tok, PROMPTS[:1], scorer=scorer, width=w, candidates=k, chunk_length=chunk,
                    params=_params(10, prompts=PROMPTS[:1]))
    assert len(scorer.log) >= 3
    for (seqs, scores), (next_seqs, _) in zip(scorer.log, scorer.log[1:]):
        top = torch.argsort(scores, descending=True, stable=True)[:w].tolist()
        for r, seq in enumerate(next_seqs):
            parent = seqs[top[r % w]]
            assert seq[:len(parent)] == parent  # each row grows one of the W best, in [b1..bW] x K order


class _TracedImplicit(ImplicitGuidance):
    """Records logsumexp of the combined logits (a fingerprint of every model's state) as the value."""

    def step(self, inp):
        out = super().step(inp)
        return StepOutput(temperature=out.temperature, logits=out.logits, value=out.logits.logsumexp(-1))


def test_cache_reordering_equals_recomputing(models):
    """After beam reordering, every model's cached state equals a from-scratch forward of the survivor."""
    base, tok, tuned, untuned, value = models
    rule = _TracedImplicit(tuned, untuned, beta=0.7)
    guided = guided_generate(base, tok, PROMPTS, rule=rule, scorer=ExplicitScorer(value), width=2, candidates=2,
                             chunk_length=3, params=_params(10))
    for ranked in guided:
        for t in ranked:
            lb, _ = _logps(base, t.prompt_ids, t.token_ids)
            lt, _ = _logps(tuned, t.prompt_ids, t.token_ids)
            lu, _ = _logps(untuned, t.prompt_ids, t.token_ids)
            fingerprint = (lb + 0.7 * (lt - lu)).logsumexp(-1)
            assert torch.allclose(torch.tensor(t.values), fingerprint, atol=1e-3)
            ids = torch.tensor([t.prompt_ids + t.token_ids])
            assert t.score == pytest.approx(end_scores(value, ids, torch.ones_like(ids)).item(), abs=1e-3)


def test_implicit_guidance_beta_zero_is_base_sampling(models):
    base, tok, tuned, untuned, _ = models
    plain = generate(base, tok, PROMPTS, FixedTemperature(0.8), _params())
    guided = generate(base, tok, PROMPTS, ImplicitGuidance(tuned, untuned, beta=0.0, temperature=0.8), _params())
    assert [t.token_ids for t in guided] == [t.token_ids for t in plain]


def test_implicit_guidance_samples_from_the_combined_distribution(models):
    """Greedy decoding under guidance follows argmax of log_softmax(base) + beta (log_softmax(tuned) -
    log_softmax(untuned)): the per-model normalisers cancel in the raw-logit combination."""
    base, tok, tuned, untuned, _ = models
    beta = 1.5
    traces = generate(base, tok, PROMPTS, ImplicitGuidance(tuned, untuned, beta=beta, temperature=0.0), _params())
    for t in traces:
        _, lb = _logps(base, t.prompt_ids, t.token_ids)
        _, lt = _logps(tuned, t.prompt_ids, t.token_ids)
        _, lu = _logps(untuned, t.prompt_ids, t.token_ids)
        assert (lb + beta * (lt - lu)).argmax(-1).tolist() == t.token_ids


def test_explicit_guidance_adds_weighted_values(models):
    base, tok, _, _, value = models
    w = 2.0
    traces = generate(base, tok, PROMPTS, ExplicitGuidance(value, weight=w, temperature=0.0), _params())
    for t in traces:
        lb, _ = _logps(base, t.prompt_ids, t.token_ids)
        q, _ = _logps(value, t.prompt_ids, t.token_ids)
        assert (lb + w * q).argmax(-1).tolist() == t.token_ids


@pytest.mark.parametrize("incremental", [True, False])
@pytest.mark.parametrize("options", [{}, {"average_log_prob": True}, {"reference_free": True}])
def test_implicit_sequence_score_matches_hand_computation(models, incremental, options):
    base, tok, tuned, untuned, _ = models
    scorer = ImplicitScorer(tuned, untuned, beta=0.5, incremental=incremental, **options)
    guided = guided_generate(base, tok, PROMPTS, scorer=scorer, width=2, candidates=2, chunk_length=4,
                             params=_params(10))
    for ranked in guided:
        for t in ranked:
            y = torch.tensor(t.token_ids)[:, None]
            total = _logps(tuned, t.prompt_ids, t.token_ids)[1].gather(1, y).sum().item()
            if not options.get("reference_free"):
                total -= _logps(untuned, t.prompt_ids, t.token_ids)[1].gather(1, y).sum().item()
            if options.get("average_log_prob"):
                total /= len(t.token_ids)
            assert t.score == pytest.approx(0.5 * total, abs=1e-3)


def test_scorer_with_its_own_prompt_template(models):
    """Each model sees its own prompt: the scorer's score uses its prompts, not the base model's."""
    base, tok, tuned, untuned, _ = models
    own = ["summary: " + p for p in PROMPTS]
    guided = guided_generate(base, tok, PROMPTS, scorer=ImplicitScorer(tuned, untuned, prompts=own), width=1,
                             candidates=2, chunk_length=3, params=_params(8))
    for i, ranked in enumerate(guided):
        t = ranked[0]
        (own_ids,) = encode_prompts(tok, [own[i]])
        y = torch.tensor(t.token_ids)[:, None]
        hand = (_logps(tuned, own_ids, t.token_ids)[1].gather(1, y).sum()
                - _logps(untuned, own_ids, t.token_ids)[1].gather(1, y).sum()).item()
        assert t.score == pytest.approx(hand, abs=1e-3)


def test_batched_across_prompts_equals_one_prompt_at_a_time(models):
    base, tok, tuned, untuned, value = models

    def run(prompts, seeds):
        return guided_generate(base, tok, prompts, rule=ImplicitGuidance(tuned, untuned, beta=0.5),
                               scorer=ExplicitScorer(value), width=2, candidates=3, chunk_length=3,
                               params=SamplingParams(max_new_tokens=10, prompt_seeds=seeds))

    together = run(PROMPTS, [11, 22, 33])
    for i, (p, s) in enumerate(zip(PROMPTS, [11, 22, 33])):
        (alone,) = run([p], [s])
        assert [t.token_ids for t in alone] == [t.token_ids for t in together[i]]
        assert [t.score for t in alone] == pytest.approx([t.score for t in together[i]], abs=1e-4)


def test_vocabulary_mismatch_is_a_clear_error(models):
    from lpo_train.models import build_tiny_lm, train_bpe_tokenizer

    base, tok, _, untuned, _ = models
    other_tok = train_bpe_tokenizer(vocab_size=300)
    other = build_tiny_lm(other_tok, hidden_size=32, num_layers=1, num_heads=4, seed=0).eval()
    with pytest.raises(ValueError, match="shared vocabulary"):
        generate(base, tok, PROMPTS, ImplicitGuidance(other, untuned, tokenizer=other_tok), _params())
    with pytest.raises(ValueError, match="shared vocabulary"):  # same tokenizer object, different head size
        generate(base, tok, PROMPTS, ImplicitGuidance(other, untuned), _params())


def test_scorer_with_another_vocabulary_scores_the_text(models):
    """A chunk scorer with its own tokenizer re-tokenizes the decoded text (full re-encoding)."""
    from lpo_train.models import build_tiny_lm, train_bpe_tokenizer

    base, tok, *_ = models
    other_tok = train_bpe_tokenizer(vocab_size=300)
    a = build_tiny_lm(other_tok, hidden_size=32, num_layers=1, num_heads=4, seed=1).eval()
    b = build_tiny_lm(other_tok, hidden_size=32, num_layers=1, num_heads=4, seed=2).eval()
    guided = guided_generate(base, tok, PROMPTS[:1], scorer=ImplicitScorer(a, b, tokenizer=other_tok), width=1,
                             candidates=3, params=_params(8, prompts=PROMPTS[:1]))
    t = guided[0][0]
    (p,) = encode_prompts(other_tok, PROMPTS[:1])
    ids = other_tok(tok.decode(t.token_ids, skip_special_tokens=True), add_special_tokens=False)["input_ids"]
    y = torch.tensor(ids)[:, None]
    hand = (_logps(a, p, ids)[1].gather(1, y).sum() - _logps(b, p, ids)[1].gather(1, y).sum()).item()
    assert t.score == pytest.approx(hand, abs=1e-3)


def test_value_model_end_scores_and_round_trip(models, tmp_path):
    base, tok, _, _, value = models
    fresh = make_value_model(base)
    ids = torch.tensor([encode_prompts(tok, ["the cat sat on the mat"])[0]])
    assert end_scores(fresh, ids, torch.ones_like(ids)).item() == 0.0  # zero head: untrained guidance is a no-op
    assert fresh.get_output_embeddings().weight.data_ptr() != fresh.get_input_embeddings().weight.data_ptr()
    # right padding: the end score is read at the last real token
    padded = torch.cat([ids, torch.zeros((1, 3), dtype=torch.long)], 1)
    mask = torch.cat([torch.ones_like(ids), torch.zeros((1, 3), dtype=torch.long)], 1)
    assert end_scores(value, padded, mask).item() == pytest.approx(end_scores(value, ids, torch.ones_like(ids)).item(),
                                                                   abs=1e-5)
    q = value(ids).logits[0]
    assert token_values(value, ids, torch.ones_like(ids))[0, -1].item() == pytest.approx(q[-2, ids[0, -1]].item(), abs=1e-5)
    value.save_pretrained(tmp_path / "v")
    tok.save_pretrained(tmp_path / "v")
    loaded, _ = load_value_model(tmp_path / "v")
    assert end_scores(loaded, ids, torch.ones_like(ids)).item() == pytest.approx(
        end_scores(value, ids, torch.ones_like(ids)).item(), abs=1e-5)
    base.save_pretrained(tmp_path / "lm")
    with pytest.raises(ValueError, match="not a value model"):
        load_value_model(tmp_path / "lm")


def test_reward_scorer_best_of_n(models):
    base, tok, *_ = models

    def length_reward(prompts, completions, **kw):
        return [float(len(c)) for c in completions]

    n = 4
    plain = generate(base, tok, PROMPTS, FixedTemperature(1.0), _params(num_samples=n))
    guided = guided_generate(base, tok, PROMPTS, scorer=RewardScorer([length_reward]), width=1, candidates=n,
                             params=_params())
    for i, ranked in enumerate(guided):
        assert ranked[0].score == max(len(t.text) for t in plain[i * n:(i + 1) * n])


def test_best_of_sampled_ranks_as_the_engines_best_of_n(models):
    """use_vllm's best-of-N: candidates sampled elsewhere (here the engine's own plain samples, the ones its
    best-of-N draws) ranked by ``best_of_sampled`` give the engine's ranking and scores, in batches of whole groups."""
    from lpo_train.guidance.search import best_of_sampled

    base, tok, tuned, untuned, _ = models
    n = 4
    plain = generate(base, tok, PROMPTS, FixedTemperature(1.0), _params(num_samples=n))
    for scorer in (ImplicitScorer(tuned, untuned), RewardScorer([lambda prompts, completions, **kw:
                                                                 [float(len(c)) for c in completions]])):
        engine = guided_generate(base, tok, PROMPTS, scorer=scorer, width=1, candidates=n, params=_params())
        ours = best_of_sampled(plain, scorer, tok, PROMPTS, n, replace(_params(), batch_size=n + 1))
        assert [[t.token_ids for t in g] for g in ours] == [[t.token_ids for t in g] for g in engine]
        assert [t.score for g in ours for t in g] == pytest.approx([t.score for g in engine for t in g], abs=1e-4)


def test_search_needs_a_scorer_and_counts_compute(models):
    base, tok, *_ = models
    with pytest.raises(ValueError, match="needs a chunk scorer"):
        guided_generate(base, tok, PROMPTS, width=2, candidates=2, chunk_length=3, params=_params())
    stats = {}
    traces = generate(base, tok, PROMPTS, FixedTemperature(1.0), SamplingParams(max_new_tokens=6, ignore_eos=True),
                      stats=stats)
    prompt_tokens = sum(len(t.prompt_ids) for t in traces)
    assert stats["forward_tokens"] == prompt_tokens + 5 * len(PROMPTS)  # the last token is never fed back


def test_args_picks_the_best_rescored_top_k_token(models):
    """ARGS-greedy: each token is the argmax over the base top-k of log p_base(v) + w * r(prefix + v),
    recomputed here from scratch; with w = 0 it is greedy decoding."""
    from lpo_train.guidance import ARGS

    base, tok, *_ = models

    def vowels(prompts, completions, **kw):
        return [float(sum(ch in "aeiou" for ch in c)) for c in completions]

    greedy = generate(base, tok, PROMPTS, FixedTemperature(0.0), _params(8))
    plain = generate(base, tok, PROMPTS, ARGS([vowels], weight=0.0, k=5), _params(8))
    assert [t.token_ids for t in plain] == [t.token_ids for t in greedy]
    w, k = 0.7, 5
    traces = generate(base, tok, PROMPTS, ARGS([vowels], weight=w, k=k), _params(8))
    assert [t.token_ids for t in traces] != [t.token_ids for t in greedy]
    for t in traces:
        _, logp = _logps(base, t.prompt_ids, t.token_ids)
        for step, chosen in enumerate(t.token_ids):
            top = logp[step].topk(k)
            score = [top.values[j].item() + w * vowels(None, [tok.decode(t.token_ids[:step] + [v],
                                                                         skip_special_tokens=True)])[0]
                     for j, v in enumerate(top.indices.tolist())]
            assert chosen == top.indices[max(range(k), key=lambda j: score[j])].item()


class _PreferFinished(ChunkScorer):
    """Scores finished responses (ending in EOS) far above growing ones."""

    def bind(self, tokenizer, prompts, rows=None):
        self.eos = tokenizer.eos_token_id

    def score(self, tokens, lengths):
        return torch.tensor([100.0 - lengths[r].item() if tokens[r, lengths[r] - 1].item() == self.eos else 0.0
                             for r in range(len(lengths))])


def test_search_stops_when_every_survivor_has_finished(models):
    """Finished hypotheses stay in the pool; when they are all that survives, the search ends there."""
    base, tok, *_ = models
    eos = tok.eos_token_id

    class EndEarly(FixedTemperature):  # EOS gets a large logit from step 3 on, for some rows only
        def step(self, inp):
            out = super().step(inp)
            logits = inp.logits.clone()
            if inp.step >= 3:
                logits[inp.row_seeds % 3 == 0, eos] += 30.0
            out.logits = logits
            return out

    ranked = guided_generate(base, tok, PROMPTS, rule=EndEarly(1.0), scorer=_PreferFinished(), width=2, candidates=4,
                             chunk_length=5, params=_params(40))
    for r in ranked:
        if r[0].finish_reason == "eos":
            assert r[0].score == 100.0 - len(r[0].token_ids) and r[0].token_ids[-1] == eos
            assert all(len(t.token_ids) <= 10 for t in r)  # nothing decoded past the boundary that kept them
    assert any(r[0].finish_reason == "eos" for r in ranked)


def test_eft_with_cbs_implicit_shares_the_token_level_streams(models):
    # implicit guidance at both levels: the chunk scores read the log-probs the rule's streams already
    # computed, and equal a scorer that runs the tuned and untuned models itself
    base, tok, tuned, untuned, _ = models
    results = []
    for shared in (False, True):
        rule = ImplicitGuidance(tuned, untuned, beta=0.5, temperature=1.0)
        scorer = (ImplicitScorer.from_guidance(rule, beta=1.0) if shared
                  else ImplicitScorer(tuned, untuned, beta=1.0))
        stats = {}
        ranked = guided_generate(base, tok, PROMPTS, rule=rule, scorer=scorer, width=2, candidates=3,
                                 chunk_length=4, params=_params(12), stats=stats)
        results.append(ranked)
    for separate, shared in zip(*results):
        assert [t.token_ids for t in separate] == [t.token_ids for t in shared]
        assert torch.allclose(torch.tensor([t.score for t in separate]), torch.tensor([t.score for t in shared]),
                              atol=1e-4)
    # and the shared scores are the hand computation on the final responses
    best = results[1][0][0]
    assert best.score == pytest.approx(_hand_implicit(tuned, untuned, best), abs=1e-4)
