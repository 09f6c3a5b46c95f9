"""``zoo models``: the models saved in the store, broken ones with their reason."""

from __future__ import annotations

import argparse

from zoo.cli.output import Output

ORDER = 50


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the models saved in the store",
        description="List the models saved in the store ($ZOO_HOME/models): name, backbone, "
        "classes, kind (full or delta), freeze policy, share of parameters trained, file size "
        "and creation date. Only file headers are read, so listing is fast; an entry that "
        "cannot be read is listed as broken with the reason. Temporary files of a save in "
        "progress are never listed (zoo gc removes stale ones).",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: Output) -> int:
    from zoo.io.store import list_saved, models_dir

    entries = list_saved()
    if args.json:
        out.json({"store": str(models_dir()), "models": [e.to_dict() for e in entries]})
        return 0
    from zoo.cli.render_store import broken_lines, models_summary, models_table

    if entries:
        out.print(models_table(entries))
    for line in broken_lines(entries):
        out.print(line)
    out.print(models_summary(entries, str(models_dir())))
    return 0
