"""zoo.evaluate and ``zoo evaluate``: one Evaluation of a saved model on labelled images."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from io import StringIO

import pytest
import torch
from rich.console import Console
from torch.utils.data import DataLoader, TensorDataset

import zoo
from zoo.adaptation.data import ImageDataset, build_transform, scan_image_folder
from zoo.adaptation.evaluation import ClassScores, Evaluation
from zoo.cli.main import main
from zoo.cli.render_evaluate import classes_table, confusion_view, scores_text
from zoo.errors import AdaptArgumentError, DataError

CLASSES = ["blue", "green", "red"]  # the colours fixture's class folders, sorted


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """A 3-class model with random weights, saved with the colours' class names at 32 px: its
    guesses are wrong often enough to give every score something to count."""
    torch.manual_seed(3)
    model = zoo.create("timm:test_resnet", num_classes=3)
    model.zoo.input_config = zoo.InputConfig(input_size=(3, 32, 32))
    path = tmp_path_factory.mktemp("evaluate") / "random.safetensors"
    zoo.save(model, path, classes=CLASSES)
    return path


def reference(path, folder):
    """Top-1 labels by zoo.predict and the true classes, computed without Evaluation."""
    images = sorted(folder.rglob("*.png"))
    preds = zoo.predict(zoo.load(path), images, topk=3)
    return [p.label for p in preds], [i.parent.name for i in images], preds


def test_evaluate_counts_agree_with_predict_and_the_definitions(untrained, colours):
    result = zoo.evaluate(untrained, colours / "train", topk=2, batch_size=5)
    assert isinstance(result, Evaluation)
    predicted, true, preds = reference(untrained, colours / "train")
    assert result.classes == tuple(CLASSES) and result.images == len(true) == 24
    right = sum(p == t for p, t in zip(predicted, true, strict=True))
    assert result.correct == right and result.accuracy == right / 24
    in_top2 = sum(t in [n for n, _ in p.top[:2]] for p, t in zip(preds, true, strict=True))
    assert result.topk == 2 and result.topk_accuracy == in_top2 / 24
    # loss: the mean cross-entropy, i.e. -log of the true class's probability
    nll = [-math.log(dict(p.top)[t]) for p, t in zip(preds, true, strict=True)]
    assert result.loss == pytest.approx(sum(nll) / 24, rel=1e-4)
    # the confusion matrix and the per-class scores from their definitions
    matrix = result.matrix()
    for i, a in enumerate(CLASSES):
        for j, b in enumerate(CLASSES):
            pairs = zip(true, predicted, strict=True)
            assert matrix[i][j] == sum(t == a and p == b for t, p in pairs)
    for scores in result.per_class:
        hits = sum(t == p == scores.name for t, p in zip(true, predicted, strict=True))
        support, guessed = true.count(scores.name), predicted.count(scores.name)
        assert (scores.support, scores.predicted) == (support, guessed)
        assert scores.recall == pytest.approx(hits / support)
        assert scores.precision == pytest.approx(hits / guessed if guessed else 0.0)
        p, r = scores.precision, scores.recall
        assert scores.f1 == pytest.approx(2 * p * r / (p + r) if p + r else 0.0)
    assert 0 < result.accuracy < 1, "the random model should be neither always right nor wrong"
    # topk is capped at the number of classes; batches do not change the counts
    whole = zoo.evaluate(zoo.load(untrained), colours / "train", topk=10, batch_size=64)
    assert whole.topk == 3 and whole.topk_accuracy == 1.0
    assert (whole.correct, whole.confusion) == (result.correct, result.confusion)


def test_to_dict_is_json_with_per_class_scores_and_confusion_cells(untrained, colours):
    result = zoo.evaluate(untrained, colours / "val")
    doc = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert doc["images"] == 9 and doc["accuracy"] == result.accuracy
    assert [c["class"] for c in doc["classes"]] == CLASSES
    assert sum(c["count"] for c in doc["confusion"]) == 9
    assert {c["true"] for c in doc["confusion"]} <= set(CLASSES)
    assert doc["skipped"] == []
    never = ClassScores("x", 0.0, 0.0, 0.0, 0, 0)  # a share of nothing is 0.0, not NaN
    assert never.to_dict()["precision"] == 0.0


def test_class_folders_must_be_the_models_classes_by_name(untrained, colours, tmp_path):
    with pytest.raises(DataError, match=r"no class 'blue' of the model"):
        zoo.evaluate(untrained, colours / "two")  # red and green only
    extra = tmp_path / "extra"
    shutil.copytree(colours / "val", extra)
    (extra / "purple").mkdir()
    shutil.copy(next((colours / "val" / "red").iterdir()), extra / "purple" / "p.png")
    with pytest.raises(DataError, match=r"'purple' that the model does not predict"):
        zoo.evaluate(untrained, extra)
    nameless = zoo.create("timm:test_resnet", num_classes=3)
    with pytest.raises(DataError, match="no class names"):
        zoo.evaluate(nameless, colours / "val")


def test_loaders_and_datasets_are_matched_by_class_name(untrained, colours):
    model = zoo.load(untrained)
    by_folder = zoo.evaluate(model, colours / "val")
    folder = scan_image_folder(colours / "val")
    transform = build_transform(model.zoo.input_config)
    dataset = ImageDataset.from_folder(folder, transform)
    assert zoo.evaluate(model, dataset).confusion == by_folder.confusion
    # the same images with the class order reversed: labels are read by name
    order = list(reversed(folder.classes))
    flipped = ImageDataset(
        [(path, order.index(folder.classes[label])) for path, label in folder.samples],
        order,
        transform,
    )
    result = zoo.evaluate(model, DataLoader(flipped, batch_size=4))
    assert result.classes == tuple(CLASSES) and result.confusion == by_folder.confusion
    assert result.loss == pytest.approx(by_folder.loss, rel=1e-5)
    # without .classes the labels are the model's output indices
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    labels = torch.tensor(dataset.targets)
    plain = zoo.evaluate(model, DataLoader(TensorDataset(images, labels), batch_size=3))
    assert plain.classes == tuple(CLASSES) and plain.confusion == by_folder.confusion


def test_bad_data_and_arguments_are_refused_with_what_to_do(untrained, colours, tmp_path):
    model = zoo.load(untrained)
    images = torch.zeros(2, 3, 32, 32)
    with pytest.raises(DataError, match=r"label\(s\) \[7\] outside 0..2"):
        zoo.evaluate(model, DataLoader(TensorDataset(images, torch.tensor([0, 7]))))
    with pytest.raises(DataError, match="one class index per image"):
        zoo.evaluate(model, DataLoader(TensorDataset(images, torch.rand(2, 3))))
    with pytest.raises(DataError, match="the data is empty"):
        zoo.evaluate(model, DataLoader(TensorDataset(images[:0], torch.tensor([], dtype=int))))
    with pytest.raises(DataError, match="cannot evaluate on list"):
        zoo.evaluate(model, [1, 2])
    with pytest.raises(AdaptArgumentError, match="topk"):
        zoo.evaluate(model, colours / "val", topk=0)
    with pytest.raises(zoo.errors.ModelNotFoundError):
        zoo.evaluate("no-such-model", colours / "val")
    broken = zoo.load(untrained)
    with torch.no_grad():
        next(broken.parameters()).fill_(float("nan"))
    with pytest.raises(zoo.ZooError, match="non-finite outputs"):
        zoo.evaluate(broken, colours / "val")
    # an unreadable image is left out and listed, the rest evaluated
    folder = tmp_path / "some-bad"
    shutil.copytree(colours / "val", folder)
    (folder / "red" / "broken.png").write_bytes(b"not a png")
    result = zoo.evaluate(model, folder)
    assert result.images == 9 and [s.path.name for s in result.skipped] == ["broken.png"]


def test_evaluate_keeps_the_models_mode(untrained, colours):
    model = zoo.load(untrained)
    model.train()
    zoo.evaluate(model, colours / "val")
    assert model.training


def test_cli_evaluate_table_and_json(untrained, colours, capsys):
    zoo.save(zoo.load(untrained), "random")
    assert main(["evaluate", "random", str(colours / "val"), "--topk", "2"]) == 0
    out = capsys.readouterr().out
    expected = zoo.evaluate("random", colours / "val", topk=2)
    assert "of 9 images) · top-2" in out and "precision" in out and "recall" in out
    assert "true \\ predicted" in out
    assert main(["evaluate", "random", str(colours / "val"), "--json"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)  # stdout is one JSON document and nothing else
    assert doc["model"] == "random" and doc["accuracy"] == expected.accuracy
    assert doc["topk"] == 3 and len(doc["classes"]) == 3
    assert main(["evaluate", "random", str(colours / "two")]) == 1
    assert "no class 'blue' of the model" in capsys.readouterr().err
    assert main(["evaluate", "random", str(colours / "val"), "--topk", "0"]) == 1
    assert "--topk" in capsys.readouterr().err


def test_cli_plot_is_checked_before_the_model_is_read(colours, tmp_path, capsys):
    assert main(["evaluate", "no-such-model", str(colours / "val"), "--plot", "c.jpg"]) == 1
    assert "name a .png file" in capsys.readouterr().err
    missing = str(tmp_path / "nowhere" / "c.png")
    assert main(["evaluate", "no-such-model", str(colours / "val"), "--plot", missing]) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None, reason="the plot extra is not installed"
)
def test_cli_plot_writes_the_confusion_matrix_png(untrained, colours, tmp_path, capsys):
    from PIL import Image

    zoo.save(zoo.load(untrained), "random")
    target = tmp_path / "confusion.png"
    assert main(["evaluate", "random", str(colours / "val"), "--plot", str(target)]) == 0
    assert f"plot: {target}" in capsys.readouterr().out
    with Image.open(target) as image:
        assert image.format == "PNG" and min(image.size) > 300


def synthetic(classes: int, wrong: int) -> Evaluation:
    """An evaluation of ``classes`` classes of 10 images each, ``wrong`` of class 0 predicted
    as class 1."""
    names = tuple(f"class-{i:03d}" for i in range(classes))
    cells = [(0, 0, 10 - wrong), (0, 1, wrong)] + [(i, i, 10) for i in range(1, classes)]
    return Evaluation(
        names,
        10 * classes,
        10 * classes - wrong,
        5,
        10 * classes,
        0.5,
        tuple(c for c in cells if c[2]),
    )


@pytest.mark.parametrize("width", [60, 80, 120])
def test_evaluation_renders_at_real_widths(width):
    small, large = synthetic(3, 4), synthetic(40, 4)
    for result in (small, large):
        out = StringIO()
        console = Console(file=out, width=width, color_system=None)
        for renderable in (scores_text(result), classes_table(result)):
            console.print(renderable)
        console.print(confusion_view(result, width))
        text = out.getvalue()
        assert all(len(line) <= width for line in text.splitlines())
        assert f"accuracy {100 * result.accuracy:.1f}%" in text  # the accuracy survives
        assert "recall" in text and "class-002" in text
        assert "…" not in text  # no number is cut
    out = StringIO()
    Console(file=out, width=width, color_system=None).print(confusion_view(small, width))
    assert "true \\ predicted" in out.getvalue()  # 3 classes: the matrix fits
    out = StringIO()
    Console(file=out, width=width, color_system=None).print(confusion_view(large, width))
    text = out.getvalue()
    assert "most frequent confusion" in text and "class-000" in text and "40.0%" in text
    perfect = Console(file=StringIO(), width=width, color_system=None)
    perfect.print(confusion_view(synthetic(3, 0), width))
    assert "no confusions" in perfect.file.getvalue()
