"""A trained AdaptiveDecoder head inside vLLM (imported by vLLM's model loader, never by lpo-train itself: it
imports vLLM). ``vllm.serve_overrides`` says how to select it; docs/serving.md section B is the guide.

``AdaptiveLlamaForCausalLM`` is vLLM's ``LlamaForCausalLM`` whose ``compute_logits`` returns, per row, the log of the
next-token distribution the head's choice implies (``knob_distribution``: the chosen temperature, or the chosen
top-k / top-p / min-p at the head's base temperature, then the configured fixed truncations). vLLM then samples
the request at temperature 1 with no truncation of its own, which draws exactly from that distribution (or takes
its argmax for a greedy request). Per ``selection``:

- ``argmax``: the head's most likely choice (a token-level head at every token, a sequence-level head once, from the
  prompt's last hidden state, kept for the whole response);
- ``sample``: a sequence-level head draws its one choice from its distribution, with the request's ``seed`` when it
  has one (reproducible); a token-level head's response is drawn from the mixture sum_k P(k | h_t) p_k(y), which is
  the distribution of ``sample`` with the choice marginalised (the choice is never fed back into the LM), so the
  responses are distributed exactly as the engine's ``sample`` responses;
- ``mixture`` (Eq. 6): the mixture at every token (a sequence-level head: with the prompt's distribution).

A request may choose its own selection with ``extra_args={"lpo_selection": ...}`` (``vllm_xargs`` over HTTP); with
``extra_args={"lpo_key": KEY}`` an in-process engine records each token's choice in ``CHOICES[KEY]`` (-1: a mixture).

A sequence-level head keeps one choice per request: ``HeadRowsProcessor``, a logits processor that vLLM loads on
every engine through lpo-train's ``vllm.logits_processors`` entry point (it does nothing for other models), tracks
which request sits in which row of the batch; its ``update_state`` runs before the model's forward.
"""

from __future__ import annotations

import warnings

import torch
from vllm.model_executor.models.llama import LlamaForCausalLM
from vllm.v1.sample.logits_processor import LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from lpo_train.decoding.sampling import Truncation, knob_distribution
from lpo_train.decoding.vllm import HEAD_ARCHITECTURE

CHOICES: dict[str, list[int]] = {}  # per request key (extra_args["lpo_key"]), each token's choice (in-process)
_ROWS: dict[int, dict[int, dict]] = {}  # per head model (id of its hf_config): batch row -> that request's state


def _is_head_model(vllm_config) -> bool:
    return HEAD_ARCHITECTURE in (getattr(vllm_config.model_config.hf_config, "architectures", None) or [])


class HeadRowsProcessor(LogitsProcessor):
    """Keeps, for a head model's engine, each batch row's request state (its seed, output tokens and, for a
    sequence-level head, its choice); leaves the logits alone. Inert on any other model."""

    def __init__(self, vllm_config, device, is_pin_memory):
        self.rows: dict[int, dict] | None = None
        if _is_head_model(vllm_config):
            self.rows = _ROWS.setdefault(id(vllm_config.model_config.hf_config), {})

    @classmethod
    def validate_params(cls, params) -> None:
        from lpo_train.heads import SELECTIONS

        selection = (params.extra_args or {}).get("lpo_selection")
        if selection is not None and selection not in SELECTIONS:
            raise ValueError(f"extra_args lpo_selection must be one of {SELECTIONS}, got {selection!r}.")

    def is_argmax_invariant(self) -> bool:
        return True

    def update_state(self, batch_update) -> None:
        if self.rows is not None:
            process_dict_updates(self.rows, batch_update, _new_row)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits


def _new_row(params, prompt_ids, output_ids) -> dict:
    extra = (params.extra_args if params is not None else None) or {}
    generator = None
    if params is not None and params.seed is not None:
        generator = torch.Generator().manual_seed(int(params.seed) ^ 0x5EED)  # not the token sampler's stream
    # a request that arrives with output already is one vLLM preempted and now recomputes: its first choice is gone
    return {"output": output_ids, "choice": None, "probs": None, "generator": generator, "key": extra.get("lpo_key"),
            "selection": extra.get("lpo_selection"), "resumed": bool(output_ids)}


class AdaptiveLlamaForCausalLM(LlamaForCausalLM):
    """vLLM's Llama with an AdaptiveDecoder head choosing the decoding knob (see the module docstring). The head
    loads from ``hf_config.lpo_head`` (a folder or Hub id); ``lpo_selection``, ``lpo_top_k``, ``lpo_top_p``,
    ``lpo_min_p`` come from the same ``hf_overrides``. The head's weights are not the checkpoint's: vLLM's weight
    loader never sees them."""

    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        from lpo_train.heads import SELECTIONS, AdaptiveDecoderHead

        config = vllm_config.model_config.hf_config
        head = AdaptiveDecoderHead.from_pretrained(config.lpo_head).eval()
        if head.config.hidden_size != config.hidden_size:
            raise ValueError(f"The head {config.lpo_head!r} expects hidden size {head.config.hidden_size}, but "
                             f"{vllm_config.model_config.model} has {config.hidden_size}: serve it on the base model "
                             "it was trained on.")
        self.lpo_selection = getattr(config, "lpo_selection", "argmax")
        if self.lpo_selection not in SELECTIONS:
            raise ValueError(f"lpo_selection must be one of {SELECTIONS}, got {self.lpo_selection!r}.")
        self.lpo_truncation = Truncation(int(getattr(config, "lpo_top_k", 0)), float(getattr(config, "lpo_top_p", 1.0)),
                                         float(getattr(config, "lpo_min_p", 0.0)))
        self._lpo = {"head": head, "config": config}  # a dict: not registered as a submodule

    @torch.no_grad()
    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        logits = super().compute_logits(hidden_states)
        if logits is None:
            return None
        head = self._lpo["head"]
        if head.grid.device != logits.device:
            head.to(logits.device)
        z = logits.float()
        probs = head.log_probs(hidden_states.float()).exp()  # [rows, K]
        tracked = _ROWS.get(id(self._lpo["config"]))  # None: no HeadRowsProcessor on this engine
        token_level = head.config.level == "token"
        if tracked is None and not token_level:
            raise RuntimeError("A sequence-level head needs lpo-train's HeadRowsProcessor on the engine (vLLM loads it "
                               "through lpo-train's vllm.logits_processors entry point: reinstall lpo-train, or pass "
                               "logits_processors=[HeadRowsProcessor]).")
        # a row no request holds (vLLM's warm-up and profiling runs) decides alone, by argmax
        rows = [(tracked or {}).get(i) or _new_row(None, None, None) for i in range(len(z))]
        selections = [row["selection"] or self.lpo_selection for row in rows]
        if not token_level:  # one decision per request, at its first token, kept after
            for i, row in enumerate(rows):
                if row["choice"] is None and row["resumed"]:
                    warnings.warn("vLLM preempted a request served by a sequence-level head and recomputes it: its "
                                  "choice is made again, from the hidden state of its last token, not its prompt's. "
                                  "Give the engine more KV cache (gpu_memory_utilization, VLLM_CPU_KVCACHE_SPACE) or "
                                  "fewer concurrent requests (max_num_seqs).", RuntimeWarning, stacklevel=2)
                if row["choice"] is None:
                    row["probs"] = probs[i].clone()
                    row["choice"] = int(torch.multinomial(probs[i].float().cpu(), 1, generator=row["generator"])) \
                        if selections[i] == "sample" else int(probs[i].argmax())
            probs = torch.stack([row["probs"] for row in rows])
            choice = torch.tensor([row["choice"] for row in rows], device=z.device)
        else:
            choice = probs.argmax(-1)
        grid = head.grid.to(z.device)
        # the mixture: Eq. 6, and a token-level head's ``sample`` with the choice marginalised
        mixed = torch.tensor([s == "mixture" or (token_level and s == "sample") for s in selections], device=z.device)
        dist = self._distribution(z, grid[choice])
        if bool(mixed.any()):
            mixture = sum(probs[:, k, None] * self._distribution(z, grid[k].expand(len(z))) for k in range(len(grid)))
            dist = torch.where(mixed[:, None], mixture, dist)
        for i, row in enumerate(rows):
            if row["key"] is not None:
                CHOICES.setdefault(row["key"], []).append(-1 if bool(mixed[i]) else int(choice[i]))
        return dist.log().to(logits.dtype)

    def _distribution(self, logits: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        head = self._lpo["head"]
        return knob_distribution(logits, head.config.knob, values, head.config.base_temperature, self.lpo_truncation)
