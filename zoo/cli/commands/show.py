"""``zoo show NAME``: the parameter table of a backbone, built on the meta device."""

from __future__ import annotations

import argparse

from zoo.cli.common import add_num_classes_argument, num_classes_kwargs
from zoo.cli.output import Output

ORDER = 20


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "show",
        help="show a backbone's parameters by depth (no weights are allocated)",
        description="Show the uniform parameter table of a backbone: a per-depth summary "
        "(stem = depth 0 … head = the highest depth) with parameter counts, share of the total "
        "and trainable counts. The model is built on PyTorch's meta device, so nothing is "
        "downloaded and no weights are allocated, even for billion-parameter models. NAME is "
        "any backbone name the catalog resolves (plugin:name, or a bare name when unique).",
    )
    parser.add_argument(
        "name", metavar="NAME", help="backbone name, e.g. vit_base_patch16_224 or timm:resnet50"
    )
    parser.add_argument(
        "--full", action="store_true", help="also list every parameter and every norm layer"
    )
    add_num_classes_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the table as one JSON document")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: Output) -> int:
    from zoo.cli.listing import table_for_name

    kwargs = num_classes_kwargs(args)
    # resolves the name first (from the cache's name index when it can): a typo costs no
    # plugin imports, and one name costs the same whatever the catalog's size
    table = table_for_name(args.name, **kwargs)
    if args.json:
        out.json(table.to_dict())
        return 0

    from zoo.cli.render_params import depth_table, header, norms_table, rows_table

    out.print(header(table))
    out.print(depth_table(table.depth_summary()))
    if args.full:
        # aligned text, printed unwrapped: one line per parameter whatever the terminal width
        out.print()
        out.console.print(rows_table(table), soft_wrap=True)
        if table.norms:
            out.print()
            out.console.print(norms_table(table), soft_wrap=True)
    return 0
