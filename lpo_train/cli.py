"""The ``lpo-train`` command line."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _toy_pretrain(args) -> None:
    from lpo_train.tasks.toy_lm import pretrain_toy_lm

    for seed in args.seeds:
        path = pretrain_toy_lm(args.size, seed, steps=args.steps, device=args.device,
                               output_dir=args.output_dir)
        print(f"saved {path}")


def _toy_sweep(args) -> dict:
    from lpo_train.evaluation.sweep import aggregate, format_table, save_sweep, sweep_temperatures
    from lpo_train.tasks.toy import make_prompts, toy_reward
    from lpo_train.tasks.toy_lm import load_toy_lm

    tables, start = [], time.time()
    for seed in args.seeds:
        model, tokenizer = load_toy_lm(args.size, seed)
        rows = make_prompts(args.families, args.n_per_family, seed=1000 + seed)
        tables.append(sweep_temperatures(model, tokenizer, rows, toy_reward,
                                         temperatures=args.temperatures,
                                         num_samples=args.num_samples, seed=seed))
    meta = {"command": " ".join(["lpo-train"] + sys.argv[1:]), "size": args.size,
            "n_per_family": args.n_per_family, "num_samples": args.num_samples,
            "seconds": round(time.time() - start, 1)}
    summary = save_sweep(tables, list(args.seeds), args.output_dir, meta)
    print(format_table(aggregate(tables)))
    if summary["mix_margin_mean"] is not None:
        print(f"\narith+story mix: best single fixed T loses {summary['mix_margin_mean']:.3f} "
              f"± {summary['mix_margin_std']:.3f} mean reward to the best T per family "
              f"(over {len(args.seeds)} seed(s)).")
    print(f"wrote {Path(args.output_dir) / 'sweep.json'} and sweep.png")
    return summary


def _demo(args) -> None:
    """Toy world end to end: pretrained LM -> fixed-T sweep -> LPO (sequence level) -> evaluation."""
    from lpo_train.decoding import AdaptiveDecoderRule, FixedTemperature
    from lpo_train.evaluation.sweep import evaluate_rules
    from lpo_train.tasks.toy import make_prompts, toy_reward
    from lpo_train.tasks.toy_lm import load_toy_lm, toy_lm_path
    from lpo_train.train import main as train_main

    start = time.time()
    print("== lpo-train demo: the toy world ==\n[1/4] pretraining (or loading) the small toy LM")
    print(f"      {toy_lm_path('small', 0)}")
    print("[2/4] fixed-temperature sweep over all four families")
    args.seeds = [0]
    _toy_sweep(args)
    print("[3/4] LPO: training a sequence-level AdaptiveDecoder head on arith + story")
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "toy" / "lpo_seq.yaml"
    out = Path(args.output_dir) / "lpo_seq"
    trainer = train_main(["--config", str(recipe), "--output_dir", str(out), "--report_to", "none"])
    head = trainer.accelerator.unwrap_model(trainer.model).eval()
    print("[4/4] evaluation on held-out prompts: the trained head (argmax) vs every fixed temperature")
    model, tokenizer = load_toy_lm("small", 0)
    rows = make_prompts(["arith", "story"], n_per_family=48, seed=4242)
    rules = {f"T={t:g}": FixedTemperature(t) for t in args.temperatures}
    rules["AD-seq"] = AdaptiveDecoderRule(head, "argmax", model=model)
    rewards, values = evaluate_rules(model, tokenizer, rows, toy_reward, rules, num_samples=args.num_samples)
    names = list(rules)
    print("| family | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for fam in rewards:
        print(f"| {fam} | " + " | ".join(f"{rewards[fam][n]:.3f}" for n in names) + " |")
    mix = {n: sum(rewards[f][n] for f in rewards) / len(rewards) for n in names}
    print("| mix | " + " | ".join(f"{mix[n]:.3f}" for n in names) + " |")
    best_fixed = max((n for n in names if n != "AD-seq"), key=mix.get)
    print("\nwhere the head sends each family (mean chosen temperature): "
          + ", ".join(f"{fam} -> {values[fam]['AD-seq']:.2f}" for fam in values))
    print(f"AD-seq mix reward {mix['AD-seq']:.3f} vs best fixed {best_fixed} {mix[best_fixed]:.3f}; "
          f"head saved to {out}; {time.time() - start:.0f} s in total.")


def _add_sweep_args(p) -> None:
    p.add_argument("--size", default="small", choices=["small", "base"])
    p.add_argument("--families", nargs="+", default=["arith", "story", "constrained", "sentiment"])
    p.add_argument("--n-per-family", type=int, default=32)
    p.add_argument("--num-samples", type=int, default=4)
    p.add_argument("--temperatures", type=float, nargs="+",
                   default=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lpo-train", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="train an AdaptiveDecoder head with LPO: --config recipe.yaml [--key value ...]")

    p = sub.add_parser("toy-pretrain", help="pretrain the toy world's LM and cache it")
    p.add_argument("--size", default="small", choices=["small", "base"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, default=None, help="override the size's default step count")
    p.add_argument("--device", default="cpu", help="e.g. cuda for longer/larger runs on a GPU")
    p.add_argument("--output-dir", default=None, help="default: the lpo-train cache")
    p.set_defaults(func=_toy_pretrain)

    p = sub.add_parser("toy-sweep", help="mean reward per toy family at each fixed temperature")
    _add_sweep_args(p)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--output-dir", default="outputs/toy_sweep")
    p.set_defaults(func=_toy_sweep)

    p = sub.add_parser("demo", help="the embedded default: the toy world end to end on CPU")
    _add_sweep_args(p)
    p.set_defaults(n_per_family=16)
    p.add_argument("--output-dir", default="outputs/demo")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":  # TRL-style parser: --config recipe.yaml plus --key value overrides
        from lpo_train.train import main as train_main

        train_main(argv[1:])
        return
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
