"""The sampling layer: next-token distributions exactly as HF ``generate`` builds them, and the draw.

HF applies its warpers in this order: temperature, top-k, top-p, min-p, each on the output of
the previous one (so top-p sees the top-k mass renormalised). ``warp`` does the same, with any
of the four given per row, which is how a head whose knob is top-p (or top-k, min-p) composes
with the fixed truncations: its value takes that knob's place in the chain. Equality with
transformers' ``TemperatureLogitsWarper`` / ``TopKLogitsWarper`` / ``TopPLogitsWarper`` /
``MinPLogitsWarper`` is tested to 1e-6.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MIN_TEMPERATURE = 1e-4  # temperatures at or below this decode greedily (z / T would overflow)
TRUNCATIONS = ("top_k", "top_p", "min_p")  # the knobs a head may set in place of a fixed truncation


@dataclass(frozen=True)
class Truncation:
    """The fixed truncations of a call (HF's names and "off" values)."""

    top_k: int = 0  # 0 = off (HF generate's default is 50)
    top_p: float = 1.0
    min_p: float = 0.0

    def __post_init__(self):
        if self.top_k < 0 or not 0 < self.top_p <= 1 or not 0 <= self.min_p < 1:
            raise ValueError(f"Need top_k >= 0 (0 = off), 0 < top_p <= 1 and 0 <= min_p < 1; got top_k="
                             f"{self.top_k}, top_p={self.top_p}, min_p={self.min_p}.")

    @property
    def active(self) -> bool:
        return self.top_k != 0 or self.top_p != 1.0 or self.min_p != 0.0


NO_TRUNCATION = Truncation()


def _rows(value, batch: int, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(value, dtype=like.dtype, device=like.device).expand(batch) if not torch.is_tensor(
        value) or value.dim() == 0 else value.to(like.device, like.dtype)


def _any(mask: torch.Tensor) -> bool:
    """Whether a per-row branch may be needed. On an accelerator this is always True (the branch is
    applied with ``torch.where`` / as a no-op) so that no device-to-host copy is made; on the CPU,
    where asking costs nothing, the branch is skipped when no row needs it."""
    return mask.device.type != "cpu" or bool(mask.any())


def _one_hot_argmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)


def tempered_logits(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """z / T per row ([B] temperatures), as HF's ``TemperatureLogitsWarper``; rows with T <= MIN_TEMPERATURE
    (0 included) keep only their argmax logit (every other entry -inf), so no row divides by a vanishing
    temperature and softmax of the result is ``tempered`` (what the HF ``generate`` adapters return)."""
    t = _rows(temperature, logits.shape[0], logits)
    greedy_rows = t <= MIN_TEMPERATURE
    safe = torch.where(greedy_rows, torch.ones_like(t), t)
    scaled = logits / safe[:, None]
    if _any(greedy_rows):
        top = logits.argmax(-1, keepdim=True)
        only_top = torch.full_like(logits, float("-inf")).scatter(-1, top, logits.gather(-1, top))
        scaled = torch.where(greedy_rows[:, None], only_top, scaled)
    return scaled


def tempered(logits: torch.Tensor, temperature) -> torch.Tensor:
    """softmax(z / T) per row, as HF's ``TemperatureLogitsWarper`` then softmax; rows with T <=
    MIN_TEMPERATURE (0 included) are one-hot on the argmax, so a vanishing temperature never overflows
    (softmax subtracts the row maximum itself, and z / T for T > MIN_TEMPERATURE stays finite)."""
    if not torch.is_tensor(temperature):  # one number for every row: decided on the host
        if float(temperature) <= MIN_TEMPERATURE:
            return _one_hot_argmax(logits)
        return torch.softmax(logits if float(temperature) == 1.0 else logits / float(temperature), dim=-1)
    return torch.softmax(tempered_logits(logits, temperature), dim=-1)  # a greedy row: softmax of one finite logit


def truncate(probs: torch.Tensor, top_k=0, top_p=1.0, min_p=0.0) -> torch.Tensor:
    """Apply top-k, then top-p, then min-p to a distribution [B, V], renormalising after each, as
    HF's warpers do. Each setting is a number or a per-row tensor; 0 / 1.0 / 0.0 switch it off."""
    batch, vocab = probs.shape
    k = _rows(top_k, batch, probs)
    p = _rows(top_p, batch, probs)
    m = _rows(min_p, batch, probs)
    use_k, use_p, use_m = (top_k != 0 if not torch.is_tensor(top_k) else _any(k > 0),
                           top_p != 1.0 if not torch.is_tensor(top_p) else _any(p < 1),
                           min_p != 0.0 if not torch.is_tensor(min_p) else _any(m > 0))
    if use_k or use_p:  # one sort serves both
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = torch.ones_like(sorted_p, dtype=torch.bool)
        if use_k:
            k_eff = torch.where(k > 0, k, torch.full_like(k, vocab))
            keep = torch.arange(vocab, device=probs.device)[None, :] < k_eff[:, None]
            sorted_p = sorted_p * keep
            sorted_p = sorted_p / sorted_p.sum(-1, keepdim=True)
        if use_p:  # keep the smallest prefix whose mass reaches p (HF: ascending cumsum > 1 - p)
            above = sorted_p.cumsum(-1) - sorted_p
            first = torch.arange(vocab, device=probs.device)[None, :] == 0  # the top token always stays
            keep = keep & ((above < p[:, None]) | (p[:, None] >= 1) | first)
            sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        probs = probs / probs.sum(-1, keepdim=True)
    if use_m:
        probs = probs * (probs >= m[:, None] * probs.amax(-1, keepdim=True))
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def warp(logits: torch.Tensor, temperature, truncation: Truncation = NO_TRUNCATION, **per_row) -> torch.Tensor:
    """The distribution HF ``generate(do_sample=True, ...)`` samples from: temperature, then the
    truncations. ``per_row`` (``top_k=``, ``top_p=`` or ``min_p=``: [B] tensors) replaces that
    truncation's fixed value (a head choosing that knob)."""
    probs = tempered(logits, temperature)
    if not per_row and not truncation.active:
        return probs
    settings = {"top_k": truncation.top_k, "top_p": truncation.top_p, "min_p": truncation.min_p, **per_row}
    return truncate(probs, **settings)


def knob_distribution(logits: torch.Tensor, knob: str, values: torch.Tensor, base_temperature: float = 1.0,
                      truncation: Truncation = NO_TRUNCATION) -> torch.Tensor:
    """Next-token distribution [B, V] when row b sets ``knob = values[b]`` on top of ``truncation``.

    temperature: T = values, then the fixed truncations; top_k / top_p / min_p: T =
    ``base_temperature`` and the row's value in that truncation's place.
    """
    if knob == "temperature":
        return warp(logits, values, truncation)
    if knob not in TRUNCATIONS:
        raise ValueError(f"Unknown knob {knob!r}; choose temperature or one of {TRUNCATIONS}.")
    return warp(logits, base_temperature, truncation, **{knob: values.to(logits.dtype)})


SAMPLE_BLOCK = 1024  # vocabulary entries per block of the two-level inverse CDF


def sample_from(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One index per row by inverse-CDF sampling with the given uniforms in [0, 1): the first index whose
    cumulative mass exceeds u x total. Zero-mass entries are never drawn; each row depends only on its
    own probabilities and uniform (batch-invariant).

    Two levels, so no float64 cumulative sum runs over the whole vocabulary: float64 sums of blocks of
    ``SAMPLE_BLOCK`` entries locate the block, then a float64 cumulative sum inside that one block
    locates the entry. This is the same inverse CDF as a full float64 cumsum up to float64 rounding of
    the partial sums (|error| < V x 2^-53 of the total mass), so a draw can differ from it only when u
    falls within that distance of a boundary."""
    batch, vocab = probs.shape
    u01 = uniforms.to(probs.device, torch.float64)
    if vocab <= 2 * SAMPLE_BLOCK:
        cdf = probs.double().cumsum(-1)
        return (cdf <= u01[:, None] * cdf[:, -1:]).sum(-1).clamp(max=vocab - 1)
    blocks = -(-vocab // SAMPLE_BLOCK)
    padded = probs if blocks * SAMPLE_BLOCK == vocab else torch.nn.functional.pad(
        probs, (0, blocks * SAMPLE_BLOCK - vocab))
    by_block = padded.view(batch, blocks, SAMPLE_BLOCK)
    block_cdf = by_block.sum(-1, dtype=torch.float64).cumsum(-1)  # [B, blocks]
    u = u01[:, None] * block_cdf[:, -1:]
    block = (block_cdf <= u).sum(-1).clamp(max=blocks - 1)  # the first block whose cumulative mass exceeds u
    before = torch.where(block > 0, block_cdf.gather(1, (block - 1).clamp(min=0)[:, None])[:, 0],
                         torch.zeros_like(u[:, 0]))
    inner = by_block.gather(1, block[:, None, None].expand(batch, 1, SAMPLE_BLOCK))[:, 0].double()
    index = ((before[:, None] + inner.cumsum(-1)) <= u).sum(-1)
    # rounding guard: never past the block's last entry with mass
    last = SAMPLE_BLOCK - 1 - (inner.flip(-1) > 0).int().argmax(-1)
    return (block * SAMPLE_BLOCK + torch.minimum(index, last)).clamp(max=vocab - 1)
