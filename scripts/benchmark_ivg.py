"""Benchmark guided decoding (EFT, CBS, IVG) against base sampling, batching across prompts
against the official code's one-prompt-at-a-time loop, and incremental against full-rescan
chunk scoring. Not a test: ratios are measured side by side in one process.

    python scripts/benchmark_ivg.py --base toy:base --guide toy:small
    python scripts/benchmark_ivg.py --base smollm2 --guide smollm2 --prompts 16 --new-tokens 32
    python scripts/benchmark_ivg.py --base smollm2 --guide smollm2 --prompts 8 --new-tokens 32 --parts peft

``--parts peft``: EFT with the implicit value from one set of weights (a LoRA over the guide: tuned =
adapter on, untuned = adapter off) against two models (the merged adapter as a full tuned copy + the
guide), same outputs; guidance weights held in memory (distinct parameter storages) and speed.

Guidance models only need the base vocabulary: the value model's head is random (cost only).
Times are medians over ``--repeats`` interleaved rounds after a warm-up; EOS is ignored so
every method decodes the same number of tokens. CPU peak memory: peak RSS of one call minus
the RSS before it (VmHWM reset through /proc/self/clear_refs); CUDA: max allocated.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_decoding import _prompts, _status_kib, _sync  # noqa: E402


def _peak_mib(call, device: str) -> float:
    import torch

    if device.startswith("cuda"):
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        call()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    call()
    return (_status_kib("VmHWM") - before) / 1024


def _timed(calls: dict, repeats: int, device: str) -> dict[str, float]:
    for call in calls.values():
        call()  # warm-up
    times = {m: [] for m in calls}
    for _ in range(repeats):
        for m, call in calls.items():
            _sync(device)
            start = time.perf_counter()
            call()
            _sync(device)
            times[m].append(time.perf_counter() - start)
    return {m: statistics.median(t) for m, t in times.items()}


def main() -> None:
    import torch

    from lpo_train.decoding import FixedTemperature, SamplingParams
    from lpo_train.guidance import ExplicitScorer, ImplicitGuidance, ImplicitScorer, guided_generate, make_value_model
    from lpo_train.models.loading import load_causal_lm

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="toy:base")
    parser.add_argument("--guide", default="toy:small", help="tuned = untuned = value backbone (cost only)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--wkl", type=int, nargs=3, default=[4, 4, 5], metavar=("W", "K", "L"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rescan-lengths", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--parts", nargs="+", default=["methods", "batching", "rescan", "peft"],
                        choices=["methods", "batching", "rescan", "peft"])
    args = parser.parse_args()
    torch.manual_seed(0)
    base, tok = load_causal_lm(args.base)
    guide, _ = load_causal_lm(args.guide)
    base, guide = base.to(args.device), guide.to(args.device)
    value = make_value_model(guide).eval().requires_grad_(False)
    torch.nn.init.normal_(value.get_output_embeddings().weight, std=0.02)
    prompts = _prompts(args.prompts)
    w, k, chunk = args.wkl
    params = SamplingParams(max_new_tokens=args.new_tokens, ignore_eos=True, prompt_seeds=list(range(len(prompts))),
                            batch_size=4096)
    eft = ImplicitGuidance(guide, guide, beta=1.0, temperature=0.7)
    setups = {
        "base sampling": dict(rule=FixedTemperature(0.7)),
        "EFT (implicit token)": dict(rule=eft),
        f"CBS-implicit ({w},{k},{chunk})": dict(rule=FixedTemperature(0.7), scorer=ImplicitScorer(guide, guide),
                                                width=w, candidates=k, chunk_length=chunk),
        f"CBS-explicit ({w},{k},{chunk})": dict(rule=FixedTemperature(0.7), scorer=ExplicitScorer(value),
                                                width=w, candidates=k, chunk_length=chunk),
        f"IVG ({w},{k},{chunk})": dict(rule=eft, scorer=ExplicitScorer(value), width=w, candidates=k,
                                       chunk_length=chunk),
    }

    def call(setup, ps=prompts, p=params):
        return lambda: guided_generate(base, tok, ps, params=p, **setup)

    print(f"base={args.base} guide={args.guide} device={args.device} prompts={len(prompts)} "
          f"new_tokens={args.new_tokens} repeats={args.repeats} torch threads={torch.get_num_threads()}")
    if "methods" in args.parts:
        seconds = _timed({m: call(s) for m, s in setups.items()}, args.repeats, args.device)
        ref = seconds["base sampling"]
        print("\n| method | rows | response tokens/s | row-tokens/s | time x base | peak MiB |")
        print("|---|---|---|---|---|---|")
        for m, s in setups.items():
            rows = s.get("width", 1) * s.get("candidates", 1)
            n = len(prompts) * args.new_tokens
            print(f"| {m} | {rows} | {n / seconds[m]:.0f} | {n * rows / seconds[m]:.0f} | {seconds[m] / ref:.2f} | "
                  f"{_peak_mib(call(s), args.device):.0f} |")

    if "batching" in args.parts:  # batched across prompts vs one prompt at a time, identical outputs
        ivg = setups[f"IVG ({w},{k},{chunk})"]

        def one_at_a_time():
            return [r for i, p in enumerate(prompts)
                    for r in guided_generate(base, tok, [p], params=SamplingParams(
                        max_new_tokens=args.new_tokens, ignore_eos=True, prompt_seeds=[i]), **ivg)]

        batched = call(ivg)
        t = _timed({"batched": batched, "one": one_at_a_time}, args.repeats, args.device)
        a, b = batched(), one_at_a_time()
        same = [[tr.token_ids for tr in x] for x in a] == [[tr.token_ids for tr in y] for y in b]
        print(f"\nIVG ({w},{k},{chunk}) on {len(prompts)} prompts: batched {t['batched']:.2f} s, one prompt at a time "
              f"{t['one']:.2f} s -> {t['one'] / t['batched']:.1f}x; identical outputs: {same}")

    if "peft" in args.parts:
        peft_rows(base, tok, guide, prompts, params, args)

    if "rescan" in args.parts:  # incremental vs full-rescan chunk scoring as the response grows
        print("\n| scorer | new tokens | total s | scoring s | scoring s per chunk: first -> last |")
        print("|---|---|---|---|---|")
        for length in args.rescan_lengths:
            for incremental in (True, False):
                scorer = ExplicitScorer(value, incremental=incremental)
                log = []
                score = scorer.score

                def timed_score(tokens, lengths, score=score, log=log):
                    _sync(args.device)
                    start = time.perf_counter()
                    out = score(tokens, lengths)
                    _sync(args.device)
                    log.append(time.perf_counter() - start)
                    return out

                scorer.score = timed_score
                p = SamplingParams(max_new_tokens=length, ignore_eos=True, prompt_seeds=list(range(len(prompts))),
                                   batch_size=4096)
                start = time.perf_counter()
                guided_generate(base, tok, prompts, rule=FixedTemperature(0.7), scorer=scorer, width=w, candidates=k,
                                chunk_length=chunk, params=p)
                total = time.perf_counter() - start
                name = "incremental (cached)" if incremental else "full rescan"
                print(f"| {name} | {length} | {total:.2f} | {sum(log):.2f} | {1000 * log[0]:.1f} ms -> "
                      f"{1000 * log[-2]:.1f} ms |")


def _weights_mib(*models) -> float:
    """Parameter memory the models hold together (shared storages counted once)."""
    seen = {}
    for m in models:
        for p in m.parameters():
            seen[p.untyped_storage().data_ptr()] = p.numel() * p.element_size()
    return sum(seen.values()) / 2**20


def peft_rows(base, tok, guide, prompts, params, args) -> None:
    import copy

    from peft import LoraConfig, get_peft_model

    from lpo_train.guidance import ImplicitGuidance, guided_generate

    lora = get_peft_model(copy.deepcopy(guide), LoraConfig(r=16, lora_alpha=32, init_lora_weights=False,
                                                           target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    lora = lora.eval().requires_grad_(False)
    merged = copy.deepcopy(lora).merge_and_unload().eval()
    rules = {"one model (LoRA on / off)": (ImplicitGuidance(lora, beta=1.0, temperature=0.7), (lora,)),
             "two models (merged tuned + untuned)": (ImplicitGuidance(merged, guide, beta=1.0, temperature=0.7),
                                                     (merged, guide))}
    calls = {m: (lambda r=r: guided_generate(base, tok, prompts, rule=r, params=params)) for m, (r, _) in rules.items()}
    seconds = _timed(calls, args.repeats, args.device)
    outs = [[t.token_ids for g in call() for t in g] for call in calls.values()]
    n = len(prompts) * args.new_tokens
    print("\n| EFT implicit value | guidance weights held (MiB) | response tokens/s | time x two models | peak MiB |")
    print("|---|---|---|---|---|")
    ref = seconds["two models (merged tuned + untuned)"]
    for m, (_, models) in rules.items():
        print(f"| {m} | {_weights_mib(*models):.0f} | {n / seconds[m]:.0f} | {seconds[m] / ref:.2f} | "
              f"{_peak_mib(calls[m], args.device):.0f} |")
    print(f"identical outputs: {outs[0] == outs[1]} (differences come only from float rounding of merged weights)")


if __name__ == "__main__":
    main()
