"""The uniform parameter table: zoo.params for timm models, plugin models and plain modules."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import zoo
from zoo.api import get_catalog, set_catalog
from zoo.core.catalog import Catalog
from zoo.core.plugins import make_plugin_host
from zoo.core.specs import BackboneSpec, ParamGroup
from zoo.errors import GroupingError, ModelBuildError, UnknownNameError
from zoo.tables.build import (
    build_meta,
    classifier_param_names,
    generic_groups,
    storage_bytes,
    validate_groups,
)
from zoo.tables.table import NormInfo, ParamInfo, ParamTable

TIMM_MODELS = [
    "timm:resnet18",
    "timm:vit_tiny_patch16_224",
    "timm:convnext_atto",
    "timm:levit_128s",
    "timm:efficientnet_b0",
]


@pytest.fixture(scope="module")
def tables() -> dict[str, ParamTable]:
    return {name: zoo.params(name) for name in TIMM_MODELS}


def assert_well_formed(table: ParamTable) -> None:
    """Stem at depth 0, depths contiguous and non-decreasing in module order, head last."""
    depths = [row.depth for row in table]
    assert depths == sorted(depths), "depth must not go back in module order"
    assert table.depths == list(range(table.max_depth + 1))
    assert table.groups[0] == "stem"
    assert any(g.startswith("stage.") for g in table.groups)
    for row in table:
        assert row.group == table.groups[row.depth]
        assert row.numel == int(torch.Size(row.shape).numel())
    norm_params = {p for n in table.norms for p in n.params}
    assert norm_params <= set(table.names)


# ---------------------------------------------------------------- timm models


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_tables_are_well_formed(tables, name):
    table = tables[name]
    assert_well_formed(table)
    assert table.backbone == name
    assert table.grouped_by == "timm"
    assert table.groups[-1] == "head"
    assert [r.role for r in table.head()] == ["head"] * len(table.head())
    assert all(r.trainable and r.dtype == "float32" for r in table)


def test_resnet18_groups_and_head(tables):
    table = tables["timm:resnet18"]
    assert table.groups == ["stem", "stage.1", "stage.2", "stage.3", "stage.4", "head"]
    assert [r.name for r in table.head()] == ["fc.weight", "fc.bias"]
    assert table.max_depth == 5
    assert table["conv1.weight"].depth == 0
    assert table["layer3.0.conv1.weight"].group == "stage.3"
    assert table["layer1.0.bn1.weight"].role == "norm"
    assert table["layer1.0.conv1.weight"].role == "weight"
    assert table["fc.weight"].shape == (1000, 512)
    assert table.total_numel == 11_689_512
    assert len(table.norms) == 20
    assert {n.type for n in table.norms} == {"BatchNorm2d"}
    assert all(n.tracks_running_stats for n in table.norms)
    assert table.norms[0] == NormInfo(
        "bn1", "BatchNorm2d", 0, "stem", True, ("bn1.weight", "bn1.bias")
    )


def test_vit_roles_and_final_norm(tables):
    table = tables["timm:vit_tiny_patch16_224"]
    assert table.groups == ["stem", *[f"stage.{i}" for i in range(1, 13)], "head"]
    assert table["cls_token"].role == "embedding"
    assert table["pos_embed"].role == "embedding"
    assert table["cls_token"].module == "" and table["cls_token"].depth == 0
    assert table["patch_embed.proj.weight"].group == "stem"
    assert table["blocks.0.attn.qkv.bias"].role == "bias"
    assert table["blocks.0.norm1.weight"].role == "norm"
    assert table["blocks.11.mlp.fc2.weight"].group == "stage.12"
    assert table["norm.weight"].group == "stage.12"  # timm keeps the final norm with the last block
    assert {n.type for n in table.norms} == {"LayerNorm"}
    assert not any(n.tracks_running_stats for n in table.norms)


def test_convnext_layernorm2d_and_neck(tables):
    table = tables["timm:convnext_atto"]
    assert table.groups[-2:] == ["neck", "head"]
    assert [r.name for r in table.in_group("neck")] == ["head.norm.weight", "head.norm.bias"]
    assert [r.name for r in table.head()] == ["head.fc.weight", "head.fc.bias"]
    types = {n.type for n in table.norms}
    assert "LayerNorm2d" in types
    assert table["stem.1.weight"].role == "norm"


def test_levit_batchnorm1d_and_two_heads(tables):
    table = tables["timm:levit_128s"]
    bn1d = [n for n in table.norms if n.type == "BatchNorm1d"]
    assert len(bn1d) == 48
    assert all(n.tracks_running_stats for n in bn1d)
    # LevitDistilled: get_classifier() returns (head, head_dist); both are the head
    assert {r.name.split(".")[0] for r in table.head()} == {"head", "head_dist"}
    assert table["head.bn.weight"].role == "head"
    head_norms = [n for n in table.norms if n.group == "head"]
    assert [n.path for n in head_norms] == ["head.bn", "head_dist.bn"]
    assert all(n.depth == table.max_depth for n in head_norms)


def test_efficientnet_batchnormact2d(tables):
    table = tables["timm:efficientnet_b0"]
    assert {n.type for n in table.norms} == {"BatchNormAct2d"}
    assert len(table.norms) == 49
    assert table["bn1.weight"].role == "norm" and table["bn1.weight"].depth == 0
    assert table["conv_head.weight"].depth == table.max_depth - 1  # timm: with the last block
    assert [r.name for r in table.head()] == ["classifier.weight", "classifier.bias"]


def test_depth_summary_totals(tables):
    table = tables["timm:resnet18"]
    summary = table.depth_summary()
    assert [s.depth for s in summary] == list(range(6))
    assert [s.group for s in summary] == table.groups
    assert sum(s.numel for s in summary) == table.total_numel
    assert sum(s.tensors for s in summary) == len(table)
    assert sum(s.norms for s in summary) == len(table.norms)
    assert summary[-1].numel == 512 * 1000 + 1000


def test_json_round_trip(tables):
    for table in tables.values():
        again = ParamTable.from_json(table.to_json())
        assert again == table
        assert again.to_dict() == table.to_dict()
        assert again.names == table.names
    data = tables["timm:resnet18"].to_dict()
    assert data["max_depth"] == 5 and data["rows"][0]["shape"] == [64, 3, 7, 7]


def test_with_trainable_and_model_object():
    model = zoo.create("timm:resnet18", num_classes=3)
    for p in model.parameters():
        p.requires_grad_(False)
    model.fc.weight.requires_grad_(True)
    table = zoo.params(model)
    assert table.backbone == "timm:resnet18"  # found through model.zoo.build
    assert table.trainable_numel == 512 * 3
    assert [r.name for r in table if r.trainable] == ["fc.weight"]
    both = table.with_trainable({"fc.weight", "fc.bias"})
    assert both.trainable_numel == 512 * 3 + 3
    assert table.trainable_numel == 512 * 3  # the original is unchanged


def test_num_classes_zero_has_no_head():
    table = zoo.params("timm:resnet18", num_classes=0)
    assert "head" not in table.groups
    assert table.head() == []
    assert table.groups[-1] == "stage.4"


def test_head_is_moved_to_max_depth_whatever_the_grouping():
    model = zoo.create("timm:resnet18", num_classes=2)
    names = [n for n, _ in model.named_parameters()]
    # a grouping that files the classifier under the stem: the head still ends up last
    groups = [
        ParamGroup("stem", [n for n in names if n.startswith(("conv1", "bn1", "fc"))]),
        ParamGroup("stage.1", [n for n in names if n.startswith("layer")]),
    ]

    class Misplaced:
        @zoo.hookimpl
        def zoo_param_groups(self, model, backbone):
            return groups

    catalog = Catalog(make_plugin_host(autoload=False, builtins=False, extra={"mis": Misplaced()}))
    from zoo.tables.build import describe

    table = describe(model, catalog=catalog)
    assert table.grouped_by == "mis"
    assert table.groups == ["stem", "stage.1", "head"]
    assert [r.name for r in table.head()] == ["fc.weight", "fc.bias"]


# ---------------------------------------------------------------- meta device


def test_meta_build_allocates_no_storage():
    model = build_meta("timm:convnext_atto", catalog=get_catalog())
    assert model.zoo.notes == ()
    assert all(p.is_meta for p in model.parameters())
    assert all(b.is_meta for b in model.buffers())
    assert storage_bytes(model) == 0
    assert model.zoo.build.backbone == "timm:convnext_atto"


def test_billion_parameter_model_is_described_without_weights():
    table = zoo.params("timm:vit_giant_patch14_224")
    assert table.total_numel > 1_000_000_000  # 4 GB of float32 were never allocated
    assert table.groups[0] == "stem" and table.groups[-1] == "head"


def test_unknown_name_and_bad_argument():
    with pytest.raises(UnknownNameError, match="did you mean"):
        zoo.params("timm:resnet_18")
    with pytest.raises(TypeError, match=re.escape("nn.Module or a backbone name")):
        zoo.params(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="only apply when building"):
        zoo.params(nn.Linear(2, 2), num_classes=3)


# ---------------------------------------------------------------- plain modules


def test_hand_written_sequential_gets_a_generic_table():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3),
        nn.GroupNorm(4, 16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, bias=False),
        nn.BatchNorm2d(16, affine=False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.LayerNorm(16),
        nn.Linear(16, 5),
    )
    table = zoo.params(model)
    assert table.grouped_by == "generic"
    assert table.backbone is None
    assert table.groups == ["stem", "stage.1", "stage.2", "head"]
    assert [r.name for r in table.in_group("stem")] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert table["4.weight"].group == "stage.1"  # the norm joins the conv before it
    assert table["10.weight"].group == "stage.2"
    assert [r.name for r in table.head()] == ["11.weight", "11.bias"]
    assert_well_formed(table)
    by_path = {n.path: n for n in table.norms}
    assert by_path["4"].type == "GroupNorm" and not by_path["4"].tracks_running_stats
    assert by_path["7"].params == () and by_path["7"].tracks_running_stats
    assert by_path["7"].depth == 2  # no affine: placed with the layer around it
    assert table["6.weight"].role == "weight"


class Wrapped(nn.Module):
    """A wrapper whose parameters all sit in one child, with a custom classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Module()
        self.net.embed = nn.Embedding(10, 4)
        self.net.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])
        self.net.out = nn.Linear(4, 2)

    def get_classifier(self) -> nn.Module:
        return self.net.out


def test_generic_grouping_descends_wrappers_and_splits_block_lists():
    model = Wrapped()
    groups = generic_groups(model)
    assert [g.name for g in groups] == ["stem", "stage.1", "stage.2", "stage.3", "head"]
    assert groups[0].params == ("net.embed.weight",)
    assert groups[-1].params == ("net.out.weight", "net.out.bias")
    table = zoo.params(model)
    assert table["net.embed.weight"].role == "embedding"
    assert classifier_param_names(model) == ["net.out.weight", "net.out.bias"]


class TokenNet(nn.Module):
    """ViT-like: a class token on the model itself, a patch embedding, a list of blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.patch = nn.Conv2d(3, 4, 4, stride=4)
        self.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(2)])
        self.norm = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 2)


def test_generic_grouping_puts_model_level_tokens_in_the_stem():
    table = zoo.params(TokenNet())
    assert table.groups == ["stem", "stage.1", "stage.2", "head"]
    assert [r.name for r in table.in_group("stem")] == ["cls_token", "patch.weight", "patch.bias"]
    assert table["norm.weight"].group == "stage.2"  # a final norm joins the last block
    assert table["cls_token"].role == "embedding"


def test_timm_model_without_coarse_matcher_uses_the_generic_grouping():
    catalog = get_catalog()
    before = list(catalog.host.records["timm"].errors)
    table = zoo.params("timm:rdnet_tiny")  # timm: "coarse grouping is not implemented"
    assert table.grouped_by == "generic" and table.notes == ()
    assert catalog.host.records["timm"].errors == before  # not a plugin error
    assert table.groups[0] == "stem" and table.groups[-2:] == ["neck", "head"]
    assert [r.name for r in table.head()] == ["head.fc.weight", "head.fc.bias"]


def test_shared_parameters_appear_once():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4))
    model[2].weight = model[0].weight  # tied
    table = zoo.params(model)
    assert table.names == ["0.weight", "0.bias", "1.weight", "1.bias", "2.bias"]
    assert validate_groups(generic_groups(model), table.names)


# ---------------------------------------------------------------- plugins


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.trunk = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1)
        )
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.trunk(self.patch(x)).mean((2, 3)))


def _make_tiny(num_classes: int | None = None, pretrained: bool | str = False, **kw) -> nn.Module:
    return TinyNet(num_classes or 4, **kw)


class ItemNet(TinyNet):
    """A constructor that reads a tensor value, which the meta device cannot give."""

    def __init__(self, num_classes: int = 4) -> None:
        width = int(torch.linspace(0, 8, 3)[1].item())  # 4
        super().__init__(num_classes)
        self.extra = nn.Linear(width, width)


def _make_half_frozen(num_classes=None, pretrained=False, **kw):
    model = TinyNet(num_classes or 4)
    nn.init.trunc_normal_(model.fc.weight, std=0.02)  # skipped on meta: there are no values
    with torch.no_grad():
        model.fc.weight.mul_(0.5).clamp_(-1, 1)
    model.patch.weight.requires_grad_(False)  # never skipped: it is not about values
    return model


def _make_broken(num_classes=None, pretrained=False, **kw):
    raise ValueError("depth must be positive")


class TinyPlugin:
    """Registers two backbones; answers zoo_param_groups for the first, wrongly for the second."""

    calls: list[tuple[str, str | None]]

    def __init__(self) -> None:
        self.calls = []

    @zoo.hookimpl
    def zoo_register_backbones(self, register):
        register(BackboneSpec(name="tinynet", create=_make_tiny, summary="tiny test net"))
        register(BackboneSpec(name="badnet", create=_make_tiny, summary="bad groups"))
        register(BackboneSpec(name="plainnet", create=_make_tiny, summary="no groups"))
        register(BackboneSpec(name="raisenet", create=_make_tiny, summary="hook raises"))
        register(
            BackboneSpec(
                name="itemnet",
                create=lambda num_classes=None, pretrained=False: ItemNet(num_classes or 4),
            )
        )
        register(BackboneSpec(name="brokennet", create=_make_broken))
        register(BackboneSpec(name="halfnet", create=_make_half_frozen))

    @zoo.hookimpl
    def zoo_param_groups(self, model, backbone):
        name = backbone.name if backbone is not None else None
        self.calls.append((type(model).__name__, name))
        if name == "tinynet":
            return [
                ParamGroup("stem", ["patch.weight", "patch.bias"]),
                ParamGroup(
                    "trunk", [n for n, _ in model.named_parameters() if n.startswith("trunk")]
                ),
                ParamGroup("head", ["fc.weight", "fc.bias"]),
            ]
        if name == "badnet":
            return [ParamGroup("stem", ["patch.weight", "nonexistent.weight"])]
        if name == "raisenet":
            raise RuntimeError("boom")
        return None


@pytest.fixture
def tiny_catalog():
    plugin = TinyPlugin()
    catalog = Catalog(make_plugin_host(autoload=False, extra={"tiny": plugin}))
    previous = set_catalog(catalog)
    try:
        yield catalog, plugin
    finally:
        set_catalog(previous)


def test_plugin_answers_for_its_backbone(tiny_catalog):
    _catalog, plugin = tiny_catalog
    table = zoo.params("tiny:tinynet")
    assert table.backbone == "tiny:tinynet"
    assert table.grouped_by == "tiny"
    assert table.groups == ["stem", "trunk", "head"]
    assert [r.depth for r in table.head()] == [2, 2]
    assert table.model_type.endswith("TinyNet")
    assert ("TinyNet", "tinynet") in plugin.calls
    assert [n.path for n in table.norms] == ["trunk.1"]
    # a model built by zoo.create is recognised through model.zoo.build
    model = zoo.create("tinynet", num_classes=3)
    assert zoo.params(model).grouped_by == "tiny"
    assert zoo.params(model)["fc.weight"].shape == (3, 8)


def test_invalid_plugin_groups_fall_back_and_are_recorded(tiny_catalog):
    catalog, _plugin = tiny_catalog
    table = zoo.params("tiny:badnet")
    assert table.grouped_by == "generic"
    assert table.groups == ["stem", "stage.1", "stage.2", "head"]  # trunk split into its layers
    assert any("plugin 'tiny'" in note and "nonexistent.weight" in note for note in table.notes)
    errors = catalog.host.records["tiny"].errors
    assert any("zoo_param_groups returned invalid groups" in e and "no group" in e for e in errors)


def test_plugin_without_an_answer_gets_the_generic_grouping(tiny_catalog):
    table = zoo.params("tiny:plainnet")
    assert table.grouped_by == "generic"
    assert table.groups == ["stem", "stage.1", "stage.2", "head"]
    assert table["trunk.1.weight"].group == "stage.1"  # the BatchNorm stays with its conv
    assert table.notes == ()


def test_plugin_hook_that_raises_is_noted_and_skipped(tiny_catalog):
    catalog, _ = tiny_catalog
    for _ in range(2):  # the note appears every time, not only when first recorded
        table = zoo.params("tiny:raisenet")
        assert table.grouped_by == "generic"
        assert table.notes == (
            "plugin 'tiny': zoo_param_groups raised RuntimeError: boom; ignored",
        )
    assert "zoo_param_groups raised RuntimeError: boom" in catalog.host.records["tiny"].errors


def test_constructor_reading_values_falls_back_to_meta_per_parameter(tiny_catalog):
    model = build_meta("tiny:itemnet", catalog=get_catalog())
    notes = model.zoo.notes
    assert notes and "one at a time" in notes[0]
    assert all(p.is_meta for p in model.parameters()) and storage_bytes(model) == 0
    table = zoo.params("tiny:itemnet")
    assert table["extra.weight"].shape == (4, 4)
    assert table.notes == tuple(notes)
    assert not (nn.Module.register_parameter.__module__ or "").startswith("zoo")  # restored


def test_meta_build_skips_initialisation_but_keeps_flags(tiny_catalog):
    model = build_meta("tiny:halfnet", catalog=get_catalog())
    assert model.zoo.notes == () and storage_bytes(model) == 0
    table = zoo.params("tiny:halfnet")
    assert not table["patch.weight"].trainable
    assert table.trainable_numel == table.total_numel - table["patch.weight"].numel
    # outside a meta build, in-place operations on a real model behave as usual
    real = _make_half_frozen()
    assert real.fc.weight.abs().max() > 0 and not real.patch.weight.requires_grad


def test_backbone_that_cannot_be_built_is_a_clear_error(tiny_catalog):
    with pytest.raises(ModelBuildError, match="cannot build tiny:brokennet") as info:
        zoo.params("tiny:brokennet")
    assert "depth must be positive" in str(info.value)
    assert "zoo.params(zoo.create('tiny:brokennet'))" in str(info.value)


def test_plugin_answer_beats_timm_for_a_timm_model(tiny_catalog):
    """The built-in timm plugin answers last: a third-party answer for a timm model wins."""
    catalog, _ = tiny_catalog

    class Coarse:
        @zoo.hookimpl
        def zoo_param_groups(self, model, backbone):
            if backbone is None or backbone.name != "resnet18":
                return None
            names = [n for n, _ in model.named_parameters()]
            return [
                ParamGroup("stem", [n for n in names if not n.startswith("fc")]),
                ParamGroup("head", ["fc.weight", "fc.bias"]),
            ]

    catalog.host.add(Coarse(), type(catalog.host.records["tiny"])(name="coarse", module="test"))
    table = zoo.params("timm:resnet18")
    assert table.grouped_by == "coarse"
    assert table.groups == ["stem", "head"]


def test_validate_groups_names_every_problem():
    names = ["a.weight", "a.bias", "b.weight"]
    with pytest.raises(GroupingError, match=re.escape("unknown parameter 'c.weight'")):
        validate_groups([ParamGroup("stem", ["a.weight", "a.bias", "b.weight", "c.weight"])], names)
    with pytest.raises(GroupingError, match=re.escape("in both 'stem' and 'head'")):
        validate_groups([ParamGroup("stem", names), ParamGroup("head", ["b.weight"])], names)
    with pytest.raises(GroupingError, match=re.escape("1 parameter in no group: 'b.weight'")):
        validate_groups([ParamGroup("stem", ["a.weight", "a.bias"])], names)
    with pytest.raises(GroupingError, match=re.escape("zoo.ParamGroup items")):
        validate_groups([("stem", names)], names)
    ok = validate_groups([ParamGroup("stem", names), ParamGroup("empty", [])], names)
    assert [g.name for g in ok] == ["stem"]


def test_hand_built_table_for_policies():
    rows = [
        ParamInfo("w", "", "Linear", "weight", (2, 2), 4, "float32", "stem", 0),
        ParamInfo("h", "", "Linear", "head", (2,), 2, "float32", "head", 1, trainable=False),
    ]
    table = ParamTable(rows=rows)
    assert table.max_depth == 1 and [r.name for r in table.head()] == ["h"]
    assert table.trainable_numel == 4
    with pytest.raises(UnknownNameError):
        table["nope"]


def test_process_catalog_is_used_by_default():
    assert (
        zoo.params("timm:resnet18").backbone
        == get_catalog().backbone("timm:resnet18")[0].qualified_name
    )
