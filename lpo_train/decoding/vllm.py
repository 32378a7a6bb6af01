"""Plain sampling on vLLM (``use_vllm``): the engine's ``generate`` for what vLLM can do, with the same traces.

vLLM samples a request at one temperature and fixed truncations; that covers a fixed temperature, min-p / top-p /
top-k at a temperature, and a *sequence-level* temperature head (one decision per sample, made before the first
token); EDT and dynatemp, which set each token's temperature from that token's logits, run inside vLLM as a logits
processor (``vllm_processors.RuleLogitsProcessor``). ``vllm_generate`` takes the same rule and ``SamplingParams`` as the engine:

- a sequence-level head decides exactly as on the engine: the engine runs the prompt once (the prefill plus one
  token) with the same rule, seeds and exploration, and its trace gives each sample's choice, the head's
  distribution and the hidden state the loss reads; vLLM then samples the response at ``grid[choice]``;
- each sample is one request with its own seed (derived from the engine's row seed), so a run is reproducible and
  a sample does not depend on the batch it sits in;
- EDT / dynatemp: the processor computes the rule's temperature from the row's logits with the engine's own code,
  divides (T = 0: keeps the argmax only), and vLLM samples at temperature 1 then applies top-k / top-p, the engine's
  order; the applied temperatures come back as the traces' ``values`` (in-process engines);
- what only the engine can do (token-level heads, KLD, guidance, the mixture selection, traced per-token states) is
  a ``ValueError`` naming ``use_vllm``, never a silent fallback.

Colocate mode: one ``vllm.LLM`` per process and model, built on first use and reused (``vllm_engine``); server
mode: a running vLLM server answers the same requests (``vllm_client``). On a CPU
(vLLM's CPU build) the engine runs in-process and uses every core unless the ``VLLM_CPU_*`` variables say
otherwise."""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

from lpo_train.decoding.engine import SamplingParams, encode_prompts, generate
from lpo_train.decoding.randomness import seed_for
from lpo_train.decoding.rules import LOGITS_RULES, MIN_TEMPERATURE, FixedTemperature
from lpo_train.decoding.sampling import Truncation
from lpo_train.decoding.trace import Trace

VLLM_MODES = ("colocate", "server")
HEAD_ARCHITECTURE = "LPOAdaptiveLlamaForCausalLM"  # vllm_head.AdaptiveLlamaForCausalLM, registered by the plugin
HEAD_BASES = ("LlamaForCausalLM",)  # base architectures a head can be served on inside vLLM
_ENGINES: dict[tuple, object] = {}
_CLIENTS: dict[tuple, object] = {}  # server mode: one client per server and model


def check_vllm_args(args, what: str = "this command") -> None:
    """The vLLM fields of ``args`` (``config.VLLMArguments``) make sense, and vLLM is installed."""
    if not getattr(args, "use_vllm", False):
        return
    if args.vllm_mode not in VLLM_MODES:
        raise ValueError(f"vllm_mode must be one of {VLLM_MODES}, got {args.vllm_mode!r}.")
    if args.min_p > 0 and (args.top_k > 0 or args.top_p < 1):
        raise ValueError("use_vllm with min_p and top_k / top_p together: vLLM applies min-p before top-k / top-p, "
                         "HF generate (and the engine) after them, so the distributions differ. Use one truncation, "
                         "or use_vllm false.")
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise ImportError(f"use_vllm needs vLLM, which is not installed ({e}): `pip install \"lpo-train[vllm]\"` on "
                          "a GPU machine, or vLLM's CPU build (`make test` installs it: see docs/serving.md).") from e


def sample_with(args, model, tokenizer, prompts, rule, params: SamplingParams, model_path: str | None = None,
                what: str = "use_vllm") -> list[Trace]:
    """The engine's ``generate`` or, with ``args.use_vllm``, ``vllm_generate`` (the model from ``model_path``, by
    default ``model.config.name_or_path``): the one switch of every command that samples plainly."""
    if not getattr(args, "use_vllm", False):
        return generate(model, tokenizer, prompts, rule, params)
    engine = vllm_engine(model_path or model_folder(model), args)
    return vllm_generate(engine, model, tokenizer, prompts, rule, params, what=what)


def model_folder(model) -> str:
    """The folder (or Hub id) vLLM loads ``model`` from: its ``name_or_path`` resolved as a model spec."""
    from lpo_train.models.loading import resolve_model_path

    name = getattr(model.config, "name_or_path", "") or ""
    if not name:
        raise ValueError("use_vllm needs the model as a folder or Hub id (vLLM loads its own copy), but this model "
                         "was built in memory: save_pretrained it and pass the folder, or use_vllm false.")
    if getattr(model, "peft_config", None):
        raise ValueError("use_vllm samples the base model; this model carries a PEFT adapter (joint LoRA training "
                         "or an adapter model): use_vllm false, or merge the adapter and pass the merged folder.")
    return resolve_model_path(name)


def vllm_engine(path: str, args):
    """The process's ``vllm.LLM`` for ``path`` under ``args``' vLLM fields, built once and reused; in server mode a
    client of the server (``vllm_client.VLLMServerClient``: the same ``generate``), checked to serve ``path``."""
    if args.vllm_mode == "server":
        from lpo_train.decoding.vllm_client import VLLMServerClient, server_url

        key = ("server", server_url(args), str(path))
        if key not in _CLIENTS:
            _CLIENTS[key] = VLLMServerClient(server_url(args), str(path), args.vllm_server_timeout)
        return _CLIENTS[key]
    key = (str(path), args.vllm_gpu_memory_utilization, args.vllm_tensor_parallel_size, args.vllm_max_model_length)
    if key not in _ENGINES:
        _cpu_defaults()
        from vllm import LLM

        from lpo_train.decoding.vllm_processors import RuleLogitsProcessor

        options = {"max_model_len": args.vllm_max_model_length} if args.vllm_max_model_length else {}
        _ENGINES[key] = LLM(model=str(path), seed=0, **engine_options(path),
                            logits_processors=[RuleLogitsProcessor],  # imports vLLM: only when an engine is built
                            gpu_memory_utilization=args.vllm_gpu_memory_utilization,
                            tensor_parallel_size=args.vllm_tensor_parallel_size, **options)
    return _ENGINES[key]


def engine_options(path) -> dict:
    """``vllm.LLM`` options every lpo-train engine takes: the checkpoint's own dtype; on a CPU, eager mode and no
    chunked prefill (vLLM 0.32's CPU build: a seeded request whose prefill is split over two steps rewinds its
    random generator, which CPU generators cannot do: RuntimeError "CPU Generator does not use offset")."""
    dtype = "auto"
    if Path(path).is_dir() and (Path(path) / "config.json").exists():
        import json

        dtype = json.loads((Path(path) / "config.json").read_text()).get("dtype") or "auto"
    _cpu_defaults()
    return {"dtype": dtype, "enforce_eager": _on_cpu(), **({"enable_chunked_prefill": False} if _on_cpu() else {})}


def head_engine(head_name_or_path, selection: str = "argmax", **kwargs):
    """This process's ``vllm.LLM`` serving a trained head (``head_engine_args``; ``kwargs``: its truncations and
    ``base_model``), built once and reused; ``shutdown`` drops it."""
    key = ("head", str(head_name_or_path), selection, tuple(sorted(kwargs.items())))
    if key not in _ENGINES:
        from vllm import LLM

        _ENGINES[key] = LLM(seed=0, **head_engine_args(head_name_or_path, selection, **kwargs))
    return _ENGINES[key]


def register_plugin() -> None:
    """vLLM's ``vllm.general_plugins`` entry point (pyproject.toml): makes ``HEAD_ARCHITECTURE`` a model vLLM can
    load, in every vLLM process of an environment where lpo-train is installed."""
    from vllm import ModelRegistry

    if HEAD_ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(HEAD_ARCHITECTURE, "lpo_train.decoding.vllm_head:AdaptiveLlamaForCausalLM")


def head_engine_args(head_name_or_path, selection: str = "argmax", top_k: int = 0, top_p: float = 1.0,
                     min_p: float = 0.0, base_model: str | None = None) -> dict:
    """The ``vllm.LLM`` (or ``vllm serve``) arguments that serve a trained head inside vLLM: the base model its
    config names (or ``base_model``), ``hf_overrides`` selecting ``HEAD_ARCHITECTURE`` with the head, its
    ``selection`` and fixed truncations, and ``generation_config="vllm"`` (the base model's own sampling defaults
    would otherwise apply to requests: they must sample at temperature 1 with no truncation, the head's distribution
    being the logits). ``vllm.LLM(**head_engine_args(head))``; ``lpo-train serve`` passes the same as flags."""
    import json

    from lpo_train.heads import SELECTIONS, AdaptiveDecoderHead
    from lpo_train.models.loading import resolve_model_path

    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}.")
    Truncation(top_k, top_p, min_p)  # checks the values
    head = AdaptiveDecoderHead.from_pretrained(head_name_or_path)
    if head.config.extra.get("adapter_in_repo") or head.config.extra.get("adapter"):
        raise ValueError(f"The head {head_name_or_path!r} was trained on a LoRA-adapted LM; serving inside vLLM loads "
                         "the base model only: merge the adapter into the base model and pass the merged folder as "
                         "base_model (--base_model).")
    spec = base_model or head.config.base_model
    if not spec:
        raise ValueError(f"The head {head_name_or_path!r} records no base model (config.json base_model): give "
                         "base_model (--base_model FOLDER_OR_HUB_ID).")
    path = resolve_model_path(spec)
    config = Path(path) / "config.json"
    architectures = json.loads(config.read_text()).get("architectures") or [] if config.is_file() else []
    if config.is_file() and not set(architectures) & set(HEAD_BASES):
        raise ValueError(f"{config}: architectures {architectures}; a head is served inside vLLM on {HEAD_BASES} "
                         "only for now (vllm_head.py subclasses vLLM's Llama). Sample with lpo-train's engine "
                         "(AdaptiveDecoderForCausalLM) instead.")
    overrides = {"architectures": [HEAD_ARCHITECTURE], "lpo_head": str(head_name_or_path), "lpo_selection": selection,
                 "lpo_top_k": top_k, "lpo_top_p": top_p, "lpo_min_p": min_p}
    # no chunked prefill anywhere: a row whose prompt is only partly prefilled would otherwise reach compute_logits
    # with a hidden state that is not its prompt's last, and a sequence-level head decides there
    return {"model": str(path), "hf_overrides": overrides, "generation_config": "vllm", **engine_options(path),
            "enable_chunked_prefill": False}


def shutdown() -> None:
    """Drop this process's vLLM engines (their memory is freed once nothing else holds them)."""
    import gc

    _CLIENTS.clear()
    if not _ENGINES:
        return
    _ENGINES.clear()
    from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

    destroy_model_parallel()  # the in-process engine's process group (world size 1) goes with it
    destroy_distributed_environment()
    gc.collect()


def _on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def _cpu_defaults() -> None:
    """vLLM's CPU build: the engine in this process (no second copy of the weights, a start-up of seconds), every
    core, a KV cache of ``VLLM_CPU_KVCACHE_SPACE`` GiB (default 2 here). Variables already set win."""
    if not _on_cpu():
        return
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{max(0, (os.cpu_count() or 1) - 1)}")


def _unsupported(rule, what: str) -> str | None:
    """Why vLLM cannot sample ``rule`` (None when it can)."""
    from lpo_train.decoding.adaptive import AdaptiveDecoderRule

    if isinstance(rule, (FixedTemperature, *(cls for cls, _ in LOGITS_RULES.values()))):
        return None
    if isinstance(rule, AdaptiveDecoderRule):
        if rule.level != "sequence":
            return (f"a token-level head decides at every token, inside the decoding loop; {what} samples only "
                    "sequence-level heads (docs/serving.md says how a token-level one would)")
        if rule.knob != "temperature":
            return f"a head whose knob is {rule.knob!r}: {what} samples temperature heads"
        if rule.selection == "mixture":
            return "selection 'mixture' samples every token from a mixture of temperatures"
        return None
    return f"{getattr(rule, 'name', type(rule).__name__)} decides at every token, inside the decoding loop"


def check_rule(rule, what: str = "use_vllm") -> None:
    """A clear error when vLLM cannot sample ``rule`` (``what``: the setting, in the message)."""
    why = _unsupported(rule, what)
    if why is not None:
        raise ValueError(f"{what}: vLLM cannot sample this: {why}. Set use_vllm false to sample with the engine.")


def vllm_generate(llm, model, tokenizer, prompts, rule, params: SamplingParams, what: str = "use_vllm") -> list[Trace]:
    """``generate``'s traces, sampled by ``llm`` (a ``vllm.LLM`` holding ``model``'s weights): prompt-major,
    ``params.num_samples`` per prompt, ``token_ids`` with EOS when produced, ``text`` as the engine decodes it,
    ``values`` the temperature of every token; for a head, ``choices``, ``choice_probs`` and (with
    ``trace_hidden``) ``hidden`` from the engine's decision, exactly as the engine traces them."""
    from vllm import SamplingParams as VLLMSamplingParams
    from vllm.inputs import TokensPrompt

    check_rule(rule, what)
    if params.trace_choice_logps or params.trace_entropy:
        raise ValueError(f"{what}: per-token log-probabilities and entropies are traced only by the engine "
                         "(loss_type lpo_latent, entropy statistics): set use_vllm false.")
    if params.ignore_eos and params.stop_strings:
        raise ValueError("ignore_eos with stop strings: pick one.")
    encoded = encode_prompts(tokenizer, prompts, params.chat_template)
    rows = [(i, s) for i in range(len(encoded)) for s in range(params.num_samples)]
    per_token = _rule_spec(rule)
    if per_token is not None and params.min_p > 0:
        raise ValueError(f"{what}: {rule.name} with min_p: vLLM applies min-p before a logits processor's temperature, "
                         "the engine after it. Use top_k / top_p, or use_vllm false.")
    decisions = None
    if isinstance(rule, FixedTemperature) or per_token is not None:
        temperatures = [rule.temperature if per_token is None else 1.0] * len(rows)
    else:  # the head decides on the engine, as it would there: one token, the same seeds and exploration
        decisions = generate(model, tokenizer, [list(ids) for ids in encoded], rule,
                             replace(params, max_new_tokens=1, chat_template=False, stop_strings=()))
        temperatures = [t.values[0] for t in decisions]
    seeds = [seed_for(params.prompt_seeds[i], s) if params.prompt_seeds is not None else seed_for(params.seed, i, s)
             for i, s in rows]
    requests = [TokensPrompt(prompt_token_ids=list(encoded[i])) for i, _ in rows]
    keys = [f"{id(requests)}-{r}" for r in range(len(rows))]  # the processor's record of each row's temperatures
    truncation = params.truncation
    sampling = [VLLMSamplingParams(
        n=1, temperature=0.0 if t <= MIN_TEMPERATURE else float(t), top_k=truncation.top_k or -1,
        top_p=truncation.top_p, min_p=truncation.min_p, seed=seed_for(seed, "vllm"),
        max_tokens=params.max_new_tokens, stop=list(params.stop_strings) or None, ignore_eos=params.ignore_eos,
        include_stop_str_in_output=True, detokenize=bool(params.stop_strings),
        extra_args=None if per_token is None else {"lpo_rule": {**per_token, "key": key}})
        for t, seed, key in zip(temperatures, seeds, keys)]
    from lpo_train.decoding.vllm_processors import APPLIED

    try:
        outputs = llm.generate(requests, sampling, use_tqdm=False)
        applied = [APPLIED.get(key) for key in keys] if per_token is not None else None
    finally:
        for key in keys:
            APPLIED.pop(key, None)
    traces = []
    for r, ((i, s), out) in enumerate(zip(rows, outputs)):
        completion = out.outputs[0]
        token_ids = list(completion.token_ids)
        text = tokenizer.decode(token_ids, skip_special_tokens=True)
        if completion.finish_reason == "length":
            finish = "length"
        elif isinstance(completion.stop_reason, str):
            finish = "stop"
            cut = min((text.find(x) + len(x) for x in params.stop_strings if x in text), default=len(text))
            text = text[:cut]
        else:
            finish = "eos"
        decision = decisions[r] if decisions is not None else None
        if applied is None:
            values = [float(temperatures[r])] * len(token_ids)
        else:  # one temperature per sampled token (none recorded: an engine in another process)
            values = (applied[r] or [])[:len(token_ids)]
            values = values if len(values) == len(token_ids) else [math.nan] * len(token_ids)
        traces.append(Trace(
            prompt_index=i, sample_index=s, prompt_ids=list(encoded[i]), token_ids=token_ids, text=text,
            finish_reason=finish, values=values, entropies=None,
            choices=decision.choices if decision is not None else None,
            hidden=decision.hidden if decision is not None else None,
            choice_probs=decision.choice_probs if decision is not None else None))
    return traces


def _rule_spec(rule) -> dict | None:
    """A logits-only rule as the processor rebuilds it (``LOGITS_RULES``), None for any other rule."""
    for name, (cls, fields) in LOGITS_RULES.items():
        if isinstance(rule, cls):
            return {"name": name, "options": {f: getattr(rule, f) for f in fields}}
    return None
