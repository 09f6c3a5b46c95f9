"""The one trust rule for every file zoo did not write in this process.

Model files, checkpoint folders and their files, PEFT and hub folders, the store's ``tmp/``:
anything zoo reads from a folder it does not own outright is untrusted input, and every surface
reads it through these functions instead of a rule of its own:

* the folder itself is a real directory, not a symbolic link (:func:`check_folder`);
* a file inside it is named by a plain file name — no separator, no ``..``, no NUL
  (:func:`plain_name`) — and opened without following a link, non-blocking, and only when it is
  a regular file (a FIFO, a device or a socket is refused before a byte is read); a path a
  file lists (a manifest's rows) is relative, of plain names, and goes through no link
  (:func:`path_in`);
* its size is checked against a limit before reading (:func:`read_bytes_in`,
  :func:`read_json_in`), and tensors are read by zoo's own safetensors reader
  (:func:`read_tensors_in`), with its header, seal and memory checks (:func:`read_header_in`
  reads the header alone, to check shapes before any tensor is allocated);
* the one exception is the Hugging Face Hub cache's own layout: a file of a cached snapshot
  (``models--ORG--NAME/snapshots/REV/...``) is a link into that repository's ``blobs/`` folder,
  and such a link is followed only to a regular file there (:func:`hub_blob`);
* zoo deletes only the files it wrote, by name (:func:`remove_written`), and a folder it is
  about to write into is refused up front when it is a link or not a folder
  (:func:`own_folder`).

Every refusal is a :class:`~zoo.ZooError` (a :class:`~zoo.CorruptFileError` for a bad file)
that names the path and what was wrong; no message echoes bytes of the file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

from zoo.core import checks
from zoo.errors import CorruptFileError, ModelNotFoundError, ZooError
from zoo.io.fileformat import Header, SavedFile, kind_of, open_regular, read_file, read_header

#: The longest file name zoo accepts inside a folder (the common file-system limit).
MAX_NAME_LENGTH = 255


def check_folder(folder: str | os.PathLike[str], *, what: str, hint: str | None = None) -> Path:
    """``folder`` as a ``Path`` if it is a real directory (not a link to one).

    A missing folder raises :class:`~zoo.ModelNotFoundError`; a link, a file or a special file
    a :class:`~zoo.ZooError` that names it, followed by ``hint`` (by default: pass the real
    folder, or a folder). ``what`` says what the folder is ("the PEFT folder", "the checkpoint
    folder") for the message.
    """
    path = Path(folder)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        raise ModelNotFoundError(what, str(path)) from None
    except OSError as exc:
        raise ZooError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        return path
    if hint is None:
        hint = (
            "zoo does not follow links out of a folder it reads — pass the real folder"
            if stat.S_ISLNK(mode)
            else "pass a folder"
        )
    raise ZooError(f"{what} {path} is {kind_of(mode, 'an odd file')}, not a folder; {hint}")


def plain_name(name: object, *, what: str) -> str:
    """``name`` if it is a plain file name (no separator, not ``.``/``..``, no NUL, at most
    255 characters), else :class:`~zoo.CorruptFileError`: a file listed in untrusted data
    (``state.json``, a PEFT config) never names a path outside its folder."""
    separators = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or "\0" in name
        or len(name) > MAX_NAME_LENGTH
        or any(s in name for s in separators)
    ):
        shown = repr(name) if isinstance(name, str) and len(name) <= 80 else type(name).__name__
        raise CorruptFileError(
            f"{what} names the file {shown}, which is not a plain file name inside its folder; "
            "zoo reads only files named inside the folder"
        )
    return name


def path_in(folder: Path, relative: object, *, what: str) -> Path:
    """``folder/relative`` for a path listed in untrusted data (a manifest's row), if it stays
    inside ``folder``: a relative path (``/`` or ``\\`` separated; ``.`` and empty parts are
    dropped) of plain names (:func:`plain_name`: no ``..``, no NUL) through no symbolic link
    (each part that exists is checked with ``lstat``). Otherwise
    :class:`~zoo.CorruptFileError` (``what`` names the path in the message). A part that does
    not exist ends the check: opening the file says so."""
    if not isinstance(relative, str) or not relative.strip() or len(relative) > 4096:
        shown = repr(relative) if isinstance(relative, str) else type(relative).__name__
        raise CorruptFileError(f"{what} {shown[:80]} is not a path")
    if os.path.isabs(relative) or relative.startswith(("/", "\\")) or relative[1:2] == ":":
        raise CorruptFileError(
            f"{what} {relative!r} is an absolute path; zoo reads only paths relative to the "
            "folder of the file that lists them"
        )
    parts = [p for p in relative.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts:
        raise CorruptFileError(f"{what} {relative!r} names no file")
    for part in parts:
        try:
            plain_name(part, what=what)
        except CorruptFileError:
            raise CorruptFileError(
                f"{what} {relative!r} leaves its folder or holds an invalid name ({part!r}); "
                "zoo reads only files inside the folder of the file that lists them"
            ) from None
    path = folder
    for part in parts:
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            break  # missing (or unreadable): opening it names the file and the reason
        if stat.S_ISLNK(mode):
            raise CorruptFileError(
                f"{what} {relative!r} goes through a symbolic link ({str(path)!r}); zoo does "
                "not follow links out of a folder it reads: list the real file"
            )
    return folder.joinpath(*parts)


def open_in(folder: Path, name: str, *, what: str) -> BinaryIO:
    """Open the regular file ``folder/name`` for reading, never following a link.

    ``name`` must be a plain name (:func:`plain_name`); the file must be a regular file (a
    symbolic link, FIFO, device or socket raises :class:`~zoo.CorruptFileError` before any byte
    is read); a missing file raises :class:`~zoo.ModelNotFoundError`.
    """
    return open_regular(_real(folder, plain_name(name, what=what)), follow_symlinks=False)


def hub_blob(folder: Path, name: str) -> Path | None:
    """The file a cached Hub snapshot's ``folder/name`` stands for, or None.

    The Hub cache keeps each file once, in ``models--ORG--NAME/blobs/``, and a snapshot
    (``models--ORG--NAME/snapshots/REV/``, and the folders inside it) holds links to them. When
    ``folder`` lies in such a snapshot and ``folder/name`` is a link to a regular file directly
    in that repository's ``blobs/``, that file is returned; anything else (a link elsewhere, to
    a link, to a folder) is None, and the caller refuses the link as it refuses every link.
    """
    path = folder / name
    if not os.path.islink(path):
        return None
    snapshot = folder
    for _ in range(4):  # a snapshot's subfolders (a base beside an adapter) are a level or two
        if snapshot.parent.name == "snapshots" and snapshot.parent.parent.name.startswith(
            "models--"
        ):
            break
        snapshot = snapshot.parent
    else:
        return None
    blobs = os.path.realpath(snapshot.parent.parent / "blobs")
    target = os.path.realpath(path)
    try:
        regular = stat.S_ISREG(os.lstat(target).st_mode)
    except OSError:
        return None
    return Path(target) if regular and os.path.dirname(target) == blobs else None


def file_in(folder: Path, name: str, *, what: str) -> Path:
    """The path of the regular file ``folder/name`` (or the Hub blob it stands for), for a
    reader that opens a path itself (zoo's model loader): a link elsewhere, a folder or a
    special file raises :class:`~zoo.CorruptFileError`, a missing file
    :class:`~zoo.ModelNotFoundError`."""
    with open_in(folder, name, what=what):
        pass
    return _real(folder, name)


def _real(folder: Path, name: str) -> Path:
    """``folder/name``, or the Hub blob it links to (:func:`hub_blob`)."""
    return hub_blob(folder, name) or folder / name


def read_bytes_in(folder: Path, name: str, *, max_bytes: int, what: str) -> bytes:
    """The bytes of ``folder/name`` (see :func:`open_in`), refused before reading when the
    file is larger than ``max_bytes``."""
    with open_in(folder, name, what=what) as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise CorruptFileError(
                f"{folder / name}: {size} bytes, over the {max_bytes}-byte limit for {what}; "
                "not read"
            )
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # the file grew while it was read
        raise CorruptFileError(f"{folder / name}: over the {max_bytes}-byte limit for {what}")
    return data


def read_json_in(folder: Path, name: str, *, max_bytes: int, what: str) -> Any:
    """The JSON value of ``folder/name``: bounded in size, UTF-8, every number finite, every
    string valid Unicode (:func:`zoo.core.checks.loads`).

    A file that is not valid JSON raises :class:`~zoo.CorruptFileError` naming the file (the
    parser's position, never the file's bytes).
    """
    raw = read_bytes_in(folder, name, max_bytes=max_bytes, what=what)
    try:
        return checks.loads(raw.decode("utf-8"), what)
    except UnicodeDecodeError:
        raise CorruptFileError(f"{folder / name}: {what} is not UTF-8 text") from None
    except checks.Invalid as exc:
        raise CorruptFileError(f"{folder / name}: {exc}") from None


def read_tensors_in(folder: Path, name: str, *, what: str, verify: bool = True) -> SavedFile:
    """Read the safetensors file ``folder/name`` with zoo's reader (header limits, seal,
    memory check), never following a link: see :func:`open_in`."""
    plain_name(name, what=what)
    return read_file(_real(folder, name), verify=verify, follow_symlinks=False)


def read_header_in(folder: Path, name: str, *, what: str) -> Header:
    """Only the header of the safetensors file ``folder/name`` (names, dtypes and shapes of its
    tensors, and its metadata), checked by zoo's reader, never following a link: no tensor data
    is read, so a caller can check the shapes before anything is allocated."""
    plain_name(name, what=what)
    return read_header(_real(folder, name), follow_symlinks=False)


def own_folder(folder: Path, *, what: str) -> Path:
    """Make sure ``folder`` (and its parent) can be written by zoo: create what is missing,
    refuse a link or a non-folder at either place up front, before any work is done.

    zoo made neither a link nor a file there, so the refusal asks to move it out of the way;
    nothing is written through the link and nothing in it is deleted.
    """
    hint = (
        "zoo writes only into a real folder of its own, never through a link or over a file; "
        "move it out of the way (zoo did not make it) and run again"
    )
    for path in (folder.parent, folder):
        try:
            path.mkdir(exist_ok=True)
        except FileExistsError:
            pass  # a file or a dangling link there: check_folder below names it
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise ZooError(f"cannot create {what} {path}: {exc.strerror or exc}") from None
        check_folder(path, what=what, hint=hint)
    return folder


def remove_written(folder: Path, names: Iterable[str]) -> int:
    """Delete the files ``names`` that zoo wrote in ``folder`` (by name, never following a
    link), then the folder itself if that leaves it empty. Anything else in it stays: a name
    that is now a link, a folder or a special file is not what zoo wrote and is left alone.
    Returns the bytes of the files removed."""
    try:
        check_folder(folder, what="the folder")
    except ZooError:
        return 0  # gone, or replaced by a link: nothing of zoo's to delete there
    freed = 0
    for name in names:
        with contextlib.suppress(OSError, CorruptFileError):
            path = folder / plain_name(name, what="the folder")
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode):
                os.unlink(path)
                freed += info.st_size
    with contextlib.suppress(OSError):
        folder.rmdir()  # only when empty
    return freed
