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
        scratch=True,  # offline: no pretrained weights (a colour probe learns from random ones)
    )
    path = zoo.save(model, root / "colours.safetensors")
    return root, path, history


def test_predict_topk_with_the_saved_preprocessing(trained):
    root, path, _ = trained
    model = zoo.load(path)
    assert model.zoo.input_config.input_size == (3, 32, 32)
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

    tensor = build_transform(model.zoo.input_config)(pil.convert("RGB"))
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


def _folder_of_images(root, trained_root):
    """Copies of the test images in ``root`` (top level and a subfolder), a broken image, a
    hidden image and a text file."""
    import shutil

    images = sorted((trained_root / "test").rglob("*.png"))
    root.mkdir()
    (root / "sub").mkdir()
    for i, image in enumerate(images[:3]):
        shutil.copy(image, root / f"img{i}.png")
    shutil.copy(images[3], root / "sub" / "deep.png")
    shutil.copy(images[4], root / ".hidden.png")
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "notes.txt").write_text("not an image")
    return root


def test_predict_folder_sorted_batched_and_errors_reported(trained, tmp_path):
    root, path, _ = trained
    folder = _folder_of_images(tmp_path / "photos", root)
    model = zoo.load(path)
    with pytest.raises(zoo.DataError, match=r"broken\.jpg"):
        zoo.predict(model, folder)  # errors="raise" is the default
    preds = zoo.predict(model, folder, topk=1, batch_size=2, errors="report")
    assert [p.source for p in preds] == [
        str(folder / n) for n in ("broken.jpg", "img0.png", "img1.png", "img2.png")
    ]
    assert not preds[0].ok and "broken.jpg" in preds[0].error and preds[0].label is None
    assert preds[0].to_dict() == {"image": str(folder / "broken.jpg"), "error": preds[0].error}
    assert all(p.ok and len(p.top) == 1 for p in preds[1:])
    # batching does not change the answers
    one_by_one = zoo.predict(model, [str(folder / f"img{i}.png") for i in range(3)], topk=1)
    assert [p.label for p in preds[1:]] == [p.label for p in one_by_one]
    deep = zoo.predict(model, folder, recursive=True, errors="report")
    assert [p.source for p in deep][-1] == str(folder / "sub" / "deep.png") and len(deep) == 5
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(zoo.DataError, match=r"no images in folder.*--recursive"):
        zoo.predict(model, empty)
    with pytest.raises(zoo.ZooError, match="batch_size"):
        zoo.predict(model, folder, batch_size=0)


@pytest.mark.slow
def test_cli_predict_folder_json_csv_and_table(trained, tmp_path, capsys):
    import csv
    import os
    import subprocess
    import sys

    root, path, _ = trained
    folder = _folder_of_images(tmp_path / "photos", root)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "120"}

    def zoo_cli(*args, cwd=None):
        return subprocess.run(
            [sys.executable, "-m", "zoo.cli.main", "predict", str(path), *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )

    run = zoo_cli(str(folder), "-k", "2", "--json", "--batch-size", "2")
    assert run.returncode == 1, run.stderr  # one image could not be read
    doc = json.loads(run.stdout)
    images = [p["image"] for p in doc["predictions"]]
    assert images == [str(folder / n) for n in ("broken.jpg", "img0.png", "img1.png", "img2.png")]
    assert "error" in doc["predictions"][0] and len(doc["predictions"][1]["top"]) == 2
    assert "broken.jpg" in run.stderr and "1 of 4 image(s) could not be read" in run.stderr

    out_csv = tmp_path / "out.csv"  # in-process from here: the processes above cost seconds
    assert main(["predict", str(path), str(folder), "-r", "-k", "2", "--csv", str(out_csv)]) == 1
    rows = list(csv.DictReader(out_csv.open(newline="")))
    assert list(rows[0]) == ["image", "rank", "class", "probability", "error"]
    assert rows[0]["image"].endswith("broken.jpg") and rows[0]["error"]
    assert len(rows) == 1 + 4 * 2  # the broken image, then 4 images x top 2
    assert rows[-1]["image"] == str(folder / "sub" / "deep.png") and rows[-1]["rank"] == "2"
    assert 0 <= float(rows[1]["probability"]) <= 1
    capsys.readouterr()
    good = [str(folder / "img0.png"), str(folder / "img1.png")]
    assert main(["predict", str(path), *good, "--csv", "-", "-k", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "image,rank,class,probability,error" and len(lines) == 3

    run = zoo_cli("photos", "-k", "1", cwd=tmp_path)  # a relative folder, as typed
    assert run.returncode == 1
    assert "photos/img2.png" in run.stdout and "%" in run.stdout and "broken.jpg" in run.stderr


def test_the_prediction_table_never_cuts_an_image_path_or_reads_markup():
    from io import StringIO
    from types import SimpleNamespace

    from rich.console import Console

    from zoo.cli.render_adapt import predictions_table

    path = "/data/some/very/long/folder/name/of/images/" + "x" * 60 + "/[bold]cat.png"
    pred = SimpleNamespace(source=path, top=[("[red]cat", 0.9), ("dog", 0.1)])
    out = StringIO()
    Console(file=out, width=80, color_system=None).print(predictions_table([pred]))
    text = "".join(line.split("│")[0].strip() for line in out.getvalue().splitlines())
    assert path in text.replace(" ", "")
    assert "[red]cat" in out.getvalue()
