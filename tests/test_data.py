"""Image folders: class discovery, corrupt-image policy, splits, transforms."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from zoo.adaptation.config import Augment
from zoo.adaptation.data import (
    ImageDataset,
    build_transform,
    dataset_transform,
    is_random_transform,
    scan_image_folder,
    split_folder,
    with_overrides,
)
from zoo.core.specs import InputConfig
from zoo.errors import DataError

COLOURS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}


def make_color_folder(
    root: Path,
    *,
    classes=("red", "green", "blue"),
    per_class: int = 10,
    size: int = 32,
    seed: int = 0,
) -> Path:
    """A tiny image folder whose classes differ by colour (learnable in a few steps)."""
    from PIL import Image

    rng = random.Random(seed)
    for name in classes:
        folder = Path(root) / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            colour = tuple(max(0, min(255, v + rng.randint(-40, 40))) for v in COLOURS[name])
            image = Image.new("RGB", (size, size), colour)
            for _ in range(size):
                image.putpixel(
                    (rng.randrange(size), rng.randrange(size)), (rng.randrange(256),) * 3
                )
            image.save(folder / f"{name}_{i}.png")
    return Path(root)


def test_scan_finds_sorted_classes_and_samples(tmp_path):
    root = make_color_folder(tmp_path / "d", per_class=4)
    (root / "red" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    nested = root / "blue" / "more"
    nested.mkdir()
    (root / "blue" / "blue_0.png").rename(nested / "b.png")
    folder = scan_image_folder(root)
    assert folder.classes == ("blue", "green", "red")
    assert len(folder) == 12
    assert folder.counts() == {"blue": 4, "green": 4, "red": 4}
    assert folder.samples_per_class == 4
    assert any(p.name == "b.png" for p, _ in folder.samples)
    assert folder.skipped == ()


def test_corrupt_images_are_skipped_and_counted_or_an_error(tmp_path):
    root = make_color_folder(tmp_path / "d", per_class=3)
    bad = root / "green" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff this is not really a jpeg")
    folder = scan_image_folder(root)
    assert len(folder) == 9
    assert [s.path for s in folder.skipped] == [bad]
    assert folder.skipped[0].reason
    with pytest.raises(DataError, match=r"broken\.jpg"):
        scan_image_folder(root, on_corrupt="error")


@pytest.mark.parametrize(
    "layout, message",
    [
        ("missing", "does not exist"),
        ("file", "is not a folder"),
        ("empty", "is empty"),
        ("loose", "no class sub-folders"),
        ("empty-class", "without readable images"),
        ("only-corrupt", "without readable images"),
    ],
)
def test_unusable_folders_are_clear_errors(tmp_path, layout, message):
    root = tmp_path / "d"
    if layout == "file":
        root.write_text("x")
    elif layout == "empty":
        root.mkdir()
    elif layout == "loose":
        make_color_folder(tmp_path / "src", per_class=1)
        root.mkdir()
        (tmp_path / "src" / "red" / "red_0.png").rename(root / "a.png")
    elif layout == "empty-class":
        make_color_folder(root, per_class=2)
        (root / "yellow").mkdir()
    elif layout == "only-corrupt":
        make_color_folder(root, per_class=2)
        (root / "yellow").mkdir()
        (root / "yellow" / "x.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=message) as info:
        scan_image_folder(root)
    if layout.endswith("class") or layout == "only-corrupt":
        assert "yellow" in str(info.value)


def test_validation_classes_must_be_training_classes(tmp_path):
    make_color_folder(tmp_path / "val", classes=("red", "green"), per_class=2)
    folder = scan_image_folder(tmp_path / "val", classes=("blue", "green", "red"))
    assert folder.classes == ("blue", "green", "red")
    assert folder.counts()["blue"] == 0
    with pytest.raises(DataError, match="'red'"):
        scan_image_folder(tmp_path / "val", classes=("blue", "green"))


def test_stratified_split(tmp_path):
    folder = scan_image_folder(make_color_folder(tmp_path / "d", per_class=10))
    train, val = split_folder(folder, 0.2, seed=3)
    assert len(train) == 24 and len(val) == 6
    assert set(val.counts().values()) == {2}
    assert not {p for p, _ in train.samples} & {p for p, _ in val.samples}
    again, _ = split_folder(folder, 0.2, seed=3)
    assert again.samples == train.samples
    with pytest.raises(DataError):
        split_folder(folder, 1.5)


def test_dataset_and_transforms(tmp_path):
    folder = scan_image_folder(make_color_folder(tmp_path / "d", per_class=2, size=40))
    config = with_overrides(InputConfig(), image_size=32, overrides={"crop_pct": 1.0})
    assert config.input_size == (3, 32, 32) and config.crop_pct == 1.0
    plain = build_transform(config, train=False)
    augmented = build_transform(config, train=True, augment=Augment(hflip=False))
    assert not is_random_transform(plain)
    assert is_random_transform(augmented)
    assert not is_random_transform(build_transform(config, train=True, augment=None))
    dataset = ImageDataset.from_folder(folder, plain)
    image, label = dataset[0]
    assert tuple(image.shape) == (3, 32, 32)
    assert label == 0 and dataset.classes == ["blue", "green", "red"]
    assert dataset_transform(dataset) == (True, plain)
    with pytest.raises(DataError, match="unknown input config"):
        with_overrides(config, overrides={"size": 3})


def test_an_image_that_fails_to_decode_names_the_file(tmp_path):
    folder = scan_image_folder(make_color_folder(tmp_path / "d", per_class=1))
    path = folder.samples[0][0]
    path.write_bytes(path.read_bytes()[:60])  # header intact, data truncated
    dataset = ImageDataset.from_folder(folder, None)
    with pytest.raises(DataError, match=path.name):
        dataset[0]
