"""``zoo demo``: the embedded main job runs end to end (fast sizes) and leaves its models."""

from __future__ import annotations

import json
from io import StringIO

from rich.console import Console

import zoo
from zoo.cli.demo import FAST, SOURCE_NAME, DemoRow, write_digits
from zoo.cli.main import main
from zoo.cli.render_adapt import demo_table


def test_demo_fast_runs_and_saves_the_best(capsys, _isolated_zoo):
    assert main(["demo", "--fast", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = {r["strategy"]: r for r in doc["rows"]}
    assert list(rows) == ["scratch", "linear-probe", "partial", "full"]
    assert rows["linear-probe"]["feature_cache"] is True
    assert rows["scratch"]["trainable_fraction"] == 1.0
    assert rows["linear-probe"]["trainable_fraction"] < rows["partial"]["trainable_fraction"] < 1
    assert doc["test_images"] == 5 * FAST.test_per_class
    assert doc["train_images"] == 5 * FAST.shots
    assert doc["best"] == "demo-digits"
    assert doc["best_strategy"] == max(doc["rows"], key=lambda r: r["accuracy"])["strategy"]
    assert len(doc["predictions"]) == FAST.predictions
    # both models are in the store, with the digits as class names
    names = sorted(p.name for p in (_isolated_zoo / "models").iterdir())
    assert names == ["demo-digits", SOURCE_NAME]
    assert zoo.load("demo-digits").zoo_classes == ["5", "6", "7", "8", "9"]
    assert zoo.load(SOURCE_NAME).zoo_classes == ["0", "1", "2", "3", "4"]


def test_digit_folders(tmp_path):
    folders = write_digits(tmp_path, FAST)
    assert sorted(p.name for p in folders.source_train.iterdir()) == ["0", "1", "2", "3", "4"]
    assert sorted(p.name for p in folders.target_test.iterdir()) == ["5", "6", "7", "8", "9"]
    assert all(len(list(d.iterdir())) == FAST.shots for d in folders.target_train.iterdir())
    train = {p.name for p in folders.target_train.rglob("*.png")}
    test = {p.name for p in folders.target_test.rglob("*.png")}
    assert not train & test


def test_demo_table_marks_the_best():
    rows = [
        DemoRow("scratch", "zoo:full", "timm:resnet18", 0.4, 1.0, 3.0, False),
        DemoRow("linear-probe", "zoo:linear-probe", "demo", 0.9, 0.01, 1.0, True),
    ]
    console = Console(file=StringIO(), width=120)
    console.print(demo_table(rows))
    text = console.file.getvalue()
    assert "linear-probe" in text and "90.0%" in text and "40.0%" in text


def test_digits_match_scikit_learn():
    from sklearn.datasets import load_digits as sklearn_digits

    from zoo.cli.demo import load_digits

    images, labels = load_digits()
    reference = sklearn_digits()
    assert images.shape == (1797, 8, 8)
    assert (images == reference.images).all() and (labels == reference.target).all()


def test_demo_suggests_an_adapt_command_that_works_offline(capsys, tmp_path, _isolated_zoo):
    """The last line's ``zoo adapt`` starts from the demo's own weights, so it runs offline
    (a bare backbone name would need downloaded pretrained weights)."""
    import shlex

    assert main(["demo", "--fast", "--keep-data", str(tmp_path / "digits")]) == 0
    out = capsys.readouterr().out
    last = " ".join(out.split("Next:", 1)[1].split())
    command = shlex.split(last.split(", or ", 1)[1])
    assert command[:2] == ["zoo", "adapt"] and "--weights" in command
    folder = next((tmp_path / "digits").rglob("5")).parent  # a folder of digit class folders
    argv = [a.replace("YOUR_FOLDER", str(folder)) for a in command[1:]]
    argv = [a.replace("NAME", "mine") if a == "NAME" else a for a in argv]
    assert main([*argv, "--epochs", "1", "--policy", "linear-probe"]) == 0
    text = capsys.readouterr().out
    assert f"weights of saved model {SOURCE_NAME!r}" in text
    assert zoo.load("mine").zoo_input_config.input_size == (3, FAST.image_size, FAST.image_size)
