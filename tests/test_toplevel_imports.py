"""The top-level modules (cli, demo, plot, api_client, ...) form no import circle, even
through imports inside functions: the command line uses the others, none uses it."""

from __future__ import annotations

import ast
from pathlib import Path

import edgewatch

FOLDER = Path(edgewatch.__file__).parent
TOP = {p.stem for p in FOLDER.glob("*.py")} - {"__init__"}


def _imports(path: Path) -> set[str]:
    """Every top-level edgewatch module the file imports, wherever in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n.split(".")[1] for n in names if n.startswith("edgewatch.")}
    return found & TOP


def test_no_two_top_level_modules_import_each_other_even_lazily() -> None:
    graph = {stem: _imports(FOLDER / f"{stem}.py") for stem in TOP}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import circle: {' -> '.join((*path, module))}"
        if module in done:
            return
        for other in graph[module]:
            visit(other, (*path, module))
        done.add(module)

    for module in sorted(graph):
        visit(module, ())
    assert "cli" not in graph["demo"] | graph["plot"] | graph["api_client"]
