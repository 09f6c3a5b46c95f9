"""``zoo demo``: the embedded main job runs end to end (fast sizes) and leaves its models."""

from __future__ import annotations

import json

import pytest

import zoo
from zoo.cli.demo import FAST, LADDER, SOURCE_NAME, digit_pixels, write_digits
from zoo.cli.main import main


def test_demo_fast_compares_and_saves_the_winner(capsys, _isolated_zoo):
    import torch

    threads = torch.get_num_threads()
    assert main(["demo", "--fast", "--json"]) == 0
    assert torch.get_num_threads() == threads  # the demo's one thread is given back
    doc = json.loads(capsys.readouterr().out)
    rows = doc["rows"]
    # one zoo.compare over the ladder: its leaderboard, best first
    assert sorted(r["policy"] for r in rows) == sorted(LADDER)
    assert doc["winner"] == rows[0]["policy"]
    # the best score (a mean over splits on this small validation set) wins, tied or not
    finished = [r["val_accuracy"] for r in rows if not r["stopped_early"]]
    assert rows[0]["val_accuracy"] == max(finished)
    assert doc["winner"].split(":")[0] in doc["why"]
    percent = {r["policy"]: r["trainable_percent"] for r in rows}
    assert percent["linear-probe"] < percent["train-last:n=1"] < percent["train-last:n=2"]
    assert percent["full"] == 100.0
    assert {r["trained_on"] for r in rows if r["policy"] != "full"} != {"images"}  # cached
    assert doc["train_images"] == 5 * FAST.shots
    assert doc["val_images"] == 5 * FAST.val_per_class
    assert doc["test_images"] == 5 * FAST.test_per_class
    assert 0.0 <= doc["test_accuracy"] <= 1.0 and 0.0 <= doc["scratch_accuracy"] <= 1.0
    assert len(doc["predictions"]) == FAST.predictions
    # both models are in the store, with the digits as class names; the winner keeps the
    # leaderboard in its metadata
    names = sorted(p.name for p in (_isolated_zoo / "models").iterdir())
    assert names == ["demo-digits", SOURCE_NAME]
    assert doc["best"] == "demo-digits"
    saved = zoo.load("demo-digits")
    assert saved.zoo.classes == ["5", "6", "7", "8", "9"]
    assert saved.zoo.plan.policy == "zoo:" + doc["winner"].split(":")[0]
    board = zoo.inspect("demo-digits").metadata.compare
    assert board["winner"].removeprefix("zoo:") == doc["winner"]
    assert len(board["candidates"]) == len(LADDER)
    assert zoo.load(SOURCE_NAME).zoo.classes == ["0", "1", "2", "3", "4"]


def test_digit_folders(tmp_path):
    folders = write_digits(tmp_path, FAST)
    assert sorted(p.name for p in folders.source_train.iterdir()) == ["0", "1", "2", "3", "4"]
    assert sorted(p.name for p in folders.target_test.iterdir()) == ["5", "6", "7", "8", "9"]
    assert all(len(list(d.iterdir())) == FAST.shots for d in folders.target_train.iterdir())
    assert all(len(list(d.iterdir())) == FAST.val_per_class for d in folders.target_val.iterdir())
    train = {p.name for p in folders.target_train.rglob("*.png")}
    val = {p.name for p in folders.target_val.rglob("*.png")}
    test = {p.name for p in folders.target_test.rglob("*.png")}
    assert not train & test and not val & test and not train & val


def test_digit_domains():
    import numpy as np

    from zoo.cli.demo import load_digits

    images, _ = load_digits()
    same = digit_pixels(images[0])
    assert same.dtype == np.uint8 and same.min() == 0
    assert (same == (images[0] * 255 / 16).astype(np.uint8)).all()  # 0..16 -> 0..255
    assert (digit_pixels(images[0], "inverted") == 255 - same).all()
    assert (digit_pixels(images[0], "rotated") == np.rot90(same)).all()
    with pytest.raises(ValueError, match="similar, inverted or rotated"):
        digit_pixels(images[0], "upside-down")


def test_digits_match_scikit_learn():
    from sklearn.datasets import load_digits as sklearn_digits

    from zoo.cli.demo import load_digits

    images, labels = load_digits()
    reference = sklearn_digits()
    assert images.shape == (1797, 8, 8)
    assert (images == reference.images).all() and (labels == reference.target).all()


def test_demo_suggests_commands_that_work_offline(capsys, tmp_path, _isolated_zoo):
    """The last line's ``zoo compare`` and ``zoo adapt`` start from the demo's own weights, so
    they run offline (a bare backbone name would need downloaded pretrained weights)."""
    import shlex

    assert main(["demo", "--fast", "--keep-data", str(tmp_path / "digits")]) == 0
    out = capsys.readouterr().out
    assert "zoo.compare on digits 5-9" in out and "train-last:n=1" in out
    last = " ".join(out.split("Next:", 1)[1].split())
    predict, evaluate, compare, adapt = last.split(", or ")
    assert predict.startswith("zoo predict demo-digits")
    assert main(shlex.split(evaluate)[1:]) == 0  # the kept test digits, scored per class
    assert "accuracy" in capsys.readouterr().out
    folder = next((tmp_path / "digits").rglob("5")).parent  # a folder of digit class folders

    def argv(command: str, name: str) -> list[str]:
        words = shlex.split(command)
        assert words[0] == "zoo" and "--weights" in words
        words = [w.replace("YOUR_FOLDER", str(folder)) for w in words[1:]]
        return [name if w == "NAME" else w for w in words]

    assert main([*argv(compare, "compared"), "--epochs", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["saved"] == "compared" and len(doc["candidates"]) == len(LADDER)
    assert main([*argv(adapt, "mine"), "--epochs", "1", "--policy", "linear-probe"]) == 0
    text = capsys.readouterr().out
    assert f"weights of saved model {SOURCE_NAME!r}" in text
    assert zoo.load("mine").zoo.input_config.input_size == (3, FAST.image_size, FAST.image_size)
    assert zoo.load("compared").zoo.input_config.input_size == (
        3,
        FAST.image_size,
        FAST.image_size,
    )
