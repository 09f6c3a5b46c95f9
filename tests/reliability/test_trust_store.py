"""The trust boundary, store side: hostile entries, odd names, read-only folders, case twins.

``zoo gc`` never follows a link and only reads regular, bounded files; one broken entry never
stops listing, removal or saving of the others; odd text never crashes the CLI; ``zoo rm``
checks every name before it removes anything and reports each one; a store it may not write
is reported, never half-removed; case twins serialise on one lock; lock files do not pile up.

Read-only folders are tested in a forked child that drops to the unprivileged user ``nobody``
(uid 65534) when the tests run as root — root ignores permissions — in a folder tree that
user can enter; a non-root run uses the same folder modes without changing user.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from reliability_helpers import FORK, child_init, make_version, save_version, version_of
from trust_helpers import NOBODY, cli, open_tree, run_bounded, warm_up_cli, write_raw

import zoo
from zoo.io import store
from zoo.io.metadata import ZooMetadata


def zoo_cli(*argv: str | bytes, check: int | None = None) -> subprocess.CompletedProcess:
    """``zoo ARGV`` as a real process whose stdout and stderr refuse what is not UTF-8."""
    found = shutil.which("zoo")
    command = [found] if found else [sys.executable, "-m", "zoo.cli.main"]
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    done = subprocess.run([*command, *argv], capture_output=True, env=env, timeout=120)
    if check is not None:
        assert done.returncode == check, done.stderr.decode(errors="replace")
    return done


# ---------------------------------------------------------------- gc and special files (item 4)


def test_gc_never_follows_links_nor_reads_special_files(tiny, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big.bin").write_bytes(b"x" * 100_000)
    for name in ("fifo", "zero", "huge"):
        save_version(1, name)
    models = store.models_dir()
    os.unlink(models / "fifo" / "config.json")
    os.mkfifo(models / "fifo" / "config.json")
    os.unlink(models / "zero" / "config.json")
    os.symlink("/dev/zero", models / "zero" / "config.json")
    (models / "huge" / "config.json").write_bytes(b" " * (store.MAX_CONFIG_BYTES + 10))
    linked = models / ".fifo.abc123.zoo-tmp"
    linked.symlink_to(outside)  # a leftover that is a link to a folder: never walked
    (models / ".zero.usr.zoo-tmp").symlink_to("/usr")
    inner = models / ".huge.def456.zoo-tmp"
    inner.mkdir()
    (inner / "escape").symlink_to(outside)
    before = sorted(p.name for p in outside.iterdir())

    outcomes = run_bounded(
        {"dry": lambda: store.gc(dry_run=True).to_dict(), "gc": lambda: store.gc().to_dict()}
    )
    for name, outcome in outcomes.items():
        assert outcome.error == [], (name, outcome)
    done = outcomes["gc"].value
    assert sorted(done["removed"]) == sorted(
        map(str, [linked, models / ".zero.usr.zoo-tmp", inner])
    )
    assert done["freed_bytes"] == 0 and done["skipped"] == []
    assert sorted(done["repaired"]) == sorted(
        str(models / n / "config.json") for n in ("fifo", "zero", "huge")
    )
    assert sorted(p.name for p in outside.iterdir()) == before  # nothing followed
    assert Path("/usr/bin").is_dir()
    for name in ("fifo", "zero", "huge"):
        config = models / name / "config.json"
        assert config.is_file() and not config.is_symlink() and config.stat().st_size < 10_000
        assert version_of(zoo.load(name)) == "v1"


# ---------------------------------------------------------------- one bad entry (item 2)


def test_an_unexpected_error_in_one_entry_never_stops_the_others(tiny, monkeypatch, capsys):
    save_version(1, "base")
    model = zoo.load("base")
    with torch.no_grad():
        model[5].weight.add_(1.0)
    zoo.save(model, "child", delta=True)
    save_version(2, "bad")
    real = ZooMetadata.parse.__func__

    def buggy_parse(cls, metadata, *, source, **kwargs):  # a bug one hostile file triggers
        if f"{os.sep}bad{os.sep}" in source:
            raise RecursionError("maximum recursion depth exceeded")
        return real(cls, metadata, source=source, **kwargs)

    monkeypatch.setattr(ZooMetadata, "parse", classmethod(buggy_parse))
    listed = {e.name: e for e in store.list_saved()}
    assert listed["base"].ok and listed["child"].ok and not listed["bad"].ok
    assert "unexpected RecursionError" in listed["bad"].reason
    assert store.dependents("base") == ["child"]
    from zoo.cli.main import main

    assert main(["models"]) == 0 and "bad" in capsys.readouterr().out
    assert main(["gc"]) == 0
    save_version(3, "other")  # saving (which lists the dependents) works
    assert store.remove("other") == store.models_dir() / "other"
    with pytest.raises(zoo.StoreError, match="'child'"):
        store.remove("base")


@pytest.mark.slow
def test_a_symlink_loop_is_a_broken_entry_never_a_crash(tiny):
    save_version(1, "good")
    save_version(1, "inner")
    models = store.models_dir()
    (models / "loop").symlink_to("loop")
    (models / "inner" / "model.safetensors").unlink()
    (models / "inner" / "model.safetensors").symlink_to("model.safetensors")
    listed = {e.name: e for e in store.list_saved()}
    assert listed["good"].ok
    for name in ("loop", "inner"):
        assert not listed[name].ok and "cannot be resolved" in listed[name].reason
        for call in (
            lambda n=name: zoo.load(n),
            lambda n=name: zoo.inspect(n),
            lambda n=name: zoo.save(make_version(2), n, overwrite=True),
        ):
            with pytest.raises(zoo.StoreError, match="cannot be resolved"):
                call()
    assert store.gc().skipped == []
    zoo_cli("rm", "loop", "inner", check=0)
    assert store.entry_names() == ["good"]


# ---------------------------------------------------------------- odd text (item 5)


@pytest.mark.slow
def test_odd_names_and_text_never_crash_the_cli(tiny):
    save_version(1, "good")
    models = store.models_dir()
    raw_name = os.fsencode(models) + b"/caf\xe9\xff"  # not UTF-8: a surrogate-escaped str
    shutil.copytree(models / "good", os.fsdecode(raw_name))
    shutil.copytree(models / "good", models / "red\x1b[31mALERT")
    shutil.copytree(models / "good", models / "[bold]x")  # rich markup, shown as it is
    save_version(1, "marked", classes=["[/oops]", "[bold]b"])
    (models / "surrogate").mkdir()
    write_raw(
        models / "surrogate" / "model.safetensors",
        None,
        b"x",
        raw=b'{"__metadata__": {"zoo.format_version": "1\\ud800"}, '
        b'"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}',
    )
    out = zoo_cli("models", check=0).stdout.decode()
    assert "\x1b" not in out and "\\x1b[31mALERT" in out and "caf\\udce9\\udcff" in out
    assert "lone UTF-16 surrogate" in out and "[bold]x" in out and "2: [/oops], [bold]b" in out
    assert "2: [/oops], [bold]b" in zoo_cli("inspect", "marked", check=0).stdout.decode()
    listed = json.loads(zoo_cli("models", "--json", check=0).stdout)["models"]
    assert sorted(e["ok"] for e in listed) == [False, False, False, False, True, True]
    zoo_cli("gc", check=0)
    zoo_cli("rm", b"caf\xe9\xff", "red\x1b[31mALERT", "surrogate", "[bold]x", check=0)
    assert store.entry_names() == ["good", "marked"]


# ---------------------------------------------------------------- case twins (item 7)


def _save_in_child(name: str, barrier, conn) -> None:
    child_init()
    model = make_version(len(name))
    barrier.wait(300)
    try:
        conn.send(str(zoo.save(model, name)))
    except zoo.ZooError as exc:
        conn.send(f"{type(exc).__name__}: {exc}")


def test_case_twins_saved_at_once_serialise_and_one_is_refused(tiny, monkeypatch, lock_timeout):
    assert store.lock_path("Cats") == store.lock_path("cats") == store.lock_path("CATS")
    monkeypatch.setenv("ZOO_TEST_PAUSE_BEFORE_REPLACE", "0.5")  # both inside the save at once
    barrier = FORK.Barrier(2)
    pipes = [FORK.Pipe(duplex=False) for _ in range(2)]
    children = [
        FORK.Process(target=_save_in_child, args=(name, barrier, writer))
        for name, (_reader, writer) in zip(("Cats", "cats"), pipes, strict=True)
    ]
    for child in children:
        child.start()
    replies = [reader.recv() if reader.poll(300) else "hung" for reader, _writer in pipes]
    for child in children:
        child.join(300)
    refused = [r for r in replies if r.startswith("InvalidNameError")]
    assert len(refused) == 1 and "differs only in case" in refused[0], replies
    assert len(store.entry_names()) == 1


# ---------------------------------------------------------------- read-only store (item 8)


def _nobody_store(monkeypatch) -> Path:
    warm_up_cli()
    home = Path(os.environ["ZOO_HOME"])
    for lock in store.locks_dir().glob("*.lock"):
        lock.unlink()  # root's lock files: a child that is not root could not open them
    os.chmod(store.locks_dir(), 0o777)
    os.chmod(home, 0o755)
    return home


def test_a_read_only_store_is_reported_and_never_half_removed(tiny, monkeypatch):
    with open_tree() as tree:
        monkeypatch.setenv("ZOO_HOME", str(tree / "home"))
        save_version(1, "a")
        save_version(2, "b")
        models = store.models_dir()
        _nobody_store(monkeypatch)
        os.chmod(models, 0o555)  # nothing can be renamed or removed in it
        outcomes = run_bounded(
            {"rm b": lambda: cli("rm", "b"), "rm b --json": lambda: cli("rm", "b", "--json")},
            user=NOBODY,
        )
        status, _out, err = outcomes["rm b"].value
        assert status == 1 and "cannot remove 'b': Permission denied" in err, outcomes
        assert "the entry is unchanged" in err
        status, out, _err = outcomes["rm b --json"].value
        (result,) = json.loads(out)["results"]
        assert status == 1 and not result["removed"] and "Permission denied" in result["error"]

        os.chmod(models, 0o777)  # the store is writable, entry "a" is not
        os.chmod(models / "a", 0o555)
        (outcome,) = run_bounded({"rm a": lambda: cli("rm", "a")}, user=NOBODY).values()
        status, out, err = outcome.value
        assert status == 1 and "removed a" not in out, outcome
        assert "cannot remove 'a'" in err and "put back in place" in err
        assert sorted(p.name for p in models.iterdir()) == ["a", "b"]  # no "-removing" left
        assert version_of(zoo.load("a")) == "v1" and version_of(zoo.load("b")) == "v2"

        trash = models / ".a.4242-dead-removing.zoo-tmp"  # what a killed removal leaves
        shutil.copytree(models / "a", trash)
        os.chmod(trash, 0o555)
        (outcome,) = run_bounded({"gc": lambda: cli("gc", "--json")}, user=NOBODY).values()
        status, out, _err = outcome.value
        (skipped,) = json.loads(out)["skipped"]
        assert status == 0 and skipped["path"] == str(trash), outcome
        assert "Permission denied" in skipped["reason"]
        os.chmod(trash, 0o755)
        assert store.gc().removed == [trash]


# ---------------------------------------------------------------- zoo rm, locks, names (item 9)


@pytest.mark.slow
def test_rm_checks_every_name_first_then_reports_each(tiny):
    save_version(1, "r1")
    save_version(2, "r2")
    done = zoo_cli("rm", "r1", "missing", "r2", "alsomissing", check=1)
    err = done.stderr.decode()
    assert "'missing'" in err and "'alsomissing'" in err and "nothing was removed" in err
    assert store.entry_names() == ["r1", "r2"]
    done = zoo_cli("rm", "r1", "missing", "r2", "--json", check=1)
    results = {r["name"]: r for r in json.loads(done.stdout)["results"]}
    assert not any(r["removed"] for r in results.values())
    assert "unknown saved model 'missing'" in results["missing"]["error"]
    assert store.entry_names() == ["r1", "r2"]
    done = zoo_cli("rm", "r1", "r2", "--json", check=0)
    data = json.loads(done.stdout)
    assert [r["name"] for r in data["results"] if r["removed"]] == ["r1", "r2"]
    assert data["removed"] == [str(store.models_dir() / n) for n in ("r1", "r2")]
    assert store.entry_names() == []


@pytest.mark.slow
def test_rm_removes_a_base_with_its_deltas_in_one_call(tiny):
    save_version(1, "base")
    model = zoo.load("base")
    with torch.no_grad():
        model[5].weight.add_(1.0)
    zoo.save(model, "child", delta=True)
    assert "is the base of the delta(s) 'child'" in zoo_cli("rm", "base", check=1).stderr.decode()
    assert store.entry_names() == ["base", "child"]
    out = zoo_cli("rm", "base", "child", check=0).stdout.decode()
    assert out.index("removed child") < out.index("removed base")
    assert store.entry_names() == []


@pytest.mark.slow
def test_lock_files_do_not_pile_up(tiny, tmp_path):
    save_version(1, "kept")
    save_version(1, "gone")
    zoo.save(make_version(1), tmp_path / "file.safetensors")  # a path target's lock
    locks = store.locks_dir()
    assert zoo_cli("rm", "gone", check=0)
    assert not (locks / "gone.lock").exists()
    (locks / "stale.lock").touch()  # a save that failed before creating its entry
    with store.locked("busy"):  # held: a save of "busy" is starting
        assert store.gc(dry_run=True).locks == store.gc().locks
        assert sorted(p.name for p in locks.iterdir()) == ["busy.lock", "kept.lock"]
    result = store.gc()
    assert sorted(p.name for p in locks.iterdir()) == ["kept.lock"]
    assert result.locks == [locks / "busy.lock"]
    assert version_of(zoo.load("kept")) == "v1"
    save_version(2, "kept")  # the lock protocol still works after the clean-up


def test_a_lock_timeout_that_is_not_a_finite_number_is_refused_at_once(tiny):
    model = make_version(1)

    def save_with(timeout: str):
        os.environ["ZOO_LOCK_TIMEOUT"] = timeout  # in the child only
        return zoo.save(model, "held")

    def take_with(timeout: float):
        with store.locked("held", timeout=timeout):
            pass

    bad = ["nan", "inf", "-1", "-inf", "soon", "1e999"]
    calls = {f"ZOO_LOCK_TIMEOUT={v}": lambda v=v: save_with(v) for v in bad}
    calls.update({f"timeout={v}": lambda v=v: take_with(float(v)) for v in ("nan", "inf", "-1")})
    with store.locked("held"):  # another writer holds the lock: a bad timeout would wait
        outcomes = run_bounded(calls)
    for name, outcome in outcomes.items():
        assert outcome.raised("StoreError"), (name, outcome)
        assert "finite number >= 0" in outcome.message, outcome.message
        assert name.partition("=")[0] in outcome.message, outcome.message


@pytest.mark.parametrize("name", ["-rf", "--force", "-", "-x.y"])
def test_names_that_read_as_options_are_refused(tiny, name):
    with pytest.raises(zoo.InvalidNameError, match="must not start with '-'"):
        store.validate_name(name)
    with pytest.raises(zoo.InvalidNameError, match="must not start with '-'"):
        zoo.save(make_version(1), name)
    assert store.entry_names() == []


@pytest.mark.slow
def test_an_entry_saved_under_an_older_rule_can_still_be_removed(tiny):
    save_version(1, "legacy")
    os.rename(store.models_dir() / "legacy", store.models_dir() / "-rf")
    (entry,) = store.list_saved()
    assert not entry.ok and "must not start with '-'" in entry.reason
    out = zoo_cli("rm", "--", "-rf", check=0).stdout.decode()
    assert "removed -rf" in out and store.entry_names() == []
