"""``zoo export NAME --hub DIR`` / ``--peft DIR``: a saved model as a folder to share."""

from __future__ import annotations

import argparse

from zoo.cli.output import Output

ORDER = 54


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a saved model as a Hub-ready folder (timm or PEFT) with a model card",
        description="Write a saved model as a folder to share on the Hugging Face Hub "
        "(huggingface-cli upload ORG/NAME DIR). --hub DIR: a timm folder (model.safetensors, "
        "config.json), which timm.create_model('local-dir:DIR') and, once uploaded, "
        "'hf-hub:ORG/NAME' load with identical outputs, or for a LoRA model a PEFT folder "
        "(adapter_config.json, adapter_model.safetensors) that PeftModel.from_pretrained "
        "loads; either with a README.md model card. --peft DIR: the PEFT folder of a LoRA "
        "model. An adapter's base_model_name_or_path names a timm name or hub id only when its "
        "base is exactly those weights; otherwise the base is written beside it (DIR/base, a "
        "timm folder) unless --without-base. NAME is a store name, a path or an hf-hub: id.",
    )
    parser.add_argument(
        "name", metavar="NAME|FILE|hf-hub:ID", help="store name, path or hub id of a saved model"
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--hub", metavar="DIR", help="write a Hub-ready folder with a model card")
    where.add_argument("--peft", metavar="DIR", help="write the PEFT folder of a LoRA model")
    parser.add_argument(
        "--without-base",
        action="store_true",
        help="do not write an adapter's base beside it (the card names its sha256)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace files already in DIR")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: Output) -> int:
    import json
    import os

    from zoo.api import export

    folder = export(
        args.name,
        args.hub or args.peft,
        format="hub" if args.hub else "peft",
        overwrite=args.overwrite,
        without_base=args.without_base,
    )
    files = sorted(
        os.path.relpath(os.path.join(root, f), folder)
        for root, _dirs, names in os.walk(folder)
        for f in names
        if ".zoo-tmp" not in root
    )
    summary: dict[str, object] = {
        "folder": str(folder),
        "files": files,
        "bytes": sum((folder / f).stat().st_size for f in files),
    }
    if (folder / "adapter_config.json").is_file():
        config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
        summary.update(
            r=config["r"],
            lora_alpha=config["lora_alpha"],
            targets=len(config["target_modules"]),
            modules_to_save=config["modules_to_save"],
            base_model_name_or_path=config["base_model_name_or_path"],
            base_sha256=_base_sha256(folder / "adapter_model.safetensors"),
        )
    if args.json:
        out.json(summary)
        return 0
    from rich.text import Text

    from zoo.cli.output import human_bytes

    what = (
        f"LoRA r={summary['r']}, alpha={summary['lora_alpha']} on {summary['targets']} "
        f"module(s), saving {', '.join(summary['modules_to_save'] or [])}"  # type: ignore[arg-type]
        if "r" in summary
        else "the model"
    )
    base = ""
    if "r" in summary:
        named = summary["base_model_name_or_path"]
        where = (
            named
            if named
            else "in base/"
            if any(f.startswith("base/") for f in files)
            else "not included (README.md names it)"
        )
        base = f"; the adapter needs the base with sha256 {summary['base_sha256']}: {where}"
    out.print(
        Text(f"exported {what} ({human_bytes(int(summary['bytes']))}) to {folder}{base}")  # type: ignore[call-overload]
    )
    return 0


def _base_sha256(weights: object) -> str | None:
    """The sha256 of the base an exported adapter records (``zoo.base``)."""
    import json

    from zoo.io.fileformat import read_header

    text = read_header(weights).metadata.get("zoo.base")  # type: ignore[arg-type]
    return json.loads(text).get("sha256") if text else None
