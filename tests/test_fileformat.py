"""The safetensors reader/writer: round trips, interop, hashing, atomic writes, bad files."""

from __future__ import annotations

import importlib
import json
import os
import re
import struct
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from fileformat_helpers import write_file

from zoo.errors import CorruptFileError, ModelNotFoundError, TamperedFileError, ZooError
from zoo.io.fileformat import (
    CONTENT_HASH_KEY,
    DTYPES,
    TENSORS_HASH_KEY,
    _check_written,
    atomic_write_bytes,
    content_hash,
    hash_tensors,
    is_temp_name,
    parse_header,
    read_file,
    read_header,
    write_tensors,
)

sys.path.insert(0, str(Path(__file__).parent / "reliability"))
#: The one corpus of malformed files (``tests/reliability/malformed.py``).
malformed = importlib.import_module("malformed")
#: Its hand-made cases (a pickle's payload would create the marker: read_file never unpickles).
CORPUS = malformed.named_cases(Path("/nonexistent-marker"))


def sample_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=g),
        "half": torch.randn(5, generator=g).half(),
        "brain": torch.randn(2, 3, generator=g).bfloat16(),
        "double": torch.randn(3, generator=g).double(),
        "steps": torch.tensor(7),  # a 0-d int64 scalar, like num_batches_tracked
        "mask": torch.tensor([True, False, True]),
        "bytes": torch.arange(5, dtype=torch.uint8),
        "int8": torch.tensor([-3, 4], dtype=torch.int8),
        "empty": torch.zeros(0, 4),
        "transposed": torch.arange(6.0).reshape(2, 3).t(),  # not contiguous
    }


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        assert torch.equal(a[name], b[name]), name


def test_round_trip_every_dtype_bit_identical(tmp_path):
    tensors = sample_tensors()
    path = write_file(tmp_path / "a.safetensors", tensors, {"zoo.note": "hi"})
    saved = read_file(path)
    assert_same(saved.tensors, tensors)
    assert saved.verified
    assert saved.metadata["zoo.note"] == "hi"
    assert saved.tensors_sha256 == hash_tensors(tensors) == saved.metadata[TENSORS_HASH_KEY]


def test_files_interoperate_with_the_safetensors_library(tmp_path):
    tensors = sample_tensors()
    ours = write_file(tmp_path / "ours.safetensors", tensors, {"k": "v"})
    assert_same(safetensors.torch.load_file(str(ours)), tensors)
    theirs = tmp_path / "theirs.safetensors"
    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in tensors.items()}, str(theirs), metadata={"format": "pt"}
    )
    saved = read_file(theirs)
    assert_same(saved.tensors, tensors)
    assert not saved.verified  # not sealed by zoo: read as it is
    assert saved.metadata == {"format": "pt"}


def _every_dtype() -> dict[str, torch.Tensor]:
    """One small tensor of each dtype zoo's format table knows (F8 variants, U16-U64 included)."""
    out = {}
    for code, (attr, _size) in DTYPES.items():
        dtype = getattr(torch, attr)
        if dtype == torch.bool:
            out[code] = torch.tensor([True, False, True])
        elif dtype.is_floating_point or dtype.is_complex:
            out[code] = torch.arange(1, 6, dtype=torch.float32).to(dtype)
        else:
            out[code] = torch.arange(1, 6, dtype=torch.uint8).to(dtype)
    return out


def test_library_writes_every_dtype_and_zoo_reads_each_into_its_own_aligned_tensor(tmp_path):
    """The library writes every dtype zoo accepts; zoo's reader gives each tensor its own 64-byte
    aligned storage (``safetensors.torch.load`` of bytes gives views at 16-byte offsets and, in
    0.8, cannot even load F8_E8M0: reasons zoo reads files itself)."""
    tensors = _every_dtype()
    path = write_file(tmp_path / "all.safetensors", tensors)
    saved = read_file(path)
    assert saved.verified
    assert_same(saved.tensors, tensors)
    pointers = set()
    for name, tensor in saved.tensors.items():
        storage = tensor.untyped_storage()
        assert tensor.data_ptr() % 64 == 0, name
        assert storage.nbytes() == tensor.nbytes, name  # one allocation per tensor
        pointers.add(storage.data_ptr())
    assert len(pointers) == len(tensors)


def test_shared_and_strided_tensors_are_written_once_per_name(tmp_path):
    """``safetensors.torch.save`` refuses tensors that share memory; tied weights in a state
    dict are saved by zoo as one copy per name, as before, and views are made contiguous."""
    weight = torch.arange(12.0).reshape(3, 4)
    tensors = {
        "embed.weight": weight,
        "head.weight": weight,
        "first_row": weight[0],
        "column": weight[:, 1],
        "transposed": weight.t(),
        "empty": weight[:0],
    }
    with pytest.raises(RuntimeError, match="share memory"):
        safetensors.torch.save({"embed.weight": weight, "head.weight": weight})
    saved = read_file(write_file(tmp_path / "tied.safetensors", tensors))
    assert_same(saved.tensors, {k: v.contiguous() for k, v in tensors.items()})


def test_a_failed_library_write_leaves_the_target_and_no_temporary_folder(tmp_path):
    target = tmp_path / "m.safetensors"
    write_file(target, {"x": torch.ones(3)})
    before = target.read_bytes()
    with pytest.raises(ZooError, match="metadata must map str to str"):
        write_tensors(target, {"x": torch.zeros(3)}, {"k": 1})  # type: ignore[dict-item]
    with pytest.raises(ZooError, match="invalid tensor name"):
        write_tensors(target, {"": torch.zeros(3)}, {})
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_what_the_library_wrote_is_checked_against_what_was_asked(tmp_path):
    path = write_file(tmp_path / "m.safetensors", {"x": torch.ones(3)}, {"k": "v"})
    metadata = read_header(path).metadata
    with path.open("rb") as f:
        _check_written(f, path, {"x": torch.ones(3)}, metadata)  # the same: accepted
    for tensors, meta in (({"x": torch.ones(4)}, metadata), ({"x": torch.ones(3)}, {"k": "v"})):
        with path.open("rb") as f, pytest.raises(ZooError, match="other tensors or metadata"):
            _check_written(f, path, tensors, meta)
    path.write_bytes(path.read_bytes()[:-1])  # a library writing one byte short
    with path.open("rb") as f, pytest.raises(ZooError, match="zoo would refuse to read"):
        _check_written(f, path, {"x": torch.ones(3)}, metadata)


def test_seal_does_not_depend_on_the_order_the_library_writes_metadata_in(tmp_path):
    """The library writes metadata in hash-map order (it may change between two saves); the seal
    hashes sorted keys, so the same content always carries the same seal."""
    tensors = {"x": torch.ones(3)}
    metadata = {f"key{i}": str(i) for i in range(20)}
    seals = set()
    for i in range(3):
        header = read_header(write_file(tmp_path / f"{i}.safetensors", tensors, metadata))
        seals.add((header.metadata[TENSORS_HASH_KEY], header.metadata[CONTENT_HASH_KEY]))
    assert len(seals) == 1


def test_tensor_hash_is_canonical():
    a = {"x": torch.ones(2, 2), "y": torch.zeros(3)}
    b = {"y": torch.zeros(3), "x": torch.ones(2, 2).t().contiguous()}
    assert hash_tensors(a) == hash_tensors(b)  # order and layout do not matter
    assert hash_tensors(a) != hash_tensors({"x": torch.ones(4), "y": torch.zeros(3)})  # shape
    assert hash_tensors(a) != hash_tensors({"x": torch.ones(2, 2).double(), "y": torch.zeros(3)})
    assert hash_tensors(a) != hash_tensors({"x2": torch.ones(2, 2), "y": torch.zeros(3)})  # name
    assert content_hash("0" * 64, {"a": "1"}) != content_hash("0" * 64, {"a": "2"})


def test_written_file_gets_the_mode_the_umask_implies(tmp_path):
    old = os.umask(0o027)
    try:
        path = write_file(tmp_path / "m.safetensors", {"x": torch.ones(1)})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640


def test_failed_write_leaves_target_and_no_temp_file(tmp_path):
    target = tmp_path / "m.safetensors"
    write_file(target, {"x": torch.ones(3)})
    before = target.read_bytes()

    def chunks():
        yield b"partial data"
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write_bytes(target, chunks())
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_read_header_needs_no_tensor_data(tmp_path):
    path = write_file(tmp_path / "m.safetensors", {"x": torch.ones(1000)}, {"a": "b"})
    header = read_header(path)
    assert header.names == ["x"]
    assert header.data_len == 4000
    assert header.metadata["a"] == "b"
    assert header.sealed


def test_missing_file_is_a_zoo_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"nope\.safetensors"):
        read_file(tmp_path / "nope.safetensors")


# ---------------------------------------------------------------- malformed files


@pytest.mark.parametrize("case", CORPUS, ids=[case.name for case in CORPUS])
def test_malformed_files_raise_corrupt_file_error_naming_file_and_problem(tmp_path, case):
    """The one malformed-header corpus (``tests/reliability/malformed.py``), read directly."""
    path = tmp_path / "bad.safetensors"
    path.write_bytes(case.content)
    with pytest.raises(CorruptFileError) as info:
        read_file(path)
    assert str(path) in str(info.value)
    assert any(problem in str(info.value) for problem in case.problem), str(info.value)


def test_parse_header_accepts_a_valid_header():
    good = json.dumps(malformed.GOOD).encode()
    header = parse_header(good, 8 + len(good) + 8)
    assert [e.name for e in header.entries] == ["x"]


# ---------------------------------------------------------------- tampering


def sealed_file(tmp_path: Path) -> Path:
    return write_file(tmp_path / "m.safetensors", {"w": torch.arange(16.0)}, {"zoo.x": "1"})


def test_changed_tensor_byte_is_tampering(tmp_path):
    path = sealed_file(tmp_path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(TamperedFileError, match="tensor data changed") as info:
        read_file(path)
    assert str(path) in str(info.value)
    read_file(path, verify=False)  # an explicit opt-out still reads it


def rewrite_metadata(path: Path, change) -> None:
    """Rewrite the header with changed metadata (same tensors), as a tamperer would."""
    header = read_header(path)
    data = path.read_bytes()[header.data_start :]
    doc = json.loads(path.read_bytes()[8 : header.data_start])
    change(doc["__metadata__"])
    raw = json.dumps(doc).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def test_changed_metadata_is_tampering(tmp_path):
    path = sealed_file(tmp_path)
    rewrite_metadata(path, lambda md: md.update({"zoo.x": "2"}))
    with pytest.raises(TamperedFileError, match="metadata changed"):
        read_file(path)


def test_removed_seal_is_tampering(tmp_path):
    path = sealed_file(tmp_path)
    rewrite_metadata(path, lambda md: md.pop(CONTENT_HASH_KEY))
    with pytest.raises(TamperedFileError, match="seal is incomplete"):
        read_file(path)


def test_temp_names_are_recognised():
    assert is_temp_name(".model.safetensors.x1y2.zoo-tmp")
    assert not is_temp_name("model.safetensors")
    assert not is_temp_name(".hidden")


def documented_keys(section: str) -> set[str]:
    """The keys of the table under ``section`` in docs/file-format.md (first column)."""
    text = (Path(__file__).parent.parent / "docs" / "file-format.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z0-9_.]+)` \|", body, flags=re.MULTILINE))


def test_every_metadata_key_is_documented():
    """The key table of format 2 lists exactly the keys zoo writes; the table of format 1
    exactly the keys only format 1 wrote."""
    from zoo.io.metadata import KEYS, V1_KEYS

    assert documented_keys("Metadata keys") == set(KEYS)
    assert documented_keys("Format 1") == set(V1_KEYS)
