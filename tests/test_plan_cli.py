"""``zoo plan``: the dry run per depth, --full, --json, errors; render functions."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from rich.console import Console

import zoo
from zoo.api import plan
from zoo.cli.main import main
from zoo.cli.render_params import FROZEN, TRAINED, share_bar
from zoo.cli.render_plan import depth_table, header, norms_text, params_text, plan_json
from zoo.tables.table import NormInfo, ParamInfo, ParamTable


def render(renderable, width: int = 80, soft_wrap: bool = False) -> str:
    console = Console(file=StringIO(), width=width, color_system=None)
    console.print(renderable, soft_wrap=soft_wrap)
    return console.file.getvalue()


@pytest.fixture(scope="module")
def table() -> ParamTable:
    rows = []
    for depth, (group, prefix) in enumerate(
        [("stem", "stem"), ("stage.1", "s1"), ("stage.2", "s2"), ("head", "fc")]
    ):
        role = "head" if group == "head" else "weight"
        rows.append(
            ParamInfo(
                f"{prefix}.weight", prefix, "Conv2d", role, (10, 10), 100, "float32", group, depth
            )
        )
        if group != "head":
            rows.append(
                ParamInfo(
                    f"{prefix}.bn.weight",
                    f"{prefix}.bn",
                    "BatchNorm2d",
                    "norm",
                    (10,),
                    10,
                    "float32",
                    group,
                    depth,
                )
            )
            rows.append(
                ParamInfo(
                    f"{prefix}.bn.bias",
                    f"{prefix}.bn",
                    "BatchNorm2d",
                    "norm",
                    (10,),
                    10,
                    "float32",
                    group,
                    depth,
                )
            )
    norms = [
        NormInfo(f"{p}.bn", "BatchNorm2d", d, g, True, (f"{p}.bn.weight", f"{p}.bn.bias"))
        for d, (g, p) in enumerate([("stem", "stem"), ("stage.1", "s1"), ("stage.2", "s2")])
    ]
    return ParamTable(rows=tuple(rows), norms=tuple(norms), backbone="test:net")


# ---------------------------------------------------------------- the command


def test_plan_command_per_depth(capsys):
    assert main(["plan", "timm:resnet18", "--policy", "freeze-to:depth=3"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("timm:resnet18  policy zoo:freeze-to:depth=3")
    assert "trains 11.01M of 11.69M parameters (94.2%)" in out
    assert "norm layers: train x10, frozen x10" in out
    rows = {line.split()[1]: line for line in lines if line.strip()[:1].isdigit()}
    assert set(rows) == {"stem", "stage.1", "stage.2", "stage.3", "stage.4", "head"}
    assert "frozen" in rows["stage.2"] and FROZEN * 16 in rows["stage.2"]
    assert "all" in rows["stage.3"] and TRAINED * 16 in rows["stage.3"]
    assert "frozen x5" in rows["stage.2"] and "train x5" in rows["stage.4"]
    total = next(line for line in lines if line.split()[:1] == ["total"])
    assert "94.2%" in total
    assert all(len(line) <= 80 for line in lines)  # readable in a plain terminal


def test_plan_command_json(capsys):
    assert main(["plan", "timm:vit_tiny_patch16_224", "-p", "layer-decay:decay=0.5", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    expected = zoo.plan("timm:vit_tiny_patch16_224", "layer-decay", decay=0.5)
    assert data["policy"] == "zoo:layer-decay" and data["args"] == {"decay": 0.5}
    assert data["spec"] == "zoo:layer-decay:decay=0.5"
    assert data["trainable_percent"] == 100.0 and data["tensors"] == len(expected.params)
    assert data["plan"] == expected.to_dict()
    assert zoo.Plan.from_dict(data["plan"]) == expected
    head = data["depths"][-1]
    assert head["group"] == "head" and head["lr_scale"] == [1.0, 1.0]
    assert data["depths"][0]["lr_scale"] == [0.5**13] * 2
    assert "params" not in data


def test_plan_command_full_and_epoch(capsys):
    assert main(["plan", "timm:resnet18", "-p", "gradual:every=2", "--epoch", "2", "--full"]) == 0
    out = capsys.readouterr().out
    assert "zoo:gradual:every=2 at epoch 2" in out
    assert "note: epoch 2: 1 of 5 stages unfrozen" in out
    line = next(x for x in out.splitlines() if x.startswith("layer4.0.conv1.weight"))
    assert "trained" in line and "512x256x3x3" in line
    line = next(x for x in out.splitlines() if x.startswith("layer3.1.bn2.bias"))
    assert "frozen" in line and line.rstrip().endswith("frozen")  # its norm layer's mode
    assert any(x.startswith("layer4.1.bn2 ") and "train" in x for x in out.splitlines())

    assert (
        main(
            [
                "plan",
                "timm:resnet18",
                "-p",
                "linear-probe",
                "--full",
                "--json",
                "--num-classes",
                "7",
            ]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert len(data["params"]) == 62 and data["params"][-2]["shape"] == [7, 512]
    assert {n["mode"] for n in data["norms"]} == {"frozen"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-p", "freez-to:depth=1"], "unknown policy 'freez-to'; did you mean 'zoo:freeze-to'"),
        (["-p", "freeze-to:depth=x"], "argument 'depth' expects int, got 'x'"),
        (["-p", "freeze-to:depth=7"], "must be between 0 and 5"),
        (["-p", "full", "--epoch", "1"], "not a schedule"),
        (["-p", "full", "--num-classes", "-1"], "--num-classes must be 0 or more"),
    ],
)
def test_plan_command_errors(capsys, argv, message):
    assert main(["plan", "timm:resnet18", *argv]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in " ".join(captured.err.split())


def test_plan_command_needs_a_policy(capsys):
    assert main(["plan", "timm:resnet18"]) != 0  # a policy, or --data for the gradient signal
    err = capsys.readouterr().err
    assert "--policy must be a policy spec (or --data DIR, or both)" in err


# ---------------------------------------------------------------- render functions


def test_share_bar():
    assert share_bar(0, 10, 10).plain == FROZEN * 10
    assert share_bar(10, 10, 10).plain == TRAINED * 10
    assert share_bar(1, 1000, 10).plain == TRAINED + FROZEN * 9  # a sliver still shows
    assert share_bar(999, 1000, 10).plain == TRAINED * 9 + FROZEN
    assert share_bar(0, 0, 10).plain == ""


def test_render_functions_on_a_console(table):
    result = plan(table, "bitfit")
    text = render(header(result, table))
    assert "test:net  policy zoo:bitfit" in text
    assert "norm layers: frozen-stats x3" in text
    depth_lines = render(depth_table(result, table)).splitlines()
    stem = next(line for line in depth_lines if " stem " in line)
    assert "8.3%" in stem and "frozen-stats x1" in stem  # 10 of 120 parameters
    head = next(line for line in depth_lines if " head " in line)
    assert "all" in head and TRAINED * 16 in head
    full = render(params_text(result, table), soft_wrap=True)  # as the CLI prints it
    assert full.splitlines()[0].split() == [
        "name",
        "depth",
        "group",
        "shape",
        "params",
        "state",
        "lr",
        "scale",
        "decay",
        "norm",
    ]
    assert any(
        line.startswith("stem.bn.bias") and "trained" in line and "frozen-stats" in line
        for line in full.splitlines()
    )
    norms = render(norms_text(result, table), soft_wrap=True)
    assert "s2.bn" in norms and "frozen-stats" in norms
    data = plan_json(result, table, full=True)
    assert data["trainable_numel"] == 130 and data["total_numel"] == 460
    assert [d["norm_modes"] for d in data["depths"]][:3] == [{"frozen-stats": 1}] * 3
    assert data["params"][0] == {
        "name": "stem.weight",
        "depth": 0,
        "group": "stem",
        "shape": [10, 10],
        "numel": 100,
        "trainable": False,
        "lr_scale": 1.0,
        "weight_decay": True,
    }


def test_layer_decay_shows_lr_ranges(table):
    result = plan(table, "layer-decay:decay=0.5")
    text = render(depth_table(result, table))
    stem = next(line for line in text.splitlines() if " stem " in line)
    assert stem.rstrip().endswith("0.125")
