"""Property-based checks of the reader: random headers, random metadata, random byte flips.

Whatever the bytes, reading either raises a :class:`zoo.ZooError` or returns exactly what a
valid file describes; no other exception escapes and nothing is half-read. The examples are
derandomized (the same on every run) and few, so the suite stays fast and reproducible.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from fileformat_helpers import write_file
from hypothesis import HealthCheck, Phase, assume, example, given, settings
from hypothesis import strategies as st
from reliability_helpers import make_version, version_of

import zoo
from zoo.io.fileformat import DTYPES, parse_header, read_file, read_header
from zoo.io.metadata import KEYS


def examples(n: int) -> settings:
    """``n`` derandomized examples, no deadline (the machine is shared), fixtures allowed."""
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
small_ints = st.integers(-2, 12)
entries = st.fixed_dictionaries(
    {},
    optional={
        "dtype": st.sampled_from([*DTYPES, "F33", "f32", ""]) | json_scalars,
        "shape": st.lists(small_ints, max_size=3) | json_values,
        "data_offsets": st.lists(st.integers(-2, 40), min_size=0, max_size=3) | json_values,
        "extra": json_scalars,
    },
)
headers = st.dictionaries(
    st.text(max_size=5) | st.just("__metadata__"),
    entries | json_values,
    max_size=4,
)


def check_header(header: Any, data_len: int) -> None:
    """What a successfully parsed header promises."""
    position = 0
    for entry in sorted(header.entries, key=lambda e: e.begin):
        assert entry.begin == position
        assert entry.nbytes == math.prod(entry.shape) * DTYPES[entry.dtype][1]
        position = entry.end
    assert position == data_len
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in header.metadata.items())


@examples(120)
@given(doc=headers, data_len=st.integers(0, 40), indent=st.sampled_from([None, 1]))
def test_random_json_headers_parse_or_raise_corrupt_file_error(doc, data_len, indent):
    raw = json.dumps(doc, indent=indent).encode()
    try:
        header = parse_header(raw, 8 + len(raw) + data_len, source="random.safetensors")
    except zoo.CorruptFileError as exc:
        assert str(exc).startswith("random.safetensors: not a valid safetensors file: ")
        return
    check_header(header, data_len)


@examples(100)
@given(raw=st.binary(max_size=64), data_len=st.integers(0, 16))
def test_random_header_bytes_parse_or_raise_corrupt_file_error(raw, data_len):
    try:
        header = parse_header(raw, 8 + len(raw) + data_len, source="bytes")
    except zoo.CorruptFileError:
        return
    check_header(header, data_len)


@examples(60)
@given(metadata=st.dictionaries(st.text(max_size=8), json_values, max_size=5))
def test_random_metadata_is_kept_exactly_or_refused_naming_the_key(tmp_path, metadata):
    doc = {"__metadata__": metadata, "x": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]}}
    raw = json.dumps(doc).encode()
    path = tmp_path / "meta.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"abc")
    wrong = [k for k, v in metadata.items() if not isinstance(v, str)]
    if not wrong:
        saved = read_file(path)
        assert saved.metadata == metadata
        assert saved.tensors["x"].tolist() == list(b"abc")
        return
    with pytest.raises(zoo.CorruptFileError) as info:
        read_file(path)
    assert str(path) in str(info.value)
    assert any(f"__metadata__[{k!r}]" in str(info.value) for k in wrong)


@pytest.fixture
def saved_tiny(tiny, tmp_path) -> Path:
    return zoo.save(make_version(3), tmp_path / "tiny.safetensors")


zoo_keys = st.sampled_from(sorted(KEYS))
#: The zoo keys whose values are JSON objects (most places for nested garbage).
object_keys = st.sampled_from(
    [
        "zoo.build",
        "zoo.input_config",
        "zoo.policy_args",
        "zoo.plan",
        "zoo.base",
        "zoo.plugins",
        "zoo.timm_config",
    ]
)
#: Keys found inside zoo's JSON values (input config, build, base, plan): garbage under a known
#: key reaches deeper checks than garbage under a random one.
inner_keys = st.sampled_from(
    [
        "input_size",
        "mean",
        "std",
        "interpolation",
        "crop_pct",
        "crop_mode",
        "backbone",
        "tag",
        "num_classes",
        "kwargs",
        "kind",
        "ref",
        "sha256",
        "params",
        "norms",
        "policy",
        "args",
    ]
)
zoo_values = (
    st.text(max_size=12)
    | json_values.map(json.dumps)
    | st.dictionaries(inner_keys, json_values, max_size=3).map(json.dumps)
)


@examples(60)
@given(
    changes=st.dictionaries(object_keys | zoo_keys | st.text(max_size=6), zoo_values, max_size=3)
)
@example(changes={"zoo.input_config": '{"input_size": "abc"}'})  # found by this test
@example(changes={"zoo.input_config": '{"mean": 5}'})
def test_resealed_random_zoo_metadata_loads_or_raises_a_zoo_error(saved_tiny, changes):
    """A file whose zoo.* values are garbage but correctly sealed: a ZooError, never a crash."""
    saved = read_file(saved_tiny)
    changed = saved_tiny.with_name("changed.safetensors")
    write_file(changed, saved.tensors, {**saved.metadata, **changes})
    for loader in (zoo.load, zoo.inspect):
        try:
            result = loader(changed)
        except zoo.ZooError as exc:
            assert str(changed) in str(exc)
            continue
        if loader is zoo.load:  # the tensors are the saved ones, whatever the metadata says
            assert all(torch.all(t == 3) for t in result.state_dict().values())


@examples(100)
@given(
    flips=st.lists(st.tuples(st.integers(0, 10**9), st.integers(1, 255)), min_size=1, max_size=3)
)
def test_random_byte_flips_are_refused_or_change_nothing(saved_tiny, flips):
    original = saved_tiny.read_bytes()
    data = bytearray(original)
    for position, mask in flips:
        data[position % len(data)] ^= mask
    assume(bytes(data) != original)
    flipped = saved_tiny.with_name("flipped.safetensors")
    flipped.write_bytes(bytes(data))
    try:
        model = zoo.load(flipped)
    except zoo.ZooError as exc:
        assert str(flipped) in str(exc)
        return
    # only bytes that carry no content can change unnoticed (header padding, JSON spacing)
    assert version_of(model) == "v3"
    assert model.zoo.metadata == read_header(saved_tiny).metadata
    reference = read_file(saved_tiny).tensors
    for name, tensor in read_file(flipped).tensors.items():
        assert torch.equal(tensor, reference[name]) and tensor.dtype == reference[name].dtype
