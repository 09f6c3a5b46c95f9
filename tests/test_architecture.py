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
    "zoo.plans.adapter_module",
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


#: Names of the checks of untrusted values that lived in five modules before issue 20; each
#: is now one function of zoo/core/checks.py, and no module defines its own copy again.
OLD_CHECKS = {
    "_is_int",
    "_is_number",
    "_is_real",
    "_int_in",
    "_real_in",
    "_choice",
    "_number",
    "_parse_int",
    "_parse_float",
    "_short_text",
    "_is_name",
    "_is_version",
    "_not_text",
    "_may_hold_surrogates",
    "_first_bad_text",
    "_is_text",
    "_check_text",
    "_json_problem",
    "_json_value",
    "_is_jsonable",
    "_is_path",
    "_arg_values",
    "_words",
    "check_number",
    "check_text",
    "check_flag",
    "class_name_problem",
    "loads",
}


def test_checks_of_untrusted_values_are_written_once():
    checks = ZOO / "core" / "checks.py"
    copies = []
    for path in sorted(ZOO.rglob("*.py")):
        if path == checks:
            continue
        text = path.read_text(encoding="utf-8")
        where = path.relative_to(ZOO.parent)
        copies += [
            f"{where}:{node.lineno} {node.name}"
            for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in OLD_CHECKS
        ]
        # the one test of lone surrogates and of control characters
        copies += [
            f"{where}: {needle}"
            for needle in ("UnicodeEncodeError", r"\x00-\x1f")
            if needle in text
        ]
    assert copies == [], "use zoo.core.checks (is_int, real, text, json_value, loads...)"
