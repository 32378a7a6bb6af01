"""The ``lpo-train`` command line."""

from __future__ import annotations

import argparse
import importlib
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
    from lpo_train.evaluation.sweep import DEFAULT_TEMPERATURES, aggregate, format_table, save_sweep, sweep_temperatures
    from lpo_train.tasks.toy import make_prompts, toy_reward
    from lpo_train.tasks.toy_lm import load_toy_lm

    args.temperatures = args.temperatures or list(DEFAULT_TEMPERATURES)  # demo's evaluation reads it too
    tables, start = [], time.time()
    for seed in args.seeds:
        model, tokenizer = load_toy_lm(args.size, seed)
        rows = make_prompts(args.families, args.n_per_family, seed=1000 + seed)
        tables.append(sweep_temperatures(model, tokenizer, rows, toy_reward,
                                         temperatures=args.temperatures,
                                         num_generations=args.num_generations, seed=seed))
    meta = {"command": " ".join(["lpo-train"] + sys.argv[1:]), "size": args.size,
            "n_per_family": args.n_per_family, "num_generations": args.num_generations,
            "seconds": round(time.time() - start, 1)}
    summary = save_sweep(tables, list(args.seeds), args.output_dir, meta)
    print(format_table(aggregate(tables)))
    if summary["mix_margin_mean"] is not None:
        spread = f" ± {summary['mix_margin_std']:.3f}" if summary["mix_margin_std"] is not None else ""
        print(f"\narith+story mix: best single fixed T loses {summary['mix_margin_mean']:.3f}{spread} "
              f"mean reward to the best T per family (over {len(args.seeds)} seed(s)).")
    print(f"wrote {Path(args.output_dir) / 'sweep.json'} and sweep.png")
    return summary


def _demo(args) -> None:
    """Toy world end to end: pretrained LM -> fixed-T sweep -> LPO (sequence level) -> evaluation."""
    from lpo_train.evaluation.harness import EvalConfig, evaluate
    from lpo_train.tasks.toy_lm import toy_lm_path
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
    train_main(["--config", str(recipe), "--output_dir", str(out), "--report_to", "none", "--overwrite_output_dir", "true"])
    print("[4/4] evaluation on held-out prompts: the trained head (argmax) vs every fixed temperature")
    config = EvalConfig(model_name_or_path="toy:small", toy_families=["arith", "story"], toy_prompts_per_family=48,
                        num_generations=args.num_generations, temperatures=args.temperatures, strategies=[f"head:{out}"],
                        output_dir=str(Path(args.output_dir) / "eval"))
    summary = evaluate(config)
    print((Path(config.output_dir) / "report.md").read_text())
    head = summary[f"head:{out}"]
    best_fixed = max((n for n in summary if n.startswith("T=")), key=lambda n: summary[n]["mean_reward"])
    print("where the head sends each family (mean chosen temperature): "
          + ", ".join(f"{fam} -> {v:.2f}" for fam, v in head["mean_value_by_family"].items()))
    print(f"head: mean reward {head['mean_reward']:.3f}, average win rate vs the fixed grid "
          f"{head['average_win_rate']:.1f} %; best fixed {best_fixed}: {summary[best_fixed]['mean_reward']:.3f}. "
          f"Head in {out}, evaluation in {config.output_dir}; {time.time() - start:.0f} s in total.")


def _add_sweep_args(p) -> None:
    p.add_argument("--size", default="small", choices=["small", "base"])
    p.add_argument("--families", nargs="+", default=["arith", "story", "constrained", "sentiment"])
    p.add_argument("--n-per-family", type=int, default=32)
    p.add_argument("--num-generations", type=int, default=4, help="samples per prompt (N)")
    p.add_argument("--temperatures", type=float, nargs="+", default=None,
                   help="default: the sweep's grid (lpo_train.evaluation.sweep.DEFAULT_TEMPERATURES)")


TRL_STYLE = {  # commands parsed by TRL's parser (--config recipe.yaml plus --key value overrides)
    "train": "lpo_train.train:main",
    "evaluate": "lpo_train.evaluation.harness:main",
    "train-value": "lpo_train.trainers.value:main",
    "generate": "lpo_train.guidance.run:main",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lpo-train", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="before the command: an input error shows its "
                        "traceback (default: its message alone, exit status 2); also LPO_TRAIN_DEBUG=1")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="train an AdaptiveDecoder head with LPO: --config recipe.yaml [--key value ...]")
    sub.add_parser("evaluate", help="decoding strategies vs the fixed-temperature grid: --config ... [--key value]")
    sub.add_parser("train-value", help="train a guidance model: implicit|explicit|reward --config ... [--key value]")
    sub.add_parser("generate", help="guided decoding to JSONL: --method base|bon|eft|tokenrm|cbs|ivg|args [--config ...]")
    sub.add_parser("check-objective", help="train heads on bandits with known optima: does an objective reach the "
                   "expected-reward optimum? (docs/objectives.md)")
    sub.add_parser("serve", help="serve a trained head inside vLLM's OpenAI-compatible server: HEAD [--selection ...] "
                   "[vllm serve flags] (docs/serving.md section B)")

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


def dispatch(argv: list[str]) -> None:
    """Run one command; every error propagates (``main`` is the console entry that reports them)."""
    if argv and argv[0] in TRL_STYLE:  # TRL-style parser: --config recipe.yaml plus --key value
        module, _, name = TRL_STYLE[argv[0]].partition(":")
        getattr(importlib.import_module(module), name)(argv[1:])
        return
    if argv and argv[0] == "check-objective":
        from lpo_train.objectives.bandit import main as check_main

        if check_main(argv[1:]):
            raise SystemExit(1)
        return
    if argv and argv[0] == "serve":
        serve(argv[1:])
        return
    args = build_parser().parse_args(argv)
    args.func(args)


def serve_command(argv: list[str]) -> list[str]:
    """The ``vllm serve`` command line that ``lpo-train serve`` runs (``vllm.head_engine_args`` as flags), through
    ``decoding/vllm_serve.py`` (``vllm serve`` itself, which also runs on vLLM's CPU build)."""
    import json

    from lpo_train.decoding.vllm import head_engine_args
    from lpo_train.heads import SELECTIONS

    p = argparse.ArgumentParser(prog="lpo-train serve", description="Serve a trained AdaptiveDecoder head inside "
                                "vLLM's OpenAI-compatible server: the head chooses the decoding knob of every "
                                "request (send temperature 1, the default, and no top_k / top_p / min_p: the head's "
                                "distribution is the model's output). Unknown flags go to `vllm serve` unchanged.")
    p.add_argument("head", help="the head's folder or Hub id (its config names the base model)")
    p.add_argument("--selection", default="argmax", choices=SELECTIONS)
    p.add_argument("--top_k", type=int, default=0, help="a fixed truncation after the head's knob (0: off)")
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--min_p", type=float, default=0.0)
    p.add_argument("--base_model", default=None, help="default: the base model the head's config names")
    p.add_argument("--served_model_name", default=None, help="the `model` of requests (default: HEAD as given)")
    args, rest = p.parse_known_args(argv)
    engine = head_engine_args(args.head, args.selection, args.top_k, args.top_p, args.min_p, args.base_model)
    command = [sys.executable, "-m", "lpo_train.decoding.vllm_serve", engine["model"],
               "--hf-overrides", json.dumps(engine["hf_overrides"]), "--generation-config", engine["generation_config"],
               "--dtype", engine["dtype"], "--served-model-name", args.served_model_name or args.head]
    if engine["enforce_eager"]:
        command.append("--enforce-eager")
    if engine["enable_chunked_prefill"] is False:
        command.append("--no-enable-chunked-prefill")
    return command + rest


def serve(argv: list[str]) -> None:
    """``lpo-train serve HEAD ...``: replaces this process with ``vllm serve`` (``serve_command``)."""
    import os

    command = serve_command(argv)
    print("lpo-train serve: " + " ".join(command), file=sys.stderr, flush=True)
    os.execv(command[0], command)


def main(argv: list[str] | None = None) -> None:
    """``lpo-train [--debug] COMMAND ...``. A user error (``lpo_train.errors``) prints its message on stderr and
    exits with status 2; ``--debug`` before the command (or ``LPO_TRAIN_DEBUG=1``) raises it with its traceback."""
    import os

    from lpo_train.errors import is_user_error

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("LPO_TRAIN_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
    if argv[:1] == ["--debug"]:  # only before the command: after it, --debug is TrainingArguments' own flag
        debug, argv = True, argv[1:]
    try:
        dispatch(argv)
    except Exception as e:
        if debug or not is_user_error(e):
            raise
        command = f"lpo-train {argv[0]}" if argv else "lpo-train"
        print(f"{command}: error: {e}\n(for the traceback: lpo-train --debug {' '.join(argv[:1])} ... "
              "or LPO_TRAIN_DEBUG=1)", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
