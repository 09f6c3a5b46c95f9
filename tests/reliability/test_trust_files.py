"""The trust boundary, file side: whatever a path or a file holds, reading it is refused quickly,
clearly and without allocating what the file merely claims.

Special files (FIFO, device, socket, directory, a link to a device), a sparse terabyte file
with a valid header, lone UTF-16 surrogates in the header's text, a zoo file whose seal was
stripped, and headers listing hundreds of thousands of tensors — each through every reader
(``read_header``, ``read_file``, ``zoo.load``, ``zoo.inspect`` with and without verification,
``zoo.create(weights=)``), in a forked child killed if it hangs (``trust_helpers``).
"""

from __future__ import annotations

import json
import os
import resource
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from reliability_helpers import BACKBONE, make_version
from trust_helpers import Outcome, run_bounded, write_raw

import zoo
from zoo.io import fileformat
from zoo.io.fileformat import (
    CONTENT_HASH_KEY,
    MAX_TENSORS,
    TENSORS_HASH_KEY,
    parse_header,
    read_file,
    read_header,
)


def readers(path: Path) -> dict[str, Callable[[], Any]]:
    return {
        "read_header": lambda: read_header(path),
        "read_file": lambda: read_file(path),
        "zoo.load": lambda: zoo.load(path),
        "zoo.inspect": lambda: zoo.inspect(path),
        "zoo.inspect(verify=False)": lambda: zoo.inspect(path, verify=False),
        "zoo.create(weights=)": lambda: zoo.create(BACKBONE, num_classes=2, weights=path),
    }


def assert_refused(
    outcomes: dict[str, Outcome],
    path: Path,
    *needles: str,
    error: str = "ZooError",
    only: tuple[str, ...] = (),
) -> None:
    for name, outcome in outcomes.items():
        assert outcome.raised("ZooError"), f"{name} on {path.name}: {outcome}"
        assert str(path) in outcome.message, f"{name}: {outcome.message}"
        if not only or name in only:
            assert outcome.raised(error), f"{name}: {outcome}"
            for needle in needles:
                assert needle in outcome.message, f"{name}: {outcome.message}"


@pytest.fixture
def warm(tiny) -> None:
    zoo.create(BACKBONE, num_classes=2)  # the first build imports lazily


# ---------------------------------------------------------------- special files (item 4)


def test_special_files_are_refused_at_once_by_every_reader(warm, tmp_path):
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    zero = tmp_path / "zero.safetensors"
    zero.symlink_to("/dev/zero")
    cases = [
        (fifo, "a FIFO"),
        (folder, "is a directory"),
        (zero, "a character device"),
        (Path("/dev/zero"), "character"),
    ]
    server = socket.socket(socket.AF_UNIX)
    sock = tmp_path / "s.safetensors"
    try:
        server.bind(str(sock))
        cases.append((sock, "a socket"))
    except OSError:  # a socket path longer than the system allows: test the others
        pass
    try:
        for path, kind in cases:
            outcomes = run_bounded(readers(path))
            # zoo.load/inspect resolve a path to a model file first; a path that is not a
            # regular file is no model there (ModelNotFoundError), also a ZooError
            assert_refused(
                outcomes,
                path,
                kind,
                error="CorruptFileError",
                only=("read_header", "read_file", "zoo.create(weights=)"),
            )
    finally:
        server.close()


def _sparse_file(path: Path, size: int) -> Path:
    header = json.dumps({"w": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}})
    raw = header.encode() + b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        try:
            f.truncate(8 + len(raw) + size)
        except OSError as exc:  # a file system without sparse files that large
            pytest.skip(f"cannot make a sparse {size}-byte file here: {exc}")
    return path


def test_a_sparse_terabyte_file_is_refused_before_allocating(warm, tmp_path):
    path = _sparse_file(tmp_path / "huge.safetensors", 2**40)
    assert read_header(path).data_len == 2**40  # a valid header: only memory is lacking
    outcomes = run_bounded(readers(path))
    del outcomes["read_header"]
    # zoo.load refuses a plain (non-zoo) file from its header, before the size matters
    assert_refused(
        outcomes,
        path,
        "1024.0 GiB",
        "of memory",
        "is available",
        only=("read_file", "zoo.inspect", "zoo.create(weights=)"),
    )


def test_an_allocation_that_fails_anyway_is_a_clear_error(warm, tmp_path):
    """Where the system does not say how much memory is free, torch's own refusal is caught."""
    path = _sparse_file(tmp_path / "huge.safetensors", 2**40)

    def read_under_a_limit() -> Any:
        with open("/proc/self/statm") as f:
            used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = used + 2**33  # 8 GiB more address space than the process already has
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        fileformat.available_memory = lambda: None  # in the child only: "unknown"
        return read_file(path)

    (outcome,) = run_bounded({"read_file": read_under_a_limit}).values()
    assert outcome.raised("ZooError"), outcome
    assert "cannot allocate 1024.0 GiB" in outcome.message and str(path) in outcome.message


# ---------------------------------------------------------------- lone surrogates (item 5)


def _tensor(begin: int = 0) -> dict[str, Any]:
    return {"dtype": "U8", "shape": [1], "data_offsets": [begin, begin + 1]}


SURROGATE_HEADERS: dict[str, tuple[str, str]] = {
    # case -> (header JSON text, what the refusal names)
    "tensor name": ('{"w\\ud800": %s}', "tensor name"),
    "low surrogate": ('{"\\udc00": %s}', "tensor name"),
    "reversed pair": ('{"\\udc00\\ud800": %s}', "tensor name"),
    "metadata key": ('{"__metadata__": {"\\uD800k": "v"}, "w": %s}', "__metadata__ key"),
    "metadata value": ('{"__metadata__": {"k": "v\\udbff"}, "w": %s}', "__metadata__['k']"),
    "zoo value": (
        '{"__metadata__": {"zoo.classes": "[\\"\\ud834\\"]"}, "w": %s}',
        "__metadata__['zoo.classes']",
    ),
}


@pytest.mark.parametrize("case", sorted(SURROGATE_HEADERS))
def test_a_lone_surrogate_anywhere_in_the_header_is_refused(warm, tmp_path, case):
    text, where = SURROGATE_HEADERS[case]
    raw = (text % json.dumps(_tensor())).encode()
    with pytest.raises(zoo.CorruptFileError, match="lone UTF-16 surrogate") as info:
        parse_header(raw, 8 + len(raw) + 1, source="h")
    assert where in str(info.value)
    path = write_raw(tmp_path / "s.safetensors", None, b"x", raw=raw)
    assert_refused(
        run_bounded(readers(path)), path, "lone UTF-16 surrogate", where, error="CorruptFileError"
    )


def test_paired_surrogates_and_escaped_backslashes_are_text(tmp_path):
    doc = '{"__metadata__": {"k": "\\ud83d\\ude00 \\\\ud800"}, "\\ud83d\\ude00": %s}'
    raw = (doc % json.dumps(_tensor())).encode()
    header = parse_header(raw, 8 + len(raw) + 1)
    assert header.metadata == {"k": "\U0001f600 \\ud800"}
    assert header.names == ["\U0001f600"]


# ---------------------------------------------------------------- stripped seal (item 6)


def _rewrite(source: Path, target: Path, *, drop: tuple[str, ...], flip: bool) -> Path:
    header = read_header(source)
    content = bytearray(source.read_bytes())
    doc = json.loads(content[8 : header.data_start])
    for key in drop:
        del doc["__metadata__"][key]
    if flip:
        content[header.data_start + 3] ^= 0xFF
    return write_raw(target, doc, bytes(content[header.data_start :]))


@pytest.mark.parametrize(
    "drop",
    [(TENSORS_HASH_KEY, CONTENT_HASH_KEY), (TENSORS_HASH_KEY,), (CONTENT_HASH_KEY,)],
    ids=["both", "tensors", "content"],
)
def test_a_zoo_file_without_its_seal_is_refused_not_read_as_plain(warm, tmp_path, drop):
    saved = zoo.save(make_version(3), tmp_path / "model.safetensors", classes=["v3", "x"])
    for flip in (True, False):
        path = _rewrite(saved, tmp_path / f"stripped-{flip}.safetensors", drop=drop, flip=flip)
        assert_refused(
            run_bounded(readers(path)), path, "seal is incomplete", *drop, error="TamperedFileError"
        )


def test_a_plain_safetensors_file_still_reads_as_plain(tmp_path):
    path = write_raw(
        tmp_path / "plain.safetensors",
        {"__metadata__": {"format": "pt", "other.key": "v"}, "w": _tensor()},
        b"x",
    )
    saved = read_file(path)
    assert not saved.verified and saved.metadata == {"format": "pt", "other.key": "v"}


# ---------------------------------------------------------------- many tensors (item 4)


def _many_tensors(path: Path, count: int, *, escape_keys: bool = False) -> Path:
    field = '"\\u0064ata_offsets"' if escape_keys else '"data_offsets"'  # same key, disguised
    entry = '"t%d": {"dtype": "F32", "shape": [0], ' + field + ": [0, 0]}"
    raw = ("{" + ", ".join(entry % i for i in range(count)) + "}").encode()
    return write_raw(path, None, raw=raw)


@pytest.mark.parametrize("escape_keys", [False, True], ids=["plain", "escaped-keys"])
def test_two_hundred_thousand_empty_tensors_are_refused(warm, tmp_path, escape_keys):
    path = _many_tensors(tmp_path / "many.safetensors", 200_000, escape_keys=escape_keys)
    assert_refused(
        run_bounded(readers(path)),
        path,
        f"more than {MAX_TENSORS} tensors",
        error="CorruptFileError",
        only=("read_header", "read_file", "zoo.create(weights=)"),
    )


def test_the_most_tensors_allowed_parse(tmp_path):
    path = _many_tensors(tmp_path / "most.safetensors", MAX_TENSORS)
    outcomes = run_bounded(
        {
            "read_header": lambda: len(read_header(path).entries),
            "read_file": lambda: len(read_file(path).tensors),
        }
    )
    for name, outcome in outcomes.items():
        assert outcome.error == [] and outcome.message == str(MAX_TENSORS), (name, outcome)
