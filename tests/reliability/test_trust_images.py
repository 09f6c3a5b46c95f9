"""The trust boundary, data side: hostile image files and data folders (issue 19, item 4).

Every image file is untrusted: a decompression bomb, a 1,000,000 x 1 image, a PostScript file
named ``.png`` and a FIFO named ``.png`` are each refused before a pixel is decoded — a skipped
image with its reason in ``zoo.adapt`` and ``zoo.predict``, a ``DataError`` naming the file with
``on_corrupt="error"`` / ``errors="raise"`` — within the hang guard and without a memory spike.
Data folders are walked without following links to folders, each file once, at any depth. File
names reach the terminal and CSV escaped. Each hostile call runs in a forked child that is
killed if it hangs (:func:`trust_helpers.run_bounded`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import resource
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from test_data import make_color_folder
from trust_helpers import cli, run_bounded

import zoo
from zoo.adaptation.data import (
    IMAGE_FORMATS,
    MAX_ASPECT_RATIO,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    list_images,
    load_image,
    scan_image_folder,
    split_folder,
)
from zoo.cli.main import main
from zoo.core.specs import InputConfig

#: How much the peak resident memory of a child may grow while it refuses a hostile image:
#: generous (a shared machine), far below the 7.6 GB a 1,000,000 x 1 PNG used to take.
MEMORY_BOUND_MB = 200


def crafted_png(path: Path, width: int, height: int, *, rows: int = 1) -> Path:
    """A 1-bit greyscale PNG whose header claims ``width`` x ``height`` pixels, holding only
    ``rows`` rows of zeros (a few hundred bytes: what matters is the header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    row = b"\0" * ((width + 7) // 8 + 1)
    pixels = zlib.compress(row * rows, 9)
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)
    path.write_bytes(data + chunk(b"IEND", b""))
    return path


def _postscript(path: Path) -> Path:
    path.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    return path


def _sparse_webp(path: Path) -> Path:
    """A WebP header in a sparse file just over MAX_IMAGE_BYTES: a few KB on disk, which PIL
    would read whole (600 MB of memory for a 300 MB one)."""
    with path.open("wb") as f:
        f.write(b"RIFF" + struct.pack("<I", MAX_IMAGE_BYTES) + b"WEBPVP8 ")
        f.truncate(MAX_IMAGE_BYTES + 1)
    return path


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


#: name -> (how to make it, a fragment of the reason it is refused with)
HOSTILE: dict[str, tuple[Any, str]] = {
    # over PIL's own error threshold (2 x 89M pixels): DecompressionBombError, named
    "bomb.png": (lambda p: crafted_png(p, 30_000, 30_000), "MAX_IMAGE_PIXELS"),
    # between PIL's warning and error thresholds: zoo's own check, with the size
    "warned.png": (lambda p: crafted_png(p, 10_000, 10_000), "10000 x 10000 pixels"),
    # just over zoo's limit, under PIL's: zoo's own check, with the size
    "big.png": (lambda p: crafted_png(p, 8193, 8193), "8193 x 8193 pixels"),
    "wide.png": (lambda p: crafted_png(p, 1_000_000, 1), "MAX_ASPECT_RATIO"),
    "tall.png": (lambda p: crafted_png(p, 1, 1_000_000, rows=1), "MAX_ASPECT_RATIO"),
    "script.png": (_postscript, "not an image of a format zoo reads"),
    "sparse.webp": (_sparse_webp, "MAX_IMAGE_BYTES"),
    "pipe.png": (_fifo, "FIFO"),
}


def test_the_limits_are_what_the_docs_say():
    assert MAX_IMAGE_PIXELS == 8192 * 8192 and MAX_ASPECT_RATIO == 100
    assert MAX_IMAGE_BYTES == 8 * MAX_IMAGE_PIXELS  # 16-bit RGBA, uncompressed
    assert IMAGE_FORMATS == ("BMP", "GIF", "JPEG", "PNG", "PPM", "TIFF", "WEBP")
    assert "EPS" not in IMAGE_FORMATS and "PDF" not in IMAGE_FORMATS


def test_the_crafted_files_are_tiny_and_claim_their_size(tmp_path):
    for name in ("bomb.png", "warned.png", "big.png", "wide.png", "tall.png"):
        path = HOSTILE[name][0](tmp_path / name)
        data = path.read_bytes()
        width, height = struct.unpack(">II", data[16:24])  # IHDR, what PIL reads on open
        assert len(data) < 4096 and width * height >= 1_000_000, name


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A tiny two-class model saved to a file (input 32 x 32): what predict is asked about."""
    model = zoo.create("timm:test_resnet", num_classes=2)
    model.zoo.input_config = InputConfig(input_size=(3, 32, 32))
    model.zoo.classes = ["blue", "red"]
    return zoo.save(model, tmp_path_factory.mktemp("model") / "m.safetensors")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _refusals(model_file: Path, root: Path, hostile: Path) -> dict[str, Any]:
    """In the child: every door an image goes through, and how much the peak memory grew.
    Ghostscript (PIL's EPS plugin) and any subprocess would fail loudly."""
    import subprocess
    from unittest import mock

    from PIL import EpsImagePlugin

    model = zoo.load(model_file)
    before = _peak_mb()
    opened: list[str] = []
    eps_open = EpsImagePlugin.EpsImageFile._open

    def spy(self: Any) -> None:
        opened.append("EPS")
        eps_open(self)

    out: dict[str, Any] = {}
    with (
        mock.patch.object(EpsImagePlugin.EpsImageFile, "_open", spy),
        mock.patch.object(subprocess, "Popen", side_effect=AssertionError("a process ran")),
    ):
        for name, call in {
            "load_image": lambda: load_image(hostile),
            "predict": lambda: zoo.predict(model, [hostile]),
            "predict_report": lambda: zoo.predict(model, [hostile], errors="report")[0].error,
            "scan": lambda: [s.to_dict() for s in scan_image_folder(root).skipped],
            "scan_strict": lambda: scan_image_folder(root, on_corrupt="error"),
        }.items():
            try:
                out[name] = ("returned", call())
            except zoo.ZooError as exc:
                out[name] = (type(exc).__name__, str(exc))
    out["opened"] = opened
    out["grew_mb"] = _peak_mb() - before
    return out


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_image_is_refused_before_decoding_everywhere(name, model_file, tmp_path):
    make, reason = HOSTILE[name]
    root = make_color_folder(tmp_path / "data", classes=("red", "blue"), per_class=2, size=16)
    hostile = make(root / "red" / name)
    outcome = run_bounded({"all": lambda: _refusals(model_file, root, hostile)})["all"]
    assert not outcome.error, outcome.message
    got = outcome.value
    for door in ("load_image", "predict", "scan_strict"):
        kind, message = got[door]
        assert kind == "DataError" and str(hostile) in message and reason in message, (door, got)
    kind, error = got["predict_report"]
    assert kind == "returned" and reason in error
    kind, skipped = got["scan"]
    assert kind == "returned"
    assert [s["path"] for s in skipped] == [str(hostile)] and reason in skipped[0]["reason"]
    assert got["opened"] == []  # PostScript never reaches PIL's EPS reader (nor Ghostscript)
    assert got["grew_mb"] < MEMORY_BOUND_MB, got["grew_mb"]


def _hostile_folder(root: Path) -> tuple[Path, list[Path]]:
    """Two colour classes of 6 images; every hostile file in ``red``, one with a terminal
    escape and a newline in its name."""
    make_color_folder(root, classes=("red", "blue"), per_class=6, size=16)
    bad = [make(root / "red" / name) for name, (make, _) in HOSTILE.items()]
    bad.append(crafted_png(root / "red" / "evil\x1b[2J\nname.png", 1_000_000, 1))
    return root, bad


def test_adapt_skips_each_hostile_image_with_its_reason(tmp_path):
    root, bad = _hostile_folder(tmp_path / "data")

    def adapt() -> Any:
        _, history = zoo.adapt(
            "timm:test_resnet", root, policy="linear-probe", epochs=1, image_size=32,
            batch_size=8, scratch=True, val_split=0.25,
        )  # fmt: skip
        return history.train_images + history.val_images, history.skipped

    def strict() -> Any:
        return zoo.adapt(
            "timm:test_resnet", root, epochs=1, image_size=32, scratch=True, on_corrupt="error"
        )

    outcome = run_bounded({"adapt": adapt, "strict": strict})
    assert not outcome["adapt"].error, outcome["adapt"].message
    images, skipped = outcome["adapt"].value
    assert images == 12
    reasons = {Path(s["path"]).name: s["reason"] for s in skipped}
    assert sorted(s["path"] for s in skipped) == sorted(map(str, bad))
    assert all(why in reasons[name] for name, (_, why) in HOSTILE.items())
    assert outcome["strict"].raised("DataError")
    assert "red" in outcome["strict"].message and "remove it" in outcome["strict"].message


def test_zoo_adapt_lists_skipped_names_escaped(tmp_path):
    root, _ = _hostile_folder(tmp_path / "data")
    argv = [
        "adapt", "timm:test_resnet", "--data", str(root), "--name", "colours", "--epochs", "1",
        "--image-size", "32", "--batch-size", "8", "--scratch", "--policy", "linear-probe",
    ]  # fmt: skip
    outcome = run_bounded({"cli": lambda: cli(*argv)})["cli"]
    status, out, err = outcome.value
    assert status == 0, err
    assert "\x1b" not in out + err
    assert "evil\\x1b[2J\\nname.png" in err and "MAX_ASPECT_RATIO" in err


# ---------------------------------------------------------------- data folders


def test_a_link_loop_counts_each_file_once_and_the_scan_finishes(tmp_path):
    root = make_color_folder(tmp_path / "data", classes=("red", "blue"), per_class=6, size=16)
    (root / "red" / "again").symlink_to(".")  # the loop: 12 images became 492
    (root / "blue" / "up").symlink_to("..")  # a second loop: scanning never finished
    (root / "blue" / "deep").mkdir()
    (root / "blue" / "deep" / "back").symlink_to("../..")
    os.link(root / "red" / "red_0.png", root / "red" / "hard.png")  # the same file twice
    (root / "red" / "soft.png").symlink_to("red_1.png")

    def scan() -> Any:
        folder = scan_image_folder(root)
        train, val = split_folder(folder, 0.25)
        return (
            [str(p) for p, _ in folder.samples],
            {s.path.name: s.reason for s in folder.skipped},
            {str(p) for p, _ in train.samples} & {str(p) for p, _ in val.samples},
        )

    outcome = run_bounded({"scan": scan})["scan"]
    assert not outcome.error, outcome.message
    samples, skipped, overlap = outcome.value
    assert len(samples) == len(set(samples)) == 12
    assert overlap == set()
    assert (
        skipped["again"] == skipped["up"] == skipped["back"] == "a link to a folder, not followed"
    )
    twice = sorted(name for name, why in skipped.items() if "the same file" in why)
    assert twice == ["red_0.png", "soft.png"]  # hard.png is found first, in sorted order


def test_no_image_is_both_trained_and_validated_on(tmp_path):
    train = make_color_folder(tmp_path / "train", classes=("red", "blue"), per_class=4, size=8)
    fast = {"epochs": 1, "image_size": 32, "batch_size": 8, "scratch": True}
    with pytest.raises(zoo.DataError, match="is the training folder"):
        zoo.adapt("timm:test_resnet", train, f"{train}/", **fast)
    val = make_color_folder(tmp_path / "val", classes=("red", "blue"), per_class=2, size=8)
    os.link(train / "red" / "red_0.png", val / "red" / "hard.png")
    (val / "blue" / "soft.png").symlink_to(train / "blue" / "blue_0.png")
    _, history = zoo.adapt("timm:test_resnet", train, val, policy="linear-probe", **fast)
    assert history.val_images == 4  # the two copies of training images are left out
    assert {Path(s["path"]).name for s in history.skipped} == {"hard.png", "soft.png"}
    assert all("the same file" in s["reason"] for s in history.skipped)


def test_a_class_left_without_images_says_why(tmp_path):
    root = make_color_folder(tmp_path / "data", classes=("red", "blue"), per_class=2, size=8)
    for file in (root / "red").iterdir():
        file.unlink()
    crafted_png(root / "red" / "bomb.png", 30_000, 30_000)
    with pytest.raises(zoo.DataError, match=r"without readable images: .*red.*bomb\.png.*PIXELS"):
        scan_image_folder(root)


def test_a_linked_class_folder_is_allowed_but_never_counted_twice(tmp_path):
    elsewhere = make_color_folder(tmp_path / "elsewhere", classes=("red",), per_class=3, size=8)
    root = make_color_folder(tmp_path / "data", classes=("blue",), per_class=3, size=8)
    (root / "red").symlink_to(elsewhere / "red")  # a top-level class folder may be a link
    folder = scan_image_folder(root)
    assert folder.counts() == {"blue": 3, "red": 3}
    (root / "rouge").symlink_to(elsewhere / "red")  # a second name for the same folder
    with pytest.raises(zoo.DataError, match="rouge"):
        scan_image_folder(root)  # its images counted under red: rouge has none of its own


def test_predict_lists_a_looping_folder_once(model_file, tmp_path):
    root = make_color_folder(tmp_path / "photos", classes=("red",), per_class=3, size=8)
    (root / "red" / "again").symlink_to(".")
    (root / "red" / "more").symlink_to("..")

    def predict() -> list[str]:
        return [p.source for p in zoo.predict(zoo.load(model_file), root, recursive=True)]

    outcome = run_bounded({"predict": predict})["predict"]
    assert not outcome.error, outcome.message
    assert outcome.value == sorted(str(p) for p in (root / "red").glob("*.png"))


def test_a_folder_nested_deeper_than_the_recursion_limit_is_scanned(tmp_path):
    root = make_color_folder(tmp_path / "data", classes=("red", "blue"), per_class=2, size=8)
    deep = root / "red"
    for _ in range(1200):  # os.walk (Python 3.11) raised RecursionError here
        deep = deep / "d"
        deep.mkdir()
    make_color_folder(deep, classes=("green",), per_class=1, size=8)
    try:
        found, _ = list_images(root / "red")
        assert len(found) == 3 and found[-1] == deep / "green" / "green_0.png"
        assert len(scan_image_folder(root)) == 5
    finally:
        while deep != root / "red":  # bottom-up: shutil.rmtree would recurse as deep
            for child in deep.iterdir():
                if child.is_dir():
                    for f in child.iterdir():
                        f.unlink()
                    child.rmdir()
            deep.rmdir()
            deep = deep.parent


def test_a_fifo_given_to_predict_is_refused_without_waiting(model_file, tmp_path):
    pipe = _fifo(tmp_path / "pipe.png")
    outcome = run_bounded({"predict": lambda: zoo.predict(zoo.load(model_file), [pipe])})
    assert outcome["predict"].raised("DataError") and "FIFO" in outcome["predict"].message


def test_class_folder_names_a_model_cannot_save_are_refused_before_training(tmp_path):
    root = make_color_folder(tmp_path / "data", classes=("red", "blue"), per_class=2, size=8)
    os.rename(root / "red", root / "re\x1b[2Jd")
    with pytest.raises(zoo.DataError, match=r"control character.*rename the folder"):
        zoo.adapt("timm:test_resnet", root, epochs=1, image_size=32, scratch=True)
    with pytest.raises(zoo.AdaptArgumentError, match="control characters"):
        zoo.adapt("timm:test_resnet", root, classes=["a\nb", "c"], epochs=1)


# ---------------------------------------------------------------- names in predict's output


def test_predict_output_escapes_file_names_in_every_form(model_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # no folded table cells: each name on one line
    photos = tmp_path / "photos"
    photos.mkdir()
    make_color_folder(tmp_path / "src", classes=("red",), per_class=2, size=8)
    forged = "a\nforged.png,1,red,1.000000,\n"
    names = ["bell\x07\x1b]0;pwned\x07.png", "clear\x1b[2J.png", forged + "x.png"]
    sources = sorted((tmp_path / "src" / "red").glob("*.png")) * 2
    for name, src in zip(names, sources[:3], strict=True):
        (photos / name).write_bytes(src.read_bytes())
    crafted_png(photos / "wide\x1b[31m.png", 1_000_000, 1)  # unreadable: a warning line
    paths = sorted(str(p) for p in photos.iterdir())

    status = main(["predict", str(model_file), str(photos), "-k", "1"])
    out, err = capsys.readouterr()
    assert status == 1  # the wide image could not be read
    assert "\x1b" not in out + err and "\x07" not in out + err
    assert "clear\\x1b[2J.png" in out and "wide\\x1b[31m.png" in err
    assert "forged.png" in out and not any(line.startswith("forged") for line in out.splitlines())

    assert main(["predict", str(model_file), str(photos), "-k", "1", "--csv", "-"]) == 1
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert len(lines) == 1 + len(paths)  # a header, one line per image: no forged row
    rows = list(csv.reader(io.StringIO(text)))
    assert len(rows) == len(lines) and all(len(r) == 5 for r in rows)
    assert "\x1b" not in text and not any(line.startswith("forged") for line in lines)

    assert main(["predict", str(model_file), str(photos), "-k", "1", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)  # JSON escapes itself: the exact names
    assert [p["image"] for p in doc["predictions"]] == paths
