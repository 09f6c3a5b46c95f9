"""The one corpus of malformed ``.safetensors`` files, each with the problem it must report.

:func:`named_cases` are hand-made breakages of every rule of the format (header length, JSON,
metadata, dtype, shape, offsets, tiling) plus files that are not safetensors at all (pickles and
``torch.save`` archives renamed ``.safetensors``). :func:`truncations` cuts a small valid file
at every byte. :func:`write_corpus` writes them all to a folder. Used by
``tests/test_fileformat.py`` (zoo's reader), ``tests/reliability/test_malformed_files.py`` (every
loader) and ``benchmarks/malformed_corpus.py``.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from fileformat_helpers import write_file

#: Messages of the reader, by kind of problem (one of them must appear in the error).
TRUNCATED = ("truncated",)
TOO_LONG = ("exceeds the", "is larger than the")
NOT_JSON = ("not valid JSON",)


@dataclass(frozen=True)
class Case:
    """One malformed file: its name, bytes, and the phrases one of which the error must hold."""

    name: str
    content: bytes
    problem: tuple[str, ...]


def raw(header: object, data: bytes = b"", *, length: int | None = None) -> bytes:
    """A file with ``header`` (an object, JSON text or bytes) and ``data``; ``length`` lies."""
    if isinstance(header, bytes):
        text = header
    elif isinstance(header, str):
        text = header.encode()
    else:
        text = json.dumps(header).encode()
    size = len(text) if length is None else length
    return struct.pack("<Q", size) + text + data


def entry(dtype: str = "F32", shape: object = (2,), offsets: object = (0, 8)) -> dict:
    return {
        "dtype": dtype,
        "shape": list(shape) if isinstance(shape, tuple) else shape,
        "data_offsets": list(offsets) if isinstance(offsets, tuple) else offsets,
    }


GOOD = {"x": entry()}
DATA = b"\0" * 8


class _Payload:
    """Unpickling this creates ``marker``: proof that something unpickled the file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.mkdir, (self.marker,))


def _pickles(marker: Path) -> list[Case]:
    payload = _Payload(str(marker))
    cases = [
        Case(f"pickle protocol {p}", pickle.dumps({"w": payload}, protocol=p), TOO_LONG)
        for p in (2, 4, 5)
    ]
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(3), "evil": payload}, buffer)
    cases.append(Case("torch.save zip archive", buffer.getvalue(), TOO_LONG))
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(3)}, buffer, _use_new_zipfile_serialization=False)
    cases.append(Case("torch.save legacy pickle", buffer.getvalue(), TOO_LONG))
    return cases


def named_cases(marker: Path) -> list[Case]:
    """Every hand-made breakage; ``marker`` is the folder a pickle payload would create."""
    metadata_value = {  # __metadata__ values that are not strings
        "int": 1,
        "float": 1.5,
        "null": None,
        "bool": True,
        "list": ["a"],
        "object": {"a": "b"},
    }
    cases = [
        # --- the 8-byte length prefix
        Case("empty file", b"", TRUNCATED),
        Case("one byte", b"\x01", TRUNCATED),
        Case("seven bytes", b"\x01" * 7, TRUNCATED),
        Case("header length 2**63", raw(GOOD, DATA, length=2**63), ("exceeds the",)),
        Case("header length 2**64-1", raw(GOOD, DATA, length=2**64 - 1), ("exceeds the",)),
        Case("header length 100 MB + 1", raw(GOOD, DATA, length=100 * 2**20 + 1), ("exceeds the",)),
        Case(
            "header length 50 MB on a tiny file",
            raw(GOOD, DATA, length=50 * 2**20),
            ("is larger than the",),
        ),
        Case(
            "header length one past the file",
            raw(GOOD, length=len(json.dumps(GOOD)) + 1),
            ("is larger than the",),
        ),
        Case("header length zero", raw(b"", DATA), NOT_JSON),
        Case("header length cuts the JSON", raw(GOOD, DATA, length=10), NOT_JSON),
        # --- the JSON text
        Case("not UTF-8", raw(b'{"\xff": 1}'), ("not UTF-8",)),
        Case("not JSON", raw(b"hello world"), NOT_JSON),
        Case("JSON array", raw([1, 2]), ("not an object",)),
        Case("JSON string", raw('"x"'), ("not an object",)),
        Case("JSON null", raw("null"), ("not an object",)),
        Case("JSON number", raw("12"), ("not an object",)),
        Case(
            "leading spaces", raw(b"  " + json.dumps(GOOD).encode(), DATA), ("must begin with '{'",)
        ),
        Case(
            "leading newline",
            raw(b"\n" + json.dumps(GOOD).encode(), DATA),
            ("must begin with '{'",),
        ),
        Case(
            "UTF-8 byte-order mark",
            raw(b"\xef\xbb\xbf" + json.dumps(GOOD).encode(), DATA),
            NOT_JSON,
        ),
        Case(
            "NaN in a shape",
            raw('{"x": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 8]}}', DATA),
            ("NaN",),
        ),
        Case(
            "Infinity in offsets",
            raw('{"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, Infinity]}}', DATA),
            ("Infinity",),
        ),
        Case("-Infinity in metadata", raw('{"__metadata__": {"a": -Infinity}}'), ("Infinity",)),
        Case("NaN as metadata value", raw('{"__metadata__": {"a": NaN}}'), ("NaN",)),
        Case("deeply nested JSON", raw("[" * 100_000 + "]" * 100_000), NOT_JSON),
        Case(
            "nested JSON in a tensor",
            raw('{"x": ' + "[" * 50_000 + "]" * 50_000 + "}"),
            (*NOT_JSON, "not an object"),
        ),
        # --- duplicate keys
        Case(
            "duplicate tensor",
            raw(
                '{"x": {"dtype": "F32", "shape": [1], "data_offsets": '
                '[0, 4]}, "x": {"dtype": "F32", "shape": [1], '
                '"data_offsets": [4, 8]}}',
                DATA,
            ),
            ("repeats the key 'x'",),
        ),
        Case(
            "duplicate __metadata__",
            raw('{"__metadata__": {"a": "1"}, "__metadata__": {"a": "2"}}'),
            ("repeats the key '__metadata__'",),
        ),
        Case(
            "duplicate metadata key",
            raw('{"__metadata__": {"a": "1", "a": "2"}}'),
            ("repeats the key 'a'",),
        ),
        # --- metadata
        *[
            Case(
                f"metadata value {kind}",
                raw({"__metadata__": {"k": value}, **GOOD}, DATA),
                (f"__metadata__['k'] is a {type(value).__name__}, not a string",),
            )
            for kind, value in metadata_value.items()
        ],
        Case("metadata is a list", raw({"__metadata__": ["a", "b"]}), ("not an object of",)),
        Case("metadata is a string", raw({"__metadata__": "a=b"}), ("not an object of",)),
        Case(
            "a tensor named __metadata__",
            raw({"__metadata__": entry()}, DATA),
            ("__metadata__['shape'] is a list",),
        ),
        Case(
            "__metadata__ that looks like a tensor",
            raw({"__metadata__": {"dtype": "F32", "shape": "[2]", "data_offsets": "[0, 8]"}}, DATA),
            ("trailing bytes",),
        ),
        # --- one tensor entry
        Case("tensor with empty name", raw({"": entry()}, DATA), ("empty name",)),
        Case("entry is a list", raw({"x": [0, 8]}, DATA), ("not an object",)),
        Case(
            "entry with extra field",
            raw({"x": {**entry(), "pickle": "x"}}, DATA),
            ("unknown field",),
        ),
        Case("unknown dtype", raw({"x": entry(dtype="F33")}, DATA), ("unknown dtype",)),
        Case("lower-case dtype", raw({"x": entry(dtype="f32")}, DATA), ("unknown dtype",)),
        Case("object dtype", raw({"x": entry(dtype="O")}, DATA), ("unknown dtype",)),
        Case(
            "dtype missing",
            raw({"x": {"shape": [2], "data_offsets": [0, 8]}}, DATA),
            ("unknown dtype None",),
        ),
        Case("dtype a number", raw({"x": entry(dtype=4)}, DATA), ("unknown dtype 4",)),
        Case(
            "shape missing",
            raw({"x": {"dtype": "F32", "data_offsets": [0, 8]}}, DATA),
            ("shape None",),
        ),
        Case("negative dimension", raw({"x": entry(shape=(-2,))}, DATA), ("non-negative",)),
        Case("float dimension", raw({"x": entry(shape=(2.0,))}, DATA), ("non-negative",)),
        Case("boolean dimension", raw({"x": entry(shape=(True, 2))}, DATA), ("non-negative",)),
        Case("shape a string", raw({"x": entry(shape="[2]")}, DATA), ("non-negative",)),
        Case(
            "65 dimensions",
            raw({"x": entry(shape=(1,) * 64 + (2,))}, DATA),
            ("more than 64 dimensions",),
        ),
        Case(
            "dimension above 2**63",
            raw({"x": entry(shape=(0, 2**64), offsets=(0, 0))}),
            ("dimension above",),
        ),
        Case(
            "zero-size shape whose product overflows",
            raw({"x": entry(shape=(2**62, 2**62, 0), offsets=(0, 0))}),
            ("more bytes than a tensor can hold",),
        ),
        Case(
            "huge tensor in a tiny file",
            raw({"x": entry(shape=(2**20, 2**20), offsets=(0, 2**42))}, DATA),
            ("outside the data region",),
        ),
        Case(
            "offsets missing",
            raw({"x": {"dtype": "F32", "shape": [2]}}, DATA),
            ("is not [begin, end]",),
        ),
        Case("one offset", raw({"x": entry(offsets=[8])}, DATA), ("is not [begin, end]",)),
        Case("three offsets", raw({"x": entry(offsets=[0, 4, 8])}, DATA), ("is not [begin, end]",)),
        Case("float offsets", raw({"x": entry(offsets=[0, 8.0])}, DATA), ("is not [begin, end]",)),
        Case(
            "negative offset",
            raw({"x": entry(offsets=(-8, 0))}, DATA),
            ("outside the data region",),
        ),
        Case(
            "offsets reversed",
            raw({"x": entry(offsets=(8, 0))}, DATA),
            ("outside the data region",),
        ),
        Case(
            "offsets beyond the data",
            raw({"x": entry(offsets=(0, 8))}, b"\0" * 4),
            ("outside the data region",),
        ),
        Case(
            "offset 2**64",
            raw({"x": entry(offsets=(0, 2**64))}, DATA),
            ("outside the data region",),
        ),
        # --- shape x dtype against offsets, and the tiling of the data region
        Case("too few bytes for the shape", raw({"x": entry(shape=(3,))}, DATA), ("expected 12",)),
        Case("F64 shape in F32 bytes", raw({"x": entry(dtype="F64")}, DATA), ("expected 16",)),
        Case("empty shape with bytes", raw({"x": entry(shape=(0, 2))}, DATA), ("expected 0",)),
        Case("scalar with two elements' bytes", raw({"x": entry(shape=())}, DATA), ("expected 4",)),
        Case(
            "overlapping tensors",
            raw({"a": entry(), "b": entry(offsets=(4, 12))}, b"\0" * 12),
            ("overlaps",),
        ),
        Case("aliased tensors", raw({"a": entry(), "b": entry()}, DATA), ("overlaps",)),
        Case(
            "gap before a tensor",
            raw({"x": entry(offsets=(4, 12))}, b"\0" * 12),
            ("gap of 4 bytes",),
        ),
        Case("trailing bytes", raw(GOOD, b"\0" * 12), ("trailing bytes",)),
        Case("data but no tensors", raw({"__metadata__": {"a": "b"}}, DATA), ("trailing bytes",)),
        *_pickles(marker),
    ]
    names = [case.name for case in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases


def small_valid_file(folder: Path) -> Path:
    """A small sealed file (two tensors, two dtypes, metadata) to cut at every byte."""
    return write_file(
        folder / "small.safetensors",
        {"w": torch.arange(4.0), "b": torch.tensor([1, 2], dtype=torch.int8)},
        {"k": "v"},
    )


def truncation_problem(cut: int, header_end: int) -> tuple[str, ...]:
    if cut < 8:
        return TRUNCATED
    if cut < header_end:
        return ("is larger than the",)
    return ("outside the data region",)


def truncations(valid: Path) -> list[Case]:
    """``valid`` cut at every byte: 0 .. size-1 bytes kept."""
    content = valid.read_bytes()
    (header_len,) = struct.unpack("<Q", content[:8])
    return [
        Case(
            f"truncated to {cut} of {len(content)} bytes",
            content[:cut],
            truncation_problem(cut, 8 + header_len),
        )
        for cut in range(len(content))
    ]


def file_name(case: Case) -> str:
    safe = "".join(c if c.isalnum() else "-" for c in case.name)
    return f"{safe}.safetensors"


def write_corpus(folder: Path, marker: Path) -> list[tuple[Case, Path]]:
    """Write the whole corpus (named cases, then every truncation) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    valid_dir = folder / "valid"
    valid_dir.mkdir(exist_ok=True)
    cases = named_cases(marker) + truncations(small_valid_file(valid_dir))
    assert len({file_name(case) for case in cases}) == len(cases), "file names must be unique"
    written = []
    for case in cases:
        path = folder / file_name(case)
        path.write_bytes(case.content)
        written.append((case, path))
    return written
