"""Model kit: offline tokenizers, tiny models for tests, the SmolLM2 loader."""

from lpo_train.models.kit import (
    CHATML_TEMPLATE,
    build_reward_model,
    build_tiny_lm,
    train_bpe_tokenizer,
)
from lpo_train.models.smollm2 import load_smollm2, smollm2_path

__all__ = [
    "CHATML_TEMPLATE",
    "build_reward_model",
    "build_tiny_lm",
    "load_smollm2",
    "smollm2_path",
    "train_bpe_tokenizer",
]
