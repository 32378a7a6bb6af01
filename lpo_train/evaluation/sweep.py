"""Fixed-temperature sweep: mean reward per task family at each temperature.

It answers the question adaptive decoding exists for: is there one temperature that is
best everywhere, or does the best temperature depend on the task?
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

from lpo_train.decoding import FixedTemperature
from lpo_train.heads import DEFAULT_GRID
from lpo_train.utils.io import write_text_atomic

# The default grid and one value above it: the sweep looks for the best fixed T, and 1.2 shows whether the
# reward still rises past the grid's top (an optimum at 1.0 would otherwise look like an edge effect).
DEFAULT_TEMPERATURES = (*DEFAULT_GRID, 1.2)


def sweep_temperatures(model, tokenizer, rows: list[dict], reward_fn, temperatures=DEFAULT_TEMPERATURES,
                       num_generations: int = 4, max_completion_length: int = 64, seed: int = 0,
                       generation_batch_size: int = 256
                       ) -> dict[str, dict[float, float]]:
    """``{family: {T: mean reward}}`` over ``rows`` (each with ``prompt`` and ``family``);
    ``reward_fn`` has TRL's signature and receives every dataset column."""
    from lpo_train.evaluation.harness import EvalConfig, run_strategy

    config = EvalConfig(num_generations=num_generations, max_completion_length=max_completion_length, seed=seed,
                        generation_batch_size=generation_batch_size)
    table: dict[str, dict[float, float]] = defaultdict(dict)
    for t in temperatures:
        raw = run_strategy(model, tokenizer, rows, FixedTemperature(t), {}, [reward_fn], [1.0], config)
        by_family = defaultdict(list)
        for row, rewards in zip(rows, raw["rewards"]):
            by_family[row["family"]].extend(rewards)
        for fam, rs in by_family.items():
            table[fam][float(t)] = sum(rs) / len(rs)
    return dict(table)


def mix_gap(table: dict[str, dict[float, float]], families=("arith", "story")) -> dict:
    """Best single fixed T on the equal mix of ``families`` vs the best T chosen per family."""
    temps = sorted(table[families[0]])
    mix = {t: statistics.fmean(table[f][t] for f in families) for t in temps}
    best_single = max(temps, key=mix.get)
    oracle = statistics.fmean(max(table[f].values()) for f in families)
    return {"best_T_per_family": {f: max(temps, key=table[f].get) for f in families},
            "best_single_T": best_single, "best_single_reward": mix[best_single],
            "per_family_best_reward": oracle, "margin": oracle - mix[best_single]}


def aggregate(tables: list[dict[str, dict[float, float]]]) -> dict[str, dict[float, tuple[float, float]]]:
    """Mean and standard deviation across seeds (None for one seed), per family and temperature."""
    out = {}
    for fam in tables[0]:
        out[fam] = {}
        for t in tables[0][fam]:
            vals = [tb[fam][t] for tb in tables]
            out[fam][t] = (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None)
    return out


def format_table(agg: dict[str, dict[float, tuple[float, float]]]) -> str:
    temps = sorted(next(iter(agg.values())))
    lines = ["| family | " + " | ".join(f"T={t:g}" for t in temps) + " |",
             "|---|" + "---|" * len(temps)]
    for fam, row in agg.items():
        best = max(temps, key=lambda t: row[t][0])
        cells = [(f"**{row[t][0]:.3f}**" if t == best else f"{row[t][0]:.3f}")
                 + (f" ± {row[t][1]:.3f}" if row[t][1] is not None else "") for t in temps]
        lines.append(f"| {fam} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_sweep(agg, path: str | Path, title: str = "Mean reward vs fixed temperature") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for fam, row in agg.items():
        temps = sorted(row)
        spread = [row[t][1] for t in temps]
        ax.errorbar(temps, [row[t][0] for t in temps], yerr=None if None in spread else spread,
                    marker="o", capsize=3, label=fam)
    ax.set(xlabel="temperature", ylabel="mean reward", title=title)
    ax.legend()
    fig.tight_layout()
    from lpo_train.evaluation.plots import save

    save(fig, path, 120)
    plt.close(fig)


def save_sweep(tables: list[dict], seeds: list[int], output_dir: str | Path, meta: dict) -> dict:
    """Write ``sweep.json`` and ``sweep.png``; returns the summary that was written."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    agg = aggregate(tables)
    gaps = [mix_gap(t) for t in tables] if all({"arith", "story"} <= set(t) for t in tables) else []
    margins = [g["margin"] for g in gaps]
    summary = {
        **meta,
        "seeds": seeds,
        "per_seed": [{f: {str(t): v for t, v in row.items()} for f, row in tb.items()} for tb in tables],
        "mean": {f: {str(t): m for t, (m, _) in row.items()} for f, row in agg.items()},
        "std": {f: {str(t): s for t, (_, s) in row.items()} for f, row in agg.items()},
        "mix_gap_per_seed": gaps,
        "mix_margin_mean": statistics.fmean(margins) if margins else None,
        "mix_margin_std": statistics.stdev(margins) if len(margins) > 1 else None,
    }
    write_text_atomic(output_dir / "sweep.json", json.dumps(summary, indent=2))
    plot_sweep(agg, output_dir / "sweep.png")
    return summary
