"""The floors of docs/architecture.md: the rules import-linter cannot see.

(import-linter itself checks that imports point down: ``lint-imports`` in ``.ci/run``.)
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import zoo.errors

ZOO = Path(zoo.errors.__file__).parent
FLOORS = ("core", "tables", "plans", "io", "adaptation")
#: Modules that import torch, numpy or PIL at import time: the only reason a floor may import
#: from zoo inside a function (laziness: ``import zoo`` and ``zoo list`` stay light).
HEAVY = {
    "zoo.adaptation.auto_measure",
    "zoo.adaptation.boundary_cache",
    "zoo.adaptation.data",
    "zoo.adaptation.distributed",
    "zoo.adaptation.feature_cache",
    "zoo.adaptation.halving",
    "zoo.adaptation.shared_work",
}


def floor_modules() -> list[Path]:
    return sorted(p for floor in FLOORS for p in (ZOO / floor).rglob("*.py"))


def local_imports(tree: ast.AST) -> list[ast.ImportFrom | ast.Import]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found += [n for n in ast.walk(node) if isinstance(n, (ast.ImportFrom, ast.Import))]
    return found


def test_only_the_api_reads_the_process_catalog():
    readers = [
        f"{path.relative_to(ZOO.parent)}:{n}"
        for path in floor_modules()
        if path.name != "catalog.py"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "get_catalog(" in line
    ]
    assert readers == [], "below zoo.api a function takes catalog=, it does not fetch one"


def test_function_local_zoo_imports_are_only_for_laziness():
    dodges = []
    for path in floor_modules():
        for node in local_imports(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            )
            for name in names:
                if name and (name == "zoo" or name.startswith("zoo.")) and name not in HEAVY:
                    dodges.append(f"{path.relative_to(ZOO.parent)}:{node.lineno} {name}")
    assert dodges == []


def test_no_module_imports_another_modules_private_name():
    private = []
    for path in sorted(ZOO.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("zoo"):
                private += [
                    f"{path.relative_to(ZOO.parent)}: {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert private == []


def test_the_error_tree_in_the_docstring_is_the_real_one():
    drawn = {}
    for line in zoo.errors.__doc__.splitlines():
        match = re.search(r"[─└├]─ (\w+)(?:\s+\[(\w+)\])?", line)
        if match:
            drawn[match[1]] = match[2]
    real = {
        name: obj
        for name, obj in vars(zoo.errors).items()
        if inspect.isclass(obj)
        and issubclass(obj, zoo.errors.ZooError)
        and obj is not zoo.errors.ZooError
    }
    assert sorted(drawn) == sorted(real)
    for name, cls in real.items():
        second = [b.__name__ for b in cls.__bases__[1:]]
        assert second == ([drawn[name]] if drawn[name] else []), name
