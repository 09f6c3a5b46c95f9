"""``zoo adapt BACKBONE --data DIR``: train a backbone on an image folder and save it by name."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from zoo.cli.common import is_main_rank
from zoo.cli.output import Output
from zoo.cli.train_options import add_options, config_from_args, named_by_option

ORDER = 40


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "adapt",
        help="adapt a backbone to your images under a freeze policy and save it by name",
        description="Train BACKBONE (a backbone name, a saved model's name or a .safetensors\n"
        "file) on an image folder with one sub-folder per class, under a freeze policy, and\n"
        "save the result into the store with its class names. A plan that trains only the\n"
        "head on un-augmented images trains on features computed once (fast linear probe).\n"
        "Augmentation (timm's): on when more than the head trains; --no-hflip, --scale,\n"
        "--color-jitter, --auto-augment, --mixup, --cutmix shape it; --ema averages weights.\n"
        "Unreadable or refused images (not BMP/GIF/JPEG/PNG/PPM/TIFF/WebP, over 8192x8192\n"
        "pixels, a side over 100 times the other) are skipped and listed (--strict-images:\n"
        "stop at the first); links to folders inside a class folder are not followed.\n"
        "Distributed: torchrun --nproc_per_node N -m zoo adapt ...",
        epilog="examples:\n"
        "  zoo adapt timm:resnet18 --data flowers/train --val flowers/val --policy linear-probe "
        "--name flowers\n"
        "  zoo adapt timm:convnext_atto --data pets --val-split 0.2 --policy gradual:every=2 "
        "--epochs 6\n"
        "  zoo adapt timm:resnet18 --data flowers/train --weights flowers --name flowers-r18\n"
        "  zoo adapt timm:resnet10t --data digits --scratch --policy full --name digits\n"
        "  zoo adapt flowers --data more-flowers --policy freeze-to:depth=3 --name flowers-v2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(parser, "adapt")
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--name",
        "-n",
        metavar="NAME",
        help="store name to save under, no path separators (default: BACKBONE-DATA)",
    )
    target.add_argument(
        "--output",
        "-o",
        metavar="PATH",
        help="save to this file (.safetensors) or folder instead of the store",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--quiet", "-q", action="store_true", help="no progress: print only the summary"
    )
    parser.set_defaults(handler=run)


def default_name(backbone: str, data: str) -> str:
    """``<backbone>-<data folder>``: ``resnet18-flowers`` (``train`` folders use the parent;
    a manifest is named without its suffix: ``flowers/train.csv`` is ``flowers`` too)."""
    base = backbone.split(":", 1)[-1]
    if base.endswith(".safetensors"):
        base = Path(base).stem
    from zoo.adaptation.sources import is_manifest  # loads torch: the run is about to

    folder = Path(os.path.abspath(data))
    if is_manifest(folder):
        folder = folder.with_suffix("")
    label = folder.name
    if label.lower() in {"train", "training", "images", "data"} and folder.parent.name:
        label = folder.parent.name
    name = re.sub(r"[^A-Za-z0-9_.+@=-]+", "-", f"{Path(base).name}-{label}").strip("-.")
    return name[:100] or "adapted"


def check_store_name(name: str) -> None:
    """Refuse a ``--name`` that is a path: it names a store entry (``--output`` takes paths)."""
    from zoo.errors import InvalidNameError

    separators = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
    if any(s in name for s in separators) or name in {".", ".."}:
        raise InvalidNameError(
            f"--name {name!r} is a store name and cannot contain a path separator or be "
            "'.' or '..'; to save to a file or folder use --output PATH"
        )


def run(args: argparse.Namespace, out: Output) -> int:
    from zoo.adaptation.checkpoint import AdaptInterrupted
    from zoo.adaptation.job import run as run_job
    from zoo.core.catalog import get_catalog

    main_rank = is_main_rank()
    if args.name is not None:
        check_store_name(args.name)
    name = args.output or args.name or default_name(args.backbone, args.data)
    progress = None
    stopped: AdaptInterrupted | None = None
    if main_rank and not (args.json or args.quiet):
        from zoo.cli.render_adapt import AdaptProgress

        progress = AdaptProgress(out.console)
    try:
        with named_by_option():
            config = config_from_args(args, "adapt", name=name, callback=progress)
            try:
                _model, history = run_job(
                    args.backbone, args.data, args.val, config, catalog=get_catalog()
                )
            except AdaptInterrupted as exc:  # Ctrl-C: the last completed epoch is kept
                stopped = exc
            if stopped is None and config.shard:  # the sharded model's group: ours to end
                from zoo.adaptation.distributed import end_group

                end_group()
    finally:
        if progress is not None:
            progress.close()
    if stopped is not None:
        out.error(str(stopped))
        return 130
    if not main_rank:
        return 0
    if args.json:
        out.json(history.to_dict())
        return 0
    from zoo.cli.render_adapt import history_table, skipped_text, summary_table

    if history.skipped:
        out.err.print(skipped_text(history))
    if not args.quiet:
        out.print(history_table(history))
        out.print()
    out.print(summary_table(history))
    return 0
