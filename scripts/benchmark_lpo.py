"""Benchmark one LPO optimizer step against only sampling the same responses.

Not a test. Both run in one process on the same prompts, head and sampling settings,
interleaved round-robin after a warm-up; the medians are reported, and the median of each round's paired
ratio (a round's two calls sample the same responses; the next round's step samples others). An LPO step = sampling with
traces (with the default exploration, in both) + rewards + pairing + the choice metrics (head
entropies, per-family gradient norms) + head forward/backward + optimizer step; the frozen LM
never runs again, so the target is <= 1.15x the sampling time.

    python scripts/benchmark_lpo.py --model toy:small --prompts 16 --num-generations 8 --new-tokens 64
    python scripts/benchmark_lpo.py --model smollm2 --prompts 8 --num-generations 6 --new-tokens 32 --level sequence
    python scripts/benchmark_lpo.py --model smollm2 --prompts 8 --num-generations 6 --new-tokens 32 --trl-grpo
    python scripts/benchmark_lpo.py --model smollm2 --prompts 8 --num-generations 8 --new-tokens 64 --level sequence --vllm

``--joint`` (joint LPO, Eq. 9 with a LoRA on the LM) adds a third call, the joint step (sampling with the
current adapter + the LM teacher-forced on both paired responses, adapter on with gradient and off, + the
head and adapter update), beside the head-only step on the same trainer (its adapter disabled, the word
term skipped), and prints joint / head-only:

    python scripts/benchmark_lpo.py --model smollm2 --prompts 8 --num-generations 4 --new-tokens 32 --level sequence --joint

``--loss-type likelihood`` (no reward; the references of recipes/smollm2-135m/data/references.jsonl, or of
recipes/toy/data/references.jsonl with a toy model) times the step twice:
``lpo_step`` with the reference cache cleared (the first epoch: each reference teacher-forced through the LM
once) and ``lpo_step_cached`` (later epochs: the head on cached features only):

    python scripts/benchmark_lpo.py --model smollm2 --prompts 8 --num-generations 6 --new-tokens 32 --level sequence --loss-type likelihood

``--trl-grpo`` times TRL's ``GRPOTrainer`` instead, on the same model, prompts, reward, N and completion
length: it updates the LM (ours trains a head on traced features); the median of its optimizer steps
after the first is printed, to set beside the LPO step.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy:small")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--level", default="token", choices=["token", "sequence"])
    parser.add_argument("--loss-type", default="lpo")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--joint", action="store_true", help="also time the joint head + LoRA step (use_peft)")
    parser.add_argument("--trl-grpo", action="store_true", help="time TRL's GRPOTrainer step instead")
    parser.add_argument("--vllm", action="store_true", help="also time the step with use_vllm (sequence level)")
    args = parser.parse_args()
    if args.vllm and (args.level != "sequence" or args.joint or args.loss_type in ("lpo_latent", "likelihood")):
        parser.error("--vllm times the sequence-level step of a head-only objective that samples (use_vllm).")
    if args.trl_grpo:
        return trl_grpo_steps(args)
    if args.joint and args.loss_type != "lpo":
        parser.error("--joint times the lpo_joint loss beside head-only lpo: it takes no --loss-type.")

    import torch

    from lpo_train.decoding import AdaptiveDecoderRule, SamplingParams, generate
    from lpo_train.trainers import LPOConfig, LPOTrainer, lpo_rollout

    real = args.model == "smollm2"  # the SmolLM2 suite and its reward; the toy world's otherwise
    data = likelihood_data(real) if args.loss_type == "likelihood" else {"dataset_name": "smollm2_mix" if real else "toy"}
    config = LPOConfig(output_dir="/tmp/lpo_benchmark", model_name_or_path=args.model, **data,
                       toy_families=["arith", "story"],
                       toy_prompts_per_family=args.prompts, reward_funcs=["smollm2_mix" if real else "toy"],
                       level=args.level, num_generations=args.num_generations,
                       max_completion_length=args.new_tokens, per_device_train_batch_size=args.prompts,
                       loss_type="lpo_joint" if args.joint else args.loss_type, use_peft=args.joint, lora_dropout=0.0,
                       lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj"] if args.joint else None, use_cpu=True, report_to="none", save_strategy="no",
                       overwrite_output_dir=True, max_steps_without_pairs=10**6)
    likelihood = args.loss_type == "likelihood"
    trainer = LPOTrainer(args=config)
    trainer.create_optimizer_and_scheduler(num_training_steps=100)
    head, rows = trainer.bare_head(), [trainer.train_dataset[i] for i in range(args.prompts)]

    from contextlib import contextmanager

    @contextmanager
    def head_only():
        """--joint: the same trainer with its adapter off and no word term, i.e. the head-only step."""
        if not args.joint:
            yield
            return
        config.use_peft = False
        try:
            with trainer.lm.disable_adapter():
                yield
        finally:
            config.use_peft = True

    def sample_only():
        rule = AdaptiveDecoderRule(head, "sample", exploration=config.exploration, epsilon=config.exploration_epsilon)
        with head_only():
            generate(trainer.lm, trainer.tokenizer, [r["prompt"] for r in rows], rule,  # the same responses as the step
                     SamplingParams(max_new_tokens=args.new_tokens, num_samples=args.num_generations,
                                    batch_size=config.generation_batch_size,
                                    prompt_seeds=[lpo_rollout.prompt_seed(trainer, r) for r in rows]))

    last_bytes = []

    def lpo_step():
        with head_only():
            step()

    def step(cached=False):
        if likelihood and not cached:  # the first epoch: every reference teacher-forced again
            trainer.reference_cache.clear()
        features, counts = trainer.training_units(rows)  # as get_batch_samples
        trainer.check_progress(counts)
        inputs = trainer.collate(features, max(len(features), 1))
        loss = trainer.compute_loss(trainer.model, inputs)
        loss.backward()
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
        trainer.state.global_step += 1  # as Trainer does: each step's completions are new, so each log writes them
        pending = trainer.pending_metrics
        last_bytes.extend(pending.get("features/bytes_per_pair", pending.get("features/bytes_per_group", [])))
        trainer.log({})  # logging every step (the metrics' reduction, the completions file) is part of the cost
        trainer.completions_callback.writer.flush()  # the file is written off the training thread: wait for it, so its
        # cost is timed here and not in the next (sampling-only) call

    def vllm_step():
        """The same step with its rollout sampled by vLLM (use_vllm; one in-process engine, built at the warm-up)."""
        config.use_vllm = True
        try:
            step()
        finally:
            config.use_vllm = False

    calls = {"sample_only": sample_only, "lpo_step": lpo_step, **({"joint_step": step} if args.joint else {}),
             **({"lpo_step_vllm": vllm_step} if args.vllm else {}),
             **({"lpo_step_cached": lambda: step(cached=True)} if likelihood else {})}
    for call in calls.values():
        call()
    times = {k: [] for k in calls}
    for _ in range(args.repeats):
        for k, call in calls.items():
            start = time.perf_counter()
            call()
            times[k].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    spread = {k: (max(v) - min(v)) / med[k] for k, v in times.items()}
    bytes_per_pair = last_bytes[-1] if last_bytes else float("nan")
    print(f"model={args.model} level={args.level} prompts={args.prompts} N={args.num_generations} "
          f"new_tokens={args.new_tokens} loss={args.loss_type} repeats={args.repeats} (median, interleaved)")
    print("| what | seconds | spread |\n|---|---|---|")
    for k in calls:
        print(f"| {k} | {med[k]:.3f} | {spread[k]:.0%} |")
    # each round samples at its own step (seeds, hence lengths, change): the round's own ratio is paired
    paired = statistics.median(a / b for a, b in zip(times["lpo_step"], times["sample_only"]))
    print(f"LPO step / sampling only: {med['lpo_step'] / med['sample_only']:.3f}x (ratio of the medians); "
          f"{paired:.3f}x (median of the rounds' paired ratios) (traced features: {bytes_per_pair:.0f} bytes per unit: a pair, or a group for lpo_regression)")
    if args.joint:
        print(f"joint step (head + LoRA) / head-only LPO step: {med['joint_step'] / med['lpo_step']:.2f}x")
    if args.vllm:
        paired = statistics.median(a / b for a, b in zip(times["lpo_step"], times["lpo_step_vllm"]))
        print(f"LPO step, engine / vLLM sampling: {med['lpo_step'] / med['lpo_step_vllm']:.2f}x (ratio of the medians); "
              f"{paired:.2f}x (median of the rounds' paired ratios)")
    torch.set_grad_enabled(True)


def likelihood_data(real: bool) -> dict:
    """The likelihood objective's prompts + references: the shipped JSONL of the SmolLM2 suite or the toy world."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "recipes" / ("smollm2-135m" if real else "toy") / "data"
    return {"dataset_name": str(folder / "references.jsonl"), "reference_column": "completion"}


def trl_grpo_steps(args) -> None:
    """TRL's GRPOTrainer on the same setting: ``repeats + 1`` optimizer steps, the median of all but the first."""
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from lpo_train.data import load_prompt_dataset
    from lpo_train.models.loading import resolve_model_path
    from lpo_train.rewards import resolve_rewards

    real = args.model == "smollm2"
    dataset = load_prompt_dataset("smollm2_mix" if real else "toy", "train", 0, ["arith", "story"], args.prompts)
    dataset = dataset.select(range(args.prompts))
    funcs, _ = resolve_rewards(["smollm2_mix" if real else "toy"], None)
    times = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.start)

    config = GRPOConfig(output_dir="/tmp/grpo_benchmark", num_generations=args.num_generations,
                        per_device_train_batch_size=args.prompts * args.num_generations,
                        max_completion_length=args.new_tokens, max_steps=args.repeats + 1, use_cpu=True,
                        bf16=False, report_to="none", save_strategy="no", logging_steps=1, learning_rate=1e-6)
    trainer = GRPOTrainer(model=resolve_model_path(args.model), reward_funcs=funcs, args=config, train_dataset=dataset,
                          callbacks=[StepTimer()])
    trainer.train()
    print(f"TRL GRPOTrainer: model={args.model} prompts={args.prompts} N={args.num_generations} "
          f"new_tokens={args.new_tokens}: step seconds {[round(t, 2) for t in times]}; median after the first "
          f"{statistics.median(times[1:]):.2f} s")


if __name__ == "__main__":
    main()
