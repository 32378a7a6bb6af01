"""``lpo-train evaluate``: decoding strategies x a prompt suite, N samples each, one engine.

Each strategy's raw results (per prompt: the N rewards, texts, applied values) are written to
``output_dir/strategies/<name>.json`` as soon as it finishes, keyed by a fingerprint of everything
that determines them (``fingerprints``), so an interrupted run resumes without recomputing finished
strategies and a changed setting never reuses a stale one. With a trained head among the strategies,
its baselines run too (``baselines``: MeanShift, the best fixed T chosen on a training-side prompt
set, the per-family oracle). Then ``results.json``, ``report.md`` and plots.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from lpo_train.cli_args import help_field as _help
from lpo_train.config import PromptDataArguments, RewardArguments, SamplingArguments, default_of
from lpo_train.decoding import EDT, KLD, AdaptiveDecoderRule, Dynatemp, FixedTemperature, SamplingParams
from lpo_train.decoding.vllm import check_rule, model_folder, sample_with
from lpo_train.evaluation import baselines, metrics, plots
from lpo_train.evaluation.fingerprints import (
    file_fingerprint,  # noqa: F401
    head_files_fingerprint,
    rows_fingerprint,
    run_fingerprint,
    strategy_fingerprint,
)
from lpo_train.evaluation.report import summarise, write_report
from lpo_train.evaluation.tracking import TRACKERS, log_evaluation
from lpo_train.heads import DEFAULT_GRID
from lpo_train.pairs import group_slices
from lpo_train.registry import default_rewards
from lpo_train.utils.io import write_text_atomic

ANSWER_EXTRACTORS = ("first_number", "last_number", "text")




@dataclass
class EvalConfig(PromptDataArguments, SamplingArguments, RewardArguments):
    model_name_or_path: str = _help("The LM: a path, a Hub id, 'toy:small' or 'smollm2'.", "toy:small")
    dataset_name: str = default_of(PromptDataArguments, "dataset_name", "toy")
    dataset_split: str = default_of(PromptDataArguments, "dataset_split", "test")
    toy_prompts_per_family: int = default_of(PromptDataArguments, "toy_prompts_per_family", 32)
    dataset_seed: int = default_of(PromptDataArguments, "dataset_seed", 4242)  # held out from training's seeds
    num_generations: int = default_of(SamplingArguments, "num_generations", 4)
    max_completion_length: int = default_of(SamplingArguments, "max_completion_length", 64)
    temperatures: list[float] = _help("The fixed-temperature grid every method is compared with.", None)
    strategies: list[str] = _help(
        "Extra strategies: 'edt:T0=1,theta=1', 'dynatemp:temp=0.8,range=0.3', 'min_p:0.1' (at T=1), "
        "'kld:T0=1,sigma=1' (needs an evidence column), "
        "'head:PATH' or 'head:PATH:sample' (a trained AdaptiveDecoder head).", None)
    max_prompt_length: int = _help("Prompts longer than this many tokens (chat template applied) are left out, "
                                   "counted and warned about; the limit is also at most the model's positions minus "
                                   "max_completion_length.", 512)
    selection_dataset_name: str | None = _help(
        "The training-side prompt set the 'best fixed T' baseline is chosen on (default: dataset_name; e.g. "
        "'smollm2_mix:train'). Set this, selection_dataset_split or selection_dataset_seed to enable it; "
        "without one the best fixed T is chosen on the evaluation prompts (optimistic).", None)
    selection_dataset_split: str | None = _help("Split of the selection prompt set (default: dataset_split).", None)
    selection_dataset_seed: int | None = _help("Seed of a generated selection prompt set (toy, reasoning-gym), e.g. "
                                               "the training seed (default: dataset_seed).", None)
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
        self.reward_funcs = self.reward_funcs or default_rewards(self.dataset_name)
        self.temperatures = [float(t) for t in (self.temperatures or DEFAULT_GRID)]
        self.strategies = self.strategies or []
        self.report_to = [t for t in (self.report_to or []) if t != "none"]
        unknown = set(self.report_to) - set(TRACKERS)
        if unknown:
            raise ValueError(f"Unknown tracker(s) {sorted(unknown)} in report_to; choose from {TRACKERS} or 'none'.")
        if self.answer_extractor not in ANSWER_EXTRACTORS:
            raise ValueError(f"answer_extractor must be one of {ANSWER_EXTRACTORS}, got {self.answer_extractor!r}.")
        if self.num_generations < 1:
            raise ValueError(f"num_generations must be >= 1, got {self.num_generations}.")
        if self.max_prompt_length < 1:
            raise ValueError(f"max_prompt_length must be >= 1, got {self.max_prompt_length}.")
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
    traces = sample_with(config, model, tokenizer, [r["prompt"] for r in rows], rule,
                         SamplingParams(max_new_tokens=config.max_completion_length, num_samples=n, seed=config.seed,
                                        batch_size=config.generation_batch_size,
                                        **{**config.engine_options(), **overrides}))
    total, _ = score_traces(funcs, weights, rows, traces)
    starts = [sentence_starts(tokenizer, t.token_ids) for t in traces]
    groups = group_slices(traces, n)  # prompt-major: one group of N per prompt
    return {"rewards": group_slices(total.tolist(), n), "texts": [[t.text for t in g] for g in groups],
            "values": [[t.values for t in g] for g in groups], "sentence_start": group_slices(starts, n)}


def sentence_starts(tokenizer, token_ids: list[int]) -> list[bool]:
    """Per generated token: does it open a sentence (first token, or after one ending in . ! ?)."""
    pieces = tokenizer.batch_decode([[t] for t in token_ids])
    return [i == 0 or pieces[i - 1].rstrip().endswith((".", "!", "?")) for i in range(len(pieces))]


def load_rows(config: EvalConfig) -> list[dict]:
    return list(config.load_prompts())


def selection_config(config: EvalConfig) -> PromptDataArguments | None:
    """The training-side prompt set the best fixed T is chosen on, or None when none is configured."""
    if (config.selection_dataset_name, config.selection_dataset_split, config.selection_dataset_seed) == (None,) * 3:
        return None
    pick = lambda own, default: default if own is None else own  # noqa: E731
    return PromptDataArguments(dataset_name=pick(config.selection_dataset_name, config.dataset_name),
                               dataset_split=pick(config.selection_dataset_split, config.dataset_split),
                               dataset_seed=pick(config.selection_dataset_seed, config.dataset_seed or 0),
                               toy_families=config.toy_families, toy_prompts_per_family=config.toy_prompts_per_family)


def prompt_length_limit(config: EvalConfig, model) -> int:
    """``max_prompt_length``, or the model's positions minus ``max_completion_length`` when that is smaller."""
    positions = next((getattr(model.config, k) for k in ("max_position_embeddings", "n_positions")
                      if getattr(model.config, k, None)), None)
    if positions is None:
        return config.max_prompt_length
    room = positions - config.max_completion_length
    if room < 1:
        raise ValueError(f"max_completion_length ({config.max_completion_length}) leaves no room for a prompt in the "
                         f"model's {positions} positions; lower max_completion_length.")
    return min(config.max_prompt_length, room)


def drop_long_prompts(rows: list[dict], tokenizer, limit: int, what: str = "evaluation suite"
                      ) -> tuple[list[dict], int]:
    """``(rows whose prompt is at most limit tokens, how many were dropped)``; a warning names the count, and a
    suite with no prompt left is an error. Lengths are the engine's own (chat template applied)."""
    from lpo_train.decoding.engine import encode_prompts

    lengths = [len(ids) for ids in encode_prompts(tokenizer, [r["prompt"] for r in rows])]
    kept = [r for r, n in zip(rows, lengths) if n <= limit]
    dropped = len(rows) - len(kept)
    if not kept:
        raise ValueError(f"Every prompt of the {what} ({len(rows)}, the shortest {min(lengths)} tokens) is longer than "
                         f"{limit} tokens: raise max_prompt_length (the limit is also at most the model's positions "
                         "minus max_completion_length) or give shorter prompts.")
    if dropped:
        warnings.warn(f"{dropped} of {len(rows)} prompts of the {what} are longer than {limit} tokens (the longest "
                      f"{max(lengths)}) and are left out (max_prompt_length).", stacklevel=2)
    return kept, dropped


class _Runner:
    """Runs a strategy, or reuses its finished file when its fingerprint still matches."""

    def __init__(self, config: EvalConfig, tokenizer, funcs, weights):
        self.config, self.tokenizer, self.funcs, self.weights = config, tokenizer, funcs, weights
        self.results: dict[str, dict] = {}  # the evaluation's strategies (not the selection set's runs)
        self.reused: list[str] = []

    def __call__(self, file: Path, name: str, rule, overrides: dict, model, rows: list[dict], base: dict,
                 extra: dict | None = None) -> dict:
        key = strategy_fingerprint(base, name, overrides, extra)
        if file.exists():  # finished earlier: reused only if everything that determines it is unchanged
            stored = json.loads(file.read_text())
            if stored.get("fingerprint") == key:
                self.reused.append(name if file.parent.name == "strategies" else f"{file.parent.name}/{name}")
                return stored
            print(f"{file}: computed with other settings (model, tokenizer, head, suite, N, seed, tokens, truncation "
                  "or rewards changed); recomputing it", flush=True)
        data = {**run_strategy(model, self.tokenizer, rows, rule, overrides, self.funcs, self.weights, self.config),
                "fingerprint": key}
        write_text_atomic(file, json.dumps(data))  # a half-written file is never taken for a finished one
        return data


def _strategy_extra(config: EvalConfig, name: str) -> dict:
    """What a strategy depends on beyond its name: a head's files, KLD's evidence column."""
    kind = parse_strategy(name)[0] if not name.startswith("T=") else "fixed"
    if kind == "head":
        return {"head": head_files_fingerprint(Path(parse_strategy(name)[1]["path"]))}
    return {"evidence_column": config.evidence_column} if kind == "kld" else {}


def run_meanshift(run: _Runner, out: Path, head: str, rule, model, rows, base, head_values, extra: dict | None = None
                  ) -> dict | None:
    """Run the head's MeanShift baseline: one fixed value of its knob, its mean chosen value, on the LM the head
    runs on (its own adapted LM for a jointly trained head, ``extra`` then keys it); None (and a warning) when
    the head applied no value."""
    try:
        value = baselines.meanshift_value(head_values, rule.level, rule.knob)
    except ValueError as e:
        warnings.warn(f"{head}: no MeanShift baseline: {e}", stacklevel=2)
        return None
    name = baselines.meanshift_name(head, rule.knob, value)
    if rule.knob == "temperature":
        fixed, overrides = FixedTemperature(value), {}
    else:  # another knob: its fixed value at the head's base temperature
        knob_value = int(value) if rule.knob == "top_k" else value
        fixed, overrides = FixedTemperature(rule.base_temperature), {rule.knob: knob_value}
    file = out / "strategies" / f"{_safe_name(name)}.json"
    for stale in (out / "strategies").glob(f"{_safe_name(f'{baselines.MEANSHIFT}({head})=')}*.json"):
        if stale != file:  # this head's MeanShift at a mean it no longer has
            stale.unlink()
    run.results[name] = run(file, name, fixed, overrides, model, rows, base, extra)
    return {"strategy": name, "knob": rule.knob, "value": value, "level": rule.level}


def score_selection_set(run: _Runner, out: Path, selection: PromptDataArguments, sel_rows: list[dict], dropped: int,
                        eval_rows: list[dict], model, base: dict) -> dict:
    """Every fixed temperature of the grid on the training-side prompt set (files under ``selection/``)."""
    (out / "selection").mkdir(exist_ok=True)
    means = {}
    for t in run.config.temperatures:
        data = run(out / "selection" / f"T={t:g}.json", f"T={t:g}", FixedTemperature(t), {}, model, sel_rows, base)
        means[t] = metrics.valid_mean(baselines.item_scores(data["rewards"]))
    eval_prompts = {json.dumps(r["prompt"], sort_keys=True) for r in eval_rows}
    return {"dataset_name": selection.dataset_name, "dataset_split": selection.dataset_split,
            "dataset_seed": selection.dataset_seed, "num_prompts": len(sel_rows), "num_dropped_too_long": dropped,
            "num_shared_with_eval": sum(json.dumps(r["prompt"], sort_keys=True) in eval_prompts for r in sel_rows),
            "same_as_eval": rows_fingerprint(sel_rows) == rows_fingerprint(eval_rows), "mean_reward": means}


def _json_safe(value):
    """results.json holds no NaN (not JSON): None instead."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value



def evaluate(config: EvalConfig) -> dict:
    """Run every strategy (and, with a head, its baselines); write results.json, report.md and the plots.
    Returns the per-strategy summary (results.json's ``strategies``)."""
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
    has_head = any(parse_strategy(spec)[0] == "head" for spec in config.strategies)
    selection = selection_config(config) if has_head else None
    sel_rows = load_rows(selection) if selection is not None else None  # a bad selection set fails before sampling
    model, tokenizer = load_causal_lm(config.model_name_or_path)
    limit = prompt_length_limit(config, model)
    num_loaded = len(rows)
    rows, dropped = drop_long_prompts(rows, tokenizer, limit)
    prompts = {"num_loaded": num_loaded, "num_dropped_too_long": dropped, "max_prompt_length": limit}
    rules = build_rules(config, model, rows)
    if config.use_vllm:  # what vLLM cannot sample, named before anything is sampled
        for name, (rule, _, own) in rules.items():
            check_rule(rule, f"use_vllm (evaluate, strategy {name!r})")
            model_folder(own)
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = lambda x, **k: x  # noqa: E731
    base = run_fingerprint(config, model, tokenizer, rows, funcs)
    run = _Runner(config, tokenizer, funcs, weights)
    raw = run.results
    for name, (rule, overrides, strategy_model) in tqdm(rules.items(), desc="strategies"):
        raw[name] = run(out / "strategies" / f"{_safe_name(name)}.json", name, rule, overrides, strategy_model, rows,
                        base, _strategy_extra(config, name))
    baseline_result = None
    if has_head:
        meanshift = {name: run_meanshift(run, out, name, rule, own, rows, base, raw[name]["values"],
                                         None if own is model else _strategy_extra(config, name))
                     for name, (rule, _, own) in rules.items() if name.startswith("head:")}
        scored = None
        if selection is not None:
            sel_rows, sel_dropped = drop_long_prompts(sel_rows, tokenizer, limit, "selection prompt set")
            scored = score_selection_set(run, out, selection, sel_rows, sel_dropped, rows, model,
                                         run_fingerprint(config, model, tokenizer, sel_rows, funcs))
        baseline_result = baselines.summarise_baselines(raw, rows, config.temperatures, meanshift, scored,
                                                        config.n_boot, config.seed)
    if run.reused:
        print(f"resumed: reused {len(run.reused)} finished strategies from {out} ({', '.join(run.reused)})", flush=True)
    summary = summarise(raw, rows, config)
    results = {"config": asdict(config), "prompts": prompts, "strategies": summary}
    if baseline_result is not None:
        results["baselines"] = baseline_result
    write_text_atomic(out / "results.json", json.dumps(_json_safe(results), indent=2))
    write_report(summary, config, out / "report.md", baseline_result, prompts)
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
