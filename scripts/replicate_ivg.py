"""IVG replication on the toy world's ``sentiment`` family (docs/results.md, docs/results/ivg_sentiment.json).

Per seed: DPO the small toy LM on its own samples (recipes/toy/value_implicit.yaml: the implicit
value is tuned vs untuned small LM), train a token value model on the base LM's samples
(recipes/toy/value_explicit.yaml), then decode held-out prompts with the base toy LM under base
sampling, best-of-N, EFT, CBS-implicit, CBS-explicit and IVG. Gold reward = VADER compound of the
continuation. The search methods share one budget: W*K = N rows per prompt; forward tokens of the
base model are reported for every method. Resumable: finished trainings and methods are reused.

    python scripts/replicate_ivg.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = {  # name -> GenerateConfig overrides
    "base": {"method": "base"},
    "best_of_n": {"method": "bon"},  # scored by the explicit value model (end score)
    "eft": {"method": "eft"},
    "cbs_implicit": {"method": "cbs"},
    "cbs_explicit": {"method": "cbs", "chunk_guidance": "explicit"},
    "ivg": {"method": "ivg"},
}


def _train(kind: str, out: Path, seed: int, extra: list[str]) -> dict:
    from lpo_train.trainers.value import main as train_value

    if not (out / "value_metrics.json").exists():
        train_value(["--kind", kind, "--config", str(ROOT / "recipes" / "toy" / f"value_{kind}.yaml"),
                     "--output_dir", str(out), "--dataset_seed", str(seed), "--seed", str(seed), *extra])
    return json.loads((out / "value_metrics.json").read_text())


def run_seed(seed: int, args, models: dict) -> dict:
    from lpo_train.guidance.run import GenerateConfig, run

    out = Path(args.output_dir) / f"seed{seed}"
    implicit = _train("implicit", out / "tuned", seed, [])
    explicit = _train("explicit", out / "value", seed, [])
    results = {}
    for name in args.methods:
        overrides = METHODS[name]
        file = out / ("generate" + (f"_beta{args.beta_token:g}" if args.beta_token != 1.0 else "")) / f"{name}.jsonl"
        meta = file.with_name(file.stem + ".meta.json")
        if not (file.exists() and meta.exists()):
            config = GenerateConfig(model_name_or_path="toy:base", tuned_model=str(out / "tuned"),
                                    untuned_model="toy:small", value_model=str(out / "value"),
                                    gold_reward_funcs=["sentiment"], toy_families=["sentiment"],
                                    toy_prompts_per_family=args.prompts, dataset_seed=args.prompt_seed, seed=seed,
                                    beam_width=args.wkl[0], num_candidates=args.wkl[1], chunk_length=args.wkl[2],
                                    temperature=args.temperature, max_completion_length=args.max_new_tokens,
                                    beta_token=args.beta_token, output_file=str(file), **overrides)
            if name == "best_of_n":
                config.num_candidates = args.wkl[0] * args.wkl[1]
            run(config, models)
        stats = json.loads(meta.read_text())["stats"]
        results[name] = {"mean_gold_reward": stats["mean_gold_reward"], "forward_tokens": stats["forward_tokens"],
                         "seconds": stats["seconds"]}
        print(f"seed {seed} {name}: mean gold reward {stats['mean_gold_reward']:.4f} "
              f"({stats['forward_tokens']} base forward tokens)", flush=True)
    return {"methods": results, "implicit_value": implicit, "explicit_value": explicit}


def summarise(per_seed: dict, args) -> dict:
    def ms(values):
        return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}

    methods = args.methods
    return {
        "seeds": len(per_seed),
        "mean_gold_reward": {m: ms([s["methods"][m]["mean_gold_reward"] for s in per_seed.values()])["mean"]
                             for m in methods},
        "std_gold_reward": {m: ms([s["methods"][m]["mean_gold_reward"] for s in per_seed.values()])["std"]
                            for m in methods},
        "base_forward_tokens": {m: ms([s["methods"][m]["forward_tokens"] for s in per_seed.values()])["mean"]
                                for m in methods},
        "implicit_dpo_heldout_accuracy": ms([s["implicit_value"].get("eval_rewards_accuracy") or 0.0
                                             for s in per_seed.values()]),
        "explicit_value_heldout_pairwise_accuracy": ms([s["explicit_value"]["eval_pairwise_accuracy"]
                                                        for s in per_seed.values()]),
        "per_seed": per_seed,
        "setup": {"base": "toy:base", "tuned": "toy:small after DPO", "untuned": "toy:small",
                  "value_model": "toy:small backbone, mse per-prefix", "gold": "VADER compound of the continuation",
                  "W_K_L": args.wkl, "best_of_n_N": args.wkl[0] * args.wkl[1], "temperature": args.temperature,
                  "max_new_tokens": args.max_new_tokens, "prompts": args.prompts, "prompt_seed": args.prompt_seed,
                  "beta_token": args.beta_token},
        "command": "python scripts/replicate_ivg.py " + " ".join(sys.argv[1:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--prompt-seed", type=int, default=4242)
    parser.add_argument("--wkl", type=int, nargs=3, default=[4, 4, 5], metavar=("W", "K", "L"))
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--beta-token", type=float, default=1.0, help="EFT / IVG token-level weight")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--output-dir", default="outputs/ivg_sentiment")
    parser.add_argument("--summary", default=str(ROOT / "docs" / "results" / "ivg_sentiment.json"))
    args = parser.parse_args()
    start, models = time.time(), {}
    per_seed = {str(s): run_seed(s, args, models) for s in args.seeds}
    summary = summarise(per_seed, args)
    summary["seconds"] = round(time.time() - start, 1)
    Path(args.summary).write_text(json.dumps(summary, indent=2) + "\n")
    print("\n| method | mean gold reward (mean ± std over seeds) | base forward tokens |\n|---|---|---|")
    for m in args.methods:
        print(f"| {m} | {summary['mean_gold_reward'][m]:.4f} ± {summary['std_gold_reward'][m]:.4f} | "
              f"{summary['base_forward_tokens'][m]:.0f} |")
    print(f"wrote {args.summary}")


if __name__ == "__main__":
    main()
