"""The third-party plugin plugins/zoo-torchvision, discovered through its real entry point."""

from __future__ import annotations

import functools
import importlib.metadata as importlib_metadata
import json

import pytest
import torch
import torchvision.models as tvm
from zoo_torchvision import plugin as tv_plugin
from zoo_torchvision import weights as tv_weights
from zoo_torchvision.groups import FAMILIES
from zoo_torchvision.registry import summary_of

import zoo
from zoo.cli.main import main as zoo_main
from zoo.core.catalog import build_catalog
from zoo.errors import ModelBuildError
from zoo.testing import check_plugin

FAMILY_MODELS = {  # the smallest model of every family
    "alexnet": "alexnet",
    "convnext": "convnext_tiny",
    "densenet": "densenet121",
    "efficientnet": "efficientnet_b0",
    "googlenet": "googlenet",
    "inception": "inception_v3",
    "maxvit": "maxvit_t",
    "mnasnet": "mnasnet0_5",
    "mobilenetv2": "mobilenet_v2",
    "mobilenetv3": "mobilenet_v3_small",
    "regnet": "regnet_y_400mf",
    "resnet": "resnet18",
    "shufflenetv2": "shufflenet_v2_x0_5",
    "squeezenet": "squeezenet1_1",
    "swin_transformer": "swin_t",
    "vgg": "vgg11",
    "vision_transformer": "vit_b_32",
}


@pytest.fixture(scope="module")
def catalog():
    return build_catalog(autoload=True)


@pytest.fixture
def empty_torch_hub(tmp_path, monkeypatch):
    """A private, empty torch hub cache ($TORCH_HOME/hub/checkpoints)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


# ---------------------------------------------------------------- discovery and listing


def test_discovered_through_its_entry_point(catalog):
    eps = [
        ep
        for ep in importlib_metadata.entry_points(group="zoo.plugins")
        if ep.name == "torchvision"
    ]
    assert [ep.value for ep in eps] == ["zoo_torchvision.plugin"]
    record = catalog.host.records["torchvision"]
    assert record.ok, record.errors
    assert record.distribution == "zoo-torchvision"
    assert not record.builtin
    assert record.backbones == len(tvm.list_models(module=tvm))
    assert record.hooks == ["zoo_extra_metadata", "zoo_param_groups", "zoo_register_backbones"]


def test_zoo_list_shows_both_resnet50s(capsys):
    assert zoo_main(["list", "backbones", "resnet50", "--json"]) in (0, None)
    listed = json.loads(capsys.readouterr().out)
    names = {f"{b['plugin']}:{b['name']}" for b in listed["backbones"]}
    assert {"timm:resnet50", "torchvision:resnet50"} <= names


def test_qualified_names_resolve_and_the_bare_one_is_ambiguous(catalog):
    assert catalog.backbone("torchvision:resnet50")[0].plugin == "torchvision"
    assert catalog.backbone("timm:resnet50")[0].plugin == "timm"
    with pytest.raises(zoo.AmbiguousNameError) as info:
        catalog.backbone("resnet50")
    assert info.value.candidates == ["timm:resnet50", "torchvision:resnet50"]


def test_listing_builds_no_model(monkeypatch):
    import torchvision.models._api as tv_api

    built = []
    for name, builder in list(tv_api.BUILTIN_MODELS.items()):

        @functools.wraps(builder)
        def record(*args, _name=name, **kwargs):
            built.append(_name)
            raise AssertionError("a model was built while listing")

        monkeypatch.setitem(tv_api.BUILTIN_MODELS, name, record)
    catalog = build_catalog(autoload=True)
    assert catalog.host.records["torchvision"].ok, catalog.host.records["torchvision"].errors
    assert len(catalog.list_backbones("torchvision:*")) == len(tvm.list_models(module=tvm))
    assert built == []
    with pytest.raises(ModelBuildError, match="built while listing") as info:
        zoo.create("torchvision:resnet18")  # the guard is live: building would be caught
    assert isinstance(info.value.__cause__, AssertionError)


def test_weights_enums_become_tags_with_their_input_configs(catalog):
    spec, tag = catalog.backbone("torchvision:resnet50.IMAGENET1K_V1")
    assert tag == "IMAGENET1K_V1"
    assert spec.pretrained_tags == ("IMAGENET1K_V2", "IMAGENET1K_V1")  # DEFAULT first
    assert spec.input_config.crop_pct == pytest.approx(224 / 232, abs=1e-4)
    assert spec.input_config_for("IMAGENET1K_V1").crop_pct == pytest.approx(0.875)
    assert spec.input_config.interpolation == "bilinear"
    assert (spec.head, spec.num_classes, spec.family) == ("fc", 1000, "resnet")
    vit = catalog.backbone("torchvision:vit_b_16")[0]
    swag = vit.input_config_for("IMAGENET1K_SWAG_E2E_V1")
    assert (swag.input_size, swag.interpolation) == ((3, 384, 384), "bicubic")


def test_unknown_tag_suggests_close_ones(catalog):
    with pytest.raises(zoo.UnknownNameError, match="IMAGENET1K_V2"):
        catalog.backbone("torchvision:resnet50.IMAGENET1K_V3")


def test_summary_drops_restructured_text_markup():
    doc = "ResNet-50 from `Deep Residual Learning <https://arxiv.org/abs/1512.03385>`__.\n\nMore."
    assert summary_of(doc) == "ResNet-50 from Deep Residual Learning"


# ---------------------------------------------------------------- building


def test_create_with_a_new_head_and_without_one():
    model = zoo.create("torchvision:resnet18", num_classes=5).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    assert model.zoo.build.backbone == "torchvision:resnet18"
    features = zoo.create("torchvision:mobilenet_v3_small", num_classes=0).eval()
    assert features(torch.randn(1, 3, 32, 32)).shape == (1, 1024)  # the hidden layer's output
    assert isinstance(features.classifier[3], torch.nn.Identity)


def test_pretrained_fails_fast_offline_naming_the_weights(
    empty_torch_hub, monkeypatch, network_calls
):
    for name in tv_weights.OFFLINE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(zoo.WeightsUnavailableError) as info:
        zoo.create("torchvision:resnet18", pretrained=True)
    assert network_calls == []  # fast because it never tries the network, on any machine
    message = str(info.value)
    assert "ResNet18_Weights.IMAGENET1K_V1" in message
    assert "HF_HUB_OFFLINE" in message
    assert str(empty_torch_hub / "resnet18-f37072fd.pth") in message
    assert "pretrained=False" in message and "weights=" in message


def test_pretrained_fails_when_the_host_is_unreachable(empty_torch_hub, monkeypatch):
    for name in tv_weights.OFFLINE_ENV:
        monkeypatch.delenv(name, raising=False)
    asked = []
    monkeypatch.setattr(tv_weights, "_reachable", lambda host, timeout=3.0: asked.append(host))
    with pytest.raises(zoo.WeightsUnavailableError, match=r"download\.pytorch\.org is unreachable"):
        zoo.create("torchvision:resnet18.IMAGENET1K_V1", pretrained=True)
    assert asked == ["download.pytorch.org"]


def test_pretrained_loads_from_the_torch_hub_cache_offline(empty_torch_hub):
    weights = tvm.ResNet18_Weights.IMAGENET1K_V1
    reference = tvm.resnet18()
    empty_torch_hub.mkdir(parents=True)
    torch.save(reference.state_dict(), tv_weights.cache_path(weights))

    model = zoo.create("torchvision:resnet18", pretrained=True)
    assert torch.equal(model.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)
    assert model.zoo.classes == list(weights.meta["categories"])
    assert not hasattr(model, "zoo_classes")  # the plugin's hint, read into the record
    metadata = tv_plugin.zoo_extra_metadata(model, zoo.get_backbone("torchvision:resnet18"))
    assert metadata["torchvision.weights"] == "ResNet18_Weights.IMAGENET1K_V1"

    tuned = zoo.create("torchvision:resnet18.IMAGENET1K_V1", pretrained=True, num_classes=3)
    assert tuned.fc.out_features == 3
    assert torch.equal(tuned.conv1.weight, reference.conv1.weight)
    assert tuned.zoo.classes is None and not hasattr(tuned, "zoo_classes")


def test_save_and_load_round_trip(tmp_path):
    model = zoo.create("torchvision:shufflenet_v2_x0_5", num_classes=3).eval()
    zoo.save(model, tmp_path / "tv.safetensors", classes=["a", "b", "c"])
    loaded = zoo.load(tmp_path / "tv.safetensors")
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(loaded(x), model(x))
    assert loaded.zoo.build.backbone == "torchvision:shufflenet_v2_x0_5"
    assert loaded.zoo.metadata["torchvision.version"]


# ---------------------------------------------------------------- parameter groups


def test_every_family_has_a_model_in_the_table_below():
    families = {
        tvm.get_model_builder(n).__module__.rpartition(".")[2] for n in tvm.list_models(module=tvm)
    }
    assert families == set(FAMILY_MODELS) == set(FAMILIES)


@pytest.mark.parametrize("family", sorted(FAMILY_MODELS))
def test_param_groups_stem_stages_head(family):
    name = f"torchvision:{FAMILY_MODELS[family]}"
    table = zoo.params(name)
    assert table.grouped_by == "torchvision"
    groups = table.groups
    assert groups[0] == "stem" and groups[-1] == "head"
    stages = [g for g in groups if g.startswith("stage.")]
    assert stages == [f"stage.{i}" for i in range(1, len(stages) + 1)]
    assert len(stages) >= 2
    head_locator = zoo.get_backbone(name).head.split(",")[0]
    assert {r.name for r in table.head()} >= {
        r.name for r in table if r.name.startswith(head_locator + ".")
    }
    assert all(r.depth == table.max_depth for r in table if r.name.startswith(head_locator + "."))


def test_param_groups_answer_only_for_models_it_built():
    model = zoo.create("torchvision:resnet18")
    spec = zoo.get_backbone("torchvision:resnet18")
    assert tv_plugin.zoo_param_groups(model, spec) is not None
    assert tv_plugin.zoo_param_groups(model, None) is None
    assert tv_plugin.zoo_param_groups(model, zoo.get_backbone("timm:resnet18")) is None


def test_check_plugin_passes():
    report = check_plugin("torchvision", max_backbones=2)
    assert report.ok
    assert any("runs forward" in check.name for check in report.checks)
