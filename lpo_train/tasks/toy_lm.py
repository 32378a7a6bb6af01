"""Pretrain the toy world's LMs (small and base, one shared tokenizer) and cache them."""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch

from lpo_train.cache import cache_dir
from lpo_train.models.kit import build_tiny_lm, train_bpe_tokenizer
from lpo_train.tasks.toy import NAME, TOY_SIZES, make_corpus
from lpo_train.utils.io import atomic_path

WORLD_VERSION = 1  # bump when the world or the recipe changes, so stale caches are not reused
SEQ_LEN = 96


def toy_tokenizer(seed: int = 0):
    """The world's byte-level BPE, trained on its own corpus (shared by every size)."""
    docs = make_corpus(n_docs=4000, seed=seed)
    return train_bpe_tokenizer([_render(d) for d in docs], vocab_size=1024)


def _render(doc: dict) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in doc["messages"])


def _batches(tokenizer, docs, batch_size: int, rng: random.Random):
    texts = [tokenizer.apply_chat_template(d["messages"], tokenize=False) for d in docs]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    pad = tokenizer.pad_token_id
    while True:
        rng.shuffle(ids)
        for i in range(0, len(ids) - batch_size + 1, batch_size):
            chunk = [x[:SEQ_LEN] for x in ids[i:i + batch_size]]
            width = max(map(len, chunk))
            input_ids = torch.full((batch_size, width), pad)
            labels = torch.full((batch_size, width), -100)
            for r, x in enumerate(chunk):  # right padding for training; loss ignores padding
                input_ids[r, :len(x)] = torch.tensor(x)
                labels[r, :len(x)] = torch.tensor(x)
            yield input_ids, (labels != -100).long(), labels


def pretrain_toy_lm(size: str = "small", seed: int = 0, steps: int | None = None,
                    lr: float = 3e-3, device: str = "cpu", log_every: int = 250,
                    output_dir: str | Path | None = None) -> Path:
    """Train a toy LM from scratch on the world's corpus; returns the saved folder.

    ``steps`` overrides the size's default (use more, and ``device="cuda"``, on a GPU).
    """
    if size not in TOY_SIZES:
        raise ValueError(f"Unknown toy size {size!r}; choose from {sorted(TOY_SIZES)}.")
    spec = TOY_SIZES[size]
    steps = steps or spec.steps
    torch.manual_seed(seed)
    tokenizer = toy_tokenizer(seed)
    model = build_tiny_lm(tokenizer, spec.hidden_size, spec.num_layers, spec.num_heads, seed=seed)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    docs = make_corpus(n_docs=max(20000, steps * spec.batch_size // 4), seed=seed)
    data = _batches(tokenizer, docs, spec.batch_size, random.Random(seed))
    start, losses = time.time(), []
    for step in range(steps):
        input_ids, mask, labels = (t.to(device) for t in next(data))
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            print(f"[toy-lm {size} seed={seed}] step {step + 1}/{steps} "
                  f"loss {sum(losses[-log_every:]) / log_every:.4f} ({time.time() - start:.0f}s)", flush=True)
    model.eval().to("cpu")
    target = Path(output_dir) if output_dir else toy_lm_dir(size, seed)
    with atomic_path(target) as tmp:  # a folder without toy_world.json is never taken for a finished model
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = {"size": size, "seed": seed, "steps": steps, "lr": lr, "world_version": WORLD_VERSION,
                "final_loss": sum(losses[-50:]) / len(losses[-50:]), "seconds": time.time() - start}
        (tmp / "toy_world.json").write_text(json.dumps(info, indent=2))
    return target


def toy_lm_dir(size: str = "small", seed: int = 0) -> Path:
    return cache_dir("toy", f"v{WORLD_VERSION}-{size}-seed{seed}")


def toy_lm_path(size: str = "small", seed: int = 0, **pretrain_kwargs) -> Path:
    """The cached toy LM folder, pretraining it first if needed."""
    target = toy_lm_dir(size, seed)
    if not (target / "toy_world.json").exists():
        pretrain_toy_lm(size, seed, **pretrain_kwargs)
    return target


def load_toy_lm(size: str = "small", seed: int = 0):
    """``(model, tokenizer)`` of the pretrained toy LM (pretrains and caches on first use)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = toy_lm_path(size, seed)
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _resolve_spec(spec: str) -> str:
    """'toy' / 'toy:small' / 'toy:base[:SEED]' -> the cached toy LM folder (pretrained on first use)."""
    size, _, seed = spec[len(NAME) + 1:].partition(":")
    size = size or "small"
    if size not in TOY_SIZES or not (seed or "0").isdigit():
        raise ValueError(f"The toy LM spec is '{NAME}:SIZE[:SEED]' with SIZE one of {sorted(TOY_SIZES)} and SEED an "
                         f"integer, got {spec!r}.")
    return str(toy_lm_path(size, int(seed or 0)))


def _register() -> None:
    from lpo_train.registry import register_model

    register_model(NAME, _resolve_spec)  # 'toy', 'toy:small', 'toy:base', 'toy:base:SEED'


_register()
