"""Drop-in adapters for ``transformers``' ``model.generate()``: the engine's rules as logits processors.

Each processor asks the rule for its step (``Rule.step``, the engine's own call) and returns the scores
tempered by the rule's per-row temperature (``sampling.tempered_logits``, the temperature step of the
engine's ``warp``); ``generate``'s own warpers (top-k, top-p, min-p) and draw follow.

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

from lpo_train.decoding.adaptive import AdaptiveDecoderRule
from lpo_train.decoding.rules import EDT, Dynatemp, Rule, StepInput, StepOutput
from lpo_train.decoding.sampling import tempered_logits
from lpo_train.heads import AdaptiveDecoderHead


def _processed(scores: torch.Tensor, out: StepOutput, rule: Rule) -> torch.Tensor:
    """The scores ``generate`` samples from after a rule's step: the rule's logits (the scores unless it replaced
    them) tempered by its per-row temperature, as the engine does before its truncations."""
    if out.probs is not None:
        raise ValueError(f"{rule.name} returned a distribution, which a logits processor cannot pass on; use "
                         "lpo_train.decoding.generate.")
    return tempered_logits(out.logits if out.logits is not None else scores, out.temperature).to(scores.dtype)


class RuleLogitsProcessor(LogitsProcessor):
    """Run a stateless token-level rule (EDT, dynatemp, fixed T) inside ``model.generate``."""

    def __init__(self, rule: Rule):
        if rule.aux_streams() or rule.level != "token" or rule.needs_history:
            raise ValueError(f"{rule.name} needs the lpo-train engine (auxiliary streams, per-sequence state or "
                             "the tokens so far); use lpo_train.decoding.generate.")
        self.rule = rule

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        out = self.rule.step(StepInput(logits=scores.float(), hidden=scores.new_zeros(len(scores), 0),
                                       state={}, step=0))
        return _processed(scores, out, self.rule)


class EDTLogitsProcessor(RuleLogitsProcessor):
    def __init__(self, T0: float = 1.0, theta: float = 1.0, N: float = 0.8):
        super().__init__(EDT(T0, theta, N))


class DynatempLogitsProcessor(RuleLogitsProcessor):
    def __init__(self, temp: float = 0.8, temp_range: float = 0.3, exponent: float = 1.0):
        super().__init__(Dynatemp(temp, temp_range, exponent))


class AdaptiveDecoderLogitsProcessor(LogitsProcessor):
    """Run an AdaptiveDecoder head (temperature knob, argmax or sampled selection) in ``generate``.

    The head decides through its engine rule (``AdaptiveDecoderRule.step``), at both levels: the
    processor counts the steps of each ``generate`` call (a call starts at a prefill, or when the
    sequences are no longer than at the last step) and keeps the rule's per-row state, so a
    token-level head chooses at every step and a sequence-level head at the first, keeping its choice. ``selection="sample"`` draws with per-row seeds taken from torch's global
    generator at each call (``torch.manual_seed`` makes it repeatable).

    ``generate`` does not pass hidden states to logits processors, so this registers a forward
    hook on the model's decoder that keeps the last position's hidden state (the one feeding
    the LM head). Remove the hook with ``close()`` (or use ``with``).
    """

    def __init__(self, head: AdaptiveDecoderHead, model, selection: str = "argmax"):
        if selection not in ("argmax", "sample"):
            raise ValueError("selection must be 'argmax' or 'sample' inside model.generate().")
        self.rule = AdaptiveDecoderRule(head, selection, model=model)  # checks the hidden size
        if head.config.knob != "temperature":
            raise ValueError("Only temperature heads run inside model.generate(); use the lpo-train engine "
                             f"for the {head.config.knob!r} knob.")
        self.head, self.selection = head, selection
        self._hidden, self._prefill = None, False
        self._state, self._step, self._seeds, self._length = None, 0, None, 0
        self.chosen: list[torch.Tensor] = []  # choice indices per step of the last generate call, for inspection
        self._hook = model.get_decoder().register_forward_hook(self._keep_hidden)

    def _keep_hidden(self, module, args, output):
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        self._hidden, self._prefill = hidden[:, -1], hidden.shape[1] > 1

    def __call__(self, input_ids, scores):
        if self._hidden is None:
            raise RuntimeError("No hidden state seen: was the processor built for this model?")
        length = input_ids.shape[-1] if input_ids is not None else self._length + 1
        if self._prefill or self._state is None or length <= self._length:  # a new generate call: step 0 again
            self._state, self._step = self.rule.init_state(len(scores), scores.device), 0
            self._seeds = (torch.randint(0, 2**62, (len(scores),)).to(scores.device)
                           if self.selection == "sample" else None)
            self.chosen = []
        with torch.no_grad():
            out = self.rule.step(StepInput(logits=scores.float(), hidden=self._hidden, state=self._state,
                                           step=self._step, row_seeds=self._seeds))
        self._step, self._length = self._step + 1, length
        self.chosen.append(out.choice)
        return _processed(scores, out, self.rule)

    def close(self) -> None:
        self._hook.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
