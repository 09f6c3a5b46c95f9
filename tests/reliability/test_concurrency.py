"""Concurrency: processes saving one name while others load it; the lock and its timeout.

Four writer processes save their own version of the tiny model under one name, again and
again, while two reader processes load it in a loop. Every load must return one complete
version (all tensors agree with the version its metadata names, and the seal verifies); the
writes, timed inside the entry lock, must never overlap; the last write must be what remains.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from reliability_helpers import (
    FORK,
    child_init,
    config_matches_model,
    label,
    make_version,
    save_version,
    store_listing,
    temp_leftovers,
    version_of,
)

import zoo
from zoo.io import persistence, store

WRITERS = 4
READERS = 2
SAVES_PER_WRITER = 5


def _writer(value: int, barrier, log: str) -> None:
    child_init()
    model = make_version(value)
    real_write = persistence._write

    def timed_write(*args, **kwargs) -> None:  # runs inside the entry lock
        begin = time.monotonic_ns()
        real_write(*args, **kwargs)
        with open(log, "a") as f:
            f.write(f"{begin} {time.monotonic_ns()} {label(value)}\n")

    persistence._write = timed_write
    barrier.wait(300)
    for _ in range(SAVES_PER_WRITER):
        zoo.save(model, "shared", overwrite=True)


def _reader(barrier, stop, conn) -> None:
    child_init()
    seen: list[str] = []
    errors: list[str] = []

    def load_once() -> None:
        try:
            seen.append(version_of(zoo.load("shared")))
        except BaseException as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    load_once()
    barrier.wait(300)
    while not stop.is_set():
        load_once()
    load_once()  # after the last write
    conn.send((seen, errors))


def test_writers_and_readers_of_one_name(tiny, lock_timeout, tmp_path):
    save_version(0, "shared")
    barrier = FORK.Barrier(WRITERS + READERS)
    stop = FORK.Event()
    logs = [tmp_path / f"writer{i}.log" for i in range(WRITERS)]
    pipes = [FORK.Pipe() for _ in range(READERS)]
    readers = [
        FORK.Process(target=_reader, args=(barrier, stop, child)) for _parent, child in pipes
    ]
    writers = [
        FORK.Process(target=_writer, args=(i + 1, barrier, str(logs[i]))) for i in range(WRITERS)
    ]
    for process in readers + writers:
        process.start()
    for process in writers:
        process.join(300)
        assert process.exitcode == 0, "a writer failed"
    stop.set()
    results = [parent.recv() for parent, _child in pipes]
    for process in readers:
        process.join(300)
        assert process.exitcode == 0

    errors = [e for _seen, errs in results for e in errs]
    assert errors == [], errors[:3]
    loads = [v for seen, _errs in results for v in seen]
    writes = sorted(tuple(line.split()) for log in logs for line in log.read_text().splitlines())
    assert len(writes) == WRITERS * SAVES_PER_WRITER
    for (_b1, end1, _l1), (begin2, _e2, _l2) in itertools.pairwise(writes):
        assert int(begin2) >= int(end1), "two writes overlapped: the lock did not exclude"
    last_written = writes[-1][2]
    final = version_of(zoo.load("shared"))
    assert final == last_written, "the last writer did not win"
    assert all(seen[-1] == final for seen, _errs in results)
    assert set(loads) <= {label(v) for v in range(WRITERS + 1)}
    assert len(set(loads)) >= 2  # "v0" before the writers, the final version after
    assert set(store_listing()) == {"shared"} and temp_leftovers() == []
    assert sorted(os.listdir(store.entry_dir("shared"))) == ["config.json", "model.safetensors"]
    assert config_matches_model("shared")
    print(
        f"\n{WRITERS} writers x {SAVES_PER_WRITER} saves, {READERS} readers: {len(loads)} "
        f"loads, versions seen {sorted(set(loads))}, none torn; last writer {final} won"
    )


def _save_while_locked(conn) -> None:
    child_init()
    os.environ["ZOO_LOCK_TIMEOUT"] = "0.5"
    loaded = version_of(zoo.load("held"))  # readers take no lock
    start = time.monotonic()
    try:
        zoo.save(make_version(2), "held", overwrite=True)
        conn.send(("saved", loaded, "", 0.0))
    except Exception as exc:
        conn.send((type(exc).__name__, loaded, str(exc), time.monotonic() - start))


@pytest.mark.slow
def test_a_lock_held_elsewhere_times_out_naming_the_lock(tiny):
    save_version(1, "held")
    parent, child = FORK.Pipe()
    with store.locked("held") as lock:
        process = FORK.Process(target=_save_while_locked, args=(child,))
        process.start()
        process.join(300)
        kind, loaded, message, waited = parent.recv()
        cli = subprocess.run(
            [sys.executable, "-m", "zoo.cli.main", "rm", "held"],
            env={**os.environ, "ZOO_LOCK_TIMEOUT": "0.5"},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert kind == "LockTimeoutError" and issubclass(zoo.LockTimeoutError, zoo.ZooError)
    assert str(lock) in message and "timed out after 0.5s" in message
    assert waited >= 0.5  # it waited for the timeout (how much longer depends on the machine)
    assert loaded == "v1"
    assert cli.returncode == 1
    assert "error: timed out" in cli.stderr and Path(lock).name in cli.stderr
    assert version_of(zoo.load("held")) == "v1"  # neither the save nor the removal happened
