"""The README is a short, true front door: under 250 lines, three runnable quick starts, one headline-results
row per result linking to the section of docs/results.md that holds its command, a link to every docs page, and
the default objective as the code has it.

Its quick starts (and the Python examples that used to live in it: the engine, the heads and rules, the one-line
loading, the HF processors, the toy world, LPO and joint LPO, now in docs/engine.md, docs/models_and_recipes.md
and docs/training.md) are run by tests/test_docs_examples.py, which also checks that every link resolves."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _text() -> str:
    return README.read_text()


def test_readme_is_short():
    assert len(_text().splitlines()) < 250


def test_readme_links_every_docs_page():
    linked = set(re.findall(r"\]\((docs/[^)#\s]+\.md)", _text()))
    pages = {str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")}
    assert pages <= linked, f"README does not link {sorted(pages - linked)}"


def test_quick_starts_are_runnable():
    blocks = re.findall(r"^```bash runnable\n(.*?)^```", _text(), flags=re.MULTILINE | re.DOTALL)
    assert len(blocks) == 3
    train, evaluate, guidance = blocks
    assert "lpo-train train --config recipes/toy/" in train
    assert "lpo-train evaluate" in evaluate and "--selection_dataset_seed" in evaluate  # the baselines too
    assert "lpo-train train-value" in guidance and "lpo-train generate" in guidance
    for block in blocks:  # every recipe a quick start names exists
        for recipe in re.findall(r"recipes/\S+\.yaml", block):
            assert (ROOT / recipe).exists(), recipe


def test_headline_results_link_their_sections():
    section = _text().split("## Headline results", 1)[1].split("\n## ", 1)[0]
    rows = [r for r in section.splitlines() if r.startswith("| ") and not r.startswith("| result ")]
    assert len(rows) >= 8
    for row in rows:
        assert re.search(r"\]\(docs/results\.md#[\w-]+\)", row), f"no link to a results.md section: {row}"


def test_default_objective_is_stated_as_the_code_has_it():
    from lpo_train.objectives import DEFAULT_OBJECTIVE
    from lpo_train.trainers import LPOConfig

    text = _text()
    assert f"**The default objective is `loss_type: {DEFAULT_OBJECTIVE}`**" in text
    assert LPOConfig.__dataclass_fields__["loss_type"].default == DEFAULT_OBJECTIVE
    assert "](docs/objectives.md)" in text and "lpo-train check-objective" in text


def test_quick_start_recipe_objective_as_stated():
    """The README says which objective the quick start's recipe trains: it must be the recipe's."""
    import yaml

    from lpo_train.objectives import DEFAULT_OBJECTIVE

    recipe = yaml.safe_load((ROOT / "recipes/toy/lpo_seq.yaml").read_text())
    loss_type = recipe.get("loss_type", DEFAULT_OBJECTIVE)
    text = " ".join(_text().split())
    if loss_type == DEFAULT_OBJECTIVE:
        assert "The recipe pins" not in text, "the recipe now trains the default objective: update the README"
    else:
        assert f"The recipe pins `loss_type: {loss_type}`" in text
