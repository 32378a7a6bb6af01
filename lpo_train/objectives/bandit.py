"""The bandit check: does an objective's training converge to the expected-reward optimum?

Synthetic "temperature bandits": contexts x grid choices, each (context, choice) with a known reward
distribution. ``check_objective`` trains a real ``AdaptiveDecoderHead`` (sequence level; a context is a one-hot
"hidden state") through the trainer's own code path: the same exploration draw (``decoding.adaptive.explore``,
with the engine's per-prompt seeds), the same ``GroupDraw``s, the objective's own ``units`` and ``loss``, and
LPOConfig's optimizer defaults (AdamW, learning rate, warm-up, linear decay, gradient clipping). It reports the
converged head's distribution per context against the argmax of the expected rewards.

``lpo-train check-objective`` runs it from the command line on the built-in battery or on a JSON file of the
user's own reward distributions; docs/objectives.md records every objective x exploration on the battery.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from types import SimpleNamespace

import torch

from lpo_train.decoding.adaptive import exploration_probs, explore, stratified_inclusion
from lpo_train.decoding.randomness import row_uniforms, seed_for
from lpo_train.objectives.base import GroupDraw, PairBatch, SampleBatch
from lpo_train.utils.io import write_text_atomic


@dataclass
class RewardDist:
    """A discrete reward distribution: ``values`` with probabilities ``probs``."""

    values: list[float]
    probs: list[float] | None = None  # default: one value with probability 1

    def __post_init__(self):
        self.probs = [1.0] if self.probs is None and len(self.values) == 1 else self.probs
        if self.probs is None or len(self.probs) != len(self.values) or abs(sum(self.probs) - 1) > 1e-9 \
                or any(p < 0 for p in self.probs):
            raise ValueError(f"A reward distribution needs as many probabilities as values, >= 0 and summing to 1; "
                             f"got values {self.values} and probs {self.probs}.")

    @property
    def mean(self) -> float:
        return sum(v * p for v, p in zip(self.values, self.probs))


def steady(value: float) -> RewardDist:
    return RewardDist([value])


def bernoulli(p: float, high: float = 1.0, low: float = 0.0) -> RewardDist:
    return RewardDist([high, low], [p, 1 - p])


@dataclass
class BanditCase:
    """``rewards[c][k]``: the reward distribution of grid choice k in context c; ``num_generations`` = N."""

    name: str
    rewards: list[list[RewardDist]]
    num_generations: int
    note: str = ""

    def __post_init__(self):
        ks = {len(row) for row in self.rewards}
        if not self.rewards or len(ks) != 1 or min(ks) < 2:
            raise ValueError(f"bandit {self.name!r}: every context needs the same number (>= 2) of choices.")
        if self.num_generations < 2:
            raise ValueError(f"bandit {self.name!r}: num_generations must be >= 2.")

    @property
    def num_contexts(self) -> int:
        return len(self.rewards)

    @property
    def num_choices(self) -> int:
        return len(self.rewards[0])

    @property
    def means(self) -> torch.Tensor:
        return torch.tensor([[d.mean for d in row] for row in self.rewards], dtype=torch.float64)

    def sample(self, contexts: torch.Tensor, choices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """[B, N] float64 rewards for ``choices`` [B, N] in ``contexts`` [B] (inverse-CDF draws)."""
        if not hasattr(self, "_table"):
            width = max(len(d.values) for row in self.rewards for d in row)
            values = torch.zeros(self.num_contexts, self.num_choices, width, dtype=torch.float64)
            cum = torch.ones(self.num_contexts, self.num_choices, width, dtype=torch.float64)
            for c, row in enumerate(self.rewards):
                for k, d in enumerate(row):
                    values[c, k, :len(d.values)] = torch.tensor(d.values, dtype=torch.float64)
                    values[c, k, len(d.values):] = d.values[-1]
                    cum[c, k, :len(d.probs)] = torch.tensor(d.probs, dtype=torch.float64).cumsum(0)
            self._table = (values, cum)
        values, cum = self._table
        u = torch.rand(choices.shape, generator=generator, dtype=torch.float64)
        ctx = contexts[:, None].expand_as(choices)
        index = (u[..., None] >= cum[ctx, choices]).sum(-1).clamp(max=values.shape[-1] - 1)
        return values[ctx, choices].gather(-1, index[..., None]).squeeze(-1)

    @classmethod
    def from_dict(cls, spec: dict, name: str = "user") -> BanditCase:
        """From ``{"num_generations": N, "contexts": [[{"values": [...], "probs": [...]}, ...], ...]}``."""
        try:
            rewards = [[RewardDist(list(map(float, d["values"])), d.get("probs")) for d in row]
                       for row in spec["contexts"]]
            return cls(spec.get("name", name), rewards, int(spec["num_generations"]), spec.get("note", ""))
        except KeyError as e:
            raise ValueError(f"A bandit spec needs 'contexts' (per context, per choice: {{'values', 'probs'}}) and "
                             f"'num_generations'; missing {e}.") from None


def battery() -> list[BanditCase]:
    """The built-in battery: the traps that sign-based objectives fall into, and the usual shapes."""
    trap = [[steady(0.5), bernoulli(0.9), steady(0.3)]]
    return [
        BanditCase("design_trap_N=K", trap, 3, "T0 = 0.5 always, T0.6 = 1 w.p. 0.9 (mean 0.9), T1 = 0.3: under "
                   "stratified N = K, T0 is never the worst, so best-vs-worst pairs never reject it"),
        BanditCase("design_trap_N<K", trap, 2, "the design trap with N = 2 < K = 3"),
        BanditCase("design_trap_N>K", trap, 5, "the design trap with N = 5 > K = 3"),
        BanditCase("win_frequency_trap", [[steady(0.5), RewardDist([0.45, 1.5], [0.9, 0.1]), steady(0.0)]], 3,
                   "steady 0.5 beats the 0.45/1.5 choice (mean 0.555) in 90 % of pairs"),
        BanditCase("noisy_vs_steady", [[steady(0.5), RewardDist([0.0, 1.2], [0.5, 0.5]), steady(0.1)]], 3,
                   "a noisy choice of mean 0.6 against a steady 0.5: each wins half of their pairs"),
        BanditCase("near_tie", [[bernoulli(0.85), bernoulli(0.80)]], 2, "Bernoulli 0.85 vs 0.80"),
        BanditCase("grid6_N<K", [[bernoulli(p) for p in (0.3, 0.5, 0.7, 0.8, 0.6, 0.2)]], 4,
                   "a 6-value grid, Bernoulli rewards peaked at the 4th value, N = 4"),
        BanditCase("grid6_N=K", [[bernoulli(p) for p in (0.3, 0.5, 0.7, 0.8, 0.6, 0.2)]], 6,
                   "the same grid with N = 6"),
        BanditCase("two_contexts", [[bernoulli(0.8), bernoulli(0.5), bernoulli(0.2)],
                                    [bernoulli(0.2), bernoulli(0.5), bernoulli(0.8)]], 3,
                   "context 0's best is the first value, context 1's the last"),
    ]


@dataclass
class CheckResult:
    case: str
    objective: str
    exploration: str
    probs: list[list[float]]  # the converged head, per context
    optimum: list[int]  # argmax of the expected reward, per context
    means: list[list[float]]
    steps: int
    seed: int
    extra: dict = field(default_factory=dict)

    @property
    def argmax(self) -> list[int]:
        return [max(range(len(p)), key=p.__getitem__) for p in self.probs]

    @property
    def passed(self) -> bool:
        """The head's argmax (what serving uses) is the expected-reward optimum in every context."""
        return self.argmax == self.optimum

    @property
    def prob_of_optimum(self) -> list[float]:
        return [p[k] for p, k in zip(self.probs, self.optimum)]


def training_defaults(**overrides) -> SimpleNamespace:
    """LPOConfig's own defaults for the fields an objective and its optimizer read, with ``overrides``."""
    from lpo_train.trainers.lpo_config import LPOConfig

    names = ("beta", "pair_mode", "pair_top_k", "scale_rewards", "choice_reference", "exploration",
             "exploration_epsilon", "learning_rate", "warmup_steps", "max_grad_norm", "weight_decay", "adam_beta1",
             "adam_beta2", "adam_epsilon", "loss_type", "word_beta", "protocol", "latent_form")
    values = {f.name: f.default for f in fields(LPOConfig) if f.name in names and f.default is not MISSING}
    unknown = set(overrides) - set(names)
    if unknown:
        raise ValueError(f"Unknown settings for the bandit check: {sorted(unknown)} (allowed: {names}).")
    values.update(overrides)
    return SimpleNamespace(**values)


def _draws(case, args, probs, contexts, choices, rewards, group_seeds) -> list[GroupDraw]:
    """Each prompt's ``GroupDraw`` as the trainer builds it from its traces (``trainers.lpo_rollout.group_draws``)."""
    n, k = case.num_generations, case.num_choices
    stratified = args.exploration == "stratified"
    behaviour = exploration_probs(probs, args.exploration_epsilon) if args.exploration != "none" else probs
    head_logps = probs.gather(1, choices).clamp_min(1e-300).log().tolist()
    behaviour_logps = behaviour.gather(1, choices).clamp_min(1e-300).log().tolist()
    inclusion = stratified_inclusion(probs, group_seeds, n).tolist() if stratified and n < k else None
    probs_list, choices_list, rewards_list = probs.tolist(), choices.tolist(), rewards.tolist()
    return [GroupDraw(rewards=rewards_list[b], head_logps=head_logps[b], behaviour_logps=behaviour_logps[b],
                      design="stratified" if stratified else "iid", choices=choices_list[b], head_probs=probs_list[b],
                      inclusion=inclusion[b] if inclusion is not None else None,
                      tie_seed=seed_for(int(group_seeds[b]), "ties"))
            for b in range(len(contexts))]


def objective_batch(objective, units, log_probs, choices, k: int):
    """The head's scores of the units: a ``PairBatch`` or a ``SampleBatch`` (one decision per sample)."""
    ref = -math.log(k)
    if objective.unit == "pair":
        idx = torch.tensor([u.prompt_index for u in units])
        c = choices[idx, torch.tensor([u.chosen for u in units])]
        r = choices[idx, torch.tensor([u.rejected for u in units])]
        lc, lr = log_probs[idx, c], log_probs[idx, r]
        # one decision whose "response" identifies its choice: Eq. 11's marginal log-ratio is log P(k) + log K
        return PairBatch(lc, lr, torch.full_like(lc, ref), torch.full_like(lr, ref),
                         torch.tensor([u.chosen_reward for u in units]), torch.tensor([u.rejected_reward for u in units]),
                         chosen_latent=lc - ref, rejected_latent=lr - ref)
    prompt = torch.tensor([u.prompt_index for u in units for _ in u.samples])
    sample = torch.tensor([s for u in units for s in u.samples])
    logps = log_probs[prompt, choices[prompt, sample]]
    coef = torch.tensor([c for u in units for c in u.coefficients], dtype=torch.float64) \
        if units[0].coefficients is not None else None
    return SampleBatch(logps, torch.full_like(logps, ref), torch.tensor([r for u in units for r in u.rewards],
                                                                          dtype=torch.float64),
                       torch.tensor([g for g, u in enumerate(units) for _ in u.samples]), len(units), coef)


def check_objective(case: BanditCase, loss_type: str | None = None, steps: int = 400, prompts_per_step: int = 16,
                    seed: int = 0, **settings) -> CheckResult:
    """Train a fresh sequence-level head on ``case`` with ``loss_type`` (default: the trainer's default) and
    LPOConfig's defaults (``settings`` override them: exploration, beta, learning_rate, ...)."""
    from transformers import get_scheduler

    from lpo_train.heads import AdaptiveDecoderConfig, AdaptiveDecoderHead
    from lpo_train.objectives import get_objective

    args = training_defaults(**settings)
    objective = get_objective(loss_type or args.loss_type)
    objective.check_config(args)
    if objective.unit == "reference":
        raise ValueError(f"loss_type {objective.name!r} uses no reward: the bandit check does not apply.")
    torch.manual_seed(seed)
    n, k, c_count = case.num_generations, case.num_choices, case.num_contexts
    head = AdaptiveDecoderHead(AdaptiveDecoderConfig(hidden_size=c_count + 1, grid=tuple(float(i) for i in range(k))))
    one_hot = torch.eye(c_count + 1)[:c_count]
    head.set_input_statistics(one_hot)
    optimizer = torch.optim.AdamW(head.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  eps=args.adam_epsilon, weight_decay=args.weight_decay)
    warmup = math.ceil(args.warmup_steps * steps) if args.warmup_steps < 1 else int(args.warmup_steps)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=warmup, num_training_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    sample_index = torch.arange(n).repeat(prompts_per_step)
    for step in range(steps):
        contexts = torch.randint(c_count, (prompts_per_step,), generator=generator)
        with torch.no_grad():
            probs = head.log_probs(one_hot[contexts]).exp().double()
        group_seeds = torch.tensor([seed_for(seed, step, b, "group") for b in range(prompts_per_step)])
        row_seeds = torch.tensor([seed_for(seed, step, b, s) for b in range(prompts_per_step) for s in range(n)])
        choices = explore(probs.repeat_interleave(n, 0), args.exploration, args.exploration_epsilon, "sequence",
                          row_uniforms(row_seeds, 0, purpose=1), group_seeds.repeat_interleave(n), sample_index)
        choices = choices.view(prompts_per_step, n).cpu()
        rewards = case.sample(contexts, choices, generator)
        units, _ = objective.units(_draws(case, args, probs, contexts, choices, rewards, group_seeds), args)
        if not units:
            continue
        log_probs = head.log_probs(one_hot[contexts])
        per_unit, _ = objective.loss(objective_batch(objective, units, log_probs, choices, k), args)
        optimizer.zero_grad()
        (per_unit.sum() / len(units)).backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), args.max_grad_norm)
        optimizer.step()
        scheduler.step()
    with torch.no_grad():
        final = head.log_probs(one_hot).exp()
    means = case.means
    return CheckResult(case.name, objective.name, args.exploration, final.tolist(), means.argmax(-1).tolist(),
                       means.tolist(), steps, seed)


def format_results(results: list[CheckResult]) -> str:
    lines = ["| case | objective | exploration | result | P(optimum) | converged head |", "|---|---|---|---|---|---|"]
    for r in results:
        head = "; ".join("(" + ", ".join(f"{p:.2f}" for p in probs) + ")" for probs in r.probs)
        lines.append(f"| {r.case} | {r.objective} | {r.exploration} | {'pass' if r.passed else 'FAIL'} | "
                     f"{', '.join(f'{p:.2f}' for p in r.prob_of_optimum)} | {head} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``lpo-train check-objective``: train heads on bandits with known optima and say which objectives reach them
    (exit status 1 when any run misses its optimum)."""
    import argparse
    import json
    from pathlib import Path

    from lpo_train.decoding.adaptive import EXPLORATIONS
    from lpo_train.objectives import DEFAULT_OBJECTIVE, OBJECTIVES

    parser = argparse.ArgumentParser(prog="lpo-train check-objective", description=main.__doc__)
    parser.add_argument("--bandit", nargs="*", default=None, help="JSON files of reward distributions: "
                        '{"num_generations": N, "contexts": [[{"values": [...], "probs": [...]}, ...], ...]} '
                        "(default: the built-in battery)")
    parser.add_argument("--cases", nargs="*", default=None, help="built-in battery cases to run (default: all)")
    parser.add_argument("--loss_type", nargs="+", default=[DEFAULT_OBJECTIVE],
                        choices=[n for n, o in OBJECTIVES.items() if o.unit != "reference"])
    parser.add_argument("--exploration", nargs="+", default=["stratified"], choices=EXPLORATIONS)
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps (16 prompts each)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--beta", type=float, default=None, help="default: LPOConfig's")
    parser.add_argument("--scale_rewards", default=None, help="group_relative: none | group (default: LPOConfig's)")
    parser.add_argument("--pair_mode", default=None, help="the pairwise objectives: best_worst | all (default: theirs)")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.bandit:
        cases = []
        for path in args.bandit:
            try:
                spec = json.loads(Path(path).read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise ValueError(f"--bandit {path}: cannot read a JSON bandit spec ({e}).") from None
            cases.append(BanditCase.from_dict(spec, name=Path(path).stem))
    else:
        cases = [c for c in battery() if not args.cases or c.name in args.cases]
        if not cases:
            raise ValueError(f"--cases {args.cases}: no such built-in case; choose from {[c.name for c in battery()]}.")
    settings = {k: v for k, v in (("beta", args.beta), ("scale_rewards", args.scale_rewards),
                                  ("pair_mode", args.pair_mode)) if v is not None}
    results = [check_objective(case, loss, args.steps, seed=seed, exploration=exploration, **settings)
               for case in cases for loss in args.loss_type for exploration in args.exploration for seed in args.seeds]
    print(format_results(results))
    failed = [r for r in results if not r.passed]
    print(f"\n{len(results) - len(failed)} of {len(results)} runs reached the expected-reward optimum"
          + (f"; FAILED: {', '.join(f'{r.case}/{r.objective}/{r.exploration}/seed {r.seed}' for r in failed)}"
             if failed else "."))
    if args.output:
        payload = {"command": "lpo-train check-objective " + " ".join(argv if argv is not None else []),
                   "settings": settings,
                   "results": [{"case": r.case, "objective": r.objective, "exploration": r.exploration,
                                "seed": r.seed, "steps": r.steps, "passed": r.passed, "probs": r.probs,
                                "optimum": r.optimum, "means": r.means} for r in results]}
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.output, json.dumps(payload, indent=1))
    return 1 if failed else 0
