"""Names: every hostile name is refused with the rule it breaks, and nothing lands outside.

The store lives three folders deep in a private tree; the whole tree (store included) is
snapshotted before and after each group of attempts, so a write anywhere — beside the store,
above it, in the working directory — is caught, not only inside ``models/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from reliability_helpers import make_version, save_version, tree_snapshot, version_of

import zoo
from zoo.io import store

#: name -> the rule its refusal must state.
BAD_NAMES = {
    "../x": "path separator",
    "a/../../b": "path separator",
    "models/../../escape": "path separator",
    "/etc/passwd": "absolute path",
    "/tmp/x": "absolute path",
    "C:\\x": "absolute path",
    "C:x": "must not contain ':'",
    "~root": "absolute path",
    "..": "must not contain '..'",
    "a..b": "must not contain '..'",
    "CON": "reserved device name",
    "con": "reserved device name",
    "nul.txt": "reserved device name",
    "COM1.model": "reserved device name",
    "LPT9": "reserved device name",
    "a\nb": "control characters",
    "a\x00b": "control characters",
    "line\r": "control characters",
    "tab\there": "control characters",
    "x" * 300: "at most 100 characters",
    "": "must not be empty",
    ".hidden": "must not start with '.'",
    ".cats.abc.zoo-tmp": "must not start with '.'",
    "trailing.": "must not end with '.'",
    "with space": "ASCII letters",
    "ünïcode": "ASCII letters",
    "semi;colon": "ASCII letters",
    "star*": "ASCII letters",
}


@pytest.fixture
def world(tmp_path, monkeypatch) -> Path:
    """A private tree: ``<world>/a/b/home`` is ZOO_HOME, ``<world>/cwd`` the working folder."""
    home = tmp_path / "world" / "a" / "b" / "home"
    home.mkdir(parents=True)
    (tmp_path / "world" / "cwd").mkdir()
    (tmp_path / "world" / "outside").mkdir()
    (tmp_path / "world" / "outside" / "secret.txt").write_text("keep me")
    monkeypatch.setenv("ZOO_HOME", str(home))
    monkeypatch.chdir(tmp_path / "world" / "cwd")
    return tmp_path / "world"


def refused(call, rule: str, error: type[Exception] = zoo.InvalidNameError) -> None:
    with pytest.raises(error) as info:
        call()
    assert rule in str(info.value), str(info.value)


@pytest.mark.parametrize("name", sorted(BAD_NAMES), ids=repr)
def test_a_bad_name_is_refused_everywhere_with_its_rule(tiny, world, name):
    rule = BAD_NAMES[name]
    save_version(1, "good")  # a store with an entry in it
    model = make_version(2)
    before = tree_snapshot(world)
    refused(lambda: store.validate_name(name), rule)
    refused(lambda: store.entry_dir(name), rule)
    refused(lambda: store.remove(name), rule)
    if store.is_path_target(name):
        # by the documented rule, a str with a separator is a path, not a store name; loading
        # a path that holds no model (or not one) writes nothing either
        for loader in (zoo.load, zoo.inspect):
            with pytest.raises(zoo.ZooError):
                loader(name)
    else:
        for overwrite in (False, True):
            refused(lambda o=overwrite: zoo.save(model, name, overwrite=o), rule)
        refused(lambda: zoo.load(name), rule)
        refused(lambda: zoo.inspect(name), rule)
        refused(lambda: store.lock_path(name), rule)
    assert tree_snapshot(world) == before, "something was written"
    assert [e.name for e in store.list_saved()] == ["good"]
    assert version_of(zoo.load("good")) == "v1"


def zoo_command() -> list[str]:
    found = shutil.which("zoo")
    return [found] if found else [sys.executable, "-m", "zoo.cli.main"]


@pytest.mark.parametrize("name", ["../x", "a/../../b", "/etc/passwd", "CON", ".hidden", ""])
@pytest.mark.slow
def test_zoo_rm_refuses_a_bad_name_with_its_rule(world, name):
    save_version_free = world / "a" / "b" / "home" / "models" / "good"
    save_version_free.mkdir(parents=True)
    before = tree_snapshot(world)
    done = subprocess.run([*zoo_command(), "rm", name], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "error: invalid model name" in done.stderr and BAD_NAMES[name] in done.stderr
    assert tree_snapshot(world) == before


def test_case_only_twins_are_refused(tiny, world):
    save_version(1, "Cats")
    before = tree_snapshot(world)
    for twin in ("cats", "CATS", "cAtS"):
        for overwrite in (False, True):
            refused(
                lambda t=twin, o=overwrite: zoo.save(make_version(2), t, overwrite=o),
                "differs only in case from the existing entry 'Cats'",
            )
        with pytest.raises(zoo.ModelNotFoundError, match="did you mean 'Cats'"):
            zoo.load(twin)
    assert tree_snapshot(world) == before
    assert version_of(zoo.load("Cats")) == "v1"


def test_symlinks_leaving_the_store_are_never_followed(tiny, world):
    outside = world / "outside"
    save_version(1, "inner")
    save_version(1, "cfg")
    models = store.models_dir()
    (models / "evil").symlink_to(outside)
    (models / "ghost").symlink_to(outside / "ghost-target")  # dangling
    (models / "inner" / "model.safetensors").unlink()
    (models / "inner" / "model.safetensors").symlink_to(outside / "secret.txt")
    (models / "cfg" / "config.json").unlink()
    (models / "cfg" / "config.json").symlink_to(outside / "secret.txt")
    outside_before = tree_snapshot(outside)
    model = make_version(2)
    for name in ("evil", "ghost", "inner"):
        for overwrite in (False, True):
            refused(
                lambda n=name, o=overwrite: zoo.save(model, n, overwrite=o),
                "outside the store",
                zoo.StoreError,
            )
        refused(lambda n=name: zoo.load(n), "outside the store", zoo.StoreError)
        refused(lambda n=name: zoo.inspect(n), "outside the store", zoo.StoreError)
    listed = {e.name: e for e in store.list_saved()}
    assert all(
        not listed[n].ok and "outside the store" in listed[n].reason
        for n in ("evil", "ghost", "inner")
    )
    # a config.json link is replaced as a link: its target is never written through
    zoo.save(model, "cfg", overwrite=True)
    assert not (models / "cfg" / "config.json").is_symlink()
    assert version_of(zoo.load("cfg")) == "v2"
    assert store.gc().removed == []
    # removing a symlinked entry removes the link only
    for name in ("evil", "ghost"):
        assert store.remove(name) == models / name
        assert not os.path.lexists(models / name)
    assert tree_snapshot(outside) == outside_before
    assert not (outside / "ghost-target").exists()
