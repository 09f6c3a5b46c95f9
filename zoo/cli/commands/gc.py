"""``zoo gc``: remove temporary files that interrupted saves left in the store."""

from __future__ import annotations

import argparse

from zoo.cli.output import Output

ORDER = 53


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "gc",
        help="remove leftovers of interrupted saves from the store",
        description="Remove the temporary files and folders that a killed or failed save left "
        "in the store, rewrite a config.json that a killed save left describing the previous "
        "version of its model, and remove the lock files of entries that no longer exist. Files "
        "of a save still in progress are left alone (its entry is locked). Symbolic links are "
        "never followed (a linked leftover is removed as a link); what cannot be removed is "
        "reported with the reason. Saved models are never touched.",
    )
    parser.add_argument("--dry-run", action="store_true", help="only show what would be removed")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: Output) -> int:
    from zoo.io.store import gc

    result = gc(dry_run=args.dry_run)
    if args.json:
        out.json({"dry_run": args.dry_run, **result.to_dict()})
        return 0
    from zoo.cli.render_store import gc_view

    out.print(gc_view(result, dry_run=args.dry_run))
    return 0
