"""The plugin host: real entry-point discovery, and one broken plugin never hurts the others.

Fake distributions are real ones: a ``<name>-<version>.dist-info`` folder with ``METADATA`` and
``entry_points.txt`` plus a module, in a directory put on ``sys.path``, found by
``importlib.metadata`` exactly as an installed package is.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

import zoo
from zoo.core.catalog import Catalog
from zoo.core.plugins import (
    DISABLE_AUTOLOAD_ENV,
    PluginRecord,
    discover_entry_points,
    format_origin,
    make_plugin_host,
)
from zoo.errors import PluginError
from zoo.testing import check_plugin, installed_catalog

GOOD = """
    import zoo
    from torch import nn

    @zoo.hookimpl
    def zoo_register_backbones(register):
        register(zoo.BackboneSpec(name="fakenet", create=lambda n=None, p=False, **kw:
                                  nn.Linear(4, n or 2), summary="a fake backbone"))

    @zoo.hookimpl
    def zoo_register_policies(register):
        register(zoo.PolicySpec(name="fake-policy", plan=lambda table: table.names))
"""


class Site:
    """A directory on ``sys.path`` holding fake installed distributions."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.modules: list[str] = []

    def install(
        self, dist: str, plugins: dict[str, str], modules: dict[str, str], version: str = "1.0"
    ) -> None:
        info = self.root / f"{dist}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8"
        )
        lines = "".join(f"{name} = {value}\n" for name, value in plugins.items())
        (info / "entry_points.txt").write_text(f"[zoo.plugins]\n{lines}", encoding="utf-8")
        for module, source in modules.items():
            (self.root / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
            self.modules.append(module)


@pytest.fixture
def site(tmp_path, monkeypatch):
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
    found = Site(root)
    yield found
    for module in found.modules:
        sys.modules.pop(module, None)


def host_and_catalog(**options):
    host = make_plugin_host(builtins=False, **options)
    return host, Catalog(host)


# ---------------------------------------------------------------- discovery


def test_zoo_register_backbones_of_an_entry_point_plugin_is_discovered(site):
    site.install("fakeplug", {"fake": "fakeplug_good"}, {"fakeplug_good": GOOD}, version="1.2")
    sources = [s for s in discover_entry_points() if s.name == "fake"]
    assert [(s.value, s.distribution, s.version) for s in sources] == [
        ("fakeplug_good", "fakeplug", "1.2")
    ]
    host, catalog = host_and_catalog(autoload=True)
    record = host.records["fake"]
    assert record.ok, record.errors
    assert (record.distribution, record.version, record.builtin) == ("fakeplug", "1.2", False)
    assert record.hooks == ["zoo_register_backbones", "zoo_register_policies"]
    assert (record.backbones, record.policies) == (1, 1)
    assert catalog.backbone("fake:fakenet")[0].summary == "a fake backbone"
    assert catalog.policy("fake-policy").qualified_name == "fake:fake-policy"
    assert format_origin(record) == "fake (fakeplug 1.2)"


def test_entry_point_may_name_an_object_inside_a_module(site):
    site.install(
        "objplug",
        {"obj": "fakeplug_obj:Plugin"},
        {
            "fakeplug_obj": """
        import zoo
        from torch import nn

        class Plugin:
            @staticmethod
            @zoo.hookimpl
            def zoo_register_backbones(register):
                register(zoo.BackboneSpec(name="objnet", create=lambda n=None, p=False: nn.ReLU()))
    """
        },
    )
    host, catalog = host_and_catalog(autoload=True)
    assert host.records["obj"].ok, host.records["obj"].errors
    assert host.records["obj"].module == "fakeplug_obj:Plugin"
    assert catalog.list_backbones("obj:*") == ["obj:objnet"]


def test_autoload_can_be_disabled_by_the_environment(site, monkeypatch):
    site.install("fakeplug", {"fake": "fakeplug_good"}, {"fakeplug_good": GOOD})
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    host = make_plugin_host()
    assert "fake" not in host.records
    assert host.records["timm"].builtin  # built-ins still load
    assert "fake" in make_plugin_host(builtins=False, autoload=True).records  # explicit wins
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "0")
    assert "fake" in make_plugin_host(builtins=False).records


# ---------------------------------------------------------------- broken plugins are isolated


def broken_site(site: Site) -> None:
    site.install("fakeplug", {"fake": "fakeplug_good"}, {"fakeplug_good": GOOD})
    site.install(
        "importfail",
        {"needslib": "fakeplug_importerror"},
        {
            "fakeplug_importerror": (
                "import zoo\nraise ImportError('needs libfoo, which is missing')\n"
            ),
        },
        version="2.0",
    )
    site.install(
        "syntaxfail",
        {"typo": "fakeplug_syntax"},
        {
            "fakeplug_syntax": "import zoo\n\ndef zoo_register_backbones(register)\n    pass\n",
        },
    )
    site.install(
        "exitfail",
        {"quitter": "fakeplug_exit"},
        {
            "fakeplug_exit": "import sys\nsys.exit('no thanks')\n",
        },
    )
    site.install(
        "raising",
        {"raiser": "fakeplug_raiser"},
        {
            "fakeplug_raiser": """
        import zoo

        @zoo.hookimpl
        def zoo_register_backbones(register):
            raise RuntimeError("backbone registry exploded")

        @zoo.hookimpl
        def zoo_register_policies(register):
            register(zoo.PolicySpec(name="still-here", plan=lambda table: []))
    """
        },
    )
    site.install(
        "misspelled",
        {"speller": "fakeplug_speller"},
        {
            "fakeplug_speller": """
        import zoo
        import zoo_helper_module_is_not_a_hook as zoo_helpers

        @zoo.hookimpl
        def zoo_register_backbone(register):
            raise AssertionError("never called")

        def zoo_register_policies(register):
            raise AssertionError("not marked, never called")
    """,
            "zoo_helper_module_is_not_a_hook": "VALUE = 1\n",
        },
    )
    site.install(
        "badsig",
        {"signature": "fakeplug_signature"},
        {
            "fakeplug_signature": """
        import zoo
        from torch import nn

        @zoo.hookimpl
        def zoo_register_backbones(register):  # valid, but its plugin is not: never called
            register(zoo.BackboneSpec(name="halfnet", create=lambda n=None, p=False: nn.ReLU()))

        @zoo.hookimpl
        def zoo_register_policies(registry):
            raise AssertionError("never called")
    """
        },
    )


def errors_of(host, name: str) -> str:
    return " | ".join(host.records[name].errors)


def test_zoo_register_backbones_failures_are_recorded_per_plugin(site):
    broken_site(site)
    host, catalog = host_and_catalog(autoload=True)

    assert host.records["fake"].ok
    assert catalog.list_backbones("fake:*") == ["fake:fakenet"]  # the good one still works

    assert "failed to import 'fakeplug_importerror'" in errors_of(host, "needslib")
    assert "ImportError: needs libfoo, which is missing" in errors_of(host, "needslib")
    assert format_origin(host.records["needslib"]) == "needslib (importfail 2.0)"

    syntax = errors_of(host, "typo")
    assert "SyntaxError" in syntax and "fakeplug_syntax.py, line 3" in syntax

    assert "SystemExit: no thanks" in errors_of(host, "quitter")

    assert "zoo_register_backbones raised RuntimeError: backbone registry exploded" in errors_of(
        host, "raiser"
    )
    assert catalog.list_policies("raiser:*") == ["raiser:still-here"]  # its other hook ran

    spelled = errors_of(host, "speller")
    assert (
        "unknown hook 'zoo_register_backbone' (did you mean 'zoo_register_backbones'?)" in spelled
    )
    assert "'zoo_register_policies' is not marked @zoo.hookimpl" in spelled
    assert "zoo_helpers" not in spelled  # a module named zoo_* is not a hook
    assert len(host.records["speller"].errors) == 2

    assert "invalid plugin" in errors_of(host, "signature")
    assert "registry" in errors_of(host, "signature")
    assert host.pm.get_plugin("signature") is None
    assert catalog.list_backbones("signature:*") == []


def test_problems_name_the_plugin_and_its_distribution(site):
    broken_site(site)
    host, _catalog = host_and_catalog(autoload=True)
    origins = {format_origin(record) for record, _error in host.problems}
    assert origins == {
        "needslib (importfail 2.0)",
        "typo (syntaxfail 1.0)",
        "quitter (exitfail 1.0)",
        "raiser (raising 1.0)",
        "speller (misspelled 1.0)",
        "signature (badsig 1.0)",
    }
    with pytest.raises(PluginError) as info:
        host.raise_if_problems()
    for origin in origins:
        assert origin in str(info.value)


def test_strict_mode_turns_problems_into_an_error(site, monkeypatch):
    broken_site(site)
    monkeypatch.setenv("ZOO_STRICT_PLUGINS", "1")
    with installed_catalog(Catalog(make_plugin_host(builtins=False, autoload=True))) as catalog:
        with pytest.raises(PluginError, match=r"needslib \(importfail 2\.0\)"):
            zoo.get_catalog()
        monkeypatch.delenv("ZOO_STRICT_PLUGINS")
        assert zoo.get_catalog() is catalog


def test_a_plugin_name_taken_twice_keeps_the_first(site):
    site.install("first-dist", {"twin": "fakeplug_good"}, {"fakeplug_good": GOOD})
    site.install("second-dist", {"twin": "fakeplug_other"}, {"fakeplug_other": GOOD})
    host, catalog = host_and_catalog(autoload=True)
    assert host.records["twin"].distribution == "first-dist"
    assert host.records["twin"].ok
    second = host.records["twin@second-dist"]
    assert "already taken by first-dist" in " ".join(second.errors)
    assert catalog.list_backbones("twin:*") == ["twin:fakenet"]


# ---------------------------------------------------------------- hooks called on models


class GroupsRaise:
    @staticmethod
    @zoo.hookimpl(tryfirst=True)
    def zoo_param_groups(model, backbone):
        raise ValueError("grouping exploded")


def test_zoo_param_groups_raising_falls_back_and_is_recorded(zoo_register_plugin):
    catalog = zoo_register_plugin(GroupsRaise(), name="grouper")
    table = zoo.params("timm:resnet18")
    assert table.groups[0] == "stem" and table.groups[-1] == "head"
    assert table.grouped_by == "timm"
    assert "zoo_param_groups raised ValueError: grouping exploded" in errors_of(
        catalog.host, "grouper"
    )


class GroupsFirst:
    @staticmethod
    @zoo.hookimpl(tryfirst=True)
    def zoo_param_groups(model, backbone):
        names = [name for name, _ in model.named_parameters()]
        return [zoo.ParamGroup("stem", names[:-2]), zoo.ParamGroup("head", names[-2:])]


def test_zoo_param_groups_first_answer_wins(zoo_register_plugin):
    zoo_register_plugin(GroupsFirst(), name="twogroups")
    table = zoo.params("timm:resnet18")
    assert table.grouped_by == "twogroups"
    assert table.groups == ["stem", "head"]


class Metadata:
    @staticmethod
    @zoo.hookimpl
    def zoo_register_backbones(register):
        from torch import nn

        register(zoo.BackboneSpec(name="lin", create=lambda n=None, p=False: nn.Linear(4, n or 2)))

    @staticmethod
    @zoo.hookimpl
    def zoo_extra_metadata(model, backbone):
        return {"stamp.backbone": backbone.qualified_name if backbone else "none"}


def test_zoo_extra_metadata_is_saved_with_the_model(zoo_register_plugin, tmp_path):
    zoo_register_plugin(Metadata(), name="stamp")
    zoo.save(zoo.create("stamp:lin", num_classes=3), tmp_path / "m.safetensors")
    loaded = zoo.load(tmp_path / "m.safetensors")
    assert loaded.zoo.metadata["stamp.backbone"] == "stamp:lin"
    assert loaded.out_features == 3


def test_plugin_records_round_trip_as_plain_data():
    record = PluginRecord(name="x", module="m", distribution="d", version="1", errors=["e"])
    assert PluginRecord.from_dict(record.to_dict()) == record
    assert not record.ok


# ---------------------------------------------------------------- zoo.testing, as a pytest plugin

PLUGIN_AUTHOR_TESTS = """
import pytest
import zoo
from zoo.errors import PluginCheckError
from zoo.testing import check_plugin


@pytest.fixture
def zoo_autoload():
    return False  # only the built-in plugins in zoo_plugin_host / zoo_catalog


class Broken:
    PLUGIN_NAME = "broken"

    @staticmethod
    @zoo.hookimpl
    def zoo_register_policies(register):
        register(zoo.PolicySpec(name="nonsense", plan=lambda table: ["no.such.param"]))


def test_fixtures(zoo_catalog, zoo_home):
    assert zoo.get_catalog() is zoo_catalog
    assert sorted(zoo_catalog.host.records) == ["timm", "zoo"]
    assert str(zoo_home) in __import__("os").environ["ZOO_HOME"]


def test_check_plugin_reports_a_bad_policy(zoo_register_plugin):
    with pytest.raises(PluginCheckError) as info:
        check_plugin(Broken())
    report = str(info.value)
    assert "zoo plugin check of broken" in report
    assert "FAIL policy broken:nonsense plans a small CNN" in report
    assert "no.such.param" in report
"""


def test_zoo_testing_is_a_pytest_plugin_for_plugin_authors(tmp_path, monkeypatch):
    (tmp_path / "test_author.py").write_text(PLUGIN_AUTHOR_TESTS, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    status = pytest.main(
        [
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            str(tmp_path / "test_author.py"),
        ]
    )
    assert status == pytest.ExitCode.OK


# ---------------------------------------------------------------- check_plugin, for plugin authors


class _DictOut:
    """A backbone whose forward returns a dict (a model-output object), not a logits tensor."""

    PLUGIN_NAME = "dictout"

    @staticmethod
    @zoo.hookimpl
    def zoo_register_backbones(register):
        from torch import nn

        class Wrapped(nn.Module):
            def __init__(self, n):
                super().__init__()
                self.fc = nn.Linear(3 * 8 * 8, n)

            def forward(self, x):
                return {"logits": self.fc(x.flatten(1))}

        register(
            zoo.BackboneSpec(
                name="net",
                create=lambda num_classes=None, pretrained=False: Wrapped(num_classes or 2),
                input_config=zoo.InputConfig(input_size=(3, 8, 8)),
            )
        )


def test_check_plugin_says_forward_must_return_a_logits_tensor():
    report = check_plugin(_DictOut(), raise_on_failure=False)
    (failure,) = report.failures
    assert "runs forward" in failure.name
    assert "returned dict, not a tensor" in failure.detail
    assert "must return the logits" in failure.detail and "(2, 3)" in failure.detail
    assert "output shape ()" not in str(report)


class _Flat:
    """Two backbones only the generic grouping describes; one is just conv + linear."""

    PLUGIN_NAME = "flat"

    @staticmethod
    @zoo.hookimpl
    def zoo_register_backbones(register):
        from torch import nn

        def small(num_classes=None, pretrained=False):
            return nn.Sequential(
                nn.Conv2d(3, 4, 3),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(4, num_classes or 2),
            )

        def staged(num_classes=None, pretrained=False):
            return nn.Sequential(
                nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes or 2),
            )  # fmt: skip

        config = zoo.InputConfig(input_size=(3, 16, 16))
        register(zoo.BackboneSpec(name="a-small", create=small, input_config=config))
        register(zoo.BackboneSpec(name="b-staged", create=staged, input_config=config))

    @staticmethod
    @zoo.hookimpl
    def zoo_register_policies(register):
        register(zoo.PolicySpec(name="all", plan=lambda table: table.names))


def test_check_plugin_warns_on_stem_and_head_only_and_plans_on_the_given_backbone():
    report = check_plugin(_Flat())
    assert report.ok
    (warning,) = report.warnings
    assert warning.name == "flat:a-small has stages between stem and head"
    assert "only stem + head" in warning.detail and "zoo_param_groups" in warning.detail
    assert "WARN flat:a-small has stages" in str(report) and "1 warning(s)" in str(report)
    assert "policy flat:all plans flat:a-small" in str(report)  # first in name order
    chosen = check_plugin(_Flat(), backbone="flat:b-staged")
    assert "policy flat:all plans flat:b-staged" in str(chosen)
    other = check_plugin(_Flat(), backbone="timm:resnet18", forward=False)
    assert "policy flat:all plans timm:resnet18: 62 of 62 tensors train" in str(other)
    missing = check_plugin(_Flat(), backbone="flat:nope", raise_on_failure=False)
    assert [c.name for c in missing.failures] == ["policies can be planned on flat:nope"]


BAD_GROUPS = """
    import zoo
    from torch import nn

    @zoo.hookimpl
    def zoo_register_backbones(register):
        register(zoo.BackboneSpec(name="net", create=lambda num_classes=None, pretrained=False:
            nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, num_classes or 2))))

    @zoo.hookimpl
    def zoo_param_groups(model, backbone):
        if backbone is None or backbone.plugin != "badgroups":
            return None
        return [zoo.ParamGroup("stem", ["0.weight"])]  # misses parameters
"""


@pytest.mark.slow
def test_zoo_param_groups_invalid_answer_shows_in_check_plugin_and_zoo_show(site):
    import subprocess

    site.install("badgroups-dist", {"badgroups": "badgroups_mod"}, {"badgroups_mod": BAD_GROUPS})
    catalog = Catalog(make_plugin_host(autoload=True))
    report = check_plugin("badgroups", catalog, forward=False, raise_on_failure=False)
    names = [c.name for c in report.failures]
    assert "badgroups:net has a parameter table" in names
    assert "zoo_param_groups returned invalid groups" in str(report)
    env = {**__import__("os").environ, "PYTHONPATH": str(site.root), "COLUMNS": "200"}
    shown = subprocess.run(
        [sys.executable, "-m", "zoo.cli.main", "show", "badgroups:net"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    text = " ".join((shown.stdout + shown.stderr).split())
    assert "zoo_param_groups returned invalid groups" in text
