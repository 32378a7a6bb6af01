"""Trainers (subclasses of transformers.Trainer) and their configs."""

from lpo_train.trainers.lpo import LPOTrainer
from lpo_train.trainers.lpo_config import LPOConfig

__all__ = ["LPOConfig", "LPOTrainer"]
