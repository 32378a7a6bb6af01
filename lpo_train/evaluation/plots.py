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
    """A short legend label: a head strategy (and its MeanShift baseline) shows the head's folder name, not its
    whole path."""
    if name.startswith("meanshift(head:") and ")=" in name:
        head, _, setting = name[len("meanshift("):].rpartition(")=")
        name = f"meanshift({label(head, 10 ** 6)})={setting}"
    elif name.startswith("head:"):
        path, _, selection = name[5:].rpartition(":") if name.endswith((":sample", ":argmax")) else (name[5:], "", "")
        name = f"head:{Path(path).name}" + (f":{selection}" if selection else "")
    return name if len(name) <= width else name[:width - 1] + "…"


def _adaptive(names, meanshift: bool = False) -> list[str]:
    """The strategies that choose their value (MeanShift runs, one fixed value each, only when asked)."""
    return [n for n in names if not n.startswith("T=") and (meanshift or not n.startswith("meanshift("))]


_STYLES = [(c, m, ls) for ls in ("--", ":", "-.") for c, m in zip(
    ("tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan"),
    ("s", "^", "D", "v", "P", "X", "*", "<", ">"))]


def style(i: int) -> dict:
    """One colour, marker and line style per strategy (blue and circles are the fixed grid's)."""
    color, marker, linestyle = _STYLES[i % len(_STYLES)]
    return {"color": color, "marker": marker, "linestyle": linestyle}


def save(fig, path: Path, dpi: int = 110) -> None:
    """Write the figure atomically (temp file + rename): an interrupted or disk-full run never leaves
    a truncated PNG under the final name."""
    from lpo_train.utils.io import atomic_path

    with atomic_path(path, keep_suffix=True) as tmp:  # <stem>.partial.png: matplotlib reads the format from it
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")


def plot_reward_vs_temperature(summary: dict, temperatures: list[float], path: Path) -> None:
    plt = _pyplot()
    families = sorted(next(iter(summary.values()))["mean_reward_by_family"])
    fig, axes = plt.subplots(1, len(families), figsize=(4 * len(families), 3.4), squeeze=False)
    for ax, fam in zip(axes[0], families):
        ax.plot(temperatures, [summary[f"T={t:g}"]["mean_reward_by_family"][fam] for t in temperatures],
                marker="o", color="tab:blue", label="fixed T")
        for i, name in enumerate(_adaptive(summary, meanshift=True)):
            st = style(i)
            value = summary[name]["mean_reward_by_family"][fam]
            ax.axhline(value, color=st["color"], linestyle=st["linestyle"], label=label(name))
            ax.plot([temperatures[-1]], [value], color=st["color"], marker=st["marker"], linestyle="none")
        ax.set(title=fam, xlabel="fixed temperature", ylabel="mean reward")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=7, frameon=False)
    fig.tight_layout()
    save(fig, path, 110)
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
            axes[i][j].set(title=f"{label(name, 30)} | {fam}", xlabel="temperature", ylabel="share of steps",
                           ylim=(0, 1))
            axes[i][j].title.set_fontsize(8)
    fig.tight_layout()
    save(fig, path, 100)
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
    for i, name in enumerate(methods):
        by_pos = summary[name]["mean_value_by_sentence_position"]
        xs = [j for j, v in enumerate(by_pos) if v is not None]
        left.plot(xs, [by_pos[j] for j in xs], label=label(name), **style(i))
    left.set(xlabel="token position within the sentence (0 = sentence start)", ylabel="mean chosen temperature",
             title="chosen temperature by position")
    left.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.25), frameon=False)
    width = 0.8 / 2
    for k, (key, legend) in enumerate([("mean_value_sentence_start", "sentence start (constrained)"),
                                      ("mean_value_other", "other positions")]):
        right.bar([i + k * width for i in range(len(methods))],
                  [summary[n][key] if summary[n][key] is not None else 0.0 for n in methods], width, label=legend)
    right.set_xticks([i + width / 2 for i in range(len(methods))], [label(n, 18) for n in methods], fontsize=7)
    right.set(ylabel="mean chosen temperature", title="constrained positions vs the rest")
    right.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    save(fig, path, 110)
    plt.close(fig)
    return True
