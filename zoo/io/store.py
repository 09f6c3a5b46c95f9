"""The model store: ``<ZOO_HOME>/models/<name>/`` entries, names, locks, listing, removal.

An entry is a folder holding ``model.safetensors`` (the single source of truth) and
``config.json`` (timm-style, regenerated from the file's metadata, so the folder also loads in
plain timm). ``ZOO_HOME`` defaults to a per-user data folder (:func:`zoo_home`).

Names are checked by one function, :func:`validate_name`, whose refusals name the broken rule;
every path the store builds is resolved and checked to stay inside the store. Writers hold a
per-entry lock (``<ZOO_HOME>/locks/<name>.lock``, named after the case-folded name, ``flock``);
readers need none, because files are only ever replaced whole (``os.replace``). Everything in
the store is untrusted: listing, removal and ``gc`` never follow a link out of it, only read
regular files, and report a broken entry instead of stopping. See ``docs/store.md``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import math
import os
import re
import secrets
import shutil
import stat
import sys
import time
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any

from zoo.errors import (
    InvalidNameError,
    LockTimeoutError,
    ModelNotFoundError,
    StoreError,
    ZooError,
    short_repr,
)
from zoo.io.fileformat import (
    CONTENT_HASH_KEY,
    TEMP_SUFFIX,
    atomic_write_bytes,
    is_temp_name,
    read_header,
)
from zoo.io.metadata import ZooMetadata, config_json, is_zoo_metadata
from zoo.io.trust import check_folder, read_json_in, remove_written

ZOO_HOME_ENV = "ZOO_HOME"
LOCK_TIMEOUT_ENV = "ZOO_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 60.0
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
MAX_NAME_LENGTH = 100
#: Largest ``config.json`` that ``zoo gc`` reads to compare it with its model.
MAX_CONFIG_BYTES = 16 * 1024 * 1024
_ALLOWED_PUNCTUATION = "._-+@="
_RESERVED_DEVICES = {
    "CON",
    "PRN",
    "AUX",
    "NUL",
    "CONIN$",
    "CONOUT$",
    *(f"COM{i}" for i in "0123456789¹²³"),
    *(f"LPT{i}" for i in "0123456789¹²³"),
}


# ---------------------------------------------------------------- locations


def zoo_home() -> Path:
    """The zoo data folder: ``$ZOO_HOME``, else the platform's per-user data folder.

    Linux and BSD: ``$XDG_DATA_HOME/zoo`` (``~/.local/share/zoo``); macOS:
    ``~/Library/Application Support/zoo``; Windows: ``%LOCALAPPDATA%\\zoo``.
    """
    env = os.environ.get(ZOO_HOME_ENV)
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":  # pragma: no cover
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "zoo"
    if sys.platform == "darwin":  # pragma: no cover
        return Path.home() / "Library" / "Application Support" / "zoo"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "zoo"


def checkpoints_dir() -> Path:
    """``<ZOO_HOME>/tmp``: checkpoints of interrupted ``zoo adapt`` runs (``adapt-<name>/``)."""
    return zoo_home() / "tmp"


#: The folder name prefix of an adapt run's checkpoint in :func:`checkpoints_dir`.
CHECKPOINT_PREFIX = "adapt-"
#: The file of a checkpoint folder that names the others; written last.
CHECKPOINT_STATE = "state.json"
#: The largest ``state.json`` zoo reads, to resume (``zoo adapt --resume``) or to say what a
#: checkpoint held (``zoo gc``).
MAX_CHECKPOINT_STATE_BYTES = 16 * 1024 * 1024
#: The tensor files of a checkpoint: ``<kind>-<epoch>.safetensors``, ``epoch`` being the
#: epoch whose checkpoint wrote the file.
CHECKPOINT_KINDS = ("model", "optimizer", "frozen", "best")
_CHECKPOINT_TENSORS = re.compile(r"(model|optimizer|frozen|best)-([1-9][0-9]{0,8})\.safetensors")


def checkpoint_folder(name: str) -> Path:
    """Where the adapt run saving as ``name`` keeps its last completed epoch: a store name's
    ``adapt-<name>``, a path's ``adapt-<file name>-<hash of the absolute path>``."""
    if is_path_target(name):
        target = os.path.abspath(os.fspath(name))
        digest = hashlib.sha256(os.fsencode(target)).hexdigest()[:16]
        stem = re.sub(r"[^A-Za-z0-9_.+@=-]+", "-", Path(target).name)[:60].strip("-.") or "model"
        return checkpoints_dir() / f"{CHECKPOINT_PREFIX}{stem}-{digest}"
    return checkpoints_dir() / f"{CHECKPOINT_PREFIX}{validate_name(name).casefold()}"


def checkpoint_file(kind: str, epoch: int) -> str:
    """The name of a checkpoint's tensor file of ``kind`` written by epoch ``epoch``."""
    assert kind in CHECKPOINT_KINDS and 1 <= epoch < 10**9
    return f"{kind}-{epoch}.safetensors"


def parse_checkpoint_file(name: object) -> tuple[str, int] | None:
    """``(kind, epoch)`` of a checkpoint tensor file's name; None for any other value."""
    match = _CHECKPOINT_TENSORS.fullmatch(name) if isinstance(name, str) else None
    return (match.group(1), int(match.group(2))) if match else None


def _checkpoint_names(folder: Path) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """What ``folder`` holds, by name: the files zoo writes for a checkpoint (``state.json``,
    the tensor files, the temporary files of either), the temporary folders of tensor files
    with the one file each holds, and the other names (not zoo's)."""
    files: list[str] = []
    folders: list[tuple[str, str]] = []
    others: list[str] = []
    with os.scandir(folder) as scan:
        entries = sorted(scan, key=lambda e: e.name)
    for entry in entries:
        name = entry.name
        temp_of = name[1:].rsplit(".", 2)[0] if is_temp_name(name) else ""
        if entry.is_dir(follow_symlinks=False) and parse_checkpoint_file(temp_of):
            folders.append((name, temp_of))
        elif entry.is_file(follow_symlinks=False) and any(
            n == CHECKPOINT_STATE or parse_checkpoint_file(n) for n in (name, temp_of)
        ):
            files.append(name)
        else:
            others.append(name)
    return files, folders, others


def remove_checkpoint(
    folder: Path, keep: Sequence[str] = (), *, dry_run: bool = False
) -> tuple[int, list[str]]:
    """Delete the files zoo wrote for the checkpoint in ``folder`` but those named in ``keep``,
    then ``folder`` itself if that leaves it empty. Returns the bytes freed and the names left
    alone because zoo does not write them.

    A folder that is a link (or gone) is left alone, and so is every file whose name is not
    one zoo gives a checkpoint's files: nothing is followed, nothing zoo did not write goes.
    """
    try:
        check_folder(folder, what="the checkpoint folder")
        files, folders, others = _checkpoint_names(folder)
    except (ZooError, OSError):
        return 0, []
    files = [name for name in files if name not in keep]
    if dry_run:
        paths = [*(folder / n for n in files), *(folder / t / inner for t, inner in folders)]
        return sum(_size_of(path) for path in paths if os.path.lexists(path)), others
    freed = sum(remove_written(folder / temp, [inner]) for temp, inner in folders)
    return freed + remove_written(folder, files), others


def models_dir() -> Path:
    """``<ZOO_HOME>/models``: one folder per saved model."""
    return zoo_home() / "models"


def locks_dir() -> Path:
    """``<ZOO_HOME>/locks``: the lock files of entries (never inside the entries)."""
    return zoo_home() / "locks"


# ---------------------------------------------------------------- names


def validate_name(name: object) -> str:
    """Return ``name`` if it is a valid store name, else raise :class:`~zoo.InvalidNameError`.

    A name is 1-100 characters of letters, digits and ``. _ - + @ =``; it does not start with a
    dot or a ``-`` (it would read as a command-line option), end with a dot, contain ``..``, a
    path separator, a control character or a drive; it is not an absolute path and not a
    reserved device name (``CON``, ``nul.txt``, ``COM1``…). The message names the rule that was
    broken.
    """
    if not isinstance(name, str):
        raise InvalidNameError(f"a model name must be a string, got {type(name).__name__}")
    shown = repr(name) if len(name) <= 60 else repr(name[:57] + "...")

    def refuse(rule: str) -> InvalidNameError:
        return InvalidNameError(f"invalid model name {shown}: {rule}")

    if not name:
        raise refuse("it must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise refuse(f"it must be at most {MAX_NAME_LENGTH} characters (it has {len(name)})")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        raise refuse("it must not contain control characters (newline, NUL, tab…)")
    if os.path.isabs(name) or PureWindowsPath(name).is_absolute() or name.startswith("~"):
        raise refuse("it must not be an absolute path; a name is a single word")
    if "/" in name or "\\" in name:
        raise refuse(
            "it must not contain a path separator ('/' or '\\'); to save to a path, "
            "pass a pathlib.Path or a name ending in .safetensors"
        )
    if ":" in name or PureWindowsPath(name).drive:
        raise refuse("it must not contain ':' (drive letters and streams)")
    if ".." in name:
        raise refuse("it must not contain '..'")
    if name.startswith("."):
        raise refuse("it must not start with '.' (hidden and temporary files do)")
    if name.startswith("-"):
        raise refuse("it must not start with '-' (it would read as a command-line option)")
    if name.endswith(".") or name.endswith(" "):
        raise refuse("it must not end with '.' or a space")
    stem = name.split(".", 1)[0].upper()
    if stem in _RESERVED_DEVICES:
        raise refuse(f"{stem} is a reserved device name on Windows")
    bad = sorted(
        {c for c in name if not (c.isascii() and c.isalnum()) and c not in _ALLOWED_PUNCTUATION}
    )
    if bad:
        listed = " ".join(repr(c) for c in bad)
        raise refuse(
            f"it may only use ASCII letters, digits and {' '.join(_ALLOWED_PUNCTUATION)} "
            f"(found {listed})"
        )
    return name


def is_path_target(name_or_path: str | os.PathLike[str]) -> bool:
    """The rule that tells a path from a store name.

    An ``os.PathLike`` is a path; a ``str`` is a path when it contains a path separator
    (``/``, or ``\\`` on Windows) or ends in ``.safetensors``; any other ``str`` is a store name.
    """
    if isinstance(name_or_path, os.PathLike):
        return True
    if not isinstance(name_or_path, str):
        raise ZooError(f"expected a store name or a path, got {type(name_or_path).__name__}")
    separators = {os.sep, "/"} | ({os.altsep} if os.altsep else set())
    return any(s in name_or_path for s in separators) or name_or_path.endswith(".safetensors")


def check_inside(path: Path, root: Path) -> Path:
    """``path`` resolved; :class:`~zoo.StoreError` if it leaves ``root`` (e.g. via a symlink)
    or cannot be resolved (a symlink loop)."""
    try:
        real_root = root.resolve()
        real = path.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
        raise StoreError(f"{path} cannot be resolved: {exc}; refusing to follow it") from None
    if real != real_root and real_root not in real.parents:
        raise StoreError(
            f"{path} resolves to {real}, outside the store {real_root}; refusing to follow it "
            "(a symlink leaving the store?)"
        )
    return real


def entry_dir(name: str) -> Path:
    """The folder of store entry ``name`` (validated, checked to stay inside the store)."""
    validate_name(name)
    root = models_dir()
    path = root / name
    check_inside(path, root)
    return path


def model_file(name: str) -> Path:
    """``<entry>/model.safetensors`` of ``name``."""
    path = entry_dir(name) / MODEL_FILE
    check_inside(path, models_dir())
    return path


def entry_names() -> list[str]:
    """Names of the folders in the store that are not hidden or temporary, sorted.

    Raises :class:`~zoo.StoreError` when the store folder exists but cannot be listed.
    """
    root = models_dir()
    try:
        with os.scandir(root) as children:
            names = [c.name for c in children]
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StoreError(f"cannot list the store {root}: {exc.strerror or exc}") from None
    return sorted(n for n in names if not n.startswith("."))


def case_twin(name: str) -> str | None:
    """An existing entry whose name differs from ``name`` only in case, if any."""
    folded = name.casefold()
    for other in entry_names():
        if other != name and other.casefold() == folded:
            return other
    return None


def existing_entry(name: str) -> Path:
    """The ``model.safetensors`` of an existing entry, or :class:`~zoo.ModelNotFoundError`."""
    path = model_file(name)
    if not path.is_file():
        twin = case_twin(name)
        raise ModelNotFoundError("saved model", name, [twin] if twin else entry_names())
    return path


# ---------------------------------------------------------------- locks


def _lock_timeout(timeout: float | None) -> float:
    """``timeout``, else ``$ZOO_LOCK_TIMEOUT``, else 60; refused unless finite and >= 0."""
    if timeout is not None:
        source, raw = f"the lock timeout {timeout!r}", timeout
    else:
        env = os.environ.get(LOCK_TIMEOUT_ENV, "").strip()
        if not env:
            return DEFAULT_LOCK_TIMEOUT
        source, raw = f"{LOCK_TIMEOUT_ENV}={env!r}", env
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise StoreError(
            f"{source} is not a number of seconds to wait for a lock: it must be a finite "
            f"number >= 0 (default {DEFAULT_LOCK_TIMEOUT:g})"
        )
    return value


def lock_path(key: str) -> Path:
    """The lock file of a store name, or of a path target (``key`` = the absolute path).

    A name's lock file is named after the case-folded name: ``Cats`` and ``cats`` share
    ``cats.lock``, so saves of case twins serialise and the second one sees the first.
    """
    if is_path_target(key):
        digest = hashlib.sha256(os.fsencode(key)).hexdigest()[:32]
        return locks_dir() / f"path-{digest}.lock"
    validate_name(key)
    return locks_dir() / f"{key.casefold()}.lock"


def _entry_lock_path(name: str) -> Path:
    """The lock of an existing entry, also one whose name breaks today's rules."""
    try:
        return lock_path(name)
    except InvalidNameError:
        digest = hashlib.sha256(os.fsencode(name.casefold())).hexdigest()[:32]
        return locks_dir() / f"entry-{digest}.lock"


#: The descriptors of the locks this process holds, each with the token of its holder (see
#: :func:`_close_held_in_child`).
_HELD: dict[int, object] = {}


def _close_held_in_child() -> None:
    """In a forked child (a data loader's worker process): close the descriptors of the
    parent's locks. An ``flock`` belongs to the open file, which ``fork`` shares, so a child
    living on after the parent let a lock go (a persistent worker, kept alive by a traceback)
    would still hold it; closing the child's copy leaves the parent's lock as it is."""
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()  # the child's holders then leave their descriptor alone


if hasattr(os, "register_at_fork"):  # not on Windows (no fork there)
    os.register_at_fork(after_in_child=_close_held_in_child)


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise


@contextlib.contextmanager
def locked(
    key: str, *, timeout: float | None = None, blocking: bool = True
) -> Iterator[Path | None]:
    """Hold the exclusive lock of ``key`` (a store name or an absolute path) while in the block.

    Waits up to ``timeout`` seconds (default ``$ZOO_LOCK_TIMEOUT`` or 60; a value that is not
    a finite number >= 0 raises :class:`~zoo.StoreError`) and raises
    :class:`~zoo.LockTimeoutError` naming the lock file. With ``blocking=False`` it yields
    ``None`` at once when another process holds the lock. The lock is re-checked after it is
    taken, so a lock file removed meanwhile (``zoo rm``, ``zoo gc``) is never trusted.
    """
    with _holding(lock_path(key), key, timeout=timeout, blocking=blocking) as held:
        yield held


@contextlib.contextmanager
def _holding(
    path: Path, key: str, *, timeout: float | None, blocking: bool
) -> Iterator[Path | None]:
    wait = _lock_timeout(timeout) if blocking else 0.0
    deadline = time.monotonic() + wait
    delay = 0.005
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise StoreError(
                f"cannot create the lock file {path}: {exc.strerror or exc}; "
                f"set {ZOO_HOME_ENV} to a writable folder"
            ) from None
        if _try_lock(fd):
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                break
        os.close(fd)
        if not blocking:
            yield None
            return
        if time.monotonic() >= deadline:
            raise LockTimeoutError(
                f"timed out after {wait:g}s waiting for the lock {path} "
                f"({key!r} is being written by another process; if none is, remove the lock "
                f"file, or raise {LOCK_TIMEOUT_ENV})"
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    token = _HELD[fd] = object()
    try:
        yield path
    finally:
        if _HELD.get(fd) is token:  # not in a forked child, where it is closed already
            del _HELD[fd]
            os.close(fd)


def _remove_if_free(path: Path, *, dry_run: bool) -> bool | None:
    """Delete the lock file ``path`` if no process holds it (taken without waiting, never
    created, never followed): True if removed, False if held, None if it vanished."""
    flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    try:
        if not _try_lock(fd):
            return False
        try:
            if not os.path.samestat(os.fstat(fd), os.lstat(path)):
                return None
        except FileNotFoundError:
            return None
        if not dry_run:
            path.unlink()  # while holding it: a waiting writer re-checks and makes a new one
        return True
    finally:
        os.close(fd)


# ---------------------------------------------------------------- listing


@dataclass
class EntryInfo:
    """One store entry as ``zoo models`` shows it: its checked metadata (``meta``, read from
    the header alone), or for a broken entry (``ok`` False) the ``reason``."""

    name: str
    path: Path
    reason: str = ""
    size: int = 0
    meta: ZooMetadata | None = None

    @property
    def ok(self) -> bool:
        return self.meta is not None

    def to_dict(self) -> dict[str, Any]:
        meta = self.meta
        return {
            "name": self.name,
            "path": str(self.path),
            "ok": self.ok,
            "reason": self.reason or None,
            "backbone": meta.backbone if meta else None,
            "kind": meta.kind if meta else None,
            "num_classes": meta.num_classes if meta else None,
            "classes": meta.classes if meta else None,
            "policy": (meta.policy or None) if meta else None,
            "trained_fraction": meta.trained_fraction if meta and meta.num_params else None,
            "num_params": meta.num_params if meta else 0,
            "num_trained_params": meta.num_trained_params if meta else 0,
            "size": self.size,
            "created": (meta.created or None) if meta else None,
            "base": meta.base if meta else None,
        }


def entry_info(name: str) -> EntryInfo:
    """What the store knows about entry ``name``, from its header alone (no tensor is read,
    no plugin is imported).

    Never raises for a broken entry: ``ok`` is False and ``reason`` says what is wrong — even
    for an error zoo did not foresee (a bug must show as one broken entry, not hide the
    others). Tampered tensor bytes are only found by a full read (``zoo inspect``,
    ``zoo.load``).
    """

    root = models_dir()
    path = root / name
    info = EntryInfo(name=name, path=path)
    try:
        validate_name(name)
        check_inside(path, root)
        if not path.is_dir():
            info.reason = "not a folder (stray file in the store)"
            return info
        file = path / MODEL_FILE
        check_inside(file, root)
        if not os.path.lexists(file):
            info.reason = f"no {MODEL_FILE} (incomplete or damaged entry)"
            return info
        header = read_header(file)  # only a regular file is opened
        info.size = header.file_size
        info.meta = ZooMetadata.parse(header.metadata, source=str(file), shapes=header.shapes)
    except ZooError as exc:
        info.reason = str(exc).replace(f"{path}/", "").replace(str(path), name)
    except OSError as exc:
        info.reason = f"unreadable: {exc.strerror or exc}"
    except Exception as exc:  # a hostile file must not stop the listing
        info.reason = f"unreadable: unexpected {type(exc).__name__}: {exc}"
    return info


def list_saved() -> list[EntryInfo]:
    """Every entry of the store, sorted by name; broken ones are listed with their reason.

    Temporary files and folders (a save in progress, or one that was killed) are never listed;
    ``zoo gc`` removes the stale ones.
    """
    return [entry_info(name) for name in entry_names()]


def deltas_by_base() -> dict[str, list[str]]:
    """Store entry name -> the entries that are deltas of it (they need it to load).

    Built from one listing; a broken entry counts as no delta, so it never stops the others.
    """
    found: dict[str, list[str]] = {}
    for info in list_saved():
        meta = info.meta
        base = (meta.base if meta else None) or {}
        ref = base.get("ref")
        if (
            meta is not None
            and meta.kind == "delta"
            and base.get("kind") == "store"
            and isinstance(ref, str)
            and ref != info.name
        ):
            found.setdefault(ref, []).append(info.name)
    return found


def dependents(name: str) -> list[str]:
    """Entries that are deltas of store entry ``name`` (they need it to load)."""
    return deltas_by_base().get(name, [])


# ---------------------------------------------------------------- removal and cleanup


def _path_to_remove(name: str) -> Path:
    """The path of entry ``name`` for removal: a valid name, or exactly the name of a folder
    in the store (so an entry saved under an older, laxer rule can still be removed)."""
    root = models_dir()
    try:
        validate_name(name)
    except InvalidNameError:
        if not isinstance(name, str) or name not in entry_names():
            raise
    path = root / name
    if not os.path.lexists(path):
        twin = case_twin(name)
        raise ModelNotFoundError("saved model", name, [twin] if twin else entry_names())
    if not path.is_symlink():  # a link is removed as a link, wherever it points
        check_inside(path, root)
    return path


def _base_problem(name: str, needed_by: Sequence[str]) -> str:
    return (
        f"{name!r} is the base of the delta(s) {', '.join(map(repr, needed_by))}, which "
        "could no longer load; remove them first, or force the removal (zoo rm --force)"
    )


def removal_problems(names: Sequence[str], *, force: bool = False) -> dict[str, str]:
    """Why each of ``names`` cannot be removed; empty when all of them can.

    Checked for all names before any is removed (``zoo rm a b c``): an invalid or unknown
    name, or — unless ``force`` — the base of deltas that are not removed along with it.
    """
    problems: dict[str, str] = {}
    for name in names:
        try:
            _path_to_remove(name)
        except ZooError as exc:
            problems[name] = str(exc)
    if not force:
        removing = set(names)
        for base, deltas in deltas_by_base().items():
            kept = [d for d in deltas if d not in removing]
            if base in removing and kept and base not in problems:
                problems[base] = _base_problem(base, kept)
    return problems


def removal_order(names: Sequence[str]) -> list[str]:
    """``names`` (without repeats) with every delta before the base it needs, so that removing
    them in this order never leaves a delta without its base, even if one removal fails."""
    pending = list(dict.fromkeys(names))
    deltas = deltas_by_base()
    ordered: list[str] = []
    while pending:
        ready = [n for n in pending if not set(deltas.get(n, ())) & (set(pending) - {n})]
        ready = ready or pending[:1]  # a cycle (hostile metadata): keep the given order
        ordered.extend(ready)
        pending = [n for n in pending if n not in ready]
    return ordered


def remove(name: str, *, force: bool = False) -> Path:
    """Delete store entry ``name`` (its folder) and its lock file; returns the folder removed.

    Refuses (:class:`~zoo.StoreError`) while other entries are deltas of it, unless ``force``.
    A broken entry can be removed too, even one whose name breaks today's naming rules; an
    entry that is a symlink is removed as a link, never followed. Raises
    :class:`~zoo.ModelNotFoundError` if absent. When a file cannot be deleted (a read-only
    folder), the entry is put back in place and :class:`~zoo.StoreError` says why.
    """
    path = _path_to_remove(name)
    lock = _entry_lock_path(name)
    with _holding(lock, name, timeout=None, blocking=True):
        needed_by = [] if force else dependents(name)
        if needed_by:
            raise StoreError(_base_problem(name, needed_by))
        _remove_tree(path, name)
        with contextlib.suppress(OSError):
            lock.unlink()
    return path


def _remove_tree(path: Path, name: str) -> None:
    """Remove the entry at ``path``: renamed out of sight first, then deleted."""
    try:
        if path.is_symlink() or not path.is_dir():
            path.unlink()
            return
        trash = path.with_name(
            f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}-removing{TEMP_SUFFIX}"
        )
        os.replace(path, trash)  # the entry vanishes at once; the files go after
    except OSError as exc:
        raise StoreError(
            f"cannot remove {name!r}: {exc.strerror or exc} ({exc.filename or path}); the "
            "entry is unchanged (is the store read-only?)"
        ) from None
    failures = _delete_tree(trash)
    if not failures:
        return
    failed, exc = failures[0]
    reason = f"cannot remove {name!r}: cannot delete {failed}: {exc.strerror or exc}"
    try:
        os.replace(trash, path)
    except OSError:
        raise StoreError(
            f"{reason}; what is left of it is in {trash}, which zoo gc removes once it can "
            "be deleted"
        ) from None
    raise StoreError(
        f"{reason}; the entry was put back in place (make {path} writable, or remove it as "
        "its owner)"
    )


def _delete_tree(path: Path) -> list[tuple[str, OSError]]:
    """``shutil.rmtree`` (links inside are never followed), collecting what failed."""
    failures: list[tuple[str, OSError]] = []

    def record(failed: str, exc: BaseException) -> None:
        failures.append((failed, exc if isinstance(exc, OSError) else OSError(str(exc))))

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=lambda _f, failed, exc: record(failed, exc))
    else:  # pragma: no cover - Python 3.10 and 3.11
        shutil.rmtree(path, onerror=lambda _f, failed, info: record(failed, info[1]))
    return failures


@dataclass
class GcResult:
    """What ``zoo gc`` removed (or would remove with ``dry_run``) and what it left alone.

    ``repaired`` lists the ``config.json`` files rewritten because they described another
    version of their ``model.safetensors`` (a save killed between writing the two files);
    ``locks`` the lock files of entries that no longer exist (none held by a process).
    """

    removed: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    freed: int = 0
    repaired: list[Path] = field(default_factory=list)
    locks: list[Path] = field(default_factory=list)
    checkpoints: list[tuple[Path, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoints": [{"path": str(p), "reason": r} for p, r in self.checkpoints],
            "removed": [str(p) for p in self.removed],
            "skipped": [{"path": str(p), "reason": r} for p, r in self.skipped],
            "freed_bytes": self.freed,
            "repaired": [str(p) for p in self.repaired],
            "locks_removed": [str(p) for p in self.locks],
        }


def _size_of(path: Path) -> int:
    """Bytes of the regular files at or under ``path``; links are never followed (size 0)."""
    mode = os.lstat(path).st_mode
    if not stat.S_ISDIR(mode):
        return os.lstat(path).st_size if stat.S_ISREG(mode) else 0
    total = 0
    for folder, _dirs, files in os.walk(path):  # os.walk never descends into links
        for name in files:
            with contextlib.suppress(OSError):
                info = os.lstat(os.path.join(folder, name))
                total += info.st_size if stat.S_ISREG(info.st_mode) else 0
    return total


def _owner_of_temp(name: str) -> str | None:
    """The entry a temporary name belongs to (``.cats.…zoo-tmp`` -> ``cats``), if any."""
    inner = name[1:]
    try:
        return validate_name(inner.rsplit(".", 2)[0])
    except InvalidNameError:
        return None


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    return str(exc) if isinstance(exc, ZooError) else f"unexpected {type(exc).__name__}: {exc}"


def _leftovers(root: Path, result: GcResult) -> list[tuple[Path, str | None]]:
    """The temporary files and folders in the store and in its entries, with their owner."""
    found: list[tuple[Path, str | None]] = []
    try:
        with os.scandir(root) as scan:
            children = sorted(scan, key=lambda c: c.name)
    except OSError as exc:
        raise StoreError(f"cannot list the store {root}: {exc.strerror or exc}") from None
    for child in children:
        if is_temp_name(child.name):
            found.append((Path(child.path), _owner_of_temp(child.name)))
        elif not child.name.startswith(".") and child.is_dir(follow_symlinks=False):
            try:
                with os.scandir(child.path) as scan:
                    inner = sorted(c.name for c in scan if is_temp_name(c.name))
            except OSError as exc:
                result.skipped.append((Path(child.path), f"cannot list it: {_why(exc)}"))
                continue
            found.extend((Path(child.path) / name, child.name) for name in inner)
    return found


def _remove_leftover(path: Path, *, dry_run: bool) -> int:
    """Delete a temporary file or folder (a link as a link); returns the bytes it held."""
    size = _size_of(path)
    if not dry_run:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path)
        else:
            path.unlink()
    return size


def gc(*, dry_run: bool = False) -> GcResult:
    """Remove temporary files a killed or failed save left in the store; repair config files.

    Each leftover belongs to an entry; it is removed only while that entry's lock can be taken
    at once, so a save in progress is never disturbed (its files are reported as skipped). A
    ``config.json`` that describes another version than its ``model.safetensors`` (the save
    was killed between replacing the one and the other) is rewritten from the model's metadata.
    Lock files of entries that no longer exist are removed when no process holds them.
    Symbolic links are never followed (a linked leftover is removed as a link, sized 0); only
    regular files are read; what cannot be removed is reported in ``skipped`` with the reason.
    Checkpoints of interrupted adapt runs (``<ZOO_HOME>/tmp/adapt-<name>/``) that no run is
    using are removed too, listed in ``removed`` and, with what they held, in ``checkpoints``.
    """
    result = GcResult()
    _remove_checkpoints(result, dry_run=dry_run)
    root = models_dir()
    if root.is_dir() and not root.is_symlink():
        for path, owner in _leftovers(root, result):
            _collect(path, owner, result, dry_run=dry_run)
        for name in entry_names():
            _repair_entry(root, name, result, dry_run=dry_run)
    _remove_stale_locks(result, dry_run=dry_run)
    return result


def _checkpoint_reason(folder: Path) -> str:
    """What an adapt checkpoint holds, read from its ``state.json`` by the trust rule (the
    folder is a real one, the file a regular file no larger than the resume reads)."""
    unreadable = "checkpoint of an interrupted adapt run (unreadable or incomplete)"
    try:
        state = read_json_in(
            folder,
            CHECKPOINT_STATE,
            max_bytes=MAX_CHECKPOINT_STATE_BYTES,
            what="the checkpoint's state.json",
        )
        epoch, config = state["epoch"], state["config"]
        epochs, name = config["epochs"], config["name"]
    except (ZooError, KeyError, TypeError):
        return unreadable
    if not (isinstance(name, str) and all(type(n) is int for n in (epoch, epochs))):
        return unreadable
    shown = short_repr(name, 120)
    return (
        f"checkpoint of the interrupted adapt run saving as {shown} (epoch {epoch} of "
        f"{epochs} done; `zoo adapt ... --name {shown} --resume` would have continued it)"
    )


def _remove_checkpoints(result: GcResult, *, dry_run: bool) -> None:
    """Remove the checkpoints of interrupted adapt runs that no running adapt holds."""
    root = checkpoints_dir()
    if not root.is_dir() or root.is_symlink():
        return
    try:
        with os.scandir(root) as scan:
            names = sorted(c.name for c in scan if c.name.startswith(CHECKPOINT_PREFIX))
    except OSError as exc:
        result.skipped.append((root, f"cannot list it: {_why(exc)}"))
        return
    for name in names:
        path = root / name
        try:
            mode = os.lstat(path).st_mode
            if not stat.S_ISDIR(mode):
                kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a folder"
                result.skipped.append((path, f"{kind}, not a checkpoint zoo wrote; left alone"))
                continue
            with locked(str(path.absolute()), blocking=False) as held:
                if held is None:
                    result.skipped.append((path, "an adapt run is using this checkpoint"))
                    continue
                reason = _checkpoint_reason(path)
                freed, others = remove_checkpoint(path, dry_run=dry_run)
                result.freed += freed
                if others:
                    shown = ", ".join(short_repr(n, 40) for n in others[:3])
                    more = f" and {len(others) - 3} more" if len(others) > 3 else ""
                    result.skipped.append(
                        (path, f"holds what zoo did not write ({shown}{more}); left alone")
                    )
                    continue
                if not dry_run and os.path.lexists(path):
                    result.skipped.append((path, "still holds files after gc; left alone"))
                    continue
                result.removed.append(path)
                result.checkpoints.append((path, reason))
        except (OSError, ZooError) as exc:
            result.skipped.append((path, f"cannot remove it: {_why(exc)}"))


def _collect(path: Path, owner: str | None, result: GcResult, *, dry_run: bool) -> None:
    key = owner if owner is not None else "__gc__"
    try:
        with locked(key, blocking=False) as held:
            if held is None:
                result.skipped.append((path, f"{owner!r} is being saved right now"))
                return
            result.freed += _remove_leftover(path, dry_run=dry_run)
            result.removed.append(path)
    except (OSError, ZooError) as exc:  # e.g. a read-only store: report it, go on
        result.skipped.append((path, f"cannot remove it: {_why(exc)}"))


def _repair_entry(root: Path, name: str, result: GcResult, *, dry_run: bool) -> None:
    folder = root / name
    try:
        validate_name(name)
        check_inside(folder, root)
        with locked(name, blocking=False) as held:
            if held is not None and _repair_config(folder, dry_run=dry_run):
                result.repaired.append(folder / CONFIG_FILE)
    except ZooError:
        return  # a broken entry: zoo models reports it, gc leaves it alone
    except Exception as exc:  # one entry never stops the others
        result.skipped.append((folder / CONFIG_FILE, f"cannot check it: {_why(exc)}"))


def _remove_stale_locks(result: GcResult, *, dry_run: bool) -> None:
    folder = locks_dir()
    try:
        with os.scandir(folder) as scan:
            names = sorted(c.name for c in scan if c.name.endswith(".lock"))
    except FileNotFoundError:
        return
    except OSError as exc:
        result.skipped.append((folder, f"cannot list it: {_why(exc)}"))
        return
    try:
        live = {name.casefold() for name in entry_names()}
    except StoreError:
        return  # without the list of entries, no lock is known to be stale
    for name in names:
        if name.removesuffix(".lock") in live:
            continue
        path = folder / name
        try:
            if path.is_symlink() or not stat.S_ISREG(os.lstat(path).st_mode):
                result.skipped.append((path, "not a regular file; zoo never made it"))
            elif _remove_if_free(path, dry_run=dry_run):
                result.locks.append(path)
        except OSError as exc:
            result.skipped.append((path, f"cannot remove it: {_why(exc)}"))


def _config_hash(config: Path) -> str | None:
    """The ``content_sha256`` a ``config.json`` names; None if it is not a regular file (never
    followed), is larger than :data:`MAX_CONFIG_BYTES`, is not JSON, or names none."""
    try:
        data = read_json_in(
            config.parent, config.name, max_bytes=MAX_CONFIG_BYTES, what=CONFIG_FILE
        )
        value = data["zoo"]["content_sha256"]
    except (ZooError, KeyError, TypeError):
        return None
    return value if isinstance(value, str) else None


def _repair_config(folder: Path, *, dry_run: bool) -> bool:
    """Rewrite ``folder/config.json`` if it exists and does not name its model's content hash."""

    model = folder / MODEL_FILE
    if folder.is_symlink() or model.is_symlink() or not model.is_file():
        return False
    metadata = read_header(model).metadata
    if not is_zoo_metadata(metadata) or CONTENT_HASH_KEY not in metadata:
        return False
    config = folder / CONFIG_FILE
    if not os.path.lexists(config):
        return False  # zoo never leaves an entry without one; not ours to invent
    if _config_hash(config) == metadata[CONTENT_HASH_KEY]:
        return False
    if not dry_run:
        atomic_write_bytes(config, [config_json(metadata).encode("utf-8")])
    return True
