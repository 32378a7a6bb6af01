"""Decoding rules: small objects that decide, per step, the distribution to sample from.

A rule gets a ``StepInput``: the next-token logits (float32, [B, V]), the hidden state that
produced them ([B, H], the one that feeds the LM head), its own per-row state (a dict of
tensors with the batch first; the engine drops finished rows from it), per-row seeds for any
sampling of its own, and the logits of any auxiliary streams it asked for. It returns a
``StepOutput``: a per-row temperature (0 = exact greedy), and optionally new logits (guidance), a full
distribution (mixture decoding, knobs other than temperature) and the grid choice per row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from lpo_train.decoding.sampling import MIN_TEMPERATURE, NO_TRUNCATION, Truncation  # noqa: F401 (re-exported)


@dataclass
class StepInput:
    logits: torch.Tensor  # [B, V] float32
    hidden: torch.Tensor  # [B, H]
    state: dict
    step: int
    row_seeds: torch.Tensor | None = None  # [B] int64, one per row (see decoding.randomness)
    aux_logits: list[torch.Tensor] = field(default_factory=list)  # one [B, V] per aux stream
    entropy: torch.Tensor | None = None  # [B] entropy of softmax(logits) in nats, computed on first use
    generated: torch.Tensor | None = None  # [B, step] tokens so far (only for rules with needs_history)
    prompt_index: torch.Tensor | None = None  # [B] each row's prompt (only for rules with needs_history)
    truncation: Truncation = NO_TRUNCATION  # the call's fixed top-k / top-p / min-p (for rules returning probs)
    rows: torch.Tensor | None = None  # [B] each stream row's index in the batch's record (rows leave as they finish)
    group_seeds: torch.Tensor | None = None  # [B] at step 0: one seed per prompt, shared by its samples
    sample_index: torch.Tensor | None = None  # [B] at step 0: the row's sample index within its prompt

    def uniforms(self, purpose: int) -> torch.Tensor:
        """[B] uniforms for this step; ``purpose`` separates streams (0 is the engine's token draw)."""
        from lpo_train.decoding.randomness import row_uniforms

        if self.row_seeds is None:
            raise ValueError("This rule samples, so its StepInput needs row_seeds.")
        return row_uniforms(self.row_seeds, self.step, purpose)

    def logits_entropy(self) -> torch.Tensor:
        """The entropy of softmax(logits), computed once, only when a rule or the traces ask for it."""
        if self.entropy is None:
            self.entropy = entropy(self.logits)
        return self.entropy


@dataclass
class StepOutput:
    temperature: torch.Tensor  # [B] float; 0.0 means argmax, never a division
    logits: torch.Tensor | None = None  # [B, V] replaces the LM logits when set
    probs: torch.Tensor | None = None  # [B, V] sample from this directly (the rule applied inp.truncation)
    choice: torch.Tensor | None = None  # [B] long, index into the rule's grid
    value: torch.Tensor | None = None  # [B] knob value applied, traced (default: temperature)
    choice_probs: torch.Tensor | None = None  # [B, K] the rule's own distribution over its grid (before any
    # exploration), traced beside the hidden states (trace_hidden)


@dataclass
class AuxStream:
    """A second prompt per input prompt, decoded in lockstep (fed the same sampled tokens).

    ``prompts`` are rendered with ``tokenizer``'s own chat template (KLD's evidence-free prompt,
    a guidance model's template). ``model`` defaults to the main model.
    """

    prompts: list | None = None  # None: the main prompts, rendered with this stream's tokenizer
    model: object | None = None
    tokenizer: object | None = None
    chat_template: bool | None = None


class Rule:
    """Base class. ``level`` is "token" (a decision every step) or "sequence" (one, at step 0)."""

    level = "token"
    name = "rule"
    needs_history = False  # True: StepInput carries the tokens generated so far and the prompt index
    greedy = False  # True: every row, every step decodes greedily (the engine takes an argmax, nothing else)

    def bind(self, tokenizer, prompts) -> None:
        """Called once per ``generate`` with the main tokenizer and the input prompts."""

    def init_state(self, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
        return {}

    def observe(self, inp: StepInput, token: torch.Tensor) -> None:
        """Called after each step with the sampled tokens (rules that keep per-row sums of their own)."""

    def aux_streams(self) -> list[AuxStream]:
        return []

    def step(self, inp: StepInput) -> StepOutput:  # pragma: no cover
        raise NotImplementedError

    def choice_logps(self, logits: torch.Tensor, tokens: torch.Tensor,
                     truncation: Truncation = NO_TRUNCATION) -> torch.Tensor | None:
        """log P(token | choice k) for every grid choice k under the call's truncation, [B, K];
        None for grid-free rules."""
        return None


def check_temperature(value: float, what: str = "temperature") -> float:
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{what} must be a finite number >= 0 (0 means greedy), got {value}.")
    return value


def _rows(inp: StepInput, value) -> torch.Tensor:
    return inp.logits.new_full((inp.logits.shape[0],), float(value))


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of softmax(logits) per row; -inf logits contribute 0.

    H = log S - sum(e * z') / S with z' = z - max z, e = exp(z'), S = sum(e): one exponential pass
    over the vocabulary and no log-softmax."""
    z = logits.float()
    shifted = (z - z.amax(-1, keepdim=True)).clamp_(min=-1e30)  # -inf -> -1e30: exp gives 0 and 0 * z' = 0
    e = shifted.exp()
    total = e.sum(-1)
    return (total.log() - (e * shifted).sum(-1) / total).clamp(min=0)


class FixedTemperature(Rule):
    """Sample from softmax(logits / T); T = 0 is greedy."""

    def __init__(self, temperature: float):
        self.temperature = check_temperature(temperature)
        self.greedy = self.temperature <= MIN_TEMPERATURE
        self.name = "greedy" if self.temperature == 0 else f"T={self.temperature:g}"

    def step(self, inp):
        return StepOutput(temperature=_rows(inp, self.temperature))


# --- entropy-based rules ----------------------------------------------------------------------

MIN_ENTROPY = 1e-6  # below this a distribution is numerically one-hot: decode greedily


def edt_temperature(entropy: torch.Tensor, T0: float, theta: float, N: float = 0.8) -> torch.Tensor:
    """EDT (Zhang et al., 2024): T = T0 * N^(theta / H), H in nats; H -> 0 gives T = 0 (greedy)."""
    safe = entropy.clamp(min=MIN_ENTROPY)
    t = T0 * torch.pow(torch.as_tensor(N, dtype=safe.dtype), theta / safe)
    return torch.where(entropy > MIN_ENTROPY, t, torch.zeros_like(t))


def dynatemp_temperature(normalized_entropy: torch.Tensor, temp: float, temp_range: float,
                         exponent: float = 1.0) -> torch.Tensor:
    """llama.cpp dynatemp: T = T_min + (T_max - T_min) * h^exponent, T_min/max = temp -/+ range."""
    t_min, t_max = max(0.0, temp - temp_range), temp + temp_range
    return t_min + (t_max - t_min) * normalized_entropy.clamp(0, 1).pow(exponent)


def kld_temperature(kl: torch.Tensor, T0: float, sigma: float) -> torch.Tensor:
    """KL-guided temperature (Chang et al., 2023): T = T0 * 2^(-KL / sigma); sigma = 0 disables."""
    if sigma == 0:
        return torch.full_like(kl, T0)
    return T0 * torch.pow(torch.as_tensor(2.0, dtype=kl.dtype), -kl.clamp(min=0) / sigma)


class EDT(Rule):
    """Entropy-based dynamic temperature over the full vocabulary, per row."""

    def __init__(self, T0: float = 1.0, theta: float = 1.0, N: float = 0.8):
        self.T0, self.theta, self.N = check_temperature(T0, "T0"), float(theta), float(N)
        if not 0 < self.N < 1:
            raise ValueError(f"EDT needs 0 < N < 1 (N >= 1 inverts the rule), got N={N}.")
        if self.theta < 0:
            raise ValueError(f"EDT needs theta >= 0, got {theta}.")
        self.name = f"EDT(T0={T0:g},theta={theta:g})"

    def step(self, inp):
        return StepOutput(temperature=edt_temperature(inp.logits_entropy(), self.T0, self.theta, self.N))


class Dynatemp(Rule):
    """llama.cpp-style dynamic temperature on entropy normalised by ln(#finite logits).

    Unlike llama.cpp's default chain (top-k 40, top-p 0.95, min-p 0.05 first), the entropy is
    taken over the full vocabulary (text-generation-webui's default order); truncations set in
    ``SamplingParams`` act after it.
    """

    def __init__(self, temp: float = 0.8, temp_range: float = 0.3, exponent: float = 1.0):
        self.temp, self.temp_range = check_temperature(temp), check_temperature(temp_range, "range")
        if exponent <= 0:
            raise ValueError(f"dynatemp exponent must be > 0, got {exponent}.")
        self.exponent = float(exponent)
        self.name = f"dynatemp({temp:g}±{temp_range:g},e={exponent:g})"

    def step(self, inp):
        n = torch.isfinite(inp.logits).sum(-1).clamp(min=2).float()
        h = inp.logits_entropy() / n.log()
        return StepOutput(temperature=dynatemp_temperature(h, self.temp, self.temp_range, self.exponent))


# rules that set every token's temperature from that token's logits alone, with the fields that rebuild them (vLLM
# runs them as a logits processor: lpo_train.decoding.vllm_processors)
LOGITS_RULES = {"edt": (EDT, ("T0", "theta", "N")), "dynatemp": (Dynatemp, ("temp", "temp_range", "exponent"))}


class KLD(Rule):
    """KL-divergence-guided temperature: a second stream decodes the evidence-free prompt.

    T = T0 * 2^(-KL(p_with || p_without) / sigma): source-dependent tokens are sampled cold.
    ``context_free_prompts`` has one prompt per input prompt, without the evidence.
    """

    def __init__(self, context_free_prompts: list, T0: float = 1.0, sigma: float = 1.0):
        self.T0, self.sigma = check_temperature(T0, "T0"), check_temperature(sigma, "sigma")
        self.prompts = list(context_free_prompts)
        self.name = f"KLD(T0={T0:g},sigma={sigma:g})"

    def aux_streams(self):
        return [AuxStream(prompts=self.prompts)]

    def step(self, inp):
        logp = torch.log_softmax(inp.logits, -1).clamp(min=math.log(1e-7))
        logq = torch.log_softmax(inp.aux_logits[0], -1).clamp(min=math.log(1e-7))
        kl = (logp.exp() * (logp - logq)).sum(-1).clamp(min=0)
        return StepOutput(temperature=kld_temperature(kl, self.T0, self.sigma))
