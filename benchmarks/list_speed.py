"""Warm `zoo list` versus `python -c "import timm; timm.list_models()"`, side by side.

Target (issue 2): a warm `zoo list` takes at most 15% of the timm command's time. Each round
runs both commands once, in alternating order, as fresh subprocesses with stdout to a pipe;
the script prints the median of each and their ratio.

    python benchmarks/list_speed.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

TIMM_CMD = [sys.executable, "-c", "import timm; timm.list_models()"]


def zoo_cmd() -> list[str]:
    exe = shutil.which("zoo")
    return [exe, "list"] if exe else [sys.executable, "-m", "zoo.cli.main", "list"]


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, capture_output=True, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "ZOO_CACHE_DIR": cache, "HF_HUB_OFFLINE": "1"}
        cold = timed(zoo_cmd(), env)  # builds and caches the listing
        timm_times, zoo_times = [], []
        for i in range(args.rounds):
            pair = [(timm_times, TIMM_CMD), (zoo_times, zoo_cmd())]
            for times, cmd in pair if i % 2 == 0 else reversed(pair):
                times.append(timed(cmd, env))
    timm_med, zoo_med = statistics.median(timm_times), statistics.median(zoo_times)
    print(f"cold zoo list (builds cache):        {cold:7.3f} s")
    print(f"python -c 'import timm; list_models': {timm_med:7.3f} s (median of {args.rounds})")
    print(f"warm zoo list:                        {zoo_med:7.3f} s (median of {args.rounds})")
    print(f"ratio warm zoo list / timm: {zoo_med / timm_med:.3f}  (target <= 0.15)")


if __name__ == "__main__":
    main()
