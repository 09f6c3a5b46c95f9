"""Pieces of the trust-boundary tests: calls guarded against hangs, and calls as an
unprivileged user.

A call that would hang (opening a FIFO, reading ``/dev/zero``, waiting on a lock for ever) runs
in a forked child that is killed after ``HANG`` seconds, so a regression fails the test loudly
instead of hanging the suite; the child reports what each call raised or returned. No test
asserts how long a call took: that is measured by ``benchmarks/malformed_corpus.py``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import shutil
import struct
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reliability_helpers import FORK, child_init

#: Seconds after which a child is declared hung and killed: a hang guard, never an assertion
#: about speed (the calls it guards take milliseconds; a hang would last for ever). Generous so
#: that a loaded machine never trips it.
HANG = 300.0
#: The user and group an unprivileged child runs as when the tests run as root.
NOBODY = 65534


@dataclass
class Outcome:
    """What one call did: ``error`` is the exception's class names (MRO), empty when it
    returned; ``message`` its text (or the returned value's repr); ``value`` what it returned."""

    error: list[str]
    message: str
    value: Any = None

    def raised(self, name: str) -> bool:
        return name in self.error


def _outcome(call: Callable[[], Any]) -> Outcome:
    try:
        value = call()
    except BaseException as exc:  # the child reports everything, even SystemExit
        return Outcome([c.__name__ for c in type(exc).__mro__], str(exc))
    try:
        pickle.dumps(value)
    except Exception:  # sent back as its repr only
        value = None
    return Outcome([], repr(value)[:500], value)


def _child(calls: Mapping[str, Callable[[], Any]], writer: Any, user: int | None) -> None:
    child_init()
    if user is not None and os.geteuid() == 0:
        os.setgroups([])
        os.setgid(user)
        os.setuid(user)
    writer.send({name: _outcome(call) for name, call in calls.items()})
    writer.close()


def run_bounded(
    calls: Mapping[str, Callable[[], Any]], *, user: int | None = None
) -> dict[str, Outcome]:
    """Run ``calls`` one after the other in a forked child (as ``user`` when root); the child
    is killed and the test fails if they hang (more than :data:`HANG` seconds in all)."""
    reader, writer = FORK.Pipe(duplex=False)
    child = FORK.Process(target=_child, args=(calls, writer, user))
    child.start()
    writer.close()
    try:
        if not reader.poll(HANG):
            raise AssertionError(f"hung: {', '.join(calls)} did not finish in {HANG:g}s")
        return reader.recv()
    finally:
        if child.is_alive():
            child.kill()
        child.join()


def cli(*argv: str) -> tuple[int, str, str]:
    """Run ``zoo ARGV`` in this process (a child of :func:`run_bounded`): status, out, err."""
    from zoo.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(argv))
    return status, out.getvalue(), err.getvalue()


def write_raw(path: Path, doc: Any, data: bytes = b"", *, raw: bytes | None = None) -> Path:
    """A safetensors file with ``doc`` as its header (or the header bytes ``raw``)."""
    header = raw if raw is not None else json.dumps(doc).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


@contextlib.contextmanager
def open_tree() -> Iterator[Path]:
    """A fresh folder every user can enter (pytest's own tmp folders are private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="zoo-trust-"))
    os.chmod(folder, 0o755)
    try:
        yield folder
    finally:
        for here, dirs, _files in os.walk(folder):
            for name in dirs:
                with contextlib.suppress(OSError):
                    os.chmod(os.path.join(here, name), 0o755, follow_symlinks=False)
        shutil.rmtree(folder, ignore_errors=True)


def warm_up_cli() -> None:
    """Import everything ``zoo models``/``rm``/``gc`` need, so a child that dropped its
    privileges never has to read a module file it may not be allowed to read."""
    for argv in (
        ["models"],
        ["models", "--json"],
        ["gc", "--dry-run"],
        ["rm", "no-such"],
        ["rm", "no-such", "--json"],
    ):
        cli(*argv)
    sys.stdout.flush()
