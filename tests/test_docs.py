"""Meta-tests: the documentation says what the code does.

- every hook in ``zoo.hookspecs`` is documented in docs/plugin-hooks.md under its exact
  signature, with the right call semantics, and has a test named after it;
- docs/cli.md is what ``python -m zoo.cli.docgen`` generates, and each section is the real
  ``--help`` output of its command;
- docs/api.md has one entry per name of ``zoo.__all__``, with the real signatures and bases;
- every python snippet of docs/writing-plugins.md is a whole file of plugins/zoo-example or
  runs as it is in a subprocess; every toml snippet is verbatim in the template;
- relative links between the docs resolve.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import zoo
from zoo import hookspecs
from zoo.cli import docgen
from zoo.cli.main import build_parser
from zoo.cli.main import main as zoo_main

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TEMPLATE = ROOT / "plugins" / "zoo-example"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
FILE_BLOCK = re.compile(r"^\*\*File `([^`]+)`:\*\*\n\n```\w+\n(.*?)^```", re.S | re.M)


def read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def sections(text: str, level: str = "## ") -> dict[str, str]:
    """Heading line (without the hashes) -> text up to the next heading of that level."""
    found: dict[str, str] = {}
    parts = re.split(rf"^{re.escape(level)}(.+)$", text, flags=re.M)
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        found[heading.strip()] = body
    return found


# ---------------------------------------------------------------- hooks


def hook_signature(name: str) -> str:
    return name + str(inspect.signature(getattr(hookspecs, name))).replace("'", "")


def test_hook_names_are_every_hookspec():
    marked = {
        name
        for name, fn in vars(hookspecs).items()
        if callable(fn) and hasattr(fn, f"{hookspecs.PROJECT_NAME}_spec")
    }
    assert marked == set(hookspecs.HOOK_NAMES)


@pytest.mark.parametrize("hook", hookspecs.HOOK_NAMES)
def test_every_hook_is_documented_under_its_exact_signature(hook):
    documented = sections(read("plugin-hooks.md"))
    heading = f"`{hook_signature(hook)}`"
    assert heading in documented, f"docs/plugin-hooks.md needs a section '## {heading}'"
    body = documented[heading]
    firstresult = getattr(hookspecs, hook).zoo_spec["firstresult"]
    assert ("not `firstresult`" in body) is (not firstresult)
    assert "`firstresult`" in body
    for word in ("**Arguments:**", "**Returns:**", "```python", f"def {hook}("):
        assert word in body, f"section {hook} lacks {word}"


def test_every_hook_has_a_test_named_after_it():
    test_files = [*ROOT.glob("tests/**/test_*.py"), *ROOT.glob("plugins/*/tests/test_*.py")]
    names = [
        node.name
        for path in test_files
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    ]
    for hook in hookspecs.HOOK_NAMES:
        assert any(hook in name for name in names), f"no test function mentions {hook}"


# ---------------------------------------------------------------- the CLI reference


def test_cli_reference_is_generated_from_the_parsers():
    assert read("cli.md") == docgen.generate(), (
        "docs/cli.md is stale: run `python -m zoo.cli.docgen > docs/cli.md`"
    )


def test_cli_reference_is_each_commands_real_help(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", str(docgen.WIDTH))
    blocks = {heading: FENCE.search(body)[2] for heading, body in sections(read("cli.md")).items()}
    commands = list(docgen.commands(build_parser()))
    assert len(commands) > 1
    assert set(blocks) == {" ".join(("zoo", *path)) for path, _parser, _summary in commands}
    for path, _parser, _summary in commands:
        with pytest.raises(SystemExit) as exit_info:
            zoo_main([*path, "--help"])
        assert exit_info.value.code == 0
        printed = capsys.readouterr().out
        assert blocks[" ".join(("zoo", *path))] == printed, f"zoo {' '.join(path)} --help"


@pytest.mark.slow
def test_console_script_help_matches_the_reference():
    env = {**os.environ, "COLUMNS": str(docgen.WIDTH)}
    result = subprocess.run(
        [sys.executable, "-m", "zoo.cli.main", "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=120,
    )
    assert FENCE.search(sections(read("cli.md"))["zoo"])[2] == result.stdout


# ---------------------------------------------------------------- the API reference


def api_entries() -> dict[str, str]:
    """Dotted name after ``zoo.`` (``adapt``, ``errors.DataError``) -> the text of its entry."""
    entries = {}
    for heading, body in sections(read("api.md"), level="### ").items():
        match = re.fullmatch(r"`zoo\.([\w.]+)`", heading)
        assert match, f"unexpected heading in docs/api.md: {heading}"
        entries[match[1]] = body
    return entries


def public_object(dotted: str) -> object:
    """The object an entry documents, reached as ``zoo.NAME`` (a moved name still resolves)."""
    return getattr(zoo, dotted.rpartition(".")[2])


def test_every_public_name_resolves():
    missing = []
    for name in [*zoo.__all__, *zoo._MOVED]:
        try:
            getattr(zoo, name)
        except (AttributeError, ImportError) as exc:
            missing.append(f"{name}: {exc}")
    assert not missing


def test_api_reference_has_one_entry_per_public_name():
    entries = api_entries()
    assert sorted(n for n in entries if "." not in n) == sorted(zoo.__all__)
    assert zoo.__all__ == sorted(zoo.__all__)
    assert len(zoo.__all__) <= 50


def test_moved_names_are_documented_where_they_live():
    """A name that left ``zoo.__all__`` has its entry under its module (``zoo.errors.DataError``),
    is that module's object, and is still the same object as ``zoo.NAME``."""
    moved = {n for n in api_entries() if "." in n}
    assert moved == {f"{module.removeprefix('zoo.')}.{name}" for name, module in zoo._MOVED.items()}
    for dotted in moved:
        module, _, name = dotted.rpartition(".")
        assert getattr(importlib.import_module(f"zoo.{module}"), name) is getattr(zoo, name)
    assert not set(zoo._MOVED) & set(zoo.__all__)


def test_a_star_import_does_not_shadow_the_standard_library():
    namespace: dict[str, object] = {"inspect": inspect}
    exec("from zoo import *", namespace)
    assert namespace["inspect"] is inspect
    assert set(namespace) - {"__builtins__"} == {"inspect", *zoo.__all__}


def documented_parameters(name: str, block: str) -> list[tuple[str, str]]:
    """``(name, kind)`` of each parameter in a ``zoo.NAME(...) -> X`` signature block."""
    source = block.strip()
    assert source.startswith(f"zoo.{name}("), f"signature block of {name} must start zoo.{name}("
    arrow = source.rfind(") -> ")
    header = source[len(f"zoo.{name}") : arrow + 1 if arrow >= 0 else None]
    tree = ast.parse(f"def f{header}: ...")
    args = tree.body[0].args
    found = [(a.arg, "POSITIONAL_ONLY") for a in args.posonlyargs]
    found += [(a.arg, "POSITIONAL_OR_KEYWORD") for a in args.args]
    if args.vararg:
        found.append((args.vararg.arg, "VAR_POSITIONAL"))
    found += [(a.arg, "KEYWORD_ONLY") for a in args.kwonlyargs]
    if args.kwarg:
        found.append((args.kwarg.arg, "VAR_KEYWORD"))
    return found


def test_api_signatures_match_the_code():
    checked = 0
    for name, body in api_entries().items():
        block = re.search(r"```python\n(.*?)```", body, re.S)
        if block is None:
            continue
        obj = public_object(name)
        real = [(p.name, p.kind.name) for p in inspect.signature(obj).parameters.values()]
        assert documented_parameters(name, block[1]) == real, f"signature of zoo.{name}"
        checked += 1
    assert checked >= 30


def test_api_error_entries_name_their_real_bases():
    for name, body in api_entries().items():
        obj = public_object(name)
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            bases = ", ".join(base.__name__ for base in obj.__bases__)
            assert body.strip().startswith(f"*({bases})*"), f"bases of zoo.{name}"


def test_every_callable_public_name_shows_its_signature():
    for name, body in api_entries().items():
        obj = public_object(name)
        if inspect.isfunction(obj) or (
            inspect.isclass(obj) and not issubclass(obj, BaseException) and not issubclass(obj, str)
        ):
            assert "```python" in body, f"zoo.{name} needs a signature block in docs/api.md"


# ---------------------------------------------------------------- the tutorial


def template_files() -> dict[Path, str]:
    skip = {"__pycache__", "build", "dist"}
    return {
        path: path.read_text(encoding="utf-8")
        for path in TEMPLATE.rglob("*")
        if path.is_file()
        and path.suffix in {".py", ".toml", ".md"}
        and not skip.intersection(path.parts)
        and ".egg-info" not in str(path)
    }


def test_every_tutorial_toml_snippet_is_verbatim_in_the_template():
    files = template_files()
    snippets = [code for lang, code in FENCE.findall(read("writing-plugins.md")) if lang == "toml"]
    assert snippets
    for code in snippets:
        assert any(code.strip() in text for text in files.values()), (
            "this toml snippet of docs/writing-plugins.md is not in plugins/zoo-example:\n"
            + code[:300]
        )


@pytest.mark.slow
def test_every_tutorial_python_snippet_is_a_template_file_or_runs_as_is(tmp_path):
    """A python snippet is a whole template file (checked below) or pastes and runs as it is:
    test functions under pytest (zoo's fixtures come from its pytest plugin), anything else
    with python, in a fresh process with a private store and the template installed."""
    text = read("writing-plugins.md")
    whole = {code for _path, code in FILE_BLOCK.findall(text)}
    snippets = [code for lang, code in FENCE.findall(text) if lang == "python"]
    loose = [code for code in snippets if code not in whole]
    assert len(snippets) >= 9 and len(loose) >= 2
    env = {
        **os.environ,
        "ZOO_HOME": str(tmp_path / "home"),
        "ZOO_CACHE_DIR": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
    }
    for i, code in enumerate(loose):
        path = tmp_path / f"test_snippet_{i}.py"
        path.write_text(code, encoding="utf-8")
        pytest_args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path)]
        command = [sys.executable, *(pytest_args if "def test_" in code else []), str(path)]
        result = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, (
            f"this python snippet of docs/writing-plugins.md does not run as it is:\n{code}\n"
            + result.stdout[-2000:]
            + result.stderr[-2000:]
        )


def test_tutorial_file_blocks_are_the_whole_template_files():
    blocks = FILE_BLOCK.findall(read("writing-plugins.md"))
    shown = {path for path, _code in blocks}
    assert {
        "pyproject.toml",
        "src/zoo_example/plugin.py",
        "src/zoo_example/tinynet.py",
        "src/zoo_example/policies.py",
        "src/zoo_example/__init__.py",
        "examples/train_tiny.py",
    } <= shown
    for path, code in blocks:
        assert code == (TEMPLATE / path).read_text(encoding="utf-8"), f"{path} differs"


# ---------------------------------------------------------------- links


def test_relative_links_between_docs_resolve():
    link = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
    broken = []
    for page in sorted(DOCS.glob("*.md")):
        for target in link.findall(page.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.name} -> {target}")
    assert not broken
