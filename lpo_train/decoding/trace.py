"""``Trace``: what the engine returns for one generated sequence. Its own module, so that the engine and the
per-row record that builds the traces (``rows``) both import it and neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Trace:
    prompt_index: int
    sample_index: int
    prompt_ids: list[int]
    token_ids: list[int]  # generated tokens, EOS included when produced
    text: str  # decoded completion, without EOS/special tokens, cut after a stop string
    finish_reason: str  # "eos", "stop" or "length"
    values: list[float]  # the knob value applied at each step (temperature: 0 = greedy)
    entropies: list[float] | None  # entropy (nats) of softmax(raw logits) at each step (trace_entropy=True)
    choices: list[int] | None = None  # grid index per step (one entry for sequence rules)
    hidden: torch.Tensor | None = None  # [steps or 1, H] in the model's dtype, on the model's device
    choice_logps: torch.Tensor | None = None  # [steps, K] float32, on the model's device
    score: float | None = None  # the search's final score (chunk-level guidance), when one ran
    choice_probs: torch.Tensor | None = None  # [steps or 1, K] float32 beside ``hidden``: the rule's distribution
    # over its grid at each traced decision (before exploration; rules that have one), on the model's device
