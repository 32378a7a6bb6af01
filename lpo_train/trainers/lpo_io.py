"""What LPO training reads and writes, as functions: stored offline pairs, the output folder's
hygiene, the completions tables (written off the training thread), the head's card and its choice histogram."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch

from lpo_train.pairs import GroupFeatures, PairFeatures, SideFeatures, group_row
from lpo_train.utils.io import atomic_path


def stored_features(row: dict, dtype: torch.dtype) -> PairFeatures | GroupFeatures:
    """A stored unit (``unit_record``) back as ``PairFeatures`` or ``GroupFeatures``."""
    def side(hidden, choices, logps) -> SideFeatures:
        return SideFeatures(torch.tensor(hidden, dtype=dtype), torch.tensor(choices),
                            None if logps is None else torch.tensor(logps, dtype=torch.float32))

    if row.get("group_rewards") is not None:
        logps = row.get("group_token_logps") or [None] * len(row["group_rewards"])
        return GroupFeatures([side(h, c, lp) for h, c, lp in zip(row["group_hidden"], row["group_choices"], logps)],
                             list(row["group_rewards"]), None, row.get("family"))
    sides = [side(row[f"{s}_hidden"], row[f"{s}_choices"], row.get(f"{s}_token_logps")) for s in ("chosen", "rejected")]
    return PairFeatures(*sides, row["chosen_reward"], row["rejected_reward"], row.get("family"))


def unit_record(row: dict, unit, features, traces, num_generations: int, seed: int) -> dict:
    """A storable record of one training unit (a pair, or a group's compared samples): the prompt, its seed, the
    texts, choices, rewards and traced features."""
    n = num_generations
    record = {"prompt": json.dumps(row["prompt"]), "family": row.get("family"), "seed": seed, "num_generations": n}
    if isinstance(features, GroupFeatures):
        record.update({"group_samples": list(unit.samples), "group_rewards": list(features.rewards),
                       "group_text": [traces[group_row(unit.prompt_index, i, n)].text for i in unit.samples],
                       "group_hidden": [f.hidden.float().tolist() for f in features.sides],
                       "group_choices": [f.choices.tolist() for f in features.sides],
                       "group_token_logps": None if features.sides[0].token_logps is None
                       else [f.token_logps.tolist() for f in features.sides]})
        return record
    record.update({"chosen_index": unit.chosen, "rejected_index": unit.rejected,
                   "chosen_reward": unit.chosen_reward, "rejected_reward": unit.rejected_reward})
    for side, feats, sample in (("chosen", features.chosen, unit.chosen), ("rejected", features.rejected, unit.rejected)):
        record[f"{side}_text"] = traces[group_row(unit.prompt_index, sample, n)].text
        record[f"{side}_hidden"] = feats.hidden.float().tolist()
        record[f"{side}_choices"] = feats.choices.tolist()
        record[f"{side}_token_logps"] = None if feats.token_logps is None else feats.token_logps.tolist()
    return record


FINGERPRINT_KEY = b"lpo_train_pairs"


def write_pairs_dataset(dataset, path, fingerprint: dict) -> None:
    """The offline units as parquet, with what produced them in the file's metadata, through a ``.partial`` file:
    a half-written file is never taken for a finished one."""
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = dataset.data.table
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), FINGERPRINT_KEY: json.dumps(fingerprint)})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def check_pairs_fingerprint(path, expected: dict) -> None:
    """An offline units file built under other settings (model, level, grid, rewards, N, seed, exploration,
    truncations, prompts ...) is an error naming each differing field, never silently trained on."""
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        metadata = pq.read_schema(path).metadata or {}
    except Exception as e:
        raise ValueError(f"pairs_path {path} is not a readable parquet file ({e}); delete it to rebuild it.") from None
    if FINGERPRINT_KEY not in metadata:
        raise ValueError(f"pairs_path {path} does not record what produced it (an older lpo-train, or not an "
                         "lpo-train pairs file): delete it to rebuild it with this run's settings, or set another "
                         "--pairs_path.")
    stored = json.loads(metadata[FINGERPRINT_KEY])
    differing = [f"{k}: file {stored.get(k)!r} vs this run {v!r}" for k, v in expected.items() if stored.get(k) != v]
    if differing:
        raise ValueError(f"pairs_path {path} was built under other settings ({'; '.join(differing)}). Delete it to "
                         "rebuild it with this run's settings, or set another --pairs_path.")


def check_output_dir(args) -> None:
    """Training into a folder that holds another run's head or checkpoints needs
    ``overwrite_output_dir`` (or a resume): a rerun never mixes its results with a stale run's."""
    out = Path(args.output_dir)
    if not out.is_dir() or args.resume_from_checkpoint:
        return
    previous = sorted(p.name for p in out.iterdir() if p.name == "model.safetensors" or p.name.startswith("checkpoint-"))
    if not previous:
        return
    if not args.overwrite_output_dir:
        raise FileExistsError(f"{out} already holds another run ({', '.join(previous[:3])}). Set "
                              "--overwrite_output_dir true to replace it, --resume_from_checkpoint true to continue "
                              "it, or choose another --output_dir.")
    import shutil

    if args.process_index != 0:  # one process clears the folder (every rank checked it above)
        return
    for name in ("completions", "choice_histogram.png", "trainer_state.json", "model.safetensors",
                 "adapter_config.json", "adapter_model.safetensors", *previous):
        path = out / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def pad(tensors: list[torch.Tensor], value: float = 0.0) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence(tensors, batch_first=True, padding_value=value)


class CompletionsWriter:
    """Each logged step's samples: ``output_dir/completions/completions_<step>.parquet`` (written on one
    background thread, so the next step's sampling does not wait for the file; through a ``.partial`` file
    renamed once complete, so a half-written file never looks finished) and a table for W&B / trackio
    (logged at once, on the calling thread). ``flush`` waits for the pending files and raises any error."""

    def __init__(self):
        self._pool = None
        self._pending: list = []

    def write(self, completions: list[dict], output_dir: str, step: int, report_to) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._raise_failures(wait=False)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lpo-completions")
        path = Path(output_dir) / "completions" / f"completions_{step:05d}.parquet"
        self._pending.append(self._pool.submit(_write_parquet, completions, step, path))
        _log_tables(completions, step, report_to)

    def flush(self) -> None:
        self._raise_failures(wait=True)

    def _raise_failures(self, wait: bool) -> None:
        done = [f for f in self._pending if wait or f.done()]
        self._pending = [f for f in self._pending if f not in done]
        errors = [f.exception() for f in done]  # waits for every one of them, then reports the first error
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first  # the writer's error, here on the training thread


def _write_parquet(completions: list[dict], step: int, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist([{"step": step, **row} for row in completions]), tmp)


def _log_tables(completions: list[dict], step: int, report_to) -> None:
    trackers = [report_to] if isinstance(report_to, str) else report_to or []
    if not {"wandb", "trackio"} & set(trackers):
        return
    import pandas as pd

    table = pd.DataFrame([{"step": step, **row, "choices": str(row["choices"])} for row in completions])
    if "wandb" in trackers:
        import wandb

        if wandb.run is not None:
            wandb.log({"completions": wandb.Table(dataframe=table)}, step=step)
    if "trackio" in trackers:
        import trackio

        trackio.log({"completions": trackio.Table(dataframe=table)}, step=step)


def model_card_rows(args, log_history: list[dict], reward_names: list[str], steps: int, lora=None) -> str:
    """The trainer's rows of the head card's table (``generate_model_card(extra_sections=...)``); ``lora``: the
    joint run's ``peft.LoraConfig``."""
    last = {k: v for entry in log_history for k, v in entry.items()
            if k in ("loss", "reward", "rewards/accuracies", "choice/head_mean_value")}
    rows = [("loss", args.loss_type), ("beta", args.beta), ("data", args.dataset_name or "custom dataset"),
            ("rewards", ", ".join(reward_names)), ("num_generations", args.num_generations),
            ("exploration", args.exploration), ("steps", steps)]
    if lora is not None:  # joint LPO: the adapter's training, beside the head's
        targets = sorted(lora.target_modules) if isinstance(lora.target_modules, (list, set, tuple)) \
            else [lora.target_modules or "PEFT default"]
        rows += [("word_beta", args.word_beta), ("LoRA", f"r {lora.r}, alpha {lora.lora_alpha}, "
                 f"targets {', '.join(targets)}, lr {args.lora_learning_rate}")]
    rows += [(f"final {k}", f"{v:.4g}") for k, v in last.items()]
    return "".join(f"| {k} | {v} |\n" for k, v in rows)


def plot_choices(completions: list[dict], grid, knob: str, folder: Path) -> None:
    """``choice_histogram.png``: the share of the last step's sampled choices per grid value and family."""
    if not completions:
        return
    from lpo_train.evaluation.plots import _pyplot, save

    plt = _pyplot()
    by_family = defaultdict(list)
    for row in completions:
        by_family[row["family"] or "all"].extend(row["choices"])
    grid = list(grid)
    fig, axes = plt.subplots(1, len(by_family), figsize=(3.2 * len(by_family), 2.8), squeeze=False)
    for ax, (fam, vals) in zip(axes[0], sorted(by_family.items())):
        ax.bar([f"{g:g}" for g in grid], [vals.count(g) / max(len(vals), 1) for g in grid])
        ax.set(title=fam, xlabel=knob, ylim=(0, 1))
    axes[0][0].set_ylabel("share of sampled choices")
    fig.tight_layout()
    save(fig, folder / "choice_histogram.png", 100)
    plt.close(fig)


def save_head_artifact(trainer, output_dir: str, state: dict, write_state: bool) -> None:
    """The head (never the frozen LM) with its card; with ``use_peft`` the LoRA adapter beside it (one card, the
    head's), which then loads as both. ``state``: the gathered state dict (ZeRO-3 shards). Main process only."""
    from lpo_train.rewards import reward_name
    from lpo_train.trainers.lpo_joint import save_adapter

    head, args = trainer.bare_head(), trainer.args
    head.config.base_model = head.config.base_model or trainer.lm.config.name_or_path
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    if args.use_peft:
        split = {side: {k[len(side) + 1:]: v for k, v in state.items() if k.startswith(side + ".")}
                 for side in ("head", "lm")}
        save_adapter(trainer.lm, split["lm"], output_dir)
        head.config.extra = {**head.config.extra, "adapter_in_repo": True}
        state = split["head"]
    else:  # a head-only artifact never sits beside another run's adapter, nor claims one
        head.config.extra.pop("adapter_in_repo", None)
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            (Path(output_dir) / name).unlink(missing_ok=True)
    rows = model_card_rows(args, trainer.state.log_history, [reward_name(f) for f in trainer.reward_funcs],
                           trainer.state.global_step, trainer.lora_config)
    head.save_pretrained(output_dir, state_dict=state, model_card_kwargs={"extra_sections": rows})
    if write_state:  # a checkpoint's trainer_state.json is Trainer's, written last (its "complete" mark)
        trainer.state.save_to_json(str(Path(output_dir) / "trainer_state.json"))  # the log history, by the head
    plot_choices(trainer.last_completions, head.config.grid, args.knob, Path(output_dir))


def resolve_checkpoint(resume, output_dir: str):
    """``resume_from_checkpoint`` as Trainer takes it: True / "true" / "latest" become the latest ``checkpoint-*``
    in ``output_dir`` (an error when there is none); a path or None is returned as given."""
    if isinstance(resume, str) and resume.lower() in ("true", "latest"):
        resume = True
    if resume is not True:
        return resume
    from transformers.trainer_utils import get_last_checkpoint

    found = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
    if found is None:
        raise FileNotFoundError(f"resume_from_checkpoint=true but {output_dir} holds no checkpoint-* folder; give a "
                                "checkpoint path or train from scratch.")
    return found
