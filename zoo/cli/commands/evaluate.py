"""``zoo evaluate NAME DATA``: how good a saved model is on labelled images: accuracy, top-k,
loss, per-class precision/recall/F1 and the confusion matrix."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from zoo.cli.output import Output

if TYPE_CHECKING:
    from zoo.adaptation.evaluation import Evaluation

ORDER = 46


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score a saved model on labelled images: accuracy, per class, confusion matrix",
        description="Load a saved model (a store name or a .safetensors file) and evaluate it "
        "on DATA, a\n"
        "folder with one sub-folder of images per class or a CSV/JSONL manifest (as for zoo\n"
        "adapt). Its classes must be the model's, by name: a class of the model without images,\n"
        "or a class the model does not predict, is an error naming it. Images are prepared with\n"
        "the evaluation transform of the input config saved with the model; unreadable images are\n"
        "left out and listed. Prints the accuracy, the top-k accuracy, the mean cross-entropy\n"
        "loss, the precision, recall, F1 and images of each class, and the confusion matrix\n"
        "(rows: the true class; when it is wider than the terminal, the most frequent confusions\n"
        "instead).",
        epilog="examples:\n"
        "  zoo evaluate flowers flowers/test\n"
        "  zoo evaluate flowers flowers/test --topk 3 --plot confusion.png\n"
        "  zoo evaluate digits.safetensors digits/test --json > scores.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", metavar="NAME", help="saved model: store name or file")
    parser.add_argument(
        "data",
        metavar="DATA",
        help="labelled images: a folder with one sub-folder per class, or a CSV/JSONL manifest",
    )
    parser.add_argument(
        "--topk",
        "-k",
        type=int,
        default=5,
        metavar="K",
        help="also count an image right when its class is among the K most probable "
        "(default 5, at most the number of classes)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=64,
        metavar="N",
        help="images per forward pass (default 64)",
    )
    parser.add_argument("--device", metavar="DEV", default="cpu", help="cpu (default), cuda")
    parser.add_argument(
        "--plot",
        metavar="FILE",
        default=None,
        help="also write the confusion matrix as a PNG (needs matplotlib: "
        'pip install -e ".[plot]" in the checkout)',
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the scores, the per-class scores and the confusion cells as one JSON "
        "document (nothing else on stdout)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: Output) -> int:
    from zoo.api import evaluate
    from zoo.cli.common import require_positive

    require_positive(args, "topk", "batch_size")  # refused before the model is read
    result = evaluate(  # the plot's extra and path are checked before the model is read
        args.name,
        args.data,
        topk=args.topk,
        batch_size=args.batch_size,
        device=args.device,
        plot=args.plot,
    )
    _warn_skipped(result, out)
    if args.json:
        out.json({"model": args.name, "data": args.data, **result.to_dict()})
        return 0
    from zoo.cli.render_evaluate import classes_table, confusion_view, scores_text

    out.print(scores_text(result))
    out.print()
    out.print(classes_table(result))
    out.print()
    out.print(confusion_view(result, out.console.width))
    if args.plot:
        out.print(f"plot: {args.plot}")
    return 0


def _warn_skipped(result: Evaluation, out: Output, limit: int = 5) -> None:
    """A warning for each file of the folder left out (the first ``limit``)."""
    from zoo.cli.output import plural, printable

    for item in result.skipped[:limit]:
        out.warn(printable(f"left out {item.path}: {item.reason}"))
    if len(result.skipped) > limit:
        out.warn(f"… and {plural(len(result.skipped) - limit, 'more file')} left out")
