"""The store: locations, the naming rule, containment, locks, listing, removal, gc."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import torch
from fileformat_helpers import write_file

from zoo.errors import (
    InvalidNameError,
    LockTimeoutError,
    ModelNotFoundError,
    StoreError,
)
from zoo.io import store
from zoo.io.metadata import ZooMetadata


def make_entry(
    name: str,
    *,
    kind: str = "full",
    base: dict | None = None,
    classes: list[str] | None = None,
    backbone: str = "tinyplug:tiny",
    **extra_md: str,
) -> Path:
    """A store entry written directly (no model needed): a tiny zoo file with real metadata
    (10 parameters, 4 of them trained)."""
    build = {"backbone": backbone, "tag": None, "num_classes": 2, "kwargs": {}}
    meta = ZooMetadata(
        kind=kind,
        build=build,
        plan={"trainable": ["fc.weight"], "frozen": ["body.weight"]},
        classes=classes,
        base=base,
        created="2026-01-02T03:04:05+00:00",
        state_sha256="0" * 64 if kind == "delta" else None,
    )
    folder = store.models_dir() / name
    folder.mkdir(parents=True, exist_ok=True)
    return write_file(
        folder / store.MODEL_FILE,
        {"fc.weight": torch.ones(2, 2), "body.weight": torch.ones(6)},
        {**meta.to_metadata(), **extra_md},
    )


# ---------------------------------------------------------------- locations


def test_zoo_home_env_overrides_the_default(monkeypatch, tmp_path):
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "elsewhere"))
    assert store.zoo_home() == tmp_path / "elsewhere"
    assert store.models_dir() == tmp_path / "elsewhere" / "models"


def test_zoo_home_defaults_to_a_per_user_data_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("ZOO_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert store.zoo_home() == tmp_path / "data" / "zoo"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert store.zoo_home() == Path.home() / ".local" / "share" / "zoo"


# ---------------------------------------------------------------- names

VALID = ["cats", "cats-v2", "resnet50_cats.v1", "A1", "a+b@c=d", "x" * 100, "nul-not-device"]

INVALID = {
    "": "must not be empty",
    "x" * 101: "at most 100 characters",
    "a\nb": "control characters",
    "a\x00b": "control characters",
    "tab\there": "control characters",
    "/etc/passwd": "absolute path",
    "C:\\models": "absolute path",
    "a/b": "path separator",
    "a\\b": "path separator",
    "..": "'..'",
    "a..b": "'..'",
    ".hidden": "start with '.'",
    "name.": "end with '.'",
    "C:x": "':'",
    "CON": "reserved device name",
    "nul.txt": "reserved device name",
    "com1": "reserved device name",
    "LPT9.safetensors.x": "reserved device name",
    "with space": "ASCII letters",
    "émoji": "ASCII letters",
    "star*": "ASCII letters",
    "~user": "absolute path",
}


@pytest.mark.parametrize("name", VALID)
def test_valid_names(name):
    assert store.validate_name(name) == name


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_names_state_the_rule(name):
    with pytest.raises(InvalidNameError) as info:
        store.validate_name(name)
    assert INVALID[name] in str(info.value)


def test_non_string_name():
    with pytest.raises(InvalidNameError, match="must be a string"):
        store.validate_name(3)


@pytest.mark.parametrize(
    ("value", "is_path"),
    [
        ("cats", False),
        ("cats.v1", False),
        ("out/cats", True),
        ("./cats", True),
        ("cats.safetensors", True),
        (Path("cats"), True),
    ],
)
def test_name_or_path_rule(value, is_path):
    assert store.is_path_target(value) is is_path


# ---------------------------------------------------------------- containment


def test_symlink_leaving_the_store_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    store.models_dir().mkdir(parents=True)
    (store.models_dir() / "evil").symlink_to(outside)
    with pytest.raises(StoreError, match="outside the store"):
        store.entry_dir("evil")
    listed = {e.name: e for e in store.list_saved()}
    assert not listed["evil"].ok
    assert "outside the store" in listed["evil"].reason


def test_case_twin_is_detected():
    make_entry("Cats")
    assert store.case_twin("cats") == "Cats"
    assert store.case_twin("Cats") is None


# ---------------------------------------------------------------- locks


def test_lock_timeout_names_the_lock():
    def take_again() -> None:
        with store.locked("cats", timeout=0.2):
            pass

    with store.locked("cats"), pytest.raises(LockTimeoutError) as info:
        take_again()
    assert "cats.lock" in str(info.value)
    with store.locked("cats", timeout=0.2):  # released again
        pass


def test_lock_excludes_threads():
    inside = []
    overlaps = []

    def work(i: int) -> None:
        for _ in range(5):
            with store.locked("shared"):
                if inside:
                    overlaps.append(i)
                inside.append(i)
                inside.pop()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == []


def test_non_blocking_lock_yields_none_when_held():
    with store.locked("cats"), store.locked("cats", blocking=False) as held:
        assert held is None


@pytest.mark.slow
def test_a_forked_child_does_not_keep_the_lock_its_parent_let_go():
    """A data loader's worker is a fork that may outlive the run (a persistent worker, kept
    by a traceback): the lock must go with the parent's release, not with the child. A child
    that leaves the block itself closes nothing (its copy was closed at the fork)."""
    go_read, go_write = os.pipe()
    ready_read, ready_write = os.pipe()
    child = -1
    try:
        with store.locked("cats"):
            child = os.fork()
            if child == 0:  # the child: say it runs (fork's hooks have run), wait for the word
                os.write(ready_write, b"r")
                os.read(go_read, 1)
    except BaseException:
        if child == 0:
            os._exit(1)  # the child's leaving the block failed
        raise
    if child == 0:
        os._exit(0)
    try:
        assert os.read(ready_read, 1) == b"r"
        with store.locked("cats", blocking=False) as held:  # the child is alive: it waits
            assert held is not None
    finally:
        os.write(go_write, b"x")
        _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# ---------------------------------------------------------------- listing


def test_listing_reads_entries_and_reports_broken_ones():
    make_entry("good", classes=["a", "b"])
    (store.models_dir() / "empty").mkdir()
    (store.models_dir() / "garbage").mkdir()
    (store.models_dir() / "garbage" / store.MODEL_FILE).write_bytes(b"\x10\x00\x00\x00")
    (store.models_dir() / "plain").mkdir()
    write_file(store.models_dir() / "plain" / store.MODEL_FILE, {"x": torch.ones(1)})
    (store.models_dir() / "stray-file").write_text("x")
    (store.models_dir() / ".cats.ab12.zoo-tmp").mkdir()  # a save in progress: never listed
    entries = {e.name: e for e in store.list_saved()}
    assert sorted(entries) == ["empty", "garbage", "good", "plain", "stray-file"]
    good = entries["good"]
    assert good.ok and good.meta.kind == "full" and good.meta.classes == ["a", "b"]
    assert good.meta.backbone == "tinyplug:tiny"
    assert good.meta.trained_fraction == pytest.approx(0.4)
    assert "no model.safetensors" in entries["empty"].reason
    assert "truncated" in entries["garbage"].reason
    assert "not a zoo model file" in entries["plain"].reason
    assert "not a folder" in entries["stray-file"].reason
    assert not any(e.ok for n, e in entries.items() if n != "good")


def test_newer_format_is_listed_as_broken_with_the_reason():
    make_entry("future", **{"zoo.format_version": "99"})
    (entry,) = store.list_saved()
    assert not entry.ok
    assert "format 99" in entry.reason and "upgrade zoo" in entry.reason


def test_empty_store_lists_nothing():
    assert store.list_saved() == []


# ---------------------------------------------------------------- removal and gc


def test_remove_deletes_the_entry():
    make_entry("cats")
    removed = store.remove("cats")
    assert not removed.exists()
    assert store.list_saved() == []
    with pytest.raises(ModelNotFoundError, match="cats"):
        store.remove("cats")


def test_remove_refuses_a_base_of_deltas_unless_forced():
    make_entry("base")
    make_entry("child", kind="delta", base={"kind": "store", "ref": "base", "sha256": "1" * 64})
    with pytest.raises(StoreError, match="'child'"):
        store.remove("base")
    store.remove("base", force=True)
    assert [e.name for e in store.list_saved()] == ["child"]


def test_remove_broken_entry():
    (store.models_dir() / "broken").mkdir(parents=True)
    store.remove("broken")
    assert store.list_saved() == []


def test_gc_removes_leftovers_but_not_a_save_in_progress():
    make_entry("cats")
    make_entry("dogs")
    leftover_file = store.models_dir() / "cats" / ".model.safetensors.x1.zoo-tmp"
    leftover_file.write_bytes(b"x" * 10)
    leftover_dir = store.models_dir() / ".birds.y2.zoo-tmp"
    leftover_dir.mkdir()
    (leftover_dir / "model.safetensors").write_bytes(b"y" * 5)
    busy = store.models_dir() / "dogs" / ".model.safetensors.z3.zoo-tmp"
    busy.write_bytes(b"z")
    with store.locked("dogs"):  # as a concurrent save would hold it
        dry = store.gc(dry_run=True)
        assert leftover_file.exists() and sorted(dry.removed) == sorted(
            [leftover_file, leftover_dir]
        )
        result = store.gc()
    assert sorted(result.removed) == sorted([leftover_file, leftover_dir])
    assert result.freed == 15
    assert [p for p, _ in result.skipped] == [busy]
    assert not leftover_file.exists() and not leftover_dir.exists() and busy.exists()
    assert {e.name for e in store.list_saved()} == {"cats", "dogs"}
    assert os.listdir(store.models_dir() / "cats") == [store.MODEL_FILE]
