"""Preference pairs from groups of N scored responses per prompt.

Tie policy (the paper gives none): rewards that are None or NaN are dropped from their group;
a group with fewer than two valid rewards, or whose valid rewards all tie, gives no pair and
is counted (``PairStats.tied`` / ``PairStats.invalid``). Among equal best (or worst) rewards
the lowest sample index wins, so pairs are deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

PAIR_MODES = ("best_worst", "all", "constrained")


@dataclass(frozen=True)
class Pair:
    prompt_index: int
    chosen: int  # sample index within the prompt's group
    rejected: int
    chosen_reward: float
    rejected_reward: float


@dataclass
class PairStats:
    groups: int = 0
    pairs: int = 0
    tied: int = 0  # groups whose valid rewards all tie
    invalid: int = 0  # groups with fewer than two valid rewards
    dropped_rewards: int = 0  # None/NaN rewards ignored
    skipped_prompts: list[int] = field(default_factory=list)

    @property
    def frac_tied(self) -> float:
        return self.tied / self.groups if self.groups else 0.0


def _valid(rewards) -> list[tuple[int, float]]:
    return [(i, float(r)) for i, r in enumerate(rewards) if r is not None and not math.isnan(float(r))]


def build_pairs(groups: list[list[float | None]], mode: str = "best_worst",
                secondary: list[list[float]] | None = None, top_k: int = 4) -> tuple[list[Pair], PairStats]:
    """Pairs from per-prompt reward groups.

    - ``best_worst`` (default, the paper): highest vs lowest reward.
    - ``all``: every (i, j) with reward_i > reward_j.
    - ``constrained`` (the paper's ConstrainedStories rule): among the ``top_k`` best by reward,
      the one with the highest ``secondary`` score is chosen; among the ``top_k`` worst, the one
      with the lowest ``secondary`` score is rejected.
    """
    if mode not in PAIR_MODES:
        raise ValueError(f"pair mode must be one of {PAIR_MODES}, got {mode!r}.")
    if mode == "constrained" and (secondary is None or len(secondary) != len(groups)):
        raise ValueError("pair mode 'constrained' needs one secondary score list per group.")
    stats, pairs = PairStats(groups=len(groups)), []
    for p, rewards in enumerate(groups):
        valid = _valid(rewards)
        stats.dropped_rewards += len(rewards) - len(valid)
        if len(valid) < 2:
            stats.invalid += 1
            stats.skipped_prompts.append(p)
            continue
        if max(r for _, r in valid) == min(r for _, r in valid):
            stats.tied += 1
            stats.skipped_prompts.append(p)
            continue
        if mode == "all":
            pairs += [Pair(p, i, j, ri, rj) for i, ri in valid for j, rj in valid if ri > rj]
            continue
        ranked = sorted(valid, key=lambda x: (-x[1], x[0]))  # best first, lower index first on ties
        if mode == "best_worst":
            (ci, cr), (ri, rr) = ranked[0], min(valid, key=lambda x: (x[1], x[0]))
        else:
            k = min(top_k, len(ranked) // 2) or 1
            second = secondary[p]
            ci, cr = max(ranked[:k], key=lambda x: (second[x[0]], -x[0]))
            ri, rr = min(ranked[-k:], key=lambda x: (second[x[0]], x[0]))
        pairs.append(Pair(p, ci, ri, cr, rr))
    stats.pairs = len(pairs)
    return pairs, stats
