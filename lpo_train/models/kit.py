"""Builders for tokenizers and tiny models that work fully offline.

Tests and the toy world use these so that every "model given as a path" code path runs
without the Hub: build, ``save_pretrained`` to a folder, then load the folder as a user would.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    PreTrainedTokenizerFast,
)

BOS, EOS, PAD = "<|endoftext|>", "<|im_end|>", "<|pad|>"
SPECIAL_TOKENS = [BOS, "<|im_start|>", EOS, PAD]

# ChatML, as used by SmolLM2 and Qwen2: each turn is "<|im_start|>role\ncontent<|im_end|>\n".
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _default_text() -> list[str]:
    # Always present offline: the Python documentation's topic texts.
    from pydoc_data.topics import topics

    return list(topics.values())


def train_bpe_tokenizer(
    texts: Iterable[str] | None = None, vocab_size: int = 1024
) -> PreTrainedTokenizerFast:
    """Train a GPT-2-style byte-level BPE with a ChatML chat template.

    ``texts`` defaults to the standard library's pydoc topics (about 2 MB of English).
    """
    texts = list(texts) if texts is not None else _default_text()
    if not texts:
        raise ValueError("train_bpe_tokenizer needs at least one text to learn merges from.")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        chat_template=CHATML_TEMPLATE,
        padding_side="left",
    )


def _arch_config(arch: str, vocab_size: int, hidden: int, layers: int, heads: int, tok, **extra):
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
        **extra,
    )
    if arch not in ("llama", "qwen2"):
        raise ValueError(f"Unknown tiny architecture {arch!r}; choose 'llama' or 'qwen2'.")
    return AutoConfig.for_model(arch, **common)


def build_tiny_lm(
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    arch: str = "llama",
    seed: int = 0,
):
    """A randomly initialised causal LM (Llama- or Qwen2-style), in eval mode, fp32."""
    config = _arch_config(arch, len(tokenizer), hidden_size, num_layers, num_heads, tokenizer)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def build_reward_model(
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    arch: str = "llama",
    seed: int = 0,
):
    """A randomly initialised sequence-classification reward model (one logit), in eval mode."""
    config = _arch_config(
        arch, len(tokenizer), hidden_size, num_layers, num_heads, tokenizer, num_labels=1
    )
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config).eval()
