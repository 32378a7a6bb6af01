"""Replication (f): the arith + story protocol of (a) on the real SmolLM2-135M-Instruct (CPU).

    python scripts/replicate_smollm2.py --seeds 0 1 2     # -> docs/results/smollm2_mixed_seq.json
    python scripts/replicate_smollm2.py --seeds 0 1 2 --protocol offline --learning-rate 1e-3 --tag offline_lr1e-3 \
        --train-prompts 32 --max-steps 16          # the paper's protocol (pairs sampled once per seed, then reused)

1. A fixed-temperature sweep over candidate tasks (arith: single-digit sums, capital: name the
   capital of a well-known country, story: a short story), on prompts of their own (seed 100),
   to choose the two tasks whose best fixed temperatures are furthest apart.
2. LPO (sequence level, Eq. 10) on training prompts of those two tasks, one head per seed.
3. ``lpo-train evaluate`` on held-out prompts (seed 4242): every fixed T and the heads (argmax);
   the fixed temperatures are sampled once and shared by the heads of all seeds.
Reward ``real_mix`` (lpo_train/rewards.py). Each step resumes from its outputs. One CPU thread.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
TEMPS = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
CAPITALS = {"France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
            "China": "Beijing", "Russia": "Moscow", "Egypt": "Cairo", "Greece": "Athens", "Canada": "Ottawa",
            "England": "London", "Portugal": "Lisbon", "Ireland": "Dublin", "Austria": "Vienna",
            "Norway": "Oslo", "Poland": "Warsaw", "Sweden": "Stockholm", "Kenya": "Nairobi", "Peru": "Lima",
            "Thailand": "Bangkok"}
SUBJECTS = ["cat", "dragon", "robot", "lighthouse", "baker", "lost key", "storm", "garden", "pirate", "violin",
            "snowman", "train", "owl", "river", "wizard", "astronaut"]


def make_rows(families: list[str], n_per_family: int, seed: int) -> list[dict]:
    rng = random.Random(f"smollm2-{seed}")
    rows = []
    for _ in range(n_per_family):
        for f in families:
            if f == "arith":
                a, b = rng.randint(0, 9), rng.randint(0, 9)
                content, answer = f"What is {a} + {b}?", str(a + b)
            elif f == "capital":
                country = rng.choice(sorted(CAPITALS))
                content, answer = f"What is the capital of {country}?", CAPITALS[country]
            else:
                content, answer = f"Write a short story about a {rng.choice(SUBJECTS)}.", ""
            rows.append({"prompt": [{"role": "user", "content": content}], "family": f, "answer": answer})
    return rows


def write_suite(rows: list[dict], path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def evaluate_suite(suite: str, out: Path, strategies: list[str], args) -> dict:
    from lpo_train.evaluation.harness import EvalConfig, evaluate

    config = EvalConfig(model_name_or_path="smollm2", dataset_name=suite, dataset_split="train",
                        reward_funcs=["real_mix"], temperatures=TEMPS, strategies=strategies,
                        num_samples=args.num_samples, max_new_tokens=args.max_new_tokens, batch_size=64,
                        answer_extractor="last_number", seed=0, n_boot=1000, output_dir=str(out))
    summary = evaluate(config)
    print((out / "report.md").read_text(), flush=True)
    return summary


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sweep-prompts", type=int, default=8, help="prompts per candidate task in the sweep")
    p.add_argument("--eval-prompts", type=int, default=16, help="held-out prompts per chosen task")
    p.add_argument("--train-prompts", type=int, default=24, help="training prompts per chosen task")
    p.add_argument("--num-samples", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--max-steps", type=int, default=12)
    p.add_argument("--protocol", default="online", choices=["online", "offline"],
                   help="LPO protocol: online (the recipe's) or offline (the paper's: pairs sampled once, uniform head)")
    p.add_argument("--learning-rate", type=float, default=1e-2)
    p.add_argument("--tag", default="", help="names this variant's heads and JSON (e.g. 'offline')")
    p.add_argument("--output-dir", default=str(ROOT / "outputs" / "replicate" / "smollm2"))
    p.add_argument("--json", default=None, help="default: docs/results/smollm2_mixed_seq[_<tag>].json")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    out = Path(args.output_dir)

    # 1. the sweep that chooses the tasks
    candidates = ["arith", "capital", "story"]
    sweep = evaluate_suite(write_suite(make_rows(candidates, args.sweep_prompts, 100), out / "sweep.jsonl"),
                           out / "sweep", [], args)
    by_family = {f: {t: sweep[f"T={t:g}"]["mean_reward_by_family"][f] for t in TEMPS} for f in candidates}
    best_t = {f: max(TEMPS, key=lambda t, f=f: (row[t], -t)) for f, row in by_family.items()}
    cold = min(["arith", "capital"], key=lambda f: (best_t[f], -max(by_family[f].values())))
    chosen = [cold, "story"] if best_t["story"] > best_t[cold] else [cold, max(candidates, key=best_t.get)]
    print(f"sweep best T per task: {best_t}; chosen tasks: {chosen}", flush=True)

    # 2. one head per seed, 3. evaluation on held-out prompts
    from lpo_train.train import main as train_main

    train_suite = write_suite(make_rows(chosen, args.train_prompts, 0), out / "train.jsonl")
    heads = {}
    for seed in args.seeds:
        head_dir = out / (f"head_{args.tag}_seed{seed}" if args.tag else f"head_seed{seed}")
        if not (head_dir / "model.safetensors").exists():
            extra = (["--protocol", "offline", "--pairs_path", str(out / f"pairs_offline_seed{seed}.parquet")]
                     if args.protocol == "offline" else [])
            train_main(["--config", str(ROOT / "recipes" / "smollm2-135m" / "lpo_seq.yaml"),
                        "--dataset_name", train_suite, "--reward_funcs", "real_mix", "--seed", str(seed),
                        "--max_steps", str(args.max_steps), "--max_completion_length", str(args.max_new_tokens),
                        "--learning_rate", str(args.learning_rate), "--save_steps", "1000",
                        "--output_dir", str(head_dir), "--report_to", "none", *extra])
        heads[seed] = f"head:{head_dir}"
    eval_suite = write_suite(make_rows(chosen, args.eval_prompts, 4242), out / "eval.jsonl")
    summary = evaluate_suite(eval_suite, out / "eval", list(heads.values()), args)

    def ms(values):
        return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "per_seed": values}

    hs = [summary[h] for h in heads.values()]
    result = {
        "method": f"AD-seq (LPO, Eq. 10, {args.protocol} protocol, lr {args.learning_rate:g}), argmax selection, "
                  "SmolLM2-135M-Instruct (CPU)",
        "seeds": len(args.seeds), "tasks": chosen,
        "sweep": {"mean_reward": by_family, "best_T": best_t, "prompts_per_task": args.sweep_prompts},
        "win_rate_vs_fixed": {f"{t:.1f}": ms([h["win_rate_vs_fixed"][f"{t:g}"]["win_rate"] for h in hs])["mean"]
                              for t in TEMPS},
        "win_rate_vs_fixed_per_seed": {f"{t:.1f}": [h["win_rate_vs_fixed"][f"{t:g}"]["win_rate"] for h in hs]
                                       for t in TEMPS},
        "average_win_rate": ms([h["average_win_rate"] for h in hs]),
        "mean_reward": ms([h["mean_reward"] for h in hs]),
        "mean_reward_by_family": {f: ms([h["mean_reward_by_family"][f] for h in hs]) for f in chosen},
        "mean_temperature_by_family": {f: ms([h["mean_value_by_family"][f] for h in hs])["mean"] for f in chosen},
        "mean_temperature_by_family_per_seed": {f: [h["mean_value_by_family"][f] for h in hs] for f in chosen},
        "fixed": {f"{t:.1f}": {"mean_reward": summary[f"T={t:g}"]["mean_reward"],
                               "mean_reward_by_family": summary[f"T={t:g}"]["mean_reward_by_family"]} for t in TEMPS},
        "settings": {k: getattr(args, k) for k in ("eval_prompts", "train_prompts", "num_samples", "max_new_tokens",
                                                   "max_steps", "protocol", "learning_rate")},
    }
    json_path = Path(args.json or ROOT / "docs" / "results" / f"smollm2_mixed_seq{'_' + args.tag if args.tag else ''}.json")
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("tasks", "win_rate_vs_fixed", "average_win_rate",
                                             "mean_temperature_by_family")}, indent=1))
    return result


if __name__ == "__main__":
    main()
