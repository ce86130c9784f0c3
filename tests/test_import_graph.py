"""The import graph of crc_core: one-way (no cycles), every dependency visible as an import.

The graph is read from the source with :mod:`ast` — every ``import`` and ``from … import``
statement, at module level or inside a function — so a dependency hidden in a function still
counts, and one reached through :mod:`importlib` (invisible here) is refused: the only
``importlib`` use allowed is the lazy submodule access of ``crc_core/__init__.py``.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set

import pytest

PACKAGE = "crc_core"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> Dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(name: str, modules: Dict[str, Path]) -> Optional[str]:
    """The crc_core module ``name`` refers to (itself, or the module holding the attribute)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(path: Path, modules: Dict[str, Path]) -> Set[str]:
    """crc_core modules imported anywhere in ``path``."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        targets: List[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # ``from pkg import name``: the submodule pkg.name if there is one, else pkg itself
            targets = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in modules else stem
                       for alias in node.names]
        for target in targets:
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                resolved = _resolve(target, modules)
                if resolved is not None and resolved != me:
                    out.add(resolved)
    return out


def _graph() -> Dict[str, Set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) for name, path in modules.items()}


def _find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    state: Dict[str, int] = {}                        # 1: on the stack, 2: done
    stack: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if state.get(nxt) is None:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if state.get(node) is None:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_reader_sees_every_kind_of_import():
    """The reader itself: relative and absolute, module-level and in-function imports."""
    graph = _graph()
    assert "crc_core.baselines.crown" in graph["crc_core.baselines"]             # from . import crown
    assert "crc_core.checks" in graph["crc_core.baselines.relaxations"]          # from .. import checks
    assert "crc_core.activations" in graph["crc_core.baselines.relaxations"]     # from ..activations import …
    assert "crc_core.baselines" in graph["crc_core.training"]                    # the losses, in the open
    assert "crc_core.models" in graph["crc_core"]


def test_a_cycle_is_found():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles():
    cycle = _find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_baselines_do_not_import_training_or_the_experiments():
    graph = _graph()
    downstream = {"crc_core.training", "crc_core.experiments"}
    for name, deps in graph.items():
        if name.startswith("crc_core.baselines"):
            assert not deps & downstream, (name, deps & downstream)


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")), ids=lambda p: _module_name(p))
def test_no_hidden_imports(path):
    """No importlib / __import__ in crc_core, but for the package's lazy submodule access."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "importlib" for a in node.names):
            uses.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "importlib":
            uses.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id == "__import__":
            uses.append(node.lineno)
    if path == ROOT / "__init__.py":
        # allowed: importlib.import_module inside __getattr__ (``crc_core.hessian`` on first use)
        lazy = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "__getattr__"]
        inside = {id(n) for f in lazy for n in ast.walk(f)}
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Name)
                 and n.func.value.id == "importlib"]
        assert all(id(c) in inside for c in calls), "importlib used outside __getattr__"
        return
    assert not uses, f"{_module_name(path)} imports through importlib / __import__ at lines {uses}"
