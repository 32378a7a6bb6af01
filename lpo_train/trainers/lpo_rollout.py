"""LPO's rollout, as data: a step's prompts sampled with the head choosing, scored, and grouped into the
``GroupDraw``s every objective reads (``lpo_train.objectives``). ``LPOTrainer.rollout`` runs it; the
trainer, the offline pair builder and the benchmarks call that."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from lpo_train.decoding import AdaptiveDecoderRule, FixedTemperature, SamplingParams, generate
from lpo_train.decoding.engine import encode_prompts
from lpo_train.decoding.vllm import sample_with
from lpo_train.pairs import GroupFeatures, PairFeatures, SampleFeatures, SideFeatures, group_row
from lpo_train.rewards import PRIVATE_COLUMN, reward_name, score_traces
from lpo_train.trainers.lpo_io import unit_record
from lpo_train.trainers.lpo_metrics import choice_entropy, generation_metrics

logger = logging.getLogger(__name__)


class LPOTrainingFailed(RuntimeError):
    """Training learned nothing (no pairs, no valid reward): raised instead of presenting a head."""

from lpo_train.decoding.adaptive import behaviour_is_iid, exploration_probs, stratified_inclusion
from lpo_train.decoding.randomness import seed_for
from lpo_train.objectives import GroupDraw
from lpo_train.pairs import group_slices


@dataclass
class Rollout:
    """``traces`` prompt-major (N per prompt), ``rewards`` [B x N] float64 (NaN = invalid), ``per_func`` the
    unweighted reward of each function, ``draws`` one ``GroupDraw`` per prompt."""

    rows: list[dict]
    traces: list
    rewards: torch.Tensor
    per_func: torch.Tensor
    draws: list[GroupDraw]


def decision_choices(trace, level: str) -> torch.Tensor:
    """The grid index of each of the trace's head decisions (one for a sequence-level head)."""
    return torch.tensor(trace.choices if level == "token" else trace.choices[:1])


def trace_logps(trace, level: str, exploration: str, epsilon: float) -> tuple[float, float]:
    """(log P_head(tau), log q(tau)) of the trace's choices: the head's distribution as the engine traced it
    (before exploration) and the distribution the choices were drawn from (``exploration_probs`` unless
    ``exploration='none'``; for a sequence-level stratified draw the design is handled by ``GroupDraw``)."""
    choices = decision_choices(trace, level)
    probs = trace.choice_probs[:len(choices)].double().cpu()
    head = probs.gather(-1, choices[:, None]).clamp_min(1e-300).log().sum().item()
    if exploration == "none":
        return head, head
    behaviour = exploration_probs(probs, epsilon).gather(-1, choices[:, None]).clamp_min(1e-300).log().sum().item()
    return head, behaviour


def group_draws(rows, traces, rewards: torch.Tensor, per_func: torch.Tensor, args, prompt_seeds: list[int],
                num_choices: int) -> list[GroupDraw]:
    """One ``GroupDraw`` per prompt. ``prompt_seeds``: the seeds the engine sampled each prompt with (its
    stratified draw's group seed and the tie-break seed derive from them)."""
    n = args.num_generations
    iid = behaviour_is_iid(args.exploration, args.level)
    secondary = group_slices(per_func[:, 1].tolist(), n) if per_func.ndim == 2 and per_func.shape[1] >= 2 else None
    draws = []
    for p, group in enumerate(group_slices(traces, n)):
        logps = [trace_logps(t, args.level, args.exploration, args.exploration_epsilon) for t in group]
        draw = GroupDraw(rewards=rewards[p * n:(p + 1) * n].tolist(), head_logps=[h for h, _ in logps],
                         behaviour_logps=[b for _, b in logps], tie_seed=seed_for(prompt_seeds[p], "ties"),
                         secondary=secondary[p] if secondary is not None else None)
        if not iid:  # a sequence-level stratified draw: N choices without replacement from the head
            probs = group[0].choice_probs[0].double().cpu()
            draw.design, draw.choices, draw.head_probs = "stratified", [t.choices[0] for t in group], probs.tolist()
            if n < num_choices:
                group_seed = torch.tensor([seed_for(prompt_seeds[p], "group")])  # as the engine's
                draw.inclusion = stratified_inclusion(probs[None], group_seed, n)[0].tolist()
        draws.append(draw)
    return draws


def finite_or_nan(values) -> list[float]:
    """Rewards as floats, anything that is not a finite number as NaN (invalid, dropped and counted)."""
    out = []
    for v in values:
        v = math.nan if v is None else float(v)
        out.append(v if math.isfinite(v) else math.nan)
    return out


def with_positions(dataset):
    """The prompt dataset with each row's position in ``PRIVATE_COLUMN`` (per-prompt seeds; rewards never see it)."""
    from lpo_train.rewards import PRIVATE_COLUMN

    if PRIVATE_COLUMN in dataset.column_names:
        dataset = dataset.remove_columns(PRIVATE_COLUMN)
    return dataset.add_column(PRIVATE_COLUMN, list(range(len(dataset))))


def check_head_matches(head, args) -> None:
    """A head continued from ``head_name_or_path`` decides the level, knob and grid; a different value set
    explicitly is an error naming both (never silently overridden). A head object given in code sets them."""
    ours = {"level": head.config.level, "knob": head.config.knob, "grid": [float(v) for v in head.config.grid]}
    for name, value in ours.items():
        asked = getattr(args, name)
        if asked is None or not args.head_name_or_path:
            setattr(args, name, value)
        elif asked != value:
            source = args.head_name_or_path or "the head given"
            raise ValueError(f"--{name} {asked} conflicts with the head being continued ({source} has {name} "
                             f"{value}): leave --{name} unset to use the head's, or train a new head without "
                             "head_name_or_path.")


# --- the trainer's rollout: prompts -> sampled, scored, grouped responses -> training units ----------

def set_input_statistics(trainer, dataset, max_prompts: int = 256) -> None:
    """The head's input standardisation, from the hidden states the head will see on (up to
    ``max_prompts``) training prompts: the last prompt position for a sequence-level head, the
    first generated positions too for a token-level one. The same prompts on every process."""
    prompts = dataset["prompt"][:max_prompts]
    token_level = trainer.args.level == "token"
    with trainer.head_for_generation() as head:
        traces = generate(trainer.lm, trainer.tokenizer, prompts, FixedTemperature(1.0 if token_level else 0.0),
                          SamplingParams(max_new_tokens=min(16, trainer.args.max_completion_length) if token_level
                                         else 1, trace_hidden=True, seed=trainer.args.seed,
                                         batch_size=trainer.args.generation_batch_size))
        head.set_input_statistics(torch.cat([t.hidden for t in traces]).float())


def drop_long_prompts(trainer, dataset, args, what: str = "train"):
    """Prompts longer than ``max_prompt_length`` are dropped once, before training, and counted (training's in
    ``num_prompts_dropped``); if none is left that is an error, not a run that silently trains on nothing.
    ``what``: which dataset, in the messages ("train" or "eval")."""
    lengths = [len(ids) for ids in encode_prompts(trainer.tokenizer, dataset["prompt"])]
    keep = [i for i, n in enumerate(lengths) if n <= args.max_prompt_length]
    if not keep:
        raise ValueError(f"Every prompt of the {what} dataset is longer than max_prompt_length={args.max_prompt_length} "
                         f"tokens (shortest: {min(lengths)}); raise max_prompt_length or shorten the prompts.")
    if len(keep) < len(dataset):
        logger.warning("Dropped %d of %d %s prompts longer than max_prompt_length=%d tokens.",
                       len(dataset) - len(keep), len(dataset), what, args.max_prompt_length)
        dataset = dataset.select(keep)
    if what == "train":
        trainer.num_prompts_dropped = len(lengths) - len(keep)
    return dataset


def rollout(trainer, rows: list[dict]) -> Rollout:
    """Sample N responses per prompt with the head choosing (the configured exploration), score them, and
    group them as the objectives read them (``GroupDraw``s)."""
    with trainer.head_for_generation() as head:
        traces = sample(trainer, rows, head) if rows else []
    rewards, per_func = score_traces(trainer.reward_funcs, trainer.reward_weights, rows, traces)
    draws = group_draws(rows, traces, rewards, per_func, trainer.args, [prompt_seed(trainer, r) for r in rows],
                        len(trainer.bare_head().config.grid))
    return Rollout(rows, traces, rewards, per_func, draws)


def rollout_units(trainer, rows: list[dict], keep_records: bool = False):
    """A rollout's training units as features (the traced head inputs of the responses they use), with
    ``keep_records`` a storable record per unit, and the counts (comparisons, valid rewards, rewards)."""
    run = rollout(trainer, rows)
    units, stats = trainer.objective.units(run.draws, trainer.args)
    n, traces = trainer.args.num_generations, run.traces
    if trainer.objective.unit == "pair":
        roles = {(u.prompt_index, u.chosen): "chosen" for u in units}
        roles.update({(u.prompt_index, u.rejected): "rejected" for u in units})
        features = [PairFeatures(side_features(trainer, traces[group_row(u.prompt_index, u.chosen, n)]),
                                 side_features(trainer, traces[group_row(u.prompt_index, u.rejected, n)]),
                                 u.chosen_reward, u.rejected_reward, rows[u.prompt_index].get("family"))
                    for u in units]
    else:
        roles = {(u.prompt_index, s): "compared" if u.coefficients is None else f"coefficient {c:+.3f}"
                 for u in units for s, c in zip(u.samples, u.coefficients or [None] * len(u.samples))}
        features = [GroupFeatures([side_features(trainer, traces[group_row(u.prompt_index, s, n)]) for s in u.samples],
                                  list(u.rewards), None if u.coefficients is None else list(u.coefficients),
                                  rows[u.prompt_index].get("family")) for u in units]
    log_generation(trainer, rows, traces, run.rewards, run.per_func, roles, stats)
    sides = [side for f in features for side in ((f.chosen, f.rejected) if isinstance(f, PairFeatures) else f.sides)]
    if sides:  # what the traced features of one unit cost (budget this at paper scale)
        unit = "pair" if trainer.objective.unit == "pair" else "group"
        trainer._record({f"features/bytes_per_{unit}": sum(x.nbytes() for x in sides) / len(features)})
    stored = [unit_record(rows[u.prompt_index], u, f, traces, n, prompt_seed(trainer, rows[u.prompt_index]))
              for u, f in zip(units, features)] if keep_records else []
    counts = torch.tensor([stats.pairs, int((~run.rewards.isnan()).sum()), len(run.rewards)], dtype=torch.float64)
    return features, stored, counts


@torch.no_grad()
def reference_features(trainer, row, head) -> SampleFeatures:
    """The likelihood objective's unit: the reference completion teacher-forced through the frozen LM once
    (cached: later epochs reuse it), keeping what the head's loss needs, as a trace does: the hidden
    states that predict each reference token (the prompt's last one for a sequence-level head) and
    log P(y_t | choice k) under every grid choice, with the call's truncations. ``head``: the bare head, inside the
    caller's one ``head_for_generation`` per step (under ZeRO-3 a collective gather: every rank enters it once
    per step whatever its cache holds, so the ranks make the same collective calls)."""
    args = trainer.args
    reference = row[args.reference_column]
    if isinstance(reference, list):  # TRL conversational completion: the assistant's content
        reference = "".join(m["content"] for m in reference if m.get("role", "assistant") == "assistant")
    key = (str(row["prompt"]), str(reference))
    if key not in trainer.reference_cache:
        from lpo_train.decoding.stream import head_logits

        prompt_ids = encode_prompts(trainer.tokenizer, [row["prompt"]])[0]
        ref_ids = trainer.tokenizer(reference, add_special_tokens=False)["input_ids"][:args.max_completion_length]
        if not ref_ids:
            raise ValueError(f"An empty reference completion (column {args.reference_column!r}) for prompt "
                             f"{str(row['prompt'])[:80]!r}: give each prompt a non-empty reference.")
        device = next(trainer.lm.parameters()).device
        ids = torch.tensor([prompt_ids + ref_ids], device=device)
        states = trainer.lm.get_decoder()(input_ids=ids).last_hidden_state[0, len(prompt_ids) - 1:-1]
        logits = head_logits(trainer.lm.get_output_embeddings(),
                             getattr(trainer.lm.config, "final_logit_softcapping", None), states)
        token_logps = AdaptiveDecoderRule(head).choice_logps(logits, ids[0, len(prompt_ids):],
                                                             args.decoding_truncation())
        hidden = states if args.level == "token" else states[:1]
        side = SideFeatures(hidden, torch.zeros(len(hidden), dtype=torch.long), token_logps.float())
        trainer.reference_cache[key] = SampleFeatures(side, math.nan, 0.0, row.get("family"))
    return trainer.reference_cache[key]


def prompt_seed(trainer, row) -> int:
    # seeds depend on the prompt and its dataset position, not on its rank or batch: 1 and 2 processes sample
    # alike, and a prompt that occurs twice in the dataset gets two different draws
    return seed_for(trainer.args.seed, trainer.state.global_step, str(row["prompt"]), row.get(PRIVATE_COLUMN))


def sample(trainer, rows, head, rule=None, seeds: list[int] | None = None, for_loss: bool = True):
    """The rows' traces, N per prompt, hidden states and the head's choice distribution traced. ``rule``: the head
    as training samples it (the configured selection and exploration) unless given; ``seeds``: one per row
    (default the training step's ``prompt_seed``); ``for_loss``: also what the objective needs beyond that
    (``lpo_latent``'s per-choice token log-probabilities)."""
    args = trainer.args
    seeds = [prompt_seed(trainer, r) for r in rows] if seeds is None else seeds
    was_training, lm_was_training = head.training, trainer.lm.training
    head.eval()
    trainer.lm.eval()  # no LoRA dropout while sampling (the Trainer puts the joint module in train mode)
    rule = rule or AdaptiveDecoderRule(head, args.selection, exploration=args.exploration,
                                       epsilon=args.exploration_epsilon)
    # traces keep their hidden states on the device: only the paired rows' are ever copied off it
    traces = sample_with(args, trainer.lm, trainer.tokenizer, [r["prompt"] for r in rows], rule,
                         SamplingParams(max_new_tokens=args.max_completion_length, num_samples=args.num_generations,
                                        prompt_seeds=seeds, **args.engine_options(),
                                        batch_size=args.generation_batch_size, trace_hidden=True,
                                        trace_choice_logps=for_loss and args.loss_type == "lpo_latent"))
    head.train(was_training)
    trainer.lm.train(lm_was_training)
    return traces


def side_features(trainer, trace) -> SideFeatures:
    choices = trace.choices if trainer.args.level == "token" else trace.choices[:1]
    words = (torch.tensor(trace.prompt_ids + trace.token_ids), len(trace.prompt_ids)) if trainer.args.use_peft \
        else ()  # the joint loss's word term teacher-forces prompt + response
    return SideFeatures(trace.hidden, torch.tensor(choices), trace.choice_logps, *words)


def head_decision_stats(head, traces) -> tuple[list[float], list[float]]:
    """Per trace, the mean over its decisions of the head's own choice distribution (not the exploration's, as the
    engine traced it): its entropy (nats) and its expected knob value."""
    if not traces:
        return [], []
    probs = torch.cat([t.choice_probs for t in traces])
    per_decision = torch.stack([choice_entropy(probs), probs @ head.grid.to(probs.device)], -1)
    counts = torch.tensor([len(t.choice_probs) for t in traces], device=probs.device)
    owner = torch.repeat_interleave(torch.arange(len(traces), device=probs.device), counts)
    sums = per_decision.new_zeros(len(traces), 2).index_add_(0, owner, per_decision)
    entropies, expected = (sums / counts[:, None]).T.tolist()
    return entropies, expected


def log_generation(trainer, rows, traces, rewards, per_func, roles, stats) -> None:
    head = trainer.bare_head()
    grid = head.config.grid
    entropies, expected = head_decision_stats(head, traces)
    metrics = generation_metrics(rows, traces, rewards, per_func, stats,
                                 [reward_name(f) for f in trainer.reward_funcs], grid, entropies, expected,
                                 "pairs" if trainer.objective.unit == "pair" else "comparisons")
    trainer._record(metrics)
    trainer.completions_step = trainer.state.global_step + 1  # the optimizer step these samples are for
    trainer.last_completions = [{
        "prompt": str(rows[t.prompt_index]["prompt"]), "completion": t.text,
        "reward": reward, "choices": [grid[c] for c in (t.choices or [])],
        "family": rows[t.prompt_index].get("family"), "pair_role": roles.get((t.prompt_index, t.sample_index), ""),
    } for t, reward in zip(traces, rewards.tolist())]


def check_prompts(dataset, args, likelihood: bool, what: str = "train"):
    """The prompt dataset LPO trains (or evaluates) on, checked before the (slow) LM load: not empty, a 'prompt'
    column, and a reference per prompt for the likelihood objective."""
    if len(dataset) == 0:
        raise ValueError(f"The {what} prompt dataset is empty.")
    if "prompt" not in dataset.column_names:
        raise ValueError(f"The {what} prompt dataset needs a 'prompt' column (TRL prompt-only format); "
                         f"it has {dataset.column_names}.")
    if likelihood and args.reference_column not in dataset.column_names:
        raise ValueError(f"loss_type 'likelihood' needs a reference completion per prompt: the dataset has no column "
                         f"{args.reference_column!r} (it has {dataset.column_names}); set reference_column.")
    return dataset
