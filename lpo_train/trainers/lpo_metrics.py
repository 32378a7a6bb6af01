"""What ``LPOTrainer`` logs, as pure functions, and the one cross-process reduction of its metrics.

Metric meanings: the one table is docs/metrics.md ("Training: LPOTrainer"); in short:
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
from collections import Counter, defaultdict
from contextlib import contextmanager

import torch
from torch import nn


def choice_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each decision's choice distribution (probabilities over the grid, last dim), [...]."""
    return -torch.special.xlogy(probs, probs).sum(-1)


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
    counts = Counter(choices)
    for j, g in enumerate(grid):
        out[f"{prefix}/frac_{g:g}"] = counts[j] / len(choices) if choices else math.nan
    return out


def generation_metrics(rows, traces, rewards, per_func, stats, reward_names, grid, head_entropies,
                       head_expected, unit: str = "pairs") -> dict:
    """Per generation step: environment rewards, pair statistics, and the choice distribution overall
    and per family (``head_entropies``: per trace, the mean entropy of the head over its decisions)."""
    finite = rewards[~rewards.isnan()]
    metrics = {"reward": finite.mean().item() if len(finite) else math.nan,
               "reward_std": finite.std().item() if len(finite) > 1 else 0.0,
               # TRL's name; frac_prompts_tied is its deprecated alias (same value), kept for one release
               "frac_reward_zero_std": stats.frac_tied, "frac_prompts_tied": stats.frac_tied,
               f"num_{unit}": float(stats.pairs),
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
    finite = [[x for x in local.get(k, []) if not math.isnan(x)] for k in keys]
    sums, counts = [math.fsum(xs) for xs in finite], [float(len(xs)) for xs in finite]
    if accelerator.num_processes > 1:
        both = torch.tensor([sums, counts], dtype=torch.float64, device=accelerator.device)
        sums, counts = accelerator.reduce(both, reduction="sum").cpu().tolist()
    return {k: s / c if c > 0 else math.nan for k, s, c in zip(keys, sums, counts)}


def pair_choice_metrics(inputs: dict, lp_chosen: torch.Tensor, lp_rejected: torch.Tensor, grid) -> dict[str, float]:
    """The choice metrics of stored pairs (their recorded choices) and of the head on them (entropy)."""
    entropies, choices = [], []
    for side, lp in (("chosen", lp_chosen), ("rejected", lp_rejected)):
        mask = inputs[f"{side}_mask"].bool()
        entropies += choice_entropy(lp.exp())[mask].tolist()
        choices += inputs[f"{side}_choices"][mask].tolist()
    return choice_distribution_metrics("choice", entropies, choices, [grid[c] for c in choices], grid)


class FamilyGradNorms:
    """``grad_norm/<family>``: the norm of each family's share of the gradient the optimizer step applies (before
    clipping, as ``grad_norm``), read off the training backward itself (no extra backward). Every trainable
    parameter of the head belongs to an ``nn.Linear``, whose weight gradient is a sum over its input rows of
    g_out^T x (the bias's: of g_out); summing only a family's rows gives that family's share. A forward hook on
    each linear layer keeps its input and hooks its output's gradient while ``watch`` is active; the shares are
    summed over every micro-step until ``pop``, and ``pop`` sums them over processes (the applied gradient is
    the ranks' mean), so the figure does not depend on gradient accumulation or the process count.

    ``families`` names the family of each leading row of the head's inputs (a pair: its chosen and rejected rows;
    a sample). An unnamed family: nothing is measured for that batch."""

    def __init__(self, head: nn.Module):
        self.head = head
        self.linears = [m for m in head.modules() if isinstance(m, nn.Linear) and m.weight.requires_grad]
        covered = {id(p) for m in self.linears for p in m.parameters()}
        # a trainable parameter outside the linear layers would be left out of the norm: measure nothing then
        self.exact = all(id(p) in covered for p in head.parameters() if p.requires_grad)
        self._rows: dict | None = None
        self._scale = 1.0
        self._sums: dict = {}  # (linear layer index, family) -> flat float32 gradient share [weight, bias]
        self._handles = [m.register_forward_hook(self._forward_hook) for m in self.linears]

    def close(self) -> None:
        """Remove the hooks (the trainer's head was replaced)."""
        for handle in self._handles:
            handle.remove()
        self._handles, self._sums = [], {}

    @contextmanager
    def watch(self, families: list, scale: float = 1.0):
        """Measure the forwards run inside (their backward may come later). ``scale``: a loss scale the
        backward applies (fp16's gradient scaler), divided out."""
        if self.exact and families and None not in families:
            self._scale, self._rows = scale, {}
            for n in sorted(set(families)):  # a family's rows: a slice when contiguous (the trainer batches them so)
                idx = [i for i, f in enumerate(families) if f == n]
                contiguous = idx[-1] - idx[0] + 1 == len(idx)
                self._rows[n] = slice(idx[0], idx[-1] + 1) if contiguous else torch.tensor(idx)
        try:
            yield
        finally:
            self._rows = None

    def _forward_hook(self, module, inputs, output) -> None:
        if self._rows is None or not output.requires_grad:
            return
        x = inputs[0].detach()
        rows = {n: r if isinstance(r, slice) else r.to(output.device) for n, r in self._rows.items()}
        layer, scale = self.linears.index(module), self._scale
        output.register_hook(lambda grad: self._accumulate(layer, module, x, grad, rows, scale))

    def _accumulate(self, layer, module, x, grad, rows, scale) -> None:
        for name, r in rows.items():
            g = (grad[r] if isinstance(r, slice) else grad.index_select(0, r)).reshape(-1, grad.shape[-1]).float()
            xr = (x[r] if isinstance(r, slice) else x.index_select(0, r)).reshape(-1, x.shape[-1]).float()
            parts = [(g.T @ xr).flatten()] + ([g.sum(0)] if module.bias is not None else [])
            share = torch.cat(parts) / scale
            key = (layer, name)
            self._sums[key] = share if key not in self._sums else self._sums[key].add_(share)

    def pop(self, accelerator=None) -> dict[str, float]:
        """The norms of the shares summed since the last ``pop``, then reset. With ``accelerator`` on several
        processes: every rank calls it (collectives), and the shares are averaged over ranks as DDP averages the
        gradients. A non-finite norm (an fp16 step whose gradients overflowed, which the scaler skips) is left
        out."""
        names = sorted({n for _, n in self._sums})
        processes = accelerator.num_processes if accelerator is not None else 1
        if processes > 1:
            from accelerate.utils import gather_object

            names = sorted({n for ns in gather_object([names]) for n in ns})
        if not names:
            self._sums = {}
            return {}
        sizes = [m.weight.numel() + (m.bias.numel() if m.bias is not None else 0) for m in self.linears]
        device = next(self.head.parameters()).device
        squares = torch.zeros(len(names), device=device)
        for layer, size in enumerate(sizes):
            stacked = torch.stack([self._sums.get((layer, n), torch.zeros(size, device=device)) for n in names])
            if processes > 1:
                stacked = accelerator.reduce(stacked, reduction="sum") / processes
            squares += (stacked ** 2).sum(1)
        self._sums = {}
        return {f"grad_norm/{n}": v for n, v in zip(names, squares.sqrt().tolist()) if math.isfinite(v)}


def collapse_warning(metrics: dict, k: int, step: int) -> str | None:
    """A message when the head's choice distribution has collapsed while most prompts' responses tie."""
    if k < 2 or not metrics["choice/entropy"] < 0.1 * math.log(k) or metrics["frac_reward_zero_std"] < 0.5:
        return None
    return (f"The head's choice distribution has collapsed (entropy {metrics['choice/entropy']:.3f} nats of a "
            f"possible {math.log(k):.3f}) and {100 * metrics['frac_reward_zero_std']:.0f}% of the prompts' responses tied "
            f"at step {step}: pairs are drying up. Keep exploration on, lower the learning rate, or raise "
            "num_generations.")
