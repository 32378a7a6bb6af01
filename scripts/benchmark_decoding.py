"""Benchmark the decoding engine's rules against each other and against HF ``generate``.

Not a test. All methods run in one process on the same model, prompts, batch and length (EOS
ignored), after a warm-up, interleaved round-robin for ``--repeats`` rounds; the median time is
reported and ratios are printed side by side. Peak memory beyond the loaded model is measured
per method in a fresh subprocess (CPU: peak RSS over RSS before the call; CUDA: max allocated).

    python scripts/benchmark_decoding.py --model toy --batch 32 --new-tokens 64
    python scripts/benchmark_decoding.py --model smollm2 --batch 16 --new-tokens 64
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

METHODS = ["hf_generate", "fixed_T", "ad_token", "ad_sequence", "edt", "kld"]


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
    from lpo_train.decoding.engine import encode_prompts, left_pad

    model, tok = _load(args.model, args.device)
    prompts = _prompts(args.batch)
    params = SamplingParams(max_new_tokens=args.new_tokens, batch_size=args.batch, ignore_eos=True, seed=0)
    input_ids, mask = left_pad(encode_prompts(tok, prompts), tok.pad_token_id, args.device)

    def hf_generate():
        with torch.no_grad():
            model.generate(input_ids=input_ids, attention_mask=mask, do_sample=True, temperature=1.0,
                           top_k=0, top_p=1.0, max_new_tokens=args.new_tokens,
                           min_new_tokens=args.new_tokens, pad_token_id=tok.pad_token_id)

    rules = {
        "fixed_T": lambda: FixedTemperature(1.0),
        "ad_token": lambda: AdaptiveDecoderRule(AdaptiveDecoderHead.for_model(model, level="token"), "sample"),
        "ad_sequence": lambda: AdaptiveDecoderRule(AdaptiveDecoderHead.for_model(model, level="sequence"), "sample"),
        "edt": lambda: EDT(T0=1.0, theta=1.0),
        # the evidence-free prompt drops the story topic
        "kld": lambda: KLD([p.split(" about ")[0] + "." for p in prompts], T0=1.0, sigma=1.0),
    }
    calls = {"hf_generate": hf_generate}
    for name, make in rules.items():
        rule = make()
        calls[name] = lambda rule=rule: generate(model, tok, prompts, rule, params)
    return {m: calls[m] for m in args.methods}


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_all(args) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds per method and the spread (max - min) / median, methods interleaved
    round-robin so drift hits all alike."""
    calls = build_calls(args)
    for call in calls.values():  # warm-up
        call()
    times = {m: [] for m in calls}
    for _ in range(args.repeats):
        for m, call in calls.items():
            _sync(args.device)
            start = time.perf_counter()
            call()
            _sync(args.device)
            times[m].append(time.perf_counter() - start)
    return ({m: statistics.median(t) for m, t in times.items()},
            {m: (max(t) - min(t)) / statistics.median(t) for m, t in times.items()})


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
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--only", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        print(json.dumps({"peak_mib": peak_memory_mib(args.only, args)}))
        return
    seconds, spread = time_all(args)
    peaks = {}
    for method in args.methods:  # each method's peak memory in its own process
        cmd = [sys.executable, __file__, "--only", method, "--model", args.model, "--device", args.device,
               "--batch", str(args.batch), "--new-tokens", str(args.new_tokens)]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if out.returncode:
            raise SystemExit(f"{method} failed:\n{out.stderr[-2000:]}")
        peaks[method] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]
    tps = {m: args.batch * args.new_tokens / s for m, s in seconds.items()}
    kind = "extra CUDA allocated" if args.device.startswith("cuda") else "extra peak RSS"
    print(f"model={args.model} device={args.device} batch={args.batch} new_tokens={args.new_tokens} "
          f"repeats={args.repeats} (median, interleaved)")
    print(f"| method | tokens/s | run-to-run spread | x engine fixed-T | x HF generate | MiB ({kind}) |")
    print("|---|---|---|---|---|---|")
    for m in args.methods:
        vs_fixed = f"{tps[m] / tps['fixed_T']:.3f}" if "fixed_T" in tps else "-"
        vs_hf = f"{tps[m] / tps['hf_generate']:.3f}" if "hf_generate" in tps else "-"
        print(f"| {m} | {tps[m]:.0f} | {spread[m]:.0%} | {vs_fixed} | {vs_hf} | {peaks[m]:.0f} |")


if __name__ == "__main__":
    main()
