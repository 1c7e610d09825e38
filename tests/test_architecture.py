"""The import graph of src/ftlab (issue 18), read from the source with ast, so every import statement counts: the ones
at module level, inside functions and classes, and under `if TYPE_CHECKING:`.

* no cycle;
* ftlab modules import each other at module level only (an import inside a function hides a dependency, and a
  cycle, from the reader);
* a method family (a package under ftlab.methods: sparsity, lora, wtacrs, stability, ...) imports nothing from
  another family; the modules directly in ftlab.methods (base, layers, the families' shared helpers) import no family;
* the core (everything outside ftlab.methods) imports no method family: methods are reached through their
  `_target_` only.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "src" / "ftlab"
METHODS = "ftlab.methods"


def module_name(path: Path, root: Path = PACKAGE_DIR) -> str:
    parts = (root.name, *path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imported_modules(path: Path, modules: set[str], root: Path = PACKAGE_DIR) -> dict[str, list[tuple[int, bool]]]:
    """ftlab module -> [(line, inside a function)] of every import statement of the file at `path` that names it;
    `from X import name` counts as an import of X.name when that is a module, else of X."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = module_name(path, root)
    package = name if is_package(path) else name.rpartition(".")[0]
    found: dict[str, list[tuple[int, bool]]] = {}

    def add(target: str, node: ast.stmt, in_function: bool) -> None:
        if target in modules and target != name:
            found.setdefault(target, []).append((node.lineno, in_function))

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name, child, in_function)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    source = ".".join(base + ([child.module] if child.module else []))
                else:
                    source = child.module or ""
                for alias in child.names:
                    submodule = f"{source}.{alias.name}"
                    add(submodule if submodule in modules else source, child, in_function)
            visit(child, inner)

    visit(tree, False)
    return found


def import_graph(root: Path = PACKAGE_DIR) -> tuple[dict[str, dict[str, list[tuple[int, bool]]]], dict[str, Path]]:
    paths = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    modules = set(paths)
    return {m: imported_modules(p, modules, root) for m, p in paths.items()}, paths


def find_cycle(graph: dict[str, dict[str, object]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, {})):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def family_of(module: str, packages: set[str]) -> str | None:
    """The method family (ftlab.methods.<family>, a package) a module belongs to, or None."""
    parts = module.split(".")
    if module.startswith(METHODS + ".") and len(parts) >= 3 and ".".join(parts[:3]) in packages:
        return ".".join(parts[:3])
    return None


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_the_graph_sees_imports_in_functions_and_type_checking_blocks(tmp_path: Path) -> None:
    root = tmp_path / "ftlab"
    (root / "sub").mkdir(parents=True)
    for name in ("__init__.py", "a.py", "b.py", "sub/__init__.py", "sub/c.py"):
        (root / name).write_text("")
    (root / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .sub import c\n")
    (root / "sub" / "c.py").write_text("def f():\n    from ..b import x\n    return x\n")
    (root / "b.py").write_text("class K:\n    def g(self):\n        import ftlab.a\n")
    graph, _ = import_graph(root)
    assert graph["ftlab.a"] == {"ftlab.sub.c": [(3, False)]}
    assert graph["ftlab.sub.c"] == {"ftlab.b": [(2, True)]}
    assert graph["ftlab.b"] == {"ftlab.a": [(3, True)]}
    assert find_cycle(graph) == ["ftlab.a", "ftlab.sub.c", "ftlab.b", "ftlab.a"]


def test_no_import_cycle(graph) -> None:
    imports, _ = graph
    cycle = find_cycle(imports)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_ftlab_import_inside_a_function(graph) -> None:
    imports, paths = graph
    inside = sorted({f"{paths[m].relative_to(PACKAGE_DIR.parent)}:{line} imports {target}"
                     for m, targets in imports.items() for target, sites in targets.items() for line, nested in sites
                     if nested})
    assert not inside, "ftlab imports inside functions:\n" + "\n".join(inside)


def test_method_families_import_no_other_family(graph) -> None:
    imports, paths = graph
    packages = {m for m, p in paths.items() if is_package(p)}
    families = {f for f in (family_of(m, packages) for m in imports) if f}
    assert {"ftlab.methods.sparsity", "ftlab.methods.lora", "ftlab.methods.wtacrs", "ftlab.methods.stability"} <= families
    crossing = [f"{m} imports {target}" for m, targets in imports.items() if m.startswith(METHODS + ".")
                for target in targets
                if family_of(target, packages) and family_of(target, packages) != family_of(m, packages)]
    assert not crossing, "method modules importing another family:\n" + "\n".join(crossing)


def test_the_core_imports_no_method_family(graph) -> None:
    imports, paths = graph
    packages = {m for m, p in paths.items() if is_package(p)}
    crossing = [f"{m} imports {target}" for m, targets in imports.items()
                if not (m == METHODS or m.startswith(METHODS + ".")) for target in targets if family_of(target, packages)]
    assert not crossing, "core modules importing a method family:\n" + "\n".join(crossing)
