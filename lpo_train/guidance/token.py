"""Token-level guidance rules for the one engine: the guidance models run as auxiliary streams
(own prompt template, own KV cache, fed the same sampled tokens), their logits are combined
with the base model's, and temperature / top-k / top-p act on the combined logits.

- ``ImplicitGuidance`` (EFT / proxy-tuning): z = l_base + beta * (l_tuned - l_untuned).
- ``ExplicitGuidance`` (FUDGE / CD-style, IVG's ``tokenrm``): z = l_base + w * Q(x, y_<t, .),
  with Q the vocabulary-sized head of a token value model (``guidance.value_model``).
- ``ARGS``: top-k base tokens rescored with a sequence-level reward on the partial text.
The first two need one shared vocabulary (tokenizer and output size); the engine raises a clear
error otherwise. ARGS only reads text.
"""

from __future__ import annotations

import torch

from lpo_train.decoding.rules import AuxStream, Rule, StepInput, StepOutput, check_temperature
from lpo_train.decoding.sampling import truncate
from lpo_train.guidance.value_model import value_head_kind


class ImplicitGuidance(Rule):
    """Sample from softmax((l_base + beta * (l_tuned - l_untuned)) / T).

    ``prompts`` (one per input prompt, e.g. in the small models' own format) default to the
    main prompts rendered with ``tokenizer``'s chat template (default: the base tokenizer).
    beta = 0 is plain sampling from the base model. ``tuned`` may be a PEFT (LoRA) model and
    ``untuned`` left out: the untuned logits are then the same weights with the adapter disabled, run
    as a second stream with its own KV cache.
    """

    def __init__(self, tuned, untuned=None, beta: float = 1.0, temperature: float = 1.0, tokenizer=None,
                 prompts=None, chat_template: bool | None = None):
        from lpo_train.models.adapters import untuned_or_adapter_off

        # untuned None with a PEFT tuned model: the same weights with the adapter off (one copy in memory)
        self.tuned, self.untuned = tuned, untuned_or_adapter_off(tuned, untuned, "ImplicitGuidance")
        self.beta = float(beta)
        self.temperature = check_temperature(temperature)
        self.tokenizer, self.prompts, self.chat_template = tokenizer, prompts, chat_template
        self.name = f"implicit(beta={self.beta:g})"

        self.response_logps: torch.Tensor | None = None  # [B, 2]: sum log pi_tuned, log pi_untuned of each row's tokens

    def aux_streams(self):
        return [AuxStream(self.prompts, m, self.tokenizer, self.chat_template) for m in (self.tuned, self.untuned)]

    def init_state(self, batch_size, device):
        self.response_logps = torch.zeros((batch_size, 2), device=device)
        return {}

    def step(self, inp: StepInput) -> StepOutput:
        tuned, untuned = inp.aux_logits
        logits = inp.logits + self.beta * (tuned - untuned)
        return StepOutput(temperature=inp.logits.new_full((len(logits),), self.temperature), logits=logits)

    def observe(self, inp: StepInput, token: torch.Tensor) -> None:
        """Keep each row's response log-probs under both models, read off the streams that already ran:
        a chunk-level ``ImplicitScorer.from_guidance`` scores with them instead of running the models again."""
        lp = torch.stack([torch.log_softmax(z.float(), -1).gather(-1, token[:, None].to(z.device)).squeeze(-1)
                          for z in inp.aux_logits], -1)
        rows = inp.rows if inp.rows is not None else slice(None)
        self.response_logps[rows] += lp.to(self.response_logps.device)


class ExplicitGuidance(Rule):
    """Sample from softmax((l_base + w * Q(x, y_<t, .)) / T) with a token value model's Q."""

    def __init__(self, value_model, weight: float = 1.0, temperature: float = 1.0, tokenizer=None,
                 prompts=None, chat_template: bool | None = None):
        if value_head_kind(value_model) == "shared":
            raise ValueError("This value model has a 'shared' head (one value per prefix, the same for every "
                             "candidate token), so token-level explicit guidance would change nothing. Use it for "
                             "chunk-level guidance (cbs / ivg / best-of-N), or train a token head: "
                             "`lpo-train train-value explicit --value_head token`.")
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


class ARGS(Rule):
    """ARGS (Khanov et al., 2024): at each step score the base model's top-k tokens v by
    log p_base(v | x, y_<t) + w * r(x, y_<t + v), with r a *sequence-level* reward on the partial
    text (any reward of the project's interface: a reward-model path, a name, a callable), then
    take the best (``temperature`` 0, ARGS-greedy) or sample from softmax(score / T) over the k.

    Costs k reward evaluations per row and step. ``rows`` (one dict per prompt) give rewards
    their dataset columns.
    """

    needs_history = True

    def __init__(self, reward_funcs, weight: float = 1.0, k: int = 10, temperature: float = 0.0,
                 reward_weights=None, rows: list[dict] | None = None):
        from lpo_train.rewards import resolve_rewards

        if k < 1:
            raise ValueError(f"ARGS needs k >= 1 candidate tokens, got {k}.")
        self.funcs, self.reward_weights = resolve_rewards(reward_funcs, reward_weights)
        self.weight, self.k, self.rows = float(weight), k, rows
        self.temperature = check_temperature(temperature)
        self.name = f"args(w={self.weight:g},k={k})"

    def bind(self, tokenizer, prompts):
        self.tokenizer, self.prompts = tokenizer, prompts

    def step(self, inp: StepInput) -> StepOutput:
        from lpo_train.rewards import compute_rewards

        logp = torch.log_softmax(inp.logits, -1)
        top = logp.topk(min(self.k, logp.shape[-1]), dim=-1)
        batch, k = top.indices.shape
        prefixes, candidates = inp.generated.tolist(), top.indices.tolist()
        texts = [self.tokenizer.decode(prefixes[b] + [v], skip_special_tokens=True)
                 for b in range(batch) for v in candidates[b]]
        idx = [i for i in inp.prompt_index.tolist() for _ in range(k)]
        rows = self.rows or [{"prompt": p} for p in self.prompts]
        columns = {c: [rows[i][c] for i in idx] for c in rows[0] if c != "prompt"}
        reward, _ = compute_rewards(self.funcs, self.reward_weights, [rows[i]["prompt"] for i in idx], texts,
                                    **columns)
        score = top.values + self.weight * reward.to(top.values.device).view(batch, k).nan_to_num(nan=0.0)
        probs = torch.zeros_like(logp)
        if self.temperature == 0:
            probs.scatter_(1, top.indices.gather(1, score.argmax(-1, keepdim=True)), 1.0)
        else:
            probs.scatter_(1, top.indices, torch.softmax(score / self.temperature, -1))
        probs = truncate(probs, inp.truncation.top_k, inp.truncation.top_p, inp.truncation.min_p)
        return StepOutput(temperature=logp.new_full((batch,), self.temperature), probs=probs)
