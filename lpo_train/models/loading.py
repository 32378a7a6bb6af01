"""Resolve a model spec (path, Hub id, 'toy:small', 'smollm2') to a frozen causal LM."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(spec: str) -> str:
    """'toy:small' / 'toy:base' -> the cached toy LM (pretrained on first use); 'smollm2' -> the
    converted SmolLM2-135M-Instruct; anything else is returned as is (path or Hub id)."""
    if spec.startswith("toy:"):
        from lpo_train.tasks.toy_lm import toy_lm_path

        size, _, seed = spec[4:].partition(":")
        return str(toy_lm_path(size or "small", int(seed or 0)))
    if spec == "smollm2":
        from lpo_train.models.smollm2 import smollm2_path

        return str(smollm2_path())
    return spec


def load_causal_lm(spec, dtype: str = "float32"):
    """``(model, tokenizer)`` frozen (eval, no grad); ``spec`` may already be a model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}.")
    if isinstance(spec, torch.nn.Module):
        model = spec
        tokenizer = AutoTokenizer.from_pretrained(model.config.name_or_path)
    else:
        path = resolve_model_path(str(spec))
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype])
        tokenizer = AutoTokenizer.from_pretrained(path)
        model.config.name_or_path = str(spec) if not str(spec).startswith("toy:") else path
    model.eval().requires_grad_(False)
    return model, tokenizer
