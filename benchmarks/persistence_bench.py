"""Saved-model targets, measured side by side in one run (prints ratios).

1. Size: a delta of a linear-probed resnet50 (10 classes) must be at most 1% of the full file.
2. Speed: ``zoo.load(name)`` of a saved resnet50 must take no longer than the plain-PyTorch way
   to get the same model ready: ``timm.create_model`` + ``torch.load(weights_only=True)`` of
   the same state dict + ``load_state_dict``. Both sides build the model (zoo through its
   plugin, on the meta device, then assigns the tensors; it also verifies the file's sha256
   seal, which the baseline does not). The catalog is built once before timing (a
   once-per-process cost, like importing timm).

The hub is unreachable here, so the "pretrained" base is resnet50's own random initialisation
saved as a plain safetensors file (``zoo.create(weights=FILE)`` records it as the base).

    python benchmarks/persistence_bench.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed loads per side")
    parser.add_argument("--arch", default="resnet50")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="zoo-bench-") as tmp:
        os.environ["ZOO_HOME"] = str(Path(tmp) / "home")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        run(Path(tmp), args.arch, args.repeats)


def run(tmp: Path, arch: str, repeats: int) -> None:
    import timm
    import torch

    import zoo
    from zoo.io.fileformat import write_file

    zoo.get_catalog()  # once per process, not part of either side
    backbone = f"timm:{arch}"

    # ------------------------------------------------------------ 1. delta size
    base = write_file(tmp / "base.safetensors", timm.create_model(arch).state_dict())
    model = zoo.create(backbone, num_classes=10, weights=base)
    zoo.freeze(model, "linear-probe")
    with torch.no_grad():  # stands in for training the probe
        for name in model.zoo_plan.trainable:
            model.get_parameter(name).add_(0.01)
    full = zoo.save(model, "probe-full")
    delta = zoo.save(model, "probe-delta", delta=True)
    full_size, delta_size = full.stat().st_size, delta.stat().st_size
    ratio = delta_size / full_size
    print(f"[size] {arch} linear probe: full {full_size / 2**20:.1f} MiB, "
          f"delta {delta_size / 2**10:.1f} KiB")
    print(f"[size] delta/full = {ratio:.5f} ({100 * ratio:.3f}%)  target <= 1%  "
          f"{'PASS' if ratio <= 0.01 else 'FAIL'}")

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
        print(f"[load] {label:<16} median {value * 1000:7.1f} ms over {repeats} runs "
              f"(min {min(timings[label]) * 1000:.1f} ms)")
    speed = medians["zoo.load"] / medians["baseline"]
    print(f"[load] zoo.load/baseline = {speed:.3f}  target <= 1.0  "
          f"{'PASS' if speed <= 1.0 else 'FAIL'}")
    delta_ratio = medians['zoo.load(delta)'] / medians['baseline']
    print(f"[load] zoo.load(delta)/baseline = {delta_ratio:.3f}"
          " (informational: reads the base file too)")


if __name__ == "__main__":
    main()
