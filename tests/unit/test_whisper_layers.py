"""The modules of model_manager/engines/whisper import each other in layers: no cycle at module
level, and no import of a sibling inside a function (the way a cycle is usually hidden), except
request.py's of vad.py, which keeps faster-whisper out of the agents that import request.py."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import model_manager.engines.whisper as package

PACKAGE = package.__name__
#: (importer, imported) pairs allowed inside a function, each for a heavy optional dependency.
DEFERRED = {("request", "vad")}


def _imports() -> tuple[dict[str, set[str]], set[tuple[str, str]]]:
    """Module-level edges (importer -> imported siblings), and the edges found inside functions."""
    top: dict[str, set[str]] = {}
    deferred: set[tuple[str, str]] = set()
    for path in sorted(Path(package.__file__).parent.glob("*.py")):
        module = path.stem
        top[module] = set()

        def visit(node: ast.AST, in_function: bool, module: str = module) -> None:
            for child in ast.iter_child_nodes(node):
                inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
                for target in _siblings(child):
                    if inner:
                        deferred.add((module, target))
                    else:
                        top[module].add(target)
                visit(child, inner)

        visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return top, deferred


def _siblings(node: ast.AST) -> list[str]:
    if isinstance(node, ast.ImportFrom) and node.module == PACKAGE:
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE + "."):
        return [node.module[len(PACKAGE) + 1:].split(".")[0]]
    if isinstance(node, ast.Import):
        prefix = PACKAGE + "."
        return [a.name[len(prefix):].split(".")[0] for a in node.names if a.name.startswith(prefix)]
    return []


def test_no_cycles_and_no_imports_hidden_in_functions():
    top, deferred = _imports()
    graphlib.TopologicalSorter(top).prepare()  # raises CycleError on a cycle
    assert deferred == DEFERRED


def test_the_layers():
    top, _ = _imports()
    # The leaves import no sibling; timestamps knows neither engine; the engines come last.
    for leaf in ("features", "tokens", "oom", "result", "vad", "window_policy", "windows", "ct2_format"):
        assert top[leaf] == set(), leaf
    assert top["timestamps"].isdisjoint({"engine", "ct2", "hf"})
    assert not any({"ct2", "hf"} & imported for imported in top.values())
