import os
from pathlib import Path

# Tests never touch the network; converted/pretrained models are cached inside the checkout.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("LPO_TRAIN_CACHE", str(Path(__file__).resolve().parents[1] / ".cache"))
# trackio reads its folder once, at import: point it inside the checkout before anything imports it
os.environ.setdefault("TRACKIO_DIR", str(Path(os.environ["LPO_TRAIN_CACHE"]) / "trackio"))

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    from lpo_train.models import train_bpe_tokenizer

    return train_bpe_tokenizer(vocab_size=512)


@pytest.fixture(scope="session")
def tiny_lm_path(tokenizer, tmp_path_factory):
    """A tiny Llama with large random weights (so greedy paths vary), saved to a folder."""
    from lpo_train.models import build_tiny_lm

    model = build_tiny_lm(tokenizer, hidden_size=32, num_layers=2, num_heads=4, seed=0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.5)
    path = tmp_path_factory.mktemp("tiny_lm")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_lm(tiny_lm_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(tiny_lm_path).eval(),
            AutoTokenizer.from_pretrained(tiny_lm_path))


@pytest.fixture(scope="session")
def toy_small():
    """The pretrained small toy LM (pretrained once, ~75 s on 2 cores, then cached)."""
    from lpo_train.tasks.toy_lm import load_toy_lm

    return load_toy_lm("small", 0)


@pytest.fixture(scope="session")
def toy_lm_folder():
    """Folder of the pretrained small toy LM (for APIs that take a path)."""
    from lpo_train.tasks.toy_lm import toy_lm_path

    return toy_lm_path("small", 0)
