"""Every evaluation config (recipes/**/eval_*.yaml) starts with its command and parses into an EvalConfig."""

from pathlib import Path

import pytest
from trl import TrlParser

from lpo_train.evaluation.harness import EvalConfig, parse_strategy

EVAL_RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").rglob("eval_*.yaml"))


def test_there_are_evaluation_recipes_for_the_replications():
    names = {p.name for p in EVAL_RECIPES}
    assert {"eval_mixed_seq.yaml", "eval_constrained_tok.yaml", "eval_repetition.yaml", "eval_loss_ablation.yaml",
            "eval_rules.yaml"} <= names


@pytest.mark.parametrize("recipe", EVAL_RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_eval_recipe_has_its_command_and_parses(recipe, tmp_path):
    header = [line for line in recipe.read_text().splitlines() if line.startswith("#")]
    assert any(f"--config {recipe.parent.parent.name}/{recipe.parent.name}/{recipe.name}" in line for line in header)
    (config,) = TrlParser(dataclass_types=[EvalConfig]).parse_args_and_config(
        ["--config", str(recipe), "--output_dir", str(tmp_path)])
    assert config.temperatures and config.reward_funcs and config.num_generations >= 2
    assert all(parse_strategy(s)[0] in ("head", "edt", "dynatemp", "min_p", "kld") for s in config.strategies)
