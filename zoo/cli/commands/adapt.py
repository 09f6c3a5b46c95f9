"""``zoo adapt BACKBONE --data DIR``: train a backbone on an image folder and save it by name."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from zoo.cli.common import is_main_rank, naming_options
from zoo.cli.output import Output

ORDER = 40


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "adapt",
        help="adapt a backbone to your images under a freeze policy and save it by name",
        description="Train BACKBONE (a backbone name, a saved model's name or a .safetensors\n"
        "file) on an image folder with one sub-folder per class, under a freeze policy, and\n"
        "save the result into the store with its class names. A plan that trains only the\n"
        "head on un-augmented images trains on features computed once (fast linear probe).\n"
        "Unreadable or refused images (not BMP/GIF/JPEG/PNG/PPM/TIFF/WebP, over 8192x8192\n"
        "pixels, a side over 100 times the other) are skipped and listed (--strict-images:\n"
        "stop at the first); links to folders inside a class folder are not followed.\n"
        "Distributed: torchrun --nproc_per_node N -m zoo.cli.main adapt ...",
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
    parser.add_argument(
        "backbone",
        metavar="BACKBONE",
        help="backbone name (timm:resnet18, timm:vit_tiny_patch16_224), a saved "
        "model's name, or a .safetensors file to start from",
    )
    parser.add_argument(
        "--data",
        "-d",
        required=True,
        metavar="DIR",
        help="training images: one sub-folder per class",
    )
    val = parser.add_mutually_exclusive_group()
    val.add_argument("--val", metavar="DIR", help="validation images, same class folders")
    val.add_argument(
        "--val-split",
        type=float,
        metavar="F",
        help="hold out this fraction of --data for validation (stratified)",
    )
    parser.add_argument(
        "--policy",
        "-p",
        default="auto",
        metavar="SPEC",
        help="freeze policy and arguments, e.g. linear-probe, freeze-to:depth=3, "
        "gradual:every=2 (default: auto; with --val or --val-split it compares the policies "
        "on the validation set and trains the winner, else it guesses from samples per class "
        "and --similarity)",
    )
    parser.add_argument(
        "--epochs", "-e", type=int, default=5, metavar="N", help="epochs (default 5)"
    )
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
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a saved model of the same name"
    )
    parser.add_argument(
        "--delta",
        action="store_true",
        default=None,
        help="save only what differs from the starting weights (adapter policies such as "
        "lora save this way by default)",
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--weights",
        metavar="FILE|NAME",
        help="start BACKBONE from a .safetensors file or a saved model's weights (and its "
        "input config: image size, mean/std)",
    )
    start.add_argument(
        "--pretrained",
        action="store_true",
        help="start from the backbone's pretrained weights (the default for a backbone name; "
        "cache or download)",
    )
    start.add_argument(
        "--scratch",
        action="store_true",
        help="start from random weights (needed to train a partial policy on them)",
    )
    train = parser.add_argument_group("training")
    train.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    train.add_argument(
        "--batch-size",
        "-b",
        type=int,
        default=32,
        metavar="N",
        help="batch size per process (default 32)",
    )
    train.add_argument(
        "--weight-decay",
        type=float,
        default=0.01,
        metavar="WD",
        help="weight decay (not on biases and norms; default 0.01)",
    )
    train.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    train.add_argument("--lr-schedule", choices=("cosine", "constant"), default="cosine")
    train.add_argument("--warmup-epochs", type=float, default=0.0, metavar="E")
    train.add_argument("--label-smoothing", type=float, default=0.0, metavar="S")
    train.add_argument(
        "--similarity",
        choices=("high", "low"),
        default="high",
        help="for --policy auto: how close the task is to the pretraining data",
    )
    train.add_argument(
        "--samples-per-class",
        type=int,
        metavar="N",
        help="for --policy auto: override the count taken from the data",
    )
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--early-stop",
        type=int,
        metavar="N",
        help="stop after N epochs without a lower validation loss and save the best epoch's "
        "model (needs --val or --val-split)",
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run saving under the same name from its last completed "
        "epoch (same command and settings; Ctrl-C keeps each completed epoch)",
    )
    images = parser.add_argument_group("images")
    images.add_argument(
        "--image-size",
        type=int,
        metavar="PX",
        help="train at PX x PX instead of the backbone's input size",
    )
    images.add_argument(
        "--crop-pct", type=float, metavar="F", help="evaluation centre-crop fraction (1.0: no crop)"
    )
    images.add_argument(
        "--augment",
        choices=("auto", "on", "off"),
        default="auto",
        help="training augmentation (auto: off when only the head trains)",
    )
    images.add_argument(
        "--feature-cache",
        choices=("auto", "on", "off"),
        default="auto",
        help="train a head-only plan on features computed once (default auto)",
    )
    images.add_argument(
        "--strict-images",
        action="store_true",
        help="stop at the first unreadable image instead of skipping it",
    )
    images.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="data-loading worker processes (default 0)",
    )
    parser.add_argument("--device", metavar="DEV", help="cpu, cuda, cuda:1 (default: GPU if any)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(handler=run)


def default_name(backbone: str, data: str) -> str:
    """``<backbone>-<data folder>``: ``resnet18-flowers`` (``train`` folders use the parent)."""
    base = backbone.split(":", 1)[-1]
    if base.endswith(".safetensors"):
        base = Path(base).stem
    folder = Path(os.path.abspath(data))
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


def _flag(value: str) -> bool | str:
    return {"auto": "auto", "on": True, "off": False}[value]


#: The option of each checked argument of zoo.adapt, so that a refusal names what was typed.
OPTIONS = {
    "epochs": "--epochs",
    "lr": "--lr",
    "weight_decay": "--weight-decay",
    "batch_size": "--batch-size",
    "warmup_epochs": "--warmup-epochs",
    "label_smoothing": "--label-smoothing",
    "val_split": "--val-split",
    "image_size": "--image-size",
    "input_config['crop_pct']": "--crop-pct",
    "samples_per_class": "--samples-per-class",
    "num_workers": "--workers",
    "seed": "--seed",
    "early_stop": "--early-stop",
}


def run(args: argparse.Namespace, out: Output) -> int:
    from zoo.adaptation.checkpoint import AdaptInterrupted
    from zoo.adaptation.job import AdaptConfig
    from zoo.adaptation.job import run as run_job
    from zoo.core.catalog import get_catalog

    main_rank = is_main_rank()
    if args.name is not None:
        check_store_name(args.name)
    name = args.output or args.name or default_name(args.backbone, args.data)
    overrides = {"crop_pct": args.crop_pct} if args.crop_pct is not None else None
    augment = _flag(args.augment)
    progress = None
    stopped: AdaptInterrupted | None = None
    if main_rank and not args.json:
        from zoo.cli.render_adapt import AdaptProgress

        progress = AdaptProgress(out.console)
    try:
        options = AdaptConfig(
            policy=args.policy,
            epochs=args.epochs,
            lr=args.lr,
            weight_decay=args.weight_decay,
            batch_size=args.batch_size,
            optimizer=args.optimizer,
            lr_schedule=args.lr_schedule,
            warmup_epochs=args.warmup_epochs,
            label_smoothing=args.label_smoothing,
            name=name,
            overwrite=args.overwrite,
            delta=args.delta,
            pretrained=True if args.pretrained else None,
            weights=args.weights,
            scratch=args.scratch,
            val_split=args.val_split,
            image_size=args.image_size,
            input_config=overrides,
            augment=None if augment == "auto" else augment,
            similarity=args.similarity,
            samples_per_class=args.samples_per_class,
            feature_cache=_flag(args.feature_cache),
            on_corrupt="error" if args.strict_images else "skip",
            device=args.device,
            num_workers=args.workers,
            seed=args.seed,
            callback=progress,
            early_stop=args.early_stop,
            resume=args.resume,
        )
        try:
            _model, history = naming_options(
                OPTIONS, run_job, args.backbone, args.data, args.val, options, catalog=get_catalog()
            )
        except AdaptInterrupted as exc:  # Ctrl-C: the last completed epoch is kept
            stopped = exc
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
    out.print(history_table(history))
    out.print()
    out.print(summary_table(history))
    return 0
