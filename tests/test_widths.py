"""Every table readable at 60, 80 and 120 columns (issue 22): no line wider than the terminal,
the columns that matter (accuracy, trained share) kept, numbers never cut, long policy specs
wrapped between their arguments, never inside a word."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from rich.console import Console

import zoo
from zoo.adaptation.history import EpochRecord, History
from zoo.cli.main import main
from zoo.cli.output import wrap_words
from zoo.cli.render_adapt import history_table, summary_table
from zoo.cli.render_compare import board_title, leaderboard_table
from zoo.io.leaderboard import Leaderboard, LeaderboardRow

WIDTHS = (60, 80, 120)
BACKBONE = "timm:test_resnet"
LONG_SPEC = "zoo:lora:rank=8,alpha=16.0,dropout=0.0,min_depth=0,norms=frozen"
FAST = {"image_size": 32, "batch_size": 8, "lr": 1e-2, "scratch": True, "epochs": 1}


def _render(renderable, width: int) -> str:
    console = Console(file=StringIO(), width=width, highlight=False, color_system=None)
    console.print(renderable)
    return console.file.getvalue()


def _cli(argv, width, capsys, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", str(width))
    assert main(argv) == 0
    return capsys.readouterr().out


def _fits(text: str, width: int) -> None:
    wide = [line for line in text.splitlines() if len(line.rstrip()) > width]
    assert not wide, f"wider than {width}: {wide[:3]}"


def _whole(text: str, *tokens: str) -> None:
    """Each token appears unbroken on one line (a spec's ``alpha=16.0``, a number ``71.8%``)."""
    for token in tokens:
        assert any(token in line for line in text.splitlines()), f"{token!r} broken or lost"


def test_wrap_words_breaks_only_after_commas_and_spaces():
    assert wrap_words(LONG_SPEC, 20) == [
        "zoo:lora:rank=8,",
        "alpha=16.0,",
        "dropout=0.0,",
        "min_depth=0,",
        "norms=frozen",
    ]
    assert wrap_words("one two three", 7) == ["one two", "three"]
    assert wrap_words("abcdefghijklmnop, x", 8) == ["abcdefg…", "x"]  # cut, never broken


def _board() -> Leaderboard:
    rows = (
        LeaderboardRow(LONG_SPEC, 0.9123, 0.3, 274_940, 2.35, 8, 12.5, False, "images"),
        LeaderboardRow("zoo:linear-probe", 0.8512, 0.5, 5_130, 0.04, 8, 1.5, False,
                       "activations at 'fc'"),
        LeaderboardRow("zoo:full", 0.5, 1.2, 11_689_512, 100.0, 2, 40.0, True, "images"),
    )  # fmt: skip
    return Leaderboard(rows=rows, epochs=8, rungs=(2, 4, 8), budget=None, budget_cut=False,
                       seconds=60.0, notes=())  # fmt: skip


@pytest.mark.parametrize("width", WIDTHS)
def test_compare_leaderboard(width):
    out = _render(leaderboard_table(_board()), width)
    _fits(out, width)
    header = next(line for line in out.splitlines() if line.startswith("policy"))
    assert "val acc" in header and "%" in header  # accuracy and trained share stay
    _whole(out, "0.912", "0.851", "2.4%", "0.04%", "100.0%", "alpha=16.0", "min_depth=0")
    if width >= 120:  # room for every column
        assert "trained on" in header and "time" in header


def test_compare_title_agrees_with_its_notes():
    assert board_title(_board()) == (
        "compare: 3 policies, successive halving: cuts after epochs 2, 4"
    )
    single = Leaderboard(rows=_board().rows, epochs=15, rungs=(15,), budget=None,
                         budget_cut=False, seconds=1.0, notes=())  # fmt: skip
    assert board_title(single) == (
        "compare: 3 policies, each trained 15 epochs at most (no successive halving)"
    )


def _history() -> History:
    record = EpochRecord(
        epoch=1, train_loss=0.41, train_accuracy=0.875, val_loss=0.52, val_accuracy=0.8125,
        seconds=3.2, images=240, images_per_second=75.0, lr=1e-3, trainable_params=274_940,
        trainable_tensors=34,
    )  # fmt: skip
    return History(
        epochs=[record], start="backbone timm:resnet18, pretrained weights timm:resnet18.a1_in1k",
        policy="zoo:lora", policy_args={"rank": 8, "alpha": 16.0, "dropout": 0.0},
        classes=["5", "6", "7", "8", "9"], train_images=50, val_images=2400,
        trainable_params=274_940, total_params=11_964_452, name="digits",
        path="/home/user/.zoo/models/digits/model.safetensors",
        notes=["the training images are small (median side 28 px) and are resized up to the "
               "backbone's 176x176: --image-size 32 (image_size=32) would train on about 30x "
               "fewer pixels per image"],
    )  # fmt: skip


@pytest.mark.parametrize("width", WIDTHS)
def test_adapt_history_and_summary(width):
    out = _render(history_table(_history()), width) + _render(summary_table(_history()), width)
    _fits(out, width)
    _whole(out, "87.5%", "81.2%", "zoo:lora:rank=8,", "--image-size", "(image_size=32)")
    assert "val acc" in out and "train acc" in out


@pytest.fixture(scope="module")
def compared(colours, tmp_path_factory):
    """A saved compare winner (with its leaderboard) in a store of its own."""
    home = tmp_path_factory.mktemp("zoo-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ZOO_HOME", str(home))
        zoo.compare(
            BACKBONE, colours / "train", colours / "val", name="winner",
            policies="linear-probe;lora:rank=4,alpha=8.0,dropout=0.0,min_depth=0", **FAST,
        )  # fmt: skip
    return home


@pytest.mark.parametrize("width", WIDTHS)
def test_inspect_and_models(width, compared, capsys, monkeypatch):
    monkeypatch.setenv("ZOO_HOME", str(compared))
    out = _cli(["inspect", "winner"], width, capsys, monkeypatch)
    _fits(out, width)
    assert "val acc" in out and re.search(r"\d\.\d{3}", out)
    board = out[out.index("compare:") :]
    _whole(board, "alpha=8.0,")
    assert "trained" in out and "%" in out
    models = _cli(["models"], width, capsys, monkeypatch)
    _fits(models, width)
    _whole(models, "winner")


@pytest.mark.parametrize("width", WIDTHS)
def test_show_and_plan(width, capsys, monkeypatch):
    show = _cli(["show", "timm:resnet18"], width, capsys, monkeypatch)
    _fits(show, width)
    _whole(show, "11.69M", "8.39M", "71.8%", "147.97K")
    plan = _cli(["plan", "timm:resnet18", "--policy", "lora:rank=8"], width, capsys, monkeypatch)
    _fits(plan, width)
    _whole(plan, "alpha=16.0", "min_depth=0", "6.6%", "12.2%", "145.41K")


@pytest.mark.parametrize("width", WIDTHS)
def test_list(width, capsys, monkeypatch):
    out = _cli(["list", "policies"], width, capsys, monkeypatch)
    _fits(out, width)
    _whole(out, "zoo:linear-probe", "zoo:layer-decay")
    out = _cli(["list"], width, capsys, monkeypatch)
    _fits(out, width)
    _whole(out, "timm:resnet18")


def _progress_output(terminal: bool) -> str:
    from zoo.cli.render_compare import CompareProgress

    console = Console(file=StringIO(), width=80, force_terminal=terminal, color_system=None)
    progress = CompareProgress(console)
    progress.on_start({"policies": ["zoo:full", "zoo:linear-probe"], "epochs": 2, "notes": []})
    record = _history().epochs[0]
    progress.on_candidate_epoch("zoo:full", record, 0)
    progress.on_rung_end(0, 1, ["zoo:full"], ["zoo:linear-probe"])
    progress.on_end(_history())
    return console.file.getvalue()


def test_compare_progress_is_a_bar_on_a_terminal_and_lines_when_piped():
    piped = _progress_output(terminal=False)
    assert "full" in piped and "train loss 0.4100" in piped and "rung 1" in piped
    terminal = _progress_output(terminal=True)
    assert "train loss 0.4100" not in terminal and "rung 1 (1 epochs): keep full" in terminal


def test_quiet_prints_the_summary_only(colours, capsys):
    base = ["--data", str(colours / "train"), "--scratch", "--image-size", "32"]
    base += ["--batch-size", "8", "--epochs", "1", "--quiet"]
    assert main(["adapt", BACKBONE, *base, "--policy", "full", "--name", "q"]) == 0
    out = capsys.readouterr()
    assert "summary" in out.out and "saved as" in out.out
    assert "epoch 1/1" not in out.out + out.err and "training history" not in out.out
    argv = ["compare", BACKBONE, *base, "--val", str(colours / "val"), "--name", "qc"]
    assert main([*argv, "--policies", "linear-probe,full"]) == 0
    out = capsys.readouterr()
    assert "val acc" in out.out and " won with validation accuracy " in out.out
    assert "comparing" not in out.out + out.err
    assert re.search(r"\bepoch \d", out.out + out.err) is None  # no per-epoch lines


def test_compare_progress_counts_on_past_its_estimate_without_overrunning():
    """The bar's total is candidates x epochs; a rate sweep and repeated splits add epochs, so
    past it the bar counts on with no total ("5/?") instead of showing 5 of 4."""
    from zoo.cli.render_compare import CompareProgress

    console = Console(file=StringIO(), force_terminal=True, width=100)
    progress = CompareProgress(console)
    progress.on_start({"policies": ["zoo:linear-probe", "zoo:full"], "epochs": 2})
    record = EpochRecord(1, 0.5, 0.5, 0.7, 0.5, 0.1, 8, 80.0, 1e-3, 10, 2)
    task = progress.progress.tasks[0]
    for _ in range(4):
        progress.on_candidate_epoch("zoo:full", record, 0)
    assert (task.completed, task.total) == (4, 4)
    progress.on_candidate_epoch("zoo:full", record, 0)
    assert (task.completed, task.total) == (5, None)
    progress.close()


def test_compare_progress_says_refit_when_the_winner_retrains():
    """The refit is a run of its own after the ranking: its start is one line, never
    "comparing 0 policies on 100 training / 0 validation images"."""
    from zoo.cli.render_compare import CompareProgress

    out = StringIO()
    progress = CompareProgress(Console(file=out, width=100))
    progress.on_start({"policy": "zoo:lora", "train_images": 100, "val_images": 0, "epochs": 20})
    text = out.getvalue()
    assert "refit: lora retrains on 100 images" in text and "20 epochs" in text
    assert "comparing" not in text


def test_compare_on_a_small_validation_set_says_refit_and_shows_its_epochs(colours, capsys):
    argv = ["compare", BACKBONE, "--data", str(colours / "train"), "--val", str(colours / "val")]
    argv += ["--scratch", "--image-size", "32", "--batch-size", "8", "--epochs", "1"]
    assert main([*argv, "--policies", "linear-probe,full", "--name", "rc"]) == 0
    out = capsys.readouterr()
    text = out.out + out.err
    assert "refit: " in text and "retrains on" in text  # 9 validation images: refit by default
    assert "refit epoch   1" in text
    assert "comparing 0 policies" not in text
