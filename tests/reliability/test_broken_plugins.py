"""Broken plugins, end to end: the real ``zoo`` command with fake installed distributions.

Each distribution of ``fakeplugins.BROKEN`` lives in its own folder on ``PYTHONPATH``: one good
plugin, one whose policies return unknown names, garbage or raise, one that prints at import
and in its hook, and one of each way to be broken (ImportError, SyntaxError, ``sys.exit`` at
import and in hooks, misspelled hook, wrong signature, raising hook, a plugin name two
distributions claim). ``zoo plugins`` and ``zoo list`` run as subprocesses; the CLI must
keep working, report each problem naming plugin and distribution, fail with ``--strict`` /
``ZOO_STRICT_PLUGINS=1``, and print the same whatever the ``PYTHONPATH`` order. The bad
policies only fail when planned: that is checked in-process on the same distributions.

The commands run once per module, in two parallel batches: the first (cold: each imports timm
and every plugin, seconds each) fills a listing cache per order, the second reads it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass

import fakeplugins
import pytest

import zoo
from zoo.core.catalog import Catalog
from zoo.core.plugins import discover_entry_points, make_plugin_host
from zoo.testing import installed_catalog

STRICT_EXIT = 3


@dataclass
class Run:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def err(self) -> str:
        """stderr with whitespace normalised (rich may wrap long lines)."""
        return " ".join(self.stderr.split())


def zoo_command() -> list[str]:
    found = shutil.which("zoo")
    return [found] if found else [sys.executable, "-m", "zoo.cli.main"]


def run_parallel(commands: dict[str, tuple[list[str], dict[str, str]]]) -> dict[str, Run]:
    started = {
        key: (
            args,
            subprocess.Popen(
                [*zoo_command(), *args],
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            ),
        )
        for key, (args, env) in commands.items()
    }
    runs = {}
    for key, (args, process) in started.items():
        stdout, stderr = process.communicate(timeout=300)
        runs[key] = Run(args, process.returncode, stdout, stderr)
    return runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Run]:
    root = tmp_path_factory.mktemp("plugins_e2e")
    folders = fakeplugins.install_all(root / "site")
    forward = fakeplugins.environment(folders, root / "cache-forward")
    backward = fakeplugins.environment(list(reversed(folders)), root / "cache-backward")
    for env in (forward, backward):
        env["ZOO_HOME"] = str(root / "home")
    cold = run_parallel(
        {
            "plugins --json": (["plugins", "--json"], forward),
            "plugins --json (reversed)": (["plugins", "--json"], backward),
        }
    )
    warm = run_parallel(
        {
            "list --json": (["list", "--json"], forward),
            "list --json (reversed)": (["list", "--json"], backward),
            "plugins": (["plugins"], forward),
            "--strict list": (["--strict", "list", "*net"], forward),
            "ZOO_STRICT_PLUGINS=1 plugins": (["plugins"], {**forward, "ZOO_STRICT_PLUGINS": "1"}),
        }
    )
    return {**cold, **warm}


@pytest.mark.slow
def test_zoo_plugins_reports_each_problem_naming_plugin_and_distribution(runs):
    run = runs["plugins --json"]
    assert run.returncode == 0, run.stderr
    records = json.loads(run.stdout)["plugins"]
    by_origin = {(r["name"], r["distribution"]): r for r in records}
    for dist in fakeplugins.PROBLEMS:
        record = by_origin[(dist.plugin, dist.name)]
        assert record["version"] == dist.version
        assert any(dist.problem in error for error in record["errors"]), record["errors"]
    good = by_origin[("goodplug", "rel-good")]
    assert good["errors"] == [] and (good["backbones"], good["policies"]) == (1, 1)
    assert by_origin[("badpol", "rel-badpolicy")]["policies"] == 3
    assert by_origin[("twin", "rel-twin-alpha")]["errors"] == []
    assert by_origin[("timm", "zoo-transfer")]["errors"] == []  # the built-ins still load
    exiter = by_origin[("exiter", "rel-exit-hook")]  # sys.exit in a hook ends nothing
    assert exiter["backbones"] == 1  # what it registered before exiting stays
    assert "zoo_register_policies raised SystemExit: policies: goodbye" in exiter["errors"]

    text = runs["plugins"]
    assert text.returncode == 0
    for dist in fakeplugins.PROBLEMS:
        assert f"warning: plugin {dist.origin}: " in text.err
        assert dist.problem in text.err


@pytest.mark.slow
def test_zoo_list_still_works_and_warns(runs):
    listing = runs["list --json"]
    assert listing.returncode == 0, listing.stderr
    data = json.loads(listing.stdout)
    backbones = {b["qualified_name"]: b for b in data["backbones"]}
    assert "timm:resnet18" in backbones and "goodplug:goodnet" in backbones
    assert backbones["twin:twinnet"]["summary"] == "from alpha"  # the first distribution won
    policies = {p["qualified_name"] for p in data["policies"]}
    assert {"goodplug:head-only", "badpol:garbage", "zoo:linear-probe"} <= policies
    reported: dict[tuple[str, str], str] = {}
    for p in data["problems"]:
        key = (p["plugin"], p["distribution"])
        reported[key] = reported.get(key, "") + p["error"] + "\n"
    for dist in fakeplugins.PROBLEMS:
        assert dist.problem in reported[(dist.plugin, dist.name)]

    text = runs["--strict list"]  # the tables are printed, then the warnings
    assert "goodplug:goodnet" in text.stdout and "twin:twinnet" in text.stdout
    for dist in fakeplugins.PROBLEMS:
        assert f"warning: plugin {dist.origin}: " in text.err
    assert text.err.count("(see `zoo plugins`)") >= len(fakeplugins.PROBLEMS)


@pytest.mark.slow
def test_what_plugins_print_goes_to_stderr_never_into_json(runs):
    cold = runs["plugins --json"]  # the run that imported the plugins and called their hooks
    records = {r["name"]: r for r in json.loads(cold.stdout)["plugins"]}
    assert records["chatty"]["errors"] == [] and records["chatty"]["backbones"] == 1
    assert "chatty plugin: imported" in cold.stderr
    assert "chatty plugin: registering {'not': 'json'}" in cold.stderr
    backbones = {b["qualified_name"] for b in json.loads(runs["list --json"].stdout)["backbones"]}
    assert {"chatty:chattynet", "exiter:halfnet"} <= backbones


@pytest.mark.slow
def test_strict_mode_turns_problems_into_a_failing_exit(runs):
    for key in ("--strict list", "ZOO_STRICT_PLUGINS=1 plugins"):
        run = runs[key]
        assert run.returncode == STRICT_EXIT, (key, run.stderr)
        for dist in fakeplugins.PROBLEMS:
            assert dist.origin in run.err, (key, dist.origin)


@pytest.mark.slow
def test_results_do_not_depend_on_discovery_order(runs):
    assert runs["plugins --json"].stdout == runs["plugins --json (reversed)"].stdout
    assert runs["list --json"].stdout == runs["list --json (reversed)"].stdout


@pytest.fixture
def fake_catalog(tmp_path, monkeypatch):
    """The same distributions, loaded in-process as ``make_plugin_host`` loads entry points
    (only these: the built-ins and other installed plugins would take seconds to import)."""
    for folder in fakeplugins.install_all(tmp_path / "site"):
        monkeypatch.syspath_prepend(str(folder))
    host = make_plugin_host(builtins=False, autoload=False)
    for source in discover_entry_points():
        if (source.distribution or "").startswith("rel-"):
            host.add_module(
                source.name, source.value, distribution=source.distribution, version=source.version
            )
    try:
        with installed_catalog(Catalog(host)) as catalog:
            yield catalog
    finally:
        for name in [m for m in sys.modules if m.startswith("relfake_")]:
            del sys.modules[name]


@pytest.mark.parametrize(
    ("policy", "problem"),
    [
        ("badpol:unknown-names", "no.such.param"),
        ("badpol:garbage", "returned int 42"),
        ("badpol:exploding", "failed: ZeroDivisionError: division by zero"),
    ],
)
def test_a_bad_policy_is_a_plan_error_naming_plugin_and_distribution(fake_catalog, policy, problem):
    with pytest.raises(zoo.PlanError) as info:
        zoo.plan("goodplug:goodnet", policy)
    message = str(info.value)
    assert f"policy {policy!r} (plugin badpol (rel-badpolicy 3.1))" in message
    assert problem in message
    assert zoo.plan("goodplug:goodnet", "goodplug:head-only").trainable == ["5.weight", "5.bias"]
