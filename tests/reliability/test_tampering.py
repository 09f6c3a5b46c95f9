"""Tampering: any changed metadata value or tensor byte is caught by the seal; a delta refuses a
base that is not the one it was trained from, naming both hashes.

Unlike ``tests/test_fileformat.py`` (one change to a hand-made file), every metadata key and
every tensor of a real saved model is changed in turn, through every load path.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from reliability_helpers import BACKBONE, make_version, save_version, version_of

import zoo
from zoo.io.fileformat import CONTENT_HASH_KEY, TENSORS_HASH_KEY, read_file, read_header
from zoo.io.metadata import KEYS

LOADERS: dict[str, Callable[[Path], Any]] = {
    "zoo.load": lambda path: zoo.load(path),
    "zoo.inspect": lambda path: zoo.inspect(path),
    "zoo.create(weights=)": lambda path: zoo.create(BACKBONE, num_classes=2, weights=path),
}


def rewrite_header(path: Path, target: Path, change: Callable[[dict], None], **dump: Any) -> Path:
    """Copy ``path`` to ``target`` with its JSON header changed and the tensor bytes kept."""
    header = read_header(path)
    content = path.read_bytes()
    doc = json.loads(content[8 : header.data_start])
    change(doc)
    raw = json.dumps(doc, **dump).encode()
    target.write_bytes(struct.pack("<Q", len(raw)) + raw + content[header.data_start :])
    return target


def assert_tampered(path: Path, what: str) -> None:
    for name, loader in LOADERS.items():
        with pytest.raises(zoo.TamperedFileError) as info:
            loader(path)
        assert str(path) in str(info.value), name
        assert what in str(info.value), f"{name}: {info.value}"


@pytest.fixture
def saved(tiny, tmp_path) -> Path:
    return zoo.save(make_version(5), tmp_path / "model.safetensors", classes=["v5", "x"])


def test_every_metadata_value_changed_added_or_removed_is_detected(saved, tmp_path):
    metadata = read_header(saved).metadata
    assert set(KEYS) - {
        "zoo.base_tensors",
        "zoo.state_sha256",
        "zoo.training",
        "zoo.compare",
    } <= set(metadata)  # every key a full save writes
    tried = 0
    for key, value in metadata.items():
        expected = "tensor data changed" if key == TENSORS_HASH_KEY else "metadata changed"
        changed = "0" * 64 if key in (TENSORS_HASH_KEY, CONTENT_HASH_KEY) else value + " "

        def edit(doc: dict, k: str = key, v: str = changed) -> None:
            doc["__metadata__"][k] = v

        assert_tampered(rewrite_header(saved, tmp_path / "edited.safetensors", edit), expected)

        def drop(doc: dict, k: str = key) -> None:
            del doc["__metadata__"][k]

        removed = (
            "seal is incomplete"
            if key in (TENSORS_HASH_KEY, CONTENT_HASH_KEY)
            else "metadata changed"
        )
        assert_tampered(rewrite_header(saved, tmp_path / "dropped.safetensors", drop), removed)
        tried += 2

    def add(doc: dict) -> None:
        doc["__metadata__"]["zoo.classes_extra"] = '["injected"]'

    assert_tampered(rewrite_header(saved, tmp_path / "added.safetensors", add), "metadata changed")
    assert tried == 2 * len(metadata)


def test_every_tensor_byte_change_is_detected(saved, tmp_path):
    header = read_header(saved)
    content = saved.read_bytes()
    tried = 0
    for entry in header.entries:
        for offset in {entry.begin, (entry.begin + entry.end) // 2, entry.end - 1}:
            data = bytearray(content)
            data[header.data_start + offset] ^= 0x01
            target = tmp_path / "flipped.safetensors"
            target.write_bytes(bytes(data))
            assert_tampered(target, "tensor data changed")
            tried += 1
    assert tried >= 2 * len(header.entries)


def test_reformatting_the_header_is_not_tampering(saved, tmp_path):
    """The seal covers content, not layout: reordered keys and indentation still verify."""

    def reorder(doc: dict) -> None:
        items = list(doc.items())
        doc.clear()
        doc.update(reversed(items))

    target = rewrite_header(saved, tmp_path / "pretty.safetensors", reorder, indent=2)
    assert version_of(zoo.load(target)) == "v5"
    assert zoo.inspect(target).verified


def hashes_in(message: str) -> set[str]:
    return {word.strip(",.;:()") for word in message.split() if len(word.strip(",.;:()")) == 64}


def test_a_delta_refuses_a_replaced_store_base_naming_both_hashes(tiny):
    save_version(1, "base")
    model = zoo.load("base")
    with torch.no_grad():
        model[5].weight.add_(1.0)  # "training" the head
    zoo.save(model, "child", delta=True)
    recorded = json.loads(read_header(zoo.io.store.model_file("child")).metadata["zoo.base"])[
        "sha256"
    ]
    with pytest.warns(UserWarning, match="'child'"):
        save_version(2, "base")
    found = read_file(zoo.io.store.model_file("base")).tensors_sha256
    assert recorded != found
    for load in (
        lambda: zoo.load("child"),
        lambda: zoo.create(BACKBONE, num_classes=2, weights=zoo.io.store.model_file("child")),
    ):
        with pytest.raises(zoo.BaseMismatchError) as info:
            load()
        assert hashes_in(str(info.value)) == {recorded, found}
        assert "'base'" in str(info.value)


def test_a_delta_refuses_a_tampered_or_swapped_file_base(tiny, tmp_path):
    base = zoo.save(make_version(1), tmp_path / "base.safetensors")
    model = zoo.create(BACKBONE, num_classes=2, weights=base)
    with torch.no_grad():
        model[5].bias.add_(1.0)
    delta = zoo.save(model, tmp_path / "delta.safetensors", delta=True)
    recorded = model.zoo.base["sha256"]

    data = bytearray(base.read_bytes())
    data[-1] ^= 0x10
    base.write_bytes(bytes(data))
    with pytest.raises(zoo.TamperedFileError) as info:
        zoo.load(delta)
    assert str(base) in str(info.value)  # the base is the file named, not the delta

    zoo.save(make_version(3), base, overwrite=True)  # a valid file, other weights
    with pytest.raises(zoo.BaseMismatchError) as info:
        zoo.load(delta)
    found = read_file(base).tensors_sha256
    assert hashes_in(str(info.value)) == {recorded, found}
    assert str(delta) in str(info.value)
