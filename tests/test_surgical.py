"""Surgical fine-tuning: ``surgical:depth=K`` and the gradient signal that points to a depth."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import zoo
from zoo.adaptation.data import (
    ImageDataset,
    LoaderSpec,
    build_transform,
    input_config_of,
    make_loader,
    scan_image_folder,
)
from zoo.adaptation.rgn import shift_signal
from zoo.cli.main import main
from zoo.errors import DataError, PolicyArgumentError

BACKBONE = "timm:resnet10t"  # real pretrained-style ResNet layout: stem, 4 stages, fc
FAST = {"image_size": 32, "batch_size": 8, "lr": 1e-2, "scratch": True}


def test_surgical_trains_one_depth_of_the_body_and_the_head():
    table = zoo.params(BACKBONE)
    plan = zoo.plan(table, "surgical:depth=1")
    trained = {row.depth for row in table.rows if row.name in set(plan.trainable)}
    assert trained == {1, table.max_depth}
    assert {row.name for row in table.rows if row.depth == 1} <= set(plan.trainable)
    with pytest.raises(PolicyArgumentError, match="a depth of the body"):
        zoo.plan(table, f"surgical:depth={table.max_depth}")  # the head is not a block


def _loader(folder, model, size=32):
    images = scan_image_folder(folder)
    config = dataclasses.replace(input_config_of(model), input_size=(3, size, size))
    dataset = ImageDataset.from_folder(images, build_transform(config))
    return make_loader(dataset, LoaderSpec(batch_size=8, seed=0), shuffle=True)


def test_the_signal_reads_each_body_depth_from_0_to_1_and_leaves_the_model_as_it_was(colours):
    torch.manual_seed(0)
    model = zoo.create(BACKBONE, num_classes=3)
    zoo.freeze(model, "linear-probe")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    table = zoo.params(model)
    signal = shift_signal(
        model, table, _loader(colours / "train", model), device=torch.device("cpu")
    )
    body = sorted({row.depth for row in table.rows if row.group not in ("head", "neck")})
    assert [d.depth for d in signal.depths] == body  # the head is not compared
    assert max(d.relative for d in signal.depths) == 1.0
    assert all(0.0 <= d.relative <= 1.0 and d.rgn >= 0 for d in signal.depths)
    assert signal.strongest(1)[0] == max(signal.depths, key=lambda d: d.relative).depth
    assert signal.images == 24  # 3 batches of 8: fewer than the 4 batches asked
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]) and param.requires_grad == grads[name]
        assert param.grad is None
    again = shift_signal(
        model, table, _loader(colours / "train", model), device=torch.device("cpu")
    )
    assert again == signal  # seeded batches: the same signal


def test_the_signal_needs_images():
    model = zoo.create(BACKBONE, num_classes=3)
    with pytest.raises(DataError, match="no training images"):
        shift_signal(model, zoo.params(model), [], device=torch.device("cpu"))


def test_compare_adds_the_surgical_candidate_the_signal_points_to(colours):
    _, _, board = zoo.compare(
        "timm:test_resnet", str(colours / "train"), str(colours / "val"), epochs=1, **FAST
    )
    note = next(n for n in board.notes if n.startswith("relative gradient norm per depth"))
    depth = int(note.rsplit("surgical:depth=", 1)[1].split()[0])
    assert any(row.policy == f"zoo:surgical:depth={depth}" for row in board.rows) or (
        "surgical" in " ".join(board.notes)  # collapsed into a candidate that trains the same
    )


def test_compare_with_given_policies_computes_no_signal(colours):
    _, _, board = zoo.compare(
        "timm:test_resnet",
        str(colours / "train"),
        str(colours / "val"),
        policies=["linear-probe", "surgical:depth=2"],
        epochs=1,
        **FAST,
    )
    assert not any(n.startswith("relative gradient norm") for n in board.notes)
    assert {row.policy for row in board.rows} == {"zoo:linear-probe", "zoo:surgical:depth=2"}


def test_zoo_plan_with_data_shows_the_signal(colours, capsys):
    argv = ["plan", BACKBONE, "--data", str(colours / "train"), "--scratch", "--image-size", "32"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "relative gradient norm per depth" in out and "stage" in out
    assert main([*argv, "--policy", "surgical:depth=1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["spec"] == "zoo:surgical:depth=1"
    assert max(d["relative"] for d in doc["gradient_signal"]["depths"]) == 1.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [([], "--policy must be a policy spec"), (["--scratch"], "--data must be given")],
)
def test_zoo_plan_says_what_is_missing(argv, message, capsys):
    assert main(["plan", BACKBONE, *argv]) != 0
    assert message in capsys.readouterr().err
