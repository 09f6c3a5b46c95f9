"""zoo.compare and ``zoo compare``: shared work, successive halving, the budget, the answer."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

import zoo
from zoo.adaptation import halving
from zoo.adaptation.candidates import default_policies
from zoo.adaptation.config import split_policies
from zoo.adaptation.halving import (
    MIN_RUNG_STEPS,
    keep_ratio,
    keep_within,
    projected_seconds,
    rung_epochs,
    rung_note,
)
from zoo.cli.main import main
from zoo.io.leaderboard import small_validation_note

BACKBONE = "timm:test_resnet"  # a tiny timm ResNet: stem, 4 stages, fc
FAST = {"image_size": 32, "batch_size": 8, "lr": 1e-2, "scratch": True}
CANDIDATE_KEYS = {
    "policy",
    "val_acc",
    "trainable_params",
    "seconds",
    "epochs",
    "stopped_early",
    "lr",
    "tied",
}


def _cli(argv, capsys):
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_json_is_exactly_the_documented_shape_and_halving_drops_candidates(
    colours, capsys, monkeypatch
):
    # halving on a tiny set: the minimum steps per rung lowered to one epoch of 24 images at
    # batch 3 (8 steps), so the rungs stay 1, 2, 4 (MIN_RUNG_STEPS itself: test_rungs_...)
    monkeypatch.setattr(halving, "MIN_RUNG_STEPS", 8)
    argv = [
        "compare",
        BACKBONE,
        "--data",
        str(colours / "train"),
        "--val",
        str(colours / "val"),
        "--scratch",
        "--image-size",
        "32",
        "--batch-size",
        "3",
        "--lr",
        "0.01",
        "--epochs",
        "4",
        "--name",
        "best",
        "--json",
    ]  # fmt: skip
    status, out, _err = _cli(argv, capsys)
    assert status == 0
    doc = json.loads(out)  # nothing else on stdout
    assert set(doc) == {"saved", "winner", "candidates"}
    assert doc["saved"] == "best"
    assert set(doc["winner"]) == {"policy", "val_acc"}
    rows = doc["candidates"]
    ladder = default_policies(zoo.params(BACKBONE), zoo.get_catalog())
    # the default ladder on a ResNet (no duplicates) and the surgical candidate of the signal
    assert len(rows) == len(ladder) + 1 >= 9
    assert sum(row["policy"].startswith("zoo:surgical:depth=") for row in rows) == 1
    for row in rows:
        assert set(row) == CANDIDATE_KEYS
        assert isinstance(row["policy"], str) and isinstance(row["val_acc"], float)
        assert isinstance(row["trainable_params"], int) and isinstance(row["epochs"], int)
        assert isinstance(row["seconds"], float) and isinstance(row["stopped_early"], bool)
        assert row["stopped_early"] == (row["epochs"] < 4)
    assert doc["winner"]["policy"] == rows[0]["policy"]
    assert doc["winner"]["val_acc"] == rows[0]["val_acc"]
    # rungs at 1, 2, 4 epochs; 8-10 candidates, 2 halvings: eta 3 or 4 keeps at most 3, then 1
    # (fewer when the projected cost would pass two full runs of the slowest candidate)
    epochs = sorted(r["epochs"] for r in rows)
    assert set(epochs) <= {1, 2, 4} and epochs.count(4) == 1
    assert epochs.count(1) >= len(rows) - 3 and sum(e > 1 for e in epochs) <= 3
    assert rows[0]["epochs"] == 4 and not rows[0]["stopped_early"]
    policies = {r["policy"] for r in rows}
    assert {"zoo:linear-probe", "zoo:full", "zoo:train-last:n=1", "zoo:bitfit"} <= policies

    # the winner is saved with the leaderboard, and `zoo inspect` shows it
    model = zoo.load("best")
    assert model.zoo.plan.spec_text == doc["winner"]["policy"]
    board = zoo.inspect("best").metadata.compare
    assert board["winner"] == doc["winner"]["policy"]
    assert [r["policy"] for r in board["candidates"]] == [r["policy"] for r in rows]
    assert board["rungs"] == [1, 2, 4]
    status, out, _ = _cli(["inspect", "best"], capsys)
    assert status == 0
    assert f"compare: {len(rows)} policies" in out and "linear-probe" in out and "won" in out


def test_prefix_frozen_candidates_train_on_boundary_activations(colours):
    result = zoo.compare(
        BACKBONE,
        colours / "train",
        colours / "val",
        policies="linear-probe,train-last:n=1,full",
        epochs=2,
        **FAST,
    )
    on = {r.policy: r.trained_on for r in result.leaderboard.rows}
    assert on["zoo:linear-probe"] == "activations at 'fc'"
    assert on["zoo:train-last:n=1"] == "activations at 'layer4'"
    assert on["zoo:full"] == "images"
    model, history, board = result
    assert model.zoo.plan.spec_text == board.winner.policy
    assert board.winner.policy.startswith(history.policy)  # the qualified name, arguments after
    assert len(history.epochs) == board.winner.epochs
    assert model.zoo.compare["winner"] == board.winner.policy
    assert "compare:" in history.notes[0]


def test_duplicate_plans_collapse_and_text_specs_split(colours):
    # on a 4-stage ResNet (stem + 4 stages), freeze-to the last stage's depth == train-last:n=1
    table = zoo.params(BACKBONE)
    last_stage = max(r.depth for r in table.rows if r.group not in ("head", "neck"))
    result = zoo.compare(
        BACKBONE,
        colours / "train",
        colours / "val",
        policies=["train-last:n=1", f"freeze-to:depth={last_stage}", "linear-probe"],
        epochs=1,
        **FAST,
    )
    assert [r.policy for r in result.leaderboard.rows].count("zoo:train-last:n=1") == 1
    assert len(result.leaderboard.rows) == 2
    assert any("compared once" in note for note in result.leaderboard.notes)
    assert split_policies("a:x=[1,2],b , c") == ["a:x=[1,2]", "b", "c"]


def _measured(name, seconds_per_epoch, epochs=1):
    from zoo.adaptation.halving import Candidate

    cand = Candidate(name, None, None, trainable_params=1, total_params=1)
    cand.records = [None] * epochs
    cand.seconds = seconds_per_epoch * epochs
    return cand


def test_halving_keeps_fewer_when_the_projected_cost_is_too_high():
    # ranked best first: two slow candidates (10 s per epoch), then cheap ones (1 s)
    ranked = [_measured("a", 10), _measured("b", 10), _measured("c", 1), _measured("d", 1)]
    rungs = [1, 2, 4]
    # after rung 0, keeping 2 (eta 2) costs 20 s (rung 1) + 10 s x 2 epochs (rung 2) = 40 s
    assert projected_seconds(ranked[:2], rungs, 0, 2, 2) == 40
    assert keep_within(ranked, 2, rungs, 0, 2, 2, left=100) == 2
    assert keep_within(ranked, 2, rungs, 0, 2, 2, left=39) == 1
    assert keep_within(ranked, 2, rungs, 0, 2, 2, left=0) == 1  # never fewer than one


def test_rungs_and_keep_ratio_arithmetic():
    assert rung_epochs(8, 8) == [1, 2, 4, 8]
    assert rung_epochs(5, 8) == [1, 2, 5]
    assert rung_epochs(1, 8) == [1]
    assert rung_epochs(10, 1) == [10]
    # rungs with fewer than MIN_RUNG_STEPS (64) optimizer steps are merged into the next one
    assert MIN_RUNG_STEPS == 64
    assert rung_epochs(8, 8, steps_per_epoch=64) == [1, 2, 4, 8]
    assert rung_epochs(8, 8, steps_per_epoch=20) == [4, 8]  # 20 and 40 steps are too few
    assert rung_epochs(20, 10, steps_per_epoch=17) == [5, 10, 20]
    assert rung_epochs(40, 10, steps_per_epoch=1) == [40]  # no rung before the last has 64
    assert rung_epochs(8, 8, steps_per_epoch=0) == [8]
    assert rung_note(8, 8, 64) is None
    note = rung_note(8, 8, 20)
    assert (
        "merged" in note and "after 4 epoch(s) (80 steps), rungs 4, 8 instead of 1, 2, 4, 8" in note
    )
    note = rung_note(40, 10, 1)
    assert "no successive halving" in note and "all 40 epochs (40 steps)" in note
    assert keep_ratio(8, 4) == 2  # 3 halvings: 8 -> 4 -> 2 -> 1
    assert keep_ratio(8, 3) == 3  # 2 halvings must reach 1: 8 -> 3 -> 1
    assert keep_ratio(3, 2) == 3


def test_a_tiny_budget_cuts_the_comparison_and_says_so(colours):
    result = zoo.compare(
        BACKBONE,
        colours / "train",
        colours / "val",
        policies="linear-probe,train-last:n=1,full",
        epochs=4,
        budget=1e-3,
        **FAST,
    )
    board = result.leaderboard
    assert board.budget_cut
    assert [r.epochs for r in board.rows] == [1, 1, 1]  # every candidate gets one epoch
    assert all(r.stopped_early for r in board.rows)
    assert any("budget" in note and "best so far" in note for note in board.notes)
    assert "budget" in board.why()
    assert len(result.history.epochs) == 1


def test_tiny_data_trains_every_candidate_to_the_end_and_says_why(colours):
    # 24 images at batch 8: 3 optimizer steps per epoch, 4 epochs: no rung before the last has
    # MIN_RUNG_STEPS steps, so nothing is cut after a few steps: every candidate trains 4 epochs
    result = zoo.compare(
        BACKBONE,
        colours / "train",
        colours / "val",
        policies="linear-probe,train-last:n=1,bitfit,full",
        epochs=4,
        **FAST,
    )
    board = result.leaderboard
    assert board.rungs == (4,)
    assert [r.epochs for r in board.rows] == [4, 4, 4, 4]
    assert not any(r.stopped_early for r in board.rows)
    assert any("no successive halving" in n and "cheap" in n for n in board.notes)
    # 9 validation images: one image is 11.1 points of accuracy, and the leaderboard says so
    assert any("9 image(s): one image is 11.1 points" in n for n in board.notes)
    ranked = [(-r.val_acc, r.val_loss) for r in board.rows]
    assert ranked == sorted(ranked)  # accuracy first, then the lower validation loss


def test_small_validation_note():
    assert small_validation_note(5).startswith("the validation set has 5 image(s): one image")
    assert "20 points" in small_validation_note(
        5
    ) and "more validation data" in small_validation_note(5)
    assert small_validation_note(50) is None and small_validation_note(0) is None


def test_plot_is_written(colours, tmp_path):
    pytest.importorskip("matplotlib")
    target = tmp_path / "board.png"
    zoo.compare(
        BACKBONE, colours / "train", colours / "val", policies="linear-probe,full", epochs=1,
        plot=target, **FAST,
    )  # fmt: skip
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_missing_matplotlib_is_a_clear_error_before_any_training(colours, tmp_path, _isolated_zoo):
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'matplotlib' or name.startswith('matplotlib.'):\n"
        "            raise ModuleNotFoundError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from zoo.cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    argv = [
        "compare", BACKBONE, "--data", str(colours / "train"), "--val", str(colours / "val"),
        "--scratch", "--image-size", "32", "--name", "plotted", "--plot", str(tmp_path / "p.png"),
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", blocker, *argv], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1
    assert "matplotlib" in proc.stderr and 'pip install -e ".[plot]"' in proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "p.png").exists()
    assert not (_isolated_zoo / "models" / "plotted").exists()


@pytest.mark.parametrize(
    ("options", "argument"),
    [
        ({"val": None}, "val"),
        ({"budget": -1}, "budget"),
        ({"budget": math.nan}, "budget"),
        ({"budget": True}, "budget"),
        ({"policies": ""}, "policies"),
        ({"policies": 5}, "policies"),
        ({"policies": ["full", ""]}, "policies"),
        ({"policies": "gradual"}, "policies"),
        ({"policies": "auto"}, "policies"),
        ({"policies": "full\x1b[2J"}, "policies"),
        ({"epochs": 0}, "epochs"),
        ({"lr": math.inf}, "lr"),
        ({"plot": 3}, "plot"),
        ({"augment": {"hflip": 0.0}}, "augment"),  # a clear error naming the fields, no TypeError
        ({"policy": "full"}, "policy"),
        ({"epoch": 3}, "epoch"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(colours, options, argument, _isolated_zoo):
    kwargs = {"val": colours / "val", "epochs": 1, "name": "never", **FAST, **options}
    val = kwargs.pop("val")
    with pytest.raises(zoo.AdaptArgumentError) as info:
        zoo.compare(BACKBONE, colours / "train", val, **kwargs)
    assert info.value.argument == argument
    assert not (_isolated_zoo / "models" / "never").exists()
    if argument == "augment":
        assert "hflip=" in str(info.value) and "scale=" in str(info.value)
    if argument == "epoch":
        assert "did you mean epochs" in str(info.value)


def test_cli_names_the_option_and_an_existing_name_fails_fast(colours, capsys):
    base = ["compare", BACKBONE, "--data", str(colours / "train"), "--scratch", "--name", "x"]
    status, out, err = _cli(base, capsys)
    assert status == 1 and "--val" in err and out == ""
    status, _, err = _cli([*base, "--val", str(colours / "val"), "--budget", "0"], capsys)
    assert status == 1 and "--budget must be" in err
    zoo.save(zoo.create(BACKBONE, num_classes=3), "x")
    status, _, err = _cli([*base, "--val", str(colours / "val")], capsys)
    assert status == 1 and "already saved" in err


def test_cli_takes_the_training_options_of_zoo_adapt(colours, capsys):
    """``zoo compare`` adds the options it shares with ``zoo adapt`` from the same table:
    they reach the comparison (a refusal names the option; the crop is saved)."""
    base = ["compare", BACKBONE, "--data", str(colours / "train"), "--val", str(colours / "val")]
    fast = ["--scratch", "--image-size", "32", "--batch-size", "8", "--epochs", "1"]
    status, out, err = _cli([*base, *fast, "--name", "w", "--warmup-epochs", "3"], capsys)
    assert status == 1 and out == ""
    assert "--warmup-epochs must be a finite number in [0, 1], not 3.0" in err
    argv = [*base, *fast, "--name", "opts", "--policies", "linear-probe", "--json"]
    argv += ["--optimizer", "sgd", "--lr-schedule", "constant", "--crop-pct", "0.5"]
    status, _out, _err = _cli([*argv, "--weight-decay", "0", "--strict-images"], capsys)
    assert status == 0
    assert zoo.load("opts").zoo.input_config.crop_pct == 0.5


def test_cli_text_output_is_a_table_and_says_why(colours, capsys):
    argv = [
        "compare", BACKBONE, "--data", str(colours / "train"), "--val", str(colours / "val"),
        "--scratch", "--image-size", "32", "--batch-size", "8", "--epochs", "1",
        "--policies", "linear-probe,full", "--name", "text", "--no-refit",
    ]  # fmt: skip
    status, out, err = _cli(argv, capsys)
    assert status == 0
    assert "val acc" in out and "trained on" in out and "cut early" in out
    # the progress line says which loss is which (the training loss is not the validation's)
    epoch_lines = [  # (the title says "each trained 1 epoch at most": not a progress line)
        line for line in (out + err).splitlines() if " epoch " in line and "compare:" not in line
    ]
    assert epoch_lines and all("train loss" in ln and "val loss" in ln for ln in epoch_lines)
    assert " won with validation accuracy " in out and "saved as text" in out


def test_over_the_cache_budget_images_are_streamed_and_it_says_so(colours, monkeypatch):
    monkeypatch.setenv("ZOO_FEATURE_CACHE_MAX_BYTES", "1000")
    result = zoo.compare(
        BACKBONE,
        colours / "train",
        colours / "val",
        policies="linear-probe,full",
        epochs=2,
        **FAST,
    )
    board = result.leaderboard
    assert any("streamed" in note for note in board.notes)
    assert {r.trained_on for r in board.rows} == {"images"}
    assert board.winner.epochs == 2
