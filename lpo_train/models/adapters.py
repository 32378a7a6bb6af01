"""PEFT adapters: one set of weights as two models (adapter on / off), and adapters as base models.

``adapter_off(peft_model)`` is the base model of a PEFT model without a second copy of its weights:
every call (the whole model, its decoder body, its output layer) runs inside PEFT's
``disable_adapter()``. IVG's implicit value needs a tuned and an untuned model; with the tuned one a
LoRA adapter over the untuned one, the two are ``peft_model`` and ``adapter_off(peft_model)``, each
decoded as its own stream with its own KV cache (the adapter changes the keys and values).

``adapter_config(folder or Hub id)`` reads an adapter's ``adapter_config.json``; ``models.loading`` loads
the adapter onto the base model it names (``load_adapter_model``). This module never imports
``models.loading`` (tests/test_import_graph.py checks that the models package's imports have no cycle).
"""

from __future__ import annotations

import json
from pathlib import Path


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover (peft is a dependency)
        return False
    return isinstance(model, PeftModel)


class _AdapterOff:
    """``module`` of ``peft_model``, called with the adapter disabled; everything else is the module's."""

    def __init__(self, peft_model, module):
        self._peft, self._module = peft_model, module

    def __call__(self, *args, **kwargs):
        with self._peft.disable_adapter():
            return self._module(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._module, name)


class AdapterOff(_AdapterOff):
    """The base model of a PEFT model, from the same weights (see the module docstring): calling it,
    ``forward``, ``generate``, and its decoder body and output layer all run with the adapter disabled."""

    def __init__(self, peft_model):
        if not is_peft_model(peft_model):
            raise TypeError(f"adapter_off needs a peft.PeftModel, got {type(peft_model).__name__}.")
        super().__init__(peft_model, peft_model)

    def forward(self, *args, **kwargs):
        return self(*args, **kwargs)

    def generate(self, *args, **kwargs):
        with self._peft.disable_adapter():
            return self._peft.generate(*args, **kwargs)

    @property
    def lpo_adapter(self):
        return None  # the adapter is off: a head trained on this model has no adapter

    def get_decoder(self):
        return _AdapterOff(self._peft, self._peft.get_decoder())

    def get_output_embeddings(self):
        return _AdapterOff(self._peft, self._peft.get_output_embeddings())

    def __repr__(self) -> str:
        return f"AdapterOff({type(self._peft.get_base_model()).__name__})"


def adapter_off(peft_model) -> AdapterOff:
    return AdapterOff(peft_model)


def untuned_or_adapter_off(tuned, untuned, what: str):
    """``untuned`` as given, or, when it is None and ``tuned`` is a PEFT model, ``tuned`` with its adapter off."""
    if untuned is not None:
        return untuned
    if is_peft_model(tuned):
        return adapter_off(tuned)
    raise ValueError(f"{what} needs the untuned (reference) model, or a PEFT (LoRA) tuned model whose adapter "
                     "off is the untuned one.")


def adapter_config(spec: str) -> dict | None:
    """The ``adapter_config.json`` of an adapter folder or Hub repo (None when ``spec`` is not one)."""
    path = Path(spec) / "adapter_config.json"
    if not Path(spec).is_dir():
        from lpo_train.heads import _looks_local

        if _looks_local(str(spec)) or str(spec).count("/") != 1:
            return None
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, HFValidationError, LocalEntryNotFoundError

        try:  # a Hub id: an adapter repo has the file; a model repo (or offline, an uncached one) does not
            path = Path(hf_hub_download(str(spec), "adapter_config.json"))
        except (EntryNotFoundError, LocalEntryNotFoundError, HFValidationError):
            return None
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-save the adapter.") from e

