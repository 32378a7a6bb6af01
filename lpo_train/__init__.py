"""lpo-train: train and run adaptive decoding for large language models."""

from lpo_train.heads import GRID_PRESETS, AdaptiveDecoderConfig, AdaptiveDecoderHead

__version__ = "0.1.0"
__all__ = ["GRID_PRESETS", "AdaptiveDecoderConfig", "AdaptiveDecoderHead"]
