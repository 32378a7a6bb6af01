"""The AdaptiveDecoder head as a decoding rule (token or sequence level, any knob)."""

from __future__ import annotations

import torch

from lpo_train.decoding.randomness import row_uniforms
from lpo_train.decoding.rules import Rule, StepInput, StepOutput
from lpo_train.decoding.sampling import NO_TRUNCATION, knob_distribution, sample_from

EXPLORATIONS = ("none", "stratified", "uniform_mix")


def stratified_keys(probs: torch.Tensor, group_seeds: torch.Tensor) -> torch.Tensor:
    """[B, K] Gumbel keys log P_head(k) + G_k, the noise shared by a prompt's samples (its group seed): the
    sampling order of ``stratified_choices``, and what ``stratified_inclusion`` reads its threshold from."""
    k = probs.shape[-1]
    u = torch.stack([row_uniforms(group_seeds, 0, purpose=16 + j) for j in range(k)], -1)
    gumbel = -torch.log(-torch.log(u.clamp(1e-300, 1 - 1e-16)))
    return probs.double().clamp_min(1e-300).log() + gumbel.to(probs.device)


def stratified_choices(probs: torch.Tensor, group_seeds: torch.Tensor, sample_index: torch.Tensor) -> torch.Tensor:
    """Sequence-level choices for the N samples of each prompt, drawn from the head *without
    replacement*: Gumbel-top-k with noise shared by the prompt's samples, sample s taking the
    (s mod K)-th key, so N <= K samples cover N distinct grid values and N > K repeats in rounds."""
    order = stratified_keys(probs, group_seeds).argsort(-1, descending=True)
    return order.gather(-1, (sample_index % probs.shape[-1])[:, None].to(order.device)).squeeze(-1)


def stratified_inclusion(probs: torch.Tensor, group_seeds: torch.Tensor, num_samples: int) -> torch.Tensor:
    """[G, K] for each prompt's stratified draw of ``num_samples`` < K choices: q_k = P(key_k > kappa) =
    1 - exp(-P_head(k) e^-kappa), kappa the (n+1)-th largest key. Priority sampling (Duffield et al., 2007;
    with Gumbel keys, Kool et al., 2019): sum over the drawn k of f(k) P_head(k) / q_k is an unbiased estimate
    of E_head[f]. ``probs``: the head's distribution when the choices were drawn, one row per prompt."""
    if not 0 < num_samples < probs.shape[-1]:
        raise ValueError(f"stratified_inclusion needs 0 < num_samples < K, got {num_samples} (K = {probs.shape[-1]}).")
    keys = stratified_keys(probs, group_seeds)
    kappa = keys.sort(-1, descending=True).values[:, num_samples:num_samples + 1]  # [G, 1]
    return -torch.expm1(-probs.double() * torch.exp(-kappa))


def exploration_probs(probs: torch.Tensor, epsilon: float) -> torch.Tensor:
    """The generation-time mixture (1 - epsilon) P_head + epsilon / K."""
    return (1 - epsilon) * probs + epsilon / probs.shape[-1]


def explore(probs: torch.Tensor, exploration: str, epsilon: float, level: str, uniforms: torch.Tensor | None,
            group_seeds: torch.Tensor | None = None, sample_index: torch.Tensor | None = None) -> torch.Tensor:
    """LPO's training-time draw of the head's choices from its distribution ``probs`` [B, K]: ``stratified`` draws a
    sequence-level head's N choices per prompt without replacement (``stratified_choices``; needs the group seeds
    and sample indices) and a token-level head's from ``exploration_probs``; ``uniform_mix`` uses
    ``exploration_probs`` at both levels; ``none`` samples the head as it is. ``uniforms``: one per row."""
    if exploration == "stratified" and level == "sequence" and group_seeds is not None:
        return stratified_choices(probs, group_seeds, sample_index)
    if exploration != "none":
        probs = exploration_probs(probs, epsilon)
    return sample_from(probs, uniforms)


def behaviour_is_iid(exploration: str, level: str) -> bool:
    """Whether a prompt's samples draw their choices independently (from ``exploration_probs`` or the head):
    every mode but a sequence-level stratified draw."""
    return not (exploration == "stratified" and level == "sequence")


from lpo_train.heads import SELECTIONS, AdaptiveDecoderHead


class AdaptiveDecoderRule(Rule):
    """Let a trained (or fresh) AdaptiveDecoder head choose the knob value.

    selection: ``argmax`` (inference default, Eq. 4), ``sample`` (data generation, Eq. 5) or
    ``mixture`` (sample y from sum_k P(k) p(y | k), Eq. 6; the trace records the argmax choice
    and the expected knob value).

    ``exploration`` (``sample`` only; LPO's training data): ``stratified`` draws a sequence-level
    head's N choices per prompt without replacement (``stratified_choices``) and a token-level
    head's choices from ``exploration_probs``; ``uniform_mix`` uses ``exploration_probs`` at both
    levels; ``none`` samples the head as it is.
    """

    def __init__(self, head: AdaptiveDecoderHead, selection: str = "argmax", model=None,
                 exploration: str = "none", epsilon: float = 0.1):
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}.")
        if exploration not in EXPLORATIONS:
            raise ValueError(f"exploration must be one of {EXPLORATIONS}, got {exploration!r}.")
        if not 0 <= epsilon <= 1:
            raise ValueError(f"The exploration epsilon must be in [0, 1], got {epsilon}.")
        self.exploration, self.epsilon = exploration, float(epsilon)
        if model is not None:
            head.check_compatible(model)
        self.head, self.selection = head, selection
        self.level, self.knob = head.config.level, head.config.knob
        self.base_temperature = head.config.base_temperature
        self.name = f"AD{'tok' if self.level == 'token' else 'seq'}({selection})"

    def init_state(self, batch_size, device):
        self.head.to(device)
        self._device_grid = self.head.grid.to(device)
        k = self.head.config.num_choices
        return {"choice": torch.zeros(batch_size, dtype=torch.long, device=device),
                "probs": torch.full((batch_size, k), 1.0 / k, device=device)}

    def _grid(self, device) -> torch.Tensor:
        grid = getattr(self, "_device_grid", None)
        return grid if grid is not None and grid.device == torch.device(device) else self.head.grid.to(device)

    def step(self, inp: StepInput) -> StepOutput:
        state, grid = inp.state, self._grid(inp.logits.device)
        if self.level == "token" or inp.step == 0:
            with torch.no_grad():
                probs = self.head.log_probs(inp.hidden).exp()
            if self.selection == "sample":
                choice = self._explore(probs, inp)
            else:
                choice = probs.argmax(-1)
            state["choice"], state["probs"] = choice, probs
        choice, probs = state["choice"], state["probs"]
        if self.selection == "mixture":
            mixed = sum(probs[:, k, None] * knob_distribution(inp.logits, self.knob, grid[k].expand(len(choice)),
                                                               self.base_temperature, inp.truncation)
                        for k in range(len(grid)))
            return StepOutput(temperature=self._applied_temperature(probs @ grid), probs=mixed, choice=choice,
                              value=probs @ grid, choice_probs=probs)
        values = grid[choice]
        if self.knob == "temperature":
            return StepOutput(temperature=values, choice=choice, choice_probs=probs)
        return StepOutput(temperature=self._applied_temperature(values),
                          probs=knob_distribution(inp.logits, self.knob, values, self.base_temperature,
                                                  inp.truncation),
                          choice=choice, value=values, choice_probs=probs)

    def _explore(self, probs: torch.Tensor, inp: StepInput) -> torch.Tensor:
        drawn_per_row = behaviour_is_iid(self.exploration, self.level) or inp.group_seeds is None
        return explore(probs, self.exploration, self.epsilon, self.level,
                       inp.uniforms(purpose=1) if drawn_per_row else None, inp.group_seeds, inp.sample_index)

    def _applied_temperature(self, values: torch.Tensor) -> torch.Tensor:
        return values if self.knob == "temperature" else torch.full_like(values, self.base_temperature)

    def choice_logps(self, logits, tokens, truncation=NO_TRUNCATION):
        grid = self._grid(logits.device)
        cols = [knob_distribution(logits, self.knob, grid[k].expand(len(tokens)), self.base_temperature, truncation)
                .gather(-1, tokens[:, None]).squeeze(-1) for k in range(len(grid))]
        return torch.stack(cols, -1).log()
