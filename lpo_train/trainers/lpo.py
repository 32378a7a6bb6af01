"""``LPOTrainer``: Latent Preference Optimization of an AdaptiveDecoder head on a frozen LM.

Each optimizer step, ``get_batch_samples`` takes the step's prompt micro-batches, samples
``num_generations`` responses per prompt through the decoding engine with the head choosing
(one generation per step, reused by the gradient-accumulation micro-steps, as in TRL's GRPO),
scores them, pairs best vs worst and keeps the traced head inputs of the paired responses only.
``compute_loss`` then runs the head alone on those features: the frozen LM never runs twice.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import Trainer, set_seed

from lpo_train.decoding import AdaptiveDecoderRule, SamplingParams, generate
from lpo_train.decoding.engine import encode_prompts
from lpo_train.decoding.randomness import seed_for
from lpo_train.heads import AdaptiveDecoderHead, default_model_card
from lpo_train.losses import choice_logps, latent_logratio, lpo_joint_loss, lpo_latent_loss, lpo_loss, nll_chosen_loss
from lpo_train.models.loading import load_causal_lm
from lpo_train.pairs import build_pairs
from lpo_train.rewards import reward_name, resolve_rewards, score_traces
from lpo_train.trainers.lpo_config import LPOConfig


def load_prompt_dataset(args: LPOConfig):
    """The prompt dataset named by ``args.dataset_name`` (toy world, reasoning-gym, local file or Hub id)."""
    import datasets

    name = args.dataset_name
    if name is None:
        raise ValueError("No prompt dataset: set dataset_name (a .json/.jsonl/.parquet file, a Hub id, or 'toy').")
    from lpo_train.tasks.reasoning import is_reasoning_gym, make_reasoning_gym_rows

    # generated suites: held-out configs carry their own prompt seed (toy_seed, sample_seed)
    seed = next((getattr(args, k) for k in ("toy_seed", "sample_seed", "seed") if getattr(args, k, None) is not None), 0)
    if name == "toy":
        from lpo_train.tasks.toy import make_prompts

        return datasets.Dataset.from_list(make_prompts(args.toy_families, args.toy_prompts_per_family, seed=seed))
    if is_reasoning_gym(name):
        return datasets.Dataset.from_list(make_reasoning_gym_rows(name, seed))
    suffix = Path(name).suffix.lower()
    if suffix in (".json", ".jsonl", ".parquet"):
        if not Path(name).exists():
            raise FileNotFoundError(f"Prompt file {name} does not exist.")
        return datasets.load_dataset("parquet" if suffix == ".parquet" else "json", data_files=name, split="train")
    return datasets.load_dataset(name, split=args.dataset_split)


def _stored_features(row: dict, dtype: torch.dtype) -> tuple:
    """A stored pair (see ``LPOTrainer.build_pairs_dataset``) back in the loss's feature format."""
    sides = []
    for side in ("chosen", "rejected"):
        logps = row.get(f"{side}_token_logps")
        sides.append((torch.tensor(row[f"{side}_hidden"], dtype=dtype), torch.tensor(row[f"{side}_choices"]),
                      None if logps is None else torch.tensor(logps, dtype=torch.float32)))
    return (*sides, row["chosen_reward"], row["rejected_reward"])


def _pad(tensors: list[torch.Tensor], value: float = 0.0) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence(tensors, batch_first=True, padding_value=value)


class LPOTrainer(Trainer):
    """Train an AdaptiveDecoder head with LPO. ``model``: the frozen LM (model, path, Hub id,
    'toy:small' or 'smollm2'); ``head``: a head to start from (default: a fresh uniform one)."""

    def __init__(self, model=None, reward_funcs=None, args: LPOConfig | None = None, train_dataset=None,
                 head: AdaptiveDecoderHead | None = None, processing_class=None, callbacks=None):
        args = args or LPOConfig(output_dir="outputs/lpo")
        spec = model if model is not None else args.model_name_or_path
        if spec is None:
            raise ValueError("Give the frozen LM: LPOTrainer(model=...) or LPOConfig(model_name_or_path=...).")
        self.lm, tokenizer = load_causal_lm(spec, args.lm_dtype)
        self.tokenizer = processing_class or tokenizer
        if head is None and args.head_name_or_path:
            head = AdaptiveDecoderHead.from_pretrained(args.head_name_or_path)
        if head is None:
            set_seed(args.seed)  # the head's initialisation depends on the seed only, not on the launcher
            head = AdaptiveDecoderHead.for_model(self.lm, level=args.level, knob=args.knob, grid=args.grid,
                                                 head_hidden_size=args.head_hidden_size,
                                                 num_layers=args.head_num_layers)
        head.check_compatible(self.lm)
        self.reward_funcs, self.reward_weights = resolve_rewards(
            reward_funcs if reward_funcs is not None else args.reward_funcs, args.reward_weights)
        train_dataset = train_dataset if train_dataset is not None else load_prompt_dataset(args)
        if len(train_dataset) == 0:
            raise ValueError("The prompt dataset is empty.")
        if "prompt" not in train_dataset.column_names:
            raise ValueError(f"The prompt dataset needs a 'prompt' column (TRL prompt-only format); "
                             f"it has {train_dataset.column_names}.")
        super().__init__(model=head, args=args, train_dataset=train_dataset, data_collator=lambda rows: rows,
                         callbacks=callbacks)
        self.loss_is_scaled_for_ga = True  # compute_loss already divides by the step's pair count
        self.lm.to(self.accelerator.device)
        self._metrics: dict[str, list[float]] = defaultdict(list)
        self._completions: list[dict] = []
        if args.protocol == "offline":
            self.train_dataset = self._offline_pairs(train_dataset)

    def _offline_pairs(self, prompts):
        """Load the pairs dataset at ``pairs_path``, or build it once (main process) and load it."""
        import datasets

        path = Path(self.args.pairs_path)
        if not path.exists():
            with self.accelerator.main_process_first():
                if self.accelerator.is_main_process and not path.exists():
                    self.build_pairs_dataset(prompts, path)
        pairs = datasets.load_dataset("parquet", data_files=str(path), split="train")
        missing = {"chosen_hidden", "rejected_hidden", "chosen_choices", "rejected_choices"} - set(pairs.column_names)
        if missing:
            raise ValueError(f"{path} is not an lpo-train pairs dataset (missing {sorted(missing)}).")
        if self.args.loss_type == "lpo_latent" and pairs[0]["chosen_token_logps"] is None:
            raise ValueError(f"{path} was built without per-choice token log-probs; rebuild it with "
                             "loss_type=lpo_latent (delete the file).")
        return pairs

    # --- generation, scoring, pairing (once per optimizer step) -------------------------------

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not batches:
            return batches, None
        if self.args.protocol == "offline":  # batches of stored pairs
            features = [[_stored_features(row, self.lm.dtype) for row in batch] for batch in batches]
            total = max(sum(map(len, features)), 1)
            return [self._collate(f, total) for f in features], None
        rows = [row for batch in batches for row in batch]
        features, _ = self._make_pairs(rows)
        total = max(len(features), 1)
        return [self._collate(features[i::len(batches)], total) for i in range(len(batches))], None

    def build_pairs_dataset(self, prompts, path: str | Path | None = None, chunk_size: int = 64):
        """The paper's offline protocol: sample and score once with the current (initial) head,
        keep the pairs with their traced features (and what is needed to re-score them), and
        save them as parquet when ``path`` is given. Returns a ``datasets.Dataset``."""
        import datasets

        records = []
        for start in range(0, len(prompts), chunk_size):
            chunk = [prompts[i] for i in range(start, min(start + chunk_size, len(prompts)))]
            _, stored = self._make_pairs(chunk, keep_records=True)
            records += stored
        if not records:
            raise ValueError("No pair could be built from the prompts: every group tied or had no valid reward.")
        dataset = datasets.Dataset.from_list(records)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(str(path) + ".partial")
            dataset.to_parquet(str(tmp))
            tmp.rename(path)  # a half-written file is never taken for a finished pairs dataset
        return dataset

    def _filter_long_prompts(self, rows: list[dict]) -> list[dict]:
        lengths = [len(ids) for ids in encode_prompts(self.tokenizer, [r["prompt"] for r in rows])]
        kept = [r for r, n in zip(rows, lengths) if n <= self.args.max_prompt_length]
        self._metrics["prompts_skipped_too_long"].append(float(len(rows) - len(kept)))
        return kept

    def _make_pairs(self, rows: list[dict], keep_records: bool = False) -> tuple[list[tuple], list[dict]]:
        """Sample N responses per prompt, score, pair. Returns the pairs' features for the loss
        and, with ``keep_records``, per pair a storable record (prompt, seed, texts, choices,
        rewards, features)."""
        args, n = self.args, self.args.num_generations
        rows = self._filter_long_prompts(rows)
        with self._head_for_generation() as head:
            traces = self._sample(rows, head) if rows else []
        rewards, per_func = score_traces(self.reward_funcs, self.reward_weights, rows, traces)
        groups = [rewards[i * n:(i + 1) * n].tolist() for i in range(len(rows))]
        secondary = None
        if args.pair_mode == "constrained":
            if per_func.shape[1] < 2:
                raise ValueError("pair_mode 'constrained' needs two reward functions: the ranking reward and the "
                                 "secondary criterion (e.g. the constraint).")
            secondary = [per_func[i * n:(i + 1) * n, 1].tolist() for i in range(len(rows))]
        pairs, stats = build_pairs(groups, args.pair_mode, secondary=secondary, top_k=args.pair_top_k)
        self._log_generation(rows, traces, rewards, per_func, pairs, stats)
        features = [self._pair_features(traces[p.prompt_index * n + p.chosen], traces[p.prompt_index * n + p.rejected])
                    + (p.chosen_reward, p.rejected_reward) for p in pairs]
        if features:  # what the traced features of one pair cost (budget this at paper scale)
            nbytes = sum(x.numel() * x.element_size() for f in features for side in f[:2] for x in side
                         if x is not None)
            self._record({"features/bytes_per_pair": nbytes / len(features)})
        stored = []
        if keep_records:
            for p, f in zip(pairs, features):
                row = rows[p.prompt_index]
                record = {"prompt": json.dumps(row["prompt"]), "family": row.get("family"),
                          "seed": self._prompt_seed(row), "num_generations": n,
                          "chosen_index": p.chosen, "rejected_index": p.rejected,
                          "chosen_reward": p.chosen_reward, "rejected_reward": p.rejected_reward}
                for side, (hidden, choices, logps) in zip(("chosen", "rejected"), f[:2]):
                    trace = traces[p.prompt_index * n + (p.chosen if side == "chosen" else p.rejected)]
                    record[f"{side}_text"] = trace.text
                    record[f"{side}_hidden"] = hidden.float().tolist()
                    record[f"{side}_choices"] = choices.tolist()
                    record[f"{side}_token_logps"] = None if logps is None else logps.tolist()
                stored.append(record)
        return features, stored

    @contextmanager
    def _head_for_generation(self):
        """The bare head. Under DeepSpeed ZeRO-3, transformers partitions the frozen LM at load
        time and the engine partitions the head: both are gathered for the duration."""
        head = self.accelerator.unwrap_model(self.model)
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        if plugin is not None and plugin.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(head.parameters()) + list(self.lm.parameters())):
                yield head
        else:
            yield head

    def _prompt_seed(self, row) -> int:
        # seeds depend on the prompt, not on its rank or batch: 1 and 2 processes sample alike
        return seed_for(self.args.seed, self.state.global_step, str(row["prompt"]))

    def _sample(self, rows, head):
        args = self.args
        seeds = [self._prompt_seed(r) for r in rows]
        was_training = head.training
        head.eval()
        traces = generate(self.lm, self.tokenizer, [r["prompt"] for r in rows], AdaptiveDecoderRule(head, args.selection),
                          SamplingParams(max_new_tokens=args.max_completion_length, num_samples=args.num_generations,
                                         top_k=args.top_k, top_p=args.top_p, min_p=args.min_p, prompt_seeds=seeds,
                                         batch_size=args.generation_batch_size, trace_hidden=True,
                                         trace_choice_logps=args.loss_type == "lpo_latent"))
        head.train(was_training)
        return traces

    def _pair_features(self, chosen, rejected) -> tuple:
        return tuple((t.hidden, torch.tensor(t.choices if self.args.level == "token" else t.choices[:1]),
                      t.choice_logps) for t in (chosen, rejected))

    def _collate(self, features: list[tuple], total_pairs: int) -> dict:
        device = self.accelerator.device
        out = {"num_pairs_in_step": total_pairs, "num_pairs": len(features)}
        for side, idx in (("chosen", 0), ("rejected", 1)):
            if not features:
                continue
            hidden = [f[idx][0] for f in features]
            out[f"{side}_hidden"] = _pad(hidden).to(device)
            out[f"{side}_choices"] = _pad([f[idx][1] for f in features], -1).to(device)
            out[f"{side}_mask"] = _pad([torch.ones(len(h)) for h in hidden]).to(device)
            if features[0][idx][2] is not None:
                lps = [f[idx][2] for f in features]
                out[f"{side}_token_logps"] = _pad(lps, 0.0).to(device)
                out[f"{side}_token_mask"] = _pad([torch.ones(len(x)) for x in lps]).to(device)
            out[f"{side}_reward"] = torch.tensor([f[2 + idx] for f in features], device=device)
        return out

    def _prepare_inputs(self, inputs):
        return inputs  # already on device (built in _collate)

    # --- loss ------------------------------------------------------------------------------

    def _side_logps(self, model, inputs, side):
        log_probs = torch.log_softmax(model(inputs[f"{side}_hidden"]).float(), dim=-1)  # [P, T, K]
        return log_probs, choice_logps(log_probs, inputs[f"{side}_choices"], inputs[f"{side}_mask"])

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if inputs["num_pairs"] == 0:  # keep every rank's graph identical (DDP) when no pair was formed
            loss = sum(p.sum() for p in model.parameters()) * 0.0
            return (loss, None) if return_outputs else loss
        args = self.args
        lp_c_all, logp_c = self._side_logps(model, inputs, "chosen")
        lp_r_all, logp_r = self._side_logps(model, inputs, "rejected")
        if args.loss_type == "lpo":
            per_pair = lpo_loss(logp_c, logp_r, args.beta)
        elif args.loss_type == "lpo_joint":
            per_pair = lpo_joint_loss(logp_c, logp_r, args.beta)
        elif args.loss_type == "nll_chosen":
            per_pair = nll_chosen_loss(logp_c)
        else:
            ratios = []
            for side, lp in (("chosen", lp_c_all), ("rejected", lp_r_all)):
                token_logps = inputs[f"{side}_token_logps"]
                head_lp = lp if args.level == "token" else lp[:, :1].expand(-1, token_logps.shape[1], -1)
                ratios.append(latent_logratio(head_lp, token_logps, inputs[f"{side}_token_mask"], args.latent_form))
            per_pair = lpo_latent_loss(ratios[0], ratios[1], args.beta)
        loss = per_pair.sum() / inputs["num_pairs_in_step"]
        with torch.no_grad():
            margin = args.beta * (logp_c - logp_r)
            self._record({"logps/chosen": logp_c.mean(), "logps/rejected": logp_r.mean(),
                          "rewards/chosen": inputs["chosen_reward"].mean(),
                          "rewards/rejected": inputs["rejected_reward"].mean(),
                          "rewards/margins": (inputs["chosen_reward"] - inputs["rejected_reward"]).mean(),
                          "rewards/accuracies": (logp_c > logp_r).float().mean(),
                          "lpo/choice_margin": margin.mean()})
        return (loss, None) if return_outputs else loss

    # --- metrics, logging ----------------------------------------------------------------------

    def _record(self, values: dict) -> None:
        for k, v in values.items():
            v = torch.as_tensor(v, dtype=torch.float32, device=self.accelerator.device).reshape(1)
            self._metrics[k].append(self.accelerator.gather(v).nanmean().item())

    def _log_generation(self, rows, traces, rewards, per_func, pairs, stats) -> None:
        grid = self.accelerator.unwrap_model(self.model).config.grid
        finite = rewards[~rewards.isnan()]
        metrics = {"reward": finite.mean() if len(finite) else math.nan,
                   "reward_std": finite.std() if len(finite) > 1 else 0.0,
                   "frac_prompts_tied": stats.frac_tied, "num_pairs": float(stats.pairs),
                   "prompts_without_valid_rewards": float(stats.invalid),
                   "completions/mean_length": (sum(len(t.token_ids) for t in traces) / len(traces)) if traces else 0.0}
        for j, fn in enumerate(self.reward_funcs):
            col = per_func[:, j] if len(per_func) else torch.zeros(0)
            metrics[f"rewards/{reward_name(fn)}/mean"] = col.nanmean() if len(col) else math.nan
        by_family = defaultdict(list)  # the choice distribution, overall and per task family
        for t in traces:
            by_family[None].append(t)
            if rows[t.prompt_index].get("family") is not None:
                by_family[rows[t.prompt_index]["family"]].append(t)
        for fam, group in by_family.items():
            prefix = "choice" if fam is None else f"choice/{fam}"
            values = [v for t in group for v in t.values]
            choices = [c for t in group for c in (t.choices or [])]
            metrics[f"{prefix}/mean_value"] = sum(values) / len(values) if values else math.nan
            for k, g in enumerate(grid):
                metrics[f"{prefix}/frac_{g:g}"] = choices.count(k) / len(choices) if choices else math.nan
        self._record(metrics)
        paired = {(p.prompt_index, p.chosen): "chosen" for p in pairs}
        paired.update({(p.prompt_index, p.rejected): "rejected" for p in pairs})
        self._completions = [{
            "step": self.state.global_step, "prompt": str(rows[t.prompt_index]["prompt"]), "completion": t.text,
            "reward": float(rewards[i]), "choices": [grid[c] for c in (t.choices or [])],
            "family": rows[t.prompt_index].get("family"), "pair_role": paired.get((t.prompt_index, t.sample_index), ""),
        } for i, t in enumerate(traces)]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        for k, v in self._metrics.items():
            finite = [x for x in v if not math.isnan(x)]
            logs[k] = sum(finite) / len(finite) if finite else math.nan
        self._metrics.clear()
        if self._completions and self.is_world_process_zero():
            self._write_completions()
        super().log(logs, start_time)

    def _write_completions(self) -> None:
        import pandas as pd

        folder = Path(self.args.output_dir) / "completions"
        folder.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame(self._completions)
        frame.to_parquet(folder / f"completions_{self.state.global_step:05d}.parquet")
        trackers = self.args.report_to or []
        table = frame.astype({"choices": str})
        if "wandb" in trackers:
            import wandb

            if wandb.run is not None:
                wandb.log({"completions": wandb.Table(dataframe=table)}, step=self.state.global_step)
        if "trackio" in trackers:
            import trackio

            trackio.log({"completions": trackio.Table(dataframe=table)}, step=self.state.global_step)

    # --- saving -----------------------------------------------------------------------------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the head artifact only (never the frozen LM), with a model card."""
        output_dir = output_dir or self.args.output_dir
        state = self.accelerator.get_state_dict(self.model_wrapped)  # collective: gathers ZeRO-3 shards
        if self.is_world_process_zero():
            head = self.accelerator.unwrap_model(self.model)
            head.config.base_model = head.config.base_model or self.lm.config.name_or_path
            head.save_pretrained(output_dir, model_card=self._model_card(head), state_dict=state)
            self._plot_choices(Path(output_dir))

    def create_model_card(self, *args, **kwargs) -> None:
        """Called by ``push_to_hub``: keep lpo-train's head card rather than Trainer's LM card."""
        if self.is_world_process_zero():
            head = self.accelerator.unwrap_model(self.model)
            (Path(self.args.output_dir) / "README.md").write_text(self._model_card(head))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        from safetensors.torch import load_file

        head = self.accelerator.unwrap_model(model or self.model)
        head.load_state_dict(load_file(str(Path(resume_from_checkpoint) / "model.safetensors")))

    def _model_card(self, head) -> str:
        a = self.args
        last = {k: v for entry in self.state.log_history for k, v in entry.items()
                if k in ("loss", "reward", "rewards/accuracies", "choice/mean_value")}
        rows = [("loss", a.loss_type), ("beta", a.beta), ("data", a.dataset_name or "custom dataset"),
                ("rewards", ", ".join(reward_name(f) for f in self.reward_funcs)),
                ("num_generations", a.num_generations), ("steps", self.state.global_step)]
        rows += [(f"final {k}", f"{v:.4g}") for k, v in last.items()]
        extra = "".join(f"| {k} | {v} |\n" for k, v in rows)
        return default_model_card(head.config, extra)

    def _plot_choices(self, folder: Path) -> None:
        if not self._completions:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        by_family = defaultdict(list)
        for row in self._completions:
            by_family[row["family"] or "all"].extend(row["choices"])
        grid = list(self.accelerator.unwrap_model(self.model).config.grid)
        fig, axes = plt.subplots(1, len(by_family), figsize=(3.2 * len(by_family), 2.8), squeeze=False)
        for ax, (fam, vals) in zip(axes[0], sorted(by_family.items())):
            counts = [vals.count(g) / max(len(vals), 1) for g in grid]
            ax.bar([f"{g:g}" for g in grid], counts)
            ax.set(title=fam, xlabel=self.args.knob, ylim=(0, 1))
        axes[0][0].set_ylabel("share of choices")
        fig.tight_layout()
        fig.savefig(folder / "choice_histogram.png", dpi=100)
        plt.close(fig)
