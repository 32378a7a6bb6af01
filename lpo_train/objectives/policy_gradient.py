"""``group_relative``: an unbiased estimate of the gradient of the expected reward J = sum_k P(k|x) mu_k(x),
for every exploration mode, as -sum_i c_i log P(tau_i) with detached coefficients c_i per prompt:

- i.i.d. draws (exploration ``none``, ``uniform_mix``, a token-level head under ``stratified``): importance
  weight w_i = P_head(tau_i) / q(tau_i) (1 without exploration) and a leave-one-out baseline,
  c_i = w_i (r_i - mean_{j != i} r_j) / n (RLOO; unbiased because the other samples are independent of i).
- a sequence-level ``stratified`` draw with N >= K (every choice drawn): the all-choices form
  c_i = P(k_i) (rbar_k - b) / m_k, rbar_k the mean reward of choice k's m_k samples, b their mean; exact since
  sum_k grad P(k) = 0.
- a sequence-level ``stratified`` draw with N < K (N distinct choices without replacement): priority sampling,
  c_i = P(k_i) r_i / q_k (``decoding.adaptive.stratified_inclusion``), no baseline (one that depends on the
  draw would bias it).

``scale_rewards='group'`` (TRL GRPO's default) divides each prompt's coefficients by its reward std: a
per-prompt random scale, so the update is no longer the expected-reward gradient (with two distinct rewards
it only sees which one won); ``'none'`` (default here) keeps the estimate unbiased.
"""

from __future__ import annotations

import math

import torch

from lpo_train.objectives.base import GroupUnit, Objective, count_comparisons, per_group_sum


def policy_gradient_coefficients(draw, scale_rewards: str = "none", eps: float = 1e-4) -> tuple[list[int], list[float]]:
    """The valid samples of one draw and each one's coefficient c_i (module docstring)."""
    valid = draw.valid()
    if len(valid) < 2:
        return [], []
    r = {i: float(draw.rewards[i]) for i in valid}
    if draw.design == "stratified":
        probs, choices = draw.head_probs, draw.choices
        if draw.inclusion is None:  # every grid value drawn (N >= K): the all-choices form
            by_choice: dict[int, list[int]] = {}
            for i in valid:
                by_choice.setdefault(choices[i], []).append(i)
            means = {k: sum(r[i] for i in ids) / len(ids) for k, ids in by_choice.items()}
            baseline = sum(means.values()) / len(means)
            coef = [probs[choices[i]] * (means[choices[i]] - baseline) / len(by_choice[choices[i]]) for i in valid]
        else:  # N < K distinct choices: priority-sampling (Horvitz-Thompson) weights
            coef = [probs[choices[i]] * r[i] / draw.inclusion[choices[i]] for i in valid]
    else:
        n, total = len(valid), sum(r.values())
        coef = [math.exp(draw.head_logps[i] - draw.behaviour_logps[i]) * (r[i] - (total - r[i]) / (n - 1)) / n
                for i in valid]
    if scale_rewards == "group":
        values = list(r.values())
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        coef = [c / (std + eps) for c in coef]
    return valid, coef


class GroupRelative(Objective):
    name = "group_relative"
    unit = "group"
    estimand = ("with scale_rewards 'none': gradient ascent on E_head[r]; a local maximum of the expected reward "
                "(for a free head, the expected-reward optimum)")

    def check_config(self, args) -> None:
        if getattr(args, "protocol", "online") == "offline":
            raise ValueError("loss_type 'group_relative' needs protocol 'online': its gradient is taken under the head "
                             "that drew the samples, and the offline protocol stores pairs of the initial head.")

    def units(self, draws, args):
        stats = count_comparisons(draws)
        units = []
        for p, draw in enumerate(draws):
            samples, coef = policy_gradient_coefficients(draw, getattr(args, "scale_rewards", "none"))
            if samples and any(c != 0 for c in coef):
                units.append(GroupUnit(p, tuple(samples), tuple(float(draw.rewards[i]) for i in samples),
                                       tuple(coef)))
        return units, stats

    def loss(self, batch, args):
        coef = batch.coefficients.to(batch.logps.dtype)
        per_group = per_group_sum(-coef * batch.logps, batch.group, batch.num_groups)
        with torch.no_grad():
            metrics = {"logps/sample": batch.logps.mean(), "advantages/abs_mean": coef.abs().mean(),
                       "logps/advantage_weighted": (coef * batch.logps).sum() / coef.abs().sum().clamp(min=1e-12)}
        return per_group, metrics


GROUP_RELATIVE = GroupRelative()
