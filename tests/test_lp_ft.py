"""LP-FT: the ``lp-ft`` policy and ``probe_start``: the head alone first, then the plan."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import zoo
from zoo.adaptation.candidates import default_policies, plan_candidates
from zoo.adaptation.checkpoint import AdaptInterrupted
from zoo.adaptation.history import AdaptCallback
from zoo.adaptation.probe import probe_epochs
from zoo.cli.main import main
from zoo.errors import PlanError, PolicyArgumentError
from zoo.plans.plan import Plan

BACKBONE = "timm:test_resnet"  # a tiny timm ResNet: stem, 4 stages, fc
FAST = {"image_size": 32, "batch_size": 8, "lr": 1e-2, "augment": False, "seed": 0}


def test_lp_ft_plans_the_part_it_names_with_a_probe_share():
    table = zoo.params(BACKBONE)
    whole = zoo.plan(table, "lp-ft")
    assert whole.trainable == zoo.plan(table, "full").trainable and whole.probe == 0.5
    last = zoo.plan(table, "lp-ft:n=1,probe=0.25")
    assert last.trainable == zoo.plan(table, "train-last:n=1").trainable
    assert last.probe == 0.25 and last.spec_text == "zoo:lp-ft:n=1,probe=0.25"
    for bad in ("lp-ft:probe=0", "lp-ft:probe=1", "lp-ft:n=0"):
        with pytest.raises(PolicyArgumentError):
            zoo.plan(table, bad)


def test_a_plans_probe_share_is_saved_and_checked_when_read():
    plan = zoo.plan(zoo.params(BACKBONE), "lp-ft:n=2,probe=0.3")
    data = plan.to_dict()
    assert data["probe"] == 0.3 and Plan.from_dict(data).probe == 0.3
    assert "probe" not in zoo.plan(zoo.params(BACKBONE), "full").to_dict()  # old form kept
    for bad in (1.0, -0.1, "0.5", float("nan"), True):
        with pytest.raises(PlanError, match="probe"):
            Plan.from_dict({**data, "probe": bad})


@pytest.mark.parametrize(
    ("share", "epochs", "expected"),
    [(0.5, 4, 2), (0.5, 5, 2), (0.1, 5, 1), (0.9, 5, 4), (0.5, 1, 0), (0.0, 5, 0)],
)
def test_probe_epochs_leave_at_least_one_for_each_stage(share, epochs, expected):
    plan = dataclasses.replace(zoo.plan(zoo.params(BACKBONE), "full"), probe=share)
    assert probe_epochs(plan, epochs) == expected


class _HeadAt(AdaptCallback):
    """Keeps a copy of the head at the start of each epoch."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.heads: dict[int, torch.Tensor] = {}

    def on_epoch_start(self, epoch: int, epochs: int, batches: int) -> None:
        if epoch not in self.heads:
            self.heads[epoch] = self.model.fc.weight.detach().clone()


def _tiny(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return zoo.create(BACKBONE, num_classes=3, pretrained=False)


def test_the_head_after_the_probe_stage_is_a_linear_probes_and_stage_two_starts_there(colours):
    train, val = str(colours / "train"), str(colours / "val")
    probe_model = _tiny()
    zoo.adapt(probe_model, train, val, policy="linear-probe", epochs=2, **FAST)
    probed = probe_model.fc.weight.detach().clone()

    model = _tiny()
    seen = _HeadAt(model)
    result = zoo.adapt(model, train, val, policy="lp-ft:probe=0.5", epochs=4, callback=seen, **FAST)
    records = result.history.epochs
    head = sum(p.numel() for p in model.fc.parameters())
    assert [r.trainable_params for r in records[:2]] == [head, head]  # stage 1: the head
    assert all(r.trainable_params > head for r in records[2:])  # stage 2: everything
    torch.testing.assert_close(seen.heads[3], probed, rtol=0, atol=0)  # where stage 2 starts
    assert not torch.equal(model.fc.weight, probed)  # and it trained on from there
    # each stage has its own schedule; the probe stage trains the head at linear-probe's rate
    assert records[0].lr == pytest.approx(records[2].lr * zoo.PolicySpec.HEAD_RATE)
    assert model.zoo.plan.probe == 0.5 and any("LP-FT" in n for n in result.history.notes)


def test_compare_probe_start_probes_every_candidate_that_trains_more_than_the_head(colours):
    _, history, board = zoo.compare(
        BACKBONE,
        str(colours / "train"),
        str(colours / "val"),
        policies=["linear-probe", "train-last:n=1", "full"],
        probe_start=0.5,
        epochs=2,
        scratch=True,
        image_size=32,
        batch_size=8,
        lr=1e-2,
    )
    on = {row.policy: row.trained_on for row in board.rows}
    assert on["zoo:linear-probe"] == "activations at 'fc'"
    assert on["zoo:train-last:n=1"] == "head alone at 'fc' (1 epochs), then activations at 'layer4'"
    assert on["zoo:full"] == "head alone at 'fc' (1 epochs), then images"
    assert all(row.epochs == 2 for row in board.rows)
    first = history.epochs[0].trainable_params
    if board.winner.policy != "zoo:linear-probe":
        assert first < history.epochs[1].trainable_params


def test_the_default_ladder_has_lp_ft_beside_full_not_collapsed_into_it():
    table = zoo.params(BACKBONE)
    catalog = zoo.get_catalog()
    ladder = default_policies(table, catalog)
    assert ladder[-2:] == ["lp-ft", "full"]
    planned, notes = plan_candidates(None, table, catalog)
    specs = [p.spec for p in planned]
    assert specs[-2:] == ["zoo:lp-ft:probe=0.5", "zoo:full"], notes


def test_probe_start_leaves_heads_adapters_and_lp_ft_as_they_are():
    table = zoo.params(BACKBONE)
    planned, _ = plan_candidates(
        ["linear-probe", "lora", "lp-ft:probe=0.2", "bitfit"], table, zoo.get_catalog(),
        probe_start=0.4,
    )  # fmt: skip
    assert {p.plan.policy: p.plan.probe for p in planned} == {
        "zoo:linear-probe": 0.0,
        "zoo:lora": 0.0,
        "zoo:lp-ft": 0.2,
        "zoo:bitfit": 0.4,
    }


@pytest.mark.parametrize("value", ["1", "-0.5", "x"])
def test_cli_probe_start_refuses_a_share_outside_0_to_1(value, colours, capsys):
    argv = ["compare", BACKBONE, "--data", str(colours / "train"), "--val", str(colours / "val"),
            "--name", "never", "--probe-start", value]  # fmt: skip
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse: not a number
        status = exc.code
    err = capsys.readouterr().err
    assert status != 0 and "--probe-start" in err
    assert "Traceback" not in err


class _StopAfter(AdaptCallback):
    """Presses Ctrl-C at the end of epoch ``epoch``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, record) -> None:
        if record.epoch == self.epoch:
            raise KeyboardInterrupt


def test_an_lp_ft_run_resumed_in_its_second_stage_is_bit_identical(colours):
    train, val = colours / "train", colours / "val"
    options = {"policy": "lp-ft:probe=0.5", "epochs": 4, **FAST, "scratch": True}
    whole = zoo.adapt(BACKBONE, train, val, name="whole", **options)
    with pytest.raises(AdaptInterrupted, match="after epoch 3 of 4"):
        zoo.adapt(BACKBONE, train, val, name="cut", callback=_StopAfter(3), **options)
    resumed = zoo.adapt(BACKBONE, train, val, name="cut", resume=True, **options)
    assert resumed.history.resumed_from == 3
    assert [e.epoch for e in resumed.history] == [1, 2, 3, 4]
    assert [e.lr for e in resumed.history] == [e.lr for e in whole.history]  # the schedule
    for key, tensor in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], tensor), key


def test_with_augmentation_compare_leaves_lp_ft_out_and_refuses_probe_start(colours):
    """Augmented candidates train on images (nothing cached), and LP-FT's probe stage needs
    features cached from un-augmented images: the lp-ft candidate is left out with a note, and
    probe_start asked for with augmentation is refused before any training."""
    train, val = str(colours / "train"), str(colours / "val")
    augmented = {**FAST, "augment": None, "hflip": True}
    result = zoo.compare(
        _tiny(), train, val, policies="lp-ft:probe=0.5,linear-probe", epochs=2, **augmented
    )
    assert [r.policy for r in result.leaderboard.rows] == ["zoo:linear-probe"]
    assert any("lp-ft:probe=0.5 left out" in n for n in result.leaderboard.notes)
    with pytest.raises(zoo.errors.AdaptArgumentError, match="probe_start"):
        zoo.compare(_tiny(), train, val, policies="full", probe_start=0.5, epochs=2, **augmented)
