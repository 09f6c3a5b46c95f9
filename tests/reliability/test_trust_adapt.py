"""``zoo.adapt`` and ``zoo adapt`` refuse what cannot train a classifier (issue 11, item 13).

Every numeric and choice argument is checked before any work: the tests pass a backbone and a
training folder that do not exist, so an argument refused with ``AdaptArgumentError`` (naming
it) was refused before either was looked at. Data with fewer than 2 classes — a folder, a
loader's class names or its labels — is refused with a ``DataError`` before a model is built,
and nothing is saved.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from test_data import make_color_folder
from torch.utils.data import DataLoader, TensorDataset

import zoo
from zoo.adaptation.history import EpochRecord, History
from zoo.cli.main import main
from zoo.errors import AdaptArgumentError, DataError

#: A backbone and a folder that do not exist: an argument refused with AdaptArgumentError was
#: checked before any work (resolving the name or reading the folder would fail first).
NOWHERE = {"backbone_or_model": "nowhere:no-such-backbone", "train": "/no/such/folder"}


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"epochs": 0}, "epochs"),
        ({"epochs": 2.0}, "epochs"),
        ({"epochs": True}, "epochs"),
        ({"lr": math.nan}, "lr"),
        ({"lr": math.inf}, "lr"),
        ({"lr": 0.0}, "lr"),
        ({"lr": True}, "lr"),
        ({"lr": "0.1"}, "lr"),
        ({"lr": 10**400}, "lr"),
        ({"weight_decay": math.nan}, "weight_decay"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"batch_size": 0}, "batch_size"),
        ({"optimizer": "adam"}, "optimizer"),
        ({"momentum": 1.5}, "momentum"),
        ({"momentum": -1}, "momentum"),
        ({"lr_schedule": "step"}, "lr_schedule"),
        ({"warmup_epochs": -1}, "warmup_epochs"),
        ({"warmup_epochs": 6, "epochs": 5}, "warmup_epochs"),
        ({"warmup_epochs": math.inf}, "warmup_epochs"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"label_smoothing": -0.1}, "label_smoothing"),
        ({"label_smoothing": math.nan}, "label_smoothing"),
        ({"val_split": 0}, "val_split"),
        ({"val_split": 1.0}, "val_split"),
        ({"val_split": math.nan}, "val_split"),
        ({"image_size": 0}, "image_size"),
        ({"image_size": 100_000}, "image_size"),
        ({"image_size": (32,)}, "image_size"),
        ({"image_size": (32, -1)}, "image_size"),
        ({"image_size": "32"}, "image_size"),
        ({"input_config": {"crop_pct": 0}}, "input_config['crop_pct']"),
        ({"input_config": {"crop_pct": -3}}, "input_config['crop_pct']"),
        ({"input_config": {"crop_pct": math.nan}}, "input_config['crop_pct']"),
        ({"input_config": {"crop_pct": 2.5}}, "input_config['crop_pct']"),
        ({"input_config": {"std": [0.2, 0.0, 0.2]}}, "input_config['std']"),
        ({"input_config": {"mean": [0.5, math.nan, 0.5]}}, "input_config['mean']"),
        ({"input_config": {"input_size": [3, 0, 32]}}, "input_config['input_size']"),
        ({"input_config": {"interpolation": "cubic"}}, "input_config['interpolation']"),
        ({"input_config": {"crop_mode": "middle"}}, "input_config['crop_mode']"),
        ({"input_config": {"crop": 1.0}}, "input_config"),
        ({"augment": "yes"}, "augment"),
        ({"similarity": "medium"}, "similarity"),
        ({"samples_per_class": 0}, "samples_per_class"),
        ({"feature_cache": 1}, "feature_cache"),
        ({"on_corrupt": "ignore"}, "on_corrupt"),
        ({"num_workers": -1}, "num_workers"),
        ({"num_workers": 100_000}, "num_workers"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"distributed": "yes"}, "distributed"),
        ({"overwrite": "no"}, "overwrite"),
        ({"policy_args": [("depth", 2)]}, "policy_args"),
        ({"classes": ["cat"]}, "classes"),
        ({"classes": ["cat", "cat"]}, "classes"),
        ({"classes": "ab"}, "classes"),
        ({"classes": ["cat", ""]}, "classes"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(kwargs, argument, _isolated_zoo):
    with pytest.raises(AdaptArgumentError) as info:
        zoo.adapt(**NOWHERE, name="never", **kwargs)
    assert info.value.argument == argument
    assert str(info.value).startswith(f"{argument} must be ")
    assert isinstance(info.value, (zoo.ZooError, ValueError))
    assert not (_isolated_zoo / "models").exists()


@pytest.mark.parametrize(
    "kwargs, shown",
    [
        ({"policies": "full"}, "policies must be left out: zoo.adapt trains one policy"),
        ({"budget": 60}, "budget must be left out: it is not an argument of zoo.adapt"),
        ({"plot": "p.png"}, "plot must be left out"),
        ({"epoch": 3}, "did you mean epochs?"),
    ],
)
def test_arguments_adapt_does_not_take_are_refused_by_name(kwargs, shown, _isolated_zoo):
    """compare's own arguments and unknown keywords: one rule for both jobs, no TypeError."""
    with pytest.raises(AdaptArgumentError) as info:
        zoo.adapt(**NOWHERE, name="never", **kwargs)
    assert info.value.argument == next(iter(kwargs))
    assert shown in str(info.value)
    assert not (_isolated_zoo / "models").exists()


def test_an_unknown_device_is_a_clear_error():
    with pytest.raises(zoo.ZooError, match="unknown device 'gpu'"):
        zoo.adapt(**NOWHERE, device="gpu")


@pytest.mark.parametrize(
    "option, value, shown",
    [
        ("--crop-pct", "-3", "--crop-pct must be a finite number in (0, 2]"),
        ("--crop-pct", "0", "--crop-pct must be a finite number in (0, 2]"),
        ("--lr", "nan", "--lr must be a finite number > 0, not nan"),
        ("--lr", "inf", "--lr must be a finite number > 0, not inf"),
        ("--weight-decay", "nan", "--weight-decay must be a finite number >= 0"),
        ("--label-smoothing", "1", "--label-smoothing must be a finite number in [0, 1)"),
        ("--warmup-epochs", "-1", "--warmup-epochs must be"),
        ("--image-size", "100000", "--image-size must be"),
        ("--workers", "-1", "--workers must be an int from 0"),
        ("--val-split", "1.5", "--val-split must be"),
        ("--epochs", "0", "--epochs must be an int >= 1"),
    ],
)
def test_cli_refuses_an_option_by_its_name(option, value, shown, capsys, _isolated_zoo):
    code = main(["adapt", "nowhere:no-such-backbone", "--data", "/no/such/folder", option, value])
    err = capsys.readouterr().err
    assert code != 0
    assert shown in err
    assert "Traceback" not in err
    assert not (_isolated_zoo / "models").exists()


@pytest.mark.slow
def test_cli_crop_pct_in_a_real_process(tmp_path):
    """The command exits non-zero with one line, where it used to end in a PIL traceback."""
    make_color_folder(tmp_path / "d", per_class=2)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "zoo.cli.main",
            "adapt",
            "timm:test_resnet",
            "--data",
            str(tmp_path / "d"),
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--crop-pct",
            "-3",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        "error: --crop-pct must be a finite number in (0, 2] (1.0: no crop), not -3.0"
    ]


@pytest.fixture
def one_class(tmp_path):
    root = make_color_folder(tmp_path / "one", classes=("red",), per_class=3)
    (root / "red" / "broken.png").write_bytes(b"not an image")  # never opened
    return root


def test_a_folder_with_one_class_is_refused(one_class, _isolated_zoo):
    with pytest.raises(DataError) as info:
        zoo.adapt(
            "timm:test_resnet", one_class, image_size=32, epochs=1, name="one", on_corrupt="error"
        )
    message = str(info.value)
    assert str(one_class) in message and "'red'" in message and "at least 2 classes" in message
    assert not (_isolated_zoo / "models").exists()


def test_classes_without_a_training_folder_are_refused(tmp_path):
    root = make_color_folder(tmp_path / "d", classes=("blue", "red"), per_class=2)
    with pytest.raises(DataError, match=r"no folder for class\(es\) 'green'"):
        zoo.adapt("timm:test_resnet", root, classes=["blue", "green", "red"], image_size=32)
    with pytest.raises(DataError, match="single class folder, 'red'"):
        zoo.adapt(
            "timm:test_resnet",
            make_color_folder(tmp_path / "r", classes=("red",)),
            classes=["blue", "red"],
            image_size=32,
        )


def _loader(labels, classes=None):
    dataset = TensorDataset(torch.zeros(len(labels), 3, 32, 32), torch.tensor(labels))
    if classes is not None:
        dataset.classes = classes
    return DataLoader(dataset, batch_size=2)


@pytest.mark.parametrize(
    "train, val, classes, message",
    [
        (_loader([0, 0, 0, 0]), None, ["cat", "dog"], r"samples of a single class \('cat'\)"),
        (_loader([0, 1], ["only"]), None, None, "single class, 'only'"),
        (_loader([0, 1, 2]), None, ["cat", "dog"], r"label\(s\) \[2\] outside 0..1"),
        (_loader([0, 1, -1]), None, ["cat", "dog"], r"label\(s\) \[-1\]"),
        (
            _loader([0, 1], ["cat", "dog"]),
            _loader([0, 1], ["dog", "cat"]),
            None,
            "validation data's classes",
        ),
        (
            _loader([0, 1], ["cat", "dog"]),
            _loader([0, 5], ["cat", "dog"]),
            None,
            r"validation data has label\(s\) \[5\]",
        ),
    ],
)
def test_loaders_a_classifier_cannot_learn_from_are_refused(
    train, val, classes, message, _isolated_zoo
):
    with pytest.raises(DataError, match=message):
        zoo.adapt("timm:test_resnet", train, val, classes=classes, image_size=32, name="m")
    assert not (_isolated_zoo / "models").exists()


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_predict_and_evaluate_refuse_top_k_batch_and_device_before_loading(capsys, command):
    for option, value, shown in (
        ("--topk", "0", "--topk must be an int >= 1, not 0"),
        ("--topk", "-1", "--topk must be an int >= 1, not -1"),
        ("--batch-size", "0", "--batch-size must be an int >= 1, not 0"),
        ("--device", "gpu", "unknown device 'gpu'"),
    ):
        code = main([command, "no-such-model", "x.png", option, value])
        err = capsys.readouterr().err
        assert code != 0 and shown in err and "no-such-model" not in err


def test_a_diverged_loss_is_written_as_null_in_the_history_json():
    """`zoo adapt --json` after a NaN loss prints valid JSON (null), never `NaN`."""
    record = EpochRecord(
        epoch=1,
        train_loss=float("nan"),
        train_accuracy=0.5,
        val_loss=float("inf"),
        val_accuracy=None,
        seconds=1.0,
        images=4,
        images_per_second=4.0,
        lr=0.1,
        trainable_params=10,
        trainable_tensors=2,
    )
    data = json.loads(History(epochs=[record]).to_json(allow_nan=False))
    assert data["epochs"][0]["train_loss"] is None
    assert data["epochs"][0]["val_loss"] is None
    assert data["epochs"][0]["train_accuracy"] == 0.5
