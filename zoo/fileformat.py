"""Reading and writing ``.safetensors`` files: validated, hashed, atomic, never unpickled.

A safetensors file is an 8-byte little-endian header length, a JSON header (tensor entries plus a
``__metadata__`` str -> str map) and one data region. :func:`parse_header` checks every rule of
the format itself before any byte of data is trusted, so a truncated, malformed or hostile file
raises :class:`~zoo.CorruptFileError` naming the file and the problem instead of crashing or
yielding a wrong tensor.

Files zoo writes are *sealed*: :func:`write_file` adds ``zoo.tensors_sha256`` (a canonical hash
of the tensors: sorted names, dtype, shape, bytes) and ``zoo.content_sha256`` (that hash plus the
metadata), and :func:`read_file` recomputes both, raising :class:`~zoo.TamperedFileError` when a
byte changed. Writes go to a temporary file in the same directory, are fsynced, then
``os.replace``-d over the target (and the directory fsynced): a reader sees the old file or the
new one, never half of one. See ``docs/file-format.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import struct
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.errors import CorruptFileError, ModelNotFoundError, TamperedFileError, ZooError

if TYPE_CHECKING:
    import torch

#: Largest JSON header accepted (the safetensors library uses the same bound).
MAX_HEADER_BYTES = 100 * 1024 * 1024
#: Bounds on a tensor's shape (torch's own limits on dimension sizes).
MAX_DIMS = 64
MAX_DIM = 2**63 - 1
#: Metadata keys of the seal.
TENSORS_HASH_KEY = "zoo.tensors_sha256"
CONTENT_HASH_KEY = "zoo.content_sha256"
#: Test hook: seconds to sleep between writing the temporary file and replacing the target.
PAUSE_ENV = "ZOO_TEST_PAUSE_BEFORE_REPLACE"
#: Prefix and suffix of temporary files; ``zoo gc`` removes leftovers, listings skip them.
TEMP_PREFIX = "."
TEMP_SUFFIX = ".zoo-tmp"

#: safetensors dtype code -> (torch dtype attribute, bytes per element).
DTYPES: dict[str, tuple[str, int]] = {
    "BOOL": ("bool", 1),
    "U8": ("uint8", 1),
    "I8": ("int8", 1),
    "F8_E5M2": ("float8_e5m2", 1),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E8M0": ("float8_e8m0fnu", 1),
    "I16": ("int16", 2),
    "U16": ("uint16", 2),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "I32": ("int32", 4),
    "U32": ("uint32", 4),
    "F32": ("float32", 4),
    "C64": ("complex64", 8),
    "F64": ("float64", 8),
    "I64": ("int64", 8),
    "U64": ("uint64", 8),
}


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a header: where its bytes lie in the data region."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class Header:
    """A validated safetensors header."""

    metadata: dict[str, str]
    entries: tuple[TensorEntry, ...]
    header_len: int
    file_size: int

    @property
    def data_start(self) -> int:
        return 8 + self.header_len

    @property
    def data_len(self) -> int:
        return self.file_size - self.data_start

    @property
    def names(self) -> list[str]:
        return sorted(e.name for e in self.entries)

    @property
    def sealed(self) -> bool:
        return TENSORS_HASH_KEY in self.metadata or CONTENT_HASH_KEY in self.metadata


@dataclass
class SavedFile:
    """A file read by :func:`read_file`: its tensors (CPU), metadata and header."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    path: Path
    header: Header
    tensors_sha256: str | None = None
    verified: bool = False
    size: int = field(default=0)


# ---------------------------------------------------------------- header validation


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_header(raw: bytes, file_size: int, *, source: str = "<bytes>") -> Header:
    """Validate the JSON header ``raw`` of a file of ``file_size`` bytes; return a :class:`Header`.

    Checks, in order: the JSON is UTF-8, an object starting at its first byte (``{``), free of
    duplicate keys and NaN/Infinity; ``__metadata__`` maps str to str; each tensor has exactly
    ``dtype`` (known), ``shape`` (a list of non-negative ints whose size fits a tensor, even
    when one of them is 0) and ``data_offsets`` (two ints, ``0 <= begin <= end``); each tensor's
    byte length is ``numel * itemsize``; the tensors tile the data region exactly (no overlap, no
    gap, nothing after the last one). Raises :class:`~zoo.CorruptFileError` naming ``source``.
    """
    header_len = len(raw)
    data_len = file_size - 8 - header_len

    def bad(problem: str) -> CorruptFileError:
        return CorruptFileError(f"{source}: not a valid safetensors file: {problem}")

    if data_len < 0:
        raise bad(f"header of {header_len} bytes does not fit in a {file_size}-byte file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad(f"header is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except _DuplicateKey as exc:
        raise bad(f"header repeats the key {exc.args[0]!r}") from None
    except (ValueError, RecursionError) as exc:
        raise bad(f"header is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise bad(f"header is a JSON {type(doc).__name__}, not an object")
    if not text.startswith("{"):
        raise bad(f"header must begin with '{{' (found {text[:1]!r} before it)")

    metadata = doc.pop("__metadata__", {})
    if not isinstance(metadata, dict):
        raise bad(f"__metadata__ is a {type(metadata).__name__}, not an object of strings")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise bad(f"__metadata__[{key!r}] is a {type(value).__name__}, not a string")

    entries = []
    for name, info in doc.items():
        entries.append(_parse_entry(name, info, bad, data_len))
    entries.sort(key=lambda e: (e.begin, e.end, e.name))
    position = 0
    previous = None
    for entry in entries:
        if entry.begin != position:
            if entry.begin < position:
                raise bad(f"tensor {entry.name!r} overlaps tensor {previous!r}")
            raise bad(
                f"gap of {entry.begin - position} bytes in the data region before {entry.name!r}"
            )
        position = entry.end
        previous = entry.name
    if position != data_len:
        raise bad(
            f"the tensors cover {position} bytes but the data region holds {data_len}"
            + (" (trailing bytes)" if position < data_len else "")
        )
    return Header(dict(metadata), tuple(entries), header_len, file_size)


def _parse_entry(name: str, info: Any, bad: Any, data_len: int) -> TensorEntry:
    if not name:
        raise bad("a tensor has an empty name")
    if not isinstance(info, dict):
        raise bad(f"tensor {name!r}: entry is a {type(info).__name__}, not an object")
    extra = sorted(set(info) - {"dtype", "shape", "data_offsets"})
    if extra:
        raise bad(f"tensor {name!r}: unknown field(s) {', '.join(map(repr, extra))}")
    dtype = info.get("dtype")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        known = ", ".join(DTYPES)
        raise bad(f"tensor {name!r}: unknown dtype {dtype!r} (known: {known})")
    shape = info.get("shape")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise bad(f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
    if len(shape) > MAX_DIMS or any(d > MAX_DIM for d in shape):
        raise bad(f"tensor {name!r}: shape {shape!r} has more than {MAX_DIMS} dimensions or a "
                  f"dimension above {MAX_DIM}")
    if math.prod(max(d, 1) for d in shape) * DTYPES[dtype][1] > MAX_DIM:
        raise bad(f"tensor {name!r}: shape {shape!r} describes more bytes than a tensor can "
                  f"hold (over {MAX_DIM})")
    offsets = info.get("data_offsets")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(v) for v in offsets)
    ):
        raise bad(f"tensor {name!r}: data_offsets {offsets!r} is not [begin, end]")
    begin, end = offsets
    if not 0 <= begin <= end <= data_len:
        raise bad(
            f"tensor {name!r}: data_offsets [{begin}, {end}] outside the data region "
            f"of {data_len} bytes"
        )
    expected = math.prod(shape) * DTYPES[dtype][1]
    if end - begin != expected:
        raise bad(
            f"tensor {name!r}: {end - begin} bytes for shape {shape} of {dtype} "
            f"(expected {expected})"
        )
    return TensorEntry(name, dtype, tuple(shape), begin, end)


def _open(path: Path) -> Any:
    try:
        return open(path, "rb")  # the caller closes it (with-block)
    except FileNotFoundError:
        raise ModelNotFoundError("model file", str(path)) from None
    except IsADirectoryError:
        raise CorruptFileError(f"{path}: is a directory, not a .safetensors file") from None
    except OSError as exc:
        raise ZooError(f"{path}: cannot open: {exc.strerror or exc}") from None


def _read_exact(f: Any, n: int, path: Path, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise CorruptFileError(f"{path}: truncated while reading the {what}")
    return data


def _header_from_open(f: Any, path: Path) -> Header:
    size = os.fstat(f.fileno()).st_size
    if size < 8:
        raise CorruptFileError(
            f"{path}: not a valid safetensors file: truncated ({size} bytes; "
            "at least 8 are needed for the header length)"
        )
    (header_len,) = struct.unpack("<Q", _read_exact(f, 8, path, "header length"))
    if header_len > MAX_HEADER_BYTES:
        raise CorruptFileError(
            f"{path}: not a valid safetensors file: header length {header_len} exceeds the "
            f"{MAX_HEADER_BYTES}-byte limit"
        )
    if header_len > size - 8:
        raise CorruptFileError(
            f"{path}: not a valid safetensors file: header length {header_len} is larger than "
            f"the {size - 8} bytes after it (truncated file?)"
        )
    raw = _read_exact(f, header_len, path, "header")
    return parse_header(raw, size, source=str(path))


def read_header(path: str | os.PathLike[str]) -> Header:
    """Read and validate only the header of ``path`` (fast: no tensor data is read)."""
    path = Path(path)
    with _open(path) as f:
        return _header_from_open(f, path)


# ---------------------------------------------------------------- hashing


def _torch_dtype(code: str) -> torch.dtype:
    import torch

    attr = DTYPES[code][0]
    dtype = getattr(torch, attr, None)
    if dtype is None:
        raise CorruptFileError(f"dtype {code} is not supported by this torch ({torch.__version__})")
    return dtype


def dtype_code(dtype: torch.dtype) -> str:
    """The safetensors code of a torch dtype (``torch.float32`` -> ``"F32"``)."""
    name = str(dtype).removeprefix("torch.")
    for code, (attr, _size) in DTYPES.items():
        if attr == name:
            return code
    raise ZooError(f"tensors of dtype {dtype} cannot be saved in a safetensors file")


def _hash_items(items: Iterable[tuple[str, str, tuple[int, ...], Any]]) -> str:
    """Canonical sha256 over ``(name, dtype code, shape, bytes)``, in sorted name order."""
    digest = hashlib.sha256(b"zoo-tensors-v1\n")
    for name, code, shape, data in sorted(items, key=lambda item: item[0]):
        digest.update(json.dumps([name, code, list(shape)], ensure_ascii=False).encode() + b"\n")
        digest.update(data)
    return digest.hexdigest()


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a tensor (CPU, contiguous), without copying if possible."""
    flat = tensor.detach()
    if flat.device.type != "cpu":
        flat = flat.cpu()
    flat = flat.contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(_byte_view_dtype()).numpy()).cast("B")


def _byte_view_dtype() -> torch.dtype:
    import torch

    return torch.uint8


def hash_tensors(tensors: Mapping[str, torch.Tensor]) -> str:
    """Canonical sha256 of a state dict: sorted names, dtype, shape and bytes of each tensor.

    The same tensors give the same hash whatever their order, device or file layout; it is the
    ``zoo.tensors_sha256`` of a file holding exactly these tensors.
    """
    return _hash_items(
        (name, dtype_code(t.dtype), tuple(t.shape), tensor_bytes(t)) for name, t in tensors.items()
    )


def content_hash(tensors_sha256: str, metadata: Mapping[str, str]) -> str:
    """The ``zoo.content_sha256`` seal: the tensor hash plus every metadata entry but itself."""
    rest = {k: v for k, v in metadata.items() if k != CONTENT_HASH_KEY}
    digest = hashlib.sha256(b"zoo-content-v1\n")
    digest.update(tensors_sha256.encode() + b"\n")
    digest.update(json.dumps(rest, sort_keys=True, ensure_ascii=False).encode())
    return digest.hexdigest()


# ---------------------------------------------------------------- reading


def read_file(path: str | os.PathLike[str], *, verify: bool = True) -> SavedFile:
    """Read a ``.safetensors`` file into CPU tensors, validating it first; never unpickles.

    The header is validated by :func:`parse_header`; then each tensor's bytes are read straight
    into its own freshly allocated (aligned) tensor, so the file is read once and never held
    twice in memory. A sealed file (one zoo wrote) has its hashes recomputed unless
    ``verify=False``: a changed byte raises :class:`~zoo.TamperedFileError`. Unsealed files
    (plain safetensors from elsewhere) are read as they are (``verified`` stays False).
    """
    path = Path(path)
    with _open(path) as f:
        header = _header_from_open(f, path)
        tensors = {e.name: _read_tensor(f, e, path) for e in header.entries}

    tensors_sha256 = None
    verified = False
    if verify and header.sealed:
        tensors_sha256 = _hash_items(
            (e.name, e.dtype, e.shape, tensor_bytes(tensors[e.name])) for e in header.entries
        )
        check_seal(header.metadata, tensors_sha256, source=str(path))
        verified = True
    elif header.sealed:
        tensors_sha256 = header.metadata.get(TENSORS_HASH_KEY)
    return SavedFile(
        tensors=tensors,
        metadata=dict(header.metadata),
        path=path,
        header=header,
        tensors_sha256=tensors_sha256,
        verified=verified,
        size=header.file_size,
    )


def _read_tensor(f: Any, entry: TensorEntry, path: Path) -> torch.Tensor:
    """Read one tensor (the file is positioned at its first byte) into a new tensor.

    Every tensor gets its own allocation: kernels may give alignment-dependent results, so a
    view into one big buffer at an odd offset could compute differently from the model saved.
    """
    import torch

    try:
        dtype = _torch_dtype(entry.dtype)
    except CorruptFileError as exc:
        raise CorruptFileError(f"{path}: tensor {entry.name!r}: {exc}") from None
    tensor = torch.empty(entry.shape, dtype=dtype)
    if entry.nbytes == 0:
        return tensor
    view = memoryview(tensor.view(-1).view(torch.uint8).numpy()).cast("B")
    got = 0
    while got < entry.nbytes:
        n = f.readinto(view[got:])
        if not n:
            raise CorruptFileError(
                f"{path}: truncated while reading tensor {entry.name!r} (file changed?)"
            )
        got += n
    if sys.byteorder != "little":  # pragma: no cover - big-endian hosts
        itemsize = DTYPES[entry.dtype][1]
        swapped = tensor.view(-1).view(torch.uint8).view(-1, itemsize).flip(1).contiguous()
        tensor = swapped.view(-1).view(tensor.dtype).view(entry.shape)
    return tensor


def check_seal(metadata: Mapping[str, str], tensors_sha256: str, *, source: str) -> None:
    """Raise :class:`~zoo.TamperedFileError` unless both recorded hashes match the content."""
    recorded_tensors = metadata.get(TENSORS_HASH_KEY)
    recorded_content = metadata.get(CONTENT_HASH_KEY)
    if recorded_tensors is None or recorded_content is None:
        missing = TENSORS_HASH_KEY if recorded_tensors is None else CONTENT_HASH_KEY
        raise TamperedFileError(
            f"{source}: the seal is incomplete ({missing} was removed from the metadata); "
            "the file was modified after zoo wrote it"
        )
    if recorded_tensors != tensors_sha256:
        raise TamperedFileError(
            f"{source}: tensor data changed after the file was written (recorded "
            f"{TENSORS_HASH_KEY} {recorded_tensors[:16]}…, content hashes to "
            f"{tensors_sha256[:16]}…); do not use it — save the model again"
        )
    if content_hash(tensors_sha256, metadata) != recorded_content:
        raise TamperedFileError(
            f"{source}: metadata changed after the file was written ({CONTENT_HASH_KEY} does "
            "not match); do not use it — save the model again"
        )


# ---------------------------------------------------------------- writing


def current_umask() -> int:
    """The process umask (read without changing it where the platform allows)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no way to read it without setting it on other platforms
    os.umask(mask)
    return mask


def default_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file (0o666 less the umask)."""
    return 0o666 & ~current_umask()


def fsync_dir(directory: Path) -> None:
    """Flush a directory entry (a rename) to disk; a no-op where directories can't be opened."""
    if os.name == "nt":  # pragma: no cover
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path_for(target: Path) -> tuple[int, Path]:
    """Open a fresh temporary file next to ``target`` (same directory, hidden name)."""
    fd, name = tempfile.mkstemp(
        dir=target.parent, prefix=f"{TEMP_PREFIX}{target.name}.", suffix=TEMP_SUFFIX
    )
    return fd, Path(name)


def is_temp_name(name: str) -> bool:
    """True for the names of zoo's temporary files and folders."""
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


def _pause_for_tests(target: Path) -> None:
    delay = os.environ.get(PAUSE_ENV)
    if not delay:
        return
    sys.stderr.write(f"zoo-test: paused before replacing {target}\n")
    sys.stderr.flush()
    time.sleep(float(delay))


def atomic_write_bytes(target: Path, chunks: Iterable[bytes | memoryview]) -> Path:
    """Write ``chunks`` to ``target`` atomically: temp file, fsync, ``os.replace``, dir fsync.

    The file gets the mode the umask implies. On any error (or interrupt) the temporary file is
    removed and ``target`` is left as it was.
    """
    target = Path(target)
    fd, tmp = temp_path_for(target)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_mode())
        _pause_for_tests(target)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)
    return target


def seal(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> dict[str, str]:
    """``metadata`` plus the two hashes that :func:`read_file` checks."""
    sealed = {k: v for k, v in metadata.items() if k not in (TENSORS_HASH_KEY, CONTENT_HASH_KEY)}
    sealed[TENSORS_HASH_KEY] = hash_tensors(tensors)
    sealed[CONTENT_HASH_KEY] = content_hash(sealed[TENSORS_HASH_KEY], sealed)
    return sealed


def encode(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> tuple[bytes, list]:
    """The header bytes (length prefix included) and the ordered tensor byte chunks of a file."""
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ZooError(f"metadata must map str to str; got {key!r}: {type(value).__name__}")
    order = sorted(
        tensors, key=lambda n: (-DTYPES[dtype_code(tensors[n].dtype)][1], n)
    )
    doc: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    chunks = []
    offset = 0
    for name in order:
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ZooError(f"invalid tensor name {name!r}")
        tensor = tensors[name]
        data = tensor_bytes(tensor)
        doc[name] = {
            "dtype": dtype_code(tensor.dtype),
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + data.nbytes],
        }
        offset += data.nbytes
        chunks.append(data)
    header = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header, chunks


def write_file(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``tensors`` and ``metadata`` as a sealed ``.safetensors`` file, atomically.

    Adds ``zoo.tensors_sha256`` and ``zoo.content_sha256``; the result reads back with
    :func:`read_file` (verified) and with ``safetensors.torch.load_file`` alike. Tensors are
    stored as they are (moved to the CPU, made contiguous); shared storage is written once per
    name. Returns the path written.
    """
    sealed = seal(tensors, metadata or {})
    head, chunks = encode(tensors, sealed)
    return atomic_write_bytes(Path(path), [head, *chunks])
