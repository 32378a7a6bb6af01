"""The README's Python blocks run as written (on the toy LM instead of SmolLM2, with a short budget)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.slow
def test_quick_start_blocks_run(toy_lm_folder, tmp_path, monkeypatch):
    import lpo_train.models
    from lpo_train.models.loading import load_causal_lm

    monkeypatch.chdir(tmp_path)  # outputs/ and my-head/ are written here
    monkeypatch.setattr(lpo_train.models, "load_smollm2", lambda: load_causal_lm(str(toy_lm_folder)))
    blocks = _blocks()
    assert len(blocks) >= 6
    namespace: dict = {}
    for code in blocks[:6]:  # quick start, heads and rules, one-line loading, HF processors, toy world, LPO
        code = code.replace("max_steps=32", "max_steps=2")
        exec(compile(code, str(README), "exec"), namespace)  # noqa: S102
    assert (tmp_path / "my-head" / "config.json").exists()
    assert (tmp_path / "outputs" / "toy_lpo_seq" / "model.safetensors").exists()


@pytest.mark.slow
def test_joint_lora_block_runs(toy_lm_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (code,) = [b for b in _blocks() if "use_peft=True" in b]
    namespace: dict = {}
    exec(compile(code.replace("max_steps=64", "max_steps=2"), str(README), "exec"), namespace)  # noqa: S102
    assert (tmp_path / "outputs" / "toy_lpo_joint" / "adapter_model.safetensors").exists()
    assert type(namespace["model"].model).__name__.startswith("PeftModel")
