"""Hub export against a local mock of the Hub's HTTP API (no network)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.mock_hub import MockHub

ROOT = Path(__file__).resolve().parents[1]


def _hub_env(url, tmp_path):
    env = {**os.environ, "HF_ENDPOINT": url, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
           "HF_TOKEN": "hf_fake", "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": str(ROOT),
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    return env


def test_head_push_to_hub_and_from_pretrained_round_trip(tmp_path):
    with MockHub() as hub:
        out = subprocess.run([sys.executable, str(ROOT / "tests" / "helpers" / "hub_roundtrip.py"), "tester/my-head"],
                             env=_hub_env(hub.url, tmp_path), capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "ROUNDTRIP OK" in out.stdout
        assert set(hub.repos["tester/my-head"]) == {"config.json", "model.safetensors", "README.md"}
        assert b"AdaptiveDecoder head" in hub.repos["tester/my-head"]["README.md"]
        with_cg = hub.repos["tester/my-head-cg"]
        assert {"custom_generate/generate.py", "custom_generate/requirements.txt"} <= set(with_cg)
        assert b"HEAD = 'tester/my-head-cg'" in with_cg["custom_generate/generate.py"]  # the repo, not a temp path


@pytest.mark.slow
def test_lpo_training_pushes_the_head_with_its_card(toy_lm_folder, tmp_path):
    recipe = ROOT / "recipes" / "toy" / "lpo_seq.yaml"
    with MockHub() as hub:
        out = subprocess.run(
            [sys.executable, "-m", "lpo_train.cli", "train", "--config", str(recipe), "--max_steps", "1",
             "--toy_prompts_per_family", "4", "--output_dir", str(tmp_path / "out"), "--push_to_hub", "true",
             "--hub_model_id", "tester/toy-lpo-seq", "--save_strategy", "no"],
            env=_hub_env(hub.url, tmp_path), capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert out.returncode == 0, out.stderr[-3000:]
        files = hub.repos["tester/toy-lpo-seq"]
        assert {"config.json", "model.safetensors", "README.md"} <= set(files)
        card = files["README.md"].decode()
        assert "| loss | lpo |" in card and "AdaptiveDecoder head" in card
        assert len(files["model.safetensors"]) < 2_000_000  # the head, never the frozen LM


@pytest.mark.slow
def test_joint_training_pushes_head_and_adapter_with_one_card_and_loads_back(toy_lm_folder, tmp_path):
    recipe = ROOT / "recipes" / "toy" / "lpo_joint_lora.yaml"
    with MockHub() as hub:
        env = _hub_env(hub.url, tmp_path)
        out = subprocess.run(
            [sys.executable, "-m", "lpo_train.cli", "train", "--config", str(recipe), "--max_steps", "2",
             "--toy_prompts_per_family", "8", "--output_dir", str(tmp_path / "out"), "--push_to_hub", "true",
             "--hub_model_id", "tester/toy-joint", "--save_strategy", "no"],
            env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert out.returncode == 0, out.stderr[-3000:]
        files = hub.repos["tester/toy-joint"]
        assert {"config.json", "model.safetensors", "adapter_config.json", "adapter_model.safetensors",
                "README.md"} <= set(files)
        card = files["README.md"].decode()
        assert card.count("# AdaptiveDecoder head") == 1 and "LoRA adapter" in card and "| loss | lpo_joint |" in card
        load = ("from lpo_train import AdaptiveDecoderForCausalLM\n"
                "m = AdaptiveDecoderForCausalLM.from_pretrained('tester/toy-joint')\n"
                "print(type(m.model).__name__, m.head.config.level)")
        back = subprocess.run([sys.executable, "-c", load], env=env, capture_output=True, text=True, timeout=300,
                              cwd=tmp_path)
        assert back.returncode == 0, back.stderr[-3000:]
        assert back.stdout.split()[-2:] == ["PeftModelForCausalLM", "sequence"]
