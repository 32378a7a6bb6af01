"""The explicit value model (``lpo-train train-value explicit``).

``ExplicitValueTrainer`` fits a value model (``guidance.value_model``: backbone + bias-free hidden x vocabulary
head, a token or a shared head) on every prefix of the sampled responses. Loss (the IVG authors never released
theirs; documented choice): ``bce`` - FUDGE-style, every prefix value is a logit for "the finished response scores
above ``label_threshold``"; or ``mse`` - every prefix value regresses onto the final reward (CD-FUDGE). Reported:
held-out pairwise accuracy of end scores (two responses to one prompt with different rewards, ranked right).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from transformers import Trainer, TrainingArguments

from lpo_train.cli_args import help_field as _help
from lpo_train.trainers.value.data import (
    ValueDataArguments,
    pairwise_accuracy,
    prepare_output_dir,
    sample_responses,
    split_by_prompt,
    write_metrics,
)

VALUE_LOSSES = ("bce", "mse")


@dataclass
class ExplicitValueConfig(TrainingArguments):
    value_loss: str = _help(f"Per-prefix loss: one of {VALUE_LOSSES} (see lpo_train.trainers.value.explicit).", "bce")
    label_threshold: float = _help("bce: a response is 'good' when its reward is above this.", 0.0)
    value_head: str = _help("'token' (FUDGE: one row per vocabulary token, values every candidate token) or "
                            "'shared' (one vector for every row: a value per prefix read off the hidden state, "
                            "learned from every position; for best-of-N / chunk-level search / IVG, not token "
                            "guidance). See lpo_train.guidance.value_model.", "token")
    freeze_backbone: bool = _help("Train the value head only, on the frozen backbone's hidden states (with "
                                  "value_head 'shared': a linear probe).", False)

    def __post_init__(self):
        from lpo_train.guidance.value_model import VALUE_HEADS

        super().__post_init__()
        if self.value_loss not in VALUE_LOSSES:
            raise ValueError(f"value_loss must be one of {VALUE_LOSSES}, got {self.value_loss!r}.")
        if self.value_head not in VALUE_HEADS:
            raise ValueError(f"value_head must be one of {VALUE_HEADS}, got {self.value_head!r}.")


def _value_features(records: list[dict]) -> list[dict]:
    return [{"input_ids": r["prompt_ids"] + r["completion_ids"], "prompt_length": len(r["prompt_ids"]),
             "reward": r["reward"], "prompt_index": r["prompt_index"]}
            for r in records if r["completion_ids"]]


class _ValueCollator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict]) -> dict:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        response = torch.zeros_like(ids, dtype=torch.bool)
        for i, f in enumerate(features):  # right padding
            n = len(f["input_ids"])
            ids[i, :n] = torch.tensor(f["input_ids"])
            mask[i, :n] = 1
            response[i, f["prompt_length"]:n] = True  # V(x, y_<=t) at every response token t
        return {"input_ids": ids, "attention_mask": mask, "response_mask": response,
                "reward": torch.tensor([float(f["reward"]) for f in features])}


class ExplicitValueTrainer(Trainer):
    """Trains a value model (token or shared head) on every prefix of scored responses (see the module docstring).

    ``train_dataset`` / ``eval_dataset``: records from ``sample_responses`` (lists of dicts). ``args`` is not
    modified: the trainer works on a copy (with ``remove_unused_columns`` off: the collator needs every column).
    """

    def __init__(self, model, args: ExplicitValueConfig, train_dataset, eval_dataset=None, processing_class=None,
                 callbacks=None):
        from lpo_train.guidance.value_model import is_value_model

        if not is_value_model(model):
            raise ValueError("ExplicitValueTrainer needs a value model; build one with "
                             "lpo_train.guidance.make_value_model(backbone).")
        args = copy.copy(args)  # the caller's config stays as it was (a shallow copy: __post_init__ not rerun)
        args.remove_unused_columns = False
        pad = processing_class.pad_token_id if processing_class is not None and processing_class.pad_token_id is not None else 0
        self.eval_records = eval_dataset
        super().__init__(model=model, args=args, train_dataset=_value_features(train_dataset),
                         eval_dataset=_value_features(eval_dataset) if eval_dataset else None,
                         data_collator=_ValueCollator(pad), processing_class=processing_class, callbacks=callbacks)
        self.loss_is_scaled_for_ga = False  # compute_loss returns a micro-batch mean: Trainer divides by GA steps

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        from lpo_train.guidance.value_model import token_values

        values = token_values(model, inputs["input_ids"], inputs["attention_mask"])
        mask = inputs["response_mask"].float()
        reward = inputs["reward"][:, None].expand_as(values)
        if self.args.value_loss == "bce":
            target = (reward > self.args.label_threshold).float()
            per_token = torch.nn.functional.binary_cross_entropy_with_logits(values, target, reduction="none")
        else:
            per_token = (values - reward) ** 2
        loss = ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()  # each response weighs the same
        return (loss, {"values": values}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        with torch.no_grad():
            loss = self.compute_loss(model, self._prepare_inputs(inputs))
        return loss.detach(), None, None

    @torch.no_grad()
    def pairwise_accuracy(self, records: list[dict] | None = None, batch_size: int = 64) -> float | None:
        """Share of (same prompt, different reward) response pairs whose end scores rank them right."""
        from lpo_train.guidance.value_model import end_scores

        feats = _value_features(records if records is not None else self.eval_records or [])
        if not feats:
            return None
        model = self.model.eval()
        collate = _ValueCollator(self.data_collator.pad_id)
        scores = []
        for start in range(0, len(feats), batch_size):
            batch = collate(feats[start:start + batch_size])
            scores += end_scores(model, batch["input_ids"].to(model.device),
                                 batch["attention_mask"].to(model.device)).tolist()
        return pairwise_accuracy(scores, [f["reward"] for f in feats], [f["prompt_index"] for f in feats])


def train_explicit_value(data: ValueDataArguments, args: ExplicitValueConfig, peft_config=None) -> dict:
    """A value model (``args``: ``ExplicitValueConfig``; token or shared head) on the sampler's scored responses. ``peft_config``:
    a LoRA backbone with the (new, zero) value head fully trained beside it (PEFT's ``modules_to_save``), merged
    into a plain value-model checkpoint when saved, so every reader loads it as before. Neither ``args`` nor
    ``peft_config`` is modified."""
    from lpo_train.guidance.value_model import freeze_to_head, make_value_model
    from lpo_train.models.loading import load_causal_lm, trainable_lm

    if args.freeze_backbone and peft_config is not None:
        raise ValueError("freeze_backbone trains the value head alone, use_peft a LoRA on the backbone beside it: "
                         "set one of them.")
    prepare_output_dir(data, args)

    _, tokenizer = load_causal_lm(data.model_name_or_path)
    if data.sampler_model:
        from lpo_train.decoding.engine import same_vocab

        if not same_vocab(tokenizer, load_causal_lm(data.sampler_model)[1]):
            raise ValueError(f"sampler_model {data.sampler_model!r} and the value model's backbone "
                             f"{data.model_name_or_path!r} use different tokenizers; the value model trains on the "
                             "sampler's token ids, so pick a sampler of the same tokenizer family.")
    records = sample_responses(data)
    train, held = split_by_prompt(records, data.eval_fraction, data.dataset_seed)
    model = make_value_model(trainable_lm(data.model_name_or_path), head=args.value_head)
    if args.freeze_backbone:
        freeze_to_head(model)
    if peft_config is not None:
        from peft import get_peft_model

        if args.deepspeed or getattr(args, "fsdp", None):
            raise ValueError("train-value explicit --use_peft merges the LoRA into the value model when it "
                             "saves, which is not supported under DeepSpeed / FSDP here; train it on one process, "
                             "or without --use_peft.")
        head_name = next(n for n, m in model.named_modules() if m is model.get_output_embeddings())
        peft_config = copy.copy(peft_config)  # the caller's LoraConfig keeps its modules_to_save
        peft_config.modules_to_save = [head_name.rsplit(".", 1)[-1]]
        model = get_peft_model(model, peft_config)
    trainer = ExplicitValueTrainer(model, args, train, held or None, processing_class=tokenizer)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    if peft_config is not None:  # one plain value-model checkpoint: backbone + merged LoRA + the trained head
        trainer.model = trainer.model_wrapped = model.merge_and_unload()
    trainer.save_model()
    metrics = {"kind": "explicit", "value_loss": args.value_loss, "value_head": args.value_head,
               "backbone": "lora" if peft_config is not None else "frozen" if args.freeze_backbone else "full",
               "lora_backbone": peft_config is not None,
               "train_responses": len(train),
               "eval_responses": len(held), "eval_pairwise_accuracy": trainer.pairwise_accuracy(held),
               "train_pairwise_accuracy": trainer.pairwise_accuracy(train[:2000])}
    trainer.log({k: v for k, v in metrics.items() if isinstance(v, float)})
    write_metrics(args.output_dir, metrics)
    return metrics
