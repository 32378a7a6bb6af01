"""Log an evaluation (headline scalars per strategy and the PNG plots) to the trackers the
trainer supports: ``wandb`` (set ``WANDB_MODE=offline`` to stay local), ``trackio`` (local
unless a Space is given) and ``tensorboard`` (event files under ``output_dir/runs``)."""

from __future__ import annotations

from pathlib import Path

TRACKERS = ("wandb", "trackio", "tensorboard")
SCALARS = ("mean_reward", "average_win_rate", "percent_non_greedy", "repeat_3gram", "distinct_2", "self_bleu",
           "mean_value_sentence_start", "mean_value_other", "accuracy", "maj_at_n", "rouge_l", "bleu")


def scalars(summary: dict) -> dict[str, float]:
    """``eval/<strategy>/<metric>`` for each headline metric that has a value."""
    out = {}
    for name, s in summary.items():
        for key in SCALARS:
            if s.get(key) is not None:
                out[f"eval/{name}/{key}"] = float(s[key])
    return out


def log_evaluation(report_to: list[str], summary: dict, plots: dict[str, Path], config: dict, output_dir: Path,
                   project: str, run_name: str | None) -> None:
    values = scalars(summary)
    for tracker in report_to:
        if tracker == "wandb":
            import wandb

            run = wandb.init(project=project, name=run_name, config=config, reinit="finish_previous")
            run.log({**values, **{f"eval/plots/{k}": wandb.Image(str(p)) for k, p in plots.items()}})
            run.finish()
        elif tracker == "trackio":
            import trackio

            trackio.init(project=project, name=run_name, config=config, space_id=None)
            trackio.log({**values, **{f"eval/plots/{k}": trackio.Image(str(p)) for k, p in plots.items()}})
            trackio.finish()
        elif tracker == "tensorboard":
            import numpy as np
            from matplotlib.image import imread
            from torch.utils.tensorboard import SummaryWriter

            with SummaryWriter(log_dir=str(output_dir / "runs" / (run_name or "eval"))) as writer:
                for key, value in values.items():
                    writer.add_scalar(key, value, 0)
                for key, p in plots.items():
                    image = (imread(str(p))[..., :3] * 255).astype(np.uint8)  # PNG -> HWC uint8, no alpha
                    writer.add_image(f"eval/plots/{key}", image, 0, dataformats="HWC")
        else:  # pragma: no cover - EvalConfig validates the names
            raise ValueError(f"Unknown tracker {tracker!r}; choose from {TRACKERS}.")
