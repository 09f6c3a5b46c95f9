"""`zoo list` and `zoo show` with a plugin that registers 100,000 backbones.

Targets (issue 11, item 12): a warm `zoo list` (and `zoo list --json`) of 100k entries in at
most 2 s, and `zoo show ONE_NAME` whose warm time does not depend on the catalog's size.

The plugin is a fake installed distribution (``tests/reliability/fakeplugins.py``:
``many_backbones``) written to a temporary folder put on ``PYTHONPATH``, with a temporary
listing cache. Each command runs as a fresh process with stdout to a pipe; the script prints the
median wall time of ``--rounds`` runs, the peak resident memory (``wait4``'s ``ru_maxrss``) and
the ratio to the target, side by side. ``zoo show`` runs once more with a 1,000-entry plugin,
for the size-independence ratio.

    python benchmarks/listing_scale.py [--count 100000] [--rounds 3]
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reliability"))

import fakeplugins

TARGET_LIST_S = 2.0


def zoo_cmd() -> list[str]:
    exe = shutil.which("zoo")
    return [exe] if exe else [sys.executable, "-m", "zoo.cli.main"]


def timed(args: list[str], env: dict[str, str]) -> tuple[float, int, int]:
    """Wall seconds, peak RSS in MB and stdout size of one fresh ``zoo ARGS`` process."""
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        process = subprocess.Popen(
            [*zoo_cmd(), *args], env=env, stdout=out, stderr=subprocess.DEVNULL
        )
        _pid, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            raise RuntimeError(f"zoo {' '.join(args)} exited with {process.returncode}")
        size = os.fstat(out.fileno()).st_size
    return seconds, usage.ru_maxrss // 1024, size


def environment(root: Path, count: int) -> dict[str, str]:
    folder = fakeplugins.many_backbones(count).install(root / f"site-{count}")
    env = fakeplugins.environment([folder], root / f"cache-{count}")
    env["ZOO_HOME"] = str(root / f"home-{count}")
    return env


def median_of(rounds: int, args: list[str], env: dict[str, str]) -> tuple[float, int, int]:
    runs = [timed(args, env) for _ in range(rounds)]
    return statistics.median(r[0] for r in runs), max(r[1] for r in runs), runs[0][2]


def report(label: str, seconds: float, rss_mb: int, target: float | None) -> None:
    ratio = f"{seconds / target:6.2f} of target {target:.1f} s" if target else ""
    print(f"{label:38s} {seconds:7.3f} s  {rss_mb:6d} MB  {ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    name = f"many:net{args.count // 2:06d}"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = environment(root, args.count)
        print(
            f"{args.count} backbones from one plugin (plus the built-ins), "
            f"medians of {args.rounds}; wall time, peak RSS, ratio to target"
        )
        report("cold zoo list (builds the cache)", *timed(["list"], env)[:2], None)
        for words in (["list"], ["list", "--json"], ["list", "net00012*"], ["plugins"]):
            seconds, rss, size = median_of(args.rounds, words, env)
            target = TARGET_LIST_S if words[:2] in (["list"], ["list", "--json"]) else None
            report(f"warm zoo {' '.join(words)} ({size / 1024:.0f} KiB)", seconds, rss, target)
        cold_env = {**env, "ZOO_CACHE_DIR": str(root / "cache-show-cold")}
        report(f"cold zoo show {name}", *timed(["show", name], cold_env)[:2], None)
        timed(["show", name], env)  # fills the table cache
        big, big_rss, _ = median_of(args.rounds, ["show", name], env)
        report(f"warm zoo show ({args.count} entries)", big, big_rss, None)
        small_env = environment(root, 1000)
        timed(["show", "many:net000500"], small_env)
        small, small_rss, _ = median_of(args.rounds, ["show", "many:net000500"], small_env)
        report("warm zoo show (1000 entries)", small, small_rss, None)
        print(
            f"ratio warm zoo show {args.count} / 1000 entries: {big / small:.2f}"
            "  (target: about 1, independent of the catalog's size)"
        )


if __name__ == "__main__":
    main()
