"""A trained head and its base model in one object, used like a transformers model.

    model = AdaptiveDecoderForCausalLM.from_pretrained("me/my-head")      # reads the base from the head
    tokenizer = model.tokenizer                                            # or AutoTokenizer of the base
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    out = model.generate(**inputs, max_new_tokens=64)                      # prompt + new tokens, like HF

``generate`` runs the one engine with the head as the rule (``selection``: argmax, sample or mixture;
any level and knob), so its outputs are the engine's; it takes HF-style arguments and returns HF's
layout: [rows, prompt width + new tokens], left padding kept, ``pad_token_id`` after EOS.
"""

from __future__ import annotations

import torch


class AdaptiveDecoderForCausalLM:
    def __init__(self, model, tokenizer, head, selection: str = "argmax"):
        from lpo_train.decoding import AdaptiveDecoderRule

        self.model, self.tokenizer, self.head = model, tokenizer, head
        self.rule = AdaptiveDecoderRule(head, selection, model=model)  # checks the hidden size

    @classmethod
    def from_pretrained(cls, head_name_or_path, selection: str = "argmax", dtype: str = "float32",
                        base_model: str | None = None, **head_kwargs) -> AdaptiveDecoderForCausalLM:
        """The head (folder or Hub repo; ``head_kwargs``: huggingface_hub's download options) and the base
        model its config names (a PEFT adapter too, when the head was trained on one, and the head's own
        LoRA adapter when it was trained jointly with one); ``base_model`` overrides it."""
        from lpo_train.heads import AdaptiveDecoderHead
        from lpo_train.models.loading import load_causal_lm

        head = AdaptiveDecoderHead.from_pretrained(head_name_or_path, **head_kwargs)
        # a head trained jointly with a LoRA adapter (use_peft) keeps the adapter in its own folder / repo
        joint = head.config.extra.get("adapter_in_repo") and base_model is None
        spec = str(head_name_or_path) if joint else (base_model or head.config.extra.get("adapter")
                                                     or head.config.base_model)
        if not spec:
            raise ValueError(f"The head at {head_name_or_path} records no base model (config.json base_model); "
                             "pass base_model='...'.")
        try:
            model, tokenizer = load_causal_lm(spec, dtype)
        except OSError as e:
            if base_model is not None or joint:
                raise
            field = "extra.adapter" if head.config.extra.get("adapter") else "base_model"
            raise FileNotFoundError(
                f"The head at {head_name_or_path} names its base model {spec!r} in its config.json ({field}, recorded "
                f"when it was trained), and that model cannot be loaded: {e} Give the base model explicitly: "
                f"AdaptiveDecoderForCausalLM.from_pretrained({str(head_name_or_path)!r}, base_model='<folder or Hub "
                "id>') (or correct base_model in the head's config.json).") from e
        return cls(model, tokenizer, head.to(next(model.parameters()).device), selection)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 max_new_tokens: int = 64, num_return_sequences: int = 1, top_k: int = 0, top_p: float = 1.0,
                 min_p: float = 0.0, seed: int = 0, stop_strings=None, return_traces: bool = False, **kwargs):
        """``input_ids`` [B, L] (left- or right-padded with ``attention_mask``) -> [B x num_return_sequences,
        L + max_new_tokens] like HF ``generate`` (rows prompt-major); ``return_traces`` also returns the
        engine's traces (the head's choices and values per step)."""
        from lpo_train.decoding import SamplingParams, generate

        unknown = set(kwargs) - {"pad_token_id", "do_sample"}
        if unknown or kwargs.get("do_sample", True) is False:
            raise TypeError(f"generate got arguments it does not support: {sorted(unknown or {'do_sample=False'})}. "
                            "The head chooses the decoding knob (temperature: 0 is greedy) at every decision; "
                            "supported: max_new_tokens, num_return_sequences, top_k, top_p, min_p, seed, "
                            "stop_strings, pad_token_id.")
        ids = torch.as_tensor(input_ids)
        if ids.dim() == 1:
            ids = ids[None]
        mask = torch.ones_like(ids) if attention_mask is None else torch.as_tensor(attention_mask)
        prompts = [row[m.bool()].tolist() for row, m in zip(ids.cpu(), mask.cpu())]
        traces = generate(self.model, self.tokenizer, prompts, self.rule, SamplingParams(
            max_new_tokens=max_new_tokens, num_samples=num_return_sequences, top_k=top_k, top_p=top_p, min_p=min_p,
            seed=seed, stop_strings=tuple(stop_strings or ())))
        pad = kwargs.get("pad_token_id", self.tokenizer.pad_token_id)
        pad = pad if pad is not None else self.tokenizer.eos_token_id
        out = torch.full((len(traces), ids.shape[1] + max_new_tokens), pad, dtype=torch.long)
        for r, t in enumerate(traces):
            out[r, :ids.shape[1]] = ids[t.prompt_index]
            out[r, ids.shape[1]:ids.shape[1] + len(t.token_ids)] = torch.tensor(t.token_ids, dtype=torch.long)
        out = out.to(ids.device)
        return (out, traces) if return_traces else out
