"""Chunk-level scorers for chunk-level beam search: each scores every row's response so far.

- ``ImplicitScorer``: beta * sum over response tokens of log pi_tuned - log pi_untuned
  (options: ``average_log_prob``, ``reference_free``), as in weak-to-strong search.
- ``ExplicitScorer``: beta * the value model's end score (``guidance.value_model``).
- ``RewardScorer``: any reward functions of the project's reward interface on the decoded
  text (gold rewards, sequence reward models); best-of-N with a reward model.

Model scorers are *incremental* by default: each model keeps a KV cache of prompt + response,
is fed only the tokens generated since the last boundary, and its cache is reordered with the
beams, so a chunk costs the same however long the response is. ``incremental=False`` re-encodes
prompt + response from scratch at every boundary (the official code's behaviour; kept for
benchmarks and for scorers whose tokenizer differs from the base model's: they score the
re-tokenized text). Every model sees its own prompt template; full re-encoding uses right
padding with explicit position ids.
"""

from __future__ import annotations

import torch

from lpo_train.decoding.engine import encode_prompts, same_vocab
from lpo_train.decoding.stream import Stream, head_logits

MAX_LOGITS = 1 << 25  # rows x positions x vocabulary materialised at once when scoring


class ChunkScorer:
    """Interface used by ``ChunkBeamSearch``."""

    def bind(self, tokenizer, prompts, rows: list[dict] | None = None) -> None:
        """The base tokenizer and the input prompts (and dataset rows, for reward columns)."""
        self.base_tokenizer, self.prompts_in, self.rows = tokenizer, prompts, rows

    def begin(self, prompt_index: list[int], max_new_tokens: int) -> None:
        """A new batch of rows; ``prompt_index`` per row."""

    def score(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """[B] scores of the responses ``tokens[r, :lengths[r]]``."""
        raise NotImplementedError

    def select(self, src: torch.Tensor, alive: torch.Tensor) -> None:
        """Rows were reordered (new row r continues ``src[r]``); ``alive`` rows keep growing."""


def _gather(head_fn, vocab: int, hidden_pred: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(raw, logp)`` [S, n]: the output logit and log-softmax of ``ids`` given the hidden state that
    predicts each, in row micro-batches (the full [S, n, V] logits never exist at once)."""
    step = max(1, MAX_LOGITS // max(1, ids.shape[1] * vocab))
    raws, logps = [], []
    for start in range(0, len(ids), step):
        logits = head_fn(hidden_pred[start:start + step])
        raw = logits.gather(-1, ids[start:start + step, :, None].to(logits.device)).squeeze(-1)
        raws.append(raw)
        logps.append(raw - logits.logsumexp(-1))
    return torch.cat(raws), torch.cat(logps)


class _Track:
    """One scorer model's view of the growing responses: per row, the sum of the response tokens'
    log-probs, the raw output at the last token, and the number of tokens scored."""

    def __init__(self, model, tokenizer=None, prompts=None, chat_template=None, incremental=True):
        self.model, self.tokenizer, self.prompts, self.chat_template = model, tokenizer, prompts, chat_template
        self.incremental = incremental
        self.head = model.get_output_embeddings()
        self.vocab = self.head.weight.shape[0]
        self.softcap = getattr(model.config, "final_logit_softcapping", None)

    def head_fn(self, hidden):
        return head_logits(self.head, self.softcap, hidden)

    def bind(self, base_tokenizer, prompts) -> None:
        tok = self.tokenizer or base_tokenizer
        self.base_tokenizer, self.tok = base_tokenizer, tok
        self.shared = same_vocab(base_tokenizer, tok)
        if self.shared and self.model.get_input_embeddings().num_embeddings < len(tok):
            raise ValueError(f"A scorer model has {self.model.get_input_embeddings().num_embeddings} token "
                             f"embeddings for a tokenizer of {len(tok)} tokens; give the scorer its own tokenizer.")
        mine = prompts if self.prompts is None else self.prompts
        if len(mine) != len(prompts):
            raise ValueError(f"A scorer got {len(mine)} prompts for {len(prompts)} input prompts.")
        self.prompt_ids = encode_prompts(tok, mine, self.chat_template)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        self.device = next(self.model.parameters()).device

    def begin(self, prompt_index, max_new_tokens):
        b = len(prompt_index)
        self.rows_prompt = [self.prompt_ids[i] for i in prompt_index]
        self.logp_sum = torch.zeros(b, device=self.device)
        self.last_raw = torch.zeros(b, device=self.device)
        self.count = torch.zeros(b, dtype=torch.long, device=self.device)
        self.use_stream = self.incremental and self.shared
        self.stream = Stream(self.model, self.rows_prompt, self.pad_id, max_new_tokens) if self.use_stream else None

    def update(self, tokens, lengths, rows: torch.Tensor) -> None:
        """(Re)score rows ``rows`` (those still growing), ``tokens[r, :lengths[r]]``."""
        if len(rows) == 0:
            return
        if self.use_stream:
            self._update_incremental(tokens, lengths, rows)
        else:
            self._update_full(tokens, lengths, rows)

    def _update_incremental(self, tokens, lengths, rows):
        fed, new = self.count[rows], lengths[rows].to(self.device)
        n = int((new - fed).max())
        offsets = torch.arange(n, device=self.device)[None]
        valid = offsets < (new - fed)[:, None]  # rows that finished inside the chunk are right-padded
        pos = (fed[:, None] + offsets).clamp(max=tokens.shape[1] - 1)
        ids = tokens[rows.to(tokens.device)].to(self.device).gather(1, pos).masked_fill(~valid, self.pad_id)
        prev = self.stream.hidden
        hidden = self.stream.feed(ids)
        hidden_pred = torch.cat([prev[:, None], hidden[:, :-1]], dim=1)
        raw, logp = _gather(self.head_fn, self.vocab, hidden_pred, ids)
        self.logp_sum[rows] += (logp * valid).sum(1)
        self.last_raw[rows] = raw.gather(1, (new - fed - 1)[:, None]).squeeze(1)
        self.count[rows] = new

    def _response_ids(self, tokens, length) -> list[int]:
        ids = tokens[:length].tolist()
        if self.shared:
            return ids
        text = self.base_tokenizer.decode(ids, skip_special_tokens=True)
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _update_full(self, tokens, lengths, rows):
        seqs, resp = [], []
        for r in rows.tolist():
            ids = self._response_ids(tokens[r], int(lengths[r]))
            seqs.append(self.rows_prompt[r] + ids)
            resp.append(len(ids))
        width = max(map(len, seqs))
        input_ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long, device=self.device)
        mask = torch.zeros_like(input_ids)
        for j, x in enumerate(seqs):  # right padding, explicit positions
            input_ids[j, :len(x)] = torch.tensor(x)
            mask[j, :len(x)] = 1
        hidden = self.model.get_decoder()(input_ids=input_ids, attention_mask=mask,
                                          position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).last_hidden_state
        n = max(max(resp), 1)
        start = torch.tensor([len(x) - k for x, k in zip(seqs, resp)], device=self.device)  # first response index
        offsets = torch.arange(n, device=self.device)
        pos = (start[:, None] + offsets[None]).clamp(max=width - 1)
        valid = offsets[None] < torch.tensor(resp, device=self.device)[:, None]
        ids = input_ids.gather(1, pos)
        hidden_pred = hidden.gather(1, (pos - 1).clamp(min=0)[..., None].expand(-1, -1, hidden.shape[-1]))
        raw, logp = _gather(self.head_fn, self.vocab, hidden_pred, ids)
        counts = torch.tensor(resp, device=self.device)
        self.logp_sum[rows] = (logp * valid).sum(1)
        self.last_raw[rows] = torch.where(counts > 0, raw.gather(1, (counts - 1).clamp(min=0)[:, None]).squeeze(1),
                                          torch.zeros_like(counts, dtype=raw.dtype))
        self.count[rows] = counts

    def select(self, src, alive, growing):
        """``growing``: rows that were in the stream before the reorder (alive at this boundary's start)."""
        src = src.to(self.device)
        if self.use_stream:
            position = torch.full((len(src),), -1, dtype=torch.long, device=self.device)
            position[growing.to(self.device)] = torch.arange(len(growing), device=self.device)
            self.stream.select(position[src[alive.to(self.device)]])
        self.logp_sum, self.last_raw, self.count = self.logp_sum[src], self.last_raw[src], self.count[src]
        self.rows_prompt = [self.rows_prompt[j] for j in src.tolist()]


class _ModelScorer(ChunkScorer):
    """Shared bookkeeping of scorers built on ``_Track``s: which rows still grow."""

    tracks: list[_Track]

    def bind(self, tokenizer, prompts, rows=None):
        super().bind(tokenizer, prompts, rows)
        for t in self.tracks:
            t.bind(tokenizer, prompts)

    def begin(self, prompt_index, max_new_tokens):
        self.growing = torch.arange(len(prompt_index))
        for t in self.tracks:
            t.begin(prompt_index, max_new_tokens)

    def score(self, tokens, lengths):
        for t in self.tracks:
            t.update(tokens, lengths, self.growing)
        return self.combine()

    def select(self, src, alive):
        for t in self.tracks:
            t.select(src, alive, self.growing)
        self.growing = alive.nonzero().flatten().cpu()

    def combine(self) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class ImplicitScorer(_ModelScorer):
    """beta * sum_i [log pi_tuned(y_i | x, y_<i) - log pi_untuned(y_i | x, y_<i)] over response tokens.

    ``average_log_prob`` divides by the response length; ``reference_free`` drops the untuned term.
    A PEFT ``tuned`` model without ``untuned`` scores the untuned term with its adapter off.
    """

    def __init__(self, tuned, untuned=None, beta: float = 1.0, tokenizer=None, prompts=None,
                 chat_template=None, average_log_prob: bool = False, reference_free: bool = False,
                 incremental: bool = True):
        from lpo_train.models.adapters import untuned_or_adapter_off

        models = [tuned] if reference_free else [tuned, untuned_or_adapter_off(
            tuned, untuned, "ImplicitScorer (or reference_free=True)")]
        self.tracks = [_Track(m, tokenizer, prompts, chat_template, incremental) for m in models]
        self.beta, self.average_log_prob, self.reference_free = float(beta), average_log_prob, reference_free

    @staticmethod
    def from_guidance(rule, beta: float = 1.0, average_log_prob: bool = False) -> SharedImplicitScorer:
        """The scorer of ``rule``'s tuned / untuned models and prompts, sharing its streams."""
        return SharedImplicitScorer(rule, beta, average_log_prob)

    def combine(self):
        value = self.tracks[0].logp_sum - (0 if self.reference_free else self.tracks[1].logp_sum)
        if self.average_log_prob:
            value = value / self.tracks[0].count.clamp(min=1)
        return self.beta * value


class SharedImplicitScorer(ChunkScorer):
    """The chunk-level implicit value of an ``ImplicitGuidance`` rule's own models and prompts, read from
    the log-probs the rule's streams computed while decoding (``ImplicitGuidance.observe``): EFT +
    CBS-implicit runs the tuned and untuned models once, not twice. Equal to ``ImplicitScorer`` on the
    same models and prompts (tested)."""

    def __init__(self, rule, beta: float = 1.0, average_log_prob: bool = False):
        self.rule, self.beta, self.average_log_prob = rule, float(beta), average_log_prob

    def score(self, tokens, lengths):
        sums = self.rule.response_logps
        value = sums[:, 0] - sums[:, 1]
        if self.average_log_prob:
            value = value / lengths.to(value.device).clamp(min=1)
        return self.beta * value

    def select(self, src, alive):
        self.rule.response_logps = self.rule.response_logps[src.to(self.rule.response_logps.device)]


class ExplicitScorer(_ModelScorer):
    """beta * the value model's end score V(x, y_<=T) = Q(x, y_<T)[y_T] (a shared head: w . h_{T-1}, which
    does not see the last token)."""

    def __init__(self, value_model, beta: float = 1.0, tokenizer=None, prompts=None, chat_template=None,
                 incremental: bool = True):
        self.tracks = [_Track(value_model, tokenizer, prompts, chat_template, incremental)]
        self.beta = float(beta)

    def combine(self):
        return self.beta * self.tracks[0].last_raw


class RewardScorer(ChunkScorer):
    """Reward functions (names, callables, reward-model paths; as in training) on the decoded text.

    Rescores every growing row at each boundary (rewards are black boxes on text); with
    ``chunk_length=None`` (best-of-N) that is once.
    """

    def __init__(self, reward_funcs, reward_weights=None):
        from lpo_train.rewards import resolve_rewards

        self.funcs, self.weights = resolve_rewards(reward_funcs, reward_weights)

    def begin(self, prompt_index, max_new_tokens):
        self.prompt_index = list(prompt_index)
        self.values = torch.zeros(len(prompt_index))
        self.growing = torch.arange(len(prompt_index))

    def score(self, tokens, lengths):
        from lpo_train.rewards import compute_rewards

        rows = self.growing.tolist()
        if rows:
            idx = [self.prompt_index[r] for r in rows]
            data = self.rows or [{"prompt": p} for p in self.prompts_in]
            texts = [self.base_tokenizer.decode(tokens[r, :lengths[r]].tolist(), skip_special_tokens=True)
                     for r in rows]
            columns = {k: [data[i][k] for i in idx] for k in data[0] if k != "prompt"}
            total, _ = compute_rewards(self.funcs, self.weights, [data[i]["prompt"] for i in idx], texts, **columns)
            self.values[self.growing] = total.nan_to_num(nan=float("-inf")).to(self.values.dtype)
        return self.values.clone()

    def select(self, src, alive):
        src = src.cpu()
        self.values = self.values[src]
        self.prompt_index = [self.prompt_index[j] for j in src.tolist()]
        self.growing = alive.nonzero().flatten().cpu()
