"""What the engine records for every row of a batch, as one object: record a step, mark finished rows,
reorder rows (beam search), and build the traces."""

from __future__ import annotations

import torch

from lpo_train.decoding.trace import Trace

FINISH_REASONS = ("length", "eos", "stop")  # codes 0, 1, 2 of RowRecord.finish


class RowRecord:
    """Per-row buffers [B, steps]: tokens, applied values, entropies, grid choices, and optionally the
    hidden state the rule saw (with the rule's distribution over its grid there) and log P(y_t | choice k);
    plus lengths, alive flags, finish reasons."""

    def __init__(self, batch: int, steps: int, pad_id: int, device, hidden_like: torch.Tensor | None = None,
                 hidden_steps: int = 1, trace_entropy: bool = True):
        self.steps, self.hidden_steps = steps, hidden_steps
        self.tokens = torch.full((batch, steps), pad_id, dtype=torch.long, device=device)
        self.values = torch.zeros((batch, steps), device=device)
        self.entropies = torch.zeros((batch, steps), device=device) if trace_entropy else None
        self.choices = torch.full((batch, steps), -1, dtype=torch.long, device=device)
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)
        self.alive = torch.ones(batch, dtype=torch.bool, device=device)
        self.finish = torch.zeros(batch, dtype=torch.long, device=device)  # index into FINISH_REASONS
        self.hidden = (torch.zeros((batch, hidden_steps, hidden_like.shape[-1]), dtype=hidden_like.dtype, device=device)
                       if hidden_like is not None else None)
        self.choice_logps: torch.Tensor | None = None
        self.choice_probs: torch.Tensor | None = None  # [B, hidden_steps, K], beside the hidden states

    def record(self, rows, step: int, token, value, entropy, choice=None, hidden=None, choice_logps=None,
               choice_probs=None) -> None:
        """Step ``step`` of ``rows`` (a slice or an index tensor of the rows still decoding)."""
        self.tokens[rows, step] = token
        self.values[rows, step] = value.float()
        if self.entropies is not None:
            self.entropies[rows, step] = entropy
        self.lengths[rows] += 1
        if choice is not None:
            self.choices[rows, step] = choice
        if self.hidden is not None and hidden is not None and step < self.hidden_steps:
            self.hidden[rows, step] = hidden
            if choice_probs is not None:
                self._per_choice("choice_probs", self.hidden_steps, rows, step, choice_probs)
        if choice_logps is not None:
            self._per_choice("choice_logps", self.steps, rows, step, choice_logps)

    def _per_choice(self, name: str, steps: int, rows, step: int, values: torch.Tensor) -> None:
        """Write a per-grid-choice buffer [B, steps, K] (float32), allocated at its first write (K is the rule's)."""
        if getattr(self, name) is None:
            setattr(self, name, torch.zeros((len(self.lengths), steps, values.shape[-1]), device=self.tokens.device))
        getattr(self, name)[rows, step] = values.float()

    def finished(self, rows: torch.Tensor, reason: str) -> None:
        """Rows ``rows`` (record indices) end for ``reason`` (device-side; nothing is copied to the host)."""
        rows = rows.to(self.alive.device)
        self.finish[rows] = FINISH_REASONS.index(reason)
        self.alive[rows] = False

    def reorder(self, src: torch.Tensor) -> None:
        """New row r continues old row ``src[r]`` (every buffer copied along)."""
        for name in ("tokens", "values", "entropies", "choices", "lengths", "alive", "finish", "hidden",
                     "choice_logps", "choice_probs"):
            buf = getattr(self, name)
            if buf is not None:
                setattr(self, name, buf[src])

    def traces(self, tokenizer, rows: list[tuple[int, int]], prompt_ids: list[list[int]], stop_strings,
               scores: torch.Tensor | None = None) -> list[Trace]:
        lengths = self.lengths.tolist()
        tokens, values, choices = (x.tolist() for x in (self.tokens, self.values, self.choices))
        entropies = self.entropies.tolist() if self.entropies is not None else None
        finish = [FINISH_REASONS[c] for c in self.finish.tolist()]
        out = []
        for r, n in enumerate(lengths):
            token_ids = tokens[r][:n]
            text = tokenizer.decode(token_ids, skip_special_tokens=True)
            if finish[r] == "stop":
                cut = min((text.find(s) + len(s) for s in stop_strings if s in text), default=len(text))
                text = text[:cut]
            picked = [c for c in choices[r][:n] if c >= 0]
            out.append(Trace(
                prompt_index=rows[r][0], sample_index=rows[r][1], prompt_ids=list(prompt_ids[r]), token_ids=token_ids,
                text=text, finish_reason=finish[r], values=values[r][:n],
                entropies=None if entropies is None else entropies[r][:n],
                choices=picked or None,
                # left on the device (views): callers copy what they keep
                hidden=None if self.hidden is None else self.hidden[r, :min(self.hidden_steps, n)],
                choice_probs=None if self.choice_probs is None else self.choice_probs[r, :min(self.hidden_steps, n)],
                choice_logps=None if self.choice_logps is None else self.choice_logps[r, :n],
                score=None if scores is None else float(scores[r])))
        return out
