"""Integrated Value Guidance (IVG) and its grid: token-level guidance rules, chunk-level scorers,
chunk-level beam search, value models and their trainers."""

from lpo_train.guidance.scorers import ChunkScorer, ExplicitScorer, ImplicitScorer, RewardScorer
from lpo_train.guidance.search import ChunkBeamSearch, guided_generate
from lpo_train.guidance.token import ARGS, ExplicitGuidance, ImplicitGuidance
from lpo_train.guidance.value_model import end_scores, load_value_model, make_value_model, token_values

__all__ = [
    "ARGS", "ChunkBeamSearch", "ChunkScorer", "ExplicitGuidance", "ExplicitScorer", "ImplicitGuidance", "ImplicitScorer",
    "RewardScorer", "end_scores", "guided_generate", "load_value_model", "make_value_model", "token_values",
]
