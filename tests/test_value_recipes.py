"""Guided-decoding recipes (value_*.yaml, generate_*.yaml) start with their command and parse."""

from pathlib import Path

import pytest

RECIPES = sorted(p for p in (Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml")
                 if p.name.startswith(("value_", "generate_")))


def test_guided_decoding_recipes_exist():
    names = {f"{p.parent.name}/{p.name}" for p in RECIPES}
    assert {"toy/value_implicit.yaml", "toy/value_implicit_lora.yaml", "smollm2-135m/value_implicit_lora.yaml",
            "toy/value_explicit.yaml", "toy/value_reward.yaml", "toy/generate_ivg.yaml",
            "smollm2-135m/value_implicit.yaml", "smollm2-135m/value_explicit.yaml", "smollm2-135m/generate_ivg.yaml",
            "ivg-paper/generate_imdb_gpt2_ivg.yaml", "ivg-paper/generate_tldr_gpt2_ivg.yaml",
            "ivg-paper/generate_alpacaeval_tulu_cbs.yaml"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_has_its_command_and_parses(recipe, tmp_path):
    from trl import DPOConfig, RewardConfig, TrlParser

    from lpo_train.config import LoraArguments
    from lpo_train.guidance.run import GenerateConfig
    from lpo_train.trainers.value import ExplicitValueConfig, ValueDataArguments

    header = "\n".join(line for line in recipe.read_text().splitlines() if line.startswith("#"))
    rel = f"recipes/{recipe.parent.name}/{recipe.name}"
    if recipe.name.startswith("generate_"):
        assert f"lpo-train generate --config {rel}" in header
        (config,) = TrlParser(dataclass_types=[GenerateConfig]).parse_args_and_config(["--config", str(recipe)])
        assert config.token_guidance in ("implicit", "none") and config.chunk_guidance in ("explicit", "implicit")
        return
    kind = next(k for k in ("implicit", "explicit", "reward") if f"_{k}" in recipe.stem)
    assert f"lpo-train train-value {kind} --config {rel}" in header
    cls = {"implicit": DPOConfig, "explicit": ExplicitValueConfig, "reward": RewardConfig}[kind]
    overrides = ["--output_dir", str(tmp_path), "--bf16", "false", "--use_cpu", "true", "--report_to", "none"]
    classes = [ValueDataArguments, cls] + ([LoraArguments] if kind in ("implicit", "explicit") else [])
    data, args, *lora = TrlParser(dataclass_types=classes).parse_args_and_config(["--config", str(recipe), *overrides])
    assert data.model_name_or_path and data.reward_funcs and data.num_generations >= 2
    if recipe.stem.endswith("_lora"):
        config = lora[0].peft_config()
        assert lora[0].use_peft and config.r == lora[0].lora_r and set(config.target_modules) >= {"q_proj", "v_proj"}
