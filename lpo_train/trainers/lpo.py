"""``LPOTrainer``: Latent Preference Optimization of an AdaptiveDecoder head on a frozen LM.

Each optimizer step, ``get_batch_samples`` takes the step's prompt micro-batches, samples
``num_generations`` responses per prompt through the decoding engine with the head choosing
(one generation per step, reused by the gradient-accumulation micro-steps, as in TRL's GRPO),
scores them, pairs best vs worst and keeps the traced head inputs of the paired responses only.
``compute_loss`` then runs the head alone on those features: the frozen LM never runs twice.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from contextlib import contextmanager, suppress
from pathlib import Path

import torch
from transformers import Trainer, set_seed

from lpo_train.decoding import AdaptiveDecoderRule, SamplingParams, generate
from lpo_train.decoding.engine import encode_prompts
from lpo_train.decoding.randomness import seed_for
from lpo_train.heads import AdaptiveDecoderHead
from lpo_train.losses import choice_logps, latent_logratio, reference_nll, uniform_reference_logps
from lpo_train.models.loading import load_causal_lm
from lpo_train.objectives import PairBatch, SampleBatch, get_objective
from lpo_train.pairs import GroupFeatures, PairFeatures, SampleFeatures, SideFeatures, group_row
from lpo_train.rewards import PRIVATE_COLUMN, reward_name, resolve_rewards, score_traces
from lpo_train.trainers.lpo_config import LPOConfig
from lpo_train.trainers.lpo_joint import (
    JointHeadLM, load_adapter_weights, peft_lm_for_joint, save_adapter, word_batch, zero_loss,
)
from lpo_train.trainers.lpo_io import (
    CompletionsWriter, check_output_dir, check_pairs_fingerprint, fingerprint_texts, model_card_rows, pad, plot_choices,
    stored_features, unit_record, write_pairs_dataset,
)
from lpo_train.trainers.lpo_rollout import Rollout, check_head_matches, group_draws, with_positions
from lpo_train.trainers.lpo_metrics import (
    FamilyGradNorms, choice_entropy, collapse_warning, generation_metrics, pair_choice_metrics,
    reduce_across_processes,
)

logger = logging.getLogger(__name__)


class LPOTrainingFailed(RuntimeError):
    """Training learned nothing (no pairs, no valid reward): raised instead of presenting a head."""


def model_grid(trainer) -> tuple[float, ...]:
    return trainer.bare_head().config.grid


class LPOTrainer(Trainer):
    """Train an AdaptiveDecoder head with LPO. ``model``: the frozen LM (model, path, Hub id,
    'toy:small' or 'smollm2'); ``head``: a head to start from (default: a fresh uniform one)."""

    def __init__(self, model=None, reward_funcs=None, args: LPOConfig | None = None, train_dataset=None,
                 head: AdaptiveDecoderHead | None = None, processing_class=None, callbacks=None):
        args = args or LPOConfig(output_dir="outputs/lpo")
        spec = model if model is not None else args.model_name_or_path
        if spec is None:
            raise ValueError("Give the frozen LM: LPOTrainer(model=...) or LPOConfig(model_name_or_path=...).")
        # everything a user can get wrong is checked before the (slow) LM load
        check_output_dir(args)
        self.objective = get_objective(args.loss_type)
        likelihood = self.objective.unit == "reference"  # no reward: the head fits reference completions
        self.reward_funcs, self.reward_weights = ([], []) if likelihood and not (reward_funcs or args.reward_funcs) \
            else resolve_rewards(reward_funcs if reward_funcs is not None else args.reward_funcs, args.reward_weights)
        if train_dataset is None:
            train_dataset = args.load_prompts(seed=args.seed)
        if len(train_dataset) == 0:
            raise ValueError("The prompt dataset is empty.")
        if likelihood and args.reference_column not in train_dataset.column_names:
            raise ValueError(f"loss_type 'likelihood' needs a reference completion per prompt: the dataset has no "
                             f"column {args.reference_column!r} (it has {train_dataset.column_names}); set "
                             "reference_column.")
        self._references: dict = {}  # likelihood: each reference's teacher-forced features, computed once
        if "prompt" not in train_dataset.column_names:
            raise ValueError(f"The prompt dataset needs a 'prompt' column (TRL prompt-only format); "
                             f"it has {train_dataset.column_names}.")
        if head is None and args.head_name_or_path:
            head = AdaptiveDecoderHead.from_pretrained(args.head_name_or_path)
        if head is not None:
            check_head_matches(head, args)
        self.lm, tokenizer = load_causal_lm(spec, args.lm_dtype)
        self.tokenizer = processing_class or tokenizer
        if head is None:
            set_seed(args.seed)  # the head's initialisation depends on the seed only, not on the launcher
            head = AdaptiveDecoderHead.for_model(self.lm, level=args.level, knob=args.knob, grid=args.grid,
                                                 head_hidden_size=args.head_hidden_size,
                                                 num_layers=args.head_num_layers, input_norm=args.head_input_norm)
        train_dataset = with_positions(self._drop_long_prompts(train_dataset, args))
        if args.use_peft:  # Eq. 9 with a trainable LM: the Trainer optimises the head and a LoRA adapter together
            self.lm = peft_lm_for_joint(self.lm, args)
            if head.config.extra.get("adapter_in_repo"):  # a jointly trained head continues with its own adapter
                folder = Path(str(args.head_name_or_path or ""))
                if not (folder / "adapter_model.safetensors").is_file():
                    raise ValueError(f"The head {args.head_name_or_path!r} was trained jointly with a LoRA adapter, "
                                     "which is not in a local folder here: download the repo and give its folder "
                                     "as head_name_or_path, or continue the run with resume_from_checkpoint.")
                load_adapter_weights(self.lm, folder)
        head.check_compatible(self.lm)
        super().__init__(model=JointHeadLM(head, self.lm) if args.use_peft else head, args=args,
                         train_dataset=train_dataset, data_collator=lambda rows: rows, callbacks=callbacks)
        self.loss_is_scaled_for_ga = True  # compute_loss already divides by the step's pair count
        self.lm.to(self.accelerator.device)
        self.word_pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None \
            else self.tokenizer.eos_token_id
        self._metrics: dict[str, list[float]] = defaultdict(list)
        self._completions: list[dict] = []
        self._completions_step, self._completions_written = 0, None  # the step of _completions, the last written
        self._completions_writer = CompletionsWriter()
        self._steps_without_pairs, self._comparisons_seen, self._steps_checked = 0, 0, 0
        self._warned_collapse = False
        if head.config.input_norm == "standardize" and not head.input_statistics_set:
            self._set_input_statistics(train_dataset)  # once, for a new head (a resumed checkpoint restores them)
        if args.protocol == "offline":
            self.train_dataset = self._offline_pairs(train_dataset)

    def _set_input_statistics(self, dataset, max_prompts: int = 256) -> None:
        """The head's input standardisation, from the hidden states the head will see on (up to
        ``max_prompts``) training prompts: the last prompt position for a sequence-level head, the
        first generated positions too for a token-level one. The same prompts on every process."""
        from lpo_train.decoding import FixedTemperature

        prompts = dataset["prompt"][:max_prompts]
        token_level = self.args.level == "token"
        with self._head_for_generation() as head:
            traces = generate(self.lm, self.tokenizer, prompts, FixedTemperature(1.0 if token_level else 0.0),
                              SamplingParams(max_new_tokens=min(16, self.args.max_completion_length) if token_level
                                             else 1, trace_hidden=True, seed=self.args.seed,
                                             batch_size=self.args.generation_batch_size))
            head.set_input_statistics(torch.cat([t.hidden for t in traces]).float())

    def _drop_long_prompts(self, dataset, args):
        """Prompts longer than ``max_prompt_length`` are dropped once, before training, and counted;
        if none is left that is an error, not a run that silently trains on nothing."""
        lengths = [len(ids) for ids in encode_prompts(self.tokenizer, dataset["prompt"])]
        keep = [i for i, n in enumerate(lengths) if n <= args.max_prompt_length]
        if not keep:
            raise ValueError(f"Every prompt of the dataset is longer than max_prompt_length={args.max_prompt_length} "
                             f"tokens (shortest: {min(lengths)}); raise max_prompt_length or shorten the prompts.")
        if len(keep) < len(dataset):
            logger.warning("Dropped %d of %d prompts longer than max_prompt_length=%d tokens.",
                           len(dataset) - len(keep), len(dataset), args.max_prompt_length)
            dataset = dataset.select(keep)
        self.num_prompts_dropped = len(lengths) - len(keep)
        return dataset

    def _offline_pairs(self, prompts):
        """Load the units dataset at ``pairs_path``, or build it once (main process) and load it. The file records
        what produced it (``_pairs_fingerprint``): one built under other settings is an error naming them."""
        import datasets

        path = Path(self.args.pairs_path)
        if not path.exists():
            with self.accelerator.main_process_first():
                if self.accelerator.is_main_process and not path.exists():
                    self.build_pairs_dataset(prompts, path)
        check_pairs_fingerprint(path, self._pairs_fingerprint())
        return datasets.load_dataset("parquet", data_files=str(path), split="train")

    def _pairs_fingerprint(self) -> dict:
        """What an offline units file depends on: a file built under any other value is stale."""
        args, head = self.args, self.bare_head()
        return {"model": str(self.lm.config.name_or_path), "level": head.config.level, "knob": head.config.knob,
                "grid": list(head.config.grid), "loss_type": args.loss_type, "unit": self.objective.unit,
                "pair_mode": args.pair_mode, "pair_top_k": args.pair_top_k,
                "rewards": [reward_name(f) for f in self.reward_funcs], "reward_weights": list(self.reward_weights),
                "num_generations": args.num_generations, "seed": args.seed, "exploration": args.exploration,
                "exploration_epsilon": args.exploration_epsilon, **args.truncation(),
                "max_completion_length": args.max_completion_length, "dataset": args.dataset_name,
                "prompts": fingerprint_texts(str(p) for p in self.train_dataset["prompt"])}

    # --- generation, scoring, pairing (once per optimizer step) -------------------------------

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not batches:
            return batches, None
        if self.args.protocol == "offline":  # batches of stored units
            features = [[stored_features(row, self.lm.dtype) for row in batch] for batch in batches]
            total = self._global_count(sum(map(len, features)))
            return [self.collate(f, total) for f in features], None
        features, counts = self.training_units([row for batch in batches for row in batch])
        self._check_progress(counts)
        total = self._global_count(len(features))
        return [self.collate(features[i::len(batches)], total) for i in range(len(batches))], None

    def _global_count(self, local: int) -> float:
        """The step's units on every process: each rank divides its loss sum by it (times the process count, since
        DDP and DeepSpeed average the ranks' gradients), so every unit weighs alike whichever rank holds it."""
        count = torch.tensor([float(local)], dtype=torch.float64, device=self.accelerator.device)
        total = float(self.accelerator.reduce(count, reduction="sum").item())
        return max(total, 1.0) / self.accelerator.num_processes

    def training_units(self, rows: list[dict]) -> tuple[list, torch.Tensor]:
        """An online step's training units and its (comparisons, valid rewards, responses) counts: the references'
        teacher-forced features for the likelihood objective (no reward: every reference counts), else the pairs
        or groups of a fresh rollout (``comparisons``: sample pairs whose rewards differ)."""
        if self.objective.unit == "reference":
            features = [self._reference_features(row) for row in rows]
            return features, torch.tensor([len(features)] * 3, dtype=torch.float64)
        features, _, counts = self._units(rows)
        return features, counts

    def _check_progress(self, counts: torch.Tensor) -> None:
        """Stop loudly when the step had no valid reward, or when no two responses of a prompt have differed for
        ``max_steps_without_pairs`` consecutive steps (summed over processes: every rank decides alike)."""
        counts = self.accelerator.reduce(counts.to(self.accelerator.device), reduction="sum").cpu()
        pairs, valid, total = (int(x) for x in counts)
        if total and not valid:
            raise LPOTrainingFailed(
                f"Every reward of step {self.state.global_step} was None, NaN or infinite ({total} responses): the "
                f"reward functions {[reward_name(f) for f in self.reward_funcs]} score nothing on these prompts. "
                "Check that they read the dataset's columns and return numbers.")
        self._comparisons_seen, self._steps_checked = self._comparisons_seen + pairs, self._steps_checked + 1
        self._steps_without_pairs = 0 if pairs else self._steps_without_pairs + 1
        if self._steps_without_pairs >= self.args.max_steps_without_pairs:
            raise LPOTrainingFailed(
                f"No two responses of a prompt got different rewards for {self._steps_without_pairs} consecutive "
                f"optimizer steps (up to step {self.state.global_step}): every prompt's responses tied or had no valid "
                "reward, so the head cannot learn. Check the rewards (do they vary between responses?), raise "
                "num_generations, keep exploration on, or raise max_steps_without_pairs.")

    def build_pairs_dataset(self, prompts, path: str | Path | None = None, chunk_size: int = 64):
        """The paper's offline protocol: sample and score once with the current (initial) head, keep the training
        units (pairs, or groups for lpo_regression) with their traced features (and what is needed to re-score
        them), and save them as parquet when ``path`` is given. Returns a ``datasets.Dataset``."""
        import datasets
        from tqdm.auto import tqdm

        records, completions, informative = [], [], 0
        if PRIVATE_COLUMN not in prompts.column_names:
            prompts = with_positions(prompts)
        starts = range(0, len(prompts), chunk_size)
        for start in tqdm(starts, desc="offline LPO: sampling and pairing", unit="chunk",
                          disable=not self.is_world_process_zero()):
            chunk = [prompts[i] for i in range(start, min(start + chunk_size, len(prompts)))]
            _, stored, counts = self._units(chunk, keep_records=True)
            records += stored
            informative += int(counts[0])
            completions += self._completions
            logger.info("offline units: %d from %d prompts", len(records), min(start + chunk_size, len(prompts)))
        if not records or not informative:
            raise LPOTrainingFailed("No pair could be built from the prompts: every group tied or had no valid reward.")
        self._completions, self._completions_step = completions, 0  # every sample, once, as "step 0": before training
        # the pair-building's own sampling metrics, under their own names: not mixed into the first step's
        built = {f"pairs_build/{k}": v for k, v in self._metrics.items()}
        self._metrics.clear()
        self._metrics.update(built)
        dataset = datasets.Dataset.from_list(records)
        if path is not None:
            write_pairs_dataset(dataset, path, self._pairs_fingerprint())
        return dataset

    def rollout(self, rows: list[dict]) -> Rollout:
        """Sample N responses per prompt with the head choosing (the configured exploration), score them, and
        group them as the objectives read them (``GroupDraw``s)."""
        with self._head_for_generation() as head:
            traces = self._sample(rows, head) if rows else []
        rewards, per_func = score_traces(self.reward_funcs, self.reward_weights, rows, traces)
        draws = group_draws(rows, traces, rewards, per_func, self.args, [self._prompt_seed(r) for r in rows],
                            len(model_grid(self)))
        return Rollout(rows, traces, rewards, per_func, draws)

    def _units(self, rows: list[dict], keep_records: bool = False):
        """A rollout's training units as features (the traced head inputs of the responses they use), with
        ``keep_records`` a storable record per unit, and the counts (comparisons, valid rewards, rewards)."""
        run = self.rollout(rows)
        units, stats = self.objective.units(run.draws, self.args)
        n, traces = self.args.num_generations, run.traces
        if self.objective.unit == "pair":
            roles = {(u.prompt_index, u.chosen): "chosen" for u in units}
            roles.update({(u.prompt_index, u.rejected): "rejected" for u in units})
            features = [PairFeatures(self._side(traces[group_row(u.prompt_index, u.chosen, n)]),
                                     self._side(traces[group_row(u.prompt_index, u.rejected, n)]),
                                     u.chosen_reward, u.rejected_reward, rows[u.prompt_index].get("family"))
                        for u in units]
        else:
            roles = {(u.prompt_index, s): "compared" if u.coefficients is None else f"coefficient {c:+.3f}"
                     for u in units for s, c in zip(u.samples, u.coefficients or [None] * len(u.samples))}
            features = [GroupFeatures([self._side(traces[group_row(u.prompt_index, s, n)]) for s in u.samples],
                                      list(u.rewards), None if u.coefficients is None else list(u.coefficients),
                                      rows[u.prompt_index].get("family")) for u in units]
        self._log_generation(rows, traces, run.rewards, run.per_func, roles, stats)
        stored = [unit_record(rows[u.prompt_index], u, f, traces, n, self._prompt_seed(rows[u.prompt_index]))
                  for u, f in zip(units, features)] if keep_records else []
        counts = torch.tensor([stats.pairs, int((~run.rewards.isnan()).sum()), len(run.rewards)], dtype=torch.float64)
        return features, stored, counts

    @torch.no_grad()
    def _reference_features(self, row) -> SampleFeatures:
        """The likelihood objective's unit: the reference completion teacher-forced through the frozen LM once
        (cached: later epochs reuse it), keeping what the head's loss needs, as a trace does: the hidden
        states that predict each reference token (the prompt's last one for a sequence-level head) and
        log P(y_t | choice k) under every grid choice, with the call's truncations."""
        args = self.args
        reference = row[args.reference_column]
        if isinstance(reference, list):  # TRL conversational completion: the assistant's content
            reference = "".join(m["content"] for m in reference if m.get("role", "assistant") == "assistant")
        key = (str(row["prompt"]), str(reference))
        if key not in self._references:
            from lpo_train.decoding.stream import head_logits

            prompt_ids = encode_prompts(self.tokenizer, [row["prompt"]])[0]
            ref_ids = self.tokenizer(reference, add_special_tokens=False)["input_ids"][:args.max_completion_length]
            if not ref_ids:
                raise ValueError(f"An empty reference completion (column {args.reference_column!r}) for prompt "
                                 f"{str(row['prompt'])[:80]!r}: give each prompt a non-empty reference.")
            with self._head_for_generation() as head:
                device = next(self.lm.parameters()).device
                ids = torch.tensor([prompt_ids + ref_ids], device=device)
                states = self.lm.get_decoder()(input_ids=ids).last_hidden_state[0, len(prompt_ids) - 1:-1]
                logits = head_logits(self.lm.get_output_embeddings(),
                                     getattr(self.lm.config, "final_logit_softcapping", None), states)
                token_logps = AdaptiveDecoderRule(head).choice_logps(logits, ids[0, len(prompt_ids):],
                                                                     args.decoding_truncation())
            hidden = states if args.level == "token" else states[:1]
            side = SideFeatures(hidden, torch.zeros(len(hidden), dtype=torch.long), token_logps.float())
            self._references[key] = SampleFeatures(side, math.nan, 0.0, row.get("family"))
        return self._references[key]

    def bare_head(self) -> AdaptiveDecoderHead:
        """The head, unwrapped (from DDP / DeepSpeed, and from the joint head + LoRA module); unwrapped once per
        ``self.model`` (accelerate's unwrap costs milliseconds, and a step asks several times)."""
        cached = getattr(self, "_bare_head", None)
        if cached is None or cached[0] is not self.model:
            model = self.accelerator.unwrap_model(self.model)
            cached = self._bare_head = (self.model, model.head if isinstance(model, JointHeadLM) else model)
        return cached[1]

    @contextmanager
    def _head_for_generation(self):
        """The bare head. Under DeepSpeed ZeRO-3, transformers partitions the frozen LM at load
        time and the engine partitions the head: both are gathered for the duration."""
        head = self.bare_head()
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        if plugin is not None and plugin.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(head.parameters()) + list(self.lm.parameters())):
                yield head
        else:
            yield head

    def _prompt_seed(self, row) -> int:
        # seeds depend on the prompt and its dataset position, not on its rank or batch: 1 and 2 processes sample
        # alike, and a prompt that occurs twice in the dataset gets two different draws
        return seed_for(self.args.seed, self.state.global_step, str(row["prompt"]), row.get(PRIVATE_COLUMN))

    def _sample(self, rows, head):
        args = self.args
        seeds = [self._prompt_seed(r) for r in rows]
        was_training, lm_was_training = head.training, self.lm.training
        head.eval()
        self.lm.eval()  # no LoRA dropout while sampling (the Trainer puts the joint module in train mode)
        rule = AdaptiveDecoderRule(head, args.selection, exploration=args.exploration, epsilon=args.exploration_epsilon)
        # traces keep their hidden states on the device: only the paired rows' are ever copied off it
        traces = generate(self.lm, self.tokenizer, [r["prompt"] for r in rows], rule,
                          SamplingParams(max_new_tokens=args.max_completion_length, num_samples=args.num_generations,
                                         prompt_seeds=seeds, **args.engine_options(),
                                         batch_size=args.generation_batch_size, trace_hidden=True,
                                         trace_choice_logps=args.loss_type == "lpo_latent"))
        head.train(was_training)
        self.lm.train(lm_was_training)
        return traces

    def _side(self, trace) -> SideFeatures:
        choices = trace.choices if self.args.level == "token" else trace.choices[:1]
        words = (torch.tensor(trace.prompt_ids + trace.token_ids), len(trace.prompt_ids)) if self.args.use_peft \
            else ()  # the joint loss's word term teacher-forces prompt + response
        return SideFeatures(trace.hidden, torch.tensor(choices), trace.choice_logps, *words)

    def collate(self, features: list, total_units: float) -> dict:
        """One batch of training units: pairs (``PairFeatures``: chosen / rejected sides), groups
        (``GroupFeatures``: their samples flattened, ``group`` numbering each one's unit) or references
        (``SampleFeatures``). ``total_units``: the step's units per process (``_global_count``)."""
        device = self.accelerator.device
        features = sorted(features, key=lambda f: str(f.family))  # each family's rows contiguous (grad_norm/<f>)
        out = {"num_units_in_step": total_units, "num_units": len(features), "family": [f.family for f in features]}
        if not features:
            return out
        if isinstance(features[0], GroupFeatures):
            out["family"] = [f.family for f in features for _ in f.sides]
            out["group"] = torch.tensor([g for g, f in enumerate(features) for _ in f.sides], device=device)
            out["group_rewards"] = torch.tensor([r for f in features for r in f.rewards], dtype=torch.float64,
                                                device=device)
            if features[0].coefficients is not None:
                out["coefficients"] = torch.tensor([c for f in features for c in f.coefficients], dtype=torch.float64,
                                                   device=device)
            sides = {"sample": [s for f in features for s in f.sides]}
        elif isinstance(features[0], SampleFeatures):
            sides = {"sample": [f.sample for f in features]}
        else:
            sides = {side: [getattr(f, side) for f in features] for side in ("chosen", "rejected")}
            for side in sides:
                out[f"{side}_reward"] = torch.tensor([getattr(f, f"{side}_reward") for f in features],
                                                     dtype=torch.float64, device=device)
        for side, items in sides.items():
            out[f"{side}_hidden"] = pad([x.hidden for x in items]).to(device)
            out[f"{side}_choices"] = pad([x.choices for x in items], -1).to(device)
            out[f"{side}_mask"] = pad([torch.ones(len(x.hidden)) for x in items]).to(device)
            if items[0].token_logps is not None:
                out[f"{side}_token_logps"] = pad([x.token_logps for x in items], 0.0).to(device)
                out[f"{side}_token_mask"] = pad([torch.ones(len(x.token_logps)) for x in items]).to(device)
        if self.args.use_peft:  # chosen rows then rejected rows, teacher-forced in one LM forward
            out["words"] = word_batch([f.chosen for f in features] + [f.rejected for f in features],
                                      self.word_pad_id, device)
        return out

    def create_optimizer(self):
        """Joint (use_peft): one AdamW over two groups, the head at ``learning_rate`` and the LoRA adapter at
        ``lora_learning_rate``; otherwise Trainer's."""
        model = self.model
        if not isinstance(model, JointHeadLM) or self.optimizer is not None:
            return super().create_optimizer()
        optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        decay = set(self.get_decay_parameter_names(model))  # Trainer's rule: no decay on biases and norms
        groups = []
        for prefix, extra in (("head.", {}), ("lm.", {"lr": self.args.lora_learning_rate})):
            named = [(n, p) for n, p in model.named_parameters() if n.startswith(prefix) and p.requires_grad]
            for decayed in (True, False):
                params = [p for n, p in named if (n in decay) == decayed]
                if params:
                    groups.append({"params": params, "weight_decay": self.args.weight_decay if decayed else 0.0,
                                   **extra})
        self.optimizer = optimizer_cls(groups, **kwargs)
        return self.optimizer

    def _prepare_inputs(self, inputs):
        return inputs  # already on device (built in collate)

    # --- loss ------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        grads = self._family_grads()
        self._record(grads.pop())  # the previous micro-step's, its backward done
        # not under DeepSpeed (partitioned parameters) nor nn.DataParallel (replicas see slices of the rows)
        measured = (model.training and not self.is_deepspeed_enabled and self.args.n_gpu <= 1
                    and inputs["num_units"] > 0)
        scaler = getattr(self.accelerator, "scaler", None)
        with grads.watch(inputs["family"] if measured else [],
                         scaler.get_scale() if measured and scaler is not None else 1.0):
            return self._compute_loss(model, inputs, return_outputs)

    def _family_grads(self) -> FamilyGradNorms:
        """``grad_norm/<family>`` from the training backward, hooked on the current head."""
        head, current = self.bare_head(), getattr(self, "_family_grad_norms", None)
        if current is None or current.head is not head:
            if current is not None:
                current.close()
            current = self._family_grad_norms = FamilyGradNorms(head)
        return current

    def _side_logps(self, model, inputs, side, logits=None):
        logits = model(inputs[f"{side}_hidden"]) if logits is None else logits
        log_probs = torch.log_softmax(logits.float(), dim=-1)  # [P, T, K]
        return log_probs, choice_logps(log_probs, inputs[f"{side}_choices"], inputs[f"{side}_mask"])

    def _reference_logps(self, inputs, side, k: int, logps: torch.Tensor) -> torch.Tensor:
        if self.args.choice_reference == "uniform":
            return uniform_reference_logps(inputs[f"{side}_mask"], k)
        return torch.zeros_like(logps)  # the paper's literal Eq. 10: no reference term

    def _latent_ratio(self, inputs, side, log_probs) -> torch.Tensor:
        """Eq. 11's log P'(y) / P'_ref(y) of one side, the choice marginalised."""
        token_logps = inputs[f"{side}_token_logps"]
        head_lp = log_probs if self.args.level == "token" else log_probs[:, :1].expand(-1, token_logps.shape[1], -1)
        return latent_logratio(head_lp, token_logps, inputs[f"{side}_token_mask"], self.args.latent_form)

    def objective_batch(self, model, inputs):
        """The head's scores of a collated batch, as the objective's batch type (``PairBatch``/``SampleBatch``)."""
        if self.objective.unit == "group":
            log_probs, logps = self._side_logps(model, inputs, "sample")
            return SampleBatch(logps, self._reference_logps(inputs, "sample", log_probs.shape[-1], logps),
                               inputs["group_rewards"], inputs["group"], inputs["num_units"],
                               inputs.get("coefficients"))
        word, logits = {}, {}
        if self.args.use_peft:  # Eq. 9's word terms: the LM teacher-forced on both responses, adapter on and off
            (logits["chosen"], logits["rejected"]), (policy, reference) = model(
                inputs["chosen_hidden"], inputs["rejected_hidden"], words=inputs["words"])
            p, ratio = len(inputs["chosen_hidden"]), policy - reference
            word = {"chosen_word": ratio[:p], "rejected_word": ratio[p:]}
            self._record({"word_logps/chosen": policy[:p].mean().detach(),
                          "word_logps/rejected": policy[p:].mean().detach()})
        lp_c, logp_c = self._side_logps(model, inputs, "chosen", logits.get("chosen"))
        lp_r, logp_r = self._side_logps(model, inputs, "rejected", logits.get("rejected"))
        k = lp_c.shape[-1]
        latent = {}
        if self.objective.name == "lpo_latent":
            latent = {"chosen_latent": self._latent_ratio(inputs, "chosen", lp_c),
                      "rejected_latent": self._latent_ratio(inputs, "rejected", lp_r)}
        if self.args.protocol == "offline":  # the choice metrics of the stored pairs, and of the head on them
            with torch.no_grad():
                self._record(pair_choice_metrics(inputs, lp_c, lp_r, model_grid(self)))
        return PairBatch(logp_c, logp_r, self._reference_logps(inputs, "chosen", k, logp_c),
                         self._reference_logps(inputs, "rejected", k, logp_r), inputs["chosen_reward"],
                         inputs["rejected_reward"], **latent, **word)

    def _compute_loss(self, model, inputs, return_outputs=False):
        if inputs["num_units"] == 0:  # keep every rank's graph identical (DDP) when no unit was formed
            if self.args.use_peft:  # a forward through the LM too: ZeRO-3 gathers its weights collectively
                loss = zero_loss(model, self.bare_head().config.hidden_size, self.word_pad_id, self.accelerator.device)
            else:
                loss = sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0
            return (loss, None) if return_outputs else loss
        if self.objective.unit == "reference":
            return self._likelihood_loss(model, inputs, return_outputs)
        per_unit, metrics = self.objective.loss(self.objective_batch(model, inputs), self.args)
        self._record({k: v.detach() for k, v in metrics.items()})
        loss = per_unit.sum() / inputs["num_units_in_step"]
        return (loss, None) if return_outputs else loss

    def _likelihood_loss(self, model, inputs, return_outputs):
        log_probs = torch.log_softmax(model(inputs["sample_hidden"]).float(), dim=-1)
        mask = inputs["sample_token_mask"]
        # a sequence-level head's one decision (hidden [B, 1, H]) against every reference token: the sequence form
        per_ref = reference_nll(log_probs, inputs["sample_token_logps"], mask, self.args.level)
        loss = per_ref.sum() / inputs["num_units_in_step"]
        with torch.no_grad():
            self._record({"nll/reference_per_token": per_ref.sum() / mask.sum(), "num_references": float(len(per_ref))})
        return (loss, None) if return_outputs else loss

    # --- metrics, logging ----------------------------------------------------------------------

    def _record(self, values: dict) -> None:
        """Keep metric values locally; ``log`` reduces them over processes in one fixed set of collectives."""
        for k, v in values.items():
            self._metrics[k].append(float(v))

    def _log_generation(self, rows, traces, rewards, per_func, roles, stats) -> None:
        head = self.bare_head()
        grid = head.config.grid
        entropies, expected = [], []
        if traces:  # the head's own distribution (not the exploration's) at each decision, as the engine traced it
            probs = torch.cat([t.choice_probs for t in traces])
            per_decision = torch.stack([choice_entropy(probs), probs @ head.grid.to(probs.device)], -1)
            counts = torch.tensor([len(t.choice_probs) for t in traces], device=probs.device)
            owner = torch.repeat_interleave(torch.arange(len(traces), device=probs.device), counts)
            sums = per_decision.new_zeros(len(traces), 2).index_add_(0, owner, per_decision)
            entropies, expected = (sums / counts[:, None]).T.tolist()
        metrics = generation_metrics(rows, traces, rewards, per_func, stats,
                                     [reward_name(f) for f in self.reward_funcs], grid, entropies, expected,
                                     "pairs" if self.objective.unit == "pair" else "comparisons")
        self._record(metrics)
        self._warn_on_collapse(metrics, len(grid))
        self._completions_step = self.state.global_step + 1  # the optimizer step these samples are for
        self._completions = [{
            "prompt": str(rows[t.prompt_index]["prompt"]), "completion": t.text,
            "reward": reward, "choices": [grid[c] for c in (t.choices or [])],
            "family": rows[t.prompt_index].get("family"), "pair_role": roles.get((t.prompt_index, t.sample_index), ""),
        } for t, reward in zip(traces, rewards.tolist())]

    def _warn_on_collapse(self, metrics: dict, k: int) -> None:
        message = collapse_warning(metrics, k, self.state.global_step)
        if message and not self._warned_collapse:
            self._warned_collapse = True
            logger.warning(message)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        self._record(self._family_grads().pop())  # the last micro-step's (its backward is done by now)
        logs.update(reduce_across_processes(self.accelerator, self._metrics))
        self._metrics.clear()
        if self._completions and self._completions_step != self._completions_written and self.is_world_process_zero():
            # each step's samples once, labelled with their step (the offline protocol's: step 0, before training)
            self._completions_writer.write(self._completions, self.args.output_dir, self._completions_step,
                                           self.args.report_to)
            self._completions_written = self._completions_step
        super().log(logs, start_time)

    # --- saving -----------------------------------------------------------------------------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the head artifact (never the frozen LM), with a model card; with ``use_peft`` the LoRA adapter
        too, beside the head in the same folder (one card: the head's), which then loads as both."""
        output_dir = output_dir or self.args.output_dir
        self._completions_writer.flush()  # a saved head or checkpoint comes with every completions file before it
        state = self.accelerator.get_state_dict(self.model_wrapped)  # collective: gathers ZeRO-3 shards
        if self.is_world_process_zero():
            head = self.bare_head()
            head.config.base_model = head.config.base_model or self.lm.config.name_or_path
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            if self.args.use_peft:
                split = {side: {k[len(side) + 1:]: v for k, v in state.items() if k.startswith(side + ".")}
                         for side in ("head", "lm")}
                save_adapter(self.lm, split["lm"], output_dir)
                head.config.extra = {**head.config.extra, "adapter_in_repo": True}
                state = split["head"]
            else:  # a head-only artifact never sits beside another run's adapter, nor claims one
                head.config.extra.pop("adapter_in_repo", None)
                for name in ("adapter_config.json", "adapter_model.safetensors"):
                    (Path(output_dir) / name).unlink(missing_ok=True)
            head.save_pretrained(output_dir, state_dict=state,  # the gathered state (ZeRO-3 shards)
                                 model_card_kwargs={"extra_sections": self._card_rows()})
            if not _internal_call:  # a checkpoint's trainer_state.json is Trainer's, written last (its "complete" mark)
                self.state.save_to_json(str(Path(output_dir) / "trainer_state.json"))  # the log history, by the head
            plot_choices(self._completions, head.config.grid, self.args.knob, Path(output_dir))

    def create_model_card(self, *args, **kwargs) -> None:
        """Called by ``push_to_hub``: keep lpo-train's head card rather than Trainer's LM card."""
        if self.is_world_process_zero():
            head = self.bare_head()
            head.generate_model_card(extra_sections=self._card_rows()).save(Path(self.args.output_dir) / "README.md")

    def train(self, resume_from_checkpoint=None, **kwargs):
        """``resume_from_checkpoint``: a checkpoint folder, or True / "true" / "latest" for the latest
        ``checkpoint-*`` in ``output_dir`` (Trainer's convention)."""
        if isinstance(resume_from_checkpoint, str) and resume_from_checkpoint.lower() in ("true", "latest"):
            resume_from_checkpoint = True
        if resume_from_checkpoint is True:
            from transformers.trainer_utils import get_last_checkpoint

            found = get_last_checkpoint(self.args.output_dir) if Path(self.args.output_dir).is_dir() else None
            if found is None:
                raise FileNotFoundError(f"resume_from_checkpoint=true but {self.args.output_dir} holds no "
                                        "checkpoint-* folder; give a checkpoint path or train from scratch.")
            resume_from_checkpoint = found
        try:
            result = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        except BaseException:
            with suppress(Exception):  # the files written so far; the training error is the one to report
                self._completions_writer.flush()
            raise
        self._completions_writer.flush()  # every completions file is complete when train() returns
        online = self.args.protocol == "online" and self.objective.unit != "reference"
        if online and self._steps_checked and not self._comparisons_seen:
            raise LPOTrainingFailed(  # a run shorter than max_steps_without_pairs whose every group tied
                f"No two responses of a prompt got different rewards in any of the run's {self._steps_checked} "
                "steps: the head learned nothing from the rewards, so it is not presented as trained. Check the "
                "rewards (do they vary between responses?), raise num_generations or keep exploration on.")
        return result

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        from lpo_train.heads import load_head_weights

        model = self.accelerator.unwrap_model(model or self.model)
        head = model.head if isinstance(model, JointHeadLM) else model
        head.load_state_dict(load_head_weights(Path(resume_from_checkpoint) / "model.safetensors"))
        if isinstance(model, JointHeadLM):
            load_adapter_weights(model.lm, resume_from_checkpoint)

    def _card_rows(self) -> str:
        return model_card_rows(self.args, self.state.log_history, [reward_name(f) for f in self.reward_funcs],
                          self.state.global_step)
