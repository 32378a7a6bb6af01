"""Resolve a model spec (a path, a Hub id, or a registered model spec: ``lpo_train.registry.register_model``;
the built-in ones register in the modules of ``lpo_train.registry.BUILTIN_MODULES``) to a frozen causal LM.

This module reads the model registry and never names a model; ``models.adapters`` holds the PEFT helpers
and never imports this module back (PEFT adapters are loaded here, ``load_adapter_model``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from lpo_train.heads import _looks_local
from lpo_train.models.adapters import adapter_config, is_peft_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(spec: str) -> str:
    """A registered model spec (its name, or ``NAME:OPTIONS``) -> the folder (or Hub id) its resolver gives;
    offline, a registered model's Hub id -> its local copy; anything else is returned as is (path or Hub id)."""
    from lpo_train.registry import find_model_spec

    found = find_model_spec(spec, offline=_offline())
    return found.resolve(spec) if found is not None else spec


def _offline() -> bool:
    import os

    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def portable_name(spec: str) -> str:
    """What a head's config and card record as its base model: a Hub id or a spec that works on
    another machine (a registered model's ``hub_id``, else the spec), never a local cache path."""
    from lpo_train.registry import find_model_spec

    found = find_model_spec(spec)
    return found.hub_id if found is not None and found.hub_id else spec


def _model_not_found(spec: str, detail: str) -> FileNotFoundError:
    from lpo_train.registry import MODELS

    return FileNotFoundError(f"{detail} Give an existing model folder, a Hub id (org/name) or a registered model "
                             f"spec: {MODELS.names()} (lpo_train.registry.register_model adds one).")


def load_causal_lm(spec, dtype: str = "float32", tokenizer=None):
    """``(model, tokenizer)`` frozen (eval, no grad); ``spec`` may already be a model, and ``tokenizer`` given
    (TRL's ``processing_class``: then it is used as is, never reloaded). A PEFT adapter (a folder or Hub repo with
    ``adapter_config.json``) loads onto the base model it names (``load_adapter_model``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}.")
    given = tokenizer
    if isinstance(spec, torch.nn.Module):
        model = spec
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(model.config.name_or_path))
    else:
        path = resolve_model_path(str(spec))
        peft_config = adapter_config(path)
        if peft_config is not None:  # a PEFT adapter: its base from adapter_config.json, then the adapter
            model, tokenizer = load_adapter_model(path, peft_config, dtype)
            model.eval().requires_grad_(False)
            return model, given if given is not None else tokenizer
        if not Path(path).is_dir() and (_looks_local(path) or Path(path).suffix):
            raise _model_not_found(spec, f"The model {spec!r} is not a local folder (it does not exist) and not a "
                                         "Hub id.")
        if not Path(path).is_dir() and ":" in path and "/" not in path:  # NAME:OPTIONS, but NAME is not registered
            from lpo_train.registry import MODELS

            raise ValueError(MODELS.unknown(path, "The model"))
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype])
            tokenizer = AutoTokenizer.from_pretrained(path)
        except OSError as e:
            raise _model_not_found(spec, f"Could not load the model {spec!r}: no local folder of that name, and as a "
                                         f"Hub id it could not be fetched ({e}).") from e
        model.config.name_or_path = portable_name(str(spec))
    model.eval().requires_grad_(False)
    return model, given if given is not None else tokenizer


def trainable_lm(spec, load=None):
    """A model to fine-tune (float32, gradients on) from a model spec: ``load(folder or Hub id, dtype=...)``
    (default ``AutoModelForCausalLM.from_pretrained``). A PEFT adapter is first merged into the base its
    ``adapter_config.json`` names, so training starts from base + adapter."""
    import tempfile

    path = resolve_model_path(str(spec))
    if adapter_config(path) is None:
        if load is None:
            from transformers import AutoModelForCausalLM

            load = AutoModelForCausalLM.from_pretrained
        return load(path, dtype=torch.float32)
    merged = load_causal_lm(path)[0].merge_and_unload()
    if load is None:
        return merged.train().requires_grad_(True)
    with tempfile.TemporaryDirectory() as tmp:  # another head on the merged weights (e.g. a reward model)
        merged.save_pretrained(tmp)
        return load(tmp, dtype=torch.float32)


def load_adapter_model(spec: str, config: dict, dtype: str = "float32"):
    """``(peft_model, tokenizer)``: the base named in ``config`` (``base_model_name_or_path``, any spec
    ``load_causal_lm`` takes), then the adapter at ``spec`` on top of it (PEFT's ``PeftModel.from_pretrained``)."""
    from peft import PeftModel

    base_spec = config.get("base_model_name_or_path")
    where = Path(spec) / "adapter_config.json"
    if not base_spec:
        raise ValueError(f"{where} names no base model (base_model_name_or_path is empty): set it to the base "
                         "model's Hub id, path or lpo-train spec.")
    try:
        base, tokenizer = load_causal_lm(base_spec, dtype)
    except (FileNotFoundError, OSError) as e:
        raise FileNotFoundError(f"The adapter {spec} is for the base model {base_spec!r} ({where}: "
                                f"base_model_name_or_path), which could not be loaded: {e}") from e
    if is_peft_model(base):  # an adapter trained on base + another adapter: that one is part of its base
        base = base.merge_and_unload()
    try:
        model = PeftModel.from_pretrained(base, spec)
    except (RuntimeError, ValueError, KeyError) as e:  # shape mismatches, missing target modules
        raise ValueError(f"The adapter {spec} does not fit its base model {base_spec!r} ({type(e).__name__}: {e}). "
                         f"Check base_model_name_or_path in {where}.") from e
    if (Path(spec) / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(spec)
    model.lpo_adapter = str(spec)  # what a head's card records beside the base model
    return model, tokenizer
