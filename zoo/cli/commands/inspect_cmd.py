"""``zoo inspect NAME|FILE``: a saved model's metadata and what was trained at each depth."""

from __future__ import annotations

import argparse

from zoo.cli.output import Output

ORDER = 51


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="show a saved model's metadata and what was trained",
        description="Show what a saved model is: backbone, classes, input configuration, "
        "freeze policy and its arguments (for auto: what it chose and why), base weights of a "
        "delta, versions, the plugins' metadata entries, and a per-depth "
        "summary of which parameters were trained (the backbone is described on the meta "
        "device; no weights are built). The file's seal is verified unless --no-verify. "
        "TARGET is a store name or a path (a path contains a separator or ends in "
        ".safetensors).",
    )
    parser.add_argument("target", metavar="NAME|FILE", help="store name or path of a saved model")
    parser.add_argument(
        "--no-verify", action="store_true", help="skip reading the tensors to check the seal"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: Output) -> int:
    from zoo.api import inspect

    info = inspect(args.target, verify=not args.no_verify)
    if args.json:
        out.json(info.to_dict())
        return 0
    from zoo.cli.render_store import inspect_view

    out.print(inspect_view(info))
    return 0
