"""The AdaptiveDecoder head as a decoding rule (token or sequence level, any knob)."""

from __future__ import annotations

import torch

from lpo_train.decoding.randomness import row_uniforms
from lpo_train.decoding.rules import Rule, StepInput, StepOutput
from lpo_train.decoding.sampling import NO_TRUNCATION, knob_distribution, sample_from

EXPLORATIONS = ("none", "stratified", "uniform_mix")


def stratified_choices(probs: torch.Tensor, group_seeds: torch.Tensor, sample_index: torch.Tensor) -> torch.Tensor:
    """Sequence-level choices for the N samples of each prompt, drawn from the head *without
    replacement*: Gumbel-top-k with noise shared by the prompt's samples, sample s taking the
    (s mod K)-th key, so N <= K samples cover N distinct grid values and N > K repeats in rounds."""
    k = probs.shape[-1]
    u = torch.stack([row_uniforms(group_seeds, 0, purpose=16 + j) for j in range(k)], -1)
    gumbel = -torch.log(-torch.log(u.clamp(1e-300, 1 - 1e-16)))
    keys = probs.double().clamp_min(1e-300).log() + gumbel.to(probs.device)
    order = keys.argsort(-1, descending=True)
    return order.gather(-1, (sample_index % k)[:, None].to(order.device)).squeeze(-1)


def exploration_probs(probs: torch.Tensor, epsilon: float) -> torch.Tensor:
    """The generation-time mixture (1 - epsilon) P_head + epsilon / K."""
    return (1 - epsilon) * probs + epsilon / probs.shape[-1]
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
        if self.exploration == "stratified" and self.level == "sequence" and inp.group_seeds is not None:
            return stratified_choices(probs, inp.group_seeds, inp.sample_index)
        if self.exploration != "none":
            probs = exploration_probs(probs, self.epsilon)
        return sample_from(probs, inp.uniforms(purpose=1))

    def _applied_temperature(self, values: torch.Tensor) -> torch.Tensor:
        return values if self.knob == "temperature" else torch.full_like(values, self.base_temperature)

    def choice_logps(self, logits, tokens, truncation=NO_TRUNCATION):
        grid = self._grid(logits.device)
        cols = [knob_distribution(logits, self.knob, grid[k].expand(len(tokens)), self.base_temperature, truncation)
                .gather(-1, tokens[:, None]).squeeze(-1) for k in range(len(grid))]
        return torch.stack(cols, -1).log()
