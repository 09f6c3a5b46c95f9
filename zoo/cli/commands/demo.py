"""``zoo demo``: the whole transfer-learning story on real digits, offline, in under two minutes."""

from __future__ import annotations

import argparse
import os

from zoo.cli.output import Output, percent

ORDER = 5


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="start here: pretrain on digits 0-4, compare policies on 5-9, save the best, predict",
        description="Runs offline on scikit-learn's 8x8 handwritten digits: trains a small "
        "backbone on digits 0-4 (the source task) and saves it, then zoo compare measures "
        "linear-probe, train-last:n=1, train-last:n=2 and full fine-tuning on digits 5-9 from "
        "5 labelled images per class (5 more validate), prints the leaderboard, saves the "
        "winner as 'demo-digits', shows the same network trained from random weights for "
        "contrast, loads the winner back by name and predicts held-out digits. Saves "
        "'demo-digits-source' and 'demo-digits' into the store (replacing earlier demo runs).",
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="tiny sizes: a smoke test in a few seconds (numbers are noise)",
    )
    parser.add_argument(
        "--backbone", metavar="NAME", help="backbone to use (default timm:resnet10t)"
    )
    parser.add_argument(
        "--keep-data", metavar="DIR", help="write the digit image folders to DIR and keep them"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: Output) -> int:
    from dataclasses import replace

    from zoo.cli.demo import FAST, FULL, LADDER, SOURCE_NAME, run_demo

    settings = FAST if args.fast else FULL
    if args.backbone:
        settings = replace(settings, backbone=args.backbone)
    progress = compare_progress = None
    if not args.json:
        from zoo.cli.render_adapt import AdaptProgress
        from zoo.cli.render_compare import CompareProgress

        progress = AdaptProgress(out.console, show_start=False, epoch_lines=False)
        compare_progress = CompareProgress(out.console)

    def log(line: str) -> None:
        if not args.json:
            out.console.print(line, highlight=False)

    try:
        result = run_demo(
            settings=settings,
            workdir=args.keep_data,
            log=log,
            callback=progress,
            compare_callback=compare_progress,
        )
    finally:
        if progress is not None:
            progress.close()
    if args.json:
        out.json(result.to_dict())
        return 0
    from rich.table import Table

    from zoo.cli.render_compare import leaderboard_table

    out.print()
    out.print(
        leaderboard_table(
            result.leaderboard,
            title=f"zoo.compare on digits 5-9: {result.train_images} training, "
            f"{result.val_images} validation images",
        )
    )
    out.print(
        f"source model: {percent(result.source_accuracy)} on held-out digits 0-4.  "
        f"Winner {result.winner} (saved as {result.best!r}): "
        f"{percent(result.test_accuracy)} on {result.test_images} held-out test digits; "
        f"the same network from random weights: {percent(result.scratch_accuracy)}"
    )
    table = Table(
        title=f"zoo.load({result.best!r}) + zoo.predict on held-out digits",
        title_justify="left",
        show_edge=False,
    )
    for column in ("image", "true", "predicted", "probability"):
        table.add_column(column)
    for p in result.predictions:
        table.add_row(
            p.image,
            p.truth,
            p.predicted,
            percent(p.probability),
            style="green" if p.truth == p.predicted else "red",
        )
    out.print(table)
    policies = ",".join(LADDER)
    out.print(
        f"done in {result.seconds:.0f}s.  Next: zoo predict {result.best} IMAGE.png, "
        + (
            f"or zoo evaluate {result.best} {os.path.join(args.keep_data, 'target', 'test')}, "
            if args.keep_data
            else ""
        )
        + f"or zoo compare {result.backbone} --weights {SOURCE_NAME} --data YOUR_FOLDER "
        f"--val-split 0.2 --policies {policies} --name NAME, "
        f"or zoo adapt {result.backbone} --weights {SOURCE_NAME} --data YOUR_FOLDER --name NAME"
    )
    return 0
