"""``zoo export NAME --peft DIR``: a saved model's LoRA adapters as a PEFT adapter folder."""

from __future__ import annotations

import argparse

from zoo.cli.output import Output

ORDER = 54


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a saved model's LoRA adapters for PEFT",
        description="Write the LoRA adapters of a saved model (zoo:lora, one rank, alpha and "
        "dropout), its head and any other module whose parameters trained, as a PEFT LoRA "
        "folder: adapter_config.json and adapter_model.safetensors, in the layout PEFT's "
        "save_pretrained writes, so PeftModel.from_pretrained(timm_model, DIR) loads it. "
        "NAME is a store name or a path.",
    )
    parser.add_argument("name", metavar="NAME|FILE", help="store name or path of a saved model")
    parser.add_argument(
        "--peft", metavar="DIR", required=True, help="folder to write the PEFT adapter into"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace PEFT files already in DIR"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: Output) -> int:
    import json

    from zoo.api import export_peft

    folder = export_peft(args.name, args.peft, overwrite=args.overwrite)
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    summary = {
        "folder": str(folder),
        "r": config["r"],
        "lora_alpha": config["lora_alpha"],
        "targets": len(config["target_modules"]),
        "modules_to_save": config["modules_to_save"],
        "bytes": (folder / "adapter_model.safetensors").stat().st_size,
    }
    if args.json:
        out.json(summary)
        return 0
    from rich.text import Text

    from zoo.cli.output import human_bytes, plural

    out.print(
        Text(
            f"exported LoRA r={summary['r']}, alpha={summary['lora_alpha']} on "
            f"{plural(summary['targets'], 'module')}, saving "
            f"{', '.join(summary['modules_to_save'] or [])}"
            f" ({human_bytes(summary['bytes'])}) to {folder}"
        )
    )
    return 0
