"""``zoo import-peft DIR --name NAME``: a PEFT LoRA adapter folder as a saved zoo model."""

from __future__ import annotations

import argparse

from zoo.cli.output import Output

ORDER = 55


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import-peft",
        help="save a PEFT LoRA adapter folder as a zoo model",
        description="Read a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors), "
        "build its base, inject the LoRA adapters (zoo:lora with PEFT's r, lora_alpha and "
        "lora_dropout), load its modules to save (the head) and save the model in the store: "
        "a delta of its base. The base is --base (a store name or path of a saved model, or a "
        "backbone name whose pretrained weights are used), else the folder's "
        "base_model_name_or_path when it is a timm hub id (timm/<arch>[.<tag>]) or a catalog "
        "name (<arch>.<tag>) -- never a path or a store name. The folder is untrusted: links, "
        "special files, impossible shapes and non-finite values are refused before the base is "
        "built. PEFT options zoo does not compute the same way (DoRA, rsLoRA, rank patterns, "
        "...) are refused.",
    )
    parser.add_argument("folder", metavar="DIR", help="the PEFT adapter folder")
    parser.add_argument("--name", required=True, metavar="NAME", help="store name to save as")
    parser.add_argument(
        "--base",
        metavar="NAME|FILE|BACKBONE",
        default=None,
        help="the base the adapter was trained on (default: base_model_name_or_path)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing model")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: Output) -> int:
    from zoo.api import adapters, import_peft, save
    from zoo.io.store import validate_name

    validate_name(args.name)  # refused before anything is read
    model = import_peft(args.folder, base=args.base)
    path = save(model, args.name, overwrite=args.overwrite)
    added = adapters(model)
    summary = {
        "name": args.name,
        "path": str(path),
        "backbone": model.zoo.build.backbone,
        "targets": len(added),
        "bytes": path.stat().st_size,
    }
    if args.json:
        out.json(summary)
        return 0
    from rich.text import Text

    from zoo.cli.output import human_bytes, plural

    out.print(
        Text(
            f"saved {args.name}: {summary['backbone']} with LoRA on {plural(len(added), 'module')} "
            f"({human_bytes(summary['bytes'])}, {path})"
        )
    )
    return 0
