"""One batched, KV-cached sampling loop for every decoding method in the project.

``generate(model, tokenizer, prompts, rule, params)`` runs prompts x samples as one batch
(chunked by ``params.batch_size``), asks ``rule`` what to sample from at every step, and
returns one ``Trace`` per sequence: tokens, the choice and value applied at each step, the
entropy, and optionally what LPO training needs so the LM never runs again (the head input
hidden states and the sampled token's log-probability under every grid choice).

Finished rows leave the batch (their KV cache rows are dropped), so they stop costing compute.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lpo_train.decoding.cache import CACHE_IMPLEMENTATIONS
from lpo_train.decoding.randomness import seed_for
from lpo_train.decoding.rows import RowRecord
from lpo_train.decoding.rules import FixedTemperature, Rule, StepInput
from lpo_train.decoding.sampling import Truncation, sample_from, warp
from lpo_train.decoding.stops import StopStrings
from lpo_train.decoding.stream import Stream, vocab_size
from lpo_train.decoding.trace import Trace  # also importable from here, its former home


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    num_samples: int = 1  # samples per prompt; rows are prompt-major
    top_k: int = 0  # 0 = off (note: HF generate defaults to top_k=50)
    top_p: float = 1.0
    min_p: float = 0.0
    stop_strings: tuple[str, ...] = ()
    seed: int = 0  # with prompt_seeds unset, row (i, s) uses seed_for(seed, i, s)
    prompt_seeds: list[int] | None = None  # one seed per prompt; rows use seed_for(prompt_seed, s)
    batch_size: int = 64  # rows (prompt x sample) per forward batch
    chat_template: bool | None = None  # None: use the tokenizer's chat template if it has one
    trace_hidden: bool = False  # keep the hidden state the rule saw (per step, or step 0 for sequence rules)
    trace_choice_logps: bool = False  # keep log P(y_t | choice k) for every grid choice k
    trace_entropy: bool = False  # keep the entropy of softmax(raw logits) per step (computed only when asked)
    ignore_eos: bool = False  # always decode max_new_tokens (benchmarks)
    cache_implementation: str = "preallocated"  # or "dynamic" (transformers' DynamicCache: torch.cat per step)
    compile_decode_step: bool = False  # torch.compile the model's one-token decode forward (dynamic shapes)

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}.")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}.")
        self.truncation  # validates top_k / top_p / min_p
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}.")
        self.stop_strings = tuple(self.stop_strings)
        if any(not isinstance(x, str) or not x for x in self.stop_strings):
            raise ValueError(f"stop_strings must be non-empty strings, got {list(self.stop_strings)}.")
        if self.cache_implementation not in CACHE_IMPLEMENTATIONS:
            raise ValueError(f"cache_implementation must be one of {CACHE_IMPLEMENTATIONS}, "
                             f"got {self.cache_implementation!r}.")

    @property
    def truncation(self) -> Truncation:
        return Truncation(self.top_k, self.top_p, self.min_p)


def next_token_distribution(logits: torch.Tensor, temperature: torch.Tensor, top_k: int = 0, top_p: float = 1.0,
                            min_p: float = 0.0) -> torch.Tensor:
    """The distribution the engine samples from for a temperature rule, [B, V]: softmax(logits / T)
    (rows with T = 0 one-hot on the argmax), then top-k, top-p, min-p, exactly as HF ``generate``."""
    return warp(logits, temperature, Truncation(top_k, top_p, min_p))


def encode_prompts(tokenizer, prompts, chat_template: bool | None = None) -> list[list[int]]:
    """Token ids per prompt. Prompts are strings, conversations (lists of messages) or token ids.

    A string that already holds the chat template (TRL's ``apply_chat_template(..., tokenize=False)``) is
    encoded as given, not wrapped a second time: it starts with a special token that the template's renderings
    start with (ChatML's ``<|im_start|>``, Llama 3's ``<|begin_of_text|>``, a BOS, a role token)."""
    use_template = bool(getattr(tokenizer, "chat_template", None)) if chat_template is None else chat_template
    openings = None  # the template's first special tokens (a user turn, a system turn); found at the first string
    encoded = []
    for p in prompts:
        if isinstance(p, (list, tuple)) and p and all(isinstance(x, int) for x in p):
            encoded.append(list(p))  # already token ids (chat template applied by the caller)
            continue
        if isinstance(p, list):
            if not use_template:
                raise ValueError("Conversational prompts need a tokenizer with a chat template.")
            text = tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False)
        elif isinstance(p, str):
            if use_template and openings is None:
                specials = {t for t in tokenizer.all_special_tokens if t} | {
                    t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}
                openings = set()
                for first in ("user", "system"):
                    try:
                        rendered = tokenizer.apply_chat_template([{"role": first, "content": "x"}], tokenize=False)
                    except Exception:  # a template without a system turn
                        continue
                    openings.add(max((t for t in specials if rendered.startswith(t)), key=len, default=""))
                openings.discard("")
            wrap = use_template and not p.startswith(tuple(openings))  # templated already: used as given
            text = (tokenizer.apply_chat_template([{"role": "user", "content": p}],
                                                  add_generation_prompt=True, tokenize=False) if wrap else p)
        else:
            raise TypeError(f"A prompt must be a string or a list of messages, got {type(p)}.")
        ids = tokenizer(text, add_special_tokens=not use_template)["input_ids"]
        if not ids:
            raise ValueError("An empty prompt cannot be decoded from; give at least one token.")
        encoded.append(ids)
    return encoded


def _eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        eos = getattr(source, "eos_token_id", None)
        if eos is not None:
            ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
    return ids


def same_vocab(tokenizer, other) -> bool:
    return other is tokenizer or other.get_vocab() == tokenizer.get_vocab()


def check_same_vocab(tokenizer, other, what: str) -> None:
    if not same_vocab(tokenizer, other):
        raise ValueError(f"The {what} uses a different vocabulary from the main model's tokenizer; "
                         "token-level combination needs one shared vocabulary (same tokenizer family). "
                         "Use chunk-level (text) guidance for models with another tokenizer.")


class RowSearch:
    """Reorders rows at chunk boundaries (chunk-level beam search, ``lpo_train.guidance``).

    Rows come in groups of ``group_size`` consecutive rows, one group per prompt. Every
    ``chunk_len`` tokens (None: only at the end) and once at the end, ``boundary`` scores the rows
    and returns ``src`` [B]: new row r continues old row ``src[r]`` (tokens, every KV cache and the
    rule's state are copied along). A row that is not the first copy of its source gets a fresh
    seed derived from its parent's, so copies diverge and a width-1 search equals plain sampling.
    """

    group_size: int = 1
    chunk_len: int | None = None
    final_scores: torch.Tensor | None = None  # [B] set by the final boundary: each row's score, best first

    def begin(self, prompt_index: list[int], prompt_ids: list[list[int]], max_new_tokens: int) -> None:
        """A new batch: ``prompt_index`` / ``prompt_ids`` per row."""

    def boundary(self, tokens: torch.Tensor, lengths: torch.Tensor, alive: torch.Tensor,
                 final: bool) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def reorder(self, src: torch.Tensor, alive: torch.Tensor) -> None:
        """Rows were reordered after a (non-final) boundary: new row r continues ``src[r]``; ``alive``
        rows keep decoding. The engine calls it with the streams' reorder (scorer caches follow)."""


def _copy_seeds(seeds: torch.Tensor, src: torch.Tensor, step: int) -> torch.Tensor:
    """Row seeds after a reorder: first copy of a source keeps its seed, others get derived ones."""
    from lpo_train.decoding.randomness import derive_seeds

    seen: dict[int, int] = {}
    copies = []
    for j in src.tolist():
        copies.append(seen.get(j, 0))
        seen[j] = copies[-1] + 1
    copy = torch.tensor(copies, device=src.device)
    parent = seeds[src]
    return torch.where(copy == 0, parent, derive_seeds(parent, step, copy))


@torch.no_grad()
def generate(model, tokenizer, prompts, rule: Rule | None = None,
             params: SamplingParams | None = None, search: RowSearch | None = None,
             stats: dict | None = None) -> list[Trace]:
    """Decode ``params.num_samples`` completions per prompt with ``rule`` (default: greedy).

    Returns traces in prompt-major order (prompt 0's samples first). Each row draws its random
    numbers from its own seed (``decoding.randomness``), so results do not depend on the batch
    size, the other prompts in the batch, or the number of processes. ``search`` reorders rows
    at chunk boundaries (beam search; then ``num_samples`` must be its group size). ``stats``, a
    dict, receives ``forward_tokens``: tokens the main model processed (prefill + decode).
    """
    rule = rule if rule is not None else FixedTemperature(0.0)
    params = params or SamplingParams()
    if not prompts:
        raise ValueError("generate() got no prompts.")
    rule.bind(tokenizer, prompts)
    encoded = encode_prompts(tokenizer, prompts, params.chat_template)
    aux = []
    for stream in rule.aux_streams():
        aux_prompts = prompts if stream.prompts is None else stream.prompts
        if len(aux_prompts) != len(prompts):
            raise ValueError(f"{rule.name} gave {len(aux_prompts)} auxiliary prompts for {len(prompts)} prompts.")
        aux_tok, aux_model = stream.tokenizer or tokenizer, stream.model or model
        what = f"auxiliary model of {rule.name}"
        check_same_vocab(tokenizer, aux_tok, what)
        if vocab_size(aux_model) != vocab_size(model):
            raise ValueError(f"The {what} has {vocab_size(aux_model)} output logits but the main model has "
                             f"{vocab_size(model)}; token-level combination needs one shared vocabulary.")
        aux.append((aux_model, encode_prompts(aux_tok, aux_prompts, stream.chat_template)))
    rows = [(i, s) for i in range(len(encoded)) for s in range(params.num_samples)]
    if params.prompt_seeds is not None and len(params.prompt_seeds) != len(prompts):
        raise ValueError(f"prompt_seeds has {len(params.prompt_seeds)} seeds for {len(prompts)} prompts.")
    row_seeds = [seed_for(params.prompt_seeds[i], s) if params.prompt_seeds is not None
                 else seed_for(params.seed, i, s) for i, s in rows]
    # one seed per prompt, shared by its samples: rules that draw the N samples' choices jointly
    group_seeds = [seed_for(params.prompt_seeds[i], "group") if params.prompt_seeds is not None
                   else seed_for(params.seed, i, "group") for i, _ in rows]
    eos_ids = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids, default=0)
    batch_size = params.batch_size
    if search is not None:
        if params.num_samples != search.group_size:
            raise ValueError(f"A search over groups of {search.group_size} rows needs num_samples = "
                             f"{search.group_size}, got {params.num_samples}.")
        batch_size = max(1, batch_size // search.group_size) * search.group_size  # whole groups
    stats = stats if stats is not None else {}
    stats.setdefault("forward_tokens", 0)
    traces: list[Trace] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        n = params.max_new_tokens
        options = (params.cache_implementation, params.compile_decode_step)
        streams = [Stream(model, [encoded[i] for i, _ in chunk], pad_id, n, *options)]
        streams += [Stream(m, [ids[i] for i, _ in chunk], pad_id, n, *options) for m, ids in aux]
        stats["forward_tokens"] += sum(len(encoded[i]) for i, _ in chunk)
        if search is not None:
            search.begin([i for i, _ in chunk], [encoded[i] for i, _ in chunk], n)
        seeds = torch.tensor(row_seeds[start:start + batch_size], device=streams[0].device)
        groups = torch.tensor(group_seeds[start:start + batch_size], device=streams[0].device)
        traces += _decode_batch(streams, tokenizer, _Chunk(chunk, [encoded[i] for i, _ in chunk], seeds, groups),
                                rule, params, eos_ids, pad_id, search, stats)
    return traces


@dataclass
class _Chunk:
    """One forward batch of rows and everything its decoding loop reads."""

    rows: list[tuple[int, int]]  # (prompt index, sample index) per row
    prompt_ids: list[list[int]]
    seeds: torch.Tensor  # [B] per-row seeds
    group_seeds: torch.Tensor  # [B] per-prompt seeds (shared by a prompt's samples)


def _reorder(rec: RowRecord, search, src: torch.Tensor, final: bool) -> None:
    """Rows after a beam-search boundary: the record and, when decoding goes on, the search's own
    scorer caches (the streams and the rule's state follow with ``_keep``)."""
    rec.reorder(src)
    if not final:
        search.reorder(src, rec.alive)


def _keep(streams, state: dict, keep: torch.Tensor) -> dict:
    """Keep only the stream rows ``keep`` (in that order): every model's cache, main and auxiliary, and the
    rule's state. With ``_reorder`` the one place rows move, whether finished rows leave or beams copy."""
    for stream in streams:
        stream.select(keep)
    return {k: v[keep] for k, v in state.items()}


def to_host(tensor: torch.Tensor) -> torch.Tensor:
    """The decoding step's one device-to-host copy (a host tensor; what follows from it stays on the host)."""
    return tensor.cpu()


def _decode_batch(streams, tokenizer, chunk: _Chunk, rule, params, eos_ids, pad_id, search, stats):
    rows, seeds = chunk.rows, chunk.seeds
    main = streams[0]
    device, batch, steps = main.device, len(rows), params.max_new_tokens
    rec = RowRecord(batch, steps, pad_id, device, main.hidden if params.trace_hidden else None,
                    1 if rule.level == "sequence" else steps, params.trace_entropy)
    truncation = params.truncation
    eos = torch.tensor(sorted(eos_ids), device=device)
    stops = StopStrings(tokenizer, params.stop_strings, vocab_size(main.model), device) if params.stop_strings else None
    sample_index = torch.tensor([row[1] for row in rows], device=device)
    prompt_index = torch.tensor([row[0] for row in rows], device=device)
    active = torch.arange(batch, device=device)  # record row of each stream row
    active_host = torch.arange(batch)  # the same, on the host
    all_seeds = seeds.clone()
    scores = None
    state = rule.init_state(batch, device)
    for step in range(steps):
        logits = main.logits
        inp = StepInput(logits=logits, hidden=main.hidden, state=state, step=step, row_seeds=seeds,
                        aux_logits=[s.logits for s in streams[1:]], truncation=truncation, rows=active)
        if step == 0:  # before any row finishes or is reordered: rows are still the chunk's rows
            inp.group_seeds, inp.sample_index = chunk.group_seeds, sample_index
        if rule.needs_history:
            inp.generated, inp.prompt_index = rec.tokens[active, :step], prompt_index[active]
        out = rule.step(inp)
        step_logits = out.logits if out.logits is not None else logits
        if rule.greedy and out.probs is None:  # an argmax, nothing else (as the one-hot draw would give)
            token = step_logits.argmax(-1)
        else:
            probs = out.probs if out.probs is not None else warp(step_logits, out.temperature, truncation)
            token = sample_from(probs, inp.uniforms(purpose=0))
        rule.observe(inp, token)

        lp = rule.choice_logps(step_logits, token, truncation) if params.trace_choice_logps else None
        rec.record(slice(None) if len(active) == batch else active,  # plain slices until a row finishes
                   step, token, out.value if out.value is not None else out.temperature,
                   inp.logits_entropy() if params.trace_entropy else None,
                   out.choice if rule.level == "token" or step == 0 else None, main.hidden, lp, out.choice_probs)

        # the step's one device-to-host copy: rows that produced EOS and rows that may have ended a stop string
        done = torch.isin(token, eos) & (not params.ignore_eos)
        flags = to_host(torch.stack([done, stops.may_end(token) & ~done]) if stops else done[None])
        done_host = flags[0].clone()
        rec.finished(active_host[done_host], "eos")
        if stops is not None and flags[1].any():
            flagged = active_host[flags[1]]
            hit = stops.hits(rec.tokens, flagged, step)
            rec.finished(flagged[hit], "stop")
            done_host[flags[1].nonzero().flatten()[hit]] = True
        last = step == steps - 1 or bool(done_host.all())
        if search is not None and (last or (search.chunk_len and (step + 1) % search.chunk_len == 0)):
            position = torch.full((batch,), -1, dtype=torch.long, device=device)
            position[active] = torch.arange(len(active), device=device)  # row -> index in the streams
            final = last
            while True:  # final: src ranks the rows (a permutation); otherwise survivors are copied
                src = search.boundary(rec.tokens, rec.lengths, rec.alive, final=final).to(device)
                _reorder(rec, search, src, final)
                if final or rec.alive.any():
                    break
                final = True  # every survivor had already finished: rank them once more and stop
            if final:
                scores = search.final_scores
                break
            all_seeds = _copy_seeds(all_seeds, src, step)
            active_host = rec.alive.cpu().nonzero().flatten()
            active = active_host.to(device)
            token, seeds = rec.tokens[active, step], all_seeds[active]
            state = _keep(streams, state, position[src[active]])
        else:
            if last:
                break
            if done_host.any():
                keep_host = (~done_host).nonzero().flatten()
                keep = keep_host.to(device)
                active, active_host, token, seeds = active[keep], active_host[keep_host], token[keep], seeds[keep]
                state = _keep(streams, state, keep)
        stats["forward_tokens"] += len(active)
        for s in streams:
            s.advance(token)
    return rec.traces(tokenizer, rows, chunk.prompt_ids, params.stop_strings, scores)
