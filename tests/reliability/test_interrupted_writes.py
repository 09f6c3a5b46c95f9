"""Interrupted writes: a save killed or failing at any point loses nothing and leaves no entry half.

Real processes (forked from the test process, so they start in milliseconds) save the tiny
model and are killed with SIGKILL: before every file-system operation of a save (found by
counting them), after random delays while saving in a loop, and at the documented
``ZOO_TEST_PAUSE_BEFORE_REPLACE`` hook. Writes also fail: a file-size limit (``RLIMIT_FSIZE``,
as a full disk does) in a child, and ``OSError(ENOSPC)`` injected in-process before each
operation. After each fault: the name holds one complete version that loads and verifies, no
partial entry is listed, temporary files are never listed as models, ``zoo gc`` removes them
and repairs a ``config.json`` left describing the previous version.
"""

from __future__ import annotations

import json
import os
import random
import resource
import select
import signal
import sys
import time
from collections import Counter

import pytest
from reliability_helpers import (
    FORK,
    Injector,
    child_init,
    config_matches_model,
    count_save_events,
    enospc,
    label,
    make_version,
    save_version,
    sigkill,
    store_listing,
    temp_leftovers,
    version_of,
)

import zoo
from zoo.cli.main import main
from zoo.io import store
from zoo.io.fileformat import PAUSE_ENV


def check_after_fault(name: str, allowed: set[str], *, may_be_absent: bool = False) -> str | None:
    """The store after a fault: ``name`` is absent or one whole allowed version; gc cleans up.

    Returns the version found (None when absent). Leaves no temporary file behind.
    """
    entries = store_listing()
    assert not [n for n in entries if n.startswith(".")], "a temporary file is listed"
    if name not in entries:
        assert may_be_absent, f"{name!r} vanished"
        assert entries == {} or name not in entries
        with pytest.raises(zoo.ModelNotFoundError):
            zoo.load(name)
        found = None
    else:
        assert set(entries) == {name} and entries[name].ok, entries[name].reason
        found = version_of(zoo.load(name))  # load verifies the seal
        assert found in allowed, f"{name!r} holds {found}, expected one of {sorted(allowed)}"
        assert zoo.inspect(name).verified
    leftovers = temp_leftovers()
    result = store.gc()
    assert sorted(result.removed) == leftovers and result.skipped == []
    assert temp_leftovers() == []
    if found is not None:
        assert sorted(os.listdir(store.entry_dir(name))) == ["config.json", "model.safetensors"]
        assert config_matches_model(name), "config.json describes another version"
    return found


def kill_points(events: list[str]) -> list[int]:
    """1-based event numbers to kill at: before every operation (the first and last of a run of
    writes stand for the run), and after the last one."""
    points = []
    for i, event in enumerate(events):
        if not event.startswith("before "):
            continue
        if (
            event == "before write"
            and events[i - 2 : i - 1] == ["before write"]
            and events[i + 2 : i + 3] == ["before write"]
        ):
            continue  # a write in the middle of a run: the same state as its neighbours
        points.append(i + 1)
    return [*points, len(events)]


def _die_at(at: int, value: int, name: str) -> None:
    child_init()
    model = make_version(value)
    with Injector(at, sigkill).armed():
        zoo.save(model, name, overwrite=True)


def run_killed(at: int, value: int, name: str) -> int:
    process = FORK.Process(target=_die_at, args=(at, value, name))
    process.start()
    process.join(300)
    assert process.exitcode is not None, "the saving process hung"
    return process.exitcode


def test_kill_before_every_operation_of_a_replacing_save(tiny, lock_timeout):
    save_version(0, "victim")
    points = kill_points(count_save_events(1, "victim"))
    save_version(0, "victim")
    outcomes: Counter[str] = Counter()
    for at in points:
        assert run_killed(at, 1, "victim") == -signal.SIGKILL, f"not killed at event {at}"
        found = check_after_fault("victim", {"v0", "v1"})
        outcomes[found] += 1
        if found != "v0":
            save_version(0, "victim")  # right after a kill: its lock was released
    assert len(points) >= 15
    assert outcomes["v0"] > 0 and outcomes["v1"] > 0, outcomes
    print(f"\nreplacing save killed at {len(points)} points: {dict(outcomes)}")


def test_kill_before_every_operation_of_a_new_entry(tiny, lock_timeout):
    count_save_events(1, "fresh")  # the first save also creates the store's folders
    store.remove("fresh")
    points = kill_points(count_save_events(1, "fresh"))
    store.remove("fresh")
    outcomes: Counter[str | None] = Counter()
    for at in points:
        assert run_killed(at, 1, "fresh") == -signal.SIGKILL, f"not killed at event {at}"
        found = check_after_fault("fresh", {"v1"}, may_be_absent=True)
        outcomes[found] += 1
        if found is not None:
            store.remove("fresh")
    assert len(points) >= 15
    assert outcomes[None] > 0 and outcomes["v1"] > 0, outcomes
    print(f"\nnew-entry save killed at {len(points)} points: {dict(outcomes)}")


def _save_forever(name: str, values: list[int]) -> None:
    child_init()
    models = [make_version(v) for v in values]
    i = 0
    while True:
        zoo.save(models[i % len(models)], name, overwrite=True)
        i += 1


def test_kill_after_random_delays_while_saving_in_a_loop(tiny, lock_timeout):
    rng = random.Random(20260501)
    save_version(0, "loop")
    seen: Counter[str] = Counter()
    interrupted = 0
    kills = 15
    for _ in range(kills):
        process = FORK.Process(target=_save_forever, args=("loop", [1, 2, 3]))
        process.start()
        time.sleep(rng.uniform(0.02, 0.25))
        process.kill()
        process.join(300)
        assert process.exitcode == -signal.SIGKILL
        interrupted += bool(temp_leftovers())
        found = check_after_fault("loop", {label(v) for v in range(4)})
        seen[found] += 1
    assert sum(seen.values()) == kills
    print(f"\nrandom kills: {kills}, left temp files: {interrupted}, versions found: {dict(seen)}")


def _save_paused(write_fd: int, name: str) -> None:
    child_init()
    sys.stderr = open(write_fd, "w", buffering=1)  # noqa: SIM115 - the hook writes there
    os.environ[PAUSE_ENV] = "60"
    zoo.save(make_version(1), name, overwrite=True)


def test_kill_at_the_pause_before_replace_hook(tiny, lock_timeout, capsys):
    save_version(0, "paused")
    read_fd, write_fd = os.pipe()
    process = FORK.Process(target=_save_paused, args=(write_fd, "paused"))
    process.start()
    os.close(write_fd)
    try:
        ready, _, _ = select.select([read_fd], [], [], 300)
        assert ready, "the saver never reached the pause"
        assert b"zoo-test: paused before replacing" in os.read(read_fd, 4096)
        assert len(temp_leftovers()) == 1  # the complete new file, not yet in place
    finally:
        process.kill()
        process.join(300)
        os.close(read_fd)
    leftover = temp_leftovers()
    assert main(["models", "--json"]) == 0  # the CLI lists the entry, not the leftover
    assert [m["name"] for m in json.loads(capsys.readouterr().out)["models"]] == ["paused"]
    assert main(["gc", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == [str(p) for p in leftover]
    assert check_after_fault("paused", {"v0"}) == "v0"


def _save_with_file_size_limit(limit: int, ignore_signal: bool, name: str, conn) -> None:
    child_init()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # Python ignores SIGXFSZ (a write past the limit fails with EFBIG); by default it kills
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN if ignore_signal else signal.SIG_DFL)
    model = make_version(1)
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        path = zoo.save(model, name, overwrite=True)
        conn.send(("saved", str(path)))
    except Exception as exc:
        conn.send((type(exc).__name__, str(exc)))


def save_under_limit(limit: int, ignore_signal: bool, name: str) -> tuple[int, tuple | None]:
    parent, child = FORK.Pipe()
    process = FORK.Process(
        target=_save_with_file_size_limit, args=(limit, ignore_signal, name, child)
    )
    process.start()
    process.join(300)
    assert process.exitcode is not None, "the saving process hung"
    return process.exitcode, parent.recv() if parent.poll() else None


@pytest.mark.parametrize("name", ["full-replace", "full-new"])
def test_a_full_disk_fails_the_save_and_keeps_the_previous_version(tiny, lock_timeout, name):
    size = save_version(1, "probe").stat().st_size
    store.remove("probe")
    if name == "full-replace":
        save_version(0, name)
    expected = {"v0"} if name == "full-replace" else set()
    for limit in (0, 100, 1000, size // 2, size - 1):
        exitcode, reply = save_under_limit(limit, True, name)
        assert exitcode == 0 and reply is not None
        kind, message = reply
        assert kind == "StoreError", reply
        assert "File too large" in message and str(store.model_file(name)) in message
        assert temp_leftovers() == [], "a failed save left its temporary file"
        assert check_after_fault(name, expected, may_be_absent=not expected) == (
            "v0" if expected else None
        )
    for limit in (100, size - 1):  # the default action of SIGXFSZ: the process dies mid-write
        exitcode, reply = save_under_limit(limit, False, name)
        assert exitcode == -signal.SIGXFSZ and reply is None
        check_after_fault(name, expected, may_be_absent=not expected)


def test_enospc_before_every_operation_fails_cleanly(tiny, lock_timeout):
    events = count_save_events(1, "nospace")
    save_version(0, "nospace")
    failed: list[int] = []
    for at in [i + 1 for i, e in enumerate(events) if e.startswith("before ")]:
        model = make_version(1)
        try:
            with Injector(at, enospc).armed():
                zoo.save(model, "nospace", overwrite=True)
        except zoo.ZooError as exc:
            assert "No space left on device" in str(exc), str(exc)
            failed.append(at)
        assert temp_leftovers() == [], f"ENOSPC at event {at} left a temporary file"
        if check_after_fault("nospace", {"v0", "v1"}) != "v0":
            save_version(0, "nospace")
    # the tensor bytes are written inside the safetensors library (no Python-level I/O to
    # inject into); its write failures are covered by the RLIMIT_FSIZE tests above
    assert len(failed) >= 9
    print(f"\nENOSPC injected at {len(failed)} operations; every one failed cleanly")
