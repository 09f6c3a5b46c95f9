"""``zoo predict NAME PATH...``: top-k classes of images (files or folders) with a saved
model, as a table, JSON or CSV."""

from __future__ import annotations

import argparse

from zoo.cli.output import Output

ORDER = 45


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="predict the classes of images with a saved model",
        description="Load a saved model (a store name or a .safetensors file) and print the "
        "top-k classes of each image with their probabilities. Images are prepared with the "
        "evaluation transform of the input config saved with the model. A folder stands for "
        "the image files in it (its subfolders too with --recursive), in sorted order, "
        "predicted in batches. An image that cannot be read is reported (a warning, and an "
        "'error' entry in --json/--csv) and the others are still predicted; the exit status "
        "is then 1. --csv writes one row per image and rank: image,rank,class,probability,"
        "error. Images are read as BMP, GIF, JPEG, PNG, PPM, TIFF or WebP only, and refused "
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
        default=5,
        metavar="K",
        help="how many classes to show per image (default 5)",
    )
    parser.add_argument("--device", metavar="DEV", default="cpu", help="cpu (default), cuda")
    formats = parser.add_mutually_exclusive_group()
    formats.add_argument("--json", action="store_true", help="print one JSON document")
    formats.add_argument(
        "--csv",
        metavar="FILE",
        default=None,
        help="write CSV to FILE ('-': to stdout): a header, then image,rank,class,probability,"
        "error per image and rank",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: Output) -> int:
    from zoo.adaptation.distributed import resolve_device
    from zoo.api import load, predict
    from zoo.cli.output import printable
    from zoo.errors import ZooError

    if args.topk < 1:  # refused before the model is read
        raise ZooError(f"--topk must be an int >= 1, not {args.topk}")
    if args.batch_size < 1:
        raise ZooError(f"--batch-size must be an int >= 1, not {args.batch_size}")
    resolve_device(args.device)
    model = load(args.name, device=args.device)
    predictions = predict(
        model,
        args.images,
        topk=args.topk,
        batch_size=args.batch_size,
        recursive=args.recursive,
        errors="report",
    )
    failed = [p for p in predictions if not p.ok]
    for pred in failed:
        out.warn(printable(f"{pred.source}: {pred.error}"))
    if args.json:
        out.json({"model": args.name, "predictions": [p.to_dict() for p in predictions]})
    elif args.csv is not None:
        _write_csv(args.csv, predictions, out)
    else:
        from zoo.cli.render_adapt import predictions_table

        out.print(predictions_table([p for p in predictions if p.ok]))
    if failed:
        out.warn(f"{len(failed)} of {len(predictions)} image(s) could not be read")
        return 1
    return 0


CSV_HEADER = ("image", "rank", "class", "probability", "error")


def _write_csv(target: str, predictions: list, out: Output) -> None:
    """One row per image and rank (an unreadable image: one row with its error). Text that is
    not printable (a newline or a terminal escape in a file name) is written escaped, so each
    row is one line and no name can forge a row, even for line-based tools."""
    import csv
    import io

    from zoo.cli.output import printable
    from zoo.errors import ZooError

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for pred in predictions:
        image = printable(pred.source)
        if not pred.ok:
            writer.writerow([image, "", "", "", printable(pred.error)])
        for rank, (name, prob) in enumerate(pred.top, start=1):
            writer.writerow([image, rank, printable(name), f"{prob:.6f}", ""])
    if target == "-":
        out.console.file.write(buffer.getvalue())
        out.console.file.flush()
        return
    try:
        with open(target, "w", encoding="utf-8", newline="") as fh:
            fh.write(buffer.getvalue())
    except OSError as exc:
        raise ZooError(f"cannot write --csv {target!r}: {exc.strerror or exc}") from None
    out.info(f"wrote {len(predictions)} prediction(s) to {target}")
