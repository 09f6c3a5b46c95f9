"""Real ``torch.distributed`` processes for the tests: ``torchrun --standalone`` with two gloo
ranks on the loopback interface, one thread each, this checkout importable in every rank."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import zoo


def torchrun(
    *args: object, zoo_home: Path | None = None, timeout: float = 240
) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc_per_node 2 *args``, captured."""
    root = str(Path(zoo.__file__).resolve().parents[1])  # this checkout, installed or not
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "lo",
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    }
    if zoo_home is not None:
        env["ZOO_HOME"] = str(zoo_home)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", *map(str, args)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def run_worker(
    folder: Path, source: str, *args: object, zoo_home: Path | None = None
) -> subprocess.CompletedProcess:
    """Write ``source`` as ``folder/worker.py`` and run it on two ranks with ``args``."""
    script = folder / "worker.py"
    script.write_text(source)
    return torchrun(script, *args, zoo_home=zoo_home)
