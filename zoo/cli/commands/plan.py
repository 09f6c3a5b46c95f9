"""``zoo plan NAME --policy SPEC``: the dry run to read before training (meta device)."""

from __future__ import annotations

import argparse
from typing import Any

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
        "parameters. `zoo list policies` lists the policies. With --data DIR it also "
        "shows where your images pull on the model: the relative gradient norm of each depth "
        "of the body from a few batches (Auto-RGN), which surgical:depth=K trains.",
    )
    parser.add_argument(
        "name", metavar="NAME", help="backbone name, e.g. timm:resnet50 or vit_base_patch16_224"
    )
    parser.add_argument(
        "--policy",
        "-p",
        metavar="SPEC",
        help="policy and arguments, e.g. freeze-to:depth=3 (required without --data)",
    )
    parser.add_argument(
        "--data",
        "-d",
        metavar="DIR",
        help="training images (one sub-folder per class): show the relative gradient norm "
        "per depth on a few batches of them (builds the model with its weights)",
    )
    parser.add_argument(
        "--scratch",
        action="store_true",
        help="with --data: random weights instead of the pretrained ones",
    )
    parser.add_argument(
        "--image-size", type=int, metavar="PX", help="with --data: images of PX x PX"
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
    from zoo.errors import AdaptArgumentError

    if args.data is None and (args.scratch or args.image_size is not None):
        raise AdaptArgumentError("--data", None, "given with --scratch and --image-size")
    if args.policy is None and args.data is None:
        raise AdaptArgumentError("--policy", None, "a policy spec (or --data DIR, or both)")
    kwargs = num_classes_kwargs(args)
    precheck_names(backbone=args.name, policy=args.policy)
    signal = _signal(args) if args.data is not None else None
    if args.policy is None:
        assert signal is not None
        if args.json:
            out.json({"gradient_signal": signal.to_dict()})
        else:
            out.print(signal_table(signal))
        return 0
    table = params(args.name, **kwargs)
    result = plan(table, args.policy, epoch=args.epoch)

    from zoo.cli.render_plan import depth_table, header, norms_text, params_text, plan_json

    if args.json:
        doc = plan_json(result, table, full=args.full)
        if signal is not None:
            doc["gradient_signal"] = signal.to_dict()
        out.json(doc)
        return 0
    if signal is not None:
        out.print(signal_table(signal))
    out.print(header(result, table))
    out.print(depth_table(result, table))
    if args.full:
        out.print()
        out.console.print(params_text(result, table), soft_wrap=True)
        if table.norms:
            out.console.print(norms_text(result, table), soft_wrap=True)
    return 0


def _signal(args: argparse.Namespace) -> Any:
    """The gradient signal of ``args.name`` (built with its weights, a head for the folder's
    classes) on a few shuffled batches of ``args.data``."""
    import dataclasses

    import torch

    from zoo.adaptation.data import (
        ImageDataset,
        LoaderSpec,
        build_transform,
        input_config_of,
        make_loader,
        scan_image_folder,
    )
    from zoo.adaptation.rgn import shift_signal
    from zoo.api import create, params
    from zoo.core import checks
    from zoo.errors import AdaptArgumentError

    if args.image_size is not None:
        try:
            checks.integer(args.image_size, "--image-size", 1, 4096)
        except checks.Invalid as exc:
            raise AdaptArgumentError(exc.what, exc.value, exc.rule) from None
    folder = scan_image_folder(args.data)
    model = create(args.name, num_classes=len(folder.classes), pretrained=not args.scratch)
    config = input_config_of(model)
    if args.image_size is not None:
        size = (config.input_size[0], args.image_size, args.image_size)
        config = dataclasses.replace(config, input_size=size)
    dataset = ImageDataset.from_folder(folder, build_transform(config))
    loader = make_loader(dataset, LoaderSpec(batch_size=32, seed=0), shuffle=True)
    return shift_signal(model, params(model), loader, device=torch.device("cpu"))


def signal_table(signal: Any) -> Any:
    """The gradient signal as a table: depth, group, relative gradient norm, a bar."""
    from rich.table import Table

    table = Table(
        title=f"relative gradient norm per depth (Auto-RGN, {signal.images} images)",
        caption="1.00: the depth your images pull on hardest; surgical:depth=K trains it",
    )
    for column in ("depth", "group", "relative", ""):
        table.add_column(column, justify="right" if column in ("depth", "relative") else "left")
    for d in signal.depths:
        table.add_row(str(d.depth), d.group, f"{d.relative:.2f}", "#" * round(20 * d.relative))
    return table
