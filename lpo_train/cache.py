"""Where lpo-train caches converted checkpoints and the pretrained toy world."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$LPO_TRAIN_CACHE`` (default ``~/.cache/lpo_train``) joined with ``parts``."""
    root = Path(os.environ.get("LPO_TRAIN_CACHE", Path.home() / ".cache" / "lpo_train"))
    return root.joinpath(*parts)
