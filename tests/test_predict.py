"""zoo.predict and ``zoo predict`` on saved models."""

from __future__ import annotations

import json
from io import StringIO

import pytest
import torch
from PIL import Image
from rich.console import Console
from test_data import make_color_folder

import zoo
from zoo.adaptation.predict import Prediction
from zoo.cli.main import main
from zoo.cli.render_adapt import predictions_table


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A colour classifier saved to a file (module-wide: each test has its own store)."""
    root = tmp_path_factory.mktemp("predict")
    make_color_folder(root / "train", per_class=8, seed=0)
    make_color_folder(root / "test", per_class=2, seed=5)
    model, history = zoo.adapt(
        "timm:test_resnet",
        root / "train",
        policy="linear-probe",
        epochs=15,
        image_size=32,
        batch_size=8,
        lr=5e-2,
    )
    path = zoo.save(model, root / "colours.safetensors")
    return root, path, history


def test_predict_topk_with_the_saved_preprocessing(trained):
    root, path, _ = trained
    model = zoo.load(path)
    assert model.zoo_input_config.input_size == (3, 32, 32)
    images = sorted((root / "test").rglob("*.png"))
    predictions = zoo.predict(model, images, topk=5)
    assert len(predictions) == len(images)
    for pred, image in zip(predictions, images, strict=True):
        assert isinstance(pred, Prediction) and pred.source == str(image)
        assert len(pred.top) == 3  # topk is capped at the number of classes
        probs = [p for _, p in pred.top]
        assert probs == sorted(probs, reverse=True)
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
        assert {name for name, _ in pred.top} == {"blue", "green", "red"}
    correct = sum(p.label == i.parent.name for p, i in zip(predictions, images, strict=True))
    assert correct >= 5  # colours are easy: most of 6 test images are right
    # a PIL image and a prepared tensor give the same answer as the file
    pil = Image.open(images[0])
    from zoo.adaptation.data import build_transform

    tensor = build_transform(model.zoo_input_config)(pil.convert("RGB"))
    by_pil, by_tensor = zoo.predict(model, [pil, tensor], topk=2)
    assert [n for n, _ in by_pil.top] == [n for n, _ in by_tensor.top]
    assert [p for _, p in by_pil.top] == pytest.approx([p for _, p in by_tensor.top], abs=1e-6)
    assert by_pil.probability == pytest.approx(predictions[0].probability, abs=1e-5)
    # a store name or a file can be passed directly
    assert zoo.predict(str(path), images[0], topk=1)[0].label == predictions[0].label


def test_predict_errors(trained, tmp_path):
    _, path, _ = trained
    model = zoo.load(path)
    with pytest.raises(zoo.DataError, match="does not exist"):
        zoo.predict(model, [tmp_path / "nope.png"])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(zoo.DataError, match=r"bad\.png"):
        zoo.predict(model, [bad])
    with pytest.raises(zoo.ZooError, match="topk"):
        zoo.predict(model, [bad], topk=0)
    with pytest.raises(zoo.ModelNotFoundError):
        zoo.predict("no-such-model", [bad])


def test_cli_predict_json_and_table(trained, capsys):
    root, path, _ = trained
    zoo.save(zoo.load(path), "colours")
    images = [str(p) for p in sorted((root / "test").rglob("*.png"))[:2]]
    assert main(["predict", "colours", *images, "--topk", "2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["model"] == "colours" and len(doc["predictions"]) == 2
    first = doc["predictions"][0]
    assert first["image"] == images[0] and len(first["top"]) == 2
    assert first["top"][0]["probability"] >= first["top"][1]["probability"]
    assert main(["predict", "colours", images[0]]) == 0
    out = capsys.readouterr().out
    assert "blue" in out and "%" in out
    assert main(["predict", "colours", "missing.png"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["predict", "nope", images[0]]) == 1
    assert "nope" in capsys.readouterr().err


def test_predictions_table_renders():
    preds = [Prediction("a.png", (("cat", 0.75), ("dog", 0.25)))]
    console = Console(file=StringIO(), width=100)
    console.print(predictions_table(preds))
    text = console.file.getvalue()
    assert "a.png" in text and "75.0%" in text and "dog" in text


def test_prediction_to_dict():
    pred = Prediction("x", (("a", 0.5),))
    assert pred.to_dict() == {"image": "x", "top": [{"class": "a", "probability": 0.5}]}
    assert torch.tensor(pred.probability).item() == 0.5
