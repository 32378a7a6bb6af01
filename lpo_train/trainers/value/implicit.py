"""The implicit value (``lpo-train train-value implicit``): a small "untuned" LM samples N responses per prompt, a
gold reward labels them, ``build_preference_pairs`` makes pairs (Bradley-Terry sampled labels as in weak-to-strong
search, or deterministic best vs worst), and TRL's ``DPOTrainer`` tunes a copy of the model. tuned vs untuned then
give the implicit value beta * log pi_tuned / pi_untuned."""

from __future__ import annotations

import json
from pathlib import Path

from lpo_train.pairs import BEST_WORST
from lpo_train.trainers.value.data import (
    ValueDataArguments,
    build_preference_pairs,
    prepare_output_dir,
    training_pairs,
    trl_dataset,
    write_metrics,
)
from lpo_train.utils.io import write_text_atomic


def train_implicit_value(data: ValueDataArguments, args, peft_config=None) -> dict:
    """DPO (TRL's ``DPOTrainer``, ``args``: a ``trl.DPOConfig``) of the untuned model on sampled pairs.
    ``peft_config`` (a ``peft.LoraConfig``, e.g. ``LoraArguments.peft_config()``): the tuned model is a LoRA
    adapter over the untuned one (TRL's PEFT support; the reference is the adapter disabled), saved as an
    adapter whose ``adapter_config.json`` names the base by its portable spec."""
    from trl import DPOTrainer

    from lpo_train.models.loading import load_causal_lm, portable_name, trainable_lm

    prepare_output_dir(data, args)
    pairs, held = training_pairs(data)
    eval_pairs = build_preference_pairs(held, BEST_WORST, seed=data.dataset_seed) if held else []
    _, tokenizer = load_causal_lm(data.model_name_or_path)
    model = trainable_lm(data.model_name_or_path)
    train_ds = trl_dataset(pairs)
    trainer = DPOTrainer(model=model, args=args, train_dataset=train_ds, peft_config=peft_config,
                         eval_dataset=trl_dataset(eval_pairs) if eval_pairs else None, processing_class=tokenizer)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model()
    if peft_config is not None:  # the base by a name that works on another machine, not a local cache path
        path = Path(args.output_dir) / "adapter_config.json"
        saved = json.loads(path.read_text())
        saved["base_model_name_or_path"] = portable_name(data.model_name_or_path)
        write_text_atomic(path, json.dumps(saved, indent=2))
    metrics = {"kind": "implicit", "pair_mode": data.pair_mode, "train_pairs": len(pairs),
               "adapter": peft_config is not None,
               "eval_pairs": len(eval_pairs),
               "label_agreement_with_reward": sum(p["chosen_reward"] > p["rejected_reward"] for p in pairs) / len(pairs)}
    if not getattr(args, "precompute_ref_log_probs", False):  # TRL cannot evaluate new data after training then
        fit = trainer.evaluate(eval_dataset=train_ds.select(range(min(512, len(train_ds)))), metric_key_prefix="fit")
        # DPO's implicit reward on (up to 512) training pairs; TRL names these eval_* whatever the prefix
        metrics["train_rewards_accuracy"] = fit.get("eval_rewards/accuracies")
        metrics["train_rewards_margin"] = fit.get("eval_rewards/margins")
    if eval_pairs:
        ev = trainer.evaluate()
        metrics["eval_rewards_accuracy"] = ev.get("eval_rewards/accuracies")
        metrics["eval_rewards_margin"] = ev.get("eval_rewards/margins")
    write_metrics(args.output_dir, metrics)
    return metrics
