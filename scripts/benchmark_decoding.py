"""Benchmark the decoding engine's rules against each other and against HF ``generate``.

Not a test. All methods run in one process on the same model, prompts, batch and length (EOS
ignored), after a warm-up, interleaved round-robin for ``--repeats`` rounds; the median time is
reported and ratios are printed side by side. Peak memory beyond the loaded model is measured
per method in a fresh subprocess (CPU: peak RSS over RSS before the call; CUDA: max allocated).

    python scripts/benchmark_decoding.py --model toy --batch 32 --new-tokens 64
    python scripts/benchmark_decoding.py --model smollm2 --batch 16 --new-tokens 64
    python scripts/benchmark_decoding.py --model smollm2 --batch 32 --new-tokens 128 --eos --split \
        --methods hf_generate fixed_T fixed_T_dynamic_cache
    python scripts/benchmark_decoding.py --model smollm2 --batch 64 --new-tokens 128 --eos \
        --methods hf_generate fixed_T vllm_fixed_T ad_sequence vllm_ad_sequence     # use_vllm (needs vLLM)

``--lengths 64 128 256`` prints tokens/s per method at each length instead (is the cost per token flat?):

    python scripts/benchmark_decoding.py --model smollm2 --batch 32 --lengths 64 128 256 --methods hf_generate fixed_T ad_token

``--eos`` keeps EOS active (engine and HF stop rows at EOS; tokens/s counts the tokens generated).
``--split`` adds, per engine method, the share of the call spent in the model's forward passes (body
and LM head, timed around the engine's one forward call) and in everything else (the engine's own
work: sampling, rules, bookkeeping).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

METHODS = ["hf_generate", "fixed_T", "fixed_T_dynamic_cache", "fixed_T_compiled", "ad_token", "ad_sequence", "edt",
           "kld"]
VLLM_METHODS = ["vllm_fixed_T", "vllm_ad_sequence"]  # use_vllm (opt-in: they need vLLM; one in-process engine)


@functools.lru_cache(maxsize=None)  # loaded once per process (--lengths builds its calls once per length)
def _load(name: str, device: str):
    if name == "toy":
        from lpo_train.tasks.toy_lm import load_toy_lm

        model, tok = load_toy_lm("small", 0)
    elif name == "smollm2":
        from lpo_train.models import load_smollm2

        model, tok = load_smollm2()
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model, tok = AutoModelForCausalLM.from_pretrained(name).eval(), AutoTokenizer.from_pretrained(name)
    return model.to(device), tok


def _prompts(n: int) -> list[str]:
    topics = ["the cat", "the river", "a king", "the market", "a storm", "the forest", "a song", "the sea"]
    return [f"Tell a story about {topics[i % len(topics)]}." for i in range(n)]


def build_calls(args) -> dict:
    """One zero-argument callable per method, all on the same model, prompts and length."""
    import torch

    from lpo_train import AdaptiveDecoderHead
    from lpo_train.decoding import EDT, KLD, AdaptiveDecoderRule, FixedTemperature, SamplingParams, generate
    from lpo_train.decoding.engine import _eos_ids, encode_prompts
    from lpo_train.decoding.stream import left_pad

    model, tok = _load(args.model, args.device)
    prompts = _prompts(args.batch)
    params = SamplingParams(max_new_tokens=args.new_tokens, batch_size=args.batch, ignore_eos=not args.eos, seed=0)
    input_ids, mask = left_pad(encode_prompts(tok, prompts), tok.pad_token_id, args.device)

    def hf_generate():
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=True, temperature=1.0,
                                 top_k=0, top_p=1.0, max_new_tokens=args.new_tokens,
                                 min_new_tokens=None if args.eos else args.new_tokens, pad_token_id=tok.pad_token_id)
        new = out[:, input_ids.shape[1]:]
        eos = torch.tensor(sorted(_eos_ids(model, tok)), device=new.device)
        ended = torch.isin(new, eos)  # tokens up to and including each row's first EOS
        return int(((ended.cumsum(-1) - ended.long()) == 0).sum()) if args.eos else new.numel()

    rules = {
        "fixed_T": lambda: FixedTemperature(1.0),
        "ad_token": lambda: AdaptiveDecoderRule(AdaptiveDecoderHead.for_model(model, level="token"), "sample"),
        "ad_sequence": lambda: AdaptiveDecoderRule(AdaptiveDecoderHead.for_model(model, level="sequence"), "sample"),
        "edt": lambda: EDT(T0=1.0, theta=1.0),
        # the evidence-free prompt drops the story topic
        "kld": lambda: KLD([p.split(" about ")[0] + "." for p in prompts], T0=1.0, sigma=1.0),
    }
    rules["fixed_T_dynamic_cache"] = rules["fixed_T_compiled"] = rules["fixed_T"]
    calls = {"hf_generate": hf_generate}
    if any(m in VLLM_METHODS for m in args.methods):  # the same rule, prompts and params, sampled by vLLM
        from lpo_train.config import DecodingArguments
        from lpo_train.decoding import vllm as backend

        llm = backend.vllm_engine(backend.model_folder(model), DecodingArguments(use_vllm=True))
        for name in VLLM_METHODS:
            rule = rules[name.removeprefix("vllm_")]()
            calls[name] = lambda rule=rule: sum(len(t.token_ids) for t in
                                                backend.vllm_generate(llm, model, tok, prompts, rule, params))
    for name, make in rules.items():
        if name not in args.methods:
            continue
        rule = make()
        p = (replace(params, cache_implementation="dynamic") if name.endswith("dynamic_cache") else
             replace(params, compile_decode_step=True) if name.endswith("compiled") else params)
        calls[name] = lambda rule=rule, p=p: sum(len(t.token_ids) for t in generate(model, tok, prompts, rule, p))
    return {m: calls[m] for m in args.methods}


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_all(args) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Median tokens/s per method, the spread (max - min) / median of its times, and (``--split``) the
    median share of each engine call spent in the model's forward passes; methods interleaved
    round-robin so drift hits all alike."""
    from lpo_train.decoding import stream

    calls = build_calls(args)
    for call in calls.values():  # warm-up
        call()
    forward = {"seconds": 0.0}
    real_forward = stream.Stream._forward

    def timed_forward(self, *a, **k):
        _sync(args.device)
        start = time.perf_counter()
        out = real_forward(self, *a, **k)
        _sync(args.device)
        forward["seconds"] += time.perf_counter() - start
        return out

    if args.split:
        stream.Stream._forward = timed_forward
    times, rates, shares = ({m: [] for m in calls} for _ in range(3))
    for _ in range(args.repeats):
        for m, call in calls.items():
            _sync(args.device)
            forward["seconds"] = 0.0
            start = time.perf_counter()
            tokens = call()
            _sync(args.device)
            times[m].append(time.perf_counter() - start)
            rates[m].append(tokens / times[m][-1])
            shares[m].append(forward["seconds"] / times[m][-1])
    stream.Stream._forward = real_forward
    return ({m: statistics.median(r) for m, r in rates.items()},
            {m: (max(t) - min(t)) / statistics.median(t) for m, t in times.items()},
            {m: statistics.median(s) for m, s in shares.items() if m != "hf_generate" and args.split})


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_mib(method: str, args) -> float:
    """Extra memory one call needs beyond the loaded model, in a fresh process: CUDA max
    allocated minus allocated before; on CPU (Linux) the peak RSS (VmHWM, reset through
    /proc/self/clear_refs) minus the RSS before the call."""
    import torch

    args.methods = [method]
    call = build_calls(args)[method]
    call()  # warm-up: lazy allocations and caches
    if args.device.startswith("cuda"):
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        call()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter
    before = _status_kib("VmRSS")
    call()
    return (_status_kib("VmHWM") - before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy", help="toy | smollm2 | a local model path")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS + VLLM_METHODS)
    parser.add_argument("--eos", action="store_true", help="keep EOS active (default: decode every token)")
    parser.add_argument("--split", action="store_true", help="time the model's forward passes inside engine calls")
    parser.add_argument("--lengths", type=int, nargs="+",
                        help="tokens/s of every method at each of these lengths (one process; no memory figures)")
    parser.add_argument("--only", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        print(json.dumps({"peak_mib": peak_memory_mib(args.only, args)}))
        return
    if args.lengths:
        return by_length(args)
    tps, spread, shares = time_all(args)
    peaks = {}
    for method in args.methods:  # each method's peak memory in its own process
        cmd = [sys.executable, __file__, "--only", method, "--model", args.model, "--device", args.device,
               "--batch", str(args.batch), "--new-tokens", str(args.new_tokens)] + ["--eos"] * args.eos
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if out.returncode:
            raise SystemExit(f"{method} failed:\n{out.stderr[-2000:]}")
        peaks[method] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]
    kind = "extra CUDA allocated" if args.device.startswith("cuda") else "extra peak RSS"
    print(f"model={args.model} device={args.device} batch={args.batch} new_tokens={args.new_tokens} "
          f"eos={'active' if args.eos else 'ignored'} repeats={args.repeats} (median, interleaved)")
    print(f"| method | tokens/s | run-to-run spread | x engine fixed-T | x HF generate | MiB ({kind}) |")
    print("|---|---|---|---|---|---|")
    for m in args.methods:
        vs_fixed = f"{tps[m] / tps['fixed_T']:.3f}" if "fixed_T" in tps else "-"
        vs_hf = f"{tps[m] / tps['hf_generate']:.3f}" if "hf_generate" in tps else "-"
        print(f"| {m} | {tps[m]:.0f} | {spread[m]:.0%} | {vs_fixed} | {vs_hf} | {peaks[m]:.0f} |")
    if shares:
        print("\n| method | model forward | everything else (engine) |\n|---|---|---|")
        for m, share in shares.items():
            print(f"| {m} | {share:.1%} | {1 - share:.1%} |")


def by_length(args) -> None:
    """Tokens/s per method as the length grows (methods interleaved at each length; each length builds its calls
    afresh: the same loaded model and prompts, a fresh head): a flat row means a flat cost per token."""
    if args.split:
        raise SystemExit("--lengths prints tokens/s only; run --split at one --new-tokens.")
    args.lengths = sorted(args.lengths)
    tps = {}
    for n in args.lengths:
        args.new_tokens = n
        tps[n] = time_all(args)[0]
    print(f"model={args.model} device={args.device} batch={args.batch} eos={'active' if args.eos else 'ignored'} "
          f"repeats={args.repeats} (median tokens/s, methods interleaved at each length)")
    print("| method | " + " | ".join(f"{n} tokens" for n in args.lengths) + f" | {args.lengths[-1]} / {args.lengths[0]} |")
    print("|---|" + "---|" * (len(args.lengths) + 1))
    for m in args.methods:
        row = " | ".join(f"{tps[n][m]:.0f}" for n in args.lengths)
        print(f"| {m} | {row} | {tps[args.lengths[-1]][m] / tps[args.lengths[0]][m]:.2f} |")


if __name__ == "__main__":
    main()
