import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from lpo_train.models import CHATML_TEMPLATE, build_reward_model, build_tiny_lm, train_bpe_tokenizer


@pytest.mark.parametrize("text", ["Hello, world!", "  two  spaces\nand a newline", "héllo ✓ 日本語 🙂", ""])
def test_tokenizer_round_trip(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_tokenizer_special_tokens_and_chat_template(tokenizer):
    assert tokenizer.chat_template == CHATML_TEMPLATE
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|pad|>"
    assert len({tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id}) == 3
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 2  # special tokens stay atomic


def test_tokenizer_vocab_size_and_empty_input():
    tok = train_bpe_tokenizer(["abc abd abe " * 50], vocab_size=300)
    assert len(tok) <= 300
    with pytest.raises(ValueError, match="at least one text"):
        train_bpe_tokenizer([])


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_lm_save_load_identical(tokenizer, tmp_path, arch):
    model = build_tiny_lm(tokenizer, hidden_size=32, num_layers=2, arch=arch)
    assert not model.training
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    ids = torch.tensor([tok2("a small test")["input_ids"]])
    assert again.config.model_type == arch
    assert torch.equal(model(ids).logits, again(ids).logits)
    assert tok2.chat_template == tokenizer.chat_template


def test_reward_model_scores_one_logit_and_reloads(tokenizer, tmp_path):
    rm = build_reward_model(tokenizer)
    rm.save_pretrained(tmp_path)
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    batch = tokenizer(["good answer", "a much longer and worse answer"], return_tensors="pt", padding=True)
    out = again(**batch).logits
    assert out.shape == (2, 1)
    assert torch.allclose(out, rm(**batch).logits)


def test_unknown_architecture_is_rejected(tokenizer):
    with pytest.raises(ValueError, match="llama"):
        build_tiny_lm(tokenizer, arch="mamba9")
