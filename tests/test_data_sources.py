"""Data beyond class folders: CSV/JSONL manifests and Hugging Face datasets are read into the
same image source as a folder, so adapt, compare, val_split and evaluate give the same answer
from each; a manifest's rows and a dataset's images are untrusted input."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from test_data import make_color_folder

import zoo
from zoo.adaptation import sources
from zoo.adaptation.sources import read_source
from zoo.cli.main import main

BACKBONE = "timm:test_resnet"  # a tiny timm ResNet: stem, 4 stages, fc
FAST = {"image_size": 32, "batch_size": 8, "lr": 1e-2, "scratch": True, "seed": 3}
CLASSES = ["blue", "green", "red"]


def _images(folder: Path) -> list[tuple[str, str]]:
    """``(path relative to the folder's parent, class)`` in the order a scan takes them."""
    found = read_source(folder, verify=False)
    return [(str(p.relative_to(folder.parent)), found.classes[c]) for p, c in found.samples]


def write_csv(path: Path, rows: list[tuple[str, str]], header: str = "path,label") -> Path:
    lines = [header, *(f"{p},{label}" for p, label in rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """``train`` (8 a class) and ``val`` (3 a class) colour folders, with a CSV manifest and a
    JSONL manifest of each beside them, listing the same images in the scan's order."""
    root = tmp_path_factory.mktemp("sources")
    make_color_folder(root / "train", per_class=8, seed=0)
    make_color_folder(root / "val", per_class=3, seed=1)
    for split in ("train", "val"):
        rows = _images(root / split)
        write_csv(root / f"{split}.csv", rows)
        write_jsonl(root / f"{split}.jsonl", [{"path": p, "label": c} for p, c in rows])
    return root


def imagefolder(root: Path, cache: Path):
    """``datasets.load_dataset("imagefolder")`` of ``root`` (offline; its own cache)."""
    datasets = pytest.importorskip("datasets")
    return datasets.load_dataset("imagefolder", data_dir=str(root), cache_dir=str(cache))


def _curve(history) -> list[tuple]:
    return [
        (e.train_loss, e.train_accuracy, e.val_loss, e.val_accuracy, e.images)
        for e in history.epochs
    ]


# ---------------------------------------------------------------- one answer from every source


def test_adapt_from_a_manifest_or_a_dataset_trains_exactly_as_from_the_folder(data, tmp_path):
    dataset = imagefolder(data / "train", tmp_path / "hf").get("train")  # no val split there
    both = imagefolder(data, tmp_path / "hf2")  # train/ and val/: a DatasetDict of 2 splits
    assert set(both) == {"train", "validation"}
    runs = {
        "folder": (data / "train", data / "val"),
        "csv": (data / "train.csv", data / "val.csv"),
        "jsonl": (data / "train.jsonl", data / "val.jsonl"),
        "dataset": (dataset, data / "val.csv"),  # sources mix: each is read the same way
        "datasetdict": (both, None),
    }
    curves, weights = {}, {}
    for name, (train, val) in runs.items():
        model, history = zoo.adapt(BACKBONE, train, val, policy="train-last:n=1", epochs=2, **FAST)
        assert history.classes == CLASSES
        assert (history.train_images, history.val_images) == (24, 9)
        curves[name] = _curve(history)
        weights[name] = model.state_dict()
    assert curves["folder"][-1][3] is not None
    for name in runs:
        assert curves[name] == curves["folder"], name
        for key, value in weights["folder"].items():
            assert torch.equal(weights[name][key], value), (name, key)


def test_compare_and_val_split_give_the_same_leaderboard_from_every_source(data, tmp_path):
    dataset = imagefolder(data / "train", tmp_path / "hf")["train"]
    boards = {}
    for name, train in {
        "folder": data / "train",
        "csv": data / "train.csv",
        "dataset": dataset,
    }.items():
        result = zoo.compare(
            BACKBONE,
            train,
            val_split=0.25,
            policies=["linear-probe", "full"],
            epochs=1,
            refit=False,  # the winner as measured: its history keeps the held-out split
            **FAST,
        )
        boards[name] = [(r.policy, r.val_acc, r.val_loss) for r in result.leaderboard.rows]
        assert result.history.val_images == 6  # 2 of each class's 8 held out
    assert boards["csv"] == boards["folder"] == boards["dataset"]


def test_evaluate_and_predict_read_every_source_the_same(data, tmp_path):
    model, _ = zoo.adapt(BACKBONE, data / "train", epochs=1, policy="full", **FAST)
    dataset = imagefolder(data / "val", tmp_path / "hf")["train"]
    scores = {
        str(source): zoo.evaluate(model, source).to_dict()
        for source in (data / "val", data / "val.csv", data / "val.jsonl", dataset)
    }
    assert len({json.dumps(s, sort_keys=True) for s in scores.values()}) == 1
    assert next(iter(scores.values()))["images"] == 9
    # predict takes the images themselves: a manifest's files predict as the folder's do
    listed = [data / p for p, _ in _images(data / "val")]
    by_folder = {p.source: p.top for p in zoo.predict(model, data / "val", recursive=True)}
    assert {p.source: p.top for p in zoo.predict(model, listed)} == by_folder


def test_zoo_adapt_takes_manifests_on_the_command_line(data, capsys):
    argv = ["adapt", BACKBONE, "--data", str(data / "train.csv"), "--val"]
    argv += [str(data / "val.jsonl"), "--scratch", "--image-size", "32", "--epochs", "1"]
    assert main([*argv, "--json"]) == 0, capsys.readouterr().err
    history = json.loads(capsys.readouterr().out)
    assert history["classes"] == CLASSES and history["val_images"] == 9
    assert Path(history["path"]).parent.name == "test_resnet-sources0"  # named as its folder
    assert zoo.load("test_resnet-sources0").zoo.classes == CLASSES


# ---------------------------------------------------------------- manifests: untrusted rows


@pytest.fixture
def images(tmp_path) -> Path:
    """Two classes of 3 images each in tmp_path/img (a manifest beside img lists them)."""
    make_color_folder(tmp_path / "img", per_class=3, classes=("red", "green"))
    return tmp_path


GOOD = [
    "path,label",
    "img/red/red_0.png,red",
    "img/red/red_1.png,red",
    "img/green/green_0.png,green",
]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["file,class", "img/red/red_0.png,red"], r"line 1: .*header row naming the columns path"),
        ([*GOOD, "img/green/green_1.png"], r"line 5: no label"),
        ([*GOOD, "img/green/green_1.png,  "], r"line 5: the label is empty"),
        ([*GOOD, "img/green/green_1.png,green|red"], r"line 5: .*several labels.*multi-label"),
        ([*GOOD, ",green"], r"line 5: the path '' is not a path"),
        ([*GOOD, "/etc/passwd,green"], r"line 5: the path '/etc/passwd' is an absolute path"),
        ([*GOOD, "../img/red/red_0.png,red"], r"line 5: the path .* leaves its folder"),
        ([*GOOD, "img/../../x.png,red"], r"line 5: the path .* leaves its folder"),
        ([*GOOD, "img/red/red_0.png,re\x1bd"], r"line 5: the label holds a control character"),
        ([*GOOD[:3], '"img/green/green_0.png,green'], r"line 4: not valid CSV"),
        (GOOD[:2], r"has a single class, 'red'"),
    ],
)
def test_a_bad_manifest_row_is_a_data_error_naming_the_file_and_line(images, lines, message):
    manifest = images / "bad.csv"
    manifest.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(zoo.DataError, match=message) as caught:
        read_source(manifest, training=True)
    assert str(manifest) in str(caught.value)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ('{"path": "img/red/red_1.png", "label": ["red", "green"]}', "several labels"),
        ('["img/red/red_1.png", "red"]', "one object a line"),
        ('{"path": "img/red/red_1.png"}', "no 'label' key"),
        ('{"path": "img/red/red_1.png", "label": NaN}', "not valid JSON"),
        ('{"path": 7, "label": "red"}', "is not a path"),
        ('{"path": "img/red/red_1.png", "label": true}', "label must be a text of 1 to 255"),
    ],
)
def test_a_bad_jsonl_row_names_its_line(images, row, message):
    good = {"path": "img/green/green_0.png", "label": "green"}
    manifest = images / "bad.jsonl"
    manifest.write_text(f"{json.dumps(good)}\n\n{row}\n", encoding="utf-8")
    with pytest.raises(zoo.DataError, match=message) as caught:
        read_source(manifest)
    assert f"{manifest}: line 3" in str(caught.value)


def test_a_manifest_reaches_no_file_through_a_link_and_is_read_as_a_bounded_regular_file(
    images, tmp_path_factory, monkeypatch
):
    outside = make_color_folder(tmp_path_factory.mktemp("outside"), per_class=1)
    (images / "img" / "elsewhere").symlink_to(outside / "red", target_is_directory=True)
    (images / "img" / "red" / "alias.png").symlink_to(outside / "red" / "red_0.png")
    for path in ("img/elsewhere/red_0.png", "img/red/alias.png"):
        manifest = write_csv(images / "m.csv", [("img/green/green_0.png", "green"), (path, "red")])
        with pytest.raises(
            zoo.DataError, match=r"line 3: the path .* goes through a symbolic link"
        ):
            read_source(manifest)
    write_csv(images / "real.csv", [("img/green/green_0.png", "green")])
    (images / "linked.csv").symlink_to(images / "real.csv")
    with pytest.raises(zoo.DataError, match=r"linked.csv.*symbolic link, not a regular file"):
        read_source(images / "linked.csv")
    os.mkfifo(images / "fifo.csv")  # never opened for reading: it would wait for a writer
    with pytest.raises(zoo.DataError, match=r"fifo.csv.*FIFO"):
        read_source(images / "fifo.csv")
    monkeypatch.setattr(sources, "MAX_MANIFEST_BYTES", 10)
    with pytest.raises(zoo.DataError, match=r"real.csv.*over the 10-byte limit"):
        read_source(images / "real.csv")
    (images / "latin.csv").write_bytes(b"path,label\nimg/red/caf\xe9.png,red\n")
    monkeypatch.setattr(sources, "MAX_MANIFEST_BYTES", 2**20)
    with pytest.raises(zoo.DataError, match=r"latin.csv: line 2: not UTF-8"):
        read_source(images / "latin.csv")
    with pytest.raises(zoo.DataError, match=r"manifest .*missing.csv' does not exist"):
        read_source(images / "missing.csv")


def test_manifest_images_are_checked_deduplicated_and_kept_apart_from_validation(images):
    (images / "img" / "red" / "fake.png").write_bytes(b"%!PS-Adobe-3.0\n")  # PostScript
    rows = [(f"img/red/red_{i}.png", "red") for i in (0, 1)] + [("img/red/fake.png", "red")]
    rows += [("img/green/green_0.png", "green"), ("./img\\green//green_0.png", "green")]
    rows += [("img/green/gone.png", "green")]
    train = write_csv(images / "train.csv", rows)
    val_rows = [("img/red/red_0.png", "red"), ("img/red/red_2.png", "red")]
    val = write_csv(images / "val.csv", [*val_rows, ("img/green/green_1.png", "green")])
    data = zoo.adaptation.inputs.prepare_data(
        train, val, classes=None, val_split=None, seed=0, on_corrupt="skip"
    )
    assert (len(data.train), len(data.val)) == (3, 2)  # red_0 trains: the val row is left out
    reasons = {Path(s["path"]).name: s["reason"] for s in data.skipped}
    assert "not an image of a format zoo reads" in reasons["fake.png"]
    assert "does not exist" in reasons["gone.png"]
    assert "the same file" in reasons["green_0.png"] and "the same file" in reasons["red_0.png"]
    with pytest.raises(
        zoo.DataError, match=r"corrupt or unreadable image .*gone.png. \(the file does not exist"
    ):
        read_source(train, on_corrupt="error")
    bad_val = write_csv(images / "val2.csv", [("img/green/green_1.png", "blue")])
    with pytest.raises(zoo.DataError, match=r"val2.csv: line 2: the label 'blue' is not one of"):
        zoo.adaptation.inputs.prepare_data(
            train, bad_val, classes=None, val_split=None, seed=0, on_corrupt="skip"
        )
    with pytest.raises(zoo.DataError, match=r"the validation manifest .* is the training manifest"):
        zoo.adaptation.inputs.prepare_data(
            train, train, classes=None, val_split=None, seed=0, on_corrupt="skip"
        )


# ---------------------------------------------------------------- Hugging Face datasets


def _png(colour, size=(8, 8)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _held(images: list[bytes], labels: list[int], names=("red", "green"), **more):
    """A Dataset whose images are held in it (encoded bytes, no file): as from the Hub."""
    datasets = pytest.importorskip("datasets")
    features = {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(names))}
    columns = {"image": [{"bytes": b, "path": None} for b in images], "label": labels}
    for name, (feature, values) in more.items():
        features[name], columns[name] = feature, values
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def test_images_held_in_a_dataset_are_untrusted_deduplicated_and_train(tmp_path):
    red, green = (200, 30, 30), (30, 200, 30)
    wide = _png(red, size=(1010, 10))  # resizing it would take 100 times its memory
    train = _held(
        [_png(red), _png((190, 40, 40)), wide, _png(green), _png((40, 190, 40)), _png(red)],
        [0, 0, 0, 1, 1, 0],
    )
    val = _held([_png(red), _png((180, 20, 20)), _png((20, 180, 20))], [0, 0, 1])
    model, history = zoo.adapt(BACKBONE, train, val, policy="full", epochs=1, **FAST)
    assert (history.train_images, history.val_images) == (4, 2)
    reasons = {s["path"]: s["reason"] for s in history.skipped}
    assert reasons.keys() == {
        "the training dataset row 2",
        "the training dataset row 5",
        "the dataset row 0",
    }
    assert "MAX_ASPECT_RATIO" in reasons["the training dataset row 2"]
    first = "the same image as 'the training dataset row 0'"  # the same bytes
    assert reasons["the training dataset row 5"] == reasons["the dataset row 0"] == first
    assert model.zoo.classes == ["red", "green"]  # the ClassLabel's names, in its order
    assert zoo.evaluate(model, val).images == 3  # on its own, every image of it counts


def test_dataset_columns_that_cannot_be_used_are_named(tmp_path):
    datasets = pytest.importorskip("datasets")
    pngs = [_png((200, 0, 0)), _png((0, 200, 0))]
    plain = datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in pngs], "label": [0, 1]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    )
    with pytest.raises(zoo.DataError, match=r"no ClassLabel column.*class_encode_column"):
        read_source(plain)
    several = datasets.Sequence(datasets.ClassLabel(names=["a", "b"]))
    tags = plain.remove_columns("label").cast_column("image", datasets.Image())
    tags = tags.add_column("tags", [[0, 1], [1]]).cast_column("tags", several)
    with pytest.raises(zoo.DataError, match=r"'tags' holds several labels.*multi-label"):
        read_source(tags)
    two = _held(pngs, [0, 1], thumb=(datasets.Image(), [{"bytes": b, "path": None} for b in pngs]))
    with pytest.raises(zoo.DataError, match=r"image columns \['image', 'thumb'\].*select_columns"):
        read_source(two)
    unlabelled = _held(pngs, [0, -1])
    with pytest.raises(zoo.DataError, match=r"the dataset row 1: no label \(-1\)"):
        read_source(unlabelled)
    splits = datasets.DatasetDict({"train": _held(pngs, [0, 1]), "validation": _held(pngs, [0, 1])})
    with pytest.raises(zoo.DataError, match=r"has a 'validation' split, and val_split is given"):
        zoo.adapt(BACKBONE, splits, val_split=0.5, epochs=1, **FAST)
    with pytest.raises(zoo.DataError, match=r"this IterableDataset cannot be used here"):
        zoo.adapt(BACKBONE, splits["train"].to_iterable_dataset(), epochs=1, **FAST)
    with pytest.raises(zoo.DataError, match=r"no 'train' split \(its splits: \['test'\]\)"):
        zoo.adapt(BACKBONE, datasets.DatasetDict({"test": splits["train"]}), epochs=1, **FAST)


def test_without_the_datasets_package_the_message_names_the_extra(monkeypatch):
    dataset = _held([_png((200, 0, 0)), _png((0, 200, 0))], [0, 1])
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if it were not installed
    with pytest.raises(zoo.DataError, match=r"pip install 'zoo-transfer\[datasets\]'"):
        zoo.adapt(BACKBONE, dataset, epochs=1, **FAST)
