"""Fast linear probes: the feature cache against the plain loop, side by side, same data.

Runs ``zoo.adapt(..., policy="linear-probe")`` twice on the same generated image folder with
the same seed — once with ``feature_cache=False`` (every epoch runs the frozen backbone on
every image) and once with the cache (the backbone runs once; the head trains on the cached
features) — and prints the time of each, the ratio, and the accuracy of both models on
held-out images (the cache trains on exactly the batches the plain loop sees, so the models
agree up to float rounding).

The ratio is over the training phase (computing features + all epochs, from the history);
the end-to-end time of each ``adapt`` call (model build, plan, saving nothing) is shown too.
Target: 10 epochs at least 8x faster with the cache.

    python benchmarks/linear_probe_bench.py                 # resnet18, 512 images, 10 epochs
    python benchmarks/linear_probe_bench.py --epochs 5 --image-size 96
    python benchmarks/linear_probe_bench.py --scratch       # offline: random weights
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

COLOURS = [(200, 60, 60), (60, 200, 60), (60, 60, 200), (200, 200, 60)]


def make_folder(root: Path, per_class: int, size: int, seed: int) -> None:
    """Noisy images of four classes: a coloured disc on a random background."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    for label, colour in enumerate(COLOURS):
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            bg = tuple(rng.randrange(256) for _ in range(3))
            image = Image.new("RGB", (size, size), bg)
            draw = ImageDraw.Draw(image)
            r = rng.randint(size // 5, size // 3)
            x, y = rng.randint(r, size - r), rng.randint(r, size - r)
            jitter = tuple(max(0, min(255, c + rng.randint(-50, 50))) for c in colour)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=jitter)
            image.save(folder / f"{i:04d}.png")


def run(args: argparse.Namespace) -> int:
    import torch

    import zoo

    if args.threads:
        torch.set_num_threads(args.threads)
    zoo.get_catalog()  # built once, outside both timings
    with tempfile.TemporaryDirectory(prefix="zoo-probe-bench-") as tmp:
        root = Path(tmp)
        per_class = max(1, args.images // len(COLOURS))
        make_folder(root / "train", per_class, args.image_size, seed=0)
        make_folder(root / "test", max(1, per_class // 4), args.image_size, seed=1)
        print(
            f"{args.backbone}, {per_class * len(COLOURS)} images of {args.image_size}px, "
            f"{args.epochs} epochs, batch {args.batch_size}, "
            f"{torch.get_num_threads()} thread(s)"
        )
        results = {}
        for cache in (False, True):
            start = time.perf_counter()
            model, history = zoo.adapt(
                args.backbone,
                root / "train",
                policy="linear-probe",
                epochs=args.epochs,
                image_size=args.image_size,
                batch_size=args.batch_size,
                lr=args.lr,
                feature_cache=cache,
                seed=0,
                scratch=args.scratch,
            )
            wall = time.perf_counter() - start
            assert history.feature_cache is cache, history.feature_cache_note
            train = history.feature_seconds + sum(e.seconds for e in history)
            score = zoo.evaluate(model, root / "test")
            results[cache] = (train, wall, score.accuracy, model)
            label = "feature cache" if cache else "plain loop   "
            extra = f" (features {history.feature_seconds:.2f}s)" if cache else ""
            print(
                f"{label}: training {train:7.2f}s{extra}, adapt() {wall:7.2f}s, "
                f"held-out accuracy {100 * score.accuracy:.1f}%"
            )
        plain, cached = results[False], results[True]
        weights = [p for n, p in plain[3].named_parameters() if p.requires_grad or "fc" in n]
        diff = max(
            (a - b).abs().max().item()
            for a, b in zip(
                plain[3].state_dict().values(), cached[3].state_dict().values(), strict=True
            )
            if a.is_floating_point()
        )
        ratio = plain[0] / cached[0]
        print(
            f"ratio (training): {ratio:.1f}x   ratio (whole adapt call): "
            f"{plain[1] / cached[1]:.1f}x   target: >= 8x for 10 epochs"
        )
        print(
            f"accuracy plain {100 * plain[2]:.1f}% vs cached {100 * cached[2]:.1f}%; "
            f"largest weight difference {diff:.2e} ({len(weights)} head tensors trained)"
        )
        return 0 if ratio >= 8 or args.epochs < 10 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="timm:resnet18")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--scratch",
        action="store_true",
        help="random weights (offline without cached pretrained ones): the speed is the same",
    )
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
