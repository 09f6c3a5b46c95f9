"""``zoo compare BACKBONE --data DIR --val DIR --name NAME``: measure freeze policies, keep the
best."""

from __future__ import annotations

import argparse

from zoo.cli.commands.adapt import OPTIONS, check_store_name
from zoo.cli.common import is_main_rank, naming_options
from zoo.cli.output import Output

ORDER = 41

#: The option of each checked argument of zoo.compare (those of adapt, and compare's own).
COMPARE_OPTIONS = {**OPTIONS, "policies": "--policies", "budget": "--budget", "val": "--val"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="train several freeze policies on your data, keep and save the best",
        description="Compare freeze policies of BACKBONE on your images and save the winner\n"
        "under --name, with the leaderboard in its metadata (zoo inspect NAME shows it).\n"
        "Every candidate starts from the same weights, split, seed and input config, on\n"
        "un-augmented images decoded once; prefix-frozen plans train on activations cached\n"
        "at their freeze boundary; successive halving (rungs of E/2^R ... E epochs, each of\n"
        "at least 64 optimizer steps) drops the weaker candidates at each rung, so the whole\n"
        "comparison costs about twice the slowest candidate's full run (with less data every\n"
        "candidate trains to the end). Validation data (--val or --val-split) is required.",
        epilog="examples:\n"
        "  zoo compare timm:resnet18 --data flowers/train --val flowers/val --name flowers\n"
        "  zoo compare timm:resnet18 --data pets --val-split 0.2 --policies "
        "linear-probe,train-last:n=1,full --epochs 8 --name pets --plot pets.png\n"
        "  zoo compare timm:resnet18 --data pets --val-split 0.2 --policies linear-probe "
        "--policies lora:rank=4,alpha=8 --name pets-lora\n"
        "  zoo compare timm:resnet10t --data digits --val-split 0.2 --weights demo-digits-source "
        "--budget 60 --name digits --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "backbone",
        metavar="BACKBONE",
        help="backbone name, a saved model's name, or a .safetensors file to start from",
    )
    parser.add_argument(
        "--data", "-d", required=True, metavar="DIR", help="training images, a folder per class"
    )
    val = parser.add_mutually_exclusive_group()
    val.add_argument("--val", metavar="DIR", help="validation images, same class folders")
    val.add_argument(
        "--val-split",
        type=float,
        metavar="F",
        help="hold out this fraction of --data for validation (stratified)",
    )
    parser.add_argument(
        "--policies",
        metavar="SPEC,SPEC,...",
        action="append",
        help="candidate policies (default: linear-probe, train-last:n=1..3, bitfit, norm-only, "
        "lora and ssf when installed, layer-decay, full); a spec keeps its own arguments "
        "(lora:rank=4,alpha=8,full is two specs); separate specs with ';' when an argument is "
        "a list, or repeat --policies",
    )
    parser.add_argument(
        "--epochs", "-e", type=int, default=5, metavar="N", help="epochs of a full run (default 5)"
    )
    parser.add_argument(
        "--budget",
        type=float,
        metavar="SECONDS",
        help="stop promoting candidates when the comparison would take longer",
    )
    parser.add_argument(
        "--name", "-n", required=True, metavar="NAME", help="store name to save the winner under"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a saved model of the same name"
    )
    parser.add_argument(
        "--plot",
        metavar="FILE",
        help="write validation accuracy vs trained parameters as a PNG (needs matplotlib: "
        'pip install "zoo-transfer[plot]")',
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--weights", metavar="FILE|NAME", help="start from a .safetensors file or a saved model"
    )
    start.add_argument(
        "--pretrained", action="store_true", help="start from the backbone's pretrained weights"
    )
    start.add_argument("--scratch", action="store_true", help="start from random weights")
    train = parser.add_argument_group("training (the same for every candidate)")
    train.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    train.add_argument(
        "--batch-size", "-b", type=int, default=32, metavar="N", help="batch size (default 32)"
    )
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--image-size", type=int, metavar="PX", help="train at PX x PX instead of the backbone's"
    )
    train.add_argument(
        "--workers", type=int, default=0, metavar="N", help="data-loading worker processes"
    )
    parser.add_argument("--device", metavar="DEV", help="cpu, cuda, cuda:1 (default: GPU if any)")
    parser.add_argument(
        "--json",
        action="store_true",
        help='print {"saved", "winner", "candidates"} as one JSON document',
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: Output) -> int:

    from zoo.adaptation.compare import CompareConfig
    from zoo.adaptation.compare import run as run_compare
    from zoo.core.catalog import get_catalog

    main_rank = is_main_rank()
    check_store_name(args.name)
    progress = None
    if main_rank and not args.json:
        from zoo.cli.render_compare import CompareProgress

        progress = CompareProgress(out.console)
    options = CompareConfig(
        policies=_policy_list(args.policies),
        epochs=args.epochs,
        budget=args.budget,
        name=args.name,
        overwrite=args.overwrite,
        plot=args.plot,
        seed=args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
        pretrained=True if args.pretrained else None,
        weights=args.weights,
        scratch=args.scratch,
        val_split=args.val_split,
        image_size=args.image_size,
        device=args.device,
        num_workers=args.workers,
        callback=progress,
    )
    result = naming_options(
        COMPARE_OPTIONS,
        run_compare,
        args.backbone,
        args.data,
        args.val,
        options,
        catalog=get_catalog(),
    )
    board = result.leaderboard
    if not main_rank:  # under torchrun only rank 0 answers
        return 0
    if args.json:
        out.json(board.cli_document(args.name))
        return 0
    from zoo.cli.render_adapt import skipped_text
    from zoo.cli.render_compare import leaderboard_table, notes_text, why_text

    if result.history.skipped:
        out.err.print(skipped_text(result.history))
    out.print()
    out.print(leaderboard_table(board))
    out.print()
    out.print(why_text(board))
    if board.notes:
        out.print(notes_text(board))
    out.print(f"saved as {args.name} ({result.history.path}); zoo inspect {args.name} shows it")
    if args.plot:
        out.print(f"plot: {args.plot}")
    return 0


def _policy_list(given: list[str] | None) -> list[str] | str | None:
    """The specs of every ``--policies`` (each split by :func:`split_policies`); one flag's
    text is passed as given, so that an error shows what was typed."""
    from zoo.adaptation.candidates import split_policies

    if given is None or len(given) == 1:
        return given[0] if given else None
    return [spec for text in given for spec in split_policies(text)]
