"""Interrupted writes: a save killed or failing at any point loses nothing and leaves no entry half.

Real processes (forked from the test process, so they start in milliseconds) save the tiny
model and are killed with SIGKILL: before every file-system operation of a save (found by
counting them), after random delays while saving in a loop, and at the documented
``ZOO_TEST_PAUSE_BEFORE_REPLACE`` hook. Writes also fail: a file-size limit (``RLIMIT_FSIZE``,
as a full disk does) in a child, and ``OSError(ENOSPC)`` injected in-process before each
operation. After each fault: the name holds one complete version that loads and verifies, no
partial entry is listed, temporary files are never listed as models, ``zoo gc`` removes them
and repairs a ``config.json`` left describing the previous version.

Whole commands are killed too (issue 19): a real ``zoo adapt`` that checkpoints every epoch,
its ``--resume`` and a ``zoo compare``, each with SIGKILL at random I/O operations of the run
(a seeded draw among all of them: image reads, checkpoint files, the final save). After every
kill the store is consistent whatever the moment: only whole entries are listed, a checkpoint
on disk is whole, ``zoo gc`` would remove only what zoo wrote, the next ``--resume`` continues
from the checkpoint or says there is none, and a final run completes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import resource
import select
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

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
from test_data import make_color_folder
from trust_helpers import HANG, cli

import zoo
from zoo.cli.main import main
from zoo.io import store
from zoo.io.fileformat import PAUSE_ENV, is_temp_name, read_file


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


# ---------------------------------------------------------------- adapt, resume and compare


def _killed_cli(argv: list[str], at: int | None, conn: Any) -> None:
    child_init()
    injector = Injector(at, sigkill)
    with injector.armed():
        status, out, err = cli(*argv)
    conn.send((status, out, err, len(injector.events)))


def run_cli(argv: list[str], at: int | None = None) -> tuple[int, str, str, int] | None:
    """``zoo ARGV`` in a forked child, killed with SIGKILL at its ``at``-th I/O event: None
    when it was killed, else ``(status, stdout, stderr, I/O events)`` (the run ended first)."""
    reader, writer = FORK.Pipe(duplex=False)
    process = FORK.Process(target=_killed_cli, args=(argv, at, writer))
    process.start()
    writer.close()
    reply = None
    if reader.poll(HANG):  # also true when the child died: then there is nothing to receive
        with contextlib.suppress(EOFError):
            reply = reader.recv()
    process.join(HANG)
    assert process.exitcode is not None, f"hung: zoo {' '.join(argv[:2])}"
    if reply is None:
        assert process.exitcode == -signal.SIGKILL, f"died with {process.exitcode}"
    return reply


def kept_epoch(folder: Path) -> int | None:
    """The epoch of the checkpoint in ``folder``, checked whole: ``state.json`` names files
    that are all there, each read back sealed by zoo's reader; nothing but zoo's files (the
    previous epoch's not yet deleted, temporary ones) beside them. None: no checkpoint."""
    if not folder.exists():
        return None
    names = sorted(os.listdir(folder))
    odd = [n for n in names if not (n == "state.json" or store.parse_checkpoint_file(n))]
    assert all(is_temp_name(n) for n in odd), f"not zoo's: {odd}"
    if "state.json" not in names:
        return None  # killed before the first epoch's checkpoint was published
    state = json.loads((folder / "state.json").read_text())
    for name in filter(None, state["files"].values()):
        assert read_file(folder / name).verified, f"{name} of epoch {state['epoch']}"
    return state["epoch"]


def check_consistent(sentinels: dict[Path, bytes]) -> None:
    """After a kill: ``zoo models`` lists only whole entries, each loading and verifying; ``zoo
    gc`` would remove only zoo's leftovers; the user's files are as they were."""
    status, out, _ = cli("models", "--json")
    assert status == 0
    for entry in json.loads(out)["models"]:
        assert entry["ok"] and entry["name"] in ("adapted", "compared"), entry
        assert zoo.inspect(entry["name"]).verified
        zoo.load(entry["name"])
    status, out, _ = cli("gc", "--dry-run", "--json")
    report = json.loads(out)
    assert status == 0 and report["skipped"] == [], report
    for path in map(Path, report["removed"]):
        assert is_temp_name(path.name) or path.parent == store.checkpoints_dir(), path
    assert {p: p.read_bytes() for p in sentinels} == sentinels


def clean_up() -> None:
    """``zoo gc`` removes exactly the leftovers zoo wrote; none is left."""
    leftovers = temp_leftovers()
    status, out, _ = cli("gc", "--json")
    assert status == 0 and json.loads(out)["removed"] == [str(p) for p in leftovers]
    assert temp_leftovers() == []


@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("colours")
    make_color_folder(root / "train", per_class=6, seed=0)
    make_color_folder(root / "val", per_class=2, seed=1)
    return root


def _argv(command: str, data: Path, *more: str) -> list[str]:
    fast = ["--image-size", "32", "--batch-size", "8", "--scratch", "--overwrite", "--json"]
    folders = ["--data", str(data / "train"), "--val", str(data / "val")]
    return [command, "timm:test_resnet", *folders, *fast, *more]


#: The epochs of the adapt run killed below.
EPOCHS = 5


def test_adapt_resume_and_compare_killed_at_random_moments_keep_the_store_consistent(
    colours, lock_timeout
):
    # train-last with early stopping: each checkpoint has a frozen, model, optimizer and best file
    adapt = _argv("adapt", colours, "--policy", "train-last:n=1", "--epochs", str(EPOCHS))
    adapt += ["--early-stop", "3", "--name", "adapted"]
    compare = _argv("compare", colours, "--policies", "linear-probe,train-last:n=1,full")
    compare += ["--epochs", "2", "--name", "compared"]
    folder = store.checkpoint_folder("adapted")
    sentinels = {store.zoo_home() / "tmp" / "notes.txt": b"mine", colours / "notes.txt": b"mine"}
    for path, text in sentinels.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text)
    # whole runs say how many I/O operations a run has: the moments to kill at are drawn there
    adapt_events = run_cli(adapt)[3]
    compare_events = run_cli(compare)[3]
    clean_up()
    rng = random.Random(19)
    kills: Counter[str] = Counter()
    for _chain in range(6):
        if run_cli(adapt, rng.randint(1, adapt_events)) is None:
            kills["adapt"] += 1
        check_consistent(sentinels)
        for attempt in range(3):  # resumed: killed at random moments twice, then to the end
            epoch = kept_epoch(folder)
            if epoch is None:
                status, _out, err, _ = run_cli([*adapt, "--resume"])
                assert status == 1 and "no checkpoint to resume" in " ".join(err.split()), err
                status, _out, err, _ = run_cli(adapt)
                assert status == 0, err
                break
            # a resume runs the epochs left (and starts up as a fresh run does): draw among
            # about as many operations as it has, so that most draws land before its end
            left = math.ceil(adapt_events * (EPOCHS - epoch + 1) / (EPOCHS + 1))
            reply = run_cli([*adapt, "--resume"], rng.randint(1, left) if attempt < 2 else None)
            check_consistent(sentinels)
            if reply is None:
                kills["resume"] += 1
                continue
            status, out, err, _ = reply
            assert status == 0 and json.loads(out)["resumed_from"] == epoch, err
            break
        assert not folder.exists()  # a run that saved its model deletes its checkpoint
        clean_up()
    for _kill in range(8):
        if run_cli(compare, rng.randint(1, compare_events)) is None:
            kills["compare"] += 1
        check_consistent(sentinels)
    status, _out, err, _ = run_cli(compare)
    assert status == 0, err
    clean_up()
    assert {p: p.read_bytes() for p in sentinels} == sentinels
    assert set(store_listing()) == {"adapted", "compared"}
    total = sum(kills.values())
    print(f"\n{total} random kills ({dict(kills)}): {total} consistent")
