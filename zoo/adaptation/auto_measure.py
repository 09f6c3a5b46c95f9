"""``auto`` that measures: with validation data, ``policy="auto"`` compares the default
ladder within a budget (:func:`measure_auto`) and the adapt job trains the winner."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from zoo.adaptation.candidates import plan_candidates
from zoo.adaptation.halving import TrainSettings, compare_candidates
from zoo.adaptation.history import AdaptCallback
from zoo.io.leaderboard import Leaderboard, short_policy
from zoo.tables.build import table_for

if TYPE_CHECKING:
    from torch import nn

    from zoo.adaptation.candidates import PlannedCandidate
    from zoo.adaptation.distributed import DistContext
    from zoo.adaptation.inputs import AdaptData
    from zoo.core.catalog import Catalog
    from zoo.core.specs import InputConfig


#: The measured ``auto`` may spend this many full runs of its slowest candidate comparing.
AUTO_BUDGET_RUNS = 1.0


def measure_auto(
    model: nn.Module,
    data: AdaptData,
    config: InputConfig,
    settings: TrainSettings,
    *,
    ctx: DistContext,
    catalog: Catalog,
    num_workers: int,
    callback: AdaptCallback | None = None,
) -> tuple[str, str, Leaderboard]:
    """What ``policy="auto"`` does with validation data: compare the default ladder (budget:
    :data:`AUTO_BUDGET_RUNS` full runs of the slowest candidate, stopping when one is left)
    and return ``(winner's spec, note, leaderboard)``. ``model`` is not changed."""
    t_start = time.perf_counter()
    planned, notes = auto_ladder(model, settings, catalog=catalog)
    outcome = compare_candidates(
        model,
        data,
        config,
        planned,
        settings,
        ctx=ctx,
        budget=None,
        callback=callback or AdaptCallback(),
        num_workers=num_workers,
        t_start=t_start,
        finish=False,
        relative_budget=AUTO_BUDGET_RUNS,
        notes=notes,
    )
    board = outcome.leaderboard
    return board.winner.policy, auto_note(board), board


def auto_ladder(
    model: nn.Module, settings: TrainSettings, *, catalog: Catalog
) -> tuple[list[PlannedCandidate], list[str]]:
    """The candidates :func:`measure_auto` compares on ``model`` (the default ladder, planned,
    duplicates collapsed) and the notes of those left out. A resumed run checks against it
    that the winner its checkpoint names is one of them."""
    return plan_candidates(
        None,
        table_for(model, catalog=catalog),
        catalog,
        context={"num_classes": settings.num_classes, "epochs": settings.epochs},
    )


def auto_note(board: Leaderboard) -> str:
    """``auto measured 8 policies on the validation set: train-last:n=1 won (val acc 0.91;
    linear-probe 0.85, full 0.88)``."""
    best = board.winner
    shown = [r for r in board.rows[1:] if short_policy(r.policy) in ("linear-probe", "full")]
    if len(board.rows) > 1 and board.rows[1] not in shown:
        shown.insert(0, board.rows[1])
    others = ", ".join(f"{short_policy(r.policy)} {r.val_acc:.2f}" for r in shown)
    text = (
        f"auto measured {len(board.rows)} policies on the validation set: "
        f"{short_policy(best.policy)} won (val acc {best.val_acc:.2f}"
        + (f"; {others}" if others else "")
        + f"), in {board.seconds:.1f} s of successive halving on un-augmented images"
    )
    if len(board.rungs) == 1 and len(board.rows) > 1:
        text += (
            f"; every policy trained all {board.epochs} epochs (too few optimizer steps per "
            "epoch to cut one earlier)"
        )
    elif board.rungs:
        text += f"; none was cut before {board.rungs[0]} epoch(s)"
    if board.budget_cut:
        text += f" cut by its budget ({board.budget:.1f} s)"
    return text
