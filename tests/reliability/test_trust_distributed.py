"""A failing rank stops every rank with its error (issue 11, item 14).

Two real CPU processes (gloo on 127.0.0.1) run ``zoo.adapt`` with a plain launcher that only
sets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` — no torchrun, whose agent would kill the other
workers when one exits and so hide what zoo itself does. Rank 1 fails; before the fix rank 0
waited in a collective for the process-group timeout (30 minutes), or, when rank 1's process
ended, stopped with gloo's "Connection closed by peer" instead of rank 1's error. So the
evidence is rank 0's own error naming rank 1's; the timeouts below only guard against a hang
(far below the 1800 s it used to wait), they are not what is asserted.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

#: Hang guard: seconds to wait for rank 0 (the process-group timeout it used to wait for is
#: 1800 s; rank 0 stopping with rank 1's error is what the tests assert).
HANG = 300

WORKER = textwrap.dedent(
    """
    import os, sys, time
    import torch
    torch.set_num_threads(1)
    from torch.utils.data import DataLoader, Dataset
    import zoo
    from zoo.adaptation.data import load_image

    mode, bad_image = sys.argv[1], sys.argv[2]
    rank = int(os.environ["RANK"])

    class Colours(Dataset):
        classes = ["dark", "light"]

        def __init__(self):
            self.targets = [i % 2 for i in range(48)]
            self.calls = 0

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, i):
            self.calls += 1
            if rank == 1 and mode != "prepare" and self.calls > 6:
                load_image(bad_image)  # raises zoo's DataError naming the file
            return torch.full((3, 32, 32), float(self.targets[i])), self.targets[i]

    train = DataLoader(Colours(), batch_size=4)
    if rank == 1 and mode == "prepare":
        train = os.path.join(os.path.dirname(bad_image), "missing-on-this-node")
    try:
        zoo.adapt("timm:test_resnet", train, policy="full", epochs=3, image_size=32, scratch=True,
                  feature_cache=False, device="cpu")
    except Exception as exc:
        print("RAISED", type(exc).__name__, exc, flush=True)
        if rank == 1 and mode == "stays":
            time.sleep(3600)  # the failed process lives on (a notebook, a retry loop)
        raise
    print("FINISHED", flush=True)
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(tmp_path: Path, mode: str) -> tuple[list[subprocess.Popen], Path]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
            "GLOO_SOCKET_IFNAME": "lo",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), mode, str(bad)],
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
    return procs, bad


def _run(tmp_path: Path, mode: str) -> tuple[str, str]:
    """(rank 0's output, rank 1's output)."""
    procs, _bad = _launch(tmp_path, mode)
    try:
        out0, err0 = procs[0].communicate(timeout=HANG)
        if mode == "stays":  # rank 0 ended while rank 1 still sleeps: it did not wait for it
            assert procs[1].poll() is None, "rank 1 ended before rank 0: nothing was shown"
            procs[1].kill()
        out1, err1 = procs[1].communicate(timeout=HANG)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return out0 + err0, out1 + err1


@pytest.mark.slow
def test_bad_image_on_one_rank_stops_the_other_with_its_error(tmp_path):
    rank0, rank1 = _run(tmp_path, "exits")
    assert "RAISED DataError cannot decode image" in rank1
    assert "RAISED ZooError rank 1 failed: DataError: cannot decode image" in rank0, rank0[-3000:]
    assert "bad.png" in rank0.split("RAISED", 1)[1]
    assert "FINISHED" not in rank0


@pytest.mark.slow
def test_failure_while_preparing_data_does_not_leave_the_others_waiting(tmp_path):
    """Rank 1's folder is missing: before, rank 0 waited for it to join the group."""
    rank0, rank1 = _run(tmp_path, "prepare")
    assert "RAISED DataError image folder" in rank1
    assert "RAISED ZooError rank 1 failed: DataError: image folder" in rank0, rank0[-3000:]
    assert "missing-on-this-node" in rank0


@pytest.mark.slow
def test_a_failed_rank_that_lives_on_does_not_block_the_others(tmp_path):
    """Rank 1 catches its error and carries on: rank 0, blocked in a collective with it,
    ends its process with rank 1's message instead of waiting 30 minutes."""
    rank0, rank1 = _run(tmp_path, "stays")
    assert "RAISED DataError cannot decode image" in rank1
    assert "rank 1 failed: DataError: cannot decode image" in rank0, rank0[-3000:]
    assert "FINISHED" not in rank0
