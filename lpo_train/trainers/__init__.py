"""Trainers (subclasses of transformers.Trainer) and their configs."""

from lpo_train.trainers.lpo_config import LPOConfig
from lpo_train.trainers.lpo import LPOTrainer

__all__ = ["LPOConfig", "LPOTrainer"]
