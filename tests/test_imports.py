"""The import graph of qrag_cli runs one way: no module reaches itself through imports.

Every import counts, the ones inside functions too (an import put in a function to dodge a
cycle still makes one); only `if TYPE_CHECKING:` blocks are left out, because they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "qrag_cli"


def module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            visit(child)

    visit(tree)
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Each qrag_cli module -> the qrag_cli modules it imports at run time."""
    paths = {module_name(p, package): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
                continue
            base = node.module or ""
            if node.level:  # relative: from its own package
                anchor = name.split(".")[: len(name.split(".")) - node.level + is_package]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            # `from qrag_cli import render` imports the module render; `from qrag_cli.x
            # import y` imports x.
            targets.update(f"{base}.{a.name}" for a in node.names)
            targets.add(base)
        graph[name] = {t for t in targets if t in paths and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := walk(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := walk(start)):
            return found
    return None


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 40  # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_a_cycle_is_found_even_through_an_import_inside_a_function(tmp_path: Path) -> None:
    package = tmp_path / "qrag_cli"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from qrag_cli.high import Thing\n"
        "def f():\n"
        "    from qrag_cli import mid\n"
    )
    (package / "mid.py").write_text("from . import high\n")
    (package / "high.py").write_text("import qrag_cli.low\n")
    graph = import_graph(package)
    # The TYPE_CHECKING import of high is left out; `from qrag_cli import mid` loads both.
    assert graph["qrag_cli.low"] == {"qrag_cli", "qrag_cli.mid"}
    assert find_cycle(graph) == ["qrag_cli.high", "qrag_cli.low", "qrag_cli.mid", "qrag_cli.high"]
    (package / "low.py").write_text("from typing import TYPE_CHECKING\n")
    assert find_cycle(import_graph(package)) is None
