"""lpo-train's vLLM logits processors (imported only when a vLLM engine is built: it imports vLLM)."""

from __future__ import annotations

from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from lpo_train.decoding.rules import LOGITS_RULES, StepInput
from lpo_train.decoding.sampling import tempered_logits

APPLIED: dict[str, list[float]] = {}  # per request key, the temperature applied at each token (in-process engines)


class RuleLogitsProcessor(AdapterLogitsProcessor):
    """EDT / dynatemp inside vLLM (a V1 logits processor; per request, only where ``extra_args["lpo_rule"]`` names
    the rule): each token's temperature from that row's logits with the engine's rule, then z / T (T = 0: the argmax
    only). Argmax-invariant, so vLLM runs it after its own temperature (the request's is 1) and before top-k /
    top-p, the engine's order."""

    def is_argmax_invariant(self) -> bool:
        return True

    def new_req_logits_processor(self, params):
        spec = (params.extra_args or {}).get("lpo_rule")
        if spec is None:
            return None
        cls, _ = LOGITS_RULES[spec["name"]]
        rule, record = cls(**spec["options"]), APPLIED.setdefault(spec["key"], [])

        def apply(output_ids, logits):
            row = logits[None].float()
            temperature = rule.step(StepInput(logits=row, hidden=None, state={}, step=len(output_ids))).temperature
            record.append(float(temperature.reshape(-1)[0]))
            return tempered_logits(row, temperature.reshape(-1)).to(logits.dtype)[0]

        return apply
