"""``LPOTrainer``: train an AdaptiveDecoder head on a frozen LM (Latent Preference Optimization and the other
objectives of ``lpo_train.objectives``). Orchestration only:

- each optimizer step, ``get_batch_samples`` runs one rollout for the step's prompts (``lpo_rollout``: sample N
  responses per prompt with the head choosing, score, group), turns it into the objective's training units with
  the traced head inputs (one generation per step, reused by the gradient-accumulation micro-steps, as in TRL's
  GRPO), and ``collate``s them (``lpo_batches``);
- ``compute_loss`` runs the head alone on those features and calls the objective: the frozen LM never runs twice;
- the offline protocol (``lpo_offline``) builds the units once; diagnostics are callbacks (``lpo_callbacks``).
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager, suppress
from pathlib import Path

import torch
from transformers import Trainer, set_seed

from lpo_train.decoding import vllm as vllm_backend
from lpo_train.decoding.adaptive import AdaptiveDecoderRule
from lpo_train.heads import AdaptiveDecoderHead
from lpo_train.models.loading import load_causal_lm
from lpo_train.objectives import get_objective
from lpo_train.rewards import resolve_rewards, reward_name
from lpo_train.trainers import lpo_batches, lpo_eval, lpo_offline, lpo_rollout
from lpo_train.trainers.lpo_callbacks import CollapseWarningCallback, CompletionsCallback, FamilyGradNormCallback
from lpo_train.trainers.lpo_config import LPOConfig
from lpo_train.trainers.lpo_io import (
    check_output_dir,
    model_card_rows,
    resolve_checkpoint,
    save_head_artifact,
    stored_features,
)
from lpo_train.trainers.lpo_joint import (
    JointHeadLM,
    check_peft_config,
    joint_optimizer,
    load_adapter_weights,
    peft_lm_for_joint,
)
from lpo_train.trainers.lpo_metrics import reduce_across_processes
from lpo_train.trainers.lpo_rollout import LPOTrainingFailed, Rollout, check_head_matches, check_prompts  # noqa: F401


class LPOTrainer(Trainer):
    """Train an AdaptiveDecoder head. ``model``: the frozen LM (a model object, path, Hub id, 'toy:small' or
    'smollm2'); ``processing_class``: its tokenizer (default: loaded with it); ``head``: a head to start from
    (default: a fresh uniform one, or ``head_name_or_path``); ``eval_dataset``: held-out prompts for ``evaluate``
    (default: ``eval_dataset_name``); ``peft_config``: a ``peft.LoraConfig`` for joint LPO (``lpo_joint``), as
    TRL's trainers take it, instead of the ``lora_*`` fields."""

    def __init__(self, model=None, reward_funcs=None, args: LPOConfig | None = None, train_dataset=None,
                 eval_dataset=None, head: AdaptiveDecoderHead | None = None, processing_class=None, callbacks=None,
                 peft_config=None):
        args = args or LPOConfig(output_dir="outputs/lpo")
        spec = model if model is not None else args.model_name_or_path
        if spec is None:
            raise ValueError("Give the frozen LM: LPOTrainer(model=...) or LPOConfig(model_name_or_path=...).")
        # everything a user can get wrong is checked before the (slow) LM load
        check_output_dir(args)
        self.lora_config = check_peft_config(peft_config, args)
        self.objective = get_objective(args.loss_type)
        likelihood = self.objective.unit == "reference"  # no reward: the head fits reference completions
        self.reward_funcs, self.reward_weights = ([], []) if likelihood and not (reward_funcs or args.reward_funcs) \
            else resolve_rewards(reward_funcs if reward_funcs is not None else args.reward_funcs, args.reward_weights)
        train_dataset = check_prompts(args.load_prompts(seed=args.seed) if train_dataset is None else train_dataset,
                                      args, likelihood)
        if eval_dataset is None and args.eval_dataset_name:
            eval_dataset = args.load_prompts(seed=args.seed, name=args.eval_dataset_name,
                                             split=args.eval_dataset_split, seed_offset=lpo_eval.EVAL_SEED_OFFSET)
        if eval_dataset is not None:  # a dataset, or TRL's dict of named ones (each evaluated as eval_<name>_...)
            eval_dataset = lpo_eval.each(eval_dataset, lambda d, name: check_prompts(d, args, False, name))
            if not self.reward_funcs:
                raise ValueError("An eval dataset is scored with the reward functions, and this run has none "
                                 "(loss_type 'likelihood' without reward_funcs): set reward_funcs, or drop "
                                 "eval_dataset / eval_dataset_name.")
        self.reference_cache: dict = {}  # likelihood: each reference's teacher-forced features, computed once
        if head is None and args.head_name_or_path:
            head = AdaptiveDecoderHead.from_pretrained(args.head_name_or_path)
        if head is not None:
            check_head_matches(head, args)
        self.lm, self.tokenizer = load_causal_lm(spec, args.lm_dtype, tokenizer=processing_class)
        if head is None:
            set_seed(args.seed)  # the head's initialisation depends on the seed only, not on the launcher
            head = AdaptiveDecoderHead.for_model(self.lm, level=args.level, knob=args.knob, grid=args.grid,
                                                 head_hidden_size=args.head_hidden_size,
                                                 num_layers=args.head_num_layers, input_norm=args.head_input_norm)
        train_dataset = lpo_rollout.with_positions(lpo_rollout.drop_long_prompts(self, train_dataset, args))
        if eval_dataset is not None:
            eval_dataset = lpo_eval.each(eval_dataset, lambda d, name: lpo_eval.prepare(self, args, d, name))
        if args.use_peft:  # Eq. 9 with a trainable LM: the Trainer optimises the head and a LoRA adapter together
            self.lm = peft_lm_for_joint(self.lm, self.lora_config, head, args.head_name_or_path)
        head.check_compatible(self.lm)
        if args.use_vllm:  # what vLLM cannot sample, named before any sampling
            vllm_backend.check_rule(AdaptiveDecoderRule(head, args.selection), "use_vllm (train)")
            vllm_backend.model_folder(self.lm)
            if args.world_size > 1 and args.vllm_mode == "colocate":
                raise ValueError(f"use_vllm with {args.world_size} processes is not supported yet in colocate mode (each "
                                 "rank would build its own engine): use vllm_mode 'server', or use_vllm false.")
        super().__init__(model=JointHeadLM(head, self.lm) if args.use_peft else head, args=args,
                         train_dataset=train_dataset, eval_dataset=eval_dataset, data_collator=lambda rows: rows,
                         callbacks=callbacks)
        self.processing_class = self.tokenizer  # TRL's attribute (after Trainer's init: see ``train``)
        self.loss_is_scaled_for_ga = True  # compute_loss already divides by the step's unit count
        self.lm.to(self.accelerator.device)
        self.word_pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None \
            else self.tokenizer.eos_token_id
        self._metrics: dict[str, list[float]] = defaultdict(list)
        self.last_completions: list[dict] = []  # the last rollout's samples (one row per response), as written
        self.completions_step = 0  # the optimizer step last_completions were sampled for
        self.grad_norms, self.completions_callback = FamilyGradNormCallback(self), CompletionsCallback(self)
        for callback in (self.grad_norms, self.completions_callback, CollapseWarningCallback(len(head.config.grid))):
            self.add_callback(callback)
        self._steps_without_pairs, self._comparisons_seen, self._steps_checked = 0, 0, 0
        if head.config.input_norm == "standardize" and not head.input_statistics_set:
            lpo_rollout.set_input_statistics(self, train_dataset)  # once, for a new head (a checkpoint restores them)
        if args.protocol == "offline":
            self.train_dataset = lpo_offline.offline_pairs(self, train_dataset)

    # --- one rollout per optimizer step ------------------------------------------------------

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not batches:
            return batches, None
        if self.args.protocol == "offline":  # batches of stored units
            features = [[stored_features(row, self.lm.dtype) for row in batch] for batch in batches]
            total = self._global_count(sum(map(len, features)))
            return [self.collate(f, total) for f in features], None
        features, counts = self.training_units([row for batch in batches for row in batch])
        self.check_progress(counts)
        total = self._global_count(len(features))
        return [self.collate(features[i::len(batches)], total) for i in range(len(batches))], None

    def rollout(self, rows: list[dict]) -> Rollout:
        """Sample N responses per prompt with the head choosing (the configured exploration), score them, and
        group them as the objectives read them (``GroupDraw``s)."""
        return lpo_rollout.rollout(self, rows)

    def training_units(self, rows: list[dict]) -> tuple[list, torch.Tensor]:
        """An online step's training units and its (comparisons, valid rewards, responses) counts: the references'
        teacher-forced features for the likelihood objective (no reward: every reference counts), else the pairs
        or groups of a fresh rollout (``comparisons``: sample pairs whose rewards differ)."""
        if self.objective.unit == "reference":
            with torch.no_grad(), self.head_for_generation() as head:  # one gather per step on every rank
                features = [lpo_rollout.reference_features(self, row, head) for row in rows]
            return features, torch.tensor([len(features)] * 3, dtype=torch.float64)
        features, _, counts = lpo_rollout.rollout_units(self, rows)
        return features, counts

    def collate(self, features: list, total_units: float) -> dict:
        """One batch of training units (``lpo_batches.collate``); ``total_units``: the step's units per process."""
        return lpo_batches.collate(self, features, total_units)

    def build_pairs_dataset(self, prompts, path: str | Path | None = None, chunk_size: int = 64):
        """The offline protocol's units dataset, sampled and scored once with the current head (``lpo_offline``)."""
        return lpo_offline.build_pairs_dataset(self, prompts, path, chunk_size)

    def _global_count(self, local: int) -> float:
        """The step's units on every process: each rank divides its loss sum by it (times the process count, since
        DDP and DeepSpeed average the ranks' gradients), so every unit weighs alike whichever rank holds it."""
        count = torch.tensor([float(local)], dtype=torch.float64, device=self.accelerator.device)
        total = float(self.accelerator.reduce(count, reduction="sum").item())
        return max(total, 1.0) / self.accelerator.num_processes

    def check_progress(self, counts: torch.Tensor) -> None:
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

    def bare_head(self) -> AdaptiveDecoderHead:
        """The head, unwrapped (from DDP / DeepSpeed, and from the joint head + LoRA module); unwrapped once per
        ``self.model`` (accelerate's unwrap costs milliseconds, and a step asks several times)."""
        cached = getattr(self, "_bare_head", None)
        if cached is None or cached[0] is not self.model:
            model = self.accelerator.unwrap_model(self.model)
            cached = self._bare_head = (self.model, model.head if isinstance(model, JointHeadLM) else model)
        return cached[1]

    @contextmanager
    def head_for_generation(self):
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

    # --- the loss, the optimizer, metrics ------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        with self.grad_norms.watch(model, inputs):  # grad_norm/<family>, read off this loss's backward
            loss = lpo_batches.compute_loss(self, model, inputs)
        return (loss, None) if return_outputs else loss

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """The head's held-out reward and choices on ``eval_dataset`` or the trainer's (``lpo_eval.evaluate``)."""
        return lpo_eval.evaluate(self, eval_dataset, metric_key_prefix)

    def _prepare_inputs(self, inputs):
        return inputs  # already on device (built in collate)

    def create_optimizer(self):
        """Joint (use_peft): the head and the LoRA adapter at their own learning rates; otherwise Trainer's."""
        if not isinstance(self.model, JointHeadLM) or self.optimizer is not None:
            return super().create_optimizer()
        self.optimizer = joint_optimizer(self)
        return self.optimizer

    @property
    def pending_metrics(self) -> dict[str, list[float]]:
        """The metric values recorded since the last ``log`` (per call, this process only): a copy."""
        return {k: list(v) for k, v in self._metrics.items()}

    def _record(self, values: dict) -> None:
        """Keep metric values locally; ``log`` reduces them over processes in one fixed set of collectives."""
        for k, v in values.items():
            self._metrics[k].append(float(v))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        logs.update(reduce_across_processes(self.accelerator, self._metrics))
        self._metrics.clear()
        super().log(logs, start_time)  # the callbacks' on_log: the completions file, the collapse warning

    # --- saving, resuming -----------------------------------------------------------------------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the head artifact (``lpo_io.save_head_artifact``), never the frozen LM."""
        self.completions_callback.writer.flush()  # a saved head comes with every completions file before it
        state = self.accelerator.get_state_dict(self.model_wrapped)  # collective: gathers ZeRO-3 shards
        if self.is_world_process_zero():
            save_head_artifact(self, output_dir or self.args.output_dir, state, write_state=not _internal_call)

    def create_model_card(self, *args, **kwargs) -> None:
        """Called by ``push_to_hub``: keep lpo-train's head card rather than Trainer's LM card."""
        if self.is_world_process_zero():
            rows = model_card_rows(self.args, self.state.log_history, [reward_name(f) for f in self.reward_funcs],
                                   self.state.global_step, self.lora_config)
            self.bare_head().generate_model_card(extra_sections=rows).save(Path(self.args.output_dir) / "README.md")

    def train(self, resume_from_checkpoint=None, **kwargs):
        """``resume_from_checkpoint``: a checkpoint folder, or True / "true" / "latest" for the latest
        ``checkpoint-*`` in ``output_dir`` (Trainer's convention)."""
        resume_from_checkpoint = resolve_checkpoint(resume_from_checkpoint, self.args.output_dir)
        # Trainer.train aligns a tokenizer's special tokens into ``model.config``, a transformers config; the
        # trained model is the head, whose config has no token ids: hidden for the call
        self.processing_class = None
        try:
            result = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        except BaseException:
            with suppress(Exception):  # the files written so far; the training error is the one to report
                self.completions_callback.writer.flush()
            raise
        finally:
            self.processing_class = self.tokenizer
        self.completions_callback.writer.flush()  # every completions file is complete when train() returns
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
