"""zoo compare against the slowest candidate's full run, side by side, same data.

Runs, on the same generated image folders with the same seed and settings:

1. ``zoo.adapt(policy="full", augment=False)`` for ``--epochs`` epochs — the full run of the
   most expensive candidate of the default ladder, as a user would run it;
2. ``zoo.compare`` of the default ladder (linear-probe, train-last:n=1..3, bitfit, norm-only,
   layer-decay, full) for the same ``--epochs``;

3. with ``--blend``, ``zoo.compare(..., blend=True)`` — the same plus the greedy soup and the
   WiSE-FT rows (issue 21's target: at most 2.5x the full run);

and prints the wall times, their ratios (target: compare <= about 2x the full run), the
leaderboard, and what running every candidate to the end separately would have cost
(each candidate's measured seconds per epoch x epochs, plus one image decoding per epoch).

The default is 2,048 images (64 optimizer steps per epoch at batch 32): successive halving cuts
only after rungs of at least 64 steps (``MIN_RUNG_STEPS``), so with much less data every
candidate trains to the end — cheap in seconds, but then the ratio is the sum of the candidates
(5.4x at 256 images), which the leaderboard says. docs/compare.md has the arithmetic.

    python benchmarks/compare_bench.py                        # resnet10t, 2048 images, 6 epochs
    python benchmarks/compare_bench.py --images 256           # tiny data: no halving
    python benchmarks/compare_bench.py --backbone timm:resnet18 --epochs 8 --threads 1
    python benchmarks/compare_bench.py --blend               # also compare with blends
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from linear_probe_bench import COLOURS, make_folder


def run(args: argparse.Namespace) -> int:
    import torch

    import zoo

    if args.threads:
        torch.set_num_threads(args.threads)
    zoo.get_catalog()
    common = {
        "epochs": args.epochs,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": 0,
        "scratch": True,  # offline: random weights, on purpose (timing, not accuracy)
        "device": args.device,
    }
    with tempfile.TemporaryDirectory(prefix="zoo-compare-bench-") as tmp:
        root = Path(tmp)
        per_class = max(2, args.images // len(COLOURS))
        make_folder(root / "train", per_class, args.image_size, seed=0)
        make_folder(root / "val", max(2, per_class // 4), args.image_size, seed=1)
        print(
            f"{args.backbone}, {per_class * len(COLOURS)} training images of "
            f"{args.image_size}px, {args.epochs} epochs, batch {args.batch_size}, "
            f"{torch.get_num_threads()} thread(s)"
        )
        # warm-up, not timed: the first run in a process pays for lazy initialisation
        zoo.adapt(
            args.backbone, root / "train", root / "val", policy="full", augment=False,
            **{**common, "epochs": 1},
        )  # fmt: skip
        start = time.perf_counter()
        _model, history = zoo.adapt(
            args.backbone,
            root / "train",
            root / "val",
            policy="full",
            augment=False,
            **common,
        )
        full_seconds = time.perf_counter() - start
        start = time.perf_counter()
        result = zoo.compare(args.backbone, root / "train", root / "val", **common)
        compare_seconds = time.perf_counter() - start
        blend_seconds, blended = None, None
        if args.blend:
            start = time.perf_counter()
            blended = zoo.compare(args.backbone, root / "train", root / "val", blend=True, **common)
            blend_seconds = time.perf_counter() - start
        auto_seconds, auto_note = None, ""
        if args.auto:  # from the full run's weights: trained, so auto may freeze part of them
            start_weights = zoo.save(_model, root / "start.safetensors")
            auto_options = {**common, "scratch": False, "weights": start_weights}
            start = time.perf_counter()
            _auto, auto_history = zoo.adapt(
                args.backbone, root / "train", root / "val", policy="auto", **auto_options
            )
            auto_seconds = time.perf_counter() - start
            auto_note = next(n for n in auto_history.notes if n.startswith("auto measured"))
    board = result.leaderboard
    print()
    print(f"{'policy':<32} {'val acc':>8} {'trained':>10} {'epochs':>6} {'seconds':>8}  on")
    separately = 0.0
    for row in board.rows:
        per_epoch = row.seconds / row.epochs if row.epochs else 0.0
        separately += per_epoch * args.epochs
        print(
            f"{row.policy:<32} {row.val_acc:>8.3f} {row.trainable_params:>10,} "
            f"{row.epochs:>6} {row.seconds:>8.2f}  {row.trained_on}"
        )
    print()
    print(
        f"full run of the slowest candidate (zoo.adapt full): {full_seconds:8.2f} s "
        f"(val acc {history.final_accuracy:.3f})"
    )
    print(
        f"zoo compare, {len(board.rows)} candidates, rungs {list(board.rungs)}:  "
        f"{compare_seconds:8.2f} s (winner {board.winner.policy}, {board.winner.val_acc:.3f})"
    )
    print(
        f"ratio compare / slowest full run: {compare_seconds / full_seconds:.2f}x (target <= ~2x)"
    )
    if blend_seconds is not None and blended is not None:
        winner = blended.leaderboard.winner
        print(
            f"zoo compare --blend ({len(blended.leaderboard.rows)} rows):  {blend_seconds:8.2f} s "
            f"(winner {winner.policy}, {winner.val_acc:.3f}); ratio to the slowest full run: "
            f"{blend_seconds / full_seconds:.2f}x (target <= 2.5x)"
        )
    if auto_seconds is not None:
        print(
            f"zoo.adapt(policy='auto') with validation data: {auto_seconds:8.2f} s "
            f"({auto_seconds / full_seconds:.2f}x the full run): {auto_note}"
        )
    print(
        f"every candidate to the end on shared work would take about {separately:.1f} s of "
        f"training; {len(board.rows)} separate adapt runs about "
        f"{len(board.rows)} x the full run's data loading on top"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="timm:resnet10t")
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--auto", action="store_true", help="also time the measured auto (zoo.adapt policy=auto)"
    )
    parser.add_argument(
        "--blend", action="store_true", help="also time zoo.compare(..., blend=True)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    return run(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
