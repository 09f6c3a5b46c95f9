"""``zoo compare BACKBONE --data DIR --val DIR --name NAME``: measure freeze policies, keep the
best."""

from __future__ import annotations

import argparse

from zoo.cli.commands.adapt import check_store_name
from zoo.cli.common import is_main_rank
from zoo.cli.output import Output
from zoo.cli.train_options import add_options, config_from_args, named_by_option

ORDER = 41


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="train several freeze policies on your data, keep and save the best",
        description="Compare freeze policies of BACKBONE on your images and save the winner\n"
        "under --name, with the leaderboard in its metadata (zoo inspect NAME shows it).\n"
        "Every candidate starts from the same weights, split, seed and input config, on\n"
        "un-augmented images decoded once; prefix-frozen plans train on activations cached\n"
        "at their freeze boundary; successive halving (rungs of E/2^R ... E epochs, each of\n"
        "at least 64 optimizer steps) drops the weaker candidates at each rung, so the whole\n"
        "comparison costs about twice the slowest candidate's full run (with less data every\n"
        "candidate trains to the end). Validation data (--val or --val-split) is required.\n"
        "With augmentation (--augment on, --no-hflip, --scale, --mixup ...) every candidate,\n"
        "and so the winner saved, trains with it, on the images (no activation cache).",
        epilog="examples:\n"
        "  zoo compare timm:resnet18 --data flowers/train --val flowers/val --name flowers\n"
        "  zoo compare timm:resnet18 --data pets --val-split 0.2 --policies "
        "linear-probe,train-last:n=1,full --epochs 8 --name pets --plot pets.png\n"
        "  zoo compare timm:resnet18 --data pets --val-split 0.2 --policies linear-probe "
        "--policies lora:rank=4,alpha=8 --name pets-lora\n"
        "  zoo compare timm:resnet10t --data digits --val-split 0.2 --weights demo-digits-source "
        "--budget 60 --name digits --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(parser, "compare")
    parser.add_argument(
        "--name", "-n", required=True, metavar="NAME", help="store name to save the winner under"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help='print {"saved", "winner", "candidates"} as one JSON document',
    )
    parser.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="no progress: print only the leaderboard and why the winner won",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: Output) -> int:
    from zoo.adaptation.compare import run as run_compare
    from zoo.core.catalog import get_catalog

    main_rank = is_main_rank()
    check_store_name(args.name)
    progress = None
    if main_rank and not (args.json or args.quiet):
        from zoo.cli.render_compare import CompareProgress

        progress = CompareProgress(out.console)
    try:
        with named_by_option():
            config = config_from_args(args, "compare", name=args.name, callback=progress)
            result = run_compare(args.backbone, args.data, args.val, config, catalog=get_catalog())
    finally:
        if progress is not None:
            progress.close()
    board = result.leaderboard
    if not main_rank:  # under torchrun only rank 0 answers
        return 0
    if args.json:
        out.json(board.cli_document(args.name))
        return 0
    from zoo.cli.render_adapt import skipped_text
    from zoo.cli.render_compare import leaderboard_table, notes_text, why_text

    if result.history.skipped:
        out.err.print(skipped_text(result.history))
    out.print()
    out.print(leaderboard_table(board))
    out.print()
    out.print(why_text(board))
    if board.notes:
        out.print(notes_text(board))
    out.print(f"saved as {args.name} ({result.history.path}); zoo inspect {args.name} shows it")
    if args.plot:
        out.print(f"plot: {args.plot}")
    return 0
