"""No import cycles among the modules of src/ (read with ast, nothing imported).

An import counts wherever it runs: at module level and inside functions (an import moved into a
method to dodge a cycle is still a cycle a reader has to hold in their head), but not under
``if TYPE_CHECKING:`` (annotations only). ``from package import name`` points at the submodule when
``name`` is one, else at the package. Parent packages are not edges: their ``__init__`` files load
names lazily and would make every package look circular.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGES = {"reconvla_core": SRC / "reconvla_core", "reconvla_ros": SRC / "reconvla_ros"}

# Cycles known to exist, each to be deleted here when it is fixed (the test then fails until it is).
KNOWN_CYCLES: set[frozenset[str]] = set()


def _modules() -> dict[str, Path]:
    modules = {}
    for package, root in PACKAGES.items():
        for path in (root / package).rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The modules of ``modules`` that ``path`` (module ``name``) imports at run time."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def target(dotted: str) -> str | None:
        while dotted and dotted not in modules:  # `import a.b.func_module_attr` -> the module a.b
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for statement in child.orelse:
                    visit_one(statement)
            else:
                visit_one(child)

    def visit_one(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.update(t for alias in node.names if (t := target(alias.name)))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.update(t for t in [submodule if submodule in modules else target(base)] if t)
        else:
            visit(node)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    found.discard(name)
    return found


def import_cycles() -> list[frozenset[str]]:
    """The strongly connected components (Tarjan) of more than one module in the import graph."""
    modules = _modules()
    graph = {name: sorted(_imports(path, name, modules)) for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[frozenset[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(frozenset(component))

    for name in sorted(graph):
        if name not in index:
            connect(name)
    return cycles


def test_no_import_cycles_in_src():
    cycles = import_cycles()
    new = [sorted(c) for c in cycles if c not in KNOWN_CYCLES]
    assert not new, f"import cycles: {new} (move the shared part into a module both can import)"
    fixed = [sorted(c) for c in KNOWN_CYCLES if c not in cycles]
    assert not fixed, f"{fixed} is no longer a cycle: remove it from KNOWN_CYCLES"


def test_the_cycle_finder_sees_a_lazy_import_and_skips_type_checking(tmp_path, monkeypatch):
    package = tmp_path / "pkg"
    (package / "pkg").mkdir(parents=True)
    (package / "pkg" / "__init__.py").write_text("")
    (package / "pkg" / "a.py").write_text("def f():\n    from pkg import b\n")
    (package / "pkg" / "b.py").write_text("from pkg.a import f\n")
    (package / "pkg" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n")
    (package / "pkg" / "d.py").write_text("import pkg.c\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGES", {"pkg": package})
    assert import_cycles() == [frozenset({"pkg.a", "pkg.b"})]
