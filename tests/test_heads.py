import json
import math

import pytest
import torch

from lpo_train import GRID_PRESETS, AdaptiveDecoderConfig, AdaptiveDecoderHead
from lpo_train.decoding import AdaptiveDecoderRule


def test_uniform_at_init_and_paper_shape():
    head = AdaptiveDecoderHead(AdaptiveDecoderConfig(hidden_size=48, grid="default"))
    x = torch.randn(7, 48) * 10
    assert torch.equal(head(x), torch.zeros(7, 6))  # zero-initialised last layer
    assert torch.equal(torch.softmax(head(x), -1), torch.full((7, 6), 1 / 6))
    assert torch.allclose(head.log_probs(x), torch.full((7, 6), -math.log(6)))
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(48, 96), (96, 96), (96, 6)]
    assert sum(isinstance(m, torch.nn.SiLU) for m in head.mlp) == 2
    big = AdaptiveDecoderConfig(hidden_size=4096)
    assert big.head_hidden_size == 2048  # the paper's size for 8B-class models


def test_presets():
    assert GRID_PRESETS["repetition"] == (0.0, 0.1, 0.2, 0.4, 0.6)
    assert AdaptiveDecoderConfig(hidden_size=8, grid="majority5").grid == (0.0, 0.4, 0.8, 1.0, 1.2)
    assert AdaptiveDecoderConfig(hidden_size=8, grid=[0, 1]).grid == (0.0, 1.0)


@pytest.mark.parametrize("grid,match", [
    ([], "empty"), ([0.2, -0.1], ">= 0"), ([0.2, 0.2], "duplicate"), ("hot", "preset"),
    ([0.0, float("nan")], "finite"),
])
def test_invalid_grids_are_rejected(grid, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveDecoderConfig(hidden_size=8, grid=grid)


@pytest.mark.parametrize("kwargs,match", [
    ({"knob": "top_p", "grid": [0.5, 1.5]}, r"\(0, 1\]"), ({"knob": "top_k", "grid": [1, 2.5]}, "whole"),
    ({"knob": "beam"}, "knob"), ({"level": "word"}, "level"), ({"knob": "min_p", "grid": [0, 1]}, r"\[0, 1\)"),
])
def test_invalid_knob_settings_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveDecoderConfig(hidden_size=8, **kwargs)


def test_save_load_round_trip_bit_identical(tmp_path):
    head = AdaptiveDecoderHead(AdaptiveDecoderConfig(hidden_size=16, grid="majority4", level="token",
                                                     base_model="my/base"))
    with torch.no_grad():
        for p in head.parameters():
            p.normal_()
    head.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["base_model"] == "my/base" and config["hidden_size"] == 16 and config["level"] == "token"
    assert config["knob"] == "temperature" and config["grid"] == [0.0, 0.4, 0.8, 1.0]
    again = AdaptiveDecoderHead.from_pretrained(tmp_path)
    for (k, a), (k2, b) in zip(head.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = torch.randn(3, 16)
    assert torch.equal(head(x), again(x))
    card = (tmp_path / "README.md").read_text()
    assert "base_model: my/base" in card and "AdaptiveDecoderHead.from_pretrained" in card


def test_hidden_size_mismatch_is_a_clear_error(tiny_lm):
    model, _ = tiny_lm
    head = AdaptiveDecoderHead(AdaptiveDecoderConfig(hidden_size=model.config.hidden_size + 1, base_model="x"))
    with pytest.raises(ValueError, match=f"expects hidden size {model.config.hidden_size + 1}"):
        AdaptiveDecoderRule(head, model=model)
    AdaptiveDecoderRule(AdaptiveDecoderHead.for_model(model), model=model)  # the right size passes


def test_from_pretrained_missing_folder_content(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        AdaptiveDecoderHead.from_pretrained(tmp_path / "empty")


def test_artifact_is_huggingface_hubs_mixin_and_a_resave_replaces_the_card(tmp_path):
    from huggingface_hub import ModelCard, PyTorchModelHubMixin

    head = AdaptiveDecoderHead(AdaptiveDecoderConfig(hidden_size=8, base_model="org/base"))
    assert isinstance(head, PyTorchModelHubMixin)
    head.save_pretrained(tmp_path, model_card_kwargs={"extra_sections": "| loss | lpo_run_one |\n"})
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model == "org/base" and card.data.library_name == "lpo-train"
    assert "| loss | lpo_run_one |" in card.text
    head.save_pretrained(tmp_path)  # a second save into the same folder: no stale card rows
    assert "lpo_run_one" not in (tmp_path / "README.md").read_text()
    # a head saved before input_norm existed reads raw states
    config = json.loads((tmp_path / "config.json").read_text())
    del config["input_norm"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    state = {k: v for k, v in head.state_dict().items() if not k.startswith("input_")}
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "model.safetensors"))
    assert AdaptiveDecoderHead.from_pretrained(tmp_path).config.input_norm == "none"


def test_from_pretrained_errors_name_the_artifact(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="no such local folder, and as a Hub repo id it could not be fetched"):
        AdaptiveDecoderHead.from_pretrained("nobody/no-such-head")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    with pytest.raises(ValueError, match="does not hold an AdaptiveDecoder head"):
        AdaptiveDecoderHead.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8, "gird": [0, 1]}))
    with pytest.raises(ValueError, match="not an AdaptiveDecoder config.*gird"):
        AdaptiveDecoderHead.from_pretrained(tmp_path)


def test_save_pretrained_state_dict_override_and_bad_arguments(tmp_path):
    head = AdaptiveDecoderHead(AdaptiveDecoderConfig(hidden_size=8))
    other = {k: torch.full_like(v, 0.5) for k, v in head.state_dict().items()}
    assert head.save_pretrained(tmp_path, state_dict=other) == tmp_path  # e.g. weights gathered from ZeRO-3
    again = AdaptiveDecoderHead.from_pretrained(tmp_path, map_location="cpu")
    assert all(torch.equal(v, other[k]) for k, v in again.state_dict().items())
    assert not torch.equal(head.mlp[-1].weight, again.mlp[-1].weight)  # the live head is untouched
    with pytest.raises(TypeError, match="model_card_kwargs"):
        head.save_pretrained(tmp_path, model_card="# my card")
    with pytest.raises(TypeError, match="unexpected arguments"):
        head.save_pretrained(tmp_path, safe_serialization=False)
    with pytest.raises(ValueError, match="unexpected arguments .*strict"):
        AdaptiveDecoderHead.from_pretrained(tmp_path, strict=False)
