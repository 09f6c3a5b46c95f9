"""The model store: ``<ZOO_HOME>/models/<name>/`` entries, names, locks, listing, removal.

An entry is a folder holding ``model.safetensors`` (the single source of truth) and
``config.json`` (timm-style, regenerated from the file's metadata, so the folder also loads in
plain timm). ``ZOO_HOME`` defaults to a per-user data folder (:func:`zoo_home`).

Names are checked by one function, :func:`validate_name`, whose refusals name the broken rule;
every path the store builds is resolved and checked to stay inside the store. Writers hold a
per-entry lock (``<ZOO_HOME>/locks/<name>.lock``, ``flock``); readers need none, because files
are only ever replaced whole (``os.replace``). See ``docs/store.md``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import sys
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any

from zoo.errors import (
    InvalidNameError,
    LockTimeoutError,
    ModelNotFoundError,
    StoreError,
    ZooError,
)
from zoo.fileformat import TEMP_SUFFIX, is_temp_name, read_header

ZOO_HOME_ENV = "ZOO_HOME"
LOCK_TIMEOUT_ENV = "ZOO_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 60.0
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
MAX_NAME_LENGTH = 100
_ALLOWED_PUNCTUATION = "._-+@="
_RESERVED_DEVICES = {
    "CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$",
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
    dot, end with a dot, contain ``..``, a path separator, a control character or a drive; it is
    not an absolute path and not a reserved device name (``CON``, ``nul.txt``, ``COM1``…). The
    message names the rule that was broken.
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
        raise refuse("it must not contain a path separator ('/' or '\\'); to save to a path, "
                     "pass a pathlib.Path or a name ending in .safetensors")
    if ":" in name or PureWindowsPath(name).drive:
        raise refuse("it must not contain ':' (drive letters and streams)")
    if ".." in name:
        raise refuse("it must not contain '..'")
    if name.startswith("."):
        raise refuse("it must not start with '.' (hidden and temporary files do)")
    if name.endswith(".") or name.endswith(" "):
        raise refuse("it must not end with '.' or a space")
    stem = name.split(".", 1)[0].upper()
    if stem in _RESERVED_DEVICES:
        raise refuse(f"{stem} is a reserved device name on Windows")
    bad = sorted({c for c in name if not (c.isascii() and c.isalnum())
                  and c not in _ALLOWED_PUNCTUATION})
    if bad:
        listed = " ".join(repr(c) for c in bad)
        raise refuse(f"it may only use ASCII letters, digits and {' '.join(_ALLOWED_PUNCTUATION)} "
                     f"(found {listed})")
    return name


def is_path_target(name_or_path: str | os.PathLike[str]) -> bool:
    """The rule that tells a path from a store name.

    An ``os.PathLike`` is a path; a ``str`` is a path when it contains a path separator
    (``/``, or ``\\`` on Windows) or ends in ``.safetensors``; any other ``str`` is a store name.
    """
    if isinstance(name_or_path, os.PathLike):
        return True
    if not isinstance(name_or_path, str):
        raise ZooError(
            f"expected a store name or a path, got {type(name_or_path).__name__}"
        )
    separators = {os.sep, "/"} | ({os.altsep} if os.altsep else set())
    return any(s in name_or_path for s in separators) or name_or_path.endswith(".safetensors")


def check_inside(path: Path, root: Path) -> Path:
    """``path`` resolved; :class:`~zoo.StoreError` if it leaves ``root`` (e.g. via a symlink)."""
    real_root = root.resolve()
    real = path.resolve()
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
    """Names of the folders in the store that are not hidden or temporary, sorted."""
    root = models_dir()
    try:
        children = list(os.scandir(root))
    except FileNotFoundError:
        return []
    return sorted(c.name for c in children if not c.name.startswith("."))


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
    if timeout is not None:
        return timeout
    try:
        return float(os.environ.get(LOCK_TIMEOUT_ENV, DEFAULT_LOCK_TIMEOUT))
    except ValueError:
        return DEFAULT_LOCK_TIMEOUT


def lock_path(key: str) -> Path:
    """The lock file of a store name, or of a path target (``key`` = the absolute path)."""
    if is_path_target(key):
        digest = hashlib.sha256(os.fsencode(key)).hexdigest()[:32]
        return locks_dir() / f"path-{digest}.lock"
    validate_name(key)
    return locks_dir() / f"{key}.lock"


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
def locked(key: str, *, timeout: float | None = None, blocking: bool = True
           ) -> Iterator[Path | None]:
    """Hold the exclusive lock of ``key`` (a store name or an absolute path) while in the block.

    Waits up to ``timeout`` seconds (default ``$ZOO_LOCK_TIMEOUT`` or 60) and raises
    :class:`~zoo.LockTimeoutError` naming the lock file. With ``blocking=False`` it yields
    ``None`` at once when another process holds the lock. The lock is re-checked after it is
    taken, so a lock file removed meanwhile (``zoo rm``, ``zoo gc``) is never trusted.
    """
    path = lock_path(key)
    deadline = time.monotonic() + _lock_timeout(timeout)
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
                f"timed out after {_lock_timeout(timeout):g}s waiting for the lock {path} "
                f"({key!r} is being written by another process; if none is, remove the lock "
                f"file, or raise {LOCK_TIMEOUT_ENV})"
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    try:
        yield path
    finally:
        os.close(fd)


# ---------------------------------------------------------------- listing


@dataclass
class EntryInfo:
    """One store entry as ``zoo models`` shows it; ``ok=False`` entries carry a ``reason``."""

    name: str
    path: Path
    ok: bool
    reason: str = ""
    backbone: str = ""
    kind: str = ""
    num_classes: int | None = None
    classes: list[str] | None = None
    policy: str = ""
    trained_fraction: float | None = None
    num_params: int = 0
    num_trained_params: int = 0
    size: int = 0
    created: str = ""
    base: dict[str, Any] | None = None
    metadata: dict[str, str] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "ok": self.ok,
            "reason": self.reason or None,
            "backbone": self.backbone or None,
            "kind": self.kind or None,
            "num_classes": self.num_classes,
            "classes": self.classes,
            "policy": self.policy or None,
            "trained_fraction": self.trained_fraction,
            "num_params": self.num_params,
            "num_trained_params": self.num_trained_params,
            "size": self.size,
            "created": self.created or None,
            "base": self.base,
        }


def entry_info(name: str) -> EntryInfo:
    """What the store knows about entry ``name``, from its header alone (no tensor is read).

    Never raises for a broken entry: ``ok`` is False and ``reason`` says what is wrong.
    Tampered tensor bytes are only found by a full read (``zoo inspect``, ``zoo.load``).
    """
    from zoo.metadata import ZooMetadata

    root = models_dir()
    path = root / name
    info = EntryInfo(name=name, path=path, ok=False)
    try:
        validate_name(name)
        check_inside(path, root)
        if not path.is_dir():
            info.reason = "not a folder (stray file in the store)"
            return info
        file = path / MODEL_FILE
        check_inside(file, root)
        if not file.is_file():
            info.reason = f"no {MODEL_FILE} (incomplete or damaged entry)"
            return info
        header = read_header(file)
        info.size = header.file_size
        info.metadata = header.metadata
        meta = ZooMetadata.parse(header.metadata, source=str(file))
    except ZooError as exc:
        info.reason = str(exc).replace(f"{path}/", "").replace(str(path), name)
        return info
    except OSError as exc:
        info.reason = f"unreadable: {exc.strerror or exc}"
        return info
    info.ok = True
    info.backbone = meta.backbone
    info.kind = meta.kind
    info.num_classes = meta.num_classes
    info.classes = meta.classes
    info.policy = meta.policy
    info.trained_fraction = meta.trained_fraction if meta.num_params else None
    info.num_params = meta.num_params
    info.num_trained_params = meta.num_trained_params
    info.created = meta.created
    info.base = meta.base
    return info


def list_saved() -> list[EntryInfo]:
    """Every entry of the store, sorted by name; broken ones are listed with their reason.

    Temporary files and folders (a save in progress, or one that was killed) are never listed;
    ``zoo gc`` removes the stale ones.
    """
    return [entry_info(name) for name in entry_names()]


def dependents(name: str) -> list[str]:
    """Entries that are deltas of store entry ``name`` (they need it to load)."""
    found = []
    for info in list_saved():
        base = info.base or {}
        if info.ok and info.kind == "delta" and base.get("kind") == "store" and \
                base.get("ref") == name and info.name != name:
            found.append(info.name)
    return found


# ---------------------------------------------------------------- removal and cleanup


def remove(name: str, *, force: bool = False) -> Path:
    """Delete store entry ``name`` (its folder); returns the folder removed.

    Refuses (:class:`~zoo.StoreError`) while other entries are deltas of it, unless ``force``.
    A broken entry can be removed too; an entry that is a symlink is removed as a link, never
    followed. Raises :class:`~zoo.ModelNotFoundError` if absent.
    """
    link = models_dir() / validate_name(name)
    if link.is_symlink():  # the link goes, never what it points to (maybe outside the store)
        with locked(name):
            link.unlink()
        return link
    path = entry_dir(name)
    if not path.exists() and not path.is_symlink():
        twin = case_twin(name)
        raise ModelNotFoundError("saved model", name, [twin] if twin else entry_names())
    needed_by = dependents(name)
    if needed_by and not force:
        raise StoreError(
            f"{name!r} is the base of the delta(s) {', '.join(map(repr, needed_by))}, which "
            "could no longer load; remove them first, or force the removal (zoo rm --force)"
        )
    with locked(name):
        _remove_tree(path)
        with contextlib.suppress(OSError):
            lock_path(name).unlink()
    return path


def _remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
        return
    trash = path.with_name(f".{path.name}.{os.getpid()}-removing{TEMP_SUFFIX}")
    os.replace(path, trash)  # the entry vanishes at once; the files go after
    shutil.rmtree(trash, ignore_errors=True)


@dataclass
class GcResult:
    """What ``zoo gc`` removed (or would remove with ``dry_run``) and what it left alone.

    ``repaired`` lists the ``config.json`` files rewritten because they described another
    version of their ``model.safetensors`` (a save killed between writing the two files).
    """

    removed: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    freed: int = 0
    repaired: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "removed": [str(p) for p in self.removed],
            "skipped": [{"path": str(p), "reason": r} for p, r in self.skipped],
            "freed_bytes": self.freed,
            "repaired": [str(p) for p in self.repaired],
        }


def _size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _owner_of_temp(name: str) -> str | None:
    """The entry a temporary name belongs to (``.cats.…zoo-tmp`` -> ``cats``), if any."""
    inner = name[1:]
    try:
        return validate_name(inner.rsplit(".", 2)[0])
    except InvalidNameError:
        return None


def gc(*, dry_run: bool = False) -> GcResult:
    """Remove temporary files a killed or failed save left in the store; repair config files.

    Each leftover belongs to an entry; it is removed only while that entry's lock can be taken
    at once, so a save in progress is never disturbed (its files are reported as skipped). A
    ``config.json`` that describes another version than its ``model.safetensors`` (the save
    was killed between replacing the one and the other) is rewritten from the model's metadata.
    """
    result = GcResult()
    root = models_dir()
    if not root.is_dir():
        return result
    candidates: list[tuple[Path, str | None]] = []
    for child in sorted(root.iterdir()):
        if is_temp_name(child.name):
            candidates.append((child, _owner_of_temp(child.name)))
        elif child.is_dir() and not child.is_symlink() and not child.name.startswith("."):
            for inner in sorted(child.iterdir()):
                if is_temp_name(inner.name):
                    candidates.append((inner, child.name))
    for path, owner in candidates:
        key = owner if owner is not None else "__gc__"
        try:
            with locked(key, blocking=False) as held:
                if held is None:
                    result.skipped.append((path, f"{owner!r} is being saved right now"))
                    continue
                size = _size_of(path)
                if not dry_run:
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path)
                    else:
                        path.unlink()
                result.removed.append(path)
                result.freed += size
        except OSError as exc:
            result.skipped.append((path, f"cannot remove: {exc.strerror or exc}"))
    for name in entry_names():
        try:
            check_inside(root / name, root)
            with locked(name, blocking=False) as held:
                if held is not None and _repair_config(root / name, dry_run=dry_run):
                    result.repaired.append(root / name / CONFIG_FILE)
        except (OSError, ZooError):
            continue  # a broken entry: zoo models reports it, gc leaves it alone
    return result


def _repair_config(folder: Path, *, dry_run: bool) -> bool:
    """Rewrite ``folder/config.json`` if it exists and does not name its model's content hash."""
    import json

    from zoo.fileformat import CONTENT_HASH_KEY, atomic_write_bytes
    from zoo.metadata import config_json, is_zoo_metadata

    model = folder / MODEL_FILE
    if folder.is_symlink() or not model.is_file():
        return False
    metadata = read_header(model).metadata
    if not is_zoo_metadata(metadata) or CONTENT_HASH_KEY not in metadata:
        return False
    config = folder / CONFIG_FILE
    if not config.exists():
        return False  # zoo never leaves an entry without one; not ours to invent
    try:
        current = json.loads(config.read_text(encoding="utf-8"))["zoo"]["content_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        current = None
    if current == metadata[CONTENT_HASH_KEY]:
        return False
    if not dry_run:
        atomic_write_bytes(config, [config_json(metadata).encode("utf-8")])
    return True
