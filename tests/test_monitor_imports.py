"""Each module of edgewatch.monitor imports on its own in a fresh interpreter, and the
block path's array module imports nothing of the forecast: the forecast owns the window
loop, the averages own their scans, and no two modules import each other."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import edgewatch.monitor

# The forecast's modules (the torch side, with its import time, is test_public_api's).
FORECAST = {"crossing", "forecast", "ladder", "plan", "precursors", "readout", "recommend"}
FLOAT_ONLY = sorted(
    f"edgewatch.monitor.{m.name}"
    for m in pkgutil.iter_modules(edgewatch.monitor.__path__)
    if m.name in FORECAST | {"settings", "thresholds", "window"}
)


@pytest.mark.parametrize("module", FLOAT_ONLY)
def test_each_monitor_module_imports_first_in_a_fresh_interpreter(module: str) -> None:
    run = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr


def _imports(path: Path) -> set[str]:
    """Every edgewatch.monitor module the file imports, wherever: at the top, under
    TYPE_CHECKING or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n.rsplit(".", 1)[1] for n in names if n.startswith("edgewatch.monitor.")}
    return found


def test_no_two_monitor_modules_import_each_other_even_lazily() -> None:
    folder = Path(edgewatch.monitor.__file__).parent
    stems = {p.stem for p in folder.glob("*.py")}
    graph = {p.stem: _imports(p) & stems for p in folder.glob("*.py")}
    graph.pop("__init__")
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import circle: {' -> '.join((*path, module))}"
        if module in done:
            return
        for other in graph.get(module, ()):
            visit(other, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())
    assert "forecast" not in graph["window"] and "forecast" not in graph["precursors"]


def test_the_float_only_forecast_loads_no_scipy() -> None:
    # The training process imports the forecast; the block path's arrays are the daemon's.
    code = "import sys, edgewatch.monitor.forecast; assert 'scipy' not in sys.modules"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
