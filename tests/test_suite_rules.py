"""Rules the suite keeps about itself: no test asserts how long something took, and a test
that starts a process says so (``@pytest.mark.slow``: ``pytest -m "not slow"`` is the quick
loop; CI runs all).

These machines are shared and their speed varies; an assertion about wall-clock time fails on a
loaded machine (or passes on a fast one when it should not). Speed is measured by the scripts in
``benchmarks/``; a test asserts behaviour (what was refused, what was not read) and may keep a
generous timeout only as a hang guard, outside its assertions.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

TESTS = Path(__file__).parent
ROOT = TESTS.parent
CLOCKS = {"perf_counter", "monotonic", "monotonic_ns", "time", "process_time"}
#: Names that hold a duration; asserting an upper bound on one asserts a speed.
DURATION_WORDS = ("seconds", "elapsed", "duration", "took")


def suite_files() -> list[Path]:
    found = [*TESTS.rglob("*.py"), *(ROOT / "plugins").glob("*/tests/**/*.py")]
    return sorted(p for p in found if p.name != Path(__file__).name)


def _calls_a_clock(node: ast.AST) -> bool:
    return any(
        isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr in CLOCKS
        and isinstance(n.func.value, ast.Name)
        and n.func.value.id == "time"
        for n in ast.walk(node)
    )


def _bounds_a_duration(node: ast.AST) -> bool:
    """``x < bound`` (or ``<=``) where ``x`` names a duration: an upper bound on time."""
    for n in ast.walk(node):
        if not isinstance(n, ast.Compare):
            continue
        sides = [n.left, *n.comparators]
        for op, (left, right) in zip(n.ops, itertools.pairwise(sides), strict=True):
            small = left if isinstance(op, (ast.Lt, ast.LtE)) else right
            if isinstance(op, (ast.Lt, ast.LtE, ast.Gt, ast.GtE)):
                text = ast.unparse(small).lower()
                if any(word in text for word in DURATION_WORDS):
                    return True
    return False


def test_no_test_asserts_a_wall_clock_bound():
    offenders = []
    for path in suite_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Assert) and (
                _calls_a_clock(node.test) or _bounds_a_duration(node.test)
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
    assert offenders == [], "\n".join(offenders)


def test_the_rule_sees_the_forms_it_forbids():
    caught = [
        "assert time.perf_counter() - start < 5",
        "assert elapsed < 30",
        "assert outcome.seconds < QUICK",
        "assert 0.5 <= waited_seconds < 10",
    ]
    allowed = ["assert waited >= 0.5", "assert len(rows) < 10", "assert status == 0"]
    for source in caught:
        test = ast.parse(source).body[0].test
        assert _calls_a_clock(test) or _bounds_a_duration(test), source
    for source in allowed:
        test = ast.parse(source).body[0].test
        assert not (_calls_a_clock(test) or _bounds_a_duration(test)), source


#: What starts a process: ``subprocess.run`` and friends, and tests/torchrun_helpers.py.
SPAWN_CALLS = {"run", "Popen", "check_output", "check_call", "call"}
SPAWN_HELPERS = {"torchrun", "run_worker"}


def _spawns(node: ast.AST, helpers: set[str]) -> bool:
    for n in ast.walk(node):
        if (
            isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Name)
            and n.value.id == "subprocess"
            and n.attr in SPAWN_CALLS
        ):
            return True
        if isinstance(n, ast.Name) and (n.id in SPAWN_HELPERS or n.id in helpers):
            return True
    return False


def unmarked_spawning_tests(tree: ast.Module) -> list[str]:
    """Test functions of ``tree`` that start a process, directly or through a function of
    their module, without a ``slow`` mark (on the function or as the module's ``pytestmark``)."""
    module_slow = any(
        isinstance(n, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in n.targets)
        and "slow" in ast.unparse(n.value)
        for n in tree.body
    )
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    helpers: set[str] = set()
    while True:  # a helper calling a helper that spawns spawns too
        found = {
            name
            for name, fn in functions.items()
            if not name.startswith("test_") and name not in helpers and _spawns(fn, helpers)
        }
        if not found:
            break
        helpers |= found
    methods = [m for c in tree.body if isinstance(c, ast.ClassDef) for m in c.body]
    tests = [
        f
        for f in [*functions.values(), *methods]
        if isinstance(f, ast.FunctionDef) and f.name.startswith("test_")
    ]
    return [
        f.name
        for f in tests
        if _spawns(f, helpers)
        and not module_slow
        and not any("slow" in ast.unparse(d) for d in f.decorator_list)
    ]


def test_a_test_that_starts_a_process_is_marked_slow():
    offenders = [
        f"{path.relative_to(ROOT)}::{name}"
        for path in suite_files()
        if path.name.startswith("test_")
        for name in unmarked_spawning_tests(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert offenders == [], "add @pytest.mark.slow to:\n" + "\n".join(offenders)


def test_the_slow_rule_follows_helpers():
    source = """
import subprocess
def _cli(*args):
    return subprocess.run(args)
def _twice():
    return _cli(), _cli()
def test_direct():
    subprocess.run(["true"])
def test_through_helpers():
    _twice()
@pytest.mark.slow
def test_marked():
    _cli()
def test_quiet():
    assert 1
"""
    assert unmarked_spawning_tests(ast.parse(source)) == ["test_direct", "test_through_helpers"]
