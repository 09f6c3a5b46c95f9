"""Permissions: saved files get the mode the umask implies, not the 0600 of a temporary file.

``tempfile.mkstemp`` (and the safetensors library's own writer) create files with mode 0600;
zoo's atomic writer must give the final file ``0666 & ~umask`` and a new entry's folder
``0777 & ~umask``, exactly as ``open(path, "w")`` and ``mkdir`` would.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability_helpers import make_version

import zoo
from zoo.io import store


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o077, 0o002], ids=lambda m: f"umask {m:03o}")
def umask(request) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def test_saved_files_follow_the_umask(tiny, umask, tmp_path):
    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    model = make_version(1)

    new = zoo.save(model, "fresh")
    assert mode(new) == mode(new.parent / store.CONFIG_FILE) == file_mode
    assert mode(new.parent) == dir_mode

    replaced = zoo.save(make_version(2), "fresh", overwrite=True)
    assert mode(replaced) == mode(replaced.parent / store.CONFIG_FILE) == file_mode

    single = zoo.save(model, tmp_path / "single.safetensors")
    assert mode(single) == file_mode
    folder = zoo.save(model, tmp_path / "folder")
    assert mode(folder) == mode(folder.parent / store.CONFIG_FILE) == file_mode

    # and the reference point: what a plain open() makes under the same umask
    (tmp_path / "plain").write_bytes(b"x")
    assert mode(tmp_path / "plain") == file_mode


def test_a_file_repaired_by_gc_follows_the_umask(tiny, umask):
    import json

    path = zoo.save(make_version(1), "cats")
    config = path.parent / store.CONFIG_FILE
    data = json.loads(config.read_text())
    data["zoo"]["content_sha256"] = "0" * 64  # as a save killed before rewriting it leaves it
    config.write_text(json.dumps(data))
    os.chmod(config, 0o600)
    assert store.gc().repaired == [config]
    assert mode(config) == 0o666 & ~umask
