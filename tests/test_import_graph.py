"""No import cycles among the decoding modules and among the models modules: each decoding module imports on its
own in a fresh interpreter, and the graph of their imports of one another (module level and inside functions
alike) is acyclic.

Restricted to ``lpo_train.decoding`` and ``lpo_train.models``: elsewhere in the package some lazy imports still go
both ways (registry <-> tasks, trainers.lpo_io <-> trainers.lpo_joint)."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "lpo_train.decoding"
FOLDER = ROOT / Path(*PACKAGE.split("."))
MODULES = sorted(f"{PACKAGE}.{f.stem}" for f in FOLDER.glob("*.py") if f.stem != "__init__")


def _module_file(name: str) -> Path | None:
    path = ROOT / Path(*name.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return path / "__init__.py" if (path / "__init__.py").is_file() else None


def imported_modules(file: Path, package: str) -> set[str]:
    """The lpo_train modules ``file`` imports anywhere in its body (``from pkg import submodule`` counts as the
    submodule, ``from pkg import name`` as the package)."""
    found = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if _module_file(f"{base}.{alias.name}") else base)
    return {m for m in found if m.startswith("lpo_train") and _module_file(m)}


def package_graph(package: str = PACKAGE) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` (and the package itself) it imports."""
    folder = ROOT / Path(*package.split("."))
    names = {f"{package}.{f.stem}" for f in folder.glob("*.py") if f.stem != "__init__"} | {package}
    return {m: (imported_modules(_module_file(m), package) & names) - {m} for m in names}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path [a, b, ..., a], or None (depth-first search, colouring nodes)."""
    state, path = {}, []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"b"}}) == ["b", "b"]


def test_the_graph_sees_lazy_imports(tmp_path):
    file = tmp_path / "m.py"
    file.write_text("def f():\n    from lpo_train.decoding.engine import Trace\n"
                    "from lpo_train.decoding import rules\nfrom . import sampling\n")
    assert imported_modules(file, PACKAGE) == {"lpo_train.decoding.engine", "lpo_train.decoding.rules",
                                               "lpo_train.decoding.sampling"}


@pytest.mark.parametrize("package, edge", [
    ("lpo_train.decoding", ("lpo_train.decoding.rows", "lpo_train.decoding.trace")),
    ("lpo_train.models", ("lpo_train.models.loading", "lpo_train.models.adapters")),
])
def test_no_import_cycle_within_the_package(package, edge):
    graph = package_graph(package)
    assert edge[1] in graph[edge[0]]  # the graph is read, not empty
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


@pytest.mark.parametrize("module", MODULES)
def test_each_decoding_module_imports_alone(module):
    if module.endswith(("vllm_processors", "vllm_head", "vllm_serve")) and os.environ.get("LPO_TRAIN_REQUIRE_VLLM") != "1":
        pytest.importorskip("vllm", reason="vLLM's processors and head model import vLLM (make test installs it)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", f"import {module}"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_trace_keeps_its_public_import_paths():
    from lpo_train.decoding import Trace
    from lpo_train.decoding.engine import Trace as EngineTrace
    from lpo_train.decoding.trace import Trace as OwnTrace

    assert Trace is EngineTrace is OwnTrace
