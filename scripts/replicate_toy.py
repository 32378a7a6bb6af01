"""Toy-world replications of the evaluation issue, several seeds each, with a summary JSON.

    python scripts/replicate_toy.py mixed_seq --seeds 0 1 2        # (a) -> docs/results/mixed_seq.json
    python scripts/replicate_toy.py repetition --seeds 0 1 2       # (b) -> docs/results/repetition_tok.json
    python scripts/replicate_toy.py constrained_tok --seeds 0 1 2  # (c) -> docs/results/constrained_tok.json
    python scripts/replicate_toy.py loss_ablation --seeds 0 1 2    # (d) -> docs/results/loss_ablation.json
    python scripts/replicate_toy.py rules --seeds 0 1 2            # (e) -> docs/results/rules.json
    python scripts/replicate_toy.py objectives --seeds 0 1 2       # losses compared -> docs/results/objectives_toy.json
    python scripts/replicate_toy.py joint_lora --seeds 0 1 2       # head + LoRA vs head only -> docs/results/joint_lora_toy.json
    python scripts/replicate_toy.py mixed_seq_regression --seeds 0 1 2   # (a), (b), (c) with the default objective
    python scripts/replicate_toy.py repetition_regression --seeds 0 1 2  #   lpo_regression -> docs/results/*_regression.json
    python scripts/replicate_toy.py constrained_tok_regression --seeds 0 1 2

Seed s means: the small toy LM pretrained with seed s (``toy:small:s``), the head trained with
seed s (its initialisation, training prompts and samples), held-out evaluation prompts drawn
with seed 4242 + s, sampling seed s. Each step is skipped when its output exists (a trained
head, a finished evaluation strategy), so an interrupted run resumes. One CPU thread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "toy"
from lpo_train.utils.io import write_results_json  # noqa: E402

REGRESSION = ["--loss_type", "lpo_regression", "--beta", "0.1"]
# name -> (train recipe or None, evaluation recipe, {head label: train overrides}[, evaluation overrides])
REPLICATIONS = {
    "mixed_seq": ("lpo_seq.yaml", "eval_mixed_seq.yaml", {"AD-seq (LPO)": []}),
    # the paper's Table 1 grid {0, .1, .2, .4, .6} (the recipes' default), and the wider default grid
    "repetition": ("lpo_tok_repetition.yaml", "eval_repetition.yaml", {"AD-tok (LPO)": []}),
    "repetition_wide_grid": ("lpo_tok_repetition.yaml", "eval_repetition.yaml", {"AD-tok (LPO)": ["--grid", "default"]},
                             ["--temperatures", "0", "0.2", "0.4", "0.6", "0.8", "1.0"]),
    "constrained_tok": ("lpo_tok.yaml", "eval_constrained_tok.yaml", {"AD-tok (LPO)": []}),
    # the same pairs for every loss: the first run builds the offline pairs file (with the
    # per-choice token log-probs Eq. 11 needs), the others read it
    "loss_ablation": ("lpo_seq_arith_offline.yaml", "eval_loss_ablation.yaml", {
        "Eq. 11 (lpo_latent, per token)": ["--loss_type", "lpo_latent", "--latent_form", "token"],
        "Eq. 11 (lpo_latent, per sequence)": ["--loss_type", "lpo_latent", "--latent_form", "sequence"],
        "Eq. 10 (lpo)": ["--loss_type", "lpo"],
        "NLL on chosen (nll_chosen)": ["--loss_type", "nll_chosen"],
    }),
    "rules": (None, "eval_rules.yaml", {}),
    # (a), (b), (c) with the library's default objective (lpo_regression, beta 0.1: the KL weight in reward units)
    # instead of the recipes' Eq. 10: the same recipes, prompts, exploration, budget and seeds
    "mixed_seq_regression": ("lpo_seq.yaml", "eval_mixed_seq.yaml", {"AD-seq (lpo_regression)": REGRESSION}),
    "repetition_regression": ("lpo_tok_repetition.yaml", "eval_repetition.yaml",
                              {"AD-tok (lpo_regression)": REGRESSION}),
    "constrained_tok_regression": ("lpo_tok.yaml", "eval_constrained_tok.yaml", {"AD-tok (lpo_regression)": REGRESSION}),
    # the objectives issue's toy comparison: the same recipe, prompts, exploration and seeds for the three
    # reward-based losses; the likelihood objective (no reward) fits recipes/toy/data/references.jsonl
    # (32 references of the same families, made with the seed-0 toy LM) instead of sampled responses
    "objectives": ("lpo_seq.yaml", "eval_mixed_seq.yaml", {
        "lpo": ["--loss_type", "lpo"],
        "lpo_latent": ["--loss_type", "lpo_latent"],
        "group_relative": ["--loss_type", "group_relative"],
        "likelihood": ["--loss_type", "likelihood", "--dataset_name", str(RECIPES / "data" / "references.jsonl"),
                       "--max_completion_length", "40", "--num_train_epochs", "4", "--learning_rate", "1e-2"],
    }),
    # Eq. 9 with a trainable LM (use_peft) vs the same recipe with the LM frozen (Eq. 9 = Eq. 10), the same
    # budget (prompts, N, steps); the joint head is evaluated on its own adapted LM
    "joint_lora": ("lpo_joint_lora.yaml", "eval_sentiment_joint.yaml", {
        "head only (frozen LM)": ["--loss_type", "lpo", "--use_peft", "false"],
        "head + LoRA (joint)": [],
    }),
}
SAMPLED_TOO = {"mixed_seq", "constrained_tok", "mixed_seq_regression", "constrained_tok_regression"}  # also evaluate the heads with sampled selection (paper Table 5)
OUT_JSON = {"mixed_seq": "mixed_seq.json", "repetition": "repetition_tok.json",
            "repetition_wide_grid": "repetition_tok_wide_grid.json",
            "constrained_tok": "constrained_tok.json", "loss_ablation": "loss_ablation.json", "rules": "rules.json",
            "objectives": "objectives_toy.json", "joint_lora": "joint_lora_toy.json",
            "mixed_seq_regression": "mixed_seq_regression.json", "repetition_regression": "repetition_tok_regression.json",
            "constrained_tok_regression": "constrained_tok_regression.json"}


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label).strip("_").lower()


def run_seed(name: str, seed: int, out: Path) -> tuple[dict, dict[str, str], dict | None]:
    """Train the head(s) of replication ``name`` for ``seed`` and evaluate; returns the
    evaluation summary, ``{label: strategy name}`` of the trained heads and results.json's ``baselines``
    (None without a head)."""
    from trl import TrlParser

    from lpo_train.evaluation.harness import EvalConfig, evaluate, load_rows
    from lpo_train.train import main as train_main

    train_recipe, eval_recipe, runs, *eval_overrides = REPLICATIONS[name]
    seed_dir = out / f"seed{seed}"
    heads = {}
    for label, overrides in runs.items():
        head_dir = seed_dir / _slug(label)
        if not (head_dir / "model.safetensors").exists():
            args = ["--config", str(RECIPES / train_recipe), "--model_name_or_path", f"toy:small:{seed}",
                    "--seed", str(seed), "--output_dir", str(head_dir), "--report_to", "none", *overrides]
            if name == "loss_ablation":
                args += ["--pairs_path", str(seed_dir / "pairs.parquet")]
            train_main(args)
        heads[label] = f"head:{head_dir}"
        if name in SAMPLED_TOO:
            heads[f"{label}, sampled T"] = f"head:{head_dir}:sample"
    args = ["--config", str(RECIPES / eval_recipe), "--model_name_or_path", f"toy:small:{seed}",
            "--seed", str(seed), "--dataset_seed", str(4242 + seed), "--output_dir", str(seed_dir / "eval")]
    if heads:  # the heads' baselines: the best fixed T is chosen on prompts drawn as the head's training ones
        args += ["--strategies", *heads.values(), "--selection_dataset_seed", str(seed)]
    for overrides in eval_overrides:
        args += overrides
    (config,) = TrlParser(dataclass_types=[EvalConfig]).parse_args_and_config(args)
    summary = evaluate(config)
    print((seed_dir / "eval" / "report.md").read_text())
    if name.startswith("constrained_tok"):
        add_constraint_first_win_rates(summary, load_rows(config), seed_dir / "eval" / "strategies", config.temperatures)
    results = json.loads((seed_dir / "eval" / "results.json").read_text())
    return summary, heads, results.get("baselines")


def add_constraint_first_win_rates(summary: dict, rows: list[dict], raw_dir: Path, temperatures) -> None:
    """The paper's ConstrainedStories win rate: per prompt, compare the mean constraint share of the
    N samples first and the mean story quality only on a tie (0.5 each on a full tie)."""
    from lpo_train.evaluation import metrics
    from lpo_train.evaluation.harness import _safe_name
    from lpo_train.tasks.toy import constrained_parts

    def items(name):
        texts = json.loads((raw_dir / f"{_safe_name(name)}.json").read_text())["texts"]
        out = []
        for row, samples in zip(rows, texts):
            parts = [constrained_parts(t, row["starter"]) for t in samples]
            out.append((statistics.fmean(c for c, _ in parts), statistics.fmean(q for _, q in parts)))
        return out  # tuples compare lexicographically: constraint first, then quality

    scores = {name: items(name) for name in summary}
    for name, s in summary.items():
        s["constraint_first_win_rate_vs_fixed"] = {
            f"{t:g}": {"win_rate": metrics.win_rate(scores[name], scores[f"T={t:g}"])} for t in temperatures}


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "per_seed": values}


def strategy_labels(summary: dict, heads: dict[str, str]) -> dict[str, str]:
    """Per strategy of one seed's summary, its seed-independent label: a head's label, ``meanshift(<label>)``
    for a head's MeanShift run (its name holds the head's path and the seed's own mean value:
    ``meanshift(head:/s0/h)=T0.53``), the name itself for the rest."""
    from lpo_train.evaluation.baselines import MEANSHIFT

    by_spec = {spec: label for label, spec in heads.items()}
    out = {}
    for key in summary:
        if key.startswith(MEANSHIFT + "("):
            spec = key[len(MEANSHIFT) + 1:].rpartition(")=")[0]
            out[key] = f"{MEANSHIFT}({by_spec.get(spec, spec)})"
        else:
            out[key] = by_spec.get(key, key)
    return out


def aggregate_baselines(per_seed: list[tuple]) -> dict | None:
    """Per head label: its MeanShift value, the best fixed T chosen on the training-side set and the head's win
    rates over each baseline (with intervals), per seed; None when no seed has baselines."""
    seeds = [(heads, rest[0]) for _, heads, *rest in per_seed if rest and rest[0]]
    if len(seeds) < len(per_seed) or not seeds:
        return None
    out = {"best_fixed_T": [b["best_fixed_T"]["temperature"] for _, b in seeds],
           "best_fixed_T_chosen_on": [b["best_fixed_T"]["chosen_on"] for _, b in seeds],
           "per_family_oracle_T": [b["per_family_oracle"]["temperature_by_family"] for _, b in seeds],
           "per_family_oracle_mean_reward": _mean_std([b["per_family_oracle"]["mean_reward"] for _, b in seeds]),
           "heads": {}}
    for label in seeds[0][0]:
        rows = [(b["heads"][heads[label]], b["meanshift"].get(heads[label])) for heads, b in seeds]
        entry = {"meanshift_value": [ms and ms["value"] for _, ms in rows],
                 "meanshift_mean_reward": _mean_std([ms and ms["mean_reward"] for _, ms in rows]),
                 "beats_every_baseline": [c["beats_every_baseline"] for c, _ in rows],
                 "beats_fair_baselines": [c["beats_fair_baselines"] for c, _ in rows]}
        for key in ("meanshift", "best_fixed_T", "per_family_oracle"):
            if all(key in c for c, _ in rows):
                entry[f"win_rate_vs_{key}"] = {
                    "mean": statistics.fmean(c[key]["win_rate"] for c, _ in rows),
                    "per_seed": [{"win_rate": c[key]["win_rate"], "ci95": c[key]["ci95"]} for c, _ in rows]}
        out["heads"][label] = entry
    return out


def aggregate(name: str, per_seed: list[tuple], seeds: list[int]) -> dict:
    """Mean ± std over seeds of each strategy's headline metrics (heads under their labels, their MeanShift
    runs as ``meanshift(<label>)`` with each seed's value in ``meanshift_value``). ``per_seed``: per seed
    ``(summary, heads[, baselines])`` as run_seed returns."""
    fields = ["mean_reward", "average_win_rate", "percent_non_greedy", "repeat_3gram", "self_bleu", "distinct_2",
              "mean_value_sentence_start", "mean_value_other", "accuracy", "maj_at_n"]
    by_label = []
    for summary, heads, *_ in per_seed:
        labels = strategy_labels(summary, heads)
        by_label.append({labels[key]: (key, data) for key, data in summary.items()})
    strategies = {}
    for label in by_label[0]:
        missing = [s for s, entries in zip(seeds, by_label) if label not in entries]
        if missing:
            raise KeyError(f"{label!r} is in seed {seeds[0]}'s evaluation but not in seed(s) {missing}'s.")
        per = [entries[label][1] for entries in by_label]
        entry = {f: _mean_std([s.get(f) for s in per]) for f in fields if any(s.get(f) is not None for s in per)}
        for key in ("win_rate_vs_fixed", "constraint_first_win_rate_vs_fixed"):
            if key in per[0]:
                entry[key] = {t: _mean_std([s[key][t]["win_rate"] for s in per]) for t in per[0][key]}
        families = per[0]["mean_reward_by_family"]
        entry["mean_reward_by_family"] = {f: _mean_std([s["mean_reward_by_family"][f] for s in per]) for f in families}
        entry["mean_value_by_family"] = {f: _mean_std([s["mean_value_by_family"][f] for s in per])
                                         for f in per[0]["mean_value_by_family"]}
        if label.startswith("meanshift("):
            entry["meanshift_strategy"] = [entries[label][0] for entries in by_label]
        strategies[label] = entry
    result = {"replication": name, "seeds": len(seeds), "seed_list": seeds, "strategies": strategies}
    baselines = aggregate_baselines(per_seed)
    if baselines is not None:
        result["baselines"] = baselines
    return result


def headline(name: str, agg: dict) -> dict:
    """The issue's required top-level fields, from the aggregated strategies."""
    s = agg["strategies"]
    fmt = lambda t: f"{float(t):.1f}"  # noqa: E731  "0" -> "0.0"
    label = next(iter(REPLICATIONS[name][2]), None)  # the replication's (first) head
    objective = "lpo_regression" if name.endswith("_regression") else "LPO, Eq. 10"
    if name.startswith("mixed_seq"):
        head = s[label]
        return {"method": f"AD-seq ({objective}), argmax selection",
                "win_rate_vs_fixed": {fmt(t): v["mean"] for t, v in head["win_rate_vs_fixed"].items()},
                "win_rate_vs_fixed_std": {fmt(t): v["std"] for t, v in head["win_rate_vs_fixed"].items()},
                "mean_temperature_by_family": {f: v["mean"] for f, v in head["mean_value_by_family"].items()}}
    if name.startswith("constrained_tok"):
        head = s[label]
        return {"method": f"AD-tok ({objective}), argmax selection",
                "mean_temperature_constrained": head["mean_value_sentence_start"]["mean"],
                "mean_temperature_other": head["mean_value_other"]["mean"],
                "win_rate_vs_fixed": {fmt(t): v["mean"] for t, v in head["win_rate_vs_fixed"].items()},
                "constraint_first_win_rate_vs_fixed": {
                    fmt(t): v["mean"] for t, v in head["constraint_first_win_rate_vs_fixed"].items()}}
    if name.startswith("repetition"):
        head, greedy = s[label], s["T=0"]
        return {"method": f"AD-tok ({objective}), reward -(3-gram repeats), argmax selection",
                "repeat_3gram_percent": {"AD-tok": head["repeat_3gram"]["mean"], "greedy": greedy["repeat_3gram"]["mean"]},
                "percent_non_greedy": head["percent_non_greedy"]["mean"]}
    if name == "loss_ablation":
        return {"mean_reward": {k: v["mean_reward"]["mean"] for k, v in s.items()},
                "mean_temperature": {k: v["mean_value_by_family"]["arith"]["mean"] for k, v in s.items()
                                     if v["mean_value_by_family"]["arith"] is not None}}
    if name in ("objectives", "joint_lora"):
        fixed = {k: v["mean_reward"]["mean"] for k, v in s.items() if k.startswith("T=")}
        best = max(fixed, key=fixed.get)
        return {"seeds": agg["seeds"], "best_fixed_temperature": best,
                "mean_reward": {k: v["mean_reward"]["mean"] for k, v in s.items()},
                "win_rate_vs_best_fixed": {k: v["win_rate_vs_fixed"][best.removeprefix("T=")]["mean"]
                                           for k, v in s.items() if "win_rate_vs_fixed" in v
                                           and best.removeprefix("T=") in v["win_rate_vs_fixed"]}}
    if name == "rules":
        return {"mean_reward": {k: v["mean_reward"]["mean"] for k, v in s.items()},
                "self_bleu": {k: v["self_bleu"]["mean"] for k, v in s.items()}}
    return {}


def markdown_table(result: dict) -> str:
    """The aggregated strategies as a markdown table, mean ± std over the seeds."""
    strategies = result["strategies"]
    first = next(iter(strategies.values()))
    temps = list(first["win_rate_vs_fixed"])
    extra = [k for k in ("accuracy", "maj_at_n", "repeat_3gram", "percent_non_greedy", "self_bleu")
             if any(k in s for s in strategies.values())]
    ms = lambda v, f=".1f": "-" if v is None else f"{v['mean']:{f}} ± {v['std']:{f}}"  # noqa: E731
    lines = ["| strategy | mean reward | " + " | ".join(f"win vs T={t}" for t in temps) + " | avg win | "
             + " | ".join(extra) + " |", "|---|---|" + "---|" * (len(temps) + 1 + len(extra))]
    for name, s in strategies.items():
        lines.append(f"| {name} | {ms(s['mean_reward'], '.3f')} | "
                     + " | ".join(f"{s['win_rate_vs_fixed'][t]['mean']:.1f}" for t in temps)
                     + f" | {ms(s['average_win_rate'])} | " + " | ".join(ms(s.get(k)) for k in extra) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("replication", choices=sorted(REPLICATIONS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--output-dir", default=None, help="default: outputs/replicate/<replication>")
    p.add_argument("--json", default=None, help="default: docs/results/<replication's file>")
    p.add_argument("--table-only", action="store_true", help="print the markdown table of an existing JSON")
    args = p.parse_args(argv)
    path = Path(args.json or ROOT / "docs" / "results" / OUT_JSON[args.replication])
    if args.table_only:
        print(markdown_table(json.loads(path.read_text())))
        return {}
    import torch

    torch.set_num_threads(1)
    out = Path(args.output_dir or ROOT / "outputs" / "replicate" / args.replication)
    per_seed = [run_seed(args.replication, s, out) for s in args.seeds]
    agg = aggregate(args.replication, per_seed, args.seeds)
    result = {**headline(args.replication, agg), **agg}
    write_results_json(path, result, ROOT)
    print(markdown_table(result))
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
