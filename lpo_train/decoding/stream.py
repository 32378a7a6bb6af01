"""One model decoding a left-padded batch: its KV cache, attention mask and positions, one forward per step.

Used by the engine (the main and auxiliary streams) and by the chunk scorers (incremental scoring).
"""

from __future__ import annotations

import weakref

import torch

from lpo_train.decoding.cache import make_cache


def left_pad(prompt_ids: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of a left-padded batch, as HF ``generate`` expects."""
    width = max(map(len, prompt_ids))
    ids = torch.tensor([[pad_id] * (width - len(x)) + list(x) for x in prompt_ids], dtype=torch.long, device=device)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in prompt_ids], dtype=torch.long, device=device)
    return ids, mask


def head_logits(head, softcap, hidden: torch.Tensor) -> torch.Tensor:
    """float32 logits of ``hidden`` through the output layer, with Gemma-style soft-capping."""
    logits = head(hidden).float()
    return torch.tanh(logits / softcap) * softcap if softcap else logits


class Stream:
    """One model decoding a left-padded batch with its own KV cache, mask and positions."""

    def __init__(self, model, prompt_ids: list[list[int]], pad_id: int, max_new_tokens: int,
                 cache_implementation: str = "preallocated", compile_decode_step: bool = False):
        self.model = model
        self.body, self.head = model.get_decoder(), model.get_output_embeddings()
        self.step_body = compiled_body(self.body) if compile_decode_step else self.body  # prefill stays eager
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        self.device = next(model.parameters()).device
        ids, mask = left_pad(prompt_ids, pad_id, self.device)
        self.width = width = ids.shape[1]
        # room for every generated token, always attended to: no torch.cat per step
        self.full_mask = torch.cat([mask, mask.new_ones((len(prompt_ids), max_new_tokens))], dim=-1)
        self.mask = self.full_mask[:, :width]
        positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.cache = make_cache(model, width + max_new_tokens, cache_implementation)
        self._forward(ids, positions)
        self.next_pos = positions[:, -1:] + 1

    def _forward(self, ids, positions, all_positions: bool = False, body=None):
        out = (self.body if body is None else body)(input_ids=ids, attention_mask=self.mask, position_ids=positions,
                        past_key_values=self.cache, use_cache=True)
        self.hidden = out.last_hidden_state[:, -1]
        self.logits = self._logits(self.hidden)
        return out.last_hidden_state if all_positions else None

    def _logits(self, hidden):
        return head_logits(self.head, self.softcap, hidden)

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the rows ``keep`` (finished rows leave; beams are reordered) — cache included."""
        keep = keep.to(self.device)
        self.cache.batch_select_indices(keep)
        self.full_mask, self.next_pos = self.full_mask[keep], self.next_pos[keep]
        self.hidden, self.logits = self.hidden[keep], self.logits[keep]
        self.mask = self.full_mask[:, :self.width]

    def advance(self, token: torch.Tensor) -> None:
        self.width += 1
        self.mask = self.full_mask[:, :self.width]
        self._forward(token[:, None].to(self.device), self.next_pos, body=self.step_body)
        self.next_pos = self.next_pos + 1

    def feed(self, ids: torch.Tensor) -> torch.Tensor:
        """Append ``ids`` [B, n] (right-padded rows are fine: causal attention never looks ahead);
        returns the hidden states at every new position, [B, n, H]."""
        n = ids.shape[1]
        self.width += n
        self.mask = self.full_mask[:, :self.width]
        positions = self.next_pos + torch.arange(n, device=self.device)
        hidden = self._forward(ids.to(self.device), positions, all_positions=True)
        self.next_pos = self.next_pos + n
        return hidden


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled_body(body):
    """``torch.compile(body, dynamic=True)``, compiled once per model body and reused by every call: the
    decode step's shapes change as rows leave and the cache grows, so they are symbolic; compaction
    and reordering happen outside the compiled forward, between steps."""
    if body not in _COMPILED:
        _COMPILED[body] = torch.compile(body, dynamic=True)
    return _COMPILED[body]


def vocab_size(model) -> int:
    return model.get_output_embeddings().weight.shape[0]
