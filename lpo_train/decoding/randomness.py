"""Counter-based per-row randomness: the uniform a row uses at a step depends only on
(row seed, step, purpose), never on which other rows share the batch.

So a prompt decodes the same alone, in a batch, on another rank or after compaction, and a
run's samples do not depend on its batch size or process count (up to float rounding of the
model itself). splitmix64 finaliser in int64 arithmetic (wrapping), logical shifts emulated.
"""

from __future__ import annotations

import hashlib

import torch

_MASK = {s: (1 << (64 - s)) - 1 for s in (30, 27, 31, 11)}
_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as int64
_M1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_M2 = -7723592293110705685  # 0x94D049BB133111EB


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    return (x >> s) & _MASK[s]


def mix64(x: torch.Tensor) -> torch.Tensor:
    x = (x ^ _shr(x, 30)) * _M1
    x = (x ^ _shr(x, 27)) * _M2
    return x ^ _shr(x, 31)


def _int64(value: int) -> int:
    """A Python int wrapped to the signed 64-bit range (two's complement)."""
    return ((value + (1 << 63)) % (1 << 64)) - (1 << 63)


def row_uniforms(row_seeds: torch.Tensor, step: int, purpose: int = 0) -> torch.Tensor:
    """One uniform in [0, 1) per row, float64, a pure function of (seed, step, purpose)."""
    x = mix64(row_seeds + _int64((step * 2 + 1) * _GOLDEN))
    x = mix64(x + _int64((purpose + 1) * _M1))
    return _shr(x, 11).double() / float(1 << 53)


def seed_for(*parts) -> int:
    """A 63-bit seed from any printable parts (e.g. run seed, step, prompt text, sample index)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def derive_seeds(parent: torch.Tensor, step: int, copy: torch.Tensor) -> torch.Tensor:
    """Child seeds of ``parent`` seeds (int64), distinct per (step, copy index); 63-bit."""
    x = mix64(parent + _int64((step + 1) * _M2))
    return mix64(x + copy * _GOLDEN) & ((1 << 63) - 1)
