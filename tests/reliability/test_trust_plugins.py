"""The trust boundary: a plugin may raise anything, wrap its own hooks, print, or register a lot.

In process, on catalogs of the tiny ``rel`` plugin plus hostile plugin objects: every hook
called through pluggy one plugin at a time (``wrapper=True`` and ``hookwrapper=True``
implementations wrap their own plugin's implementation, ``firstresult`` holds), any
``BaseException`` but ``KeyboardInterrupt`` recorded against the plugin, what a hook prints sent
to stderr, ``ZOO_TRACE_PLUGINS=1`` tracing to stderr, and a ``zoo_extra_metadata`` answer read
inside the isolation (raising while iterated, non-``str`` or lone-surrogate entries, too big:
refused and recorded, the save goes on). End to end, a fake installed distribution registering
20,000 backbones through the real ``zoo`` command: the listing is complete, and ``zoo show`` of
one name is served from the cache's name index without reading the whole listing.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import fakeplugins
import pytest
from reliability_helpers import PLUGIN_NAME, TinyPlugin, build_tiny
from test_broken_plugins import zoo_command

import zoo
from zoo.core.catalog import Catalog
from zoo.core.plugins import make_plugin_host
from zoo.io.provenance import EXTRA_METADATA_ENTRIES, EXTRA_METADATA_LIMIT
from zoo.testing import installed_catalog


@pytest.fixture
def catalog_with() -> Iterator[Callable[..., Catalog]]:
    """``catalog_with(name=plugin, ...)``: the ``rel`` plugin and these, installed for the test."""
    installed: list[Any] = []

    def make(**plugins: object) -> Catalog:
        host = make_plugin_host(
            builtins=False, autoload=False, extra={PLUGIN_NAME: TinyPlugin, **plugins}
        )
        context = installed_catalog(Catalog(host))
        installed.append(context)
        return context.__enter__()

    yield make
    for context in reversed(installed):
        context.__exit__(None, None, None)


def errors(catalog: Catalog, plugin: str) -> str:
    return "\n".join(catalog.host.records[plugin].errors)


def spec(name: str) -> zoo.BackboneSpec:
    return zoo.BackboneSpec(name=name, create=build_tiny, head="5")


# ---------------------------------------------------------------- item 10: any BaseException


def raiser(exc: BaseException, hook: str) -> type:
    def implementation(**_kwargs: Any) -> None:
        raise exc

    implementation.__name__ = hook
    return type("Raiser", (), {hook: staticmethod(zoo.hookimpl(implementation))})


class ExitsAfterRegistering:
    @staticmethod
    @zoo.hookimpl
    def zoo_register_backbones(register):
        register(spec("before-exit"))
        raise SystemExit(0)


@pytest.mark.parametrize(
    "exc", [SystemExit(0), SystemExit("bye"), GeneratorExit(), BaseException("odd")], ids=repr
)
def test_a_hook_raising_any_base_exception_is_recorded_and_the_rest_work(catalog_with, exc):
    catalog = catalog_with(bad=raiser(exc, "zoo_register_backbones"), exits=ExitsAfterRegistering)
    assert f"zoo_register_backbones raised {type(exc).__name__}" in errors(catalog, "bad")
    assert "zoo_register_backbones raised SystemExit: 0" in errors(catalog, "exits")
    assert catalog.list_backbones() == ["exits:before-exit", "rel:tiny"]
    assert zoo.create("rel:tiny", num_classes=2)[-1].out_features == 2


def test_keyboard_interrupt_is_not_swallowed():
    host = make_plugin_host(
        builtins=False,
        autoload=False,
        extra={"ctrl-c": raiser(KeyboardInterrupt(), "zoo_register_policies")},
    )
    with pytest.raises(KeyboardInterrupt):
        Catalog(host)


def test_system_exit_in_zoo_param_groups_falls_back_to_generic_groups(catalog_with):
    catalog = catalog_with(groups=raiser(SystemExit(3), "zoo_param_groups"))
    table = zoo.params("rel:tiny")
    assert table.grouped_by == "generic"
    assert "zoo_param_groups raised SystemExit: 3" in errors(catalog, "groups")


# ---------------------------------------------------------------- item 11: through pluggy


class WrapsItsOwnRegistration:
    """A new-style wrapper (``specname``) around the same plugin's implementation."""

    calls: list[str] = []

    @zoo.hookimpl(wrapper=True, specname="zoo_register_backbones")
    def around(self, register):
        self.calls.append("wrapper before")
        result = yield
        self.calls.append(f"wrapper after, inner returned {result!r}")
        register(spec("from-wrapper"))
        return result

    @zoo.hookimpl
    def zoo_register_backbones(self, register):
        self.calls.append("implementation")
        register(spec("from-impl"))


class OldStyleWrapperOnly:
    @staticmethod
    @zoo.hookimpl(hookwrapper=True)
    def zoo_register_backbones(register):
        register(spec("old-style"))
        outcome = yield
        outcome.get_result()


def test_wrappers_wrap_their_own_plugins_implementation(catalog_with):
    WrapsItsOwnRegistration.calls = []
    catalog = catalog_with(wrapping=WrapsItsOwnRegistration(), oldstyle=OldStyleWrapperOnly)
    assert WrapsItsOwnRegistration.calls == [
        "wrapper before",
        "implementation",
        "wrapper after, inner returned []",
    ]
    assert catalog.list_backbones() == [
        "oldstyle:old-style",
        "rel:tiny",
        "wrapping:from-impl",
        "wrapping:from-wrapper",
    ]
    assert errors(catalog, "wrapping") == errors(catalog, "oldstyle") == ""


class GroupsByWrapper:
    """``firstresult`` inside one plugin: its wrapper turns its implementation's ``None``
    into an answer, and that answer wins over a later plugin's."""

    @zoo.hookimpl(wrapper=True, specname="zoo_param_groups")
    def around(self, model, backbone):
        answer = yield
        assert answer is None  # firstresult: one value, not pluggy's list
        names = [name for name, _ in model.named_parameters()]
        return [zoo.ParamGroup("stem", names[:-2]), zoo.ParamGroup("head", names[-2:])]

    @zoo.hookimpl(tryfirst=True)
    def zoo_param_groups(self, model, backbone):
        return None


class GroupsEverythingInOne:
    @staticmethod
    @zoo.hookimpl(trylast=True)
    def zoo_param_groups(model, backbone):
        return [zoo.ParamGroup("all", [name for name, _ in model.named_parameters()])]


def test_firstresult_and_wrappers_hold_for_zoo_param_groups(catalog_with):
    catalog = catalog_with(wrapped=GroupsByWrapper(), single=GroupsEverythingInOne)
    table = zoo.params("rel:tiny")
    assert (table.grouped_by, table.groups) == ("wrapped", ["stem", "head"])
    assert errors(catalog, "wrapped") == ""


def test_zoo_trace_plugins_traces_hook_calls_to_stderr(monkeypatch, capsys):
    monkeypatch.setenv("ZOO_TRACE_PLUGINS", "1")
    Catalog(make_plugin_host(builtins=False, autoload=False, extra={"rel": TinyPlugin}))
    captured = capsys.readouterr()
    assert "zoo_register_backbones of plugin rel" in captured.err and "finish" in captured.err
    assert captured.out == ""


# ---------------------------------------------------------------- item 12: output, metadata


class Chatty:
    @staticmethod
    @zoo.hookimpl
    def zoo_register_policies(register):
        print("chatty says hello")


def test_what_a_hook_prints_goes_to_stderr(catalog_with, capsys):
    catalog_with(chatty=Chatty)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "chatty says hello" in captured.err


class ExplodingMapping(Mapping[str, str]):
    def __getitem__(self, key: str) -> str:
        return "value"

    def __len__(self) -> int:
        return 2

    def __iter__(self) -> Iterator[str]:
        yield "explodes.first"
        raise SystemExit("iterating my metadata ends the process")


class Weird(str):
    def startswith(self, *args: Any) -> bool:  # a str subclass is copied to a plain str
        return True


def metadata_plugin(answer: Callable[[], Any]) -> type:
    def zoo_extra_metadata(model, backbone):
        return answer()

    return type("Meta", (), {"zoo_extra_metadata": staticmethod(zoo.hookimpl(zoo_extra_metadata))})


HOSTILE_METADATA = {
    "explodes": ExplodingMapping,
    "types": lambda: {"types.ok": "kept", "types.int": 3, 4: "x", "other.key": "y"},
    "surrogate": lambda: {
        "surrogate.bad": "\ud800",
        "surrogate.k\udfff": "v",
        "surrogate.ok": "kept",
    },
    "huge": lambda: {"huge.blob": "x" * (EXTRA_METADATA_LIMIT + 1)},
    "many": lambda: {f"many.{i}": "" for i in range(EXTRA_METADATA_ENTRIES + 1)},
    "weird": lambda: {Weird("weird.sub"): Weird("kept as str"), Weird("other.x"): "no"},
    "notmap": lambda: ["weird.list"],
}


def test_hostile_extra_metadata_is_refused_and_recorded_and_the_save_goes_on(
    catalog_with, tmp_path
):
    catalog = catalog_with(
        **{name: metadata_plugin(answer) for name, answer in HOSTILE_METADATA.items()}
    )
    path = zoo.save(zoo.create("rel:tiny", num_classes=2), tmp_path / "m.safetensors")
    saved = {k: v for k, v in zoo.load(path).zoo.metadata.items() if not k.startswith("zoo.")}
    saved.pop("format", None)
    assert saved == {"types.ok": "kept", "surrogate.ok": "kept", "weird.sub": "kept as str"}
    expected = {
        "explodes": "zoo_extra_metadata raised SystemExit: iterating my metadata ends",
        "types": "value of 'types.int' is a int, not a string",
        "surrogate": "is not valid Unicode (a lone surrogate)",
        "huge": f"entries exceed {EXTRA_METADATA_LIMIT // 1024} KiB; none were saved",
        "many": f"more than {EXTRA_METADATA_ENTRIES} entries; none were saved",
        "notmap": "returned list, not a mapping of str to str",
    }
    for plugin, problem in expected.items():
        assert problem in errors(catalog, plugin), plugin
    assert "key 4 is not namespaced 'types.<key>'" in errors(catalog, "types")
    assert "key 'other.key' is not namespaced" in errors(catalog, "types")
    assert "key 'other.x' is not namespaced 'weird.<key>'" in errors(catalog, "weird")
    assert errors(catalog, "surrogate").count("lone surrogate") == 2


# ---------------------------------------------------------------- item 12: scale, end to end

MANY = 20_000  # above render_listing.PLAIN_ROWS: the plain-text and line-per-entry JSON paths


def zoo_run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*zoo_command(), *args], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def many_env(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("many")
    folder = fakeplugins.many_backbones(MANY).install(root / "site")
    env = fakeplugins.environment([folder], root / "cache")
    env["ZOO_HOME"] = str(root / "home")
    return env


@pytest.mark.slow
def test_a_plugin_with_many_backbones_lists_completely(many_env):
    cold = zoo_run(["list", "backbones", "--json"], many_env)
    assert cold.returncode == 0, cold.stderr
    names = [b["qualified_name"] for b in json.loads(cold.stdout)["backbones"]]
    assert len([n for n in names if n.startswith("many:")]) == MANY
    assert names == sorted(names) and "timm:resnet18" in names
    warm = zoo_run(["list", "backbones", "--json"], many_env)
    same = warm.stdout == cold.stdout  # (not in the assert: pytest would diff megabytes)
    assert same, "the listing from the cache prints differently from the fresh one"
    text = zoo_run(["list", "backbones"], many_env).stdout.splitlines()
    assert text[0] == f"Backbones ({len(names)})" and text[1].split() == [
        "name",
        "pretrained",
        "input",
        "summary",
    ]
    assert text[3 + names.index("many:net000010")].split() == [
        "many:net000010",
        "2",
        "224x224",
        "fake",
        "backbone",
        "10",
    ]
    tags = json.loads(
        zoo_run(["list", "many:net0000[12]*", "--pretrained", "--json"], many_env).stdout
    )["backbones"]
    assert [t["qualified_name"] for t in tags] == [
        "many:net000010.a1_in1k",
        "many:net000010.b2_in22k",
        "many:net000020.a1_in1k",
        "many:net000020.b2_in22k",
    ]


@pytest.mark.slow
def test_zoo_show_of_one_name_reads_the_index_not_the_whole_listing(many_env):
    damage = "damaged: only the name index can answer"
    for _attempt in range(3):  # an edit to zoo's own files meanwhile changes the cache key
        assert zoo_run(["plugins"], many_env).returncode == 0  # the listing and index cached
        (listing,) = Path(many_env["ZOO_CACHE_DIR"]).glob("listing-*.json")
        listing.write_text(damage)
        shown = zoo_run(["show", "net012345", "--json"], many_env)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["backbone"] == "many:net012345"
        if listing.exists():
            break
    assert listing.read_text() == damage
    unknown = zoo_run(["show", "many:net0123456"], many_env)  # suggestions need every name
    assert unknown.returncode == 1
    assert "did you mean" in unknown.stderr and "many:net012345" in unknown.stderr
    (rebuilt,) = Path(many_env["ZOO_CACHE_DIR"]).glob("listing-*.json")
    assert json.loads(rebuilt.read_text())["key"]  # the whole listing was rebuilt for that
