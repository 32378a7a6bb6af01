"""What ``LPOTrainer`` logs, as pure functions, and the one cross-process reduction of its metrics.

Metric meanings (README, "Metrics"):
- TRL's DPO names, on the head's choices: ``rewards/chosen`` = beta * (log P(tau_c) - log P_ref(tau_c)),
  ``rewards/rejected`` likewise, ``rewards/margins`` = their difference (the loss's logit),
  ``rewards/accuracies`` = share of pairs with rewards/chosen > rewards/rejected, ``logps/chosen|rejected``
  = log P(tau) summed over the response's decisions. With ``choice_reference='omitted'`` (the paper's
  literal Eq. 10) log P_ref = 0.
- TRL's online names, on the environment's rewards: ``reward``, ``reward_std``, ``rewards/<func>/mean``;
  the paired responses' environment rewards are ``pairs/reward_chosen`` and ``pairs/reward_rejected``.
- The head's choice distribution: ``choice/entropy`` (nats, mean over decisions), ``choice/kl_from_uniform``
  (= log K - entropy), ``choice/head_mean_value`` (the head's expected knob value), ``choice/frac_<v>`` (share
  of the *sampled* decisions at grid value v: with exploration these follow the exploration, not the head),
  ``choice/mean_value`` (mean applied value); each also per task family as ``choice/<family>/...``.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch


def choice_entropy(head_log_probs: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each decision's choice distribution, [...]."""
    return -(head_log_probs.exp() * head_log_probs).sum(-1)


def _mean(xs) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def choice_distribution_metrics(prefix: str, entropies: list[float], choices: list[int], values: list[float],
                                grid, expected: list[float] | None = None) -> dict[str, float]:
    k = len(grid)
    h = _mean(entropies)
    out = {f"{prefix}/entropy": h, f"{prefix}/kl_from_uniform": math.log(k) - h if entropies else math.nan,
           f"{prefix}/mean_value": _mean(values)}
    if expected is not None:
        out[f"{prefix}/head_mean_value"] = _mean(expected)
    for j, g in enumerate(grid):
        out[f"{prefix}/frac_{g:g}"] = choices.count(j) / len(choices) if choices else math.nan
    return out


def generation_metrics(rows, traces, rewards, per_func, stats, reward_names, grid, head_entropies,
                       head_expected, unit: str = "pairs") -> dict:
    """Per generation step: environment rewards, pair statistics, and the choice distribution overall
    and per family (``head_entropies``: per trace, the mean entropy of the head over its decisions)."""
    finite = rewards[~rewards.isnan()]
    metrics = {"reward": finite.mean().item() if len(finite) else math.nan,
               "reward_std": finite.std().item() if len(finite) > 1 else 0.0,
               "frac_prompts_tied": stats.frac_tied, f"num_{unit}": float(stats.pairs),
               "prompts_without_valid_rewards": float(stats.invalid),
               "completions/mean_length": (sum(len(t.token_ids) for t in traces) / len(traces)) if traces else 0.0}
    for j, name in enumerate(reward_names):
        col = per_func[:, j] if len(per_func) else torch.zeros(0)
        metrics[f"rewards/{name}/mean"] = col.nanmean().item() if len(col) else math.nan
    groups = defaultdict(list)
    for t, h, e in zip(traces, head_entropies, head_expected):
        groups["choice"].append((t, h, e))
        family = rows[t.prompt_index].get("family")
        if family is not None:
            groups[f"choice/{family}"].append((t, h, e))
    for prefix, items in groups.items():
        metrics.update(choice_distribution_metrics(
            prefix, [h for _, h, _ in items], [c for t, _, _ in items for c in (t.choices or [])],
            [v for t, _, _ in items for v in t.values], grid, [e for _, _, e in items]))
    return metrics


def reduce_across_processes(accelerator, local: dict[str, list[float]]) -> dict[str, float]:
    """Mean of every metric over all its finite values on all processes, in one fixed sequence of
    collectives whatever each rank logged (a rank may have seen other families, or no pair)."""
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        keys = sorted({k for ks in gather_object([sorted(local)]) for k in ks})
    else:
        keys = sorted(local)
    if not keys:
        return {}
    sums = torch.tensor([math.fsum(x for x in local.get(k, []) if not math.isnan(x)) for k in keys],
                        dtype=torch.float64)
    counts = torch.tensor([sum(1 for x in local.get(k, []) if not math.isnan(x)) for k in keys], dtype=torch.float64)
    if accelerator.num_processes > 1:
        both = accelerator.reduce(torch.stack([sums, counts]).to(accelerator.device), reduction="sum").cpu()
        sums, counts = both[0], both[1]
    return {k: (s / c).item() if c > 0 else math.nan for k, s, c in zip(keys, sums, counts)}


def pair_choice_metrics(inputs: dict, lp_chosen: torch.Tensor, lp_rejected: torch.Tensor, grid) -> dict[str, float]:
    """The choice metrics of stored pairs (their recorded choices) and of the head on them (entropy)."""
    entropies, choices = [], []
    for side, lp in (("chosen", lp_chosen), ("rejected", lp_rejected)):
        mask = inputs[f"{side}_mask"].bool()
        entropies += choice_entropy(lp)[mask].tolist()
        choices += inputs[f"{side}_choices"][mask].tolist()
    return choice_distribution_metrics("choice", entropies, choices, [grid[c] for c in choices], grid)


def family_grad_norms(model, per_pair: torch.Tensor, families: list, num_pairs_in_step: int) -> dict[str, float]:
    """``grad_norm/<family>``: the norm of the gradient of each family's share of the loss (one extra
    backward through the small head per family; the LM is not involved)."""
    if len(set(families)) < 2 or None in families:
        return {}
    params = [p for p in model.parameters() if p.requires_grad]
    out = {}
    for fam in sorted(set(families)):
        idx = torch.tensor([i for i, f in enumerate(families) if f == fam], device=per_pair.device)
        grads = torch.autograd.grad(per_pair[idx].sum() / num_pairs_in_step, params, retain_graph=True,
                                    allow_unused=True)
        out[f"grad_norm/{fam}"] = torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)).item()
    return out


def collapse_warning(metrics: dict, k: int, step: int) -> str | None:
    """A message when the head's choice distribution has collapsed while most prompts' responses tie."""
    if k < 2 or not metrics["choice/entropy"] < 0.1 * math.log(k) or metrics["frac_prompts_tied"] < 0.5:
        return None
    return (f"The head's choice distribution has collapsed (entropy {metrics['choice/entropy']:.3f} nats of a "
            f"possible {math.log(k):.3f}) and {100 * metrics['frac_prompts_tied']:.0f}% of the prompts' responses tied "
            f"at step {step}: pairs are drying up. Keep exploration on, lower the learning rate, or raise "
            "num_generations.")
