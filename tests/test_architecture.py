"""The floors of docs/architecture.md: the rules import-linter cannot see.

(import-linter itself checks that imports point down: ``lint-imports`` in ``.ci/run``.)
"""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import zoo.errors

ZOO = Path(zoo.errors.__file__).parent
FLOORS = ("core", "tables", "plans", "io", "adaptation")
#: Modules that import torch, numpy or PIL at import time and that a floor imports inside a
#: function, the only reason to (laziness: ``import zoo`` and ``zoo list`` stay light). None
#: since issue 20: ``zoo.adaptation`` imports torch at the top of its modules, as only the
#: command handlers and ``zoo.api`` import it, and ``import zoo`` resolves names lazily.
HEAVY: set[str] = set()
#: Most function-local ``zoo`` imports allowed below the command line (zoo/cli and
#: zoo/testing.py are the edges): an import inside a function hides a dependency.
MAX_LOCAL_IMPORTS = 15


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


def test_few_function_local_zoo_imports_remain_below_the_cli():
    found = []
    for path in sorted(ZOO.rglob("*.py")):
        where = path.relative_to(ZOO)
        if where.parts[0] == "cli" or where == Path("testing.py"):
            continue
        for node in local_imports(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            )
            found += [
                f"zoo/{where}:{node.lineno} {name}"
                for name in names
                if name and (name == "zoo" or name.startswith("zoo."))
            ]
    assert len(found) <= MAX_LOCAL_IMPORTS, found


@pytest.mark.slow
def test_the_api_imports_the_jobs_on_first_use():
    """``zoo.adaptation`` imports torch at the top of its modules; ``zoo.api`` (listing, specs,
    plans, ``zoo plan``) stays light until a job is used."""
    script = (
        "import sys, zoo.api; light = 'torch' not in sys.modules; "
        "adapt = zoo.api.adapt; print(light, 'torch' in sys.modules, adapt.__name__)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.stdout.split() == ["True", "True", "adapt"], done.stderr[-2000:]


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


def _backticked_words(text: str) -> set[str]:
    """Every word inside backticks: `zoo/io/trust.py`, `io.leaderboard` and `cache` all name
    their module by its last part (fenced blocks are pictures, not names)."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return {
        word for span in re.findall(r"`([^`]+)`", text) for word in re.split(r"[\s/.,()+]+", span)
    }


def test_the_map_names_every_module():
    """docs/architecture.md is the map of zoo: a module it does not name is a concept a new
    maintainer cannot find; a path it names that does not exist sends them nowhere."""
    text = (ZOO.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = _backticked_words(text)
    modules = sorted(p for p in ZOO.rglob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    unnamed = [str(p.relative_to(ZOO.parent)) for p in modules if p.stem not in named]
    assert unnamed == [], "docs/architecture.md does not say what these modules hold"
    paths = re.findall(r"zoo/[\w/]+\.py", text)
    assert paths and [p for p in paths if not (ZOO.parent / p).is_file()] == []
