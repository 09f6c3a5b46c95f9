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
        "words",
        nargs="*",
        metavar="[backbones|policies] [PATTERN]",
        help="what to list (default: both) and a glob such as 'convnext*'",
    )
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
    from zoo.cli.listing import get_listing
    from zoo.cli.render_listing import (
        PLAIN_ROWS,
        backbones_table,
        json_document,
        policies_table,
        pretrained_table,
        problem_lines,
    )
    from zoo.core.plugins import STRICT_ENV, env_flag

    what, pattern = _parse_words(args.words)
    listing = get_listing(use_cache=not args.refresh)
    show_backbones = what in ("all", "backbones")
    show_policies = what in ("all", "policies") and not args.pretrained
    backbones = (
        listing.find_backbones(pattern, pretrained=args.pretrained or None, plugin=args.plugin)
        if show_backbones
        else []
    )
    policies = listing.find_policies(pattern, plugin=args.plugin) if show_policies else []

    if args.json:
        data: dict[str, object] = {}
        if show_backbones:
            if args.pretrained:
                data["backbones"] = [
                    {
                        **entry._asdict(),
                        "input": entry.input_for(tag),  # this tag's config, not the default
                        "tag_inputs": None,
                        "name": f"{entry.name}.{tag}",
                        "qualified_name": f"{entry.qualified_name}.{tag}",
                        "tag": tag,
                    }
                    for entry, tag in backbones
                ]
            else:
                data["backbones"] = [
                    {**entry._asdict(), "qualified_name": entry.qualified_name}
                    for entry in backbones  # shares each entry's input dict: only encoded
                ]
        if show_policies:
            data["policies"] = [
                {**asdict(entry), "qualified_name": entry.qualified_name} for entry in policies
            ]
        data["problems"] = [
            {"plugin": r.name, "distribution": r.distribution, "error": e}
            for r, e in listing.problems
        ]
        if len(backbones) + len(policies) > PLAIN_ROWS:
            _write(out, json_document(data))
        else:
            out.json(data)
    else:
        if show_backbones and (backbones or what == "backbones" or not policies):
            width = out.console.width
            table = (
                pretrained_table(backbones, width=width)
                if args.pretrained
                else backbones_table(backbones, width=width)
            )
            if isinstance(table, str):
                _write(out, table)
            else:
                out.print(table)
        if show_policies and (policies or what == "policies" or not pattern):
            out.print(policies_table(policies))
    for line in problem_lines(listing.problems):
        out.warn(line + "  (see `zoo plugins`)")
    if listing.problems and env_flag(STRICT_ENV):
        return EXIT_PLUGIN_PROBLEMS
    return 0


def _write(out: Output, text: str) -> None:
    """A long listing, already laid out, straight to stdout (no rich rendering)."""
    out.console.file.write(text)
    out.console.file.flush()


def _parse_words(words: list[str]) -> tuple[str, str | None]:
    """``[backbones|policies] [PATTERN]`` -> (what, pattern); a lone pattern lists both."""
    from zoo.errors import ZooError

    words = list(words)
    what = "all"
    if words and words[0] in ("all", "backbones", "policies"):
        what = words.pop(0)
    if len(words) > 1:
        raise ZooError(
            f"zoo list takes at most one pattern, got {len(words)}: {' '.join(words)} "
            "(quote a glob such as 'resnet*' so the shell does not expand it)"
        )
    return what, (words[0] if words else None)
