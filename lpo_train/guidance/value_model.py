"""Token-level explicit value models (IVG's ``*ModelForTokenScore``, FUDGE layout).

A value model is an ordinary causal-LM checkpoint whose output layer is reinterpreted: a
bias-free linear head hidden -> vocabulary, untied from the input embeddings. For the hidden
state h_{t-1} after x, y_<t:

    Q(x, y_<t, .) = head(h_{t-1})  in R^|V|     V(x, y_<=t) = Q(x, y_<t, y_t)

so one forward pass values every candidate next token (token-level guidance runs it as an
auxiliary stream of the engine), and the *end score* of a sequence is V at its last real token.
Saved with ``config.lpo_token_value_model = True`` and loaded with ``AutoModelForCausalLM``.
"""

from __future__ import annotations

import copy

import torch

FLAG = "lpo_token_value_model"


def make_value_model(backbone):
    """A value model from a causal LM (a model or a path): its backbone, a fresh zero head.

    A zero head makes every value 0 at the start, so untrained guidance changes nothing.
    """
    from transformers import AutoModelForCausalLM

    from lpo_train.models.loading import resolve_model_path

    if isinstance(backbone, torch.nn.Module):
        model = copy.deepcopy(backbone)
    else:
        model = AutoModelForCausalLM.from_pretrained(resolve_model_path(str(backbone)), dtype=torch.float32)
    old = model.get_output_embeddings()
    head = torch.nn.Linear(old.in_features, old.out_features, bias=False,
                           device=old.weight.device, dtype=old.weight.dtype)
    torch.nn.init.zeros_(head.weight)
    model.config.tie_word_embeddings = False
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().tie_word_embeddings = False
    model.set_output_embeddings(head)
    setattr(model.config, FLAG, True)
    return model


def is_value_model(model) -> bool:
    return bool(getattr(model.config, FLAG, False))


def load_value_model(path, dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)`` of a saved value model (eval mode, frozen); clear error otherwise."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    if not is_value_model(model):
        raise ValueError(f"{path} is not a token value model (config has no {FLAG}); train one with "
                         "`lpo-train train-value --kind explicit` or build one with make_value_model().")
    return model.eval().requires_grad_(False), AutoTokenizer.from_pretrained(str(path))


def token_values(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T]: V(x, y_<=t) = Q(h_{t-1})[y_t] at every position t >= 1 (0 at t = 0). Right padding."""
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    q = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits.float()
    values = q[:, :-1].gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return torch.cat([values.new_zeros((len(values), 1)), values], dim=1)


def end_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B]: the value at each row's last real token (right padding)."""
    last = attention_mask.sum(-1) - 1
    return token_values(model, input_ids, attention_mask).gather(1, last[:, None]).squeeze(1)
