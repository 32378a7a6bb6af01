"""Preference pairs from groups of N scored responses per prompt.

Tie policy (the paper gives none): rewards that are None or NaN are dropped from their group;
a group with fewer than two valid rewards, or whose valid rewards all tie, gives no pair and
is counted (``PairStats.tied`` / ``PairStats.invalid``). Among equal best (or worst) rewards
the lowest sample index wins, so pairs are deterministic; with ``tie_seeds`` (one per group) a
seeded random order per group decides instead. LPO needs the latter: with stratified exploration, sample 0
carries the head's own favourite, and "lowest index wins" would feed the head its own
preference back as "chosen" whenever rewards tie (a loop that collapses it onto an arbitrary value).

Two callers, one module: LPO's ``pair_mode`` (``PAIR_MODES``, ``build_pairs``) and ``lpo-train train-value``'s
(``VALUE_PAIR_MODES``: ``bradley_terry_pairs`` or ``build_pairs``' best vs worst).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

BEST_WORST, ALL, CONSTRAINED, BRADLEY_TERRY = "best_worst", "all", "constrained", "bradley_terry"
PAIR_MODES = (BEST_WORST, ALL, CONSTRAINED)  # build_pairs: LPO's pair_mode
VALUE_PAIR_MODES = (BRADLEY_TERRY, BEST_WORST)  # train-value's pair_mode: one pair per prompt


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

    @property
    def frac_tied(self) -> float:
        return self.tied / self.groups if self.groups else 0.0


def _valid(rewards) -> list[tuple[int, float]]:
    return [(i, float(r)) for i, r in enumerate(rewards) if r is not None and not math.isnan(float(r))]


def _informative(rewards, stats: PairStats) -> list[tuple[int, float]] | None:
    """A group's valid ``(sample, reward)``s, or None when it teaches nothing: fewer than two valid rewards
    (``stats.invalid``) or all of them tied (``stats.tied``); dropped rewards are counted either way."""
    valid = _valid(rewards)
    stats.dropped_rewards += len(rewards) - len(valid)
    if len(valid) < 2:
        stats.invalid += 1
        return None
    if max(r for _, r in valid) == min(r for _, r in valid):
        stats.tied += 1
        return None
    return valid


def build_pairs(groups: list[list[float | None]], mode: str = "best_worst",
                secondary: list[list[float]] | None = None, top_k: int = 4,
                tie_seeds: list[int] | None = None) -> tuple[list[Pair], PairStats]:
    """Pairs from per-prompt reward groups.

    - ``best_worst`` (default, the paper): highest vs lowest reward.
    - ``all``: every (i, j) with reward_i > reward_j.
    - ``constrained`` (the paper's ConstrainedStories rule): among the ``top_k`` best by reward,
      the one with the highest ``secondary`` score is chosen; among the ``top_k`` worst, the one
      with the lowest ``secondary`` score is rejected.
    """
    if mode not in PAIR_MODES:
        raise ValueError(f"pair mode must be one of {PAIR_MODES}, got {mode!r}.")
    if tie_seeds is not None and len(tie_seeds) != len(groups):
        raise ValueError(f"tie_seeds has {len(tie_seeds)} seeds for {len(groups)} groups.")
    if mode == "constrained" and (secondary is None or len(secondary) != len(groups)):
        raise ValueError("pair mode 'constrained' needs one secondary score list per group.")
    stats, pairs = PairStats(groups=len(groups)), []
    for p, rewards in enumerate(groups):
        valid = _informative(rewards, stats)
        if valid is None:
            continue
        if mode == "all":
            pairs += [Pair(p, i, j, ri, rj) for i, ri in valid for j, rj in valid if ri > rj]
            continue
        order = list(range(len(rewards)))
        if tie_seeds is not None:  # a seed of the group's own (its prompt), not of its place in the batch
            random.Random(tie_seeds[p]).shuffle(order)
        rank = {i: order.index(i) for i, _ in valid}  # tie-break position of each sample
        ranked = sorted(valid, key=lambda x: (-x[1], rank[x[0]]))  # best first, ties by tie-break position
        if mode == "best_worst":
            (ci, cr), (ri, rr) = ranked[0], min(valid, key=lambda x: (x[1], rank[x[0]]))
        else:
            k = min(top_k, len(ranked) // 2) or 1
            second = secondary[p]
            ci, cr = max(ranked[:k], key=lambda x: (second[x[0]], -rank[x[0]]))
            ri, rr = min(ranked[-k:], key=lambda x: (second[x[0]], rank[x[0]]))
        pairs.append(Pair(p, ci, ri, cr, rr))
    stats.pairs = len(pairs)
    return pairs, stats


def bradley_terry_pairs(groups: list[list[float | None]], bt_scale: float = 1.0,
                        seed: int = 0) -> tuple[list[Pair], PairStats]:
    """One pair per group with a label drawn from the reward gap (as in weak-to-strong search): the group's
    first two valid responses, the first chosen with probability sigmoid(bt_scale * (r_a - r_b)) (a coin flip
    when they tie, so tied groups give a pair too). One draw of ``random.Random(f"pairs-{seed}")`` per group with
    two valid rewards, in group order; groups with fewer are skipped (``stats.invalid``)."""
    rng = random.Random(f"pairs-{seed}")
    stats, pairs = PairStats(groups=len(groups)), []
    for p, rewards in enumerate(groups):
        valid = _valid(rewards)
        stats.dropped_rewards += len(rewards) - len(valid)
        if len(valid) < 2:
            stats.invalid += 1
            continue
        (a, ra), (b, rb) = valid[:2]
        p_a = 1.0 / (1.0 + math.exp(-bt_scale * (ra - rb)))
        pairs.append(Pair(p, a, b, ra, rb) if rng.random() < p_a else Pair(p, b, a, rb, ra))
    stats.pairs = len(pairs)
    return pairs, stats


def group_row(prompt_index: int, sample_index: int, num_generations: int) -> int:
    """Row of sample ``sample_index`` of prompt ``prompt_index`` in prompt-major order (the engine's)."""
    return prompt_index * num_generations + sample_index


def group_slices(values, num_generations: int) -> list:
    """Prompt-major ``values`` (N per prompt) as one group per prompt."""
    return [values[i:i + num_generations] for i in range(0, len(values), num_generations)]


@dataclass
class SideFeatures:
    """What the head's loss needs of one response, traced by the engine (the LM never runs again)."""

    hidden: torch.Tensor  # [decisions, H]: one row per head decision (1 for a sequence-level head)
    choices: torch.Tensor  # [decisions] long: grid index chosen at each decision
    token_logps: torch.Tensor | None = None  # [tokens, K]: log P(y_t | choice k), for lpo_latent
    input_ids: torch.Tensor | None = None  # [prompt + response] long: the joint (LoRA) loss teacher-forces them
    prompt_length: int = 0  # where the response starts in input_ids

    def nbytes(self) -> int:
        return sum(x.numel() * x.element_size() for x in (self.hidden, self.choices, self.token_logps, self.input_ids)
                   if x is not None)


@dataclass
class PairFeatures:
    chosen: SideFeatures
    rejected: SideFeatures
    chosen_reward: float
    rejected_reward: float
    family: str | None = None


@dataclass
class SampleFeatures:
    """One response as a training unit of the group-relative loss: its features, reward and advantage."""

    sample: SideFeatures
    sample_reward: float
    advantage: float
    family: str | None = None


@dataclass
class GroupFeatures:
    """A group objective's unit: some responses of one prompt, their rewards and (policy gradient) coefficients."""

    sides: list[SideFeatures]
    rewards: list[float]
    coefficients: list[float] | None = None
    family: str | None = None
