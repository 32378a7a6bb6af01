"""Every example marked runnable in README.md and docs/*.md runs as written, and every relative link resolves.

The marker is the fence's info string: a block opened with ```` ```python runnable ```` or
```` ```bash runnable ```` runs; ```` ```python runnable slow ```` (or ``bash``) marks one that needs SmolLM2, run
as a slow test. A page's runnable examples run in document order, as a reader following the page would: its
Python blocks share one namespace, and all its blocks (Python and shell) share one working folder (with the
repository's ``recipes/``, ``scripts/`` and ``accelerate_configs/`` linked in), so a later block can use what an
earlier one wrote. A page's slow examples run as a test of their own: they must not depend on its fast ones.

The text of an example is what runs; only the budget is cut, from outside the text, so the whole file stays
near two minutes on two cores:

- shell blocks: ``lpo-train`` on the PATH is a shim that appends ``CLI_OVERRIDES[subcommand]`` (passed in the
  ``LPO_DOCS_TEST_OVERRIDES`` environment variable) to the command line; the CLI's recipe + overrides rule
  (a later flag wins) makes them take effect;
- Python blocks: ``lpo_train.LPOConfig`` builds its config with ``LPOCONFIG_OVERRIDES`` applied.

Tracebacks of a Python example name the page and its line numbers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from lpo_train.registry import DATASETS, MODELS, REWARDS

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINKED_IN = ("recipes", "scripts", "accelerate_configs")  # what the examples' relative paths name

CLI_OVERRIDES = {
    "train": ["--max_steps", "2", "--num_generations", "2", "--max_completion_length", "8",
              "--toy_prompts_per_family", "8"],
    "evaluate": ["--toy_prompts_per_family", "2", "--num_generations", "2", "--max_completion_length", "8",
                 "--n_boot", "20"],
    "train-value": ["--toy_prompts_per_family", "8", "--num_train_epochs", "1", "--max_completion_length", "8"],
    "generate": ["--toy_prompts_per_family", "1", "--max_completion_length", "8"],
}
LPOCONFIG_OVERRIDES = {"max_steps": 2, "max_completion_length": 16, "toy_prompts_per_family": 8}

# What a page's examples leave behind (beyond running without an error).
EXPECTED_FILES = {
    "README.md": ["outputs/toy_lpo_seq/model.safetensors", "outputs/eval_mixed_seq/report.md",
                  "outputs/eval_mixed_seq/results.json", "outputs/toy_value_implicit_lora/adapter_config.json",
                  "outputs/eft_lora.jsonl"],
    "docs/engine.md": ["my-head/config.json", "my-head/model.safetensors"],
    "docs/training.md": ["outputs/toy_lpo_seq/model.safetensors", "outputs/toy_lpo_joint/adapter_model.safetensors",
                         "outputs/toy_lpo_joint/model.safetensors", "outputs/toy_lpo_likelihood/model.safetensors"],
    "docs/guidance.md": ["outputs/toy_value_implicit_lora/adapter_config.json", "outputs/eft_lora.jsonl"],
}

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


@dataclass
class Example:
    page: Path
    line: int  # the first line of the code, 1-based
    lang: str
    slow: bool
    code: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def _info_runnable(info: str) -> tuple[str, bool] | None:
    words = info.split()
    if "runnable" not in words:
        return None
    assert words[0] in ("python", "bash") and words[1:] in (["runnable"], ["runnable", "slow"]), (
        f"a runnable example's info string is 'python|bash runnable [slow]', got {info!r}")
    return words[0], words[1:] == ["runnable", "slow"]


def examples(page: Path) -> list[Example]:
    text = page.read_text()
    out = []
    for m in FENCE.finditer(text):
        marker = _info_runnable(m.group(1))
        if marker is not None:
            line = text.count("\n", 0, m.start(2)) + 1
            out.append(Example(page, line, marker[0], marker[1], m.group(2)))
    return out


def _groups() -> list:
    params = []
    for page in PAGES:
        found = examples(page)
        for slow in (False, True):
            group = [e for e in found if e.slow == slow]
            if group:
                name = str(page.relative_to(ROOT)) + (" [slow]" if slow else "")
                params.append(pytest.param(group, id=name, marks=[pytest.mark.slow] if slow else []))
    return params


def _shim(bin_dir: Path) -> None:
    bin_dir.mkdir()
    shim = bin_dir / "lpo-train"
    shim.write_text(f"""#!{sys.executable}
import json, os, sys
from lpo_train.cli import main
argv = sys.argv[1:]
command = next((a for a in argv if not a.startswith("-")), None)
main(argv + json.loads(os.environ.get("LPO_DOCS_TEST_OVERRIDES", "{{}}")).get(command, []))
""")
    shim.chmod(0o755)


def _run_shell(example: Example, cwd: Path, env: dict) -> None:
    result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", example.code], check=False, cwd=cwd,
                            env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-4000:]
        pytest.fail(f"{example.where}: the shell example exited {result.returncode}:\n{example.code}\n...\n{tail}")


@pytest.mark.parametrize("group", _groups())
def test_runnable_examples(group: list[Example], toy_lm_folder, tmp_path, monkeypatch):
    import lpo_train
    from lpo_train.trainers import LPOConfig

    if any(re.search(r"^from vllm|^import vllm", e.code, flags=re.MULTILINE) for e in group) and \
            os.environ.get("LPO_TRAIN_REQUIRE_VLLM") != "1":
        pytest.importorskip("vllm", reason="the page's examples use vLLM (make test installs its CPU build)")
    work = tmp_path / "work"
    work.mkdir()
    for name in LINKED_IN:
        (work / name).symlink_to(ROOT / name)
    _shim(tmp_path / "bin")
    env = dict(os.environ, LPO_DOCS_TEST_OVERRIDES=json.dumps(CLI_OVERRIDES),
               PATH=os.pathsep.join([str(tmp_path / "bin"), str(Path(sys.executable).parent), os.environ["PATH"]]))

    def small_config(*args, **kwargs):
        return LPOConfig(*args, **{**kwargs, **LPOCONFIG_OVERRIDES})

    monkeypatch.setattr(lpo_train, "LPOConfig", small_config, raising=False)
    for registry in (REWARDS, DATASETS, MODELS):  # a page's own entries do not outlive its test
        registry.entries()
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
        monkeypatch.setattr(registry, "_extras", dict(registry._extras))
    monkeypatch.chdir(work)
    namespace: dict = {"__name__": "__docs_example__"}
    for example in group:
        if example.lang == "bash":
            _run_shell(example, work, env)
        else:  # padded so that a traceback's line numbers are the page's
            code = compile("\n" * (example.line - 1) + example.code, str(example.page), "exec")
            exec(code, namespace)  # noqa: S102

    page = str(group[0].page.relative_to(ROOT))
    if not group[0].slow:
        missing = [f for f in EXPECTED_FILES.get(page, []) if not (work / f).exists()]
        assert not missing, f"{page}'s examples did not write {missing}"
    if page == "docs/training.md":  # the joint LPO example: base + adapter + head in one object
        assert type(namespace["model"].model).__name__.startswith("PeftModel")


def test_runnable_examples_exist():
    """The marker is found (a renamed marker would silently run nothing), and SmolLM2 examples are slow."""
    found = {str(p.relative_to(ROOT)): examples(p) for p in PAGES}
    readme = found["README.md"]
    assert [e.lang for e in readme] == ["bash", "bash", "bash"], "the README's three quick starts are runnable"
    for page in ("docs/engine.md", "docs/training.md", "docs/guidance.md", "docs/models_and_recipes.md"):
        assert found[page], f"{page} has no runnable example"
    for e in (e for page in found.values() for e in page):
        if re.search(r"smollm2", re.sub(r"#.*", "", e.code), flags=re.IGNORECASE):  # outside comments
            assert e.slow, f"{e.where} needs SmolLM2: mark it 'runnable slow'"


# ---- links ------------------------------------------------------------------------------------------------------

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def github_anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings (lower case, punctuation dropped, spaces to '-', repeats
    numbered), outside fenced code."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.MULTILINE | re.DOTALL)
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", text, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path):
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.MULTILINE | re.DOTALL)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in github_anchors(dest):
            broken.append(f"{target} (no heading with that anchor in {dest.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"
