"""``lpo-train evaluate``: decoding strategies x a prompt suite, N samples each, one engine.

Each strategy's raw results (per prompt: the N rewards, texts, applied values) are written to
``output_dir/strategies/<name>.json`` as soon as it finishes, so an interrupted run resumes
without recomputing finished strategies. Then ``results.json``, ``report.md`` and plots.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lpo_train.decoding import EDT, AdaptiveDecoderRule, Dynatemp, FixedTemperature, SamplingParams, generate
from lpo_train.evaluation import metrics


def _help(text, default=None, **kw):
    return field(default=default, metadata={"help": text}, **kw)


@dataclass
class EvalConfig:
    model_name_or_path: str = _help("The LM: a path, a Hub id, 'toy:small' or 'smollm2'.", "toy:small")
    dataset_name: str = _help("Prompt suite: 'toy', a .json/.jsonl/.parquet file or a Hub dataset id.", "toy")
    dataset_split: str = _help("Split of a Hub dataset.", "test")
    toy_families: list[str] = _help("Toy families when dataset_name is 'toy'.", None)
    toy_prompts_per_family: int = _help("Toy prompts per family.", 32)
    toy_seed: int = _help("Seed of the toy prompts (keep it apart from the training prompts' seed).", 4242)
    reward_funcs: list[str] = _help("Rewards, as in training: names, 'module:function' or model paths.", None)
    reward_weights: list[float] | None = _help("One weight per reward function.", None)
    temperatures: list[float] = _help("The fixed-temperature grid every method is compared with.", None)
    strategies: list[str] = _help(
        "Extra strategies: 'edt:T0=1,theta=1', 'dynatemp:temp=0.8,range=0.3', 'min_p:0.1' (at T=1), "
        "'head:PATH' or 'head:PATH:sample' (a trained AdaptiveDecoder head).", None)
    num_samples: int = _help("Samples per prompt (N).", 4)
    max_new_tokens: int = _help("Maximum new tokens per sample.", 64)
    batch_size: int = _help("Rows (prompt x sample) per forward batch.", 256)
    seed: int = _help("Sampling seed (per-row seeds derive from it).", 0)
    n_boot: int = _help("Bootstrap resamples for the win-rate confidence intervals.", 1000)
    output_dir: str = _help("Where results.json, report.md, plots and per-strategy files go.", "outputs/eval")

    def __post_init__(self):
        self.toy_families = self.toy_families or ["arith", "story"]
        self.reward_funcs = self.reward_funcs or (["toy"] if self.dataset_name == "toy" else [])
        self.temperatures = [float(t) for t in (self.temperatures or [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])]
        self.strategies = self.strategies or []
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}.")
        for spec in self.strategies:
            parse_strategy(spec)  # fail early, before any model loads


def _kv(text: str) -> dict[str, float]:
    out = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        out[key.strip()] = float(value)
    return out


def parse_strategy(spec: str) -> tuple[str, dict]:
    """``(kind, options)`` of a strategy string; raises a clear error on a malformed one."""
    kind, _, rest = spec.partition(":")
    try:
        if kind == "edt":
            return kind, {"T0": 1.0, "theta": 1.0, **_kv(rest)}
        if kind == "dynatemp":
            opts = {"temp": 0.8, "range": 0.3, "exponent": 1.0, **_kv(rest)}
            return kind, opts
        if kind == "min_p":
            return kind, {"min_p": float(rest)}
        if kind == "head":
            path, _, selection = rest.partition(":")
            if not path:
                raise ValueError
            return kind, {"path": path, "selection": selection or "argmax"}
    except ValueError:
        pass
    raise ValueError(f"Cannot read strategy {spec!r}; use e.g. 'edt:T0=1,theta=1', 'dynatemp:temp=0.8,range=0.3', "
                     "'min_p:0.1', 'head:PATH' or 'head:PATH:sample'.")


def build_rules(config: EvalConfig, model) -> dict[str, tuple]:
    """``{name: (rule, sampling overrides)}`` for the fixed grid and every extra strategy."""
    from lpo_train.heads import AdaptiveDecoderHead

    rules = {f"T={t:g}": (FixedTemperature(t), {}) for t in config.temperatures}
    for spec in config.strategies:
        kind, o = parse_strategy(spec)
        if kind == "edt":
            rules[spec] = (EDT(o["T0"], o["theta"], o.get("N", 0.8)), {})
        elif kind == "dynatemp":
            rules[spec] = (Dynatemp(o["temp"], o["range"], o["exponent"]), {})
        elif kind == "min_p":
            rules[spec] = (FixedTemperature(1.0), {"min_p": o["min_p"]})
        else:
            head = AdaptiveDecoderHead.from_pretrained(o["path"])
            rules[spec] = (AdaptiveDecoderRule(head, o["selection"], model=model), {})
    return rules


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name)


def run_strategy(model, tokenizer, rows, rule, overrides, funcs, weights, config: EvalConfig) -> dict:
    from lpo_train.rewards import score_traces

    n = config.num_samples
    traces = generate(model, tokenizer, [r["prompt"] for r in rows], rule,
                      SamplingParams(max_new_tokens=config.max_new_tokens, num_samples=n, seed=config.seed,
                                     batch_size=config.batch_size, **overrides))
    total, _ = score_traces(funcs, weights, rows, traces)
    starts = [sentence_starts(tokenizer, t.token_ids) for t in traces]
    return {"rewards": [total[i * n:(i + 1) * n].tolist() for i in range(len(rows))],
            "texts": [[traces[i * n + s].text for s in range(n)] for i in range(len(rows))],
            "values": [[traces[i * n + s].values for s in range(n)] for i in range(len(rows))],
            "sentence_start": [starts[i * n:(i + 1) * n] for i in range(len(rows))]}


def sentence_starts(tokenizer, token_ids: list[int]) -> list[bool]:
    """Per generated token: does it open a sentence (first token, or after one ending in . ! ?)."""
    pieces = tokenizer.batch_decode([[t] for t in token_ids])
    return [i == 0 or pieces[i - 1].rstrip().endswith((".", "!", "?")) for i in range(len(pieces))]


def summarise(raw: dict[str, dict], rows: list[dict], config: EvalConfig) -> dict:
    """Per strategy: mean reward (overall and per family), win rate vs each fixed T with a
    bootstrap CI (items = prompts, a prompt's score = mean over its N samples; 0.5 on ties),
    % non-greedy, distinct-2, Self-BLEU over each prompt's N samples, mean applied value."""
    families = [r.get("family") or "all" for r in rows]
    item = {name: [metrics.mean(rs) for rs in data["rewards"]] for name, data in raw.items()}
    out = {}
    for name, data in raw.items():
        by_family = defaultdict(list)
        values_by_family = defaultdict(list)
        for fam, score, vals in zip(families, item[name], data["values"]):
            by_family[fam].append(score)
            values_by_family[fam].extend(v for seq in vals for v in seq)
        wins = {}
        for t in config.temperatures:
            base = item[f"T={t:g}"]
            low, high = metrics.bootstrap_ci(item[name], base, n_boot=config.n_boot, seed=config.seed)
            wins[f"{t:g}"] = {"win_rate": metrics.win_rate(item[name], base), "ci95": [low, high]}
        texts = data["texts"]
        start_values, other_values = [], []
        for vals, flags in zip((seq for v in data["values"] for seq in v),
                               (seq for f in data["sentence_start"] for seq in f)):
            for v, is_start in zip(vals, flags):
                (start_values if is_start else other_values).append(v)
        out[name] = {
            "mean_reward": metrics.mean(item[name]),
            "mean_reward_by_family": {f: metrics.mean(v) for f, v in by_family.items()},
            "win_rate_vs_fixed": wins,
            "average_win_rate": metrics.mean([w["win_rate"] for w in wins.values()]),
            "percent_non_greedy": metrics.percent_non_greedy([seq for vals in data["values"] for seq in vals]),
            "mean_value_by_family": {f: metrics.mean(v) if v else None for f, v in values_by_family.items()},
            # paper Fig. 5 (right): the value applied at a sentence's first token vs elsewhere
            "mean_value_sentence_start": metrics.mean(start_values) if start_values else None,
            "mean_value_other": metrics.mean(other_values) if other_values else None,
            "distinct_2": metrics.distinct_n([t for ts in texts for t in ts], 2),
            "self_bleu": metrics.mean([metrics.self_bleu(ts) for ts in texts]) if config.num_samples > 1 else None,
        }
    return out


def write_report(summary: dict, config: EvalConfig, path: Path) -> None:
    temps = [f"{t:g}" for t in config.temperatures]
    lines = [f"# Evaluation: {config.model_name_or_path} on {config.dataset_name}", "",
             f"N = {config.num_samples} samples per prompt, seed {config.seed}; win rates per prompt (mean of its "
             "N rewards), 0.5 each on ties, 95 % bootstrap intervals in results.json.", "",
             "| strategy | mean reward | " + " | ".join(f"win vs T={t}" for t in temps)
             + " | avg win | % non-greedy | distinct-2 | Self-BLEU |",
             "|---|---|" + "---|" * len(temps) + "---|---|---|---|"]
    for name, s in summary.items():
        wins = " | ".join(f"{s['win_rate_vs_fixed'][t]['win_rate']:.1f}" for t in temps)
        bleu = "-" if s["self_bleu"] is None else f"{s['self_bleu']:.1f}"
        lines.append(f"| {name} | {s['mean_reward']:.3f} | {wins} | {s['average_win_rate']:.1f} | "
                     f"{s['percent_non_greedy']:.0f} | {s['distinct_2']:.3f} | {bleu} |")
    path.write_text("\n".join(lines) + "\n")


def plot_reward_vs_temperature(summary: dict, config: EvalConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = sorted(next(iter(summary.values()))["mean_reward_by_family"])
    fig, axes = plt.subplots(1, len(families), figsize=(4 * len(families), 3.2), squeeze=False)
    for ax, fam in zip(axes[0], families):
        ax.plot(config.temperatures, [summary[f"T={t:g}"]["mean_reward_by_family"][fam] for t in config.temperatures],
                marker="o", label="fixed T")
        for name, s in summary.items():
            if not name.startswith("T="):
                ax.axhline(s["mean_reward_by_family"][fam], linestyle="--", label=name)
        ax.set(title=fam, xlabel="temperature", ylabel="mean reward")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_value_histograms(raw: dict, rows: list[dict], path: Path) -> None:
    """Paper Fig. 4: the applied temperature (knob value) per task family, for each method that
    chooses it (fixed temperatures are left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [name for name in raw if not name.startswith("T=")]
    families = sorted({r.get("family") or "all" for r in rows})
    if not methods:
        return
    fig, axes = plt.subplots(len(methods), len(families), figsize=(3.4 * len(families), 2.6 * len(methods)),
                             squeeze=False)
    for i, name in enumerate(methods):
        for j, fam in enumerate(families):
            vals = [v for row, samples in zip(rows, raw[name]["values"]) if (row.get("family") or "all") == fam
                    for seq in samples for v in seq]
            axes[i][j].hist(vals, bins=[x / 10 - 0.05 for x in range(0, 15)], weights=[1 / max(len(vals), 1)] * len(vals))
            axes[i][j].set(title=f"{name[:30]} | {fam}", xlabel="temperature", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def load_rows(config: EvalConfig) -> list[dict]:
    if config.dataset_name == "toy":
        from lpo_train.tasks.toy import make_prompts

        return make_prompts(config.toy_families, config.toy_prompts_per_family, seed=config.toy_seed)
    from lpo_train.trainers.lpo import load_prompt_dataset

    return list(load_prompt_dataset(config))


def evaluate(config: EvalConfig) -> dict:
    from lpo_train.models.loading import load_causal_lm
    from lpo_train.rewards import resolve_rewards

    out = Path(config.output_dir)
    (out / "strategies").mkdir(parents=True, exist_ok=True)
    funcs, weights = resolve_rewards(config.reward_funcs, config.reward_weights)
    rows = load_rows(config)
    if not rows:
        raise ValueError("The prompt suite is empty.")
    model, tokenizer = load_causal_lm(config.model_name_or_path)
    raw = {}
    rules = build_rules(config, model)
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = lambda x, **k: x  # noqa: E731
    for name, (rule, overrides) in tqdm(rules.items(), desc="strategies"):
        file = out / "strategies" / f"{_safe_name(name)}.json"
        if file.exists():  # finished before an interruption: not recomputed
            raw[name] = json.loads(file.read_text())
            continue
        raw[name] = run_strategy(model, tokenizer, rows, rule, overrides, funcs, weights, config)
        tmp = file.with_suffix(".partial")
        tmp.write_text(json.dumps(raw[name]))
        tmp.rename(file)  # a half-written file is never taken for a finished strategy
    summary = summarise(raw, rows, config)
    (out / "results.json").write_text(json.dumps({"config": asdict(config), "strategies": summary}, indent=2))
    write_report(summary, config, out / "report.md")
    plot_reward_vs_temperature(summary, config, out / "reward_vs_temperature.png")
    plot_value_histograms(raw, rows, out / "temperature_histogram.png")
    return summary


def main(argv: list[str] | None = None) -> dict:
    from trl import TrlParser

    (config,) = TrlParser(dataclass_types=[EvalConfig]).parse_args_and_config(argv)
    summary = evaluate(config)
    print((Path(config.output_dir) / "report.md").read_text())
    return summary
