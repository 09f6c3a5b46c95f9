"""Arguments and checks that several commands share."""

from __future__ import annotations

import argparse
import os
from typing import Any

from zoo.errors import ZooError


def add_num_classes_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--num-classes",
        type=int,
        default=None,
        metavar="N",
        help="build the head for N classes (0 removes it; default: the architecture's own)",
    )


def num_classes_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``{"num_classes": N}`` from ``--num-classes``, ``{}`` if absent; refuses a negative N."""
    if args.num_classes is None:
        return {}
    if args.num_classes < 0:
        raise ZooError(f"--num-classes must be 0 or more, got {args.num_classes}")
    return {"num_classes": args.num_classes}


def require_positive(args: argparse.Namespace, *names: str) -> None:
    """Refuse an int option below 1 (``--topk 0``) before anything is read, by its flag."""
    for name in names:
        value = getattr(args, name)
        if value < 1:
            raise ZooError(f"--{name.replace('_', '-')} must be an int >= 1, not {value}")


def precheck_names(backbone: str | None = None, policy: str | None = None) -> None:
    """Refuse an unknown or ambiguous name from the cached listing, before importing plugins.

    A catalog already built or set in this process (a test, a notebook) is the authority
    instead: the check then costs nothing either.
    """
    from zoo.core.catalog import current_catalog

    catalog = current_catalog()
    if catalog is not None:
        catalog.check_names(backbone=backbone, policy=policy)
        return
    from zoo.cli.listing import check_names_cached

    check_names_cached(backbone=backbone, policy=policy)


def is_main_rank() -> bool:
    """Whether this process prints: always, unless torchrun launched it as a rank other than 0."""
    from zoo.adaptation.distributed import launched_by_torchrun

    return not launched_by_torchrun() or os.environ.get("RANK", "0") == "0"
