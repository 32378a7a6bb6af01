"""IVG replication on the toy world's ``sentiment`` family (docs/results.md, docs/results/ivg_sentiment.json).

Per seed: DPO the small toy LM on its own samples (recipes/toy/value_implicit.yaml: the implicit
value is tuned vs untuned small LM), train a token value model on the base LM's samples
(recipes/toy/value_explicit.yaml), then decode held-out prompts with the base toy LM under base
sampling, best-of-N, EFT, CBS-implicit, CBS-explicit and IVG. Gold reward = VADER compound of the
continuation. The search methods share one budget: W*K = N rows per prompt; forward tokens of the
base model are reported for every method. Resumable: finished trainings and methods are reused.

    python scripts/replicate_ivg.py --seeds 0 1 2

``--world smollm2``: the same grid on the real SmolLM2-135M-Instruct (base), the implicit value a LoRA DPO
adapter on SmolLM2 (recipes/smollm2-135m/value_implicit_lora.yaml; untuned = the adapter off, one set of
weights), the explicit value a value model with a shared value head on a LoRA SmolLM2 backbone
(recipes/smollm2-135m/value_explicit_lora.yaml), review prompts, VADER gold reward:

    python scripts/replicate_ivg.py --world smollm2 --seeds 0 1 2      # docs/results/ivg_smollm2.json
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


WORLDS = {  # world -> recipes of the two guidance models, and the decoding models
    "toy": {"implicit": "toy/value_implicit.yaml", "explicit": "toy/value_explicit.yaml",
            "base": "toy:base", "untuned": "toy:small",
            "setup": {"base": "toy:base", "tuned": "toy:small after DPO", "untuned": "toy:small",
                      "value_model": "toy:small backbone, mse per-prefix"},
            "defaults": {"prompts": 64, "wkl": [4, 4, 5], "max_new_tokens": 48}},
    "smollm2": {"implicit": "smollm2-135m/value_implicit_lora.yaml", "explicit": "smollm2-135m/value_explicit_lora.yaml",
                "base": "smollm2", "untuned": "",  # "": the tuned model is a LoRA adapter; untuned = adapter off
                "setup": {"base": "SmolLM2-135M-Instruct", "tuned": "a LoRA DPO adapter on SmolLM2",
                          "untuned": "the same weights, adapter off",
                          "value_model": "LoRA SmolLM2 backbone + shared value head, mse per-prefix"},
                "defaults": {"prompts": 32, "wkl": [2, 2, 8], "max_new_tokens": 32}},
}


def _train(kind: str, out: Path, seed: int, extra: list[str], world: str = "toy") -> dict:
    """Train a guidance model, or reuse the one in ``out`` when it was trained from the same recipe text (a
    stamp next to it); a model from another recipe is a clear error, since the decoding runs built on it
    would be reused too."""
    import hashlib

    from lpo_train.trainers.value import main as train_value

    recipe = ROOT / "recipes" / WORLDS[world][kind]
    stamp = hashlib.sha256(recipe.read_bytes() + repr(extra).encode()).hexdigest()[:16]
    stamp_file = out / "replicate_recipe.sha"
    if (out / "value_metrics.json").exists():
        if stamp_file.exists() and stamp_file.read_text().strip() != stamp:
            raise SystemExit(f"{out} was trained from another version of {recipe.relative_to(ROOT)}: delete "
                             f"{out} and the decoding runs next to it ({out.parent / 'generate*'}) to rerun.")
    else:
        train_value([kind, "--config", str(recipe),
                     "--output_dir", str(out), "--dataset_seed", str(seed), "--seed", str(seed), *extra])
    stamp_file.write_text(stamp + "\n")
    return json.loads((out / "value_metrics.json").read_text())


def run_seed(seed: int, args, models: dict) -> dict:
    from lpo_train.guidance.run import GenerateConfig, run

    out = Path(args.output_dir) / f"seed{seed}"
    world = WORLDS[args.world]
    implicit = _train("implicit", out / "tuned", seed, [], args.world)
    explicit = _train("explicit", out / "value", seed, [], args.world)
    results = {}
    for name in args.methods:
        overrides = METHODS[name]
        file = out / ("generate" + (f"_beta{args.beta_token:g}" if args.beta_token != 1.0 else "")) / f"{name}.jsonl"
        meta = file.with_name(file.stem + ".meta.json")
        if not (file.exists() and meta.exists()):
            config = GenerateConfig(model_name_or_path=world["base"], tuned_model=str(out / "tuned"),
                                    untuned_model=world["untuned"], value_model=str(out / "value"),
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
        "value_model_pairwise_accuracy": ms([s["explicit_value"]["eval_pairwise_accuracy"]
                                             for s in per_seed.values()])["mean"],
        "per_seed": per_seed,
        "setup": {**WORLDS[args.world]["setup"], "gold": "VADER compound of the continuation",
                  "W_K_L": args.wkl, "best_of_n_N": args.wkl[0] * args.wkl[1], "temperature": args.temperature,
                  "max_new_tokens": args.max_new_tokens, "prompts": args.prompts, "prompt_seed": args.prompt_seed,
                  "beta_token": args.beta_token},
        "command": "python scripts/replicate_ivg.py " + " ".join(sys.argv[1:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", default="toy", choices=sorted(WORLDS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--prompts", type=int, default=None, help="default: 64 (toy), 32 (smollm2)")
    parser.add_argument("--prompt-seed", type=int, default=4242)
    parser.add_argument("--wkl", type=int, nargs=3, default=None, metavar=("W", "K", "L"),
                        help="default: 4 4 5 (toy), 2 2 8 (smollm2)")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: 48 (toy), 32 (smollm2)")
    parser.add_argument("--beta-token", type=float, default=1.0, help="EFT / IVG token-level weight")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--output-dir", default=None, help="default: outputs/ivg_sentiment (toy), outputs/ivg_smollm2")
    parser.add_argument("--summary", default=None,
                        help="default: docs/results/ivg_sentiment.json (toy), docs/results/ivg_smollm2.json")
    args = parser.parse_args()
    for name, value in WORLDS[args.world]["defaults"].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    smol = args.world == "smollm2"
    args.output_dir = args.output_dir or ("outputs/ivg_smollm2" if smol else "outputs/ivg_sentiment")
    args.summary = args.summary or str(ROOT / "docs" / "results" / ("ivg_smollm2.json" if smol else "ivg_sentiment.json"))
    start, models = time.time(), {}
    per_seed = {str(s): run_seed(s, args, models) for s in args.seeds}
    summary = summarise(per_seed, args)
    summary["seconds"] = round(time.time() - start, 1)
    from lpo_train.utils.io import write_results_json

    write_results_json(args.summary, summary, ROOT)
    print("\n| method | mean gold reward (mean ± std over seeds) | base forward tokens |\n|---|---|---|")
    for m in args.methods:
        print(f"| {m} | {summary['mean_gold_reward'][m]:.4f} ± {summary['std_gold_reward'][m]:.4f} | "
              f"{summary['base_forward_tokens'][m]:.0f} |")
    print(f"wrote {args.summary}")


if __name__ == "__main__":
    main()
