"""Shared pieces of the reliability suite: a tiny real plugin, versioned models, fault injection.

The backbone ``rel:tiny`` (conv-bn-linear) is registered through the real hooks and builds in
a millisecond, so a test can save and load it hundreds of times. A *version* is that model
with every tensor filled with one number and the version's label as its first class name, so
a loaded model tells which save it came from and whether every tensor agrees (not torn).

Processes are forked from the test process (``multiprocessing`` "fork" context): a child
starts in milliseconds with torch, zoo and the tiny catalog already loaded, which is what lets
the suite kill dozens of real saving processes within its time budget.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import multiprocessing
import os
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

import zoo
from zoo.io import store

PLUGIN_NAME = "rel"
BACKBONE = "rel:tiny"
FORK = multiprocessing.get_context("fork")


def build_tiny(
    num_classes: int | None = None, pretrained: bool | str = False, width: int = 4
) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 3),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, num_classes or 3),
    )


class TinyPlugin:
    """A real plugin object: one backbone, registered through ``zoo_register_backbones``."""

    @staticmethod
    @zoo.hookimpl
    def zoo_register_backbones(register: Callable[[Any], None]) -> None:
        register(
            zoo.BackboneSpec(
                name="tiny",
                create=build_tiny,
                head="5",
                summary="conv-bn-linear, for reliability tests",
            )
        )


# ---------------------------------------------------------------- versions


def make_version(value: int) -> nn.Module:
    """The tiny model with every tensor set to ``value``; its label is ``v<value>``."""
    model = zoo.create(BACKBONE, num_classes=2)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.fill_(value)
    model.zoo.classes = [label(value), "other"]
    return model


def label(value: int) -> str:
    return f"v{value}"


def version_of(model: nn.Module) -> str:
    """The label of a loaded version; fails if any tensor disagrees with it (a torn read)."""
    name = model.zoo.classes[0]
    value = int(name[1:])
    for key, tensor in model.state_dict().items():
        assert torch.all(tensor == value), f"{key} of {name} holds other values: torn version"
    return name


def save_version(value: int, name: str, **kwargs: Any) -> Path:
    return zoo.save(make_version(value), name, overwrite=True, **kwargs)


# ---------------------------------------------------------------- store state


def store_listing() -> dict[str, store.EntryInfo]:
    return {entry.name: entry for entry in store.list_saved()}


def temp_leftovers() -> list[Path]:
    """Every zoo temporary file or folder under the models folder (not those inside one)."""
    root = store.models_dir()
    if not root.exists():
        return []
    temps = [p for p in root.rglob("*") if p.name.endswith(".zoo-tmp")]
    return sorted(p for p in temps if not any(q in p.parents for q in temps))


def config_matches_model(name: str) -> bool:
    import json

    from zoo.io.fileformat import read_header

    config = json.loads((store.entry_dir(name) / store.CONFIG_FILE).read_text())
    return (
        config["zoo"]["content_sha256"]
        == read_header(store.model_file(name)).metadata["zoo.content_sha256"]
    )


def tree_snapshot(root: Path, *, skip: tuple[Path, ...] = ()) -> dict[str, str]:
    """Every path under ``root`` (relative) -> kind and content hash; symlinks not followed."""
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        for item in [*dirnames, *filenames]:
            path = here / item
            if path in skip:
                continue
            rel = str(path.relative_to(root))
            if path.is_symlink():
                found[rel] = "link:" + os.readlink(path)
            elif path.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = "file:" + hashlib.sha256(path.read_bytes()).hexdigest()
    return found


# ---------------------------------------------------------------- fault injection

#: The file-system operations a save goes through, where a fault can be injected.
IO_POINTS: tuple[tuple[Any, str], ...] = (
    (os, "open"),
    (os, "fsync"),
    (os, "replace"),
    (os, "rename"),
    (os, "chmod"),
    (os, "mkdir"),
    (tempfile, "mkstemp"),
    (tempfile, "mkdtemp"),
)


class _CountingFile:
    """A binary file whose every ``write`` is an injection point (data flushed before)."""

    def __init__(self, raw: Any, injector: Injector) -> None:
        self._raw = raw
        self._injector = injector

    def write(self, data: Any) -> int:
        self._injector.event("write", before=True)
        written = self._raw.write(data)
        self._raw.flush()
        self._injector.event("write", before=False)
        return written

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._raw, attr)

    def __enter__(self) -> _CountingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._raw.close()


class Injector:
    """Counts the events of the I/O points (before and after each call) and acts at one.

    ``action(name)`` runs at event number ``at`` (1-based): ``sigkill`` kills the process there,
    ``enospc`` raises ``OSError(ENOSPC)`` (only at "before" events, where a real failure
    happens). ``events`` records every event seen, so a run with ``at=None`` lists them all.
    """

    def __init__(self, at: int | None, action: Callable[[str], None]) -> None:
        self.at = at
        self.action = action
        self.events: list[str] = []
        self._count = itertools.count(1)

    def event(self, name: str, *, before: bool) -> None:
        self.events.append(("before " if before else "after ") + name)
        if next(self._count) == self.at:
            self.action(self.events[-1])

    @contextlib.contextmanager
    def armed(self) -> Iterator[Injector]:
        """Wrap the I/O points (and ``os.fdopen``'s writes) for the duration of the block."""
        originals = [(module, attr, getattr(module, attr)) for module, attr in IO_POINTS]
        real_fdopen = os.fdopen

        def wrap(attr: str, real: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                self.event(attr, before=True)
                result = real(*args, **kwargs)
                self.event(attr, before=False)
                return result

            return wrapper

        for module, attr, real in originals:
            setattr(module, attr, wrap(attr, real))
        os.fdopen = lambda *a, **k: _CountingFile(real_fdopen(*a, **k), self)  # type: ignore
        try:
            yield self
        finally:
            for module, attr, real in originals:
                setattr(module, attr, real)
            os.fdopen = real_fdopen


def sigkill(_event: str) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def enospc(event: str) -> None:
    if event.startswith("before "):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def count_save_events(value: int, name: str) -> list[str]:
    """The I/O events of one save of version ``value`` under ``name`` (it is really saved)."""
    injector = Injector(None, sigkill)
    model = make_version(value)
    with injector.armed():
        zoo.save(model, name, overwrite=True)
    return injector.events


def child_init() -> None:
    """First thing in a forked child: no intra-op threads (torch's pool is not fork-safe)."""
    torch.set_num_threads(1)
