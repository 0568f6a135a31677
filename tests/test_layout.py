"""The package's layout: imports only go down, so every module can be read (and tested) with
the ones below it only."""

from __future__ import annotations

import ast
from pathlib import Path

import colorquant

PACKAGE = Path(colorquant.__file__).parent


def import_graph() -> dict[str, set[str]]:
    """Each module's imports of other colorquant modules: at the top, inside functions and
    under ``TYPE_CHECKING`` alike."""
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                found.update([node.module.split(".")[0]] if node.module
                             else [alias.name for alias in node.names])
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "colorquant."):
                found.add(node.module.split(".")[1])  # type: ignore[union-attr]
            elif isinstance(node, ast.Import):
                found.update(alias.name.split(".")[1] for alias in node.names
                             if alias.name.startswith("colorquant."))
        graph[path.stem] = {m for m in found if m in modules and m != path.stem}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for imported in sorted(graph[module]):
            if state.get(imported) == 1:
                return [*path[path.index(imported):], imported]
            if imported not in state and (found := visit(imported)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_imports_only_go_down():
    assert cycle(import_graph()) is None


def test_a_cycle_is_found():
    graph = {"core": {"dither", "pixels"}, "dither": {"pixels", "core"}, "pixels": set()}
    assert cycle(graph) == ["core", "dither", "core"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_the_stages_and_plots_import_no_composition():
    graph = import_graph()
    for module in ("dither", "plots", "pixels", "fit", "nearest", "colorspace", "imagedata"):
        assert not graph[module] & {"core", "files", "batch", "cli"}, module
