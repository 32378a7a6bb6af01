"""The engine's KV cache: transformers' cache layers, with full-attention layers preallocated.

transformers' ``DynamicLayer`` grows by ``torch.cat`` at every layer and step, copying every key and
value each time (quadratic in the length). ``PreallocatedLayer`` keeps the same interface (the
model sees ``keys[:, :, :length]``, so masks and attention span only the filled part, as with a
dynamic cache) but writes each new position in place into buffers sized for the prompt plus every
new token. Finished rows still leave the batch: ``batch_select_indices`` compacts the buffers (one
copy when rows finish or beams are reordered, instead of one per step). Sliding-window and other
special layers keep transformers' own classes.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

CACHE_IMPLEMENTATIONS = ("preallocated", "dynamic")


class PreallocatedLayer(DynamicLayer):
    """A full-attention layer whose keys and values live in [B, heads, capacity, head_dim] buffers."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0
        self._keys = self._values = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        batch, heads = key_states.shape[:2]
        self._keys = key_states.new_zeros((batch, heads, self.capacity, key_states.shape[-1]))
        self._values = value_states.new_zeros((batch, heads, self.capacity, value_states.shape[-1]))
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"The preallocated KV cache holds {self.capacity} positions; {end} were needed.")
        self._keys[:, :, self.length:end] = key_states
        self._values[:, :, self.length:end] = value_states
        self.length = end
        self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self._keys = self._keys.index_select(0, indices)
            self._values = self._values.index_select(0, indices)
            self.keys, self.values = self._keys[:, :, :self.length], self._values[:, :, :self.length]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx.to(self.device))

    def crop(self, tokens_to_remove: int) -> None:  # pragma: no cover (the engine never crops)
        raise NotImplementedError("PreallocatedLayer does not crop.")

    def batch_repeat_interleave(self, repeats: int) -> None:  # pragma: no cover
        raise NotImplementedError("PreallocatedLayer does not repeat rows; select indices instead.")


def make_cache(model, capacity: int, implementation: str = "preallocated") -> DynamicCache:
    """A cache for one left-padded batch of ``model`` holding up to ``capacity`` positions per row."""
    if implementation not in CACHE_IMPLEMENTATIONS:
        raise ValueError(f"cache_implementation must be one of {CACHE_IMPLEMENTATIONS}, got {implementation!r}.")
    cache = DynamicCache(config=model.config)
    if implementation == "preallocated":
        cache.layers = [PreallocatedLayer(capacity) if type(layer) is DynamicLayer else layer
                        for layer in cache.layers]
    return cache
