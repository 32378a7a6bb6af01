"""``lpo_regression`` (the default): every pair of a prompt's samples, the head's choice log-ratio difference
regressed on their reward difference (the form of REBEL, Gao et al., 2024, on the latent choices).

Per group of n valid samples, with e_i = log P(tau_i)/P_ref(tau_i) - r_i / beta (uniform reference),
    loss = mean over the group's pairs of 1/2 (e_i - e_j)^2 = sum_i (e_i - mean e)^2 / (n - 1).
Its population minimiser over any design that compares every two choices with positive probability is
log P(k | x) = mu_k(x) / beta + const: the head P(k | x) ~ exp(mu_k(x) / beta), the KL-regularised
(beta, uniform reference) optimum of the expected reward, whose argmax is the choice of highest expected
reward whatever the reward distributions. Tied groups are kept: dropping them would condition on the
rewards and bias the fit (docs/objectives.md).
"""

from __future__ import annotations

import torch

from lpo_train.objectives.base import GroupUnit, Objective, count_comparisons, ordered_pair_metrics, per_group_sum


class RewardRegression(Objective):
    name = "lpo_regression"
    unit = "group"
    estimand = ("P(k|x) ~ exp(E[r | x, k] / beta) under any exploration that compares every two choices: the "
                "argmax is the expected-reward optimum")

    def check_config(self, args) -> None:
        if getattr(args, "pair_mode", None) not in (None, "all"):
            raise ValueError(f"loss_type 'lpo_regression' compares every pair of a group's samples; pair_mode "
                             f"{args.pair_mode!r} would select pairs by their rewards and bias the fit (unset "
                             "pair_mode, or use loss_type 'lpo' for the paper's best-vs-worst pairs).")
        if getattr(args, "choice_reference", None) not in (None, "uniform"):
            raise ValueError("loss_type 'lpo_regression' regresses log P(tau)/P_ref(tau) with the uniform reference; "
                             f"choice_reference {args.choice_reference!r} is not supported (unset it).")

    def units(self, draws, args):
        stats = count_comparisons(draws)
        units = []
        for p, draw in enumerate(draws):
            valid = draw.valid()
            if len(valid) >= 2:
                units.append(GroupUnit(p, tuple(valid), tuple(float(draw.rewards[i]) for i in valid)))
        return units, stats

    def loss(self, batch, args):
        ratio = batch.logps - batch.ref_logps
        residual = ratio.double() - batch.rewards / args.beta  # e_i
        g = batch.group
        count = per_group_sum(torch.ones_like(residual), g, batch.num_groups)
        mean = per_group_sum(residual, g, batch.num_groups) / count
        per_group = per_group_sum((residual - mean[g]) ** 2, g, batch.num_groups) / (count - 1)
        with torch.no_grad():
            metrics = ordered_pair_metrics(args.beta * ratio, batch.logps, batch.rewards, g)
            metrics["regression/residual_std"] = (per_group.mean()).sqrt()
        return per_group.to(batch.logps.dtype), metrics


REGRESSION = RewardRegression()
