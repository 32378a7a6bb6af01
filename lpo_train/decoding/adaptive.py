"""The AdaptiveDecoder head as a decoding rule (token or sequence level, any knob)."""

from __future__ import annotations

import torch

from lpo_train.decoding.rules import MIN_TEMPERATURE, Rule, StepInput, StepOutput
from lpo_train.heads import SELECTIONS, AdaptiveDecoderHead


def sample_from(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One index per row by inverse-CDF sampling with the given uniforms in [0, 1) (exact;
    several times faster than ``torch.multinomial`` on CPU). Zero-mass entries are never drawn."""
    cdf = probs.double().cumsum(-1)
    u = uniforms.to(cdf.device, cdf.dtype)[:, None] * cdf[:, -1:]
    return (cdf <= u).sum(-1).clamp(max=probs.shape[-1] - 1)


def _one_hot_argmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)


def knob_distribution(logits: torch.Tensor, knob: str, values: torch.Tensor,
                      base_temperature: float = 1.0) -> torch.Tensor:
    """Next-token distribution [B, V] when row b applies ``knob = values[b]``.

    temperature: softmax(z / T); T <= MIN_TEMPERATURE (0 included) is one-hot on the argmax,
    so a vanishing temperature (EDT at near-zero entropy) never overflows. top_k / top_p / min_p truncate
    softmax(z / base_temperature) per row (top_k = 0 keeps everything).
    """
    values = values.to(logits.dtype)
    if knob == "temperature":
        greedy_rows = values <= MIN_TEMPERATURE
        safe = torch.where(greedy_rows, torch.ones_like(values), values)
        shifted = logits - logits.amax(-1, keepdim=True)  # <= 0, so dividing cannot overflow
        probs = torch.softmax(shifted / safe[:, None], dim=-1)
        if greedy_rows.any():
            probs = torch.where(greedy_rows[:, None], _one_hot_argmax(logits), probs)
        return probs
    if base_temperature <= 0:
        return _one_hot_argmax(logits)
    probs = truncate(torch.softmax(logits / base_temperature, dim=-1), knob, values)
    return probs / probs.sum(-1, keepdim=True)


def truncate(probs: torch.Tensor, knob: str, values: torch.Tensor) -> torch.Tensor:
    """Zero the tokens row b drops under ``knob = values[b]`` (not renormalised).

    top_k keeps the k most likely tokens (0 keeps all); top_p the smallest prefix whose mass
    reaches p (always the top token); min_p the tokens with p >= min_p * max p.
    """
    values = values.to(probs.dtype)
    if knob == "min_p":
        return probs * (probs >= values[:, None] * probs.amax(-1, keepdim=True))
    sorted_p, order = probs.sort(dim=-1, descending=True)
    if knob == "top_k":
        ranks = torch.arange(probs.shape[-1], device=probs.device)
        k = torch.where(values > 0, values, torch.full_like(values, probs.shape[-1]))
        keep_sorted = ranks[None, :] < k[:, None]
    elif knob == "top_p":
        keep_sorted = (sorted_p.cumsum(-1) - sorted_p) < values[:, None]
    else:
        raise ValueError(f"Unknown truncation knob {knob!r}; choose top_k, top_p or min_p.")
    return probs * torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


class AdaptiveDecoderRule(Rule):
    """Let a trained (or fresh) AdaptiveDecoder head choose the knob value.

    selection: ``argmax`` (inference default, Eq. 4), ``sample`` (data generation, Eq. 5) or
    ``mixture`` (sample y from sum_k P(k) p(y | k), Eq. 6; the trace records the argmax choice
    and the expected knob value).
    """

    def __init__(self, head: AdaptiveDecoderHead, selection: str = "argmax", model=None):
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}.")
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
                choice = sample_from(probs, inp.uniforms(purpose=1))
            else:
                choice = probs.argmax(-1)
            state["choice"], state["probs"] = choice, probs
        choice, probs = state["choice"], state["probs"]
        if self.selection == "mixture":
            mixed = sum(probs[:, k, None] * knob_distribution(inp.logits, self.knob, grid[k].expand(len(choice)),
                                                               self.base_temperature)
                        for k in range(len(grid)))
            return StepOutput(temperature=self._applied_temperature(probs @ grid), probs=mixed, choice=choice,
                              value=probs @ grid)
        values = grid[choice]
        if self.knob == "temperature":
            return StepOutput(temperature=values, choice=choice)
        return StepOutput(temperature=self._applied_temperature(values),
                          probs=knob_distribution(inp.logits, self.knob, values, self.base_temperature),
                          choice=choice, value=values)

    def _applied_temperature(self, values: torch.Tensor) -> torch.Tensor:
        return values if self.knob == "temperature" else torch.full_like(values, self.base_temperature)

    def choice_logps(self, logits, tokens):
        grid = self._grid(logits.device)
        cols = [knob_distribution(logits, self.knob, grid[k].expand(len(tokens)), self.base_temperature)
                .gather(-1, tokens[:, None]).squeeze(-1) for k in range(len(grid))]
        return torch.stack(cols, -1).log()
