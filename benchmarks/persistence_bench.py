"""Saved-model targets, measured side by side in one run (prints ratios).

1. Size: a delta of a linear-probed resnet50 (10 classes) must be at most 1% of the full file.
2. Speed: ``zoo.load(name)`` of a saved resnet50 must take no longer than the plain-PyTorch way
   to get the same model ready: ``timm.create_model`` + ``torch.load(weights_only=True)`` of
   the same state dict + ``load_state_dict``. Both sides build the model (zoo through its
   plugin, on the meta device, then assigns the tensors; it also verifies the file's sha256
   seal, which the baseline does not). The catalog is built once before timing (a
   once-per-process cost, like importing timm).

3. Save and load, each in a fresh process: median time of ``zoo.save`` (full file) and of
   ``zoo.fileformat.read_file`` (read, validate, verify the seal), and the peak memory each adds
   (``VmHWM`` of ``/proc/self/status`` after resetting it with ``/proc/self/clear_refs``; torch's
   allocations are invisible to ``tracemalloc``). To compare two versions of zoo, run the same
   script against each: ``git archive HEAD | tar -x -C /tmp/zoo-head`` then
   ``PYTHONPATH=/tmp/zoo-head python benchmarks/persistence_bench.py`` (it prints which zoo it
   measured).

The hub is unreachable here, so the "pretrained" base is resnet50's own random initialisation
saved as a plain safetensors file (``zoo.create(weights=FILE)`` records it as the base).

Measured (resnet50 with a 10-class head, a 90.0 MiB file; the median of the medians of 7 runs in
5 to 8 fresh processes, alternated; peak = memory added; 2 shared CPU cores). Before: format 1
(zoo at b24fad7); after: format 2 (issue 20), zoo still checking the header and reading the
tensors itself. ``library-pread``/``library-mmap`` are the library reading the tensors after
zoo's header check (docs/file-format.md, "Who writes the bytes"):

    save (zoo.save)          before 192.0 ms, +1.1 MiB    after 183.2 ms, +1.0 MiB
    read (read_file)         before 111.8 ms, +91.3 MiB   after 115.9 ms, +91.2 MiB
    library-save (to bytes)  193.9 ms, +180.1 MiB (twice the file)
    library-read (of bytes)  114.1 ms, +180.0 MiB, no validation or seal check
    library-pread            175.5 ms, +90.9 MiB, tensors at 16-byte alignment
    library-mmap (+ copy)    153.8 ms, +182.4 MiB

    python benchmarks/persistence_bench.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed loads per side")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "NAME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, repeats=args.repeats)
        return

    with tempfile.TemporaryDirectory(prefix="zoo-bench-") as tmp:
        os.environ["ZOO_HOME"] = str(Path(tmp) / "home")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        run(Path(tmp), args.arch, args.repeats)


def run(tmp: Path, arch: str, repeats: int) -> None:
    import safetensors.torch
    import timm
    import torch

    import zoo

    print(f"[zoo] measuring {Path(zoo.__file__).parent}")
    zoo.get_catalog()  # once per process, not part of either side
    backbone = f"timm:{arch}"

    # ------------------------------------------------------------ 1. delta size
    base = tmp / "base.safetensors"
    safetensors.torch.save_file(timm.create_model(arch).state_dict(), base)
    model = zoo.create(backbone, num_classes=10, weights=base)
    zoo.freeze(model, "linear-probe")
    with torch.no_grad():  # stands in for training the probe
        for name in model.zoo.plan.trainable:
            model.get_parameter(name).add_(0.01)
    full = zoo.save(model, "probe-full")
    delta = zoo.save(model, "probe-delta", delta=True)
    full_size, delta_size = full.stat().st_size, delta.stat().st_size
    ratio = delta_size / full_size
    print(
        f"[size] {arch} linear probe: full {full_size / 2**20:.1f} MiB, "
        f"delta {delta_size / 2**10:.1f} KiB"
    )
    print(
        f"[size] delta/full = {ratio:.5f} ({100 * ratio:.3f}%)  target <= 1%  "
        f"{'PASS' if ratio <= 0.01 else 'FAIL'}"
    )

    # ------------------------------------------------------------ 2. load time
    state_path = tmp / "state.pt"
    torch.save(model.state_dict(), state_path)
    num_classes = 10

    def baseline() -> torch.nn.Module:
        plain = timm.create_model(arch, num_classes=num_classes)
        plain.load_state_dict(torch.load(state_path, weights_only=True))
        return plain.eval()

    def zoo_load() -> torch.nn.Module:
        return zoo.load("probe-full")

    def zoo_load_delta() -> torch.nn.Module:
        return zoo.load("probe-delta")

    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(baseline()(x), zoo_load()(x)), "the two sides disagree"
        assert torch.equal(zoo_load_delta()(x), zoo_load()(x)), "delta disagrees"
    timings: dict[str, list[float]] = {"baseline": [], "zoo.load": [], "zoo.load(delta)": []}
    sides = {"baseline": baseline, "zoo.load": zoo_load, "zoo.load(delta)": zoo_load_delta}
    for _ in range(repeats):  # interleaved, so load on the machine hits both sides alike
        for label, fn in sides.items():
            start = time.perf_counter()
            fn()
            timings[label].append(time.perf_counter() - start)
    medians = {label: statistics.median(v) for label, v in timings.items()}
    for label, value in medians.items():
        print(
            f"[load] {label:<16} median {value * 1000:7.1f} ms over {repeats} runs "
            f"(min {min(timings[label]) * 1000:.1f} ms)"
        )
    speed = medians["zoo.load"] / medians["baseline"]
    print(
        f"[load] zoo.load/baseline = {speed:.3f}  target <= 1.0  "
        f"{'PASS' if speed <= 1.0 else 'FAIL'}"
    )
    delta_ratio = medians["zoo.load(delta)"] / medians["baseline"]
    print(
        f"[load] zoo.load(delta)/baseline = {delta_ratio:.3f}"
        " (informational: reads the base file too)"
    )

    # ------------------------------------------------------------ 3. save and load, memory
    for kind in ("save", "read", "library-save", "library-read", "library-pread", "library-mmap"):
        out = subprocess.run(
            [sys.executable, __file__, "--repeats", str(repeats), "--child", kind, "probe-full"],
            capture_output=True,
            text=True,
            check=True,
            env=os.environ.copy(),
        ).stdout
        got = json.loads(out.strip().splitlines()[-1])
        print(
            f"[{kind}] {arch} ({got['file_mib']:.1f} MiB): median {got['median_ms']:.1f} ms "
            f"over {repeats} (min {got['min_ms']:.1f} ms); peak memory added "
            f"{got['peak_mib']:.1f} MiB (first run, fresh process)"
        )


def _rss_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def child(kind: str, name: str, *, repeats: int) -> None:
    """One measurement in a fresh process: ``save`` or ``read`` the entry ``name``.

    ``library-save`` and ``library-read`` are the roads not taken, for comparison: the same
    file's tensors through ``safetensors.torch.save`` to bytes (then written) and
    ``safetensors.torch.load`` of the file's bytes (no validation, no seal check).
    ``library-pread`` and ``library-mmap`` are ``read`` with the library reading the tensors
    after zoo's header check (``safe_open`` on the checked descriptor, the seal verified over
    what it returns): with its ``pread`` backend (tensors at 16-byte alignment), and with its
    default ``mmap`` backend and a copy of each tensor (so that what is checked is what is used).
    """
    import safetensors.torch

    import zoo
    from zoo.io import store
    from zoo.io.fileformat import read_file

    def library_read(backend: str) -> None:
        from zoo.io.fileformat import _header_from_open, check_seal, hash_tensors, open_regular

        with open_regular(path) as f:
            header = _header_from_open(f, path)
            with safetensors.safe_open(f"/proc/self/fd/{f.fileno()}", "pt", backend=backend) as lib:
                tensors = {e.name: lib.get_tensor(e.name) for e in header.entries}
        if backend == "mmap":  # the map stays alive while a tensor views it: copy
            tensors = {name: tensor.clone() for name, tensor in tensors.items()}
        check_seal(header.metadata, hash_tensors(tensors), source=str(path))

    zoo.get_catalog()
    path = store.model_file(name)
    model = zoo.load(name) if kind == "save" else None
    state = read_file(path).tensors if kind == "library-save" else None

    def once() -> None:
        if kind == "save":
            zoo.save(model, f"{name}-resaved", overwrite=True)
        elif kind == "read":
            read_file(path)
        elif kind == "library-save":
            path.with_name("library.safetensors").write_bytes(safetensors.torch.save(state))
        elif kind == "library-read":
            safetensors.torch.load(path.read_bytes())
        else:
            library_read(kind.removeprefix("library-"))

    gc.collect()
    before = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # resets VmHWM to the current RSS
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
        if len(times) == 1:
            peak = _rss_kib("VmHWM") - before
        gc.collect()
    print(
        json.dumps(
            {
                "median_ms": 1000 * statistics.median(times),
                "min_ms": 1000 * min(times),
                "peak_mib": peak / 1024,
                "file_mib": path.stat().st_size / 2**20,
            }
        )
    )


if __name__ == "__main__":
    main()
