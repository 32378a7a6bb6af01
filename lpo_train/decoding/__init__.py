"""The one decoding engine and the rules it runs."""

from lpo_train.decoding.adaptive import AdaptiveDecoderRule
from lpo_train.decoding.engine import SamplingParams, generate, next_token_distribution
from lpo_train.decoding.rules import (
    EDT,
    KLD,
    AuxStream,
    Dynatemp,
    FixedTemperature,
    Rule,
    StepInput,
    StepOutput,
    dynatemp_temperature,
    edt_temperature,
    entropy,
    kld_temperature,
)
from lpo_train.decoding.sampling import Truncation, knob_distribution, sample_from, truncate, warp
from lpo_train.decoding.trace import Trace

__all__ = [
    "EDT", "KLD", "AdaptiveDecoderRule", "AuxStream", "Dynatemp", "FixedTemperature", "Rule",
    "SamplingParams", "StepInput", "StepOutput", "Trace", "dynatemp_temperature", "edt_temperature",
    "Truncation", "entropy", "generate", "kld_temperature", "knob_distribution", "next_token_distribution",
    "sample_from", "truncate", "warp",
]
