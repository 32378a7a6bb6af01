"""The evaluation's figures (PNG): reward vs fixed T (per family, adaptive methods as lines),
the chosen-temperature histogram per family (paper Fig. 4), and the mean chosen temperature by
position within a sentence, sentence starts (the constrained positions) vs the rest (Fig. 5 right)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def label(name: str, width: int = 40) -> str:
    """A short legend label: a head strategy shows its folder's name, not its whole path."""
    if name.startswith("head:"):
        path, _, selection = name[5:].rpartition(":") if name.endswith((":sample", ":argmax")) else (name[5:], "", "")
        name = f"head:{Path(path).name}" + (f":{selection}" if selection else "")
    return name if len(name) <= width else name[:width - 1] + "…"


def _adaptive(names) -> list[str]:
    return [n for n in names if not n.startswith("T=")]


def plot_reward_vs_temperature(summary: dict, temperatures: list[float], path: Path) -> None:
    plt = _pyplot()
    families = sorted(next(iter(summary.values()))["mean_reward_by_family"])
    fig, axes = plt.subplots(1, len(families), figsize=(4 * len(families), 3.2), squeeze=False)
    for ax, fam in zip(axes[0], families):
        ax.plot(temperatures, [summary[f"T={t:g}"]["mean_reward_by_family"][fam] for t in temperatures],
                marker="o", label="fixed T")
        for name in _adaptive(summary):
            ax.axhline(summary[name]["mean_reward_by_family"][fam], linestyle="--", label=label(name))
        ax.set(title=fam, xlabel="temperature", ylabel="mean reward")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_value_histograms(raw: dict, rows: list[dict], path: Path) -> bool:
    """Paper Fig. 4: the applied temperature (knob value) per task family, for each method that
    chooses it (fixed temperatures are left out). Returns whether a figure was written."""
    methods = _adaptive(raw)
    if not methods:
        return False
    plt = _pyplot()
    families = sorted({r.get("family") or "all" for r in rows})
    fig, axes = plt.subplots(len(methods), len(families), figsize=(3.4 * len(families), 2.6 * len(methods)),
                             squeeze=False)
    for i, name in enumerate(methods):
        for j, fam in enumerate(families):
            vals = [v for row, samples in zip(rows, raw[name]["values"]) if (row.get("family") or "all") == fam
                    for seq in samples for v in seq]
            axes[i][j].hist(vals, bins=[x / 10 - 0.05 for x in range(0, 15)], weights=[1 / max(len(vals), 1)] * len(vals))
            axes[i][j].set(title=f"{label(name, 30)} | {fam}", xlabel="temperature", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_value_by_position(summary: dict, path: Path) -> bool:
    """Paper Fig. 5 (right): left, the mean chosen temperature at each token position within a
    sentence (position 0 = the sentence's first token, where a constraint like "start every
    sentence with X" applies); right, sentence starts vs all other positions, per method.
    Fixed temperatures are left out. Returns whether a figure was written."""
    methods = [n for n in _adaptive(summary) if summary[n]["mean_value_sentence_start"] is not None]
    if not methods:
        return False
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name in methods:
        by_pos = summary[name]["mean_value_by_sentence_position"]
        xs = [i for i, v in enumerate(by_pos) if v is not None]
        left.plot(xs, [by_pos[i] for i in xs], marker=".", label=label(name))
    left.set(xlabel="token position within the sentence (0 = sentence start)", ylabel="mean chosen temperature",
             title="chosen temperature by position")
    left.legend(fontsize=7)
    width = 0.8 / 2
    for k, (key, legend) in enumerate([("mean_value_sentence_start", "sentence start (constrained)"),
                                      ("mean_value_other", "other positions")]):
        right.bar([i + k * width for i in range(len(methods))],
                  [summary[n][key] if summary[n][key] is not None else 0.0 for n in methods], width, label=legend)
    right.set_xticks([i + width / 2 for i in range(len(methods))], [label(n, 18) for n in methods], fontsize=7)
    right.set(ylabel="mean chosen temperature", title="constrained positions vs the rest")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
