"""What every objective reads and returns: a prompt's scored draw, the two batch types, the interface."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from lpo_train.pairs import PairStats


@dataclass
class GroupDraw:
    """One prompt's N samples as an objective sees them: rewards and how the head's choices were drawn.

    ``head_logps[i]`` is log P_head(tau_i) under the head that drew the choices (summed over the sample's
    decisions), ``behaviour_logps[i]`` log q(tau_i) under the distribution they were actually drawn from
    (the exploration mixture; equal to ``head_logps`` without exploration). A sequence-level stratified draw
    (``design='stratified'``: N choices without replacement) also gives each sample's ``choices`` and the
    head's distribution ``head_probs`` over the K grid values, and, when N < K, ``inclusion``: the
    priority-sampling inclusion probability q_k of each grid value (``decoding.adaptive.stratified_inclusion``).
    """

    rewards: list[float]
    head_logps: list[float] = field(default_factory=list)
    behaviour_logps: list[float] = field(default_factory=list)
    design: str = "iid"  # "iid" (each sample's choices drawn independently) or "stratified"
    choices: list[int] | None = None
    head_probs: list[float] | None = None
    inclusion: list[float] | None = None
    tie_seed: int | None = None
    secondary: list[float] | None = None

    def valid(self) -> list[int]:
        """Indices of the samples whose reward is a number (None / NaN rewards are dropped)."""
        return [i for i, r in enumerate(self.rewards) if r is not None and not math.isnan(float(r))]


@dataclass(frozen=True)
class GroupUnit:
    """A training unit of the group objectives: some samples of one prompt, with their rewards and (for the
    policy gradient) the detached coefficient c_i of each sample's -log P(tau_i)."""

    prompt_index: int
    samples: tuple[int, ...]
    rewards: tuple[float, ...]
    coefficients: tuple[float, ...] | None = None


@dataclass
class PairBatch:
    """A batch of preference pairs, scored by the head: log P(tau) of each side summed over its decisions,
    the reference log-probabilities, and for Eq. 11 / Eq. 9 the latent and word log-ratios."""

    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    ref_chosen_logps: torch.Tensor
    ref_rejected_logps: torch.Tensor
    chosen_reward: torch.Tensor
    rejected_reward: torch.Tensor
    chosen_latent: torch.Tensor | None = None
    rejected_latent: torch.Tensor | None = None
    chosen_word: torch.Tensor | None = None
    rejected_word: torch.Tensor | None = None


@dataclass
class SampleBatch:
    """A batch of group units flattened to samples: ``group`` [S] numbers each sample's unit (0..G-1)."""

    logps: torch.Tensor  # [S] log P(tau_i) under the current head
    ref_logps: torch.Tensor  # [S] log P_ref(tau_i) of the uniform reference
    rewards: torch.Tensor  # [S] float64
    group: torch.Tensor  # [S] long
    num_groups: int
    coefficients: torch.Tensor | None = None  # [S] (policy gradient)


class Objective:
    """``units`` makes a step's training units from its draws; ``loss`` gives one loss per unit and the metrics.
    ``unit``: 'pair' (``Pair`` units, ``PairBatch``), 'group' (``GroupUnit`` units, ``SampleBatch``) or
    'reference' (no reward: the likelihood objective)."""

    name = ""
    unit = "pair"
    estimand = ""  # one line; the derivation is in docs/objectives.md

    def check_config(self, args) -> None:
        """Raise a ValueError naming the setting when ``args`` asks for something this objective cannot do."""

    def units(self, draws: list[GroupDraw], args) -> tuple[list, PairStats]:
        raise NotImplementedError

    def loss(self, batch, args) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError


def count_comparisons(draws: list[GroupDraw]) -> PairStats:
    """Groups, tied / invalid groups and dropped rewards as ``pairs.build_pairs`` counts them, with ``pairs`` the
    number of sample pairs whose rewards differ (what a step has to learn from)."""
    stats = PairStats(groups=len(draws))
    for draw in draws:
        valid = draw.valid()
        stats.dropped_rewards += len(draw.rewards) - len(valid)
        if len(valid) < 2:
            stats.invalid += 1
            continue
        values = [float(draw.rewards[i]) for i in valid]
        if max(values) == min(values):
            stats.tied += 1
        stats.pairs += sum(a != b for j, a in enumerate(values) for b in values[j + 1:])
    return stats


def per_group_sum(values: torch.Tensor, group: torch.Tensor, num_groups: int) -> torch.Tensor:
    return values.new_zeros(num_groups).index_add_(0, group, values)


def ordered_pair_metrics(beta_ratio: torch.Tensor, logps: torch.Tensor, rewards: torch.Tensor,
                         group: torch.Tensor) -> dict[str, torch.Tensor]:
    """TRL's DPO metrics over every pair of samples of a group whose rewards differ, the higher-reward sample as
    'chosen': ``rewards/chosen|rejected`` = beta x log-ratio, their ``margins`` and ``accuracies``,
    ``logps/chosen|rejected``."""
    same = group[:, None] == group[None, :]
    higher = same & (rewards[:, None] > rewards[None, :])
    c, r = higher.nonzero(as_tuple=True)
    if not len(c):
        return {}
    chosen, rejected = beta_ratio[c], beta_ratio[r]
    return {"rewards/chosen": chosen.mean(), "rewards/rejected": rejected.mean(),
            "rewards/margins": (chosen - rejected).mean(), "rewards/accuracies": (chosen > rejected).float().mean(),
            "logps/chosen": logps[c].mean(), "logps/rejected": logps[r].mean()}
