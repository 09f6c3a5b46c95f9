"""Compare freeze policies on your own data: ``zoo.compare`` and ``zoo compare``.

::

    result = zoo.compare("timm:resnet18", "data/train", "data/val", epochs=8, name="flowers")
    result.leaderboard.winner.policy     # e.g. "zoo:train-last:n=1"
    model, history = result.model, result.history

Every candidate policy starts from the same weights, split, seed, input config and
augmentation (none unless asked for: ``augment=True``, ``hflip=``, ``mixup=``…; the winner is
the model measured, so it trains with the augmentation its score was measured with). Without
augmentation the frozen computation is shared: images are decoded once, prefix-frozen plans
train on activations cached at their freeze boundary; with it every candidate trains on the
images, augmented anew each epoch. Successive halving drops weak candidates early
(:mod:`zoo.adaptation.halving`).
The winner, trained to the end, is saved under ``name`` with the leaderboard in its metadata.

``policy="auto"`` with validation data measures the same way (:func:`measure_auto`): it
compares the default ladder within about one full run of the slowest candidate, and the adapt
job trains the winner.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, NamedTuple

from zoo.adaptation.candidates import check_policy, plan_candidates
from zoo.adaptation.compare_plot import check_plot_available, check_plot_path, write_plot
from zoo.adaptation.config import TrainConfig, signature
from zoo.adaptation.halving import compare_candidates
from zoo.adaptation.history import AdaptCallback, History
from zoo.adaptation.prepare import check_random_start, open_run
from zoo.adaptation.training import augmentation_of
from zoo.core.record import attach_record, backbone_of
from zoo.errors import AdaptArgumentError
from zoo.io.leaderboard import Leaderboard, short_policy
from zoo.tables.build import table_for

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.data import DataLoader

    from zoo.adaptation.candidates import PlannedCandidate
    from zoo.adaptation.config import Augment
    from zoo.adaptation.distributed import DistContext
    from zoo.adaptation.inputs import AdaptData
    from zoo.core.catalog import Catalog
    from zoo.core.specs import InputConfig

#: The measured ``auto`` may spend this many full runs of its slowest candidate comparing.
AUTO_BUDGET_RUNS = 1.0


class CompareResult(NamedTuple):
    """``(model, history, leaderboard)``: the winner, its training history, every candidate."""

    model: nn.Module
    history: History
    leaderboard: Leaderboard


def compare(
    backbone_or_model: str | os.PathLike[str] | nn.Module,
    train: str | os.PathLike[str] | DataLoader,
    val: str | os.PathLike[str] | DataLoader | None = None,
    *,
    catalog: Catalog,
    **options: Any,
) -> CompareResult:
    """Train several freeze policies on the same data and keep the best; returns
    ``(model, history, leaderboard)``.

    ``policies``: specs (a list, or one text ``"spec,spec"`` / ``"spec;spec"`` read by
    :func:`~zoo.adaptation.config.split_policies`: ``"linear-probe,lora:rank=4,alpha=8"``
    is two specs; default: a ladder from ``linear-probe`` through ``train-last:n=1..3`` to
    ``bitfit``, ``norm-only``, ``layer-decay`` and ``full``).
    Validation data is required (``val`` or ``val_split``): the candidates are ranked by
    validation accuracy (then loss, then fewer trained parameters). ``epochs`` is the full run
    of a candidate; successive halving stops weak ones early, and ``budget`` (seconds) caps the
    whole comparison. ``name`` saves the winner with the leaderboard in its metadata; ``plot``
    writes a PNG of accuracy against trained parameters (needs matplotlib). The other keyword
    arguments are those of :func:`zoo.adapt`, applied to every candidate; the augmentation is
    off unless asked for (``augment=True`` or any of ``hflip``, ``scale``, ``color_jitter``,
    ``auto_augment``, ``mixup``, ``cutmix``), and every candidate trains with it. With
    ``ema`` each candidate is evaluated, and the winner saved, with its weights' moving
    average.
    """
    return run(backbone_or_model, train, val, TrainConfig.of("compare", options), catalog=catalog)


compare.__signature__ = signature(compare, "compare", "CompareResult")  # type: ignore[attr-defined]


def run(
    backbone_or_model: str | os.PathLike[str] | nn.Module,
    train: str | os.PathLike[str] | DataLoader,
    val: str | os.PathLike[str] | DataLoader | None,
    config: TrainConfig,
    *,
    catalog: Catalog,
) -> CompareResult:
    """The comparison job: :func:`compare` with its keyword arguments in ``config``."""
    if val is None and config.val_split is None:
        raise AdaptArgumentError(
            "val",
            None,
            "validation data to compare on: pass val (--val DIR) or val_split (--val-split F)",
        )
    if config.plot is not None:
        check_plot_available()
        check_plot_path(config.plot)
    with open_run(backbone_or_model, config, catalog=catalog) as job:
        policies = config.policy_list()
        for spec in policies or []:
            check_policy(spec, catalog)  # unknown names and schedules: before any data
        check_random_start(job.start, "compare's candidates freeze parts of the backbone")
        model = job.prepare(train, val)
        data = job.data
        augment = augmentation_of(config, data, default=False)
        augmented = augment.describe() if augment is not None else None
        planned, notes = plan_candidates(
            policies,
            table_for(model, catalog=catalog),
            catalog,
            context={"num_classes": len(data.classes), "epochs": config.epochs},
        )
        job.callback.on_start(
            {
                "start": job.start.description,
                "backbone": backbone_of(model),
                "policies": [p.spec for p in planned],
                "notes": [*job.hints, *notes],
                "classes": list(data.classes),
                "train_images": data.images("train"),
                "val_images": data.images("val"),
                "device": str(job.ctx.device),
                "world_size": job.ctx.world_size,
                "epochs": config.epochs,
                "augment": augment.to_dict() if augment is not None else None,
                "ema": config.ema_decay,
                "feature_cache": augment is None,
                "note": (
                    f"compare: images augmented anew each epoch ({augmented})"
                    if augmented
                    else "compare: un-augmented images, decoded once"
                ),
                "input_size": list(job.input_config.input_size),
            }
        )
        outcome = compare_candidates(
            model,
            data,
            job.input_config,
            planned,
            config,
            ctx=job.ctx,
            budget=config.budget,
            callback=job.callback,
            t_start=job.started,
            notes=notes,
        )
        board, winner = outcome.leaderboard, outcome.winner
        assert winner.trainee is not None
        winner.trainee.finish()  # with ema: the average evaluated is the model saved
        history = job.history(
            winner.model,
            winner.plan,
            [*job.hints, f"compare: {board.why()}", *board.notes, *winner.plan.notes],
            epochs=list(winner.records),
            train_images=data.images("train"),
            val_images=data.images("val"),
            augment=augment.to_dict() if augment is not None else None,
            ema=config.ema_decay,
            feature_cache=winner.cut is not None,
            feature_cache_note=f"trained on {winner.trained_on}",
            trainable_params=winner.trainable_params,
            total_params=winner.total_params,
            stopped_early=winner.epochs_run < config.epochs,
        )
        attach_record(winner.model).compare = board.to_dict()
        job.finish(winner.model, history)
        if config.plot is not None and job.ctx.is_main:
            write_plot(board, config.plot)
        return CompareResult(winner.model, job.end(history), board)


# ---------------------------------------------------------------- the measured auto


def measure_auto(
    model: nn.Module,
    data: AdaptData,
    input_config: InputConfig,
    config: TrainConfig,
    *,
    ctx: DistContext,
    catalog: Catalog,
    callback: AdaptCallback | None = None,
) -> tuple[str, str, Leaderboard]:
    """What ``policy="auto"`` does with validation data: compare the default ladder (budget:
    :data:`AUTO_BUDGET_RUNS` full runs of the slowest candidate, stopping when one is left)
    and return ``(winner's spec, note, leaderboard)``. ``model`` is not changed."""
    t_start = time.perf_counter()
    planned, notes = auto_ladder(model, config, len(data.classes), catalog)
    outcome = compare_candidates(
        model,
        data,
        input_config,
        planned,
        config,
        ctx=ctx,
        budget=None,
        callback=callback or AdaptCallback(),
        t_start=t_start,
        finish=False,
        relative_budget=AUTO_BUDGET_RUNS,
        notes=notes,
    )
    board = outcome.leaderboard
    augment = augmentation_of(config, data, default=False)
    return board.winner.policy, auto_note(board, augment), board


def auto_ladder(
    model: nn.Module, config: TrainConfig, num_classes: int, catalog: Catalog
) -> tuple[list[PlannedCandidate], list[str]]:
    """The candidates :func:`measure_auto` compares on ``model`` (the default ladder, planned,
    duplicates collapsed) and the notes of those left out. A resumed run checks against it
    that the winner its checkpoint names is one of them."""
    return plan_candidates(
        None,
        table_for(model, catalog=catalog),
        catalog,
        context={"num_classes": num_classes, "epochs": config.epochs},
    )


def auto_note(board: Leaderboard, augment: Augment | None = None) -> str:
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
        + f"), in {board.seconds:.1f} s of successive halving on "
        + (
            f"images augmented as the winner trains ({augment.describe()})"
            if augment
            else "un-augmented images"
        )
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
