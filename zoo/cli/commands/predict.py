"""``zoo predict NAME IMAGE...``: top-k classes of images with a saved model."""

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
        "evaluation transform of the input config saved with the model.",
    )
    parser.add_argument("name", metavar="NAME", help="saved model: store name or file")
    parser.add_argument("images", metavar="IMAGE", nargs="+", help="image files")
    parser.add_argument(
        "--topk",
        "-k",
        type=int,
        default=5,
        metavar="K",
        help="how many classes to show per image (default 5)",
    )
    parser.add_argument("--device", metavar="DEV", default="cpu", help="cpu (default), cuda")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: Output) -> int:
    from zoo.adaptation.distributed import resolve_device
    from zoo.api import load, predict
    from zoo.errors import ZooError

    if args.topk < 1:  # refused before the model is read
        raise ZooError(f"--topk must be an int >= 1, not {args.topk}")
    resolve_device(args.device)
    model = load(args.name, device=args.device)
    predictions = predict(model, args.images, topk=args.topk)
    if args.json:
        out.json({"model": args.name, "predictions": [p.to_dict() for p in predictions]})
        return 0
    from zoo.cli.render_adapt import predictions_table

    out.print(predictions_table(predictions))
    return 0
