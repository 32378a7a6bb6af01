"""Chunk-level beam search (CBS) through the one engine, batched across prompts.

Rows = prompts x W x K. Every L tokens each prompt's W*K candidates are scored, the global
top W (sorted, duplicates of finished hypotheses allowed) survive, and each survivor is copied K
times in the order [b1..bW, b1..bW, ...]. The engine copies tokens, every model's KV cache and
the rule's state with one index; finished hypotheses stay in the pool at no compute cost. At
the end (all finished or ``max_new_tokens``) the candidates are ranked once more.

(W, K, L) = (1, 1, any) is plain sampling, (1, N, None) is best-of-N.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from lpo_train.decoding.engine import RowSearch, SamplingParams, generate
from lpo_train.decoding.rules import FixedTemperature, Rule
from lpo_train.decoding.trace import Trace
from lpo_train.guidance.scorers import ChunkScorer
from lpo_train.pairs import group_slices


class ChunkBeamSearch(RowSearch):
    def __init__(self, scorer: ChunkScorer | None, width: int = 1, candidates: int = 1,
                 chunk_length: int | None = None):
        if width < 1 or candidates < 1:
            raise ValueError(f"Beam width W and candidates K must be >= 1, got W={width}, K={candidates}.")
        if chunk_length is not None and chunk_length < 1:
            raise ValueError(f"chunk_length L must be >= 1 or None (= only at the end), got {chunk_length}.")
        if scorer is None and width * candidates > 1:
            raise ValueError("A beam search over W*K > 1 candidates needs a chunk scorer "
                             "(implicit, explicit or reward).")
        self.scorer, self.width, self.candidates = scorer, width, candidates
        self.group_size, self.chunk_len = width * candidates, chunk_length
        self.final_scores = None

    def begin(self, prompt_index, prompt_ids, max_new_tokens):
        if self.scorer is not None:
            self.scorer.begin(prompt_index, max_new_tokens)

    def boundary(self, tokens, lengths, alive, final):
        batch = len(lengths)
        scores = (self.scorer.score(tokens, lengths).float().cpu() if self.scorer is not None
                  else torch.zeros(batch))
        groups = scores.view(-1, self.group_size)
        order = torch.argsort(groups, dim=1, descending=True, stable=True)
        offsets = (torch.arange(len(groups)) * self.group_size)[:, None]
        if final:
            src = (order + offsets).flatten()
            self.final_scores = scores[src] if self.scorer is not None else None
            return src
        return (order[:, :self.width].repeat(1, self.candidates) + offsets).flatten()

    def reorder(self, src, alive):
        if self.scorer is not None:
            self.scorer.select(src.cpu(), alive.cpu())


def guided_generate(model, tokenizer, prompts, rule: Rule | None = None, scorer: ChunkScorer | None = None,
                    width: int = 1, candidates: int = 1, chunk_length: int | None = None,
                    params: SamplingParams | None = None, rows: list[dict] | None = None,
                    stats: dict | None = None) -> list[list[Trace]]:
    """Per prompt, its final W*K candidates ranked best first (``trace.score``); ``[0]`` is the answer.

    ``rule`` is the token-level sampler (default: temperature 1; ``ImplicitGuidance`` for EFT,
    ``ExplicitGuidance`` for value-guided sampling), ``scorer`` the chunk-level guidance.
    ``rows`` (dataset rows, one per prompt) give reward columns to a ``RewardScorer``.
    """
    params = replace(params or SamplingParams(), num_samples=width * candidates)
    search = ChunkBeamSearch(scorer, width, candidates, chunk_length)
    if scorer is not None:
        scorer.bind(tokenizer, prompts, rows)
    traces = generate(model, tokenizer, prompts, rule if rule is not None else FixedTemperature(1.0),
                      params, search=search, stats=stats)
    g = search.group_size
    return group_slices(traces, g)


def best_of_sampled(traces: list[Trace], scorer: ChunkScorer, tokenizer, prompts, candidates: int,
                    params: SamplingParams, rows: list[dict] | None = None, pad_id: int = 0,
                    device="cpu") -> list[list[Trace]]:
    """Best-of-N over candidates sampled elsewhere (``use_vllm``): ``traces`` prompt-major, ``candidates`` per prompt,
    scored once on their finished responses and ranked best first (``trace.score``), exactly as the engine's best-of-N
    ranks them (``ChunkBeamSearch`` with W = 1 and only the final boundary), in the same row batches."""
    search = ChunkBeamSearch(scorer, 1, candidates, None)
    scorer.bind(tokenizer, prompts, rows)
    step = max(1, params.batch_size // candidates) * candidates
    ranked = []
    for start in range(0, len(traces), step):
        chunk = traces[start:start + step]
        search.begin([t.prompt_index for t in chunk], [t.prompt_ids for t in chunk], params.max_new_tokens)
        tokens = torch.full((len(chunk), params.max_new_tokens), pad_id, dtype=torch.long, device=device)
        for r, t in enumerate(chunk):
            tokens[r, :len(t.token_ids)] = torch.tensor(t.token_ids, dtype=torch.long, device=device)
        lengths = torch.tensor([len(t.token_ids) for t in chunk], device=device)
        finished = torch.zeros(len(chunk), dtype=torch.bool, device=device)
        src = search.boundary(tokens, lengths, finished, final=True)
        ranked += [replace(chunk[s], score=float(search.final_scores[r])) for r, s in enumerate(src.tolist())]
    return group_slices(ranked, candidates)
