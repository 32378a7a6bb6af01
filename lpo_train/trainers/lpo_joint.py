"""Joint LPO (Eq. 9 with a trainable LM): the head and a LoRA adapter on the LM, one loss, one optimizer.

``JointHeadLM`` is the module the Trainer optimises (and DDP / DeepSpeed wrap): the head plus the PEFT
LM. Called with ``hidden`` it is the head; called with token ids it teacher-forces the paired responses
and returns log pi(y) with the adapter on (with gradient) and log pi_ref(y) with the adapter disabled
(no gradient, no second copy of the LM), each summed over the response tokens. The word terms use the
LM's own distribution (temperature 1): the head's temperature is the choice term's business, and a
temperature-scaled word term would be degenerate at the grid's T = 0 (greedy: log P is 0 or -inf).

The artifact is one folder: the head (``config.json``, ``model.safetensors``, the card) and the adapter
(``adapter_config.json``, ``adapter_model.safetensors``) side by side, so the folder (or Hub repo) is
both a head and a PEFT adapter: ``AdaptiveDecoderForCausalLM.from_pretrained(folder)`` loads the base
model the adapter names, the adapter on it, and the head.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch
from torch import nn

from lpo_train.losses import masked_sum


class JointHeadLM(nn.Module):
    def __init__(self, head: nn.Module, lm: nn.Module):
        super().__init__()
        self.head, self.lm = head, lm

    @property
    def config(self):
        return self.head.config

    def forward(self, *hidden: torch.Tensor, words: dict | None = None):
        """One hidden-state tensor -> the head's logits. With ``words`` (``input_ids``, ``attention_mask``,
        ``completion_mask`` [B, L]): ``(head logits per hidden tensor, (policy, reference))``, the word log-probs
        [B] of the tokens where ``completion_mask`` is 1, each predicted from its prefix. Everything the loss
        needs comes from this one call, so DDP sees every trainable parameter in one forward."""
        if words is None:
            (h,) = hidden
            return self.head(h)
        policy = response_logps(self.lm, **words)
        was_training = self.lm.training
        self.lm.eval()  # the reference is deterministic (no dropout of a base model that has some)
        try:
            with torch.no_grad(), self.lm.disable_adapter():
                reference = response_logps(self.lm, **words)
        finally:
            self.lm.train(was_training)
        return tuple(self.head(h) for h in hidden), (policy, reference)


def zero_loss(model, hidden_size: int, pad_id: int, device) -> torch.Tensor:
    """A zero loss that still runs every trainable parameter of ``model`` (a ``JointHeadLM``, maybe wrapped by DDP /
    DeepSpeed) through its forward: a step with no pair on this rank then makes the same collective calls (DDP's
    reducer, ZeRO-3's parameter gathering) as the ranks that have pairs."""
    hidden = torch.zeros(1, 1, hidden_size, device=device)
    ids = torch.full((1, 2), pad_id, dtype=torch.long, device=device)
    words = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": torch.zeros_like(ids)}
    (chosen, rejected), (policy, _) = model(hidden, hidden, words=words)  # the real call's shape: ZeRO-3 traces it
    return (chosen.sum() + rejected.sum() + policy.sum()) * 0.0


def response_logps(lm, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   completion_mask: torch.Tensor) -> torch.Tensor:
    """sum_t log P(y_t | y_<t) over the masked (response) tokens of each row, [B], float32."""
    logits = lm(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    labels = input_ids[:, 1:]
    picked = logits.gather(-1, labels[..., None]).squeeze(-1) - torch.logsumexp(logits, -1)
    return masked_sum(picked, completion_mask[:, 1:])


def word_batch(sides: list, pad_id: int, device) -> dict:
    """Right-padded ``input_ids`` / ``attention_mask`` / ``completion_mask`` [B, L] of the sides' prompt +
    response ids (``SideFeatures.input_ids`` and ``prompt_length``)."""
    from lpo_train.trainers.lpo_io import pad

    ones = [torch.ones(len(s.input_ids), dtype=torch.long) for s in sides]
    completion = [torch.cat([o[:s.prompt_length] * 0, o[s.prompt_length:]]) for s, o in zip(sides, ones)]
    return {"input_ids": pad([s.input_ids for s in sides], pad_id).to(device),
            "attention_mask": pad(ones).to(device), "completion_mask": pad(completion).to(device)}


def check_peft_config(peft_config, args):
    """Joint LPO's LoRA settings, given one way: TRL's ``peft_config=`` argument (a ``peft.LoraConfig``, copied
    and given task ``CAUSAL_LM`` when it names none) or the ``lora_*`` fields (``args.peft_config()``); None without
    ``use_peft``. Checked before the LM loads."""
    if peft_config is None:
        return args.peft_config() if args.use_peft else None
    from peft import LoraConfig

    if not isinstance(peft_config, LoraConfig):
        raise TypeError(f"peft_config must be a peft.LoraConfig (joint LPO trains a LoRA adapter), got "
                        f"{type(peft_config).__name__}.")
    if not args.use_peft:
        raise ValueError("peft_config trains a LoRA adapter on the LM jointly with the head (Eq. 9): set loss_type "
                         f"'lpo_joint' (it turns use_peft on), or leave peft_config out; got loss_type "
                         f"{args.loss_type!r}.")
    from lpo_train.config import LoraArguments

    changed = [f.name for f in dataclasses.fields(LoraArguments)
               if f.name.startswith("lora_") and getattr(args, f.name) != f.default]
    if changed:
        raise ValueError(f"LoRA settings given twice: peft_config and the fields {changed}. Give them one way: the "
                         "peft_config argument, or the lora_* fields with peft_config left out.")
    lora_config = copy.deepcopy(peft_config)  # get_peft_model writes into its config: never into the user's
    lora_config.task_type = lora_config.task_type or "CAUSAL_LM"
    return lora_config


def peft_lm_for_joint(lm, lora_config, head=None, head_name_or_path=None):
    """The frozen LM with a LoRA adapter (``lora_config``, from ``check_peft_config``) whose saved config names the
    base by its portable spec (never a local cache path): fresh, or, for a ``head`` trained jointly, that head's own
    adapter from its folder ``head_name_or_path``."""
    from peft import get_peft_model

    from lpo_train.models.adapters import is_peft_model

    if is_peft_model(lm):
        raise ValueError("use_peft trains a new LoRA adapter jointly with the head, but the model is already a PEFT "
                         "adapter; merge it into its base first (peft's merge_and_unload, then save_pretrained) and "
                         "give that folder as model_name_or_path.")
    base_name = lm.config.name_or_path
    lm.requires_grad_(False)
    model = get_peft_model(lm, lora_config)
    model.peft_config["default"].base_model_name_or_path = base_name
    if head is not None and head.config.extra.get("adapter_in_repo"):  # a jointly trained head continues with its own
        folder = Path(str(head_name_or_path or ""))
        if not (folder / "adapter_model.safetensors").is_file():
            raise ValueError(f"The head {head_name_or_path!r} was trained jointly with a LoRA adapter, which is not in "
                             "a local folder here: download the repo and give its folder as head_name_or_path, or "
                             "continue the run with resume_from_checkpoint.")
        load_adapter_weights(model, folder)
    return model


def save_adapter(lm, lm_state: dict | None, output_dir: str | Path) -> None:
    """The adapter beside the head (``lm_state``: the gathered full state of the PEFT LM under ZeRO-3).
    PEFT's own card is dropped: the head's card, written next, is the folder's one card."""
    out = Path(output_dir)
    lm.save_pretrained(str(out), state_dict=lm_state, save_embedding_layers=False)  # LoRA only: no vocab change
    card = out / "README.md"
    if card.exists():
        card.unlink()


def load_adapter_weights(lm, folder: str | Path) -> None:
    """Restore a checkpoint's adapter weights into the PEFT LM (strict on the adapter's keys)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(folder) / "adapter_model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the checkpoint {folder} was not written by a joint (use_peft) "
                                "run, or was only partly written. Resume from another checkpoint.")
    result = set_peft_model_state_dict(lm, load_file(str(path)))
    unexpected = list(getattr(result, "unexpected_keys", []))
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if unexpected or missing:
        raise ValueError(f"{path} does not fit this run's adapter (unexpected keys {unexpected[:3]}, missing "
                         f"{missing[:3]}); check lora_r and lora_target_modules against its adapter_config.json.")


def joint_optimizer(trainer):
    """Joint (use_peft): one optimizer over two groups, the head at ``learning_rate`` and the LoRA adapter at
    ``lora_learning_rate``, Trainer's decay rule (none on biases and norms) in each."""
    model, args = trainer.model, trainer.args
    optimizer_cls, kwargs = trainer.get_optimizer_cls_and_kwargs(args, model)
    decay = set(trainer.get_decay_parameter_names(model))
    groups = []
    for prefix, extra in (("head.", {}), ("lm.", {"lr": args.lora_learning_rate})):
        named = [(n, p) for n, p in model.named_parameters() if n.startswith(prefix) and p.requires_grad]
        for decayed in (True, False):
            params = [p for n, p in named if (n in decay) == decayed]
            if params:
                groups.append({"params": params, "weight_decay": args.weight_decay if decayed else 0.0, **extra})
    return optimizer_cls(groups, **kwargs)
