"""The sequence reward model (``lpo-train train-value reward``; best-of-N, ARGS): TRL's ``RewardTrainer`` on the
same kind of pairs as the implicit value."""

from __future__ import annotations

from lpo_train.trainers.value.data import (
    ValueDataArguments,
    pairwise_accuracy,
    prepare_output_dir,
    training_pairs,
    trl_dataset,
    write_metrics,
)


def train_reward_model(data: ValueDataArguments, args) -> dict:
    """A sequence-level reward model (TRL's ``RewardTrainer``, ``args``: a ``trl.RewardConfig``) on sampled
    pairs, for best-of-N (``chunk_guidance: reward``) and ARGS; usable anywhere a reward path is."""
    from transformers import AutoModelForSequenceClassification
    from trl import RewardTrainer

    from lpo_train.models.loading import load_causal_lm, trainable_lm
    from lpo_train.rewards import RewardModel

    prepare_output_dir(data, args)
    pairs, held = training_pairs(data)
    _, tokenizer = load_causal_lm(data.model_name_or_path)
    model = trainable_lm(data.model_name_or_path, lambda path, **kw: AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, **kw))
    model.config.pad_token_id = tokenizer.pad_token_id
    trainer = RewardTrainer(model=model, args=args, processing_class=tokenizer, train_dataset=trl_dataset(pairs))
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model()
    metrics = {"kind": "reward", "pair_mode": data.pair_mode, "train_pairs": len(pairs), "eval_responses": len(held)}
    if held:
        rm = RewardModel(trainer.model.eval(), tokenizer)
        scores = rm([r["prompt"] for r in held], [r["completion"] for r in held])
        metrics["eval_pairwise_accuracy"] = pairwise_accuracy(scores, [r["reward"] for r in held],
                                                              [r["prompt_index"] for r in held])
    write_metrics(args.output_dir, metrics)
    return metrics
