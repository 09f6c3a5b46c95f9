"""Reading and writing ``.safetensors`` files: validated, hashed, atomic, never unpickled.

A safetensors file is an 8-byte little-endian header length, a JSON header (tensor entries plus a
``__metadata__`` str -> str map) and one data region. :func:`parse_header` checks every rule of
the format itself before any byte of data is trusted, so a truncated, malformed or hostile file
raises :class:`~zoo.CorruptFileError` naming the file and the problem instead of crashing or
yielding a wrong tensor. Only regular files are opened (:func:`open_regular`: a FIFO or a
device is refused before a byte is read), and a file's tensors are only allocated when the
system reports enough memory for them (:func:`check_memory_for`).

Files zoo writes are *sealed*: :func:`seal` adds ``zoo.tensors_sha256`` (a canonical hash of
the tensors: sorted names, dtype, shape, bytes) and ``zoo.content_sha256`` (that hash plus the
metadata), and :func:`read_file` recomputes both, raising :class:`~zoo.TamperedFileError` when a
byte changed; a file with ``zoo.*`` metadata but without both hashes (a stripped seal) is refused
by every reader (:func:`check_sealed_if_zoo`). The ``safetensors`` library writes the bytes
(:func:`write_tensors`); zoo checks what it wrote against its own reader, fsyncs it and
``os.replace``-s it over the target (then fsyncs the directory): a reader sees the old file or
the new one, never half of one. zoo reads files itself (streaming into one aligned allocation
per tensor; the library's ``load`` needs twice the memory): see ``docs/file-format.md``.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import hashlib
import json
import math
import os
import re
import shutil
import stat
import struct
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from zoo.core import checks
from zoo.errors import CorruptFileError, ModelNotFoundError, TamperedFileError, ZooError

if TYPE_CHECKING:
    import torch

#: Largest JSON header accepted (the safetensors library uses the same bound).
MAX_HEADER_BYTES = 100 * 1024 * 1024
#: Bounds on a tensor's shape (torch's own limits on dimension sizes).
MAX_DIMS = 64
MAX_DIM = 2**63 - 1
#: Most tensors one file may hold. The largest timm models have a few thousand; the bound keeps
#: the refusal of a header listing hundreds of thousands of (even empty) tensors under a second.
MAX_TENSORS = 50_000
#: Metadata keys of the seal.
TENSORS_HASH_KEY = "zoo.tensors_sha256"
CONTENT_HASH_KEY = "zoo.content_sha256"
#: Test hooks (see :func:`pause_for_tests`): seconds to sleep between writing the temporary
#: file and replacing the target, and after each completed epoch of a training run.
PAUSE_ENV = "ZOO_TEST_PAUSE_BEFORE_REPLACE"
PAUSE_AFTER_EPOCH_ENV = "ZOO_TEST_PAUSE_AFTER_EPOCH"
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
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {e.name: e.shape for e in self.entries}

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


class _TooManyObjects(ValueError):
    pass


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while many small objects are made.

    Parsing a header of 50 000 entries allocates a million objects; with torch loaded, the
    collections those allocations trigger take longer than the parsing itself.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _object_hook(limit: int) -> Any:
    """A JSON ``object_pairs_hook`` that refuses duplicate keys and stops after ``limit``
    objects (a valid header has one per tensor, plus ``__metadata__`` and itself)."""
    count = 0

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal count
        count += 1
        if count > limit:
            raise _TooManyObjects
        out = dict(pairs)
        if len(out) != len(pairs):
            seen: set[str] = set()
            for key, _value in pairs:
                if key in seen:
                    raise _DuplicateKey(key)
                seen.add(key)
        return out

    return hook


def _no_constants(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def parse_header(raw: bytes, file_size: int, *, source: str = "<bytes>") -> Header:
    """Validate the JSON header ``raw`` of a file of ``file_size`` bytes; return a :class:`Header`.

    Checks, in order: the JSON is UTF-8, an object starting at its first byte (``{``), free of
    duplicate keys and NaN/Infinity; ``__metadata__`` maps str to str; each tensor has exactly
    ``dtype`` (known), ``shape`` (a list of non-negative ints whose size fits a tensor, even
    when one of them is 0) and ``data_offsets`` (two ints, ``0 <= begin <= end``); each tensor's
    byte length is ``numel * itemsize``; the tensors tile the data region exactly (no overlap, no
    gap, nothing after the last one). Text (tensor names, metadata keys and values) must be
    Unicode: a lone UTF-16 surrogate (``"\\ud800"``, legal JSON) is refused. At most
    :data:`MAX_TENSORS` tensors. Raises :class:`~zoo.CorruptFileError` naming ``source``.
    """
    with _gc_paused():
        return _parse_header(raw, file_size, source)


def _parse_header(raw: bytes, file_size: int, source: str) -> Header:
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
    too_many = bad(f"header lists more than {MAX_TENSORS} tensors (zoo's limit)")
    if raw.count(b'"data_offsets"') > MAX_TENSORS + 2:  # quick refusal before parsing
        raise too_many
    try:
        doc = json.loads(
            text, object_pairs_hook=_object_hook(MAX_TENSORS + 2), parse_constant=_no_constants
        )
    except _DuplicateKey as exc:
        raise bad(f"header repeats the key {exc.args[0]!r}") from None
    except _TooManyObjects:
        raise too_many from None
    except (ValueError, RecursionError) as exc:
        raise bad(f"header is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise bad(f"header is a JSON {type(doc).__name__}, not an object")
    if not text.startswith("{"):
        raise bad("header must begin with '{' (it starts with whitespace)")

    metadata = doc.pop("__metadata__", {})
    if not isinstance(metadata, dict):
        raise bad(f"__metadata__ is a {type(metadata).__name__}, not an object of strings")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise bad(f"__metadata__[{key!r}] is a {type(value).__name__}, not a string")
    if len(doc) > MAX_TENSORS:
        raise too_many
    if checks.SURROGATE_ESCAPE.search(text):  # the only way a lone surrogate enters UTF-8
        texts = [(f"__metadata__ key {key!r}", key) for key in metadata]
        texts += [(f"__metadata__[{key!r}]", value) for key, value in metadata.items()]
        texts += [(f"tensor name {name!r}", name) for name in doc]
        for where, value in texts:
            if checks.lone_surrogate(value) is not None:
                raise bad(f"{where} holds a lone UTF-16 surrogate (not Unicode text)")

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


_FIELDS = frozenset({"dtype", "shape", "data_offsets"})


def _parse_entry(name: str, info: Any, bad: Any, data_len: int) -> TensorEntry:
    """One tensor's entry, checked (written for speed: a header may list 100 000 of them)."""
    if not name:
        raise bad("a tensor has an empty name")
    if type(info) is not dict:
        raise bad(f"tensor {name!r}: entry is a {type(info).__name__}, not an object")
    if info.keys() - _FIELDS:
        extra = sorted(set(info) - _FIELDS)
        raise bad(f"tensor {name!r}: unknown field(s) {', '.join(map(repr, extra))}")
    dtype = info.get("dtype")
    if type(dtype) is not str or dtype not in DTYPES:
        known = ", ".join(DTYPES)
        raise bad(f"tensor {name!r}: unknown dtype {dtype!r} (known: {known})")
    shape = info.get("shape")
    if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape):
        raise bad(f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
    if len(shape) > MAX_DIMS or any(d > MAX_DIM for d in shape):
        raise bad(
            f"tensor {name!r}: shape {shape!r} has more than {MAX_DIMS} dimensions or a "
            f"dimension above {MAX_DIM}"
        )
    itemsize = DTYPES[dtype][1]
    expected = math.prod(shape) * itemsize
    if expected > MAX_DIM or (
        expected == 0 and math.prod(max(d, 1) for d in shape) * itemsize > MAX_DIM
    ):
        raise bad(
            f"tensor {name!r}: shape {shape!r} describes more bytes than a tensor can "
            f"hold (over {MAX_DIM})"
        )
    offsets = info.get("data_offsets")
    if (
        type(offsets) is not list
        or len(offsets) != 2
        or type(offsets[0]) is not int
        or type(offsets[1]) is not int
    ):
        raise bad(f"tensor {name!r}: data_offsets {offsets!r} is not [begin, end]")
    begin, end = offsets
    if not 0 <= begin <= end <= data_len:
        raise bad(
            f"tensor {name!r}: data_offsets [{begin}, {end}] outside the data region "
            f"of {data_len} bytes"
        )
    if end - begin != expected:
        raise bad(
            f"tensor {name!r}: {end - begin} bytes for shape {shape} of {dtype} "
            f"(expected {expected})"
        )
    return TensorEntry(name, dtype, tuple(shape), begin, end)


_KINDS = (
    (stat.S_ISREG, "a regular file"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISLNK, "a symbolic link"),
)


def kind_of(mode: int, default: str = "not a regular file") -> str:
    """What a file of ``mode`` (``os.stat``'s ``st_mode``) is, in words: ``"a FIFO (named
    pipe)"``, ``"a symbolic link"``..."""
    return next((kind for test, kind in _KINDS if test(mode)), default)


def _refuse_special(path: Path, mode: int) -> CorruptFileError:
    kind = kind_of(mode)
    return CorruptFileError(f"{path}: is {kind}, not a regular file; zoo only reads regular files")


def open_regular(path: str | os.PathLike[str], *, follow_symlinks: bool = True) -> BinaryIO:
    """Open ``path`` for reading in binary mode, only if it is a regular file.

    A FIFO, a device (``/dev/zero``), a socket or a directory raises
    :class:`~zoo.CorruptFileError` at once: the file is opened non-blocking (opening a FIFO
    would wait for a writer) and checked with ``fstat`` on the open descriptor before a byte
    is read. With ``follow_symlinks=False`` a symbolic link is refused too (``O_NOFOLLOW``).
    A missing file raises :class:`~zoo.ModelNotFoundError`; another failure a
    :class:`~zoo.ZooError` naming the file.
    """
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        mode = os.stat(path, follow_symlinks=follow_symlinks).st_mode
        if not stat.S_ISREG(mode):  # refuse before opening: opening a device can act
            raise _refuse_special(path, mode)
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ModelNotFoundError("model file", str(path)) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_symlinks:
            raise _refuse_special(path, stat.S_IFLNK) from None
        if isinstance(exc, IsADirectoryError):
            raise _refuse_special(path, stat.S_IFDIR) from None
        raise ZooError(f"{path}: cannot open: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _refuse_special(path, mode)
        if getattr(os, "O_NONBLOCK", 0):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")  # the caller closes it (with-block)
    except BaseException:
        os.close(fd)
        raise


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
            f"{path}: not a valid safetensors file: the header length its first 8 bytes give "
            f"exceeds the {MAX_HEADER_BYTES}-byte limit"
        )
    if header_len > size - 8:
        raise CorruptFileError(
            f"{path}: not a valid safetensors file: the header length its first 8 bytes give "
            f"is larger than the {size - 8} bytes after them (truncated file?)"
        )
    raw = _read_exact(f, header_len, path, "header")
    header = parse_header(raw, size, source=str(path))
    check_sealed_if_zoo(header.metadata, source=str(path))
    return header


def check_sealed_if_zoo(metadata: Mapping[str, str], *, source: str) -> None:
    """Refuse (:class:`~zoo.TamperedFileError`) a file with ``zoo.*`` metadata but no full seal.

    zoo seals every file it writes; a plain safetensors file has no ``zoo.*`` keys. A file
    with them and without both seal hashes had its seal stripped (maybe to hide a changed
    byte), so it is refused rather than read as an unchecked plain file.
    """
    missing = [key for key in (TENSORS_HASH_KEY, CONTENT_HASH_KEY) if key not in metadata]
    if not missing:
        return
    zoo_key = next((key for key in metadata if key.startswith("zoo.")), None)
    if zoo_key is None:
        return
    raise TamperedFileError(
        f"{source}: the seal is incomplete ({' and '.join(missing)} missing from the metadata) "
        f"although the file carries zoo metadata ({zoo_key!r}); the file was modified after "
        "zoo wrote it — do not use it, save the model again"
    )


def read_header(path: str | os.PathLike[str], *, follow_symlinks: bool = True) -> Header:
    """Read and validate only the header of ``path`` (fast: no tensor data is read).

    With ``follow_symlinks=False`` a symbolic link is refused (see :func:`open_regular`).
    """
    path = Path(path)
    with open_regular(path, follow_symlinks=follow_symlinks) as f:
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
    code = _CODES.get(str(dtype).removeprefix("torch."))
    if code is None:
        raise ZooError(f"tensors of dtype {dtype} cannot be saved in a safetensors file")
    return code


_CODES = {attr: code for code, (attr, _size) in DTYPES.items()}
#: One encoder for every line of the tensor hash (``json.dumps`` would build one per call).
_HASH_LINE = json.JSONEncoder(ensure_ascii=False)


def _hash_items(items: Iterable[tuple[str, str, tuple[int, ...], Any]]) -> str:
    """Canonical sha256 over ``(name, dtype code, shape, bytes)``, in sorted name order."""
    digest = hashlib.sha256(b"zoo-tensors-v1\n")
    with _gc_paused():
        for name, code, shape, data in sorted(items, key=lambda item: item[0]):
            digest.update(_HASH_LINE.encode([name, code, list(shape)]).encode() + b"\n")
            digest.update(data)
    return digest.hexdigest()


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a tensor (CPU, contiguous), without copying if possible."""
    if tensor.numel() == 0:
        return memoryview(b"")
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


def read_file(
    path: str | os.PathLike[str], *, verify: bool = True, follow_symlinks: bool = True
) -> SavedFile:
    """Read a ``.safetensors`` file into CPU tensors, validating it first; never unpickles.

    The header is validated by :func:`parse_header`; then each tensor's bytes are read straight
    into its own freshly allocated (aligned) tensor, so the file is read once and never held
    twice in memory. A sealed file (one zoo wrote) has its hashes recomputed unless
    ``verify=False``: a changed byte raises :class:`~zoo.TamperedFileError`. Unsealed files
    (plain safetensors from elsewhere) are read as they are (``verified`` stays False).
    With ``follow_symlinks=False`` a symbolic link is refused (see :func:`open_regular`).
    """
    path = Path(path)
    with open_regular(path, follow_symlinks=follow_symlinks) as f:
        header = _header_from_open(f, path)
        check_memory_for(header.data_len, source=str(path))
        with _gc_paused():
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


#: Below this many bytes of tensors, reading a file skips the available-memory check.
MEMORY_CHECK_FROM = 64 * 1024 * 1024


def _amount(n: int) -> str:
    return f"{n / 2**30:.1f} GiB ({n} bytes)" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _meminfo_available() -> int | None:
    """``MemAvailable`` + ``SwapFree`` of ``/proc/meminfo`` in bytes (None where absent)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            fields = {key: rest.split() for key, _, rest in (line.partition(":") for line in f)}
        return (
            sum(int(fields[key][0]) * 1024 for key in ("MemAvailable", "SwapFree") if key in fields)
            if "MemAvailable" in fields
            else None
        )
    except (OSError, ValueError, IndexError):
        return None


_CGROUP_FILES = (  # (limit, usage, stat, page-cache key of stat): cgroup v2, then v1
    ("memory.max", "memory.current", "memory.stat", "file"),
    (
        "memory/memory.limit_in_bytes",
        "memory/memory.usage_in_bytes",
        "memory/memory.stat",
        "total_cache",
    ),
)


def _cgroup_headroom() -> int | None:
    """Bytes left under this container's cgroup memory limit (page cache counts as free)."""
    root = Path("/sys/fs/cgroup")
    for limit_file, usage_file, stat_file, cache_key in _CGROUP_FILES:
        try:
            limit = (root / limit_file).read_text().strip()
            if not limit.isdigit() or int(limit) >= 2**60:  # "max" or the v1 "no limit"
                continue
            usage = int((root / usage_file).read_text())
            cache = 0
            for line in (root / stat_file).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == cache_key:
                    cache = int(value)
            return max(int(limit) - (usage - cache), 0)
        except (OSError, ValueError):
            continue
    return None


def available_memory() -> int | None:
    """Bytes of memory this process can still get, as far as the system says (None: unknown).

    On Linux the least of ``MemAvailable`` + ``SwapFree`` (``/proc/meminfo``) and the room
    left under a cgroup memory limit (a container's); elsewhere unknown.
    """
    known = [n for n in (_meminfo_available(), _cgroup_headroom()) if n is not None]
    return min(known) if known else None


def check_memory_for(nbytes: int, *, source: str) -> None:
    """Refuse (:class:`~zoo.ZooError`) to allocate ``nbytes`` for ``source`` when the system
    reports less memory available, instead of failing (or swapping) half-way through a read."""
    if nbytes < MEMORY_CHECK_FROM:
        return
    available = available_memory()
    if available is not None and nbytes > available:
        raise ZooError(
            f"{source}: its tensors need {_amount(nbytes)} of memory, but only "
            f"{_amount(available)} is available; free memory, or read it on a larger machine"
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
    try:
        tensor = torch.empty(entry.shape, dtype=dtype)
    except (RuntimeError, MemoryError) as exc:  # the allocator's "can't allocate memory"
        raise ZooError(
            f"{path}: cannot allocate {_amount(entry.nbytes)} for tensor {entry.name!r}: {exc}"
        ) from None
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


def pause_for_tests(variable: str, moment: str) -> None:
    """A test hook: when the environment variable ``variable`` holds a number of seconds, say
    ``zoo-test: paused <moment>`` on stderr and sleep that long.

    A test that must signal or kill a process at a moment waits for that line, then acts: the
    moment is known to exist, and the process cannot run past it first (the sleep is long),
    so the test does not race the process on a fast or a loaded machine.
    """
    delay = os.environ.get(variable)
    if not delay:
        return
    sys.stderr.write(f"zoo-test: paused {moment}\n")
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
        pause_for_tests(PAUSE_ENV, f"before replacing {target}")
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


def _specs(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> tuple[dict[str, Any], list[torch.Tensor]]:
    """Check names, metadata and dtypes; describe each tensor for ``safetensors.serialize_file``.

    Returns the ``TensorSpec`` of each name and the CPU, contiguous tensors they point into (the
    caller keeps those alive while the library writes). Tensors that share storage are described
    once per name, as a plain state dict lists them (``safetensors.torch.save`` would refuse).
    """
    import safetensors

    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ZooError(f"metadata must map str to str; got {key!r}: {type(value).__name__}")
    specs: dict[str, Any] = {}
    alive = []
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ZooError(f"invalid tensor name {name!r}")
        attr, itemsize = DTYPES[dtype_code(tensor.dtype)]
        data = tensor.detach()
        if data.device.type != "cpu":
            data = data.cpu()
        data = data.contiguous()
        alive.append(data)
        specs[name] = safetensors.TensorSpec(
            dtype=attr,
            shape=list(data.shape),
            data_ptr=data.data_ptr(),
            data_len=data.numel() * itemsize,
        )
    return specs, alive


def _check_written(
    f: BinaryIO, path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> None:
    """Refuse to publish a file that zoo's reader would not accept as exactly what was asked.

    The header the library wrote (``f``, to be published as ``path``) must pass
    :func:`parse_header` and list the same tensors (dtype, shape) and the same metadata: a
    change in the library's output fails the save here, not a later load.
    """
    try:
        header = _header_from_open(f, path)
    except CorruptFileError as exc:
        raise ZooError(
            f"the safetensors library wrote a file zoo would refuse to read ({exc}); "
            "nothing was saved (report this with the library version)"
        ) from None
    wanted = {n: (dtype_code(t.dtype), tuple(t.shape)) for n, t in tensors.items()}
    written = {e.name: (e.dtype, e.shape) for e in header.entries}
    if written != wanted or header.metadata != dict(metadata):
        raise ZooError(
            f"{path}: the safetensors library wrote other tensors or metadata than "
            "zoo asked for; nothing was saved (report this with the library version)"
        )


def write_tensors(
    path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> Path:
    """Write ``tensors`` and ``metadata`` (already :func:`seal`-ed) to ``path`` atomically.

    The safetensors library lays the bytes out and writes them (``safetensors.serialize_file``,
    straight from the tensors' memory: no copy of the file is built). It writes into a hidden
    temporary folder next to ``path`` (a zoo temporary name, so ``zoo gc`` removes it after a
    kill); zoo then checks the file with its own reader's rules (:func:`_check_written`),
    fsyncs it, gives it the mode the umask implies and ``os.replace``-s it over ``path``. On any
    error ``path`` is left as it was and the temporary folder is removed.
    """
    import safetensors

    target = Path(path)
    specs, alive = _specs(tensors, metadata)
    folder = Path(
        tempfile.mkdtemp(
            dir=target.parent, prefix=f"{TEMP_PREFIX}{target.name}.", suffix=TEMP_SUFFIX
        )
    )
    written = folder / target.name
    try:
        try:
            safetensors.serialize_file(specs, written, metadata=dict(metadata) or None)
        except safetensors.SafetensorError as exc:
            raise _library_error(exc, target) from None
        del alive
        with open_regular(written, follow_symlinks=False) as f:
            _check_written(f, target, tensors, metadata)
            os.fsync(f.fileno())
        os.chmod(written, default_mode())
        pause_for_tests(PAUSE_ENV, f"before replacing {target}")
        os.replace(written, target)
    finally:
        _remove_folder(folder)
    fsync_dir(target.parent)
    return target


def written_size(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> int:
    """The bytes :func:`write_tensors` puts on disk for ``tensors`` and ``metadata``: the data
    exactly, the header and its padding at most (what a write needs free)."""
    data = sum(t.numel() * t.element_size() for t in tensors.values())
    entries = {
        name: {"dtype": dtype_code(t.dtype), "shape": list(t.shape), "data_offsets": [data, data]}
        for name, t in tensors.items()
    }
    header = json.dumps(
        {"__metadata__": dict(metadata), **entries}, separators=(",", ":"), ensure_ascii=False
    )
    return 8 + len(header.encode("utf-8")) + 7 + data


#: ``errno`` values of a write that ran out of room: a full disk, a quota, a file-size limit.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def write_error(exc: OSError, where: Path, *, what: str, needed: int, kept: str) -> ZooError:
    """A failed write as a :class:`~zoo.ZooError`: what could not be written where and why;
    when it ran out of room (:data:`NO_SPACE`), how many bytes it needed and how many are free.
    ``kept`` says what the failure left as it was."""
    reason = exc.strerror or str(exc)
    if exc.errno not in NO_SPACE:
        return ZooError(f"cannot write {what} to {where}: {reason}; {kept}")
    try:
        free = f", {shutil.disk_usage(where).free:,} bytes are free there"
    except OSError:
        free = ""
    return ZooError(
        f"cannot write {what} to {where}: {reason} (it needs {needed:,} bytes{free}); {kept}. "
        "Free some space, or write to another disk"
    )


def _remove_folder(folder: Path) -> None:
    """Remove :func:`write_tensors`' temporary folder and the files in it (never links'
    targets: unlinking a name removes the name)."""
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            with contextlib.suppress(OSError):
                os.unlink(folder / name)
        os.rmdir(folder)


def _library_error(exc: Exception, target: Path) -> Exception:
    """The library's write error as what zoo raises: an ``OSError`` when the disk failed."""
    match = re.search(r"os error (\d+)", str(exc))
    if match:
        code = int(match.group(1))
        return OSError(code, os.strerror(code), str(target))
    return ZooError(f"{target}: the safetensors library could not write it: {exc}")
