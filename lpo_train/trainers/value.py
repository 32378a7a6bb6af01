"""Companion trainers for guided decoding (``lpo-train train-value``).

- **Implicit value**: a small "untuned" LM samples N responses per prompt, a gold reward labels
  them, ``build_preference_pairs`` makes pairs (Bradley-Terry sampled labels as in weak-to-strong
  search, or deterministic best vs worst), and TRL's ``DPOTrainer`` tunes a copy of the model.
  tuned vs untuned then give the implicit value beta * log pi_tuned / pi_untuned.
- **Explicit value**: ``ExplicitValueTrainer`` fits a value model (``guidance.value_model``:
  backbone + bias-free hidden x vocabulary head, a token or a shared head) on every prefix of the sampled responses. Loss
  (the IVG authors never released theirs; documented choice): ``bce`` - FUDGE-style, every prefix
  value is a logit for "the finished response scores above ``label_threshold``"; or ``mse`` -
  every prefix value regresses onto the final reward (CD-FUDGE). Reported: held-out pairwise
  accuracy of end scores (two responses to one prompt with different rewards, ranked right).
- **Sequence reward model** (best-of-N, ARGS): TRL's ``RewardTrainer`` on the same kind of pairs.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments

from lpo_train.cli_args import help_field as _help
from lpo_train.config import LoraArguments, PromptDataArguments, SamplingArguments, default_of

PAIR_MODES = ("bradley_terry", "best_worst")
VALUE_LOSSES = ("bce", "mse")




@dataclass
class ValueDataArguments(PromptDataArguments, SamplingArguments):
    """Where the training responses come from (shared by both kinds). ``dataset_seed`` also seeds the
    sampling and the labels."""

    model_name_or_path: str | None = _help(
        "The model to train: the untuned small LM (implicit) or the value model's backbone (explicit): a path, "
        "a Hub id, 'toy:small' / 'toy:base' or 'smollm2'.", None)
    sampler_model: str | None = _help("The LM that samples the responses (default: model_name_or_path).", None)
    dataset_name: str | None = default_of(PromptDataArguments, "dataset_name", "toy")
    toy_prompts_per_family: int = default_of(PromptDataArguments, "toy_prompts_per_family", 256)
    dataset_seed: int = default_of(PromptDataArguments, "dataset_seed", 0)
    reward_funcs: list[str] = _help("Gold rewards: built-in names, 'module:function' or model paths.", None)
    reward_weights: list[float] | None = _help("One weight per reward function.", None)
    num_generations: int = default_of(SamplingArguments, "num_generations", 4)
    max_completion_length: int = default_of(SamplingArguments, "max_completion_length", 48)
    sampling_temperature: float = _help("Temperature of the sampler.", 1.0)
    pair_mode: str = _help(f"Implicit pairs: one of {PAIR_MODES}.", "bradley_terry")
    bt_scale: float = _help("Bradley-Terry labels: P(a preferred) = sigmoid(bt_scale * (r_a - r_b)).", 1.0)
    eval_fraction: float = _help("Share of prompts held out for evaluation (pairwise accuracy).", 0.1)
    overwrite_output_dir: bool = _help("Replace a trained model (or checkpoints) already in output_dir.", False)

    def __post_init__(self):
        self.toy_families = self.toy_families or ["sentiment"]
        self.reward_funcs = self.reward_funcs or (["toy"] if self.dataset_name == "toy" else [])
        if self.pair_mode not in PAIR_MODES:
            raise ValueError(f"pair_mode must be one of {PAIR_MODES}, got {self.pair_mode!r}.")
        if self.num_generations < 2:
            raise ValueError(f"num_generations must be >= 2 to build pairs, got {self.num_generations}.")
        self.check_decoding()
        if not 0 <= self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}.")


@dataclass
class ExplicitValueConfig(TrainingArguments):
    value_loss: str = _help(f"Per-prefix loss: one of {VALUE_LOSSES} (see the module docstring).", "bce")
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


def load_prompts(data: ValueDataArguments) -> list[dict]:
    return list(data.load_prompts())


def sample_responses(data: ValueDataArguments, rows: list[dict] | None = None) -> list[dict]:
    """N responses per prompt from the sampler, each with its gold reward: records with ``prompt_index``,
    ``prompt`` (as in the dataset), ``completion`` (text), ``prompt_ids``, ``completion_ids``, ``reward``."""
    from lpo_train.decoding import FixedTemperature, SamplingParams, generate
    from lpo_train.models.loading import load_causal_lm
    from lpo_train.rewards import resolve_rewards, score_traces

    rows = rows if rows is not None else load_prompts(data)
    if not rows:
        raise ValueError("The prompt dataset is empty.")
    funcs, weights = resolve_rewards(data.reward_funcs, data.reward_weights)
    model, tokenizer = load_causal_lm(data.sampler_model or data.model_name_or_path)
    traces = generate(model, tokenizer, [r["prompt"] for r in rows], FixedTemperature(data.sampling_temperature),
                      SamplingParams(max_new_tokens=data.max_completion_length, num_samples=data.num_generations,
                                     seed=data.dataset_seed, batch_size=data.generation_batch_size, **data.engine_options()))
    rewards, _ = score_traces(funcs, weights, rows, traces)
    return [{"prompt_index": t.prompt_index, "prompt": rows[t.prompt_index]["prompt"], "completion": t.text,
             "prompt_ids": t.prompt_ids, "completion_ids": t.token_ids, "reward": float(r)}
            for t, r in zip(traces, rewards.tolist()) if not math.isnan(r)]


def split_by_prompt(records: list[dict], eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    prompts = sorted({r["prompt_index"] for r in records})
    random.Random(f"split-{seed}").shuffle(prompts)
    held = set(prompts[:int(round(eval_fraction * len(prompts)))])
    return ([r for r in records if r["prompt_index"] not in held], [r for r in records if r["prompt_index"] in held])


def _as_message(completion: str, prompt) -> list[dict] | str:
    return [{"role": "assistant", "content": completion}] if isinstance(prompt, list) else completion


def build_preference_pairs(records: list[dict], mode: str = "bradley_terry", bt_scale: float = 1.0,
                           seed: int = 0) -> list[dict]:
    """TRL preference rows ``{prompt, chosen, rejected}`` (conversational when prompts are).

    ``bradley_terry``: the first two responses of each prompt; the first is chosen with probability
    sigmoid(bt_scale * (r_a - r_b)) (a coin flip on ties). ``best_worst``: highest vs lowest reward;
    prompts whose responses all tie are skipped.
    """
    if mode not in PAIR_MODES:
        raise ValueError(f"mode must be one of {PAIR_MODES}, got {mode!r}.")
    rng = random.Random(f"pairs-{seed}")
    by_prompt: dict[int, list[dict]] = {}
    for r in records:
        by_prompt.setdefault(r["prompt_index"], []).append(r)
    pairs = []
    for _, group in sorted(by_prompt.items()):
        if len(group) < 2:
            continue
        if mode == "bradley_terry":
            a, b = group[0], group[1]
            p_a = 1.0 / (1.0 + math.exp(-bt_scale * (a["reward"] - b["reward"])))
            chosen, rejected = (a, b) if rng.random() < p_a else (b, a)
        else:
            chosen, rejected = max(group, key=lambda r: r["reward"]), min(group, key=lambda r: r["reward"])
            if chosen["reward"] == rejected["reward"]:
                continue
        prompt = chosen["prompt"]
        pairs.append({"prompt": prompt, "chosen": _as_message(chosen["completion"], prompt),
                      "rejected": _as_message(rejected["completion"], prompt),
                      "chosen_reward": chosen["reward"], "rejected_reward": rejected["reward"]})
    return pairs


# --- explicit value model ------------------------------------------------------------------------


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

    ``train_dataset`` / ``eval_dataset``: records from ``sample_responses`` (lists of dicts).
    """

    def __init__(self, model, args: ExplicitValueConfig, train_dataset, eval_dataset=None, processing_class=None,
                 callbacks=None):
        from lpo_train.guidance.value_model import is_value_model

        if not is_value_model(model):
            raise ValueError("ExplicitValueTrainer needs a value model; build one with "
                             "lpo_train.guidance.make_value_model(backbone).")
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


def pairwise_accuracy(scores: list[float], rewards: list[float], groups: list) -> float | None:
    """Over all pairs within a group with different rewards: how often the higher reward has the higher
    score (score ties count 0.5). None when there is no such pair."""
    by_group: dict = {}
    for s, r, g in zip(scores, rewards, groups):
        by_group.setdefault(g, []).append((s, r))
    right, total = 0.0, 0
    for items in by_group.values():
        for i in range(len(items)):
            for j in range(i + 1, len(items)):
                (si, ri), (sj, rj) = items[i], items[j]
                if ri == rj:
                    continue
                total += 1
                right += 0.5 if si == sj else float((si > sj) == (ri > rj))
    return right / total if total else None


# --- entry points --------------------------------------------------------------------------------


def prepare_output_dir(data: ValueDataArguments, args) -> None:
    """Before any sampling: ``output_dir`` can be written, and it holds no trained model or checkpoints unless
    ``overwrite_output_dir`` (or a resume) says to replace them (then they are removed), as ``lpo-train train``
    checks."""
    from types import SimpleNamespace

    from lpo_train.errors import check_writable
    from lpo_train.trainers import lpo_io

    check_writable(args.output_dir, "output_dir")
    lpo_io.check_output_dir(SimpleNamespace(output_dir=args.output_dir, overwrite_output_dir=data.overwrite_output_dir,
                                            resume_from_checkpoint=args.resume_from_checkpoint,
                                            process_index=args.process_index))
    finished = Path(args.output_dir) / "value_metrics.json"  # any finished run, an adapter-only one too
    if finished.exists() and not (data.overwrite_output_dir or args.resume_from_checkpoint):
        raise FileExistsError(f"{args.output_dir} already holds a trained model ({finished.name}). Set "
                              "--overwrite_output_dir true to replace it, or choose another --output_dir.")
    if data.overwrite_output_dir and not args.resume_from_checkpoint and args.process_index == 0:
        finished.unlink(missing_ok=True)  # never left describing the replaced model if this run stops early


def train_explicit_value(data: ValueDataArguments, args: ExplicitValueConfig, peft_config=None) -> dict:
    """A value model (``args``: ``ExplicitValueConfig``; token or shared head) on the sampler's scored responses. ``peft_config``:
    a LoRA backbone with the (new, zero) value head fully trained beside it (PEFT's ``modules_to_save``), merged
    into a plain value-model checkpoint when saved, so every reader loads it as before."""
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
            raise ValueError("train-value --kind explicit --use_peft merges the LoRA into the value model when it "
                             "saves, which is not supported under DeepSpeed / FSDP here; train it on one process, "
                             "or without --use_peft.")
        head_name = next(n for n, m in model.named_modules() if m is model.get_output_embeddings())
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
    _write_metrics(args.output_dir, metrics)
    return metrics


def _training_pairs(data: ValueDataArguments) -> tuple[list[dict], list[dict]]:
    """Preference pairs from sampled, scored responses of the training prompts; and the held-out records."""
    train, held = split_by_prompt(sample_responses(data), data.eval_fraction, data.dataset_seed)
    pairs = build_preference_pairs(train, data.pair_mode, data.bt_scale, data.dataset_seed)
    if not pairs:
        raise ValueError("No preference pairs: every prompt's responses tied. Sample more (num_generations) or "
                         "use a reward that separates responses.")
    return pairs, held


def _trl_dataset(pairs: list[dict]):
    import datasets

    return datasets.Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])


def train_implicit_value(data: ValueDataArguments, args, peft_config=None) -> dict:
    """DPO (TRL's ``DPOTrainer``, ``args``: a ``trl.DPOConfig``) of the untuned model on sampled pairs.
    ``peft_config`` (a ``peft.LoraConfig``, e.g. ``LoraArguments.peft_config()``): the tuned model is a LoRA
    adapter over the untuned one (TRL's PEFT support; the reference is the adapter disabled), saved as an
    adapter whose ``adapter_config.json`` names the base by its portable spec."""
    from trl import DPOTrainer

    from lpo_train.models.loading import load_causal_lm, portable_name, trainable_lm

    prepare_output_dir(data, args)
    pairs, held = _training_pairs(data)
    eval_pairs = build_preference_pairs(held, "best_worst", seed=data.dataset_seed) if held else []
    _, tokenizer = load_causal_lm(data.model_name_or_path)
    model = trainable_lm(data.model_name_or_path)
    train_ds = _trl_dataset(pairs)
    trainer = DPOTrainer(model=model, args=args, train_dataset=train_ds, peft_config=peft_config,
                         eval_dataset=_trl_dataset(eval_pairs) if eval_pairs else None, processing_class=tokenizer)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model()
    if peft_config is not None:  # the base by a name that works on another machine, not a local cache path
        path = Path(args.output_dir) / "adapter_config.json"
        saved = json.loads(path.read_text())
        saved["base_model_name_or_path"] = portable_name(data.model_name_or_path)
        path.write_text(json.dumps(saved, indent=2))
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
    _write_metrics(args.output_dir, metrics)
    return metrics


def train_reward_model(data: ValueDataArguments, args) -> dict:
    """A sequence-level reward model (TRL's ``RewardTrainer``, ``args``: a ``trl.RewardConfig``) on sampled
    pairs, for best-of-N (``chunk_guidance: reward``) and ARGS; usable anywhere a reward path is."""
    from transformers import AutoModelForSequenceClassification
    from trl import RewardTrainer

    from lpo_train.models.loading import load_causal_lm, trainable_lm
    from lpo_train.rewards import RewardModel

    prepare_output_dir(data, args)
    pairs, held = _training_pairs(data)
    _, tokenizer = load_causal_lm(data.model_name_or_path)
    model = trainable_lm(data.model_name_or_path, lambda path, **kw: AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, **kw))
    model.config.pad_token_id = tokenizer.pad_token_id
    trainer = RewardTrainer(model=model, args=args, processing_class=tokenizer, train_dataset=_trl_dataset(pairs))
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model()
    metrics = {"kind": "reward", "pair_mode": data.pair_mode, "train_pairs": len(pairs), "eval_responses": len(held)}
    if held:
        rm = RewardModel(trainer.model.eval(), tokenizer)
        scores = rm([r["prompt"] for r in held], [r["completion"] for r in held])
        metrics["eval_pairwise_accuracy"] = pairwise_accuracy(scores, [r["reward"] for r in held],
                                                              [r["prompt_index"] for r in held])
    _write_metrics(args.output_dir, metrics)
    return metrics


def _write_metrics(output_dir, metrics: dict) -> None:
    path = Path(output_dir)
    path.mkdir(parents=True, exist_ok=True)
    (path / "value_metrics.json").write_text(json.dumps(metrics, indent=2))


def main(argv: list[str] | None = None) -> dict:
    """``lpo-train train-value --kind implicit|explicit|reward --config recipe.yaml [--key value ...]``."""
    from trl import DPOConfig, RewardConfig

    from lpo_train.cli_args import parse_config

    argv = [x for a in (argv or []) for x in (a.split("=", 1) if a.startswith("--kind=") else [a])]
    kind = None
    if "--kind" in argv:
        i = argv.index("--kind")
        kind = argv[i + 1] if i + 1 < len(argv) else None
        del argv[i:i + 2]
    kinds = {"implicit": (DPOConfig, train_implicit_value), "explicit": (ExplicitValueConfig, train_explicit_value),
             "reward": (RewardConfig, train_reward_model)}
    if kind is None and any(a in ("-h", "--help") for a in argv):
        kind = "explicit"  # help without a kind: show the shared data options and one kind's
        print("lpo-train train-value --kind implicit|explicit|reward [--config recipe.yaml] [--key value ...]\n"
              "  (options below: the data arguments and --kind explicit's; --kind implicit takes TRL's DPOConfig, "
              "--kind reward TRL's RewardConfig)\n")
    if kind not in kinds:
        raise SystemExit("lpo-train train-value needs --kind implicit (DPO of a small tuned model), --kind explicit "
                         "(a value model) or --kind reward (a sequence reward model, TRL's RewardTrainer).")
    config_cls, train = kinds[kind]
    classes = [ValueDataArguments, config_cls] + ([LoraArguments] if kind in ("implicit", "explicit") else [])
    data, args, *lora = parse_config(classes, argv, f"lpo-train train-value --kind {kind}",
                                     "Train a guidance model for value-guided decoding.")
    metrics = train(data, args, lora[0].peft_config()) if lora else train(data, args)
    print(json.dumps(metrics, indent=2))
    return metrics
