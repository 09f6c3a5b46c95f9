"""``zoo plan NAME --policy SPEC``: the dry run to read before training (meta device)."""

from __future__ import annotations

import argparse

from zoo.cli.common import add_num_classes_argument, num_classes_kwargs, precheck_names
from zoo.cli.output import Output

ORDER = 30


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="show what a freeze policy trains and freezes (dry run, no weights allocated)",
        description="Compute a freeze policy's plan for a backbone and show it per depth: "
        "parameters, the trained and frozen share, norm-layer modes (train, frozen-stats, "
        "frozen) and lr scales, with totals. The model is built on PyTorch's meta device: "
        "nothing is downloaded and no weights are allocated. SPEC is NAME or "
        "NAME:key=value,key=value, e.g. linear-probe, freeze-to:depth=3, gradual:every=2, "
        "pattern:include=layer4.*,fc.* or auto:samples_per_class=50,similarity=low. "
        "Adapter policies (lora:rank=8, ssf, vpt:tokens=10) add parameters: the plan shows "
        "what they add per depth, and the trained share counts the base and the added "
        "parameters. `zoo list policies` lists the policies.",
    )
    parser.add_argument(
        "name", metavar="NAME", help="backbone name, e.g. timm:resnet50 or vit_base_patch16_224"
    )
    parser.add_argument(
        "--policy",
        "-p",
        required=True,
        metavar="SPEC",
        help="policy and arguments, e.g. freeze-to:depth=3",
    )
    parser.add_argument(
        "--epoch",
        type=int,
        default=None,
        metavar="E",
        help="for a schedule policy (gradual): the epoch to show (default 0)",
    )
    add_num_classes_argument(parser)
    parser.add_argument(
        "--full", action="store_true", help="also list every parameter and every norm layer"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: Output) -> int:
    from zoo.api import params, plan

    kwargs = num_classes_kwargs(args)
    precheck_names(backbone=args.name, policy=args.policy)
    table = params(args.name, **kwargs)
    result = plan(table, args.policy, epoch=args.epoch)

    from zoo.cli.render_plan import depth_table, header, norms_text, params_text, plan_json

    if args.json:
        out.json(plan_json(result, table, full=args.full))
        return 0
    out.print(header(result, table))
    out.print(depth_table(result, table))
    if args.full:
        out.print()
        out.console.print(params_text(result, table), soft_wrap=True)
        if table.norms:
            out.console.print(norms_text(result, table), soft_wrap=True)
    return 0
