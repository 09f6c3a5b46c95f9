"""``zoo rm NAME``: delete a model from the store."""

from __future__ import annotations

import argparse

from zoo.cli.output import Output

ORDER = 52


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "rm",
        help="delete saved models from the store",
        description="Delete store entries (the folder $ZOO_HOME/models/NAME). Broken entries "
        "can be removed too. A model that other saved deltas are based on is kept unless "
        "--force, since those deltas could no longer load.",
    )
    parser.add_argument("names", metavar="NAME", nargs="+", help="store name(s) to delete")
    parser.add_argument(
        "--force", action="store_true", help="delete even when saved deltas depend on it"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: Output) -> int:
    from zoo.store import remove

    removed = [str(remove(name, force=args.force)) for name in args.names]
    if args.json:
        out.json({"removed": removed})
    else:
        for name, path in zip(args.names, removed, strict=True):
            out.print(f"removed {name} ({path})")
    return 0
