"""Run in a subprocess with HF_ENDPOINT pointing at the mock Hub: push a head, pull it back."""

import sys

import torch

from lpo_train import AdaptiveDecoderConfig, AdaptiveDecoderHead

head = AdaptiveDecoderHead(AdaptiveDecoderConfig(hidden_size=16, grid="majority4", level="token", base_model="toy"))
with torch.no_grad():
    for p in head.parameters():
        p.normal_()
head.push_to_hub(sys.argv[1])
again = AdaptiveDecoderHead.from_pretrained(sys.argv[1])
x = torch.randn(4, 16)
assert torch.equal(head(x), again(x)), "round trip changed the head"
assert again.config.grid == (0.0, 0.4, 0.8, 1.0) and again.config.level == "token"
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

with tempfile.TemporaryDirectory() as cache:  # huggingface_hub's download options pass through
    cached = AdaptiveDecoderHead.from_pretrained(sys.argv[1], cache_dir=cache, token="hf_fake", force_download=True)
    assert torch.equal(head(x), cached(x)) and any(Path(cache).rglob("model.safetensors"))
head.push_to_hub(sys.argv[1] + "-cg", custom_generate=True)  # with the plain-transformers entry point
print("ROUNDTRIP OK")
