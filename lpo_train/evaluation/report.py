"""From the strategies' raw results to the numbers of ``results.json`` and the tables of ``report.md``."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from lpo_train.evaluation import baselines, metrics
from lpo_train.utils.io import write_text_atomic

_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")


def extract_answer(text: str, how: str = "first_number") -> str | None:
    """A sample's answer for accuracy and maj@N: its first or last number, or the stripped text."""
    if how == "text":
        return text.strip() or None
    numbers = _NUMBER_RE.findall(text)
    if not numbers:
        return None
    return numbers[0] if how == "first_number" else numbers[-1]


def values_by_sentence_position(values: list[list[float]], starts: list[list[bool]], max_position: int
                                ) -> list[float | None]:
    """Mean applied value at each position within a sentence (0 = the sentence's first token),
    over all sequences; positions at or beyond ``max_position`` are pooled into the last slot."""
    sums, counts = [0.0] * max_position, [0] * max_position
    for vals, flags in zip(values, starts):
        pos = -1
        for v, is_start in zip(vals, flags):
            pos = 0 if is_start else pos + 1
            k = min(pos, max_position - 1)
            sums[k] += v
            counts[k] += 1
    return [s / c if c else None for s, c in zip(sums, counts)]


def task_metrics(data: dict, rows: list[dict], config) -> dict:
    """Accuracy and maj@N on the rows with an ``answer`` (a numeric one for the number extractors);
    ROUGE-L and SacreBLEU on the rows with a reference text. Each only when the suite has the column."""
    out = {}
    answered = [i for i, r in enumerate(rows) if str(r.get("answer") or "").strip()]
    if config.answer_extractor != "text":  # a number extractor can only match numeric gold answers
        answered = [i for i in answered if _NUMBER_RE.fullmatch(str(rows[i]["answer"]).strip())]
    if answered:
        gold = [str(rows[i]["answer"]).strip() for i in answered]
        votes = [[extract_answer(t, config.answer_extractor) for t in data["texts"][i]] for i in answered]
        out["accuracy"] = 100.0 * metrics.mean([a == g for g, vs in zip(gold, votes) for a in vs])
        out["maj_at_n"] = metrics.majority_at_n(votes, gold)
        out["num_answered"] = len(answered)
    col = config.reference_column
    referenced = [i for i, r in enumerate(rows) if str(r.get(col) or "").strip()]
    if referenced:
        predictions = [t for i in referenced for t in data["texts"][i]]
        references = [rows[i][col] for i in referenced for _ in data["texts"][i]]
        out["rouge_l"] = metrics.rouge_l(predictions, references)
        out["bleu"] = metrics.corpus_bleu(predictions, references)
    return out


def _finite(value: float | None) -> float | None:
    return None if value is None or not metrics.is_valid(value) else value


def summarise(raw: dict[str, dict], rows: list[dict], config) -> dict:
    """Per strategy: mean reward (overall and per family), win rate vs each fixed T with a
    bootstrap CI (items = prompts, a prompt's score = mean over its N valid rewards; 0.5 on ties),
    % non-greedy, 3-gram repeats, distinct-2, Self-BLEU over each prompt's N samples, mean
    applied value (per family, at sentence starts vs elsewhere, by position in the sentence),
    and accuracy / maj@N / ROUGE-L / SacreBLEU when the suite has answers / references.
    A sample no reward scored (NaN) is invalid: counted, left out of the means; a prompt with no valid
    sample is left out of the win rates (counted in their ``num_invalid``), never a loss for both."""
    families = [r.get("family") or "all" for r in rows]
    item = {name: baselines.item_scores(data["rewards"]) for name, data in raw.items()}
    out = {}
    for name, data in raw.items():
        values_by_family = defaultdict(list)
        for fam, vals in zip(families, data["values"]):
            values_by_family[fam].extend(v for seq in vals for v in seq)
        wins = {f"{t:g}": metrics.paired_win_rate(item[name], item[f"T={t:g}"], n_boot=config.n_boot, seed=config.seed)
                for t in config.temperatures}
        texts = data["texts"]
        start_values, other_values = [], []
        all_values = [seq for v in data["values"] for seq in v]
        all_starts = [seq for f in data["sentence_start"] for seq in f]
        for vals, flags in zip(all_values, all_starts):
            for v, is_start in zip(vals, flags):
                (start_values if is_start else other_values).append(v)
        rates = [w["win_rate"] for w in wins.values() if w["win_rate"] is not None]
        out[name] = {
            "mean_reward": _finite(metrics.valid_mean(item[name])),
            "mean_reward_by_family": {f: _finite(m) for f, m in baselines.family_means(item[name], families).items()},
            "num_invalid_rewards": sum(not metrics.is_valid(r) for rs in data["rewards"] for r in rs),
            "num_invalid_prompts": sum(not metrics.is_valid(s) for s in item[name]),
            "win_rate_vs_fixed": wins,
            "average_win_rate": metrics.mean(rates) if rates else None,
            "percent_non_greedy": metrics.percent_non_greedy([seq for vals in data["values"] for seq in vals]),
            "mean_value_by_family": {f: metrics.mean(v) if v else None for f, v in values_by_family.items()},
            # paper Fig. 5 (right): the value applied at a sentence's first token vs elsewhere
            "mean_value_sentence_start": metrics.mean(start_values) if start_values else None,
            "mean_value_other": metrics.mean(other_values) if other_values else None,
            "mean_value_by_sentence_position": values_by_sentence_position(all_values, all_starts,
                                                                           config.max_sentence_position),
            "repeat_3gram": metrics.ngram_repeat_rate([t for ts in texts for t in ts], 3),
            "distinct_2": metrics.distinct_n([t for ts in texts for t in ts], 2),
            "self_bleu": metrics.mean([metrics.self_bleu(ts) for ts in texts]) if config.num_generations > 1 else None,
            **task_metrics(data, rows, config),
        }
    return out


def _fmt(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _win(c: dict) -> str:
    low, high = c["ci95"]
    return f"{_fmt(c['win_rate'])} [{_fmt(low)}, {_fmt(high)}]"


def baseline_lines(result: dict) -> list[str]:
    """The report's baselines section: what each baseline is, a win-rate table, one verdict line per head."""
    best, oracle = result["best_fixed_T"], result["per_family_oracle"]
    if best["chosen_on"] == "train":
        sel = best["selection_set"]
        where = (f"chosen on the training-side prompt set ({sel['dataset_name']}, split {sel['dataset_split']}, seed "
                 f"{sel['dataset_seed']}; {sel['num_prompts']} prompts, {sel['num_shared_with_eval']} of them also in "
                 "the evaluation suite)")
    elif best["selection_set"] is not None:
        where = ("chosen on the evaluation prompts, **optimistic** for this baseline: the configured selection set "
                 "(selection_dataset_*) holds the same prompts as the evaluation suite")
    else:
        where = ("chosen on the evaluation prompts, **optimistic** for this baseline: no training-side selection set "
                 "was given (set selection_dataset_name / selection_dataset_split / selection_dataset_seed)")
    lines = ["", "## Baselines", "",
             f"- Best fixed T = {best['temperature']:g}, {where}; held-out mean reward "
             f"{_fmt(best['mean_reward'], '.3f')}.",
             "- Per-family oracle (an **upper bound**, not a fair baseline: the best fixed T of each family on the "
             "evaluation prompts): " + ", ".join(f"{f} T={t:g}" for f, t in oracle["temperature_by_family"].items())
             + f"; mean reward {_fmt(oracle['mean_reward'], '.3f')}.",
             "- MeanShift: one fixed value, the head's own mean chosen value on the evaluation prompts.", "",
             "| head | vs MeanShift | vs best fixed T | vs per-family oracle (upper bound) |", "|---|---|---|---|"]
    for head, comparison in result["heads"].items():
        ms = result["meanshift"][head]
        cells = [f"{_win(comparison['meanshift'])} ({baselines.meanshift_setting(ms['knob'], ms['value'])}, mean "
                 f"reward {_fmt(ms['mean_reward'], '.3f')})" if ms else "-",
                 f"{_win(comparison['best_fixed_T'])} (T={best['temperature']:g})",
                 _win(comparison["per_family_oracle"])]
        lines.append(f"| {head} | " + " | ".join(cells) + " |")
    lines += ["", "Win rate of the head over each baseline, per prompt (0.5 each on ties), with its 95 % bootstrap "
              "interval.", ""]
    return lines + [comparison["verdict"] for comparison in result["heads"].values()]


def write_report(summary: dict, config, path: Path, baseline_result: dict | None = None,
                 prompt_counts: dict | None = None) -> None:
    temps = [f"{t:g}" for t in config.temperatures]
    lines = [f"# Evaluation: {config.model_name_or_path} on {config.dataset_name}", "",
             f"N = {config.num_generations} samples per prompt, seed {config.seed}; win rates per prompt (mean of its "
             "N rewards), 0.5 each on ties, 95 % bootstrap intervals in results.json."]
    if prompt_counts and prompt_counts["num_dropped_too_long"]:
        lines.append(f"{prompt_counts['num_dropped_too_long']} of {prompt_counts['num_loaded']} prompts were longer "
                     f"than {prompt_counts['max_prompt_length']} tokens and were left out.")
    invalid = {n: s["num_invalid_rewards"] for n, s in summary.items() if s["num_invalid_rewards"]}
    if invalid:
        lines.append("Samples no reward scored (invalid, left out): "
                     + ", ".join(f"{n}: {k}" for n, k in invalid.items()) + ".")
    lines += ["", "| strategy | mean reward | " + " | ".join(f"win vs T={t}" for t in temps)
              + " | avg win | % non-greedy | 3-gram rep. % | distinct-2 | Self-BLEU |",
              "|---|---|" + "---|" * len(temps) + "---|---|---|---|---|"]
    for name, s in summary.items():
        wins = " | ".join(_fmt(s["win_rate_vs_fixed"][t]["win_rate"]) for t in temps)
        lines.append(f"| {name} | {_fmt(s['mean_reward'], '.3f')} | {wins} | {_fmt(s['average_win_rate'])} | "
                     f"{s['percent_non_greedy']:.0f} | {s['repeat_3gram']:.1f} | {s['distinct_2']:.3f} | "
                     f"{_fmt(s['self_bleu'])} |")
    optional = [(k, label) for k, label in [("accuracy", "accuracy %"), ("maj_at_n", f"maj@{config.num_generations} %"),
                                            ("rouge_l", "ROUGE-L"), ("bleu", "SacreBLEU")]
                if any(k in s for s in summary.values())]
    if optional:
        lines += ["", "| strategy | " + " | ".join(label for _, label in optional) + " |",
                  "|---|" + "---|" * len(optional)]
        for name, s in summary.items():
            lines.append(f"| {name} | " + " | ".join(_fmt(s.get(k), ".3f" if k == "rouge_l" else ".1f")
                                                     for k, _ in optional) + " |")
    adaptive = [n for n in summary if not n.startswith(("T=", baselines.MEANSHIFT))]
    if adaptive:
        fams = sorted(summary[adaptive[0]]["mean_value_by_family"])
        lines += ["", "Mean chosen temperature (knob value): per family; at sentence starts (the constrained "
                  "positions of a constrained story) vs elsewhere.", "",
                  "| strategy | " + " | ".join(fams) + " | sentence start | other |",
                  "|---|" + "---|" * (len(fams) + 2)]
        for name in adaptive:
            s = summary[name]
            cells = " | ".join(_fmt(s["mean_value_by_family"][f], ".2f") for f in sorted(s["mean_value_by_family"]))
            lines.append(f"| {name} | {cells} | {_fmt(s['mean_value_sentence_start'], '.2f')} | "
                         f"{_fmt(s['mean_value_other'], '.2f')} |")
    if baseline_result is not None:
        lines += baseline_lines(baseline_result)
    write_text_atomic(path, "\n".join(lines) + "\n")
