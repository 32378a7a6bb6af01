"""LPO losses (Dhuliawala et al., 2024) as pure functions on tensors; each returns per-pair losses.

Notation: for a pair (chosen c, rejected r), ``*_logps`` are log-probabilities of the head's
choices, summed over response tokens for token-level heads (prompt and padding masked) or the
single sequence-level choice. The paper takes the reference over choices to be uniform and drops
it (footnote 3). It cancels only when both responses make the same number of decisions: a
token-level head's uniform reference is log P_ref(tau) = -T log K for T decisions, so the
``ref_*_logps`` arguments (default 0, the paper's literal Eq. 10) make it explicit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SCALE_REWARDS = ("none", "group")  # group_relative: lpo_train.objectives.policy_gradient


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over the last dimension of ``values`` where ``mask`` is 1 (-inf outside is ignored)."""
    return torch.where(mask.bool(), values, torch.zeros_like(values)).sum(-1)


def choice_logps(head_log_probs: torch.Tensor, choices: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log P(tau) of the recorded choices: [B, T, K] head log-probs, [B, T] choices -> [B] (sum over T)."""
    picked = head_log_probs.gather(-1, choices.clamp(min=0)[..., None]).squeeze(-1)
    return masked_sum(picked, mask)


def uniform_reference_logps(mask: torch.Tensor, num_choices: int) -> torch.Tensor:
    """log P_ref(tau) of a uniform reference over ``num_choices``: -(decisions) x log K, [B]."""
    return -mask.sum(-1).to(torch.float32) * math.log(num_choices)


def lpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, beta: float = 0.1,
             ref_chosen_logps=0.0, ref_rejected_logps=0.0) -> torch.Tensor:
    """Eq. 10: -log sigmoid(beta * ((log P(tau_c) - log P_ref(tau_c)) - (log P(tau_r) - log P_ref(tau_r)))), per pair."""
    return -F.logsigmoid(beta * ((chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)))


def lpo_joint_loss(chosen_logps, rejected_logps, beta: float = 0.1,
                   chosen_word_logratio: torch.Tensor | None = None,
                   rejected_word_logratio: torch.Tensor | None = None,
                   ref_chosen_logps=0.0, ref_rejected_logps=0.0, word_beta: float | None = None) -> torch.Tensor:
    """Eq. 9: DPO on (words, temperatures), per pair:
    -log sigmoid(word_beta x (word_c - word_r) + beta x (choice_c - choice_r)), the word terms
    log P(y)/P_ref(y) summed over tokens, the choice terms as in Eq. 10. The paper has one beta
    (``word_beta`` None = ``beta``); with a frozen LM the word terms are 0 (P = P_ref) and Eq. 9 is Eq. 10."""
    word = 0.0
    if chosen_word_logratio is not None or rejected_word_logratio is not None:
        if chosen_word_logratio is None or rejected_word_logratio is None:
            raise ValueError("Give both chosen_word_logratio and rejected_word_logratio, or neither.")
        word = (beta if word_beta is None else word_beta) * (chosen_word_logratio - rejected_word_logratio)
    choice = (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)
    return -F.logsigmoid(word + beta * choice)


def latent_logratio(head_log_probs: torch.Tensor, token_choice_logps: torch.Tensor, mask: torch.Tensor,
                    form: str = "token") -> torch.Tensor:
    """log P'(y) - log P'_ref(y) with the choice marginalised (Eq. 11), [B].

    ``head_log_probs``: [B, T, K] log P(tau_k | h_t) (for a sequence-level head, the one row
    repeated over T); ``token_choice_logps``: [B, T, K] log P(y_t | tau_k) from the trace;
    the reference over choices is uniform. ``form="token"`` marginalises per token (the paper's
    Eq. 11); ``form="sequence"`` marginalises once over the whole response,
    log sum_k P(tau_k) prod_t P(y_t | tau_k) (exact for a sequence-level head).
    """
    k = head_log_probs.shape[-1]
    if form == "token":
        policy = torch.logsumexp(head_log_probs + token_choice_logps, dim=-1)
        reference = torch.logsumexp(token_choice_logps, dim=-1) - math.log(k)
        diff = torch.where(mask.bool(), policy - reference, torch.zeros_like(policy))
        return diff.sum(-1)
    if form == "sequence":
        per_choice = torch.where(mask.bool()[..., None], token_choice_logps,
                                 torch.zeros_like(token_choice_logps)).sum(1)  # [B, K]
        return (torch.logsumexp(head_log_probs[:, 0] + per_choice, -1)
                - (torch.logsumexp(per_choice, -1) - math.log(k)))
    raise ValueError(f"form must be 'token' or 'sequence', got {form!r}.")


def lpo_latent_loss(chosen_logratio: torch.Tensor, rejected_logratio: torch.Tensor,
                    beta: float = 0.1) -> torch.Tensor:
    """Eq. 11 from ``latent_logratio`` of the chosen and rejected responses, per pair."""
    return -F.logsigmoid(beta * (chosen_logratio - rejected_logratio))


def nll_chosen_loss(chosen_logps: torch.Tensor) -> torch.Tensor:
    """The paper's baseline: -log P(tau_c) on the chosen response only, per pair."""
    return -chosen_logps


def reference_nll(head_log_probs: torch.Tensor, token_choice_logps: torch.Tensor, mask: torch.Tensor,
                  form: str = "token") -> torch.Tensor:
    """The likelihood objective (no reward; in the manner of AutoDeco), per reference: -log P(y) of the
    reference tokens under the head's Eq. 6 mixture over the grid. ``form="token"``: a choice per token,
    -sum_t log sum_k P(tau_k | h_t) P(y_t | tau_k); ``"sequence"``: one choice for the whole reference,
    -log sum_k P(tau_k | h_0) prod_t P(y_t | tau_k). Shapes as in ``latent_logratio``."""
    if form == "token":
        per_token = torch.logsumexp(head_log_probs + token_choice_logps, dim=-1)
        return -torch.where(mask.bool(), per_token, torch.zeros_like(per_token)).sum(-1)
    if form == "sequence":
        per_choice = torch.where(mask.bool()[..., None], token_choice_logps,
                                 torch.zeros_like(token_choice_logps)).sum(1)  # [B, K]
        return -torch.logsumexp(head_log_probs[:, 0] + per_choice, -1)
    raise ValueError(f"form must be 'token' or 'sequence', got {form!r}.")
