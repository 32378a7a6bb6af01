"""Replication (f): the (a) protocol on the real SmolLM2-135M-Instruct, on the ``smollm2_mix`` suite (CPU).

    python scripts/replicate_smollm2.py --seeds 0 1 2        # -> docs/results/smollm2_mixed_seq.json (+ _offline)
    python scripts/replicate_smollm2.py --seeds 0 1 2 --tag n6_all --train-args --num_generations 6 --pair_mode all

Per seed s:
1. LPO with the shipped recipe (recipes/smollm2-135m/lpo_seq.yaml: sequence level, Eq. 10, stratified
   exploration), online and offline (the paper's protocol: pairs sampled once from the initial head),
   training seed s, on the suite's train split.
2. ``lpo-train evaluate`` on the held-out split (``smollm2_mix:eval``; ``--families`` picks other families): every fixed temperature of the grid
   and both heads (argmax), N samples per prompt, sampling seed s.
The headroom is measured on the fixed-temperature results of all seeds: the mean over families of each
family's best fixed T, minus the best single fixed T (families are balanced, so the overall mean is the
mean of the family means). Every step resumes from its outputs (evaluate checks a fingerprint).

``--objectives LOSS ...`` (the objectives issue's SmolLM2 half): online heads of each loss type with the same
recipe, prompts, exploration, budget and seeds, evaluated beside the
same fixed-temperature runs -> docs/results/objectives_smollm2.json (every head trained afresh, named by its loss;
the evaluation shares eval_seed<s>/ with the main mode, whose report.md / results.json show the last run):

    python scripts/replicate_smollm2.py --seeds 0 1 2 --objectives lpo lpo_latent group_relative likelihood
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
from lpo_train.tasks.smollm2_mix import DEFAULT_FAMILIES  # noqa: E402
RECIPE = ROOT / "recipes" / "smollm2-135m" / "lpo_seq.yaml"
TEMPS = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
# --objectives: the likelihood objective (no reward, no sampled response) fits one reference per train prompt
# (scripts/make_smollm2_references.py), 4 epochs at lr 1e-2 over cached features, as in the toy comparison
LOSS_ARGS = {"likelihood": ["--dataset_name", str(ROOT / "recipes" / "smollm2-135m" / "data" / "references.jsonl"),
                            "--reference_column", "completion", "--num_train_epochs", "4", "--learning_rate", "1e-2"]}


def headroom(fixed_by_family: dict[str, dict[float, float]]) -> dict:
    """``fixed_by_family[family][T]`` = mean reward -> per-family best T, best single T and the gap."""
    families = sorted(fixed_by_family)
    overall = {t: statistics.fmean(fixed_by_family[f][t] for f in families) for t in TEMPS}
    best_single = max(TEMPS, key=lambda t: (overall[t], -t))
    best_per_family = {f: max(TEMPS, key=lambda t, f=f: (fixed_by_family[f][t], -t)) for f in families}
    oracle = statistics.fmean(fixed_by_family[f][best_per_family[f]] for f in families)
    return {"headroom": oracle - overall[best_single], "best_single_T": best_single,
            "best_single_mean_reward": overall[best_single], "best_T_per_family": best_per_family,
            "per_family_best_mean_reward": oracle, "fixed_mean_reward": {f"{t:.1f}": overall[t] for t in TEMPS}}


def _stamp(args: list[str]) -> str:
    """What a head was trained from: every training setting (not where it is written), the train prompts and the
    suite's module file (its rewards; an edit of it retrains, as it re-evaluates). The trainer's own code is not
    covered: after a trainer change, delete the outputs folder."""
    from lpo_train.data import load_prompt_dataset
    from lpo_train.evaluation.harness import file_fingerprint, rows_fingerprint
    from lpo_train.tasks import smollm2_mix
    from lpo_train.train import parse_config

    config = parse_config(args)
    settings = {k: v for k, v in config.to_dict().items()
                if k not in ("output_dir", "pairs_path", "logging_dir", "run_name", "overwrite_output_dir")}
    rows = load_prompt_dataset(config.dataset_name, "train").to_list()
    return rows_fingerprint([settings, rows_fingerprint(rows), file_fingerprint(Path(smollm2_mix.__file__))])


def train_head(protocol: str, seed: int, out: Path, extra: list[str], tag: str = "") -> tuple[Path, float]:
    """Train a head, or reuse the one in its folder when its stamp says it was trained from the same recipe,
    flags, prompts and reward code; a head (and offline pairs) from anything else is retrained, never reused."""
    from lpo_train.train import main as train_main

    head_dir = out / f"head_{protocol}{'_' + tag if tag else ''}_seed{seed}"
    pairs = out / f"pairs{'_' + tag if tag else ''}_seed{seed}.parquet"
    args = ["--config", str(RECIPE), "--seed", str(seed), "--output_dir", str(head_dir), "--save_strategy", "no",
            "--overwrite_output_dir", "true", *extra]
    if protocol == "offline":
        args += ["--protocol", "offline", "--pairs_path", str(pairs)]
    stamp, stamp_file = _stamp(args), head_dir / "replicate_stamp.sha"
    if (head_dir / "model.safetensors").exists() and stamp_file.exists() and stamp_file.read_text().strip() == stamp:
        return head_dir, float("nan")
    stamp_file.unlink(missing_ok=True)
    if protocol == "offline" and pairs.exists():  # built from an older recipe or suite
        pairs.unlink()
    start = time.time()
    train_main(args)
    stamp_file.write_text(stamp + "\n")
    return head_dir, time.time() - start


def default_families(args) -> bool:
    return tuple(args.families) == DEFAULT_FAMILIES


def suite(args, split: str) -> str:
    """The dataset name of ``args.families`` (the suite's defaults unless --families says otherwise)."""
    return f"smollm2_mix:{split}" + ("" if default_families(args) else ":" + "+".join(args.families))


def evaluate_heads(heads, seed: int, out: Path, args) -> dict:
    """Every fixed temperature and the heads (argmax) on the held-out split; cached runs are reused."""
    from lpo_train.evaluation.harness import EvalConfig, evaluate

    config = EvalConfig(model_name_or_path="smollm2", dataset_name=suite(args, "eval"), reward_funcs=["smollm2_mix"],
                        temperatures=TEMPS, strategies=[f"head:{h}" for h in heads],
                        num_generations=args.num_generations, max_completion_length=args.max_completion_length,
                        generation_batch_size=128, answer_extractor="last_number", seed=seed, n_boot=1000,
                        output_dir=str(out / f"eval_seed{seed}"))
    return evaluate(config)


def objectives(args) -> dict:
    """Online heads of each loss in ``args.objectives`` on the same recipe, prompts, exploration and seeds; their
    held-out reward and win rate vs the best fixed T (by the mean over seeds)."""
    from lpo_train.data import load_prompt_dataset
    from lpo_train.train import parse_config

    out, per_seed, timings = Path(args.output_dir), {}, {}
    for seed in args.seeds:
        heads = {}
        for loss in args.objectives:
            extra = ["--loss_type", loss, *LOSS_ARGS.get(loss, []), *args.train_args]
            heads[loss], seconds = train_head("online", seed, out, extra, loss)
            if not math.isnan(seconds):  # NaN: an existing head was reused
                timings[f"train_{loss}_seed{seed}"] = seconds
        per_seed[seed] = {"summary": evaluate_heads(heads.values(), seed, out, args),
                          "heads": {k: f"head:{v}" for k, v in heads.items()}}
    fixed = {t: statistics.fmean(per_seed[s]["summary"][f"T={t:g}"]["mean_reward"] for s in args.seeds) for t in TEMPS}
    best = max(TEMPS, key=lambda t: (fixed[t], -t))
    trained = parse_config(["--config", str(RECIPE), *args.train_args])  # the reward-based heads' settings
    prompts = len(load_prompt_dataset(trained.dataset_name, "train"))
    budget = prompts * int(trained.num_train_epochs) * trained.num_generations
    heads = {loss: [per_seed[s]["summary"][per_seed[s]["heads"][loss]] for s in args.seeds] for loss in args.objectives}
    result = {
        "seeds": len(args.seeds), "budget_responses": budget,
        "budget_note": "generated responses the reward-based losses train on (train prompts x epochs x N); the "
                       "likelihood objective generates none: it fits one reference per train prompt",
        "mean_reward": {loss: statistics.fmean(h["mean_reward"] for h in hs) for loss, hs in heads.items()},
        "mean_reward_per_seed": {loss: [h["mean_reward"] for h in hs] for loss, hs in heads.items()},
        "best_fixed_temperature": {f"T={best:g}": fixed[best]},
        "fixed_mean_reward": {f"T={t:g}": v for t, v in fixed.items()},
        "win_rate_vs_best_fixed": {loss: statistics.fmean(h["win_rate_vs_fixed"][f"{best:g}"]["win_rate"] for h in hs)
                                   for loss, hs in heads.items()},
        "win_rate_vs_best_fixed_per_seed": {loss: [{"win_rate": h["win_rate_vs_fixed"][f"{best:g}"]["win_rate"],
                                                    "ci95": h["win_rate_vs_fixed"][f"{best:g}"].get("ci95")}
                                                   for h in hs] for loss, hs in heads.items()},
        "mean_temperature_by_family": {loss: {f: statistics.fmean(h["mean_value_by_family"][f] for h in hs)
                                              for f in hs[0]["mean_value_by_family"]} for loss, hs in heads.items()},
        "settings": {"recipe": str(RECIPE.relative_to(ROOT)), "protocol": "online", "train_prompts": prompts,
                     "num_generations": args.num_generations, "max_completion_length": args.max_completion_length,
                     "train_args": args.train_args, "held_out": f"{suite(args, 'eval')}, argmax heads"},
        "timings_seconds": timings,
        "command": "python scripts/replicate_smollm2.py --seeds " + " ".join(map(str, args.seeds))
                   + " --objectives " + " ".join(args.objectives)
                   + (" --train-args " + " ".join(args.train_args) if args.train_args else ""),
    }
    Path(args.json_dir, "objectives_smollm2.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("mean_reward", "best_fixed_temperature", "win_rate_vs_best_fixed",
                                             "mean_temperature_by_family")}, indent=1), flush=True)
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--protocols", nargs="+", default=["online", "offline"], choices=["online", "offline"])
    p.add_argument("--num-generations", type=int, default=6, help="samples per held-out prompt (the recipe trains with 6)")
    p.add_argument("--max-completion-length", type=int, default=32)
    p.add_argument("--train-args", nargs=argparse.REMAINDER, default=[],
                   help="extra lpo-train train flags for every head (after everything else)")
    p.add_argument("--families", nargs="+", default=list(DEFAULT_FAMILIES), metavar="FAMILY",
                   help="the smollm2_mix families (default: the suite's defaults; 'arith capital pick' is the suite "
                        "of the first replication, docs/results.md 8.3-8.5)")
    p.add_argument("--tag", default="", help="names a variant's heads and JSON files (e.g. 'n6_all')")
    p.add_argument("--output-dir", default=str(ROOT / "outputs" / "replicate" / "smollm2_mix"))
    p.add_argument("--json-dir", default=str(ROOT / "docs" / "results"))
    p.add_argument("--objectives", nargs="+", default=None, metavar="LOSS",
                   help="compare online heads of these loss types (see the module docstring)")
    args = p.parse_args(argv)
    if not default_families(args):
        if args.objectives:
            p.error("--objectives compares losses on the default families (its likelihood references and its "
                    "output names are theirs); it takes no --families.")
        if not args.tag:
            p.error("--families other than the defaults needs a --tag, or its heads and JSON files would replace "
                    "the default suite's (e.g. --tag first_suite).")
    if args.objectives:
        if args.tag or args.protocols != ["online", "offline"]:
            p.error("--objectives trains online heads named by their loss: it takes no --tag or --protocols.")
        return objectives(args)

    out = Path(args.output_dir)
    per_seed, timings = {}, {}
    train_args = ([] if default_families(args)  # train on the same families (--train-args override)
                  else ["--dataset_name", suite(args, "train")]) + args.train_args
    for seed in args.seeds:
        heads = {}
        for protocol in args.protocols:
            heads[protocol], seconds = train_head(protocol, seed, out, train_args, args.tag)
            if not math.isnan(seconds):  # NaN: an existing head was reused (its time is that earlier run's)
                timings[f"train_{protocol}_seed{seed}"] = seconds
        start = time.time()
        summary = evaluate_heads(heads.values(), seed, out, args)
        timings[f"evaluate_seed{seed}"] = time.time() - start
        print((out / f"eval_seed{seed}" / "report.md").read_text(), flush=True)
        per_seed[seed] = {"summary": summary, "heads": {k: f"head:{v}" for k, v in heads.items()}}

    families = sorted(per_seed[args.seeds[0]]["summary"]["T=0"]["mean_reward_by_family"])
    fixed = {f: {t: statistics.fmean(per_seed[s]["summary"][f"T={t:g}"]["mean_reward_by_family"][f]
                                     for s in args.seeds) for t in TEMPS} for f in families}
    room = headroom(fixed)
    room["per_seed"] = {str(s): headroom({f: {t: per_seed[s]["summary"][f"T={t:g}"]["mean_reward_by_family"][f]
                                              for t in TEMPS} for f in families})["headroom"] for s in args.seeds}

    def ms(values):
        return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
                "per_seed": values}

    results = {}
    for protocol in args.protocols:
        hs = [per_seed[s]["summary"][per_seed[s]["heads"][protocol]] for s in args.seeds]
        beats_all = [all(h["win_rate_vs_fixed"][f"{t:g}"]["win_rate"] > 50 for t in TEMPS) for h in hs]
        result = {
            "method": f"AD-seq (LPO Eq. 10, {protocol}, stratified exploration), argmax selection, "
                      "SmolLM2-135M-Instruct (dequantised Q4_1 GGUF), CPU",
            "seeds": len(args.seeds), "protocol": protocol, "suite": f"smollm2_mix ({', '.join(args.families)})",
            "headroom": room["headroom"], "headroom_detail": room,
            "win_rate_vs_fixed": {f"{t:.1f}": statistics.fmean(h["win_rate_vs_fixed"][f"{t:g}"]["win_rate"] for h in hs)
                                  for t in TEMPS},
            "win_rate_vs_fixed_per_seed": {f"{t:.1f}": [{"win_rate": h["win_rate_vs_fixed"][f"{t:g}"]["win_rate"],
                                                         "ci95": h["win_rate_vs_fixed"][f"{t:g}"].get("ci95")}
                                                        for h in hs] for t in TEMPS},
            "beats_every_fixed_T_per_seed": beats_all,
            "mean_reward": ms([h["mean_reward"] for h in hs]),
            "mean_reward_by_family": {f: ms([h["mean_reward_by_family"][f] for h in hs]) for f in families},
            "mean_temperature_by_family": {f: statistics.fmean(h["mean_value_by_family"][f] for h in hs)
                                           for f in families},
            "mean_temperature_by_family_per_seed": {f: [h["mean_value_by_family"][f] for h in hs] for f in families},
            "fixed_mean_reward_by_family": {f: {f"{t:.1f}": v for t, v in row.items()} for f, row in fixed.items()},
            "settings": {"recipe": str(RECIPE.relative_to(ROOT)), "num_generations": args.num_generations,
                         "max_completion_length": args.max_completion_length, "train_args": args.train_args},
            "timings_seconds": timings,
            "command": " ".join(["python scripts/replicate_smollm2.py --seeds", *map(str, args.seeds)]
                                + (["--protocols", *args.protocols] if args.protocols != ["online", "offline"] else [])
                                + ([] if default_families(args) else ["--families", *args.families])
                                + (["--tag", args.tag] if args.tag else [])
                                + (["--train-args", *args.train_args] if args.train_args else [])),
        }
        suffix = ("" if protocol == "online" else f"_{protocol}") + (f"_{args.tag}" if args.tag else "")
        name = f"smollm2_mixed_seq{suffix}.json"
        Path(args.json_dir, name).write_text(json.dumps(result, indent=2) + "\n")
        results[protocol] = result
        print(json.dumps({k: result[k] for k in ("protocol", "headroom", "win_rate_vs_fixed",
                                                 "beats_every_fixed_T_per_seed", "mean_temperature_by_family")},
                         indent=1), flush=True)
    return results


if __name__ == "__main__":
    main()
