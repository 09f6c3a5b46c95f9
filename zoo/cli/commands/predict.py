"""``zoo predict NAME PATH...``: the class of each image (files or folders) with a saved model,
or its top-k classes, as a table, JSON or CSV (streamed, row by row)."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, TextIO

from zoo.cli.output import Output

if TYPE_CHECKING:
    from zoo.adaptation.predict import Prediction

ORDER = 45


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="predict the classes of images with a saved model",
        description="Load a saved model (a store name or a .safetensors file) and print the "
        "most probable class of each image with its probability, one line per image (with "
        "--topk K: its K most probable classes). Images are prepared with the "
        "evaluation transform of the input config saved with the model. A folder stands for "
        "the image files in it (its subfolders too with --recursive), in sorted order, "
        "predicted in batches. An image that cannot be read is reported (a warning, and an "
        "'error' entry in --json/--csv) and the others are still predicted; the exit status "
        "is then 1. --csv writes one row per image and rank: image,rank,class,probability,"
        "error, each row as soon as its batch is predicted. Images are read as BMP, GIF, "
        "JPEG, PNG, PPM, TIFF or WebP only, and refused "
        "before decoding when over 8192x8192 pixels or one side is over 100 times the other. "
        "File names that are not printable (a newline, a terminal escape) are shown escaped "
        "in the table and the CSV; --json keeps them exact.",
    )
    parser.add_argument("name", metavar="NAME", help="saved model: store name or file")
    parser.add_argument(
        "images", metavar="PATH", nargs="+", help="image files and folders of images"
    )
    parser.add_argument(
        "--recursive",
        "-r",
        action="store_true",
        help="also predict the images in the subfolders of each folder",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=32,
        metavar="N",
        help="images per forward pass (default 32)",
    )
    parser.add_argument(
        "--topk",
        "-k",
        type=int,
        default=1,
        metavar="K",
        help="how many classes to show per image, most probable first (default 1: one line "
        "per image)",
    )
    parser.add_argument("--device", metavar="DEV", default="cpu", help="cpu (default), cuda")
    formats = parser.add_mutually_exclusive_group()
    formats.add_argument("--json", action="store_true", help="print one JSON document")
    formats.add_argument(
        "--csv",
        metavar="FILE",
        default=None,
        help="write CSV to FILE ('-': to stdout): a header, then image,rank,class,probability,"
        "error per image and rank, written and flushed as each batch is predicted",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: Output) -> int:
    from zoo.adaptation.distributed import resolve_device
    from zoo.adaptation.predict import predictions
    from zoo.api import get_catalog, load
    from zoo.cli.common import require_positive
    from zoo.cli.output import printable

    require_positive(args, "topk", "batch_size")  # refused before the model is read
    resolve_device(args.device)
    model = load(args.name, device=args.device)
    found = predictions(
        model,
        args.images,
        topk=args.topk,
        batch_size=args.batch_size,
        recursive=args.recursive,
        errors="report",
        catalog=get_catalog(),
    )
    done = _write_csv(args.csv, found, out) if args.csv is not None else list(found)
    failed = [p for p in done if not p.ok]
    if args.json:
        out.json({"model": args.name, "predictions": [p.to_dict() for p in done]})
    elif args.csv is None:
        from zoo.cli.render_predict import predictions_table

        out.print(predictions_table([p for p in done if p.ok]))
    for pred in failed:
        out.warn(printable(f"{pred.source}: {pred.error}"))
    if failed:
        from zoo.cli.output import plural

        out.warn(f"{len(failed)} of {plural(len(done), 'image')} could not be read")
        return 1
    return 0


CSV_HEADER = ("image", "rank", "class", "probability", "error")


def _write_csv(target: str, predictions: Iterable[Prediction], out: Output) -> list[Prediction]:
    """One row per image and rank (an unreadable image: one row with its error), each image's
    rows written and flushed as soon as it is predicted; returns the predictions. Text that is
    not printable (a newline or a terminal escape in a file name) is written escaped, so each
    row is one line and no name can forge a row, even for line-based tools."""
    import csv

    done: list[Prediction] = []
    with _csv_file(target, out) as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(CSV_HEADER)
        fh.flush()
        for pred in predictions:
            writer.writerows(_csv_rows(pred))
            fh.flush()
            done.append(pred)
    if target != "-":
        from zoo.cli.output import plural

        out.info(f"wrote {plural(len(done), 'prediction')} to {target}")
    return done


@contextlib.contextmanager
def _csv_file(target: str, out: Output) -> Iterator[TextIO]:
    """stdout for ``-``, else ``target`` opened for writing; an error writing it is a
    :class:`~zoo.ZooError` naming it."""
    from zoo.errors import ZooError

    if target == "-":
        try:
            yield out.console.file
        except BrokenPipeError:  # the reader stopped (``| head``): stop predicting, quietly
            _drop_output(out.console.file)
        return
    try:
        with open(target, "w", encoding="utf-8", newline="") as fh:
            yield fh
    except OSError as exc:
        raise ZooError(f"cannot write --csv {target!r}: {exc.strerror or exc}") from None


def _drop_output(stream: TextIO) -> None:
    """Point ``stream``'s descriptor at the null device, so that nothing written later (the
    interpreter's last flush) fails on the closed pipe."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, stream.fileno())
        os.close(null)
    except (OSError, ValueError, AttributeError):  # not a real file: nothing to redirect
        pass


def _csv_rows(pred: Prediction) -> list[list[object]]:
    from zoo.cli.output import printable

    image = printable(pred.source)
    if not pred.ok:
        return [[image, "", "", "", printable(pred.error)]]
    return [
        [image, rank, printable(name), f"{prob:.6f}", ""]
        for rank, (name, prob) in enumerate(pred.top, start=1)
    ]
