"""LPO's diagnostics as ``TrainerCallback``s: per-family gradient norms, the completions tables, the collapse
warning. ``LPOTrainer`` installs them; each reads the trainer it was made for."""

from __future__ import annotations

import logging
import math

from transformers import TrainerCallback

from lpo_train.trainers.lpo_io import CompletionsWriter
from lpo_train.trainers.lpo_metrics import FamilyGradNorms, collapse_warning

logger = logging.getLogger(__name__)


class FamilyGradNormCallback(TrainerCallback):
    """``grad_norm/<family>`` (``FamilyGradNorms``): the trainer's ``compute_loss`` runs its forwards under
    ``watch``; before each optimizer step (every micro-step's backward done, on every rank) the norms are popped
    into the step's metrics."""

    def __init__(self, trainer):
        self.trainer, self.norms = trainer, None

    def current(self) -> FamilyGradNorms:
        """The norms hooked on the trainer's current head (re-hooked when the head is replaced)."""
        head = self.trainer.bare_head()
        if self.norms is None or self.norms.head is not head:
            if self.norms is not None:
                self.norms.close()
            self.norms = FamilyGradNorms(head)
        return self.norms

    def watch(self, model, inputs):
        trainer = self.trainer
        # not under DeepSpeed (partitioned parameters) nor nn.DataParallel (replicas see slices of the rows)
        measured = model.training and self.enabled() and inputs["num_units"] > 0
        scaler = getattr(trainer.accelerator, "scaler", None)
        return self.current().watch(inputs["family"] if measured else [],
                                    scaler.get_scale() if measured and scaler is not None else 1.0)

    def enabled(self) -> bool:
        return not self.trainer.is_deepspeed_enabled and self.trainer.args.n_gpu <= 1

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.enabled():  # every rank alike (pop's collectives)
            self.trainer._record(self.current().pop(self.trainer.accelerator))


class CompletionsCallback(TrainerCallback):
    """Each generation step's samples as ``completions/completions_<step>.parquet`` (once per step, written on a
    background thread; flushed before any save and when training ends, so a checkpoint or a returned ``train()``
    comes with every file before it)."""

    def __init__(self, trainer):
        self.trainer, self.writer, self.written = trainer, CompletionsWriter(), None

    def on_log(self, args, state, control, **kwargs):
        trainer = self.trainer
        if trainer.last_completions and trainer.completions_step != self.written and trainer.is_world_process_zero():
            self.writer.write(trainer.last_completions, args.output_dir, trainer.completions_step, args.report_to)
            self.written = trainer.completions_step

    def on_save(self, args, state, control, **kwargs):
        self.writer.flush()


class CollapseWarningCallback(TrainerCallback):
    """Warn once when the head's choice distribution has collapsed while most prompts' responses tie."""

    def __init__(self, num_choices: int):
        self.num_choices, self.warned = num_choices, False

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.warned or not logs or not math.isfinite(logs.get("choice/entropy", math.nan)) \
                or "frac_reward_zero_std" not in logs:
            return
        message = collapse_warning(logs, self.num_choices, state.global_step)
        if message:
            self.warned = True
            logger.warning(message)
