"""Explicit value models (IVG's ``*ModelForTokenScore``, FUDGE layout), with a token or a shared head.

A value model is an ordinary causal-LM checkpoint whose output layer is reinterpreted: a
bias-free linear head hidden -> vocabulary, untied from the input embeddings. For the hidden
state h_{t-1} after x, y_<t:

    Q(x, y_<t, .) = head(h_{t-1})  in R^|V|     V(x, y_<=t) = Q(x, y_<t, y_t)

so one forward pass values every candidate next token (token-level guidance runs it as an
auxiliary stream of the engine), and the *end score* of a sequence is V at its last real token.
Saved with ``config.lpo_token_value_model = True`` and loaded with ``AutoModelForCausalLM``.

Two heads (``make_value_model(..., head=...)``, recorded as ``config.lpo_value_head``):
- ``"token"`` (FUDGE): one row per vocabulary token. It values every candidate next token, but a row learns
  only where its token occurs, so on a large vocabulary and little data most rows stay untrained.
- ``"shared"``: one trained vector w for every row, V(x, y_<=t) = w . h_{t-1}: a value per prefix read off
  the backbone's hidden state (a linear probe), learned from every position. Trained as ``SharedValueHead``
  and saved as the same bias-free hidden x vocabulary layer (all rows equal; checkpoints too), so every
  reader loads it unchanged. It ranks prefixes and finished sequences (best-of-N, chunk-level search, IVG),
  but gives every candidate token the same value, so token-level explicit guidance refuses it. Its value
  lags one token: V(x, y_<=t) reads h_{t-1}, so the end score of a sequence does not see its last token.
"""

from __future__ import annotations

import copy

import torch

FLAG = "lpo_token_value_model"  # marks any value model of this layout (token or shared head)
HEAD_FLAG = "lpo_value_head"
VALUE_HEADS = ("token", "shared")


class SharedValueHead(torch.nn.Module):
    """The ``"shared"`` head while it trains: one vector w [hidden], the output w . h broadcast over the
    vocabulary (a view, no copy). ``to_linear()`` is the saved form: a bias-free Linear with every row w. Its
    state dict is that form too (``weight`` [vocabulary, hidden], rows equal; loaded back from row 0), so a
    mid-training checkpoint is a loadable value model and resumes."""

    def __init__(self, in_features: int, out_features: int, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.vector = torch.nn.Parameter(torch.zeros(in_features, device=device, dtype=dtype))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return (hidden @ self.vector)[..., None].expand(*hidden.shape[:-1], self.out_features)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        vector = self.vector if keep_vars else self.vector.detach()
        destination[prefix + "weight"] = vector.expand(self.out_features, -1).clone()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "weight"
        if key not in state_dict:
            if strict:
                missing_keys.append(key)
            return
        with torch.no_grad():
            self.vector.copy_(state_dict[key][0])

    def to_linear(self) -> torch.nn.Linear:
        layer = torch.nn.Linear(self.in_features, self.out_features, bias=False,
                                device=self.vector.device, dtype=self.vector.dtype)
        with torch.no_grad():
            layer.weight.copy_(self.vector.detach().expand(self.out_features, -1))
        return layer


def make_value_model(backbone, head: str = "token"):
    """A value model from a causal LM (a model or a path): its backbone, a fresh zero head (``head``:
    one of ``VALUE_HEADS``, see the module docstring).

    A zero head makes every value 0 at the start, so untrained guidance changes nothing. A ``"shared"``
    head is a ``SharedValueHead``, whose state dict is already the saved layer.
    """
    if head not in VALUE_HEADS:
        raise ValueError(f"value head must be one of {VALUE_HEADS}, got {head!r}.")
    from transformers import AutoModelForCausalLM

    from lpo_train.models.loading import resolve_model_path

    if isinstance(backbone, torch.nn.Module):
        model = copy.deepcopy(backbone)
    else:
        model = AutoModelForCausalLM.from_pretrained(resolve_model_path(str(backbone)), dtype=torch.float32)
    old = model.get_output_embeddings()
    layout = dict(device=old.weight.device, dtype=old.weight.dtype)
    if head == "shared":
        layer = SharedValueHead(old.in_features, old.out_features, **layout)
    else:
        layer = torch.nn.Linear(old.in_features, old.out_features, bias=False, **layout)
        torch.nn.init.zeros_(layer.weight)
    model.config.tie_word_embeddings = False
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().tie_word_embeddings = False
    model.set_output_embeddings(layer)
    setattr(model.config, FLAG, True)
    setattr(model.config, HEAD_FLAG, head)
    return model


def value_head_kind(model) -> str:
    return getattr(model.config, HEAD_FLAG, "token")


def freeze_to_head(model):
    """Only the value head trains (``freeze_backbone``): a probe on the frozen backbone's hidden states."""
    model.requires_grad_(False)
    model.get_output_embeddings().requires_grad_(True)
    return model


def is_value_model(model) -> bool:
    return bool(getattr(model.config, FLAG, False))


def load_value_model(path, dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)`` of a saved value model (eval mode, frozen); clear error otherwise."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    if not is_value_model(model):
        raise ValueError(f"{path} is not a value model (config has no {FLAG}); train one with "
                         "`lpo-train train-value explicit` or build one with make_value_model().")
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
