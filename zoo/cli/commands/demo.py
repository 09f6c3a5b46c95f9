"""``zoo demo``: the whole transfer-learning story on real digits, offline, in about a minute."""

from __future__ import annotations

import argparse

from zoo.cli.output import Output

ORDER = 5


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="start here: pretrain on digits 0-4, adapt to 5-9 four ways, compare, predict",
        description="Runs offline on scikit-learn's 8x8 handwritten digits: trains a small "
        "backbone on digits 0-4 (the source task) and saves it, adapts it to digits 5-9 from a "
        "few labelled images per class under scratch, linear-probe, partial and full "
        "fine-tuning, prints a comparison table, saves the best as 'demo-digits', loads it "
        "back by name and predicts held-out digits. Saves 'demo-digits-source' and "
        "'demo-digits' into the store (replacing earlier demo runs).",
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

    from zoo.cli.demo import FAST, FULL, SOURCE_NAME, run_demo

    settings = FAST if args.fast else FULL
    if args.backbone:
        settings = replace(settings, backbone=args.backbone)
    progress = None
    if not args.json:
        from zoo.cli.render_adapt import AdaptProgress

        progress = AdaptProgress(out.console, show_start=False, epoch_lines=False)

    def log(line: str) -> None:
        if not args.json:
            out.console.print(line, highlight=False)

    try:
        result = run_demo(settings=settings, workdir=args.keep_data, log=log, callback=progress)
    finally:
        if progress is not None:
            progress.close()
    if args.json:
        out.json(result.to_dict())
        return 0
    from rich.table import Table

    from zoo.cli.render_adapt import demo_table

    out.print()
    out.print(demo_table(result.rows))
    out.print(
        f"source model: {100 * result.source_accuracy:.1f}% on held-out digits 0-4; "
        f"target: {result.train_images} training / {result.test_images} test images; "
        f"best: {result.best_strategy} -> saved as {result.best!r}"
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
            f"{100 * p.probability:.1f}%",
            style="green" if p.truth == p.predicted else "red",
        )
    out.print(table)
    out.print(
        f"done in {result.seconds:.0f}s.  Next: zoo predict {result.best} IMAGE.png, "
        f"or zoo adapt {result.backbone} --weights {SOURCE_NAME} --data YOUR_FOLDER --name NAME"
    )
    return 0
