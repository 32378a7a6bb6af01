"""LPO's rollout, as data: a step's prompts sampled with the head choosing, scored, and grouped into the
``GroupDraw``s every objective reads (``lpo_train.objectives``). ``LPOTrainer.rollout`` runs it; the
trainer, the offline pair builder and the benchmarks call that."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lpo_train.decoding.adaptive import behaviour_is_iid, exploration_probs, stratified_inclusion
from lpo_train.decoding.randomness import seed_for
from lpo_train.objectives import GroupDraw
from lpo_train.pairs import group_slices


@dataclass
class Rollout:
    """``traces`` prompt-major (N per prompt), ``rewards`` [B x N] float64 (NaN = invalid), ``per_func`` the
    unweighted reward of each function, ``draws`` one ``GroupDraw`` per prompt."""

    rows: list[dict]
    traces: list
    rewards: torch.Tensor
    per_func: torch.Tensor
    draws: list[GroupDraw]


def decision_choices(trace, level: str) -> torch.Tensor:
    """The grid index of each of the trace's head decisions (one for a sequence-level head)."""
    return torch.tensor(trace.choices if level == "token" else trace.choices[:1])


def trace_logps(trace, level: str, exploration: str, epsilon: float) -> tuple[float, float]:
    """(log P_head(tau), log q(tau)) of the trace's choices: the head's distribution as the engine traced it
    (before exploration) and the distribution the choices were drawn from (``exploration_probs`` unless
    ``exploration='none'``; for a sequence-level stratified draw the design is handled by ``GroupDraw``)."""
    choices = decision_choices(trace, level)
    probs = trace.choice_probs[:len(choices)].double().cpu()
    head = probs.gather(-1, choices[:, None]).clamp_min(1e-300).log().sum().item()
    if exploration == "none":
        return head, head
    behaviour = exploration_probs(probs, epsilon).gather(-1, choices[:, None]).clamp_min(1e-300).log().sum().item()
    return head, behaviour


def group_draws(rows, traces, rewards: torch.Tensor, per_func: torch.Tensor, args, prompt_seeds: list[int],
                num_choices: int) -> list[GroupDraw]:
    """One ``GroupDraw`` per prompt. ``prompt_seeds``: the seeds the engine sampled each prompt with (its
    stratified draw's group seed and the tie-break seed derive from them)."""
    n = args.num_generations
    iid = behaviour_is_iid(args.exploration, args.level)
    secondary = group_slices(per_func[:, 1].tolist(), n) if per_func.ndim == 2 and per_func.shape[1] >= 2 else None
    draws = []
    for p, group in enumerate(group_slices(traces, n)):
        logps = [trace_logps(t, args.level, args.exploration, args.exploration_epsilon) for t in group]
        draw = GroupDraw(rewards=rewards[p * n:(p + 1) * n].tolist(), head_logps=[h for h, _ in logps],
                         behaviour_logps=[b for _, b in logps], tie_seed=seed_for(prompt_seeds[p], "ties"),
                         secondary=secondary[p] if secondary is not None else None)
        if not iid:  # a sequence-level stratified draw: N choices without replacement from the head
            probs = group[0].choice_probs[0].double().cpu()
            draw.design, draw.choices, draw.head_probs = "stratified", [t.choices[0] for t in group], probs.tolist()
            if n < num_choices:
                group_seed = torch.tensor([seed_for(prompt_seeds[p], "group")])  # as the engine's
                draw.inclusion = stratified_inclusion(probs[None], group_seed, n)[0].tolist()
        draws.append(draw)
    return draws


def finite_or_nan(values) -> list[float]:
    """Rewards as floats, anything that is not a finite number as NaN (invalid, dropped and counted)."""
    out = []
    for v in values:
        v = math.nan if v is None else float(v)
        out.append(v if math.isfinite(v) else math.nan)
    return out


def with_positions(dataset):
    """The prompt dataset with each row's position in ``PRIVATE_COLUMN`` (per-prompt seeds; rewards never see it)."""
    from lpo_train.rewards import PRIVATE_COLUMN

    if PRIVATE_COLUMN in dataset.column_names:
        dataset = dataset.remove_columns(PRIVATE_COLUMN)
    return dataset.add_column(PRIVATE_COLUMN, list(range(len(dataset))))


def check_head_matches(head, args) -> None:
    """A head continued from ``head_name_or_path`` decides the level, knob and grid; a different value set
    explicitly is an error naming both (never silently overridden). A head object given in code sets them."""
    ours = {"level": head.config.level, "knob": head.config.knob, "grid": [float(v) for v in head.config.grid]}
    for name, value in ours.items():
        asked = getattr(args, name)
        if asked is None or not args.head_name_or_path:
            setattr(args, name, value)
        elif asked != value:
            source = args.head_name_or_path or "the head given"
            raise ValueError(f"--{name} {asked} conflicts with the head being continued ({source} has {name} "
                             f"{value}): leave --{name} unset to use the head's, or train a new head without "
                             "head_name_or_path.")
