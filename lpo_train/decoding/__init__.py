"""The one decoding engine and the rules it runs."""

from lpo_train.decoding.adaptive import AdaptiveDecoderRule, knob_distribution
from lpo_train.decoding.engine import SamplingParams, Trace, generate, next_token_distribution
from lpo_train.decoding.rules import (
    EDT, KLD, AuxStream, Dynatemp, FixedTemperature, Rule, StepInput, StepOutput,
    dynatemp_temperature, edt_temperature, entropy, greedy, kld_temperature,
)

__all__ = [
    "EDT", "KLD", "AdaptiveDecoderRule", "AuxStream", "Dynatemp", "FixedTemperature", "Rule",
    "SamplingParams", "StepInput", "StepOutput", "Trace", "dynatemp_temperature", "edt_temperature",
    "entropy", "generate", "greedy", "kld_temperature", "knob_distribution", "next_token_distribution",
]
