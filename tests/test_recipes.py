"""Every recipe starts with the command that runs it and parses into a valid LPOConfig."""

from pathlib import Path

import pytest

from lpo_train.train import parse_config

# LPO training recipes; eval_*.yaml are checked in tests/test_eval_recipes.py, value_*/generate_*.yaml
# (guided decoding) in tests/test_value_recipes.py
RECIPES = sorted(p for p in (Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml")
                 if not p.name.startswith(("eval_", "value_", "generate_")))


def test_there_are_recipes_for_each_setting():
    names = {f"{p.parent.name}/{p.name}" for p in RECIPES}
    assert {"toy/lpo_seq.yaml", "toy/lpo_tok.yaml", "smollm2-135m/lpo_seq.yaml",
            "llama3-8b/ultramathstories_seq.yaml", "llama3-8b/ultramathstories_tok.yaml"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_has_its_command_and_parses(recipe, tmp_path):
    header = [line for line in recipe.read_text().splitlines() if line.startswith("#")]
    assert any(f"--config {recipe.parent.parent.name}/{recipe.parent.name}/{recipe.name}" in line for line in header)
    overrides = ["--output_dir", str(tmp_path)]
    if "llama3" in recipe.parent.name:
        overrides += ["--bf16", "false"]  # bf16 needs a GPU; the rest of the paper setup parses as is
    config = parse_config(["--config", str(recipe), *overrides])
    assert config.num_generations >= 2 and config.grid
    assert config.reward_funcs or config.loss_type == "likelihood"  # the likelihood objective needs no reward
    assert config.level == ("token" if "_tok" in recipe.name else "sequence")


def test_cli_overrides_beat_the_recipe(tmp_path):
    recipe = next(p for p in RECIPES if p.name == "lpo_seq.yaml" and p.parent.name == "toy")
    config = parse_config(["--config", str(recipe), "--beta", "0.25", "--grid", "0", "1", "--output_dir", str(tmp_path)])
    assert config.beta == 0.25 and config.grid == [0.0, 1.0] and config.model_name_or_path == "toy:small"
