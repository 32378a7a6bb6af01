"""The paper's pairwise objectives on preference pairs (``pairs.build_pairs``; best vs worst by default):
``lpo`` (Eq. 10), ``lpo_latent`` (Eq. 11), ``lpo_joint`` (Eq. 9) and the ``nll_chosen`` baseline.

A pair keeps only which reward was larger, so each fits a Bradley-Terry model of *which choice the pair
design calls chosen*: with best-vs-worst pairs, "who is best vs who is worst among the group", which depends
on the exploration (a choice never drawn as the worst is never rejected); with ``pair_mode: all``, how often
a choice wins, not its mean reward. docs/objectives.md derives both; ``lpo_regression`` is the objective
whose fixed point is the expected-reward optimum.
"""

from __future__ import annotations

import torch

from lpo_train.losses import lpo_joint_loss, lpo_latent_loss, lpo_loss, nll_chosen_loss
from lpo_train.objectives.base import Objective
from lpo_train.pairs import build_pairs


class PairwiseObjective(Objective):
    unit = "pair"
    estimand = ("Bradley-Terry fit of the pair design's 'chosen over rejected' frequencies (best vs worst by default): "
                "depends on the exploration; not the expected-reward optimum in general")

    def units(self, draws, args):
        pair_mode = getattr(args, "pair_mode", None) or "best_worst"
        secondary = None
        if pair_mode == "constrained":
            secondary = [d.secondary for d in draws]
            if any(s is None for s in secondary):
                raise ValueError("pair_mode 'constrained' needs two reward functions: the ranking reward and the "
                                 "secondary criterion (e.g. the constraint).")
        tie_seeds = [d.tie_seed for d in draws]
        return build_pairs([d.rewards for d in draws], pair_mode, secondary=secondary,
                           top_k=getattr(args, "pair_top_k", 4),
                           tie_seeds=None if any(s is None for s in tie_seeds) else tie_seeds)

    def per_pair(self, batch, args) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(per-pair loss, chosen log-ratio, rejected log-ratio) of the implicit reward's beta x log-ratio."""
        c = batch.chosen_logps - batch.ref_chosen_logps
        r = batch.rejected_logps - batch.ref_rejected_logps
        return lpo_loss(batch.chosen_logps, batch.rejected_logps, args.beta, batch.ref_chosen_logps,
                        batch.ref_rejected_logps), c, r

    def loss(self, batch, args):
        per_pair, ratio_c, ratio_r = self.per_pair(batch, args)
        with torch.no_grad():
            chosen, rejected = args.beta * ratio_c, args.beta * ratio_r
            metrics = {}
            if batch.chosen_word is not None:  # TRL's implicit reward of the whole (words, choices) response
                word_beta = getattr(args, "word_beta", args.beta)
                chosen, rejected = chosen + word_beta * batch.chosen_word, rejected + word_beta * batch.rejected_word
                metrics["word_rewards/margins"] = (word_beta * (batch.chosen_word - batch.rejected_word)).mean()
            metrics.update({
                "logps/chosen": batch.chosen_logps.mean(), "logps/rejected": batch.rejected_logps.mean(),
                "rewards/chosen": chosen.mean(), "rewards/rejected": rejected.mean(),
                "rewards/margins": (chosen - rejected).mean(), "rewards/accuracies": (chosen > rejected).float().mean(),
                "pairs/reward_chosen": batch.chosen_reward.mean(), "pairs/reward_rejected": batch.rejected_reward.mean()})
        return per_pair, metrics


class Eq10(PairwiseObjective):
    name = "lpo"


class Latent(PairwiseObjective):
    """Eq. 11: the pair loss on the marginal log-ratio log P'(y)/P'_ref(y), the choice summed out."""

    name = "lpo_latent"

    def per_pair(self, batch, args):
        c, r = batch.chosen_latent, batch.rejected_latent
        return lpo_latent_loss(c, r, args.beta), c, r


class Joint(PairwiseObjective):
    """Eq. 9: DPO on (words, choices); with a frozen LM (no ``use_peft``) the word terms are 0 and it is Eq. 10."""

    name = "lpo_joint"

    def per_pair(self, batch, args):
        c = batch.chosen_logps - batch.ref_chosen_logps
        r = batch.rejected_logps - batch.ref_rejected_logps
        return lpo_joint_loss(batch.chosen_logps, batch.rejected_logps, args.beta, batch.chosen_word,
                              batch.rejected_word, batch.ref_chosen_logps, batch.ref_rejected_logps,
                              getattr(args, "word_beta", None)), c, r


class NllChosen(PairwiseObjective):
    name = "nll_chosen"
    estimand = ("maximum likelihood of the design's 'chosen' choice: P(k|x) = P(k is chosen), the frequency of being "
                "best in a group, not the expected reward")

    def per_pair(self, batch, args):
        return (nll_chosen_loss(batch.chosen_logps), batch.chosen_logps - batch.ref_chosen_logps,
                batch.rejected_logps - batch.ref_rejected_logps)


EQ10, LATENT, JOINT, NLL_CHOSEN = Eq10(), Latent(), Joint(), NllChosen()
