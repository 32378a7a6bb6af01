"""``lpo-train evaluate``: decoding strategies x a prompt suite, N samples each, one engine.

Each strategy's raw results (per prompt: the N rewards, texts, applied values) are written to
``output_dir/strategies/<name>.json`` as soon as it finishes, so an interrupted run resumes
without recomputing finished strategies. Then ``results.json``, ``report.md`` and plots.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lpo_train.decoding import EDT, KLD, AdaptiveDecoderRule, Dynatemp, FixedTemperature, SamplingParams, generate
from lpo_train.evaluation import metrics, plots
from lpo_train.evaluation.tracking import TRACKERS, log_evaluation
from lpo_train.pairs import group_slices
from lpo_train.cli_args import help_field as _help
from lpo_train.config import PromptDataArguments, SamplingArguments, default_of

ANSWER_EXTRACTORS = ("first_number", "last_number", "text")




@dataclass
class EvalConfig(PromptDataArguments, SamplingArguments):
    model_name_or_path: str = _help("The LM: a path, a Hub id, 'toy:small' or 'smollm2'.", "toy:small")
    dataset_name: str = default_of(PromptDataArguments, "dataset_name", "toy")
    dataset_split: str = default_of(PromptDataArguments, "dataset_split", "test")
    toy_prompts_per_family: int = default_of(PromptDataArguments, "toy_prompts_per_family", 32)
    dataset_seed: int = default_of(PromptDataArguments, "dataset_seed", 4242)  # held out from training's seeds
    num_generations: int = default_of(SamplingArguments, "num_generations", 4)
    max_completion_length: int = default_of(SamplingArguments, "max_completion_length", 64)
    reward_funcs: list[str] = _help("Rewards, as in training: names, 'module:function' or model paths.", None)
    reward_weights: list[float] | None = _help("One weight per reward function.", None)
    temperatures: list[float] = _help("The fixed-temperature grid every method is compared with.", None)
    strategies: list[str] = _help(
        "Extra strategies: 'edt:T0=1,theta=1', 'dynatemp:temp=0.8,range=0.3', 'min_p:0.1' (at T=1), "
        "'kld:T0=1,sigma=1' (needs an evidence column), "
        "'head:PATH' or 'head:PATH:sample' (a trained AdaptiveDecoder head).", None)
    seed: int = _help("Sampling seed (per-row seeds derive from it).", 0)
    n_boot: int = _help("Bootstrap resamples for the win-rate confidence intervals.", 1000)
    output_dir: str = _help("Where results.json, report.md, plots and per-strategy files go.", "outputs/eval")
    answer_extractor: str = _help(f"How a sample's answer is read for accuracy and maj@N when the suite has an "
                                  f"'answer' column: one of {ANSWER_EXTRACTORS}.", "first_number")
    reference_column: str = _help("Column with a reference text; when present, ROUGE-L and SacreBLEU are reported.",
                                  "reference")
    evidence_column: str = _help("Column with each prompt's evidence (text inside the prompt) for KLD; KLD's "
                                 "second stream decodes the prompt with that text removed.", "evidence")
    max_sentence_position: int = _help("Positions within a sentence tracked for the by-position plot (Fig. 5).", 24)
    report_to: list[str] = _help(f"Trackers for the metrics and plots: any of {TRACKERS} ('none' for none).", None)
    project: str = _help("Tracker project name (W&B, trackio).", "lpo-train-eval")
    run_name: str | None = _help("Tracker run name.", None)

    def __post_init__(self):
        self.toy_families = self.toy_families or ["arith", "story"]
        self.reward_funcs = self.reward_funcs or (["toy"] if self.dataset_name == "toy" else [])
        self.temperatures = [float(t) for t in (self.temperatures or [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])]
        self.strategies = self.strategies or []
        self.report_to = [t for t in (self.report_to or []) if t != "none"]
        unknown = set(self.report_to) - set(TRACKERS)
        if unknown:
            raise ValueError(f"Unknown tracker(s) {sorted(unknown)} in report_to; choose from {TRACKERS} or 'none'.")
        if self.answer_extractor not in ANSWER_EXTRACTORS:
            raise ValueError(f"answer_extractor must be one of {ANSWER_EXTRACTORS}, got {self.answer_extractor!r}.")
        if self.num_generations < 1:
            raise ValueError(f"num_generations must be >= 1, got {self.num_generations}.")
        self.check_decoding()
        for spec in self.strategies:
            parse_strategy(spec)  # fail early, before any model loads


STRATEGY_KEYS = {"edt": ("T0", "theta", "N"), "dynatemp": ("temp", "range", "exponent"), "kld": ("T0", "sigma")}


class StrategyKeyError(ValueError):
    pass


def _kv(text: str, kind: str) -> dict[str, float]:
    out = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        key = key.strip()
        if key not in STRATEGY_KEYS[kind]:
            raise StrategyKeyError(f"Unknown key {key!r} in the {kind} strategy {kind}:{text}; valid keys: "
                                   f"{', '.join(STRATEGY_KEYS[kind])} (e.g. '{kind}:"
                                   + ",".join(f"{k}=1" for k in STRATEGY_KEYS[kind][:2]) + "').")
        out[key] = float(value)
    return out


def parse_strategy(spec: str) -> tuple[str, dict]:
    """``(kind, options)`` of a strategy string; raises a clear error on a malformed one."""
    kind, _, rest = spec.partition(":")
    try:
        if kind == "edt":
            return kind, {"T0": 1.0, "theta": 1.0, **_kv(rest, kind)}
        if kind == "dynatemp":
            opts = {"temp": 0.8, "range": 0.3, "exponent": 1.0, **_kv(rest, kind)}
            return kind, opts
        if kind == "kld":
            return kind, {"T0": 1.0, "sigma": 1.0, **_kv(rest, kind)}
        if kind == "min_p":
            return kind, {"min_p": float(rest)}
        if kind == "head":
            path, _, selection = rest.partition(":")
            if not path:
                raise ValueError
            return kind, {"path": path, "selection": selection or "argmax"}
    except StrategyKeyError:
        raise
    except ValueError:
        pass
    raise ValueError(f"Cannot read strategy {spec!r}; use e.g. 'edt:T0=1,theta=1', 'dynatemp:temp=0.8,range=0.3', "
                     "'min_p:0.1', 'kld:T0=1,sigma=1', 'head:PATH' or 'head:PATH:sample'.")


def evidence_free_prompts(rows: list[dict], column: str = "evidence") -> list:
    """KLD's second stream: each row's prompt with its evidence text removed (from every message
    of a conversational prompt, or from a plain-text prompt)."""
    if not rows or any(r.get(column) in (None, "") for r in rows):
        raise ValueError(f"The KLD strategy needs each prompt's evidence: add a {column!r} column (the evidence "
                         "text, as it appears inside the prompt) to every row of the prompt suite, set "
                         "evidence_column to the column that has it, or drop the 'kld:' strategy.")
    out = []
    for r in rows:
        evidence, prompt = r[column], r["prompt"]
        text = prompt if isinstance(prompt, str) else " ".join(m["content"] for m in prompt)
        if evidence not in text:
            raise ValueError(f"The evidence {evidence[:40]!r} does not occur in its prompt {text[:60]!r}; KLD removes "
                             "the evidence from the prompt to build its evidence-free stream.")
        strip = lambda t: " ".join(t.replace(evidence, " ").split())  # noqa: E731
        out.append(strip(prompt) if isinstance(prompt, str) else [{**m, "content": strip(m["content"])} for m in prompt])
    return out


def build_rules(config: EvalConfig, model, rows: list[dict]) -> dict[str, tuple]:
    """``{name: (rule, sampling overrides, model)}`` for the fixed grid and every extra strategy. The model is
    the run's, except for a head trained jointly with a LoRA adapter (``use_peft``): it runs on its own adapted
    LM, loaded from its folder (base + the adapter saved beside the head)."""
    from lpo_train.heads import AdaptiveDecoderHead
    from lpo_train.models.loading import load_causal_lm

    rules = {f"T={t:g}": (FixedTemperature(t), {}, model) for t in config.temperatures}
    for spec in config.strategies:
        kind, o = parse_strategy(spec)
        if kind == "edt":
            rules[spec] = (EDT(o["T0"], o["theta"], o.get("N", 0.8)), {}, model)
        elif kind == "dynatemp":
            rules[spec] = (Dynatemp(o["temp"], o["range"], o["exponent"]), {}, model)
        elif kind == "min_p":
            rules[spec] = (FixedTemperature(1.0), {"min_p": o["min_p"]}, model)
        elif kind == "kld":
            rules[spec] = (KLD(evidence_free_prompts(rows, config.evidence_column), o["T0"], o["sigma"]), {}, model)
        else:
            head = AdaptiveDecoderHead.from_pretrained(o["path"])
            own = load_causal_lm(o["path"])[0] if head.config.extra.get("adapter_in_repo") else model
            rules[spec] = (AdaptiveDecoderRule(head, o["selection"], model=own), {}, own)
    return rules


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name)


def run_strategy(model, tokenizer, rows, rule, overrides, funcs, weights, config: EvalConfig) -> dict:
    from lpo_train.rewards import score_traces

    n = config.num_generations
    traces = generate(model, tokenizer, [r["prompt"] for r in rows], rule,
                      SamplingParams(max_new_tokens=config.max_completion_length, num_samples=n, seed=config.seed,
                                     batch_size=config.generation_batch_size, **{**config.engine_options(), **overrides}))
    total, _ = score_traces(funcs, weights, rows, traces)
    starts = [sentence_starts(tokenizer, t.token_ids) for t in traces]
    groups = group_slices(traces, n)  # prompt-major: one group of N per prompt
    return {"rewards": group_slices(total.tolist(), n), "texts": [[t.text for t in g] for g in groups],
            "values": [[t.values for t in g] for g in groups], "sentence_start": group_slices(starts, n)}


def sentence_starts(tokenizer, token_ids: list[int]) -> list[bool]:
    """Per generated token: does it open a sentence (first token, or after one ending in . ! ?)."""
    pieces = tokenizer.batch_decode([[t] for t in token_ids])
    return [i == 0 or pieces[i - 1].rstrip().endswith((".", "!", "?")) for i in range(len(pieces))]


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


def _task_metrics(data: dict, rows: list[dict], config: EvalConfig) -> dict:
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


def summarise(raw: dict[str, dict], rows: list[dict], config: EvalConfig) -> dict:
    """Per strategy: mean reward (overall and per family), win rate vs each fixed T with a
    bootstrap CI (items = prompts, a prompt's score = mean over its N samples; 0.5 on ties),
    % non-greedy, 3-gram repeats, distinct-2, Self-BLEU over each prompt's N samples, mean
    applied value (per family, at sentence starts vs elsewhere, by position in the sentence),
    and accuracy / maj@N / ROUGE-L / SacreBLEU when the suite has answers / references."""
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
        all_values = [seq for v in data["values"] for seq in v]
        all_starts = [seq for f in data["sentence_start"] for seq in f]
        for vals, flags in zip(all_values, all_starts):
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
            "mean_value_by_sentence_position": values_by_sentence_position(all_values, all_starts,
                                                                           config.max_sentence_position),
            "repeat_3gram": metrics.ngram_repeat_rate([t for ts in texts for t in ts], 3),
            "distinct_2": metrics.distinct_n([t for ts in texts for t in ts], 2),
            "self_bleu": metrics.mean([metrics.self_bleu(ts) for ts in texts]) if config.num_generations > 1 else None,
            **_task_metrics(data, rows, config),
        }
    return out


def write_report(summary: dict, config: EvalConfig, path: Path) -> None:
    temps = [f"{t:g}" for t in config.temperatures]
    lines = [f"# Evaluation: {config.model_name_or_path} on {config.dataset_name}", "",
             f"N = {config.num_generations} samples per prompt, seed {config.seed}; win rates per prompt (mean of its "
             "N rewards), 0.5 each on ties, 95 % bootstrap intervals in results.json.", "",
             "| strategy | mean reward | " + " | ".join(f"win vs T={t}" for t in temps)
             + " | avg win | % non-greedy | 3-gram rep. % | distinct-2 | Self-BLEU |",
             "|---|---|" + "---|" * len(temps) + "---|---|---|---|---|"]
    fmt = lambda v, spec=".1f": "-" if v is None else format(v, spec)  # noqa: E731
    for name, s in summary.items():
        wins = " | ".join(f"{s['win_rate_vs_fixed'][t]['win_rate']:.1f}" for t in temps)
        lines.append(f"| {name} | {s['mean_reward']:.3f} | {wins} | {s['average_win_rate']:.1f} | "
                     f"{s['percent_non_greedy']:.0f} | {s['repeat_3gram']:.1f} | {s['distinct_2']:.3f} | "
                     f"{fmt(s['self_bleu'])} |")
    optional = [(k, label) for k, label in [("accuracy", "accuracy %"), ("maj_at_n", f"maj@{config.num_generations} %"),
                                            ("rouge_l", "ROUGE-L"), ("bleu", "SacreBLEU")]
                if any(k in s for s in summary.values())]
    if optional:
        lines += ["", "| strategy | " + " | ".join(label for _, label in optional) + " |",
                  "|---|" + "---|" * len(optional)]
        for name, s in summary.items():
            lines.append(f"| {name} | " + " | ".join(fmt(s.get(k), ".3f" if k == "rouge_l" else ".1f")
                                                     for k, _ in optional) + " |")
    adaptive = [n for n in summary if not n.startswith("T=")]
    if adaptive:
        lines += ["", "Mean chosen temperature (knob value): per family; at sentence starts (the constrained "
                  "positions of a constrained story) vs elsewhere.", "",
                  "| strategy | " + " | ".join(sorted(summary[adaptive[0]]["mean_value_by_family"]))
                  + " | sentence start | other |", "|---|" + "---|" * (len(summary[adaptive[0]]["mean_value_by_family"]) + 2)]
        for name in adaptive:
            s = summary[name]
            fams = " | ".join(fmt(s["mean_value_by_family"][f], ".2f") for f in sorted(s["mean_value_by_family"]))
            lines.append(f"| {name} | {fams} | {fmt(s['mean_value_sentence_start'], '.2f')} | "
                         f"{fmt(s['mean_value_other'], '.2f')} |")
    path.write_text("\n".join(lines) + "\n")


def load_rows(config: EvalConfig) -> list[dict]:
    return list(config.load_prompts())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    tmp.replace(path)


def weights_fingerprint(module) -> str:
    """A hash of a model's weights (names, shapes, dtypes and bytes)."""
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def file_fingerprint(*paths: Path) -> str:
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    for p in paths:
        digest.update(Path(p).read_bytes() if Path(p).exists() else b"<missing>")
    return digest.hexdigest()


def run_fingerprint(config: EvalConfig, model, rows: list[dict], funcs) -> dict:
    """Everything shared by the strategies of a run that determines their numbers."""
    from lpo_train.rewards import reward_name

    import inspect

    def source(fn):  # an edited reward module (the function, or a lexicon beside it) changes the fingerprint
        try:
            return file_fingerprint(Path(inspect.getsourcefile(fn)))
        except (OSError, TypeError):
            return None

    return {"model": weights_fingerprint(model), "suite": rows_fingerprint(rows),
            "num_generations": config.num_generations, "seed": config.seed,
            "max_completion_length": config.max_completion_length, "truncation": config.truncation(),
            "rewards": [(reward_name(f), source(f)) for f in funcs], "reward_weights": config.reward_weights}


def rows_fingerprint(rows: list[dict]) -> str:
    import hashlib

    return hashlib.blake2b(json.dumps(rows, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


def strategy_fingerprint(base: dict, name: str, overrides: dict) -> str:
    """The run's fingerprint plus the strategy itself: its spec (temperatures, rule options), its
    truncations and, for heads, a hash of the head's files."""
    import hashlib

    extra = {"strategy": name, "overrides": overrides}
    if name.startswith("head:"):
        folder = Path(parse_strategy(name)[1]["path"])
        extra["head"] = file_fingerprint(folder / "config.json", folder / "model.safetensors",
                                         *([folder / "adapter_config.json", folder / "adapter_model.safetensors"]
                                           if (folder / "adapter_model.safetensors").exists() else []))  # joint
    return hashlib.blake2b(json.dumps({**base, **extra}, sort_keys=True).encode(), digest_size=16).hexdigest()


def evaluate(config: EvalConfig) -> dict:
    from lpo_train.models.loading import load_causal_lm
    from lpo_train.rewards import resolve_rewards

    out = Path(config.output_dir)
    (out / "strategies").mkdir(parents=True, exist_ok=True)
    funcs, weights = resolve_rewards(config.reward_funcs, config.reward_weights)
    rows = load_rows(config)
    if not rows:
        raise ValueError("The prompt suite is empty.")
    if any(parse_strategy(spec)[0] == "kld" for spec in config.strategies):
        evidence_free_prompts(rows, config.evidence_column)  # fail before the model loads
    model, tokenizer = load_causal_lm(config.model_name_or_path)
    raw = {}
    rules = build_rules(config, model, rows)
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = lambda x, **k: x  # noqa: E731
    base = run_fingerprint(config, model, rows, funcs)
    reused = []
    for name, (rule, overrides, strategy_model) in tqdm(rules.items(), desc="strategies"):
        file = out / "strategies" / f"{_safe_name(name)}.json"
        key = strategy_fingerprint(base, name, overrides)
        if file.exists():  # finished earlier: reused only if everything that determines it is unchanged
            stored = json.loads(file.read_text())
            if stored.get("fingerprint") == key:
                raw[name] = stored
                reused.append(name)
                continue
            print(f"{file}: computed with other settings (model, head, suite, N, seed, tokens, truncation or "
                  "rewards changed); recomputing it", flush=True)
        raw[name] = {**run_strategy(strategy_model, tokenizer, rows, rule, overrides, funcs, weights, config),
                     "fingerprint": key}
        _write_atomic(file, json.dumps(raw[name]))  # a half-written file is never taken for a finished one
    if reused:
        print(f"resumed: reused {len(reused)} finished strategies from {out / 'strategies'} ({', '.join(reused)})",
              flush=True)
    summary = summarise(raw, rows, config)
    _write_atomic(out / "results.json", json.dumps({"config": asdict(config), "strategies": summary}, indent=2))
    write_report(summary, config, out / "report.md")
    figures = {"reward_vs_temperature": out / "reward_vs_temperature.png"}
    plots.plot_reward_vs_temperature(summary, config.temperatures, figures["reward_vs_temperature"])
    if plots.plot_value_histograms(raw, rows, out / "temperature_histogram.png"):
        figures["temperature_histogram"] = out / "temperature_histogram.png"
    if plots.plot_value_by_position(summary, out / "temperature_by_position.png"):
        figures["temperature_by_position"] = out / "temperature_by_position.png"
    if config.report_to:
        log_evaluation(config.report_to, summary, figures, asdict(config), out, config.project, config.run_name)
    return summary


def main(argv: list[str] | None = None) -> dict:
    from lpo_train.cli_args import parse_config

    (config,) = parse_config([EvalConfig], argv, "lpo-train evaluate",
                             "Decoding strategies against the fixed-temperature grid on a prompt suite.")
    summary = evaluate(config)
    print((Path(config.output_dir) / "report.md").read_text())
    return summary
