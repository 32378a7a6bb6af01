"""The baselines a trained head is held to in ``lpo-train evaluate``, as pure functions on per-prompt scores.

- **MeanShift**: one fixed value of the head's knob, the head's own mean chosen value on the evaluation
  prompts (off the grid if it falls there). A head that does no better than its own mean has learned a
  global shift, not a per-context choice.
- **Best fixed T (chosen on train)**: the grid temperature with the highest mean reward on a separate,
  training-side prompt set, scored on the held-out prompts. Without such a set it is chosen on the
  evaluation prompts themselves, which is optimistic for the baseline (it has seen the test).
- **Per-family oracle**: per prompt family, the best fixed temperature on the evaluation prompts; an
  upper bound for any head that chooses one temperature per family, not a fair baseline.

A prompt's score is the mean of its N valid rewards; win rates are per prompt (0.5 each on ties) with a
bootstrap interval, prompts without a valid score on either side left out (``metrics.paired_win_rate``).
"""

from __future__ import annotations

import math
from collections import defaultdict

from lpo_train.evaluation import metrics

MEANSHIFT = "meanshift"
KEYS = ("meanshift", "best_fixed_T", "per_family_oracle")


def item_scores(rewards: list[list[float]]) -> list[float]:
    """Per prompt: the mean of its valid rewards (NaN when none of its samples was scored)."""
    return [metrics.valid_mean(rs) for rs in rewards]


def mean_chosen_value(values: list[list[list[float]]], level: str) -> float:
    """A head's mean applied knob value over the evaluation (``values``: per prompt, per sample, per token).
    Token level: over every token; sequence level: over sequences (one decision each, whatever its length)."""
    if level == "sequence":
        applied = [seq[0] for samples in values for seq in samples if seq]
    else:
        applied = [v for samples in values for seq in samples for v in seq]
    if not applied:
        raise ValueError("The head applied no value on the evaluation prompts (every completion is empty): "
                         "MeanShift has nothing to average.")
    return metrics.mean(applied)


def meanshift_name(head: str, knob: str, value: float) -> str:
    """e.g. ``meanshift(head:outputs/h)=T0.53`` (``=top_p0.9`` for a head of another knob)."""
    return f"{MEANSHIFT}({head})=" + ("T" if knob == "temperature" else knob) + f"{value:g}"


def meanshift_setting(knob: str, value: float) -> str:
    return ("T" if knob == "temperature" else knob) + f"={value:g}"


def meanshift_value(values: list[list[list[float]]], level: str, knob: str) -> float:
    """MeanShift's fixed value: the mean rounded to 3 decimals (what runs is what the name says); an integer
    for top-k."""
    mean = mean_chosen_value(values, level)
    return float(round(mean)) if knob == "top_k" else round(mean, 3)


def family_means(items: list[float], families: list[str]) -> dict[str, float]:
    by_family = defaultdict(list)
    for fam, score in zip(families, items, strict=True):
        by_family[fam].append(score)
    return {f: metrics.valid_mean(v) for f, v in by_family.items()}


def best_temperature(mean_by_t: dict[float, float]) -> float:
    """The temperature with the highest mean reward (NaN means ignored; ties: the first in grid order)."""
    valid = {t: m for t, m in mean_by_t.items() if not math.isnan(m)}
    if not valid:
        raise ValueError("No fixed temperature has a valid mean reward: every reward was None/NaN.")
    return max(valid, key=lambda t: (valid[t], -list(mean_by_t).index(t)))


def per_family_oracle(items_by_t: dict[float, list[float]], families: list[str]
                      ) -> tuple[dict[str, float], list[float]]:
    """``(best T per family, the combined per-prompt scores)``: each prompt scored by the fixed temperature
    that is best on its family's evaluation prompts."""
    means = {t: family_means(items, families) for t, items in items_by_t.items()}
    best = {fam: best_temperature({t: means[t][fam] for t in items_by_t}) for fam in dict.fromkeys(families)}
    return best, [items_by_t[best[fam]][i] for i, fam in enumerate(families)]


def compare(head_items: list[float], baselines: dict[str, list[float]], n_boot: int, seed: int) -> dict:
    """Per baseline: the head's win rate over it with a 95 % interval and the invalid prompts left out;
    ``beats_every_baseline`` (win rate above 50 against each), ``loses_to`` (the rest) and
    ``beats_fair_baselines`` (every one but the per-family oracle, an upper bound)."""
    out = {key: metrics.paired_win_rate(head_items, items, n_boot=n_boot, seed=seed)
           for key, items in baselines.items()}
    loses = [key for key, c in out.items() if c["win_rate"] is None or c["win_rate"] <= 50.0]
    return {**out, "beats_every_baseline": not loses, "loses_to": loses,
            "beats_fair_baselines": not [k for k in loses if k != "per_family_oracle"]}


def verdict(head: str, comparison: dict, labels: dict[str, str]) -> str:
    """The one report line: does the head beat every baseline (win rate above 50 against each)."""
    def rate(key):
        r = comparison[key]["win_rate"]
        return "no valid prompt" if r is None else f"{r:.1f} %"

    if comparison["beats_every_baseline"]:
        keys = [k for k in labels if k in comparison]
        significant = sum((comparison[k]["ci95"][0] or 0) > 50 for k in keys)
        return (f"**{head} beats every baseline: yes** (win rate above 50 % against each; its 95 % interval is "
                f"above 50 against {significant} of {len(keys)})")
    lost = ", ".join(f"{labels[k]} ({rate(k)})" for k in comparison["loses_to"])
    fair = "yes" if comparison["beats_fair_baselines"] else "no"
    return (f"**{head} beats every baseline: no** (win rate at or below 50 % against {lost}); against the fair "
            f"baselines alone (all but the upper bound): {fair}")


def summarise_baselines(raw: dict[str, dict], rows: list[dict], temperatures: list[float], meanshift: dict[str, dict],
                        selection: dict | None, n_boot: int, seed: int) -> dict:
    """The three baselines and every head's win rates over them.

    ``raw``: per strategy, its per-prompt rewards (the grid ``T=<t>``, the heads and their MeanShift runs);
    ``meanshift``: per head, ``{"strategy", "knob", "value", "level"}`` of its MeanShift run (None when it has
    none); ``selection``: the training-side prompt set (``{"mean_reward": {t: mean}, "same_as_eval", ...}``)
    or None, in which case the best fixed T is chosen on the evaluation prompts and flagged optimistic."""
    families = [r.get("family") or "all" for r in rows]
    items = {name: item_scores(data["rewards"]) for name, data in raw.items()}
    grid = {t: items[f"T={t:g}"] for t in temperatures}
    on_train = selection is not None and not selection["same_as_eval"]
    means = selection["mean_reward"] if on_train else {t: metrics.valid_mean(grid[t]) for t in temperatures}
    best = best_temperature(means)
    oracle_t, oracle_items = per_family_oracle(grid, families)
    finite = lambda v: None if math.isnan(v) else v  # noqa: E731
    result = {
        "best_fixed_T": {
            "temperature": best, "strategy": f"T={best:g}", "chosen_on": "train" if on_train else "eval",
            "optimistic": not on_train, "mean_reward": finite(metrics.valid_mean(grid[best])),
            "selection_mean_reward": {f"{t:g}": finite(m) for t, m in means.items()},
            "selection_set": None if selection is None else {k: v for k, v in selection.items() if k != "mean_reward"}},
        "per_family_oracle": {
            "upper_bound": True, "temperature_by_family": oracle_t,
            "mean_reward": finite(metrics.valid_mean(oracle_items)),
            "mean_reward_by_family": {f: finite(m) for f, m in family_means(oracle_items, families).items()}},
        "meanshift": {head: ms and {**ms, "mean_reward": finite(metrics.valid_mean(items[ms["strategy"]]))}
                      for head, ms in meanshift.items()},
        "heads": {},
    }
    for head, ms in meanshift.items():
        against = {"meanshift": items[ms["strategy"]]} if ms else {}
        against |= {"best_fixed_T": grid[best], "per_family_oracle": oracle_items}
        comparison = compare(items[head], against, n_boot, seed)
        comparison["verdict"] = verdict(head, comparison, labels(result, head))
        result["heads"][head] = comparison
    return result


def labels(result: dict, head: str) -> dict[str, str]:
    """Report names of a head's baselines."""
    best, ms = result["best_fixed_T"], result["meanshift"].get(head)
    out = {"meanshift": f"MeanShift ({meanshift_setting(ms['knob'], ms['value'])})"} if ms else {}
    where = "chosen on train" if best["chosen_on"] == "train" else "chosen on eval, optimistic"
    return out | {"best_fixed_T": f"best fixed T={best['temperature']:g} ({where})",
                  "per_family_oracle": "per-family oracle (upper bound)"}
