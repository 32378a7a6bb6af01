"""Benchmark the evaluate sweep's wall time: lpo-train's engine vs vLLM (``use_vllm``), same sweep, one process.

Not a test. Both run ``lpo_train.evaluation.harness.evaluate`` on the same model, prompts, strategies, N and
completion length, each into a fresh output folder (no resumed strategies), alternating after a short warm-up of each (N = 1, 8
tokens);
the medians of ``--repeats`` are reported, and the median of each round's paired ratio. vLLM's start-up (its
engine, built once per process and reused) is timed on its own, outside the sweeps.

    python scripts/benchmark_evaluate.py --model smollm2 --dataset smollm2_mix:eval:capital --num-generations 4 --new-tokens 64
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--dataset", default="smollm2_mix:eval")
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 0.4, 0.8, 1.2])
    parser.add_argument("--strategies", nargs="*", default=["min_p:0.1", "edt:T0=1,theta=1"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from lpo_train.config import DecodingArguments
    from lpo_train.decoding import vllm as backend
    from lpo_train.evaluation.harness import EvalConfig, evaluate
    from lpo_train.models.loading import resolve_model_path

    root = tempfile.mkdtemp(prefix="bench_eval_")

    def sweep(use_vllm: bool, tag: str, warm_up: bool = False) -> tuple[float, int]:
        config = EvalConfig(model_name_or_path=args.model, dataset_name=args.dataset, temperatures=args.temperatures,
                            strategies=list(args.strategies), num_generations=1 if warm_up else args.num_generations,
                            max_completion_length=8 if warm_up else args.new_tokens, n_boot=10, seed=0,
                            use_vllm=use_vllm, output_dir=f"{root}/{tag}")
        start = time.perf_counter()
        summary = evaluate(config)
        return time.perf_counter() - start, len(summary)

    start = time.perf_counter()
    backend.vllm_engine(resolve_model_path(args.model), DecodingArguments(use_vllm=True))
    startup = time.perf_counter() - start
    sweep(False, "warm_engine", warm_up=True)  # N = 1, 8 tokens: every code path once
    sweep(True, "warm_vllm", warm_up=True)
    times: dict[str, list[float]] = {"engine": [], "vllm": []}
    for r in range(args.repeats):
        for name in ("engine", "vllm") if r % 2 == 0 else ("vllm", "engine"):
            seconds, strategies = sweep(name == "vllm", f"{name}_{r}")
            times[name].append(seconds)
    med = {k: statistics.median(v) for k, v in times.items()}
    paired = statistics.median(a / b for a, b in zip(times["engine"], times["vllm"]))
    print(f"model={args.model} dataset={args.dataset} strategies={strategies} N={args.num_generations} "
          f"new_tokens={args.new_tokens} repeats={args.repeats} (median, alternating)")
    print(f"vLLM start-up (once per process): {startup:.1f} s")
    for name, seconds in med.items():
        spread = (max(times[name]) - min(times[name])) / seconds
        print(f"evaluate sweep, {name}: {seconds:.1f} s (spread {spread:.0%})")
    print(f"engine / vLLM: {med['engine'] / med['vllm']:.2f}x (ratio of the medians); {paired:.2f}x (median paired ratio)")
    backend.shutdown()


if __name__ == "__main__":
    main()
