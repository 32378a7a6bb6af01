"""Token-level guidance rules for the one engine: the guidance models run as auxiliary streams
(own prompt template, own KV cache, fed the same sampled tokens), their logits are combined
with the base model's, and temperature / top-k / top-p act on the combined logits.

- ``ImplicitGuidance`` (EFT / proxy-tuning): z = l_base + beta * (l_tuned - l_untuned).
- ``ExplicitGuidance`` (FUDGE / CD-style, IVG's ``tokenrm``): z = l_base + w * Q(x, y_<t, .),
  with Q the vocabulary-sized head of a token value model (``guidance.value_model``).
Both need one shared vocabulary (tokenizer and output size); the engine raises a clear error otherwise.
"""

from __future__ import annotations


from lpo_train.decoding.rules import AuxStream, Rule, StepInput, StepOutput, check_temperature


class ImplicitGuidance(Rule):
    """Sample from softmax((l_base + beta * (l_tuned - l_untuned)) / T).

    ``prompts`` (one per input prompt, e.g. in the small models' own format) default to the
    main prompts rendered with ``tokenizer``'s chat template (default: the base tokenizer).
    beta = 0 is plain sampling from the base model.
    """

    def __init__(self, tuned, untuned, beta: float = 1.0, temperature: float = 1.0, tokenizer=None,
                 prompts=None, chat_template: bool | None = None):
        self.tuned, self.untuned, self.beta = tuned, untuned, float(beta)
        self.temperature = check_temperature(temperature)
        self.tokenizer, self.prompts, self.chat_template = tokenizer, prompts, chat_template
        self.name = f"implicit(beta={self.beta:g})"

    def aux_streams(self):
        return [AuxStream(self.prompts, m, self.tokenizer, self.chat_template) for m in (self.tuned, self.untuned)]

    def step(self, inp: StepInput) -> StepOutput:
        tuned, untuned = inp.aux_logits
        logits = inp.logits + self.beta * (tuned - untuned)
        return StepOutput(temperature=inp.logits.new_full((len(logits),), self.temperature), logits=logits)


class ExplicitGuidance(Rule):
    """Sample from softmax((l_base + w * Q(x, y_<t, .)) / T) with a token value model's Q."""

    def __init__(self, value_model, weight: float = 1.0, temperature: float = 1.0, tokenizer=None,
                 prompts=None, chat_template: bool | None = None):
        self.value_model, self.weight = value_model, float(weight)
        self.temperature = check_temperature(temperature)
        self.tokenizer, self.prompts, self.chat_template = tokenizer, prompts, chat_template
        self.name = f"explicit(w={self.weight:g})"

    def aux_streams(self):
        return [AuxStream(self.prompts, self.value_model, self.tokenizer, self.chat_template)]

    def step(self, inp: StepInput) -> StepOutput:
        (q,) = inp.aux_logits
        logits = inp.logits + self.weight * q
        return StepOutput(temperature=inp.logits.new_full((len(logits),), self.temperature), logits=logits)
