"""``zoo plugins``: every plugin, what it registered, and what went wrong."""

from __future__ import annotations

import argparse

from zoo.cli.output import Output

ORDER = 90
EXIT_PLUGIN_PROBLEMS = 3


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plugins",
        help="show installed plugins and their problems",
        description="Show each plugin: name, version, distribution, the hooks it implements, "
        "what it registered, and its error if it is broken. With --strict (or "
        "ZOO_STRICT_PLUGINS=1) any plugin problem makes the exit status 3.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--refresh", action="store_true", help="rebuild the cached listing (imports every plugin)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: Output) -> int:
    from zoo.cli.listing import get_listing
    from zoo.cli.render_listing import plugins_table, problem_lines
    from zoo.core.plugins import STRICT_ENV, env_flag

    listing = get_listing(use_cache=not args.refresh)
    if args.json:
        out.json({"plugins": [record.to_dict() for record in listing.plugins]})
    else:
        out.print(plugins_table(listing.plugins))
        for line in problem_lines(listing.problems):
            out.warn(line)
    return EXIT_PLUGIN_PROBLEMS if listing.problems and env_flag(STRICT_ENV) else 0
