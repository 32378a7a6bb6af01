"""The engine's fast paths equal the plain ones: the preallocated KV cache vs transformers' DynamicCache,
the two-level inverse CDF vs a full float64 cumulative sum, the greedy argmax vs the one-hot draw,
incremental stop strings vs decoding every row at every step, and at most one device-to-host copy per
step."""

import pytest
import torch

from lpo_train import AdaptiveDecoderConfig, AdaptiveDecoderHead
from lpo_train.decoding import EDT, KLD, AdaptiveDecoderRule, FixedTemperature, SamplingParams, generate
from lpo_train.decoding.randomness import row_uniforms
from lpo_train.decoding.sampling import sample_from

PROMPTS = ["What is 2 + 3?", "Tell a story about the cat.", "What is 7 + 5?", "Tell a story about a king."]


def _head(model, level, seed=0):
    head = AdaptiveDecoderHead(AdaptiveDecoderConfig(hidden_size=model.config.hidden_size, grid=[0.0, 0.6, 1.2],
                                                     level=level, input_norm="layernorm"))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return head


def _same(a, b):
    for x, y in zip(a, b, strict=True):
        assert x.token_ids == y.token_ids and x.finish_reason == y.finish_reason and x.choices == y.choices
        assert x.values == pytest.approx(y.values, abs=1e-6)
        assert (x.entropies is None) == (y.entropies is None)
        if x.entropies is not None:
            assert x.entropies == pytest.approx(y.entropies, abs=1e-5)
        for name in ("hidden", "choice_logps"):
            if getattr(x, name) is not None:
                assert torch.allclose(getattr(x, name), getattr(y, name), atol=1e-5), name
        assert (x.score is None) == (y.score is None) and (x.score is None or x.score == pytest.approx(y.score, abs=1e-5))


def _rules(model):
    return {
        "greedy": FixedTemperature(0.0),
        "sampled": FixedTemperature(1.0),
        "ad_token": AdaptiveDecoderRule(_head(model, "token"), "sample", model=model),
        "ad_sequence": AdaptiveDecoderRule(_head(model, "sequence"), "sample", model=model, exploration="stratified"),
        "edt": EDT(T0=1.0, theta=1.0),
        "kld": KLD([p.split(" about ")[0] + "." for p in PROMPTS], T0=1.0, sigma=1.0),
    }


@pytest.mark.parametrize("rule_name", ["greedy", "sampled", "ad_token", "ad_sequence", "edt", "kld"])
def test_preallocated_cache_equals_dynamic_cache(toy_small, rule_name):
    """Rows finish at different steps (short sums, long stories), so compaction runs mid-batch."""
    model, tok = toy_small
    out = {}
    for impl in ("preallocated", "dynamic"):
        params = SamplingParams(max_new_tokens=40, num_samples=2, seed=3, trace_hidden=True, trace_choice_logps=True,
                                trace_entropy=True, cache_implementation=impl)
        out[impl] = generate(model, tok, PROMPTS, _rules(model)[rule_name], params)
    assert len({t.finish_reason for t in out["dynamic"]} | {len(t.token_ids) for t in out["dynamic"]}) > 2
    _same(out["preallocated"], out["dynamic"])


def test_preallocated_cache_equals_dynamic_cache_under_beam_reordering(tiny_lm):
    from lpo_train.guidance import ExplicitScorer, ImplicitGuidance, guided_generate, make_value_model
    from lpo_train.models import build_tiny_lm

    base, tok = tiny_lm
    tuned, untuned = (build_tiny_lm(tok, hidden_size=32, num_layers=2, num_heads=4, seed=s).eval() for s in (1, 2))
    value = make_value_model(build_tiny_lm(tok, hidden_size=32, num_layers=2, num_heads=4, seed=3)).eval()
    prompts = ["the cat sat", "a dog ran far away from home", "hello"]
    out = {}
    for impl in ("preallocated", "dynamic"):
        ranked = guided_generate(base, tok, prompts, rule=ImplicitGuidance(tuned, untuned, beta=0.7),
                                 scorer=ExplicitScorer(value), width=2, candidates=2, chunk_length=3,
                                 params=SamplingParams(max_new_tokens=10, prompt_seeds=[1, 2, 3],
                                                       cache_implementation=impl))
        out[impl] = [t for r in ranked for t in r]
    _same(out["preallocated"], out["dynamic"])


def test_two_level_sampling_equals_a_full_float64_cumsum():
    gen = torch.Generator().manual_seed(0)
    for vocab in (49152, 5000 + 13, 300):  # a multiple of the block, a padded tail, the one-level path
        for trial in range(12):
            logits = torch.randn(64, vocab, generator=gen) * (0.5 + trial)
            if trial % 3 == 0:  # most of the vocabulary truncated away
                logits[:, torch.randperm(vocab, generator=gen)[:int(vocab * 0.9)]] = float("-inf")
            probs = torch.softmax(logits, -1)
            u = row_uniforms(torch.arange(64) + 1000 * trial, step=trial)
            cdf = probs.double().cumsum(-1)
            reference = (cdf <= u[:, None] * cdf[:, -1:]).sum(-1).clamp(max=vocab - 1)
            drawn = sample_from(probs, u)
            assert torch.equal(drawn, reference)
            assert (probs.gather(1, drawn[:, None]) > 0).all()
    # the edges of [0, 1): the first and the last entry with mass
    probs = torch.zeros(2, 49152)
    probs[:, 7], probs[:, 40000] = 0.5, 0.5
    assert sample_from(probs, torch.tensor([0.0, 1 - 2 ** -53], dtype=torch.float64)).tolist() == [7, 40000]


def test_greedy_argmax_equals_the_one_hot_draw(tiny_lm):
    class OneHotGreedy(FixedTemperature):
        greedy = False  # forces the full warp + draw path

    model, tok = tiny_lm
    assert FixedTemperature(0.0).greedy and not FixedTemperature(0.5).greedy
    for trunc in ({}, {"top_k": 5, "top_p": 0.9}):
        params = SamplingParams(max_new_tokens=12, num_samples=2, **trunc)
        fast = generate(model, tok, ["hello there", "the cat"], FixedTemperature(0.0), params)
        slow = generate(model, tok, ["hello there", "the cat"], OneHotGreedy(0.0), params)
        assert [t.token_ids for t in fast] == [t.token_ids for t in slow]


def _first_stop(tokenizer, tokens, strings):
    """The reference: the first step whose whole decoded text so far holds a stop string."""
    for step in range(len(tokens)):
        if any(s in tokenizer.decode(tokens[:step + 1]) for s in strings):
            return step + 1
    return None


@pytest.mark.parametrize("strings", [("forest",), ("cat", "king"), (". ",), ("The answer",)])
def test_incremental_stop_strings_equal_the_full_check(toy_small, strings):
    model, tok = toy_small
    params = dict(max_new_tokens=40, num_samples=3, seed=5)
    free = generate(model, tok, PROMPTS, FixedTemperature(1.0), SamplingParams(ignore_eos=True, **params))
    stopped = generate(model, tok, PROMPTS, FixedTemperature(1.0),
                       SamplingParams(ignore_eos=True, stop_strings=strings, **params))
    hits = 0
    for f, s in zip(free, stopped):
        end = _first_stop(tok, f.token_ids, strings)
        assert s.token_ids == f.token_ids[:end or len(f.token_ids)]
        assert s.finish_reason == ("stop" if end else "length")
        hits += end is not None
    assert hits > 0


def test_at_most_one_device_to_host_copy_per_step(toy_small, monkeypatch):
    """Counted on the CPU as they would happen on an accelerator: the step's one copy goes through
    ``engine.to_host`` (its result and everything computed from it are host tensors, marked here by a
    subclass), and lpo-train code makes no other Tensor.cpu / tolist / item / bool / int / float call
    while decoding. ``sampling._any`` takes its accelerator branch (no asking, torch.where instead)."""
    import sys

    from lpo_train.decoding import engine, sampling

    class Host(torch.Tensor):
        pass

    calls = {"copies": 0, "other": [], "counting": False}

    def to_host(t):
        calls["copies"] += 1
        return t.cpu().as_subclass(Host)

    monkeypatch.setattr(engine, "to_host", to_host)
    monkeypatch.setattr(sampling, "_any", lambda mask: True)
    for name in ("cpu", "tolist", "item", "__bool__", "__int__", "__float__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, _name=name, **k):
            caller = sys._getframe(1).f_code.co_filename
            if calls["counting"] and not isinstance(self, Host) and "lpo_train" in caller:
                calls["other"].append(f"{_name} at {caller}:{sys._getframe(1).f_lineno}")
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    real_traces, real_decode = engine.RowRecord.traces, engine._decode_batch

    def traces(self, *a, **k):  # building the traces at the end copies each buffer once
        calls["counting"] = False
        return real_traces(self, *a, **k)

    def decode(*a, **k):
        calls["counting"] = True
        return real_decode(*a, **k)

    monkeypatch.setattr(engine.RowRecord, "traces", traces)
    monkeypatch.setattr(engine, "_decode_batch", decode)
    model, tok = toy_small
    for rule in (FixedTemperature(1.0), FixedTemperature(0.0), EDT(T0=1.0, theta=1.0),
                 AdaptiveDecoderRule(_head(model, "token"), "sample", model=model)):
        calls.update(copies=0, other=[])
        out = generate(model, tok, PROMPTS, rule, SamplingParams(max_new_tokens=30, num_samples=2, seed=1))
        assert any(t.finish_reason == "eos" for t in out)
        assert calls["copies"] <= max(len(t.token_ids) for t in out) and calls["other"] == [], (rule.name, calls)


@pytest.mark.slow
def test_preallocated_cache_equals_dynamic_cache_on_smollm2():
    """The real model (GQA, 30 layers): sampled, a token-level head and EDT, rows finishing at EOS."""
    from lpo_train.models import load_smollm2

    model, tok = load_smollm2()
    prompts = ["What is the capital of France? One word.", "Write a sentence about the sea."]
    rules = {"sampled": FixedTemperature(0.7), "edt": EDT(T0=0.7, theta=1.0),
             "ad_token": AdaptiveDecoderRule(_head(model, "token"), "sample", model=model)}
    for name, rule in rules.items():
        out = {impl: generate(model, tok, prompts, rule, SamplingParams(
            max_new_tokens=12, num_samples=2, seed=0, trace_choice_logps=name == "ad_token", trace_entropy=True,
            cache_implementation=impl)) for impl in ("preallocated", "dynamic")}
        _same(out["preallocated"], out["dynamic"])
    assert any(t.finish_reason == "eos" for t in out["dynamic"])


@pytest.mark.slow
def test_compiled_decode_step_equals_the_eager_step(toy_small):
    """torch.compile (inductor, CPU) of the one-token decode forward, rows leaving the batch mid-way."""
    model, tok = toy_small
    for rule in (FixedTemperature(0.0), AdaptiveDecoderRule(_head(model, "token"), "sample", model=model)):
        out = {c: generate(model, tok, PROMPTS, rule, SamplingParams(
            max_new_tokens=24, num_samples=2, seed=4, trace_hidden=True, compile_decode_step=c)) for c in (False, True)}
        assert len({len(t.token_ids) for t in out[False]}) > 1  # rows finished at different steps
        _same(out[True], out[False])
    from lpo_train.decoding.stream import _COMPILED

    assert model.get_decoder() in _COMPILED  # the compiled step really ran


@pytest.mark.slow
def test_stop_strings_split_into_more_tokens_than_their_own_encoding():
    """SmolLM2's tokenizer: "\\n\\n" generated as two "\\n" tokens, "###" as "##" + "#", "cat." as " ca" "t" "."."""
    from transformers import AutoTokenizer

    from lpo_train.decoding.stops import StopStrings
    from lpo_train.models.loading import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path("smollm2"))
    for stop, pieces in (("\n\n", ["\n", "\n"]), ("###", ["##", "#"]), ("cat.", [" ca", "t", "."])):
        ids = [tok.convert_tokens_to_ids(tok.tokenize("Hello"))[0]]
        ids += [tok(p, add_special_tokens=False)["input_ids"][0] for p in pieces]
        assert len(ids) - 1 > len(tok(stop, add_special_tokens=False)["input_ids"]) or stop == "\n\n"
        assert stop in tok.decode(ids)
        checker = StopStrings(tok, (stop,), len(tok), "cpu")
        tokens = torch.tensor([ids])
        assert bool(checker.may_end(tokens[:, -1])[0])
        assert checker.hits(tokens, torch.tensor([0]), len(ids) - 1).tolist() == [True], stop
