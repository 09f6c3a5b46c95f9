"""The catalog: registration through the hooks, name resolution, listing, did-you-mean."""

from __future__ import annotations

import sys
import textwrap

import pytest
from torch import nn

import zoo
from zoo.core.catalog import Catalog
from zoo.core.plugins import make_plugin_host
from zoo.core.specs import BackboneSpec, InputConfig, PolicySpec
from zoo.errors import AmbiguousNameError, SpecError, UnknownNameError


def make_plugin(tag: str, backbones=("twin",), policies=("same-policy",), tags=()):
    """A plugin object whose backbones build an ``nn.Linear`` that says who made it."""

    class Plugin:
        @staticmethod
        @zoo.hookimpl
        def zoo_register_backbones(register):
            for name in backbones:
                register(
                    BackboneSpec(
                        name=name,
                        create=lambda n=None, p=False, _tag=tag: nn.Linear(3, n or len(_tag)),
                        summary=f"{name} from {tag}",
                        pretrained_tags=tuple(tags),
                        tag_input_configs={t: InputConfig(input_size=(3, 64, 64)) for t in tags},
                    )
                )

        @staticmethod
        @zoo.hookimpl
        def zoo_register_policies(register):
            for name in policies:
                register(
                    PolicySpec(
                        name=name,
                        plan=lambda table, _tag=tag: table.names,
                        summary=f"{name} from {tag}",
                    )
                )

    return Plugin()


def catalog_of(**plugins) -> Catalog:
    return Catalog(make_plugin_host(builtins=False, autoload=False, extra=plugins))


# ---------------------------------------------------------------- resolution


def test_zoo_register_backbones_and_policies_fill_the_registries():
    catalog = catalog_of(alpha=make_plugin("alpha", backbones=("net-a", "net-b")))
    assert catalog.list_backbones() == ["alpha:net-a", "alpha:net-b"]
    assert catalog.list_policies() == ["alpha:same-policy"]
    record = catalog.host.records["alpha"]
    assert (record.backbones, record.policies) == (2, 1)
    spec, tag = catalog.backbone("net-a")  # a unique bare name resolves
    assert (spec.qualified_name, spec.plugin, tag) == ("alpha:net-a", "alpha", None)
    assert catalog.policy("same-policy").plugin == "alpha"


def test_zoo_register_policies_same_name_from_two_plugins():
    catalog = catalog_of(alpha=make_plugin("alpha"), beta=make_plugin("beta"))
    with pytest.raises(AmbiguousNameError) as info:
        catalog.policy("same-policy")
    assert info.value.candidates == ["alpha:same-policy", "beta:same-policy"]
    assert catalog.policy("beta:same-policy").summary == "same-policy from beta"


def test_same_backbone_name_from_two_plugins_is_ambiguous_but_qualified_names_resolve():
    catalog = catalog_of(alpha=make_plugin("alpha"), beta=make_plugin("beta"))
    with pytest.raises(AmbiguousNameError) as info:
        catalog.backbone("twin")
    message = str(info.value)
    assert "alpha:twin" in message and "beta:twin" in message and "ambiguous" in message
    assert isinstance(info.value, KeyError) and isinstance(info.value, zoo.ZooError)
    # each qualified name builds its own plugin's model (Linear with len(tag) outputs)
    assert catalog.backbone("alpha:twin")[0].create().out_features == len("alpha")
    assert catalog.backbone("beta:twin")[0].create().out_features == len("beta")


def observed(catalog: Catalog) -> tuple:
    """Everything a user can see of a catalog, to compare two discovery orders."""
    try:
        catalog.backbone("twin")
        ambiguity = None
    except AmbiguousNameError as exc:
        ambiguity = str(exc)
    return (
        catalog.list_backbones(),
        catalog.list_policies(),
        ambiguity,
        catalog.backbone("alpha:twin")[0].summary,
        catalog.backbone("beta:twin")[0].summary,
    )


def test_results_do_not_depend_on_registration_order():
    one = catalog_of(alpha=make_plugin("alpha"), beta=make_plugin("beta"))
    two = catalog_of(beta=make_plugin("beta"), alpha=make_plugin("alpha"))
    assert observed(one) == observed(two)


PLUGIN_SOURCE = """
    import zoo
    from torch import nn

    @zoo.hookimpl
    def zoo_register_backbones(register):
        register(zoo.BackboneSpec(name="twin", summary="twin from {tag}",
                                  create=lambda n=None, p=False: nn.Linear(3, {size})))

    @zoo.hookimpl
    def zoo_register_policies(register):
        register(zoo.PolicySpec(name="same-policy", plan=lambda table: table.names))
"""


def test_results_do_not_depend_on_entry_point_discovery_order(tmp_path, monkeypatch):
    dirs = {}
    for tag in ("alpha", "beta"):
        root = tmp_path / tag
        info = root / f"dist_{tag}-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: dist-{tag}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[zoo.plugins]\n{tag} = ordermod_{tag}\n")
        source = textwrap.dedent(PLUGIN_SOURCE).format(tag=tag, size=len(tag))
        (root / f"ordermod_{tag}.py").write_text(source)
        dirs[tag] = str(root)
    seen = []
    try:
        for order in (("alpha", "beta"), ("beta", "alpha")):
            with monkeypatch.context() as m:
                for tag in order:
                    m.syspath_prepend(dirs[tag])
                seen.append(observed(Catalog(make_plugin_host(builtins=False, autoload=True))))
    finally:
        for tag in dirs:
            sys.modules.pop(f"ordermod_{tag}", None)
    assert seen[0] == seen[1]
    assert seen[0][3] == "twin from alpha"


# ---------------------------------------------------------------- did-you-mean


def test_unknown_backbone_suggests_close_names():
    catalog = catalog_of(alpha=make_plugin("alpha", backbones=("fakenet", "other")))
    with pytest.raises(UnknownNameError) as info:
        catalog.backbone("fakenett")
    assert info.value.suggestions == ["alpha:fakenet"]
    assert "did you mean 'alpha:fakenet'?" in str(info.value)
    with pytest.raises(UnknownNameError, match="did you mean 'alpha:fakenet'"):
        catalog.backbone("alpha:fakenett")


def test_unknown_policy_suggests_close_names():
    catalog = catalog_of(alpha=make_plugin("alpha", policies=("top-half",)))
    with pytest.raises(UnknownNameError, match="did you mean 'alpha:top-half'"):
        catalog.policy("top-halve")


def test_unknown_name_without_close_match_says_so_plainly():
    catalog = catalog_of(alpha=make_plugin("alpha"))
    with pytest.raises(UnknownNameError) as info:
        catalog.backbone("zzzzzz")
    assert str(info.value) == "unknown backbone 'zzzzzz'"
    with pytest.raises(UnknownNameError):
        catalog.backbone("")


# ---------------------------------------------------------------- pretrained tags


def test_a_tag_after_a_dot_selects_pretrained_weights():
    catalog = catalog_of(alpha=make_plugin("alpha", backbones=("net", "net.v2"), tags=("in1k",)))
    assert catalog.backbone("net.in1k") == (catalog.backbones.resolve("alpha:net"), "in1k")
    assert catalog.backbone("alpha:net.in1k")[1] == "in1k"
    assert catalog.backbone("net.v2")[0].name == "net.v2"  # a real name wins over a tag
    with pytest.raises(UnknownNameError, match=r"pretrained tag of alpha:net.*did you mean 'in1k'"):
        catalog.backbone("net.in1kk")


def test_listing_patterns_and_pretrained_tags():
    catalog = catalog_of(
        alpha=make_plugin("alpha", backbones=("net", "other"), tags=("in1k", "in21k")),
        beta=make_plugin("beta", backbones=("net",)),
    )
    assert catalog.list_backbones("net") == ["alpha:net", "beta:net"]
    assert catalog.list_backbones("alpha:*") == ["alpha:net", "alpha:other"]
    assert catalog.list_backbones("NET") == ["alpha:net", "beta:net"]  # case-insensitive
    assert catalog.list_backbones("net", pretrained=True) == ["alpha:net.in1k", "alpha:net.in21k"]
    assert catalog.list_backbones("*21k", pretrained=True) == [
        "alpha:net.in21k",
        "alpha:other.in21k",
    ]
    assert catalog.list_backbones(pretrained=False) == ["beta:net"]


# ---------------------------------------------------------------- bad registrations


class BadRegistrations:
    @staticmethod
    @zoo.hookimpl
    def zoo_register_backbones(register):
        register(BackboneSpec(name="dup", create=nn.ReLU))
        register(BackboneSpec(name="dup", create=nn.ReLU, summary="second"))
        register(BackboneSpec(name="kept", create=nn.ReLU))

    @staticmethod
    @zoo.hookimpl
    def zoo_register_policies(register):
        register("not-a-spec")


def test_duplicate_and_invalid_registrations_are_recorded_on_the_plugin():
    catalog = catalog_of(bad=BadRegistrations())
    errors = catalog.host.records["bad"].errors
    assert "plugin 'bad' registers backbone 'dup' twice" in errors
    assert any("register() expects a zoo.PolicySpec, got str" in e for e in errors)
    assert catalog.list_backbones() == ["bad:dup", "bad:kept"]
    assert catalog.backbone("dup")[0].summary == ""  # the first registration is kept
    assert catalog.host.records["bad"].backbones == 2


def test_invalid_spec_names_are_rejected():
    for bad in ("a:b", "", "-x", "sp ace", None):
        with pytest.raises(SpecError):
            BackboneSpec(name=bad, create=nn.ReLU)
    with pytest.raises(SpecError, match="ParamTable as its first argument"):
        PolicySpec(name="p", plan=lambda: [])


# ---------------------------------------------------------------- the process-wide catalog


def test_create_resolves_through_the_installed_catalog(zoo_register_plugin):
    zoo_register_plugin(make_plugin("alpha", backbones=("net",), tags=("in1k",)), name="alpha")
    model = zoo.create("alpha:net.in1k", num_classes=5, pretrained=True)
    assert model.out_features == 5
    assert model.zoo.build.backbone == "alpha:net"
    assert model.zoo.build.tag == "in1k"
    assert model.zoo.build.num_classes == 5
    assert model.zoo.input_config.input_size == (3, 64, 64)  # the tag's input config
    untrained = zoo.create("alpha:net.in1k", num_classes=5)  # a tag names weights only
    assert untrained.zoo.build.tag is None
    assert untrained.zoo.input_config.input_size == (3, 224, 224)
    assert zoo.list_backbones("alpha:*") == ["alpha:net"]
    assert zoo.list_backbones("alpha:*", pretrained=True) == ["alpha:net.in1k"]
    assert zoo.get_backbone("net").plugin == "alpha"
    with pytest.raises(zoo.ZooError, match="not both"):
        zoo.create("alpha:net", pretrained=True, weights="x.safetensors")


def test_zoo_catalog_fixture_installs_a_fresh_catalog(zoo_catalog):
    assert zoo.get_catalog() is zoo_catalog
    assert "timm" in zoo_catalog.host.records
