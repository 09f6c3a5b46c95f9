"""The malformed-file corpus, timed: how fast and how small every refusal is.

Writes the corpus of ``tests/reliability/malformed.py`` (hand-made breakages of every rule of
the safetensors format, pickles and ``torch.save`` archives renamed ``.safetensors``, and a
small valid file cut at every byte) and feeds every file to ``zoo.load``, ``zoo.inspect`` and
``zoo.create(..., weights=path)``. Prints, per loader: files refused, refusals that were not a
``zoo.ZooError`` naming the file (must be 0), median and max time, and the peak Python memory
traced during one refusal; then the growth of the process's resident memory over all loads.
For scale, it also times ``zoo.load`` of the valid file the truncations were cut from, saved as
a zoo model.

    python benchmarks/malformed_corpus.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "reliability"))
sys.path.insert(0, str(HERE.parent / "tests"))  # fileformat_helpers


def rss() -> int:
    import resource

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the corpus")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="zoo-corpus-") as tmp:
        os.environ["ZOO_HOME"] = str(Path(tmp) / "home")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        run(Path(tmp), args.repeats)


def run(tmp: Path, repeats: int) -> None:
    import malformed
    from reliability_helpers import BACKBONE, PLUGIN_NAME, TinyPlugin, make_version

    import zoo
    from zoo.api import set_catalog
    from zoo.core.catalog import Catalog
    from zoo.core.plugins import make_plugin_host

    set_catalog(
        Catalog(make_plugin_host(builtins=False, autoload=False, extra={PLUGIN_NAME: TinyPlugin}))
    )
    marker = tmp / "UNPICKLED"
    corpus = malformed.write_corpus(tmp / "corpus", marker)
    named = sum(1 for case, _ in corpus if not case.name.startswith("truncated to"))
    loaders = {
        "zoo.load": lambda p: zoo.load(p),
        "zoo.inspect": lambda p: zoo.inspect(p),
        "zoo.create(weights=)": lambda p: zoo.create(BACKBONE, num_classes=2, weights=p),
    }
    for loader in loaders.values():  # warm up lazy imports
        with contextlib.suppress(zoo.ZooError):
            loader(corpus[0][1])

    small = (tmp / "corpus" / "valid" / "small.safetensors").stat().st_size
    print(
        f"corpus: {len(corpus)} files ({named} named breakages, "
        f"{len(corpus) - named} truncations of a {small}-byte file)"
    )
    print(f"{'loader':22} {'refused':>8} {'wrong':>6} {'median':>9} {'max':>9} {'peak mem':>9}")
    before = rss()
    total = 0
    for name, loader in loaders.items():
        times: list[float] = []
        wrong = 0
        peak = 0
        for _ in range(repeats):
            for _case, path in corpus:
                start = time.perf_counter()
                try:
                    loader(path)
                    wrong += 1
                except zoo.ZooError as exc:
                    wrong += str(path) not in str(exc)
                except Exception:
                    wrong += 1
                times.append(time.perf_counter() - start)
        for _case, path in corpus:  # one traced pass (tracing slows every allocation)
            tracemalloc.start()
            with contextlib.suppress(Exception):
                loader(path)
            peak = max(peak, tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
        total += len(times)
        print(
            f"{name:22} {len(times):>8} {wrong:>6} {statistics.median(times) * 1e3:>7.2f}ms "
            f"{max(times) * 1e3:>7.2f}ms {peak / 1024:>7.0f}KB"
        )
    growth = rss() - before
    print(
        f"{total} refusals; resident memory grew by {growth / 2**20:.1f} MB; "
        f"pickle payload ran: {marker.exists()}"
    )

    good = zoo.save(make_version(1), tmp / "good.safetensors")
    start = time.perf_counter()
    for _ in range(20):
        zoo.load(good)
    print(
        f"for scale: zoo.load of a valid tiny model: "
        f"{(time.perf_counter() - start) / 20 * 1e3:.2f}ms"
    )


if __name__ == "__main__":
    main()
