"""``lpo-train generate --method base|bon|eft|cbs|ivg|tokenrm ...``: guided decoding to JSONL.

Every cell of the token-level (none / implicit / explicit) x chunk-level (none / implicit /
explicit / reward) grid is reachable by ``token_guidance`` / ``chunk_guidance``; ``method`` only
sets their defaults:

| method  | token level | chunk level                        | (W, K, L)              |
|---------|-------------|------------------------------------|------------------------|
| base    | none        | none                               | (1, 1, -)              |
| bon     | none        | explicit, else implicit, else reward | (1, K, end)          |
| eft     | implicit    | none                               | (1, 1, -)              |
| tokenrm | explicit    | none                               | (1, 1, -)              |
| cbs     | none        | implicit (weak-to-strong search)   | (W, K, L)              |
| ivg     | implicit    | explicit                           | (W, K, L)              |
| args    | ARGS: top-k rescored by a sequence reward (reward_funcs) | (1, 1, -) |
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from lpo_train.cli_args import help_field as _help
from lpo_train.config import DecodingArguments, PromptDataArguments, RewardArguments, default_of
from lpo_train.utils.io import write_text_atomic

METHODS = {  # method -> (token guidance, chunk guidance); beam search follows from the chunk guidance
    "base": ("none", "none"),
    "bon": ("none", "auto"),
    "eft": ("implicit", "none"),
    "tokenrm": ("explicit", "none"),
    "cbs": ("none", "implicit"),
    "ivg": ("implicit", "explicit"),
    "args": ("args", "none"),
}
TOKEN_GUIDANCE = ("none", "implicit", "explicit", "args")
CHUNK_GUIDANCE = ("none", "implicit", "explicit", "reward")




@dataclass
class GenerateConfig(PromptDataArguments, DecodingArguments, RewardArguments):
    """``reward_funcs`` / ``reward_weights`` (the shared fields): the sequence rewards of chunk-level 'reward'
    guidance (best-of-N with a reward) and of ARGS."""

    method: str = _help(f"Preset: one of {sorted(METHODS)} (see the table in lpo_train/guidance/run.py).", "ivg")
    token_guidance: str | None = _help(f"Override the token-level guidance: one of {TOKEN_GUIDANCE}.", None)
    chunk_guidance: str | None = _help(f"Override the chunk-level guidance: one of {CHUNK_GUIDANCE}.", None)
    model_name_or_path: str = _help("The base model being steered (path, Hub id, 'toy:base', 'smollm2').", "toy:base")
    tuned_model: str | None = _help("Implicit value: the small tuned (e.g. DPO) model.", None)
    untuned_model: str | None = _help("Implicit value: its untuned reference (e.g. the SFT model); leave it out when "
                                      "tuned_model is a PEFT adapter (the untuned model is its adapter off).", None)
    value_model: str | None = _help("Explicit value: a value model (lpo-train train-value explicit).", None)
    gold_reward_funcs: list[str] | None = _help("Rewards that score the final responses (reported, not used).", None)
    beam_width: int = _help("W: hypotheses kept at each chunk boundary.", 4)
    num_candidates: int = _help("K: successors per hypothesis (best-of-N: N).", 4)
    chunk_length: int = _help("L: tokens per chunk; 0 = score only at the end (best-of-N).", 5)
    beta_token: float = _help("Implicit token-level weight: z = l_base + beta (l_tuned - l_untuned).", 1.0)
    w_token: float = _help("Explicit token-level weight: z = l_base + w Q.", 1.0)
    beta_chunk: float = _help("Chunk-level score scale.", 1.0)
    args_k: int = _help("ARGS: top-k base tokens rescored per step.", 10)
    args_weight: float = _help("ARGS: score = log p_base + args_weight * reward.", 1.0)
    args_greedy: bool = _help("ARGS: take the best candidate (False: sample at `temperature`).", True)
    temperature: float = _help("Sampling temperature, applied after the guidance is combined.", 0.7)
    max_completion_length: int = default_of(DecodingArguments, "max_completion_length", 48)
    stop_strings: list[str] | None = _help("Stop when a response contains one of these strings.", None)
    incremental_scoring: bool = _help("Chunk scorers keep and reorder a KV cache (False: re-encode every chunk).",
                                      True)
    dataset_name: str = default_of(PromptDataArguments, "dataset_name", "toy")
    dataset_split: str = default_of(PromptDataArguments, "dataset_split", "test")
    prompt_column: str = _help("The column holding the prompts (e.g. 'instruction' for AlpacaEval).", "prompt")
    toy_prompts_per_family: int = default_of(PromptDataArguments, "toy_prompts_per_family", 32)
    dataset_seed: int = default_of(PromptDataArguments, "dataset_seed", 4242)
    seed: int = _help("Sampling seed (per-prompt seeds derive from it and the prompt index).", 0)
    output_file: str = _help("JSONL output; written atomically when the run completes.", "outputs/generate.jsonl")

    def __post_init__(self):
        self.toy_families = self.toy_families or ["sentiment"]
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {sorted(METHODS)}, got {self.method!r}.")
        token, chunk = METHODS[self.method]
        self.token_guidance = self.token_guidance or token
        self.chunk_guidance = self.chunk_guidance or chunk
        if self.chunk_guidance == "auto":
            self.chunk_guidance = ("explicit" if self.value_model else "implicit" if self.tuned_model
                                   else "reward" if self.reward_funcs else None)
            if self.chunk_guidance is None:
                raise ValueError("best-of-N needs a scorer: value_model, tuned_model + untuned_model, or reward_funcs.")
        if self.token_guidance not in TOKEN_GUIDANCE or self.chunk_guidance not in CHUNK_GUIDANCE:
            raise ValueError(f"token_guidance must be one of {TOKEN_GUIDANCE} and chunk_guidance one of "
                             f"{CHUNK_GUIDANCE}; got {self.token_guidance!r}, {self.chunk_guidance!r}.")
        if self.method == "bon":
            self.beam_width, self.chunk_length = 1, 0
        elif self.chunk_guidance == "none":
            self.beam_width, self.num_candidates = 1, 1
        needs = {"implicit": ("tuned_model",), "explicit": ("value_model",),
                 "reward": ("reward_funcs",), "args": ("reward_funcs",)}
        for level in {self.token_guidance, self.chunk_guidance} - {"none"}:
            missing = [k for k in needs[level] if not getattr(self, k)]
            if missing:
                hint = " (a tuned model and its untuned_model, or a PEFT adapter alone)" if level == "implicit" else ""
                raise ValueError(f"{level} guidance needs {', '.join(missing)}{hint}.")
        if "implicit" in (self.token_guidance, self.chunk_guidance) and not self.untuned_model:
            from lpo_train.models.adapters import adapter_config

            if Path(self.tuned_model).is_dir() and adapter_config(self.tuned_model) is None:
                raise ValueError(f"implicit guidance needs untuned_model: tuned_model {self.tuned_model} is a full model, "
                                 "not a PEFT adapter (no adapter_config.json), so there is no adapter to switch off.")
        self.check_decoding()
        plain = self.token_guidance == "none" and (self.chunk_guidance == "none" or self.chunk_length == 0)
        if self.use_vllm and not plain:
            raise ValueError(f"use_vllm samples plainly (method 'base', or best-of-N: 'bon' ranks finished samples); "
                             f"method {self.method!r} (token guidance {self.token_guidance!r}, chunk guidance "
                             f"{self.chunk_guidance!r}, chunk_length {self.chunk_length}) steers or ranks inside the "
                             "engine's decoding loop: set use_vllm false.")
        if self.beam_width < 1 or self.num_candidates < 1 or self.chunk_length < 0:
            raise ValueError("Need beam_width >= 1, num_candidates >= 1 and chunk_length >= 0 (0 = at the end).")


def load_rows(config: GenerateConfig) -> list[dict]:
    rows = list(config.load_prompts(prompt_column=config.prompt_column))
    if rows and config.prompt_column not in rows[0]:
        raise ValueError(f"The prompt dataset has no column {config.prompt_column!r} (it has {sorted(rows[0])}); "
                         "set prompt_column.")
    return [{**r, "prompt": r[config.prompt_column]} for r in rows]


def build(config: GenerateConfig, models: dict | None = None, rows: list[dict] | None = None):
    """``(rule, scorer)`` for ``config``; ``models`` caches loaded models by path across calls."""
    from lpo_train.decoding import FixedTemperature
    from lpo_train.guidance import (
        ARGS,
        ExplicitGuidance,
        ExplicitScorer,
        ImplicitGuidance,
        ImplicitScorer,
        RewardScorer,
        load_value_model,
    )
    from lpo_train.models.loading import load_causal_lm

    models = models if models is not None else {}

    def get(path, value=False):
        key = ("value", path) if value else path
        if key not in models:
            models[key] = load_value_model(path) if value else load_causal_lm(path)
        return models[key]

    rule, scorer = FixedTemperature(config.temperature), None
    if config.token_guidance == "implicit":
        (tuned, tok), untuned = get(config.tuned_model), get(config.untuned_model)[0] if config.untuned_model else None
        rule = ImplicitGuidance(tuned, untuned, config.beta_token, config.temperature, tokenizer=tok)
    elif config.token_guidance == "explicit":
        value, tok = get(config.value_model, value=True)
        rule = ExplicitGuidance(value, config.w_token, config.temperature, tokenizer=tok)
    elif config.token_guidance == "args":
        rule = ARGS(config.reward_funcs, config.args_weight, config.args_k,
                    0.0 if config.args_greedy else config.temperature, reward_weights=config.reward_weights, rows=rows)
    inc = config.incremental_scoring
    if config.chunk_guidance == "implicit" and config.token_guidance == "implicit":
        scorer = ImplicitScorer.from_guidance(rule, config.beta_chunk)  # the token level's streams, not a second run
    elif config.chunk_guidance == "implicit":
        (tuned, tok), untuned = get(config.tuned_model), get(config.untuned_model)[0] if config.untuned_model else None
        scorer = ImplicitScorer(tuned, untuned, config.beta_chunk, tokenizer=tok, incremental=inc)
    elif config.chunk_guidance == "explicit":
        value, tok = get(config.value_model, value=True)
        scorer = ExplicitScorer(value, config.beta_chunk, tokenizer=tok, incremental=inc)
    elif config.chunk_guidance == "reward":
        scorer = RewardScorer(config.reward_funcs, config.reward_weights)
    return rule, scorer


def check_output_file(path: str) -> None:
    """Fail before decoding when the output cannot be written (a folder, an unwritable place)."""
    from lpo_train.errors import check_writable

    out = Path(path)
    if out.is_dir():
        raise IsADirectoryError(f"output_file {path} is a folder; give a file name such as {out / 'generate.jsonl'}.")
    check_writable(out.parent, "output_file", path)


def run(config: GenerateConfig, models: dict | None = None, rows: list[dict] | None = None) -> dict:
    """Generate for every prompt; returns ``{"records": [...], "stats": {...}}`` (and writes the JSONL)."""
    from lpo_train.decoding import SamplingParams
    from lpo_train.decoding.randomness import seed_for
    from lpo_train.guidance import guided_generate
    from lpo_train.models.loading import load_causal_lm
    from lpo_train.rewards import resolve_rewards, score_traces
    from lpo_train.utils.io import write_json_lines

    models = models if models is not None else {}
    check_output_file(config.output_file)  # before anything is decoded
    rows = rows if rows is not None else load_rows(config)
    if not rows:
        raise ValueError("The prompt dataset is empty.")
    if config.model_name_or_path not in models:
        models[config.model_name_or_path] = load_causal_lm(config.model_name_or_path)
    model, tokenizer = models[config.model_name_or_path]
    rule, scorer = build(config, models, rows)
    params = SamplingParams(max_new_tokens=config.max_completion_length, **config.engine_options(),
                            stop_strings=tuple(config.stop_strings or ()), batch_size=config.generation_batch_size,
                            prompt_seeds=[seed_for(config.seed, i) for i in range(len(rows))])
    stats, start = {}, time.time()
    if config.use_vllm:  # plain sampling (checked in the config): vLLM samples, best-of-N ranks the finished samples
        from lpo_train.decoding.vllm import sample_with
        from lpo_train.guidance.search import best_of_sampled

        prompts, n = [r["prompt"] for r in rows], config.beam_width * config.num_candidates
        sampled = sample_with(config, model, tokenizer, prompts, rule, replace(params, num_samples=n),
                              what="use_vllm (generate)")
        ranked = best_of_sampled(sampled, scorer, tokenizer, prompts, n, params, rows, tokenizer.pad_token_id or 0,
                                 device=next(model.parameters()).device) if scorer is not None else [[t] for t in sampled]
    else:
        ranked = guided_generate(model, tokenizer, [r["prompt"] for r in rows], rule=rule, scorer=scorer,
                                 width=config.beam_width, candidates=config.num_candidates,
                                 chunk_length=config.chunk_length or None, params=params, rows=rows, stats=stats)
    stats["seconds"] = time.time() - start
    best = [r[0] for r in ranked]
    gold = None
    if config.gold_reward_funcs:
        funcs, weights = resolve_rewards(config.gold_reward_funcs)
        gold = score_traces(funcs, weights, rows, best)[0].tolist()
    records = [{"prompt_index": i, "prompt": rows[i]["prompt"], "response": t.text, "score": t.score,
                "finish_reason": t.finish_reason, "num_tokens": len(t.token_ids),
                **({"gold_reward": gold[i]} if gold is not None else {})} for i, t in enumerate(best)]
    stats["generated_tokens"] = sum(len(t.token_ids) for t in best)
    if gold is not None:
        stats["mean_gold_reward"] = sum(gold) / len(gold)
    out = write_json_lines(config.output_file, records)  # atomic: a half-written file is never a finished run
    write_text_atomic(out.with_name(out.stem + ".meta.json"),
                      json.dumps({"config": asdict(config), "stats": stats}, indent=2))
    return {"records": records, "stats": stats}


def main(argv: list[str] | None = None) -> dict:
    from lpo_train.cli_args import parse_config

    (config,) = parse_config([GenerateConfig], argv, "lpo-train generate", "Guided decoding to JSONL.")
    result = run(config)
    s = result["stats"]
    print(f"{config.method}: {len(result['records'])} responses -> {config.output_file} "
          + (f"({s['forward_tokens']} base-model forward tokens, " if "forward_tokens" in s else "(sampled by vLLM, ")
          + f"{s['seconds']:.1f} s"
          + (f", mean gold reward {s['mean_gold_reward']:.4f})" if "mean_gold_reward" in s else ")"))
    return result
