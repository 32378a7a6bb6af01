"""Adaptive decoding in plain transformers: ``model.generate(**inputs, custom_generate=HEAD, trust_remote_code=True)``.

Written by lpo-train next to an AdaptiveDecoder head (``save_pretrained(..., custom_generate=True)``). It
loads the head and decodes with lpo-train's engine, the head choosing the knob at every decision; the
logic lives in lpo-train (``AdaptiveDecoderForCausalLM.generate``), not in this file.
"""

HEAD = "{head}"  # the head's folder or Hub repo, filled in when the head is saved or pushed
SELECTION = "argmax"


def generate(model, inputs=None, input_ids=None, attention_mask=None, generation_config=None, max_new_tokens=None,
             num_return_sequences=None, **kwargs):
    try:
        from lpo_train.adaptive_model import AdaptiveDecoderForCausalLM
        from lpo_train.heads import AdaptiveDecoderHead
    except ImportError as e:
        raise ImportError("This head's custom_generate runs lpo-train's engine: pip install lpo-train") from e
    from transformers import AutoTokenizer

    ids = input_ids if input_ids is not None else inputs
    config = generation_config if generation_config is not None else model.generation_config
    max_new_tokens = max_new_tokens or getattr(config, "max_new_tokens", None) or 20
    n = num_return_sequences or getattr(config, "num_return_sequences", None) or 1
    tokenizer = AutoTokenizer.from_pretrained(model.config.name_or_path)
    adaptive = AdaptiveDecoderForCausalLM(model, tokenizer, AdaptiveDecoderHead.from_pretrained(HEAD), SELECTION)
    extra = {k: kwargs[k] for k in ("top_k", "top_p", "min_p", "seed", "stop_strings", "pad_token_id") if k in kwargs}
    return adaptive.generate(ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                             num_return_sequences=n, **extra)
