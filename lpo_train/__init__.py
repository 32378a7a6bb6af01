"""lpo-train: train and run adaptive decoding for large language models.

``from lpo_train import LPOConfig, LPOTrainer, AdaptiveDecoderHead`` like ``from trl import DPOTrainer``;
the heavier entry points are imported on first use.
"""

from lpo_train.heads import GRID_PRESETS, AdaptiveDecoderConfig, AdaptiveDecoderHead

__version__ = "0.1.0"

_LAZY = {
    "LPOConfig": "lpo_train.trainers", "LPOTrainer": "lpo_train.trainers",
    "SamplingParams": "lpo_train.decoding", "generate": "lpo_train.decoding",
    "AdaptiveDecoderRule": "lpo_train.decoding", "FixedTemperature": "lpo_train.decoding",
    "EDT": "lpo_train.decoding", "KLD": "lpo_train.decoding", "Dynatemp": "lpo_train.decoding",
    "EvalConfig": "lpo_train.evaluation.harness", "evaluate": "lpo_train.evaluation.harness",
    "ImplicitGuidance": "lpo_train.guidance", "ExplicitGuidance": "lpo_train.guidance",
    "ExplicitScorer": "lpo_train.guidance", "ImplicitScorer": "lpo_train.guidance",
    "guided_generate": "lpo_train.guidance", "load_causal_lm": "lpo_train.models.loading",
    "load_prompt_dataset": "lpo_train.data", "AdaptiveDecoderForCausalLM": "lpo_train.adaptive_model",
    "register_reward": "lpo_train.registry", "register_dataset": "lpo_train.registry",
    "register_model": "lpo_train.registry",
}
__all__ = ["GRID_PRESETS", "AdaptiveDecoderConfig", "AdaptiveDecoderHead", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lpo_train' has no attribute {name!r}")
