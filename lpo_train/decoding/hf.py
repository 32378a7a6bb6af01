"""Drop-in adapters for ``transformers``' ``model.generate()``.

Pitfalls when using them:

- ``generate`` defaults to ``top_k=50``: pass ``top_k=0`` (or ``None``) for an untruncated rule.
- A model's ``generation_config.temperature`` is applied by ``generate`` *as well as* these
  processors: pass ``temperature=1.0`` so the rule's temperature is the only one.
- With ``do_sample=False`` every temperature rule is a no-op (greedy ignores temperature).

So: ``model.generate(..., do_sample=True, temperature=1.0, top_k=0, logits_processor=[proc])``.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

from lpo_train.decoding.rules import EDT, MIN_TEMPERATURE, Dynatemp, Rule, StepInput
from lpo_train.heads import AdaptiveDecoderHead


def _apply_temperature(scores: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Divide row b by T_b; rows with T_b <= MIN_TEMPERATURE keep only their argmax (greedy)."""
    greedy_rows = temperature <= MIN_TEMPERATURE
    safe = torch.where(greedy_rows, torch.ones_like(temperature), temperature)
    scaled = scores / safe[:, None].to(scores.dtype)
    if greedy_rows.any():
        only_top = torch.full_like(scores, float("-inf")).scatter(
            -1, scores.argmax(-1, keepdim=True), scores.gather(-1, scores.argmax(-1, keepdim=True)))
        scaled = torch.where(greedy_rows[:, None], only_top, scaled)
    return scaled


class RuleLogitsProcessor(LogitsProcessor):
    """Run a stateless temperature rule (EDT, dynatemp, fixed T) inside ``model.generate``."""

    def __init__(self, rule: Rule):
        if rule.aux_streams() or rule.level != "token":
            raise ValueError(f"{rule.name} needs the lpo-train engine (auxiliary streams or per-sequence "
                             "state); use lpo_train.decoding.generate.")
        self.rule = rule

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        out = self.rule.step(StepInput(logits=scores.float(), hidden=scores.new_zeros(len(scores), 0),
                                       state={}, step=0))
        return _apply_temperature(scores, out.temperature)


class EDTLogitsProcessor(RuleLogitsProcessor):
    def __init__(self, T0: float = 1.0, theta: float = 1.0, N: float = 0.8):
        super().__init__(EDT(T0, theta, N))


class DynatempLogitsProcessor(RuleLogitsProcessor):
    def __init__(self, temp: float = 0.8, temp_range: float = 0.3, exponent: float = 1.0):
        super().__init__(Dynatemp(temp, temp_range, exponent))


class AdaptiveDecoderLogitsProcessor(LogitsProcessor):
    """Run an AdaptiveDecoder head (temperature knob, argmax or sampled selection) in ``generate``.

    ``generate`` does not pass hidden states to logits processors, so this registers a forward
    hook on the model's decoder that keeps the last position's hidden state (the one feeding
    the LM head). A sequence-level head chooses at the first step of each ``generate`` call
    (the prefill) and keeps its choice. Remove the hook with ``close()`` (or use ``with``).
    """

    def __init__(self, head: AdaptiveDecoderHead, model, selection: str = "argmax"):
        head.check_compatible(model)
        if head.config.knob != "temperature":
            raise ValueError("Only temperature heads run inside model.generate(); use the lpo-train engine "
                             f"for the {head.config.knob!r} knob.")
        if selection not in ("argmax", "sample"):
            raise ValueError("selection must be 'argmax' or 'sample' inside model.generate().")
        self.head, self.selection = head, selection
        self._hidden, self._prefill, self._choice = None, False, None
        self.chosen: list[torch.Tensor] = []  # choice indices per step, for inspection
        self._hook = model.get_decoder().register_forward_hook(self._keep_hidden)

    def _keep_hidden(self, module, args, output):
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        self._hidden, self._prefill = hidden[:, -1], hidden.shape[1] > 1

    def __call__(self, input_ids, scores):
        if self._hidden is None:
            raise RuntimeError("No hidden state seen: was the processor built for this model?")
        if self.head.config.level == "token" or self._prefill or self._choice is None:
            self.head.to(scores.device)
            with torch.no_grad():
                probs = self.head.log_probs(self._hidden).exp()
            self._choice = (torch.multinomial(probs, 1).squeeze(-1) if self.selection == "sample"
                            else probs.argmax(-1))
            if self._prefill:
                self.chosen = []
        self.chosen.append(self._choice)
        return _apply_temperature(scores, self.head.grid.to(scores.device)[self._choice])

    def close(self) -> None:
        self._hook.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
