"""``zoo list``: backbones and freeze policies from every plugin."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from zoo.cli.output import Output

ORDER = 10
EXIT_PLUGIN_PROBLEMS = 3


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "list",
        help="list backbones and freeze policies",
        description="List the backbones and freeze policies that installed plugins offer. "
        "Names print as plugin:name; PATTERN is a shell-style glob on either form.",
    )
    parser.add_argument(
        "what",
        nargs="?",
        choices=("all", "backbones", "policies"),
        default="all",
        help="what to list (default: all)",
    )
    parser.add_argument("pattern", nargs="?", default=None, help="glob, e.g. 'convnext*'")
    parser.add_argument(
        "--pretrained",
        action="store_true",
        help="list each pretrained weight tag (resnet50.a1_in1k) instead of architectures",
    )
    parser.add_argument("--plugin", default=None, help="only what this plugin registers")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument(
        "--refresh", action="store_true", help="rebuild the cached listing (imports every plugin)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: Output) -> int:
    from zoo.cli.render_listing import (
        backbones_table,
        policies_table,
        pretrained_table,
        problem_lines,
    )
    from zoo.listing import get_listing
    from zoo.plugins import STRICT_ENV, env_flag

    listing = get_listing(use_cache=not args.refresh)
    show_backbones = args.what in ("all", "backbones")
    show_policies = args.what in ("all", "policies")
    backbones = (
        listing.find_backbones(args.pattern, pretrained=args.pretrained or None, plugin=args.plugin)
        if show_backbones
        else []
    )
    policies = (
        listing.find_policies(args.pattern if args.what == "policies" else None, plugin=args.plugin)
        if show_policies
        else []
    )

    if args.json:
        data: dict[str, object] = {}
        if show_backbones:
            if args.pretrained:
                data["backbones"] = [
                    {
                        **asdict(entry),
                        "name": f"{entry.name}.{tag}",
                        "qualified_name": f"{entry.qualified_name}.{tag}",
                        "tag": tag,
                    }
                    for entry, tag in backbones
                ]
            else:
                data["backbones"] = [
                    {**asdict(entry), "qualified_name": entry.qualified_name} for entry in backbones
                ]
        if show_policies:
            data["policies"] = [
                {**asdict(entry), "qualified_name": entry.qualified_name} for entry in policies
            ]
        data["problems"] = [
            {"plugin": r.name, "distribution": r.distribution, "error": e}
            for r, e in listing.problems
        ]
        out.json(data)
    else:
        if show_backbones:
            out.print(
                pretrained_table(backbones) if args.pretrained else backbones_table(backbones)
            )
        if show_policies:
            out.print(policies_table(policies))
    for line in problem_lines(listing.problems):
        out.warn(line + "  (see `zoo plugins`)")
    if listing.problems and env_flag(STRICT_ENV):
        return EXIT_PLUGIN_PROBLEMS
    return 0
