"""``zoo show NAME`` and the render functions behind it."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from rich.console import Console
from torch import nn

import zoo
from zoo.api import set_catalog
from zoo.cli.main import main
from zoo.cli.render_params import depth_table, header, norms_table, rows_table
from zoo.core.catalog import Catalog
from zoo.core.plugins import make_plugin_host
from zoo.core.specs import BackboneSpec
from zoo.tables.table import ParamInfo, ParamTable


def render(renderable, width: int = 120) -> str:
    buffer = StringIO()
    Console(file=buffer, width=width, color_system=None).print(renderable, soft_wrap=True)
    return buffer.getvalue()


def small_table() -> ParamTable:
    rows = [
        ParamInfo(
            "conv.weight", "conv", "Conv2d", "weight", (8, 3, 3, 3), 216, "float32", "stem", 0
        ),
        ParamInfo(
            "blocks.0.weight",
            "blocks.0",
            "Linear",
            "weight",
            (8, 8),
            64,
            "float32",
            "stage.1",
            1,
            trainable=False,
        ),
        ParamInfo("fc.weight", "fc", "Linear", "head", (2, 8), 16, "float32", "head", 2),
        ParamInfo("fc.bias", "fc", "Linear", "head", (2,), 2, "float32", "head", 2),
    ]
    return ParamTable(rows=rows, backbone="test:small", model_type="x.Small", grouped_by="test")


# ---------------------------------------------------------------- render functions


def test_depth_table_shows_counts_shares_trainable_and_bars():
    text = render(depth_table(small_table().depth_summary(), bar_width=10))
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines[0].split()[:4] == ["depth", "group", "tensors", "params"]
    stem, stage, head, total = lines[1:5]
    assert stem.split()[:6] == ["0", "stem", "1", "216", "72.5%", "all"]
    assert stage.split()[:6] == ["1", "stage.1", "1", "64", "21.5%", "none"]
    assert head.split()[:6] == ["2", "head", "2", "18", "6.0%", "all"]
    assert "███████░░░" in stem  # 72.5% of a 10-wide bar
    assert total.split()[:4] == ["total", "4", "298", "100%"]
    assert "234" in total  # trainable numel


def test_header_names_model_and_totals():
    text = render(header(small_table()))
    assert "test:small" in text and "(x.Small)" in text
    assert "298 parameters in 4 tensors, 64 frozen" in text
    assert "depths 0 (stem) … 2 (head); grouped by test" in text
    assert "norm layers: none" in text


def test_rows_and_norms_tables_one_line_each():
    table = zoo.params(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    )
    text = render(rows_table(table), width=40)  # narrower than a row: lines are not squeezed
    lines = text.splitlines()
    assert len(lines) == 1 + len(table)
    assert lines[1].split() == [
        "0.weight",
        "0",
        "stem",
        "weight",
        "Conv2d",
        "4x3x3x3",
        "108",
        "float32",
        "yes",
    ]
    norms = render(norms_table(table)).splitlines()
    assert norms[1].split() == ["1", "BatchNorm2d", "0", "stem", "yes", "weight,", "bias"]


# ---------------------------------------------------------------- the command


def test_show_summary(capsys):
    assert main(["show", "timm:resnet18"]) == 0
    out = capsys.readouterr().out
    assert "timm:resnet18" in out
    assert "11.69M parameters in 62 tensors" in out
    assert "20 BatchNorm2d" in out
    for group in ("stem", "stage.1", "stage.4", "head"):
        assert group in out
    head_line = next(line for line in out.splitlines() if line.split()[:2] == ["5", "head"])
    assert "513.00K" in head_line and "4.4%" in head_line
    assert "fc.weight" not in out  # rows only with --full


def test_show_full_lists_every_parameter_and_norm(capsys):
    assert main(["show", "timm:levit_128s", "--full"]) == 0
    out = capsys.readouterr().out
    assert "head_dist.linear.weight" in out
    assert "stages.0.blocks.0.attn.qkv.bn" in out
    row = next(line for line in out.splitlines() if line.startswith("head.linear.weight "))
    assert row.split()[1:5] == ["4", "head", "head", "Linear"]
    assert "BatchNorm1d" in out


def test_show_json_is_one_document(capsys):
    assert main(["show", "timm:convnext_atto", "--json", "--num-classes", "7"]) == 0
    data = json.loads(capsys.readouterr().out)
    table = ParamTable.from_dict(data)
    assert table.backbone == "timm:convnext_atto"
    assert table["head.fc.weight"].shape == (7, 320)
    assert data["max_depth"] == table.max_depth
    assert [d["group"] for d in data["depths"]] == table.groups
    assert any(n["type"] == "LayerNorm2d" for n in data["norms"])


def test_show_unknown_name_is_a_clear_error(capsys):
    assert main(["show", "timm:resnet_18"]) == 1
    err = capsys.readouterr().err
    assert "error: unknown backbone 'timm:resnet_18'" in err
    assert "timm:resnet18" in err  # did you mean


def test_show_rejects_negative_num_classes(capsys):
    assert main(["show", "timm:resnet18", "--num-classes", "-1"]) == 1
    assert "--num-classes must be 0 or more" in capsys.readouterr().err


class OtherPlugin:
    @zoo.hookimpl
    def zoo_register_backbones(self, register):
        register(
            BackboneSpec(
                name="mlp3",
                create=lambda num_classes=None, pretrained=False: nn.Sequential(
                    nn.Linear(6, 6),
                    nn.LayerNorm(6),
                    nn.Linear(6, 6),
                    nn.Linear(6, num_classes or 3),
                ),
                summary="a three-layer MLP",
            )
        )


@pytest.fixture
def other_catalog():
    previous = set_catalog(
        Catalog(make_plugin_host(autoload=False, builtins=False, extra={"other": OtherPlugin()}))
    )
    try:
        yield
    finally:
        set_catalog(previous)


def test_show_a_plugin_backbone(other_catalog, capsys):
    assert main(["show", "mlp3"]) == 0
    out = capsys.readouterr().out
    assert "other:mlp3" in out
    assert "grouped by generic" in out
    assert "1 LayerNorm" in out
    assert [line.split()[1] for line in out.splitlines() if line[:6].strip().isdigit()] == [
        "stem",
        "stage.1",
        "head",
    ]
