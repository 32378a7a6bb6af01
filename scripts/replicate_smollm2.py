"""Replication (f): the (a) protocol on the real SmolLM2-135M-Instruct, on the ``smollm2_mix`` suite (CPU).

    python scripts/replicate_smollm2.py --seeds 0 1 2 --protocols online    # -> docs/results/smollm2_regression_seq.json
    python scripts/replicate_smollm2.py --seeds 0 1 2 --protocols offline   # -> docs/results/smollm2_regression_seq_offline.json
    python scripts/replicate_smollm2.py --seeds 0 1 2 --tag n6_all --train-args --num_generations 6 --pair_mode all

Per seed s:
1. A head with the shipped recipe (recipes/smollm2-135m/lpo_seq.yaml: sequence level, the default objective
   ``lpo_regression`` with beta 0.1, stratified exploration; ``--train-args --loss_type lpo ...`` for the
   paper's Eq. 10), online and/or offline (the paper's protocol: the units sampled once from the initial
   head), training seed s, on the suite's train split.
2. ``lpo-train evaluate`` on the held-out split (``smollm2_mix:eval``; ``--families`` picks other families):
   every fixed temperature of the grid and the heads (argmax), N samples per prompt, sampling seed s, with the
   heads' baselines: MeanShift (one fixed T at the head's mean chosen T), the best fixed T chosen on the
   train split (``selection_dataset_name smollm2_mix:train``, the grid run there with sampling seed s) and
   the per-family oracle (an upper bound).
The summary JSON per protocol (named by the objective: ``smollm2_regression_seq``; Eq. 10's keep their old
name ``smollm2_mixed_seq``) holds, per seed and averaged over seeds, the head's mean held-out reward against
every fixed T, MeanShift and the two other baselines, its win rates (95 % intervals) against each, the
per-family choices beside the per-family best T, and whether the aim is met (the head's mean reward above
every fixed T and MeanShift, averaged over seeds; its win rate above 50 against the best single fixed T of
the held-out runs on every seed). The headroom is measured on the fixed-temperature results of all seeds:
the mean over families of each family's best fixed T, minus the best single fixed T (families are balanced,
so the overall mean is the mean of the family means). Every step resumes from its outputs (evaluate checks a
fingerprint).

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
from lpo_train.heads import DEFAULT_GRID  # noqa: E402
from lpo_train.tasks.smollm2_mix import DEFAULT_FAMILIES  # noqa: E402
from lpo_train.utils.io import write_results_json  # noqa: E402

RECIPE = ROOT / "recipes" / "smollm2-135m" / "lpo_seq.yaml"
TEMPS = list(DEFAULT_GRID)
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


def eval_config(heads, seed: int, out: Path, args):
    """The held-out evaluation of ``heads``: every fixed T, the heads (argmax) and their baselines, the best fixed
    T chosen on the train split (sampling seed ``seed`` there too)."""
    from lpo_train.evaluation.harness import EvalConfig

    return EvalConfig(model_name_or_path="smollm2", dataset_name=suite(args, "eval"), reward_funcs=["smollm2_mix"],
                      temperatures=TEMPS, strategies=[f"head:{h}" for h in heads],
                      num_generations=args.num_generations, max_completion_length=args.max_completion_length,
                      generation_batch_size=128, answer_extractor="last_number", seed=seed, n_boot=1000,
                      selection_dataset_name=suite(args, "train"), output_dir=str(out / f"eval_seed{seed}"))


def evaluate_heads(heads, seed: int, out: Path, args) -> tuple[dict, dict]:
    """Every fixed temperature and the heads (argmax) on the held-out split, and the heads' baselines; cached
    runs are reused. Returns ``(the per-strategy summary, results.json's baselines)``."""
    from lpo_train.evaluation.harness import evaluate

    config = eval_config(heads, seed, out, args)
    summary = evaluate(config)
    return summary, json.loads((Path(config.output_dir) / "results.json").read_text())["baselines"]


def chosen_shares(head: str, seed: int, out: Path, args) -> dict[str, dict[str, float]]:
    """Per family: the share of held-out prompts on which the (argmax) head chose each grid T."""
    from lpo_train.evaluation.harness import _safe_name, load_rows

    rows = load_rows(eval_config([], seed, out, args))
    values = json.loads((out / f"eval_seed{seed}" / "strategies" / f"{_safe_name(head)}.json").read_text())["values"]
    if len(rows) != len(values):  # a prompt dropped as too long would shift the rows
        return {}
    counts: dict[str, dict[str, int]] = {}
    for row, samples in zip(rows, values):
        chosen = next((seq[0] for seq in samples if seq), None)
        if chosen is not None:
            fam = counts.setdefault(row.get("family") or "all", {})
            fam[f"{chosen:g}"] = fam.get(f"{chosen:g}", 0) + 1
    return {f: {t: n / sum(c.values()) for t, n in sorted(c.items(), key=lambda kv: float(kv[0]))}
            for f, c in counts.items()}


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
        per_seed[seed] = {"summary": evaluate_heads(heads.values(), seed, out, args)[0],
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
    write_results_json(Path(args.json_dir, "objectives_smollm2.json"), result, ROOT)
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
        summary, baselines = evaluate_heads(heads.values(), seed, out, args)
        timings[f"evaluate_seed{seed}"] = time.time() - start
        print((out / f"eval_seed{seed}" / "report.md").read_text(), flush=True)
        per_seed[seed] = {"summary": summary, "baselines": baselines,
                          "heads": {k: f"head:{v}" for k, v in heads.items()}}
    return summarise_runs(args, per_seed, timings, train_args)


def ms(values):
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "per_seed": values}


def _win(c: dict) -> dict:
    return {"win_rate": c["win_rate"], "ci95": c.get("ci95")}


def seed_record(seed: int, run: dict, protocol: str, out: Path, args) -> dict:
    """One seed of one protocol: the head against every fixed T and each baseline."""
    summary, base, head = run["summary"], run["baselines"], run["heads"][protocol]
    h, comp, meanshift = summary[head], base["heads"][head], base["meanshift"][head]
    fixed = {f"{t:.1f}": summary[f"T={t:g}"]["mean_reward"] for t in TEMPS}
    best_eval = max(TEMPS, key=lambda t: (fixed[f"{t:.1f}"], -t))  # the held-out best single fixed T
    best_train = base["best_fixed_T"]
    oracle = base["per_family_oracle"]
    families = sorted(h["mean_reward_by_family"])
    return {
        "seed": seed, "mean_reward": h["mean_reward"], "fixed_mean_reward": fixed,
        "meanshift": {"T": meanshift["value"], "mean_reward": meanshift["mean_reward"],
                      **_win(comp["meanshift"])},
        "best_single_fixed_T": {"T": best_eval, "chosen_on": "eval (the held-out runs themselves)",
                                "mean_reward": fixed[f"{best_eval:.1f}"],
                                **_win(h["win_rate_vs_fixed"][f"{best_eval:g}"])},
        "best_fixed_T_chosen_on_train": {"T": best_train["temperature"], "mean_reward": best_train["mean_reward"],
                                         "train_mean_reward": best_train["selection_mean_reward"],
                                         **_win(comp["best_fixed_T"])},
        "per_family_oracle": {"T_by_family": oracle["temperature_by_family"], "mean_reward": oracle["mean_reward"],
                              "mean_reward_by_family": oracle["mean_reward_by_family"], "upper_bound": True,
                              **_win(comp["per_family_oracle"])},
        "win_rate_vs_fixed": {f"{t:.1f}": _win(h["win_rate_vs_fixed"][f"{t:g}"]) for t in TEMPS},
        "beats_every_fixed_T": all(h["win_rate_vs_fixed"][f"{t:g}"]["win_rate"] > 50 for t in TEMPS),
        "beats_fair_baselines": comp["beats_fair_baselines"], "verdict": comp["verdict"],
        "mean_reward_by_family": h["mean_reward_by_family"],
        "mean_temperature_by_family": h["mean_value_by_family"],
        "chosen_T_share_by_family": chosen_shares(head, seed, out, args),
        "fixed_mean_reward_by_family": {f: {f"{t:.1f}": summary[f"T={t:g}"]["mean_reward_by_family"][f]
                                            for t in TEMPS} for f in families},
    }


def result_name(loss: str, protocol: str, tag: str) -> str:
    """``smollm2_regression_seq[_offline][_tag].json`` for lpo_regression; Eq. 10 (``lpo``) keeps the name of the
    earlier runs, ``smollm2_mixed_seq``."""
    stem = "smollm2_mixed_seq" if loss == "lpo" else f"smollm2_{loss.removeprefix('lpo_')}_seq"
    return stem + ("" if protocol == "online" else f"_{protocol}") + (f"_{tag}" if tag else "") + ".json"


def summarise_runs(args, per_seed: dict, timings: dict, train_args: list[str]) -> dict:
    """The summary JSON of each protocol (see the module docstring); returns them by protocol."""
    from lpo_train.train import parse_config

    out = Path(args.output_dir)
    config = parse_config(["--config", str(RECIPE), *train_args])
    families = sorted(per_seed[args.seeds[0]]["summary"]["T=0"]["mean_reward_by_family"])
    fixed = {f: {t: statistics.fmean(per_seed[s]["summary"][f"T={t:g}"]["mean_reward_by_family"][f]
                                     for s in args.seeds) for t in TEMPS} for f in families}
    room = headroom(fixed)
    room["per_seed"] = {str(s): headroom({f: {t: per_seed[s]["summary"][f"T={t:g}"]["mean_reward_by_family"][f]
                                              for t in TEMPS} for f in families})["headroom"] for s in args.seeds}

    results = {}
    for protocol in args.protocols:
        seeds = [seed_record(s, per_seed[s], protocol, out, args) for s in args.seeds]
        head = ms([r["mean_reward"] for r in seeds])
        fixed_means = {f"{t:.1f}": ms([r["fixed_mean_reward"][f"{t:.1f}"] for r in seeds]) for t in TEMPS}
        meanshift = ms([r["meanshift"]["mean_reward"] for r in seeds])
        above = {**{f"T={t}": head["mean"] > v["mean"] for t, v in fixed_means.items()},
                 "meanshift": head["mean"] > meanshift["mean"]}
        wins_best = [r["best_single_fixed_T"]["win_rate"] > 50 for r in seeds]
        result = {
            "method": f"AD-seq ({config.loss_type}, beta {config.beta:g}, {protocol}, {config.exploration} "
                      "exploration), argmax selection, SmolLM2-135M-Instruct (dequantised Q4_1 GGUF), CPU",
            "loss_type": config.loss_type, "beta": config.beta,
            "seeds": len(args.seeds), "seed_list": args.seeds, "protocol": protocol,
            "suite": f"smollm2_mix ({', '.join(args.families)})",
            "aim": {"mean_reward_above_every_fixed_T_and_meanshift": all(above.values()),
                    "mean_reward_above": above,
                    "win_rate_above_50_vs_best_single_fixed_T_every_seed": all(wins_best),
                    "win_rate_above_50_vs_best_single_fixed_T_per_seed": wins_best,
                    "met": all(above.values()) and all(wins_best)},
            "mean_reward": head, "fixed_mean_reward": fixed_means, "meanshift_mean_reward": meanshift,
            "best_fixed_T_chosen_on_train_mean_reward": ms([r["best_fixed_T_chosen_on_train"]["mean_reward"]
                                                            for r in seeds]),
            "per_family_oracle_mean_reward": ms([r["per_family_oracle"]["mean_reward"] for r in seeds]),
            "win_rate_vs_best_single_fixed_T": ms([r["best_single_fixed_T"]["win_rate"] for r in seeds]),
            "win_rate_vs_best_fixed_T_chosen_on_train": ms([r["best_fixed_T_chosen_on_train"]["win_rate"]
                                                            for r in seeds]),
            "win_rate_vs_meanshift": ms([r["meanshift"]["win_rate"] for r in seeds]),
            "win_rate_vs_per_family_oracle": ms([r["per_family_oracle"]["win_rate"] for r in seeds]),
            "win_rate_vs_fixed": {f"{t:.1f}": statistics.fmean(r["win_rate_vs_fixed"][f"{t:.1f}"]["win_rate"]
                                                               for r in seeds) for t in TEMPS},
            "beats_every_fixed_T_per_seed": [r["beats_every_fixed_T"] for r in seeds],
            "beats_fair_baselines_per_seed": [r["beats_fair_baselines"] for r in seeds],
            "mean_reward_by_family": {f: ms([r["mean_reward_by_family"][f] for r in seeds]) for f in families},
            "mean_temperature_by_family": {f: statistics.fmean(r["mean_temperature_by_family"][f] for r in seeds)
                                           for f in families},
            "fixed_mean_reward_by_family": {f: {f"{t:.1f}": v for t, v in row.items()} for f, row in fixed.items()},
            "headroom": room["headroom"], "headroom_detail": room,
            "per_seed": seeds,
            "settings": {"recipe": str(RECIPE.relative_to(ROOT)), "num_generations": args.num_generations,
                         "max_completion_length": args.max_completion_length, "train_args": train_args,
                         "held_out": f"{suite(args, 'eval')}, argmax heads",
                         "selection_set": f"{suite(args, 'train')} (the best fixed T chosen on train)"},
            "timings_seconds": timings,
            "command": " ".join(["python scripts/replicate_smollm2.py --seeds", *map(str, args.seeds)]
                                + (["--protocols", *args.protocols] if args.protocols != ["online", "offline"] else [])
                                + ([] if default_families(args) else ["--families", *args.families])
                                + (["--tag", args.tag] if args.tag else [])
                                + (["--train-args", *args.train_args] if args.train_args else [])),
        }
        name = result_name(config.loss_type, protocol, args.tag)
        write_results_json(Path(args.json_dir, name), result, ROOT)
        results[protocol] = result
        print(json.dumps({k: result[k] for k in ("protocol", "aim", "mean_reward", "meanshift_mean_reward",
                                                 "win_rate_vs_best_single_fixed_T", "mean_temperature_by_family")},
                         indent=1), flush=True)
        print(f"wrote {Path(args.json_dir, name)}", flush=True)
    return results


if __name__ == "__main__":
    main()
