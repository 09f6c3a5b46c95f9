"""Compare freeze policies on your own data: ``zoo.compare`` and ``zoo compare``.

::

    result = zoo.compare("timm:resnet18", "data/train", "data/val", epochs=8, name="flowers")
    result.leaderboard.winner.policy     # e.g. "zoo:train-last:n=1"
    model, history = result.model, result.history

Every candidate policy starts from the same weights, split, seed, input config and
augmentation (none unless asked for: ``augment=True``, ``hflip=``, ``mixup=``…; the winner is
the model measured, so it trains with the augmentation its score was measured with), each at
its policy's rate (and, on cached activations, the best of a short sweep around it). Without
augmentation the frozen computation is shared: images are decoded once, prefix-frozen plans
train on activations cached at their freeze boundary; with it every candidate trains on the
images, augmented anew each epoch. Successive halving drops weak candidates early
(:mod:`zoo.adaptation.halving`). The winner, trained to the end — or its refit on training and
validation images together (:func:`keep_winner`) — is saved under ``name`` with the
leaderboard in its metadata.

``policy="auto"`` with validation data measures the same way (:func:`measure_auto`) and
returns the same model: the winner it measured, or its refit.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NamedTuple

from zoo.adaptation.blend import blended, load_blend
from zoo.adaptation.candidates import check_policy, plan_candidates
from zoo.adaptation.checkpoint import seed_rngs
from zoo.adaptation.compare_plot import check_plot_available, check_plot_path, write_plot
from zoo.adaptation.config import TrainConfig, signature
from zoo.adaptation.fit import fit, refit_config, refit_data
from zoo.adaptation.halving import Candidate, Outcome, compare_candidates, release
from zoo.adaptation.history import AdaptCallback, History
from zoo.adaptation.prepare import Run, check_random_start, open_run
from zoo.adaptation.rgn import signal_for_run
from zoo.adaptation.training import augmentation_of
from zoo.core.record import attach_record, backbone_of
from zoo.errors import AdaptArgumentError
from zoo.io.leaderboard import NOISE_VALIDATION, Leaderboard, short_policy
from zoo.plans.freeze import apply_plan
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

#: The measured ``auto`` may spend this many full runs of its slowest candidate comparing,
#: its winner trained to the end included (before a refit): what ``compare`` targets.
AUTO_BUDGET_RUNS = 2.0


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
        table = table_for(model, catalog=catalog)
        signal = None
        if policies is None:  # the default ladder: the surgical candidate the signal points to
            signal = signal_for_run(model, table, data, job.input_config, config, job.ctx)
        surgical = job.ctx.broadcast(signal.strongest(1)) if signal is not None else []
        planned, notes = plan_candidates(
            policies,
            table,
            catalog,
            context={"num_classes": len(data.classes), "epochs": config.epochs},
            probe_start=config.probe_start,
            surgical=surgical,
        )
        if signal is not None and surgical:
            notes.insert(0, f"{signal.text()}: surgical:depth={surgical[0]} joins the ladder")
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
            blend=config.blend,
        )
        final, history, board = keep_winner(job, model, outcome, "compare", hints=job.hints)
        job.finish(final, history)
        if config.plot is not None and job.ctx.is_main:
            write_plot(board, config.plot)
        return CompareResult(final, job.end(history), board)


def should_refit(config: TrainConfig, val_images: int) -> bool:
    """Whether the winner is retrained on training and validation images together:
    ``config.refit``, or by default when the validation set is small (fewer than
    :data:`~zoo.io.leaderboard.NOISE_VALIDATION` images: what it would add to training
    matters, and its ranking is within the noise anyway)."""
    if config.refit is not None:
        return config.refit
    return 0 < val_images < NOISE_VALIDATION


def keep_winner(
    job: Run, start: nn.Module, outcome: Outcome, what: str, *, hints: Sequence[str] = ()
) -> tuple[nn.Module, History, Leaderboard]:
    """The model a comparison returns, its history and its leaderboard (recorded on the
    model): the winner as measured, or — :func:`should_refit` — its refit: ``start`` (the
    untouched starting model) trained with the winner's policy, rate and epochs on every
    labelled image. A blend that ranks first (``zoo compare --blend``) is the model; its
    refit is the blend of its ingredients' refits (:func:`_refit_blend`)."""
    data, config, winner = job.data, job.config, outcome.winner
    board = outcome.leaderboard
    if should_refit(config, data.images("val")):
        board = replace(board, refit=True)
        if outcome.blend is not None:
            history = _refit_blend(job, start, outcome)
        else:
            history = _refit(job, start, winner)
        history.notes = [*hints, f"{what}: {board.why()}", *board.notes, *history.notes]
        attach_record(start).compare = board.to_dict()
        return start, history, board
    assert winner.trainee is not None
    winner.trainee.finish()  # with ema: the average evaluated is the model saved
    saved, plan, trained = winner.model, winner.plan, winner.trainable_params
    if outcome.blend is not None:  # a blend ranks first: it is the model saved
        saved = load_blend(start, outcome.blend)
        plan = apply_plan(saved, outcome.blend.plan)
        trained = board.winner.trainable_params
    augment = augmentation_of(config, data, default=False)
    history = job.history(
        saved,
        plan,
        [*hints, f"{what}: {board.why()}", *board.notes, *plan.notes],
        epochs=list(winner.records),
        train_images=data.images("train"),
        val_images=data.images("val"),
        augment=augment.to_dict() if augment is not None else None,
        ema=config.ema_decay,
        feature_cache=winner.cut is not None,
        feature_cache_note=f"trained on {board.winner.trained_on}",
        trainable_params=trained,
        total_params=winner.total_params,
        stopped_early=winner.epochs_run < config.epochs,
        blend=outcome.blend.record if outcome.blend is not None else None,
    )
    history.lr = config.lr * winner.lr_factor
    attach_record(saved).compare = board.to_dict()
    return saved, history, board


def _refit(job: Run, model: nn.Module, cand: Candidate) -> History:
    """``cand``'s policy trained on ``model`` at its rate, for its epochs, on every labelled
    image (with the candidates' augmentation: none unless asked for), the random generators
    seeded as at the start of a run: the refit trains as if nothing had run before it."""
    data, config = job.data, job.config
    seed_rngs(config.seed)
    return fit(
        job,
        model,
        cand.spec,
        {},
        [],  # said once, in the summary: not again when the refit starts
        data=refit_data(data),
        config=refit_config(
            config,
            cand.lr_factor,
            cand.epochs_run,
            data.images("train") + data.images("val"),
        ),
        augment_default=False,  # as the candidates were measured
    )


def _refit_blend(job: Run, start: nn.Module, outcome: Outcome) -> History:
    """The refit of the blend that ranks first, into ``start``: each ingredient refit from a
    copy of ``start`` (:func:`_refit`: the candidate its rate sweep kept, at that rate, for its
    epochs), then the blend's recipe on their weights (the soup's average, WiSE-FT's
    ``alpha``). The candidates' models are let go first (the refits need as much memory as
    the comparison did). The history is the first ingredient's refit (the best ranked), with
    the blend's plan and record."""
    blend = outcome.blend
    assert blend is not None
    kept = {c.spec: c for c in outcome.candidates if not c.swept}
    ingredients = [kept[spec] for spec in blend.ingredients]
    for cand in outcome.candidates:
        release(cand)
    states, histories = [], []
    for cand in ingredients:
        model = copy.deepcopy(start)
        histories.append(_refit(job, model, cand))
        states.append({k: v.detach() for k, v in model.state_dict().items()})
        del model
    start.load_state_dict(blended(blend, start, states))
    plan = apply_plan(start, blend.plan)
    history = histories[0]
    history.policy, history.policy_args = plan.policy, dict(plan.args)
    history.trainable_params = outcome.leaderboard.winner.trainable_params
    history.blend = blend.record
    history.notes = [
        *history.notes,
        f"the blend's refit: {', '.join(short_policy(s) for s in blend.ingredients)} each "
        "retrained on the training and validation images at its rate and for its epochs, then "
        "blended as measured",
    ]
    return history


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
) -> Outcome:
    """What ``policy="auto"`` does with validation data: compare the default ladder as
    :func:`compare` does — with the surgical candidate its gradient signal points to —
    (budget: :data:`AUTO_BUDGET_RUNS` full runs of the slowest candidate), the winner trained
    to the end: the model whose score it reports. ``model`` is not changed (a refit starts
    from it, :func:`keep_winner`)."""
    t_start = time.perf_counter()
    table = table_for(model, catalog=catalog)
    signal = signal_for_run(model, table, data, input_config, config, ctx)
    surgical = ctx.broadcast(signal.strongest(1))
    planned, notes = auto_ladder(model, config, len(data.classes), catalog, surgical=surgical)
    if surgical:
        notes.insert(0, f"{signal.text()}: surgical:depth={surgical[0]} joins the ladder")
    return compare_candidates(
        model,
        data,
        input_config,
        planned,
        config,
        ctx=ctx,
        budget=None,
        callback=callback or AdaptCallback(),
        t_start=t_start,
        relative_budget=AUTO_BUDGET_RUNS,
        notes=notes,
    )


def auto_ladder(
    model: nn.Module,
    config: TrainConfig,
    num_classes: int,
    catalog: Catalog,
    *,
    surgical: Sequence[int] = (),
) -> tuple[list[PlannedCandidate], list[str]]:
    """The candidates :func:`measure_auto` compares on ``model`` (the default ladder with the
    ``surgical`` candidates, planned, duplicates collapsed) and the notes of those left out.
    A resumed run checks against it that the winner its checkpoint names is one of them."""
    return plan_candidates(
        None,
        table_for(model, catalog=catalog),
        catalog,
        context={"num_classes": num_classes, "epochs": config.epochs},
        probe_start=config.probe_start,  # measured as the winner will be trained
        surgical=surgical,
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
        text += f"; none was cut before epoch {board.rungs[0]}"
    if board.budget_cut:
        text += f" cut by its budget ({board.budget:.1f} s)"
    tied = sum(r.tied for r in board.rows[1:])
    if best.tied and tied:
        text += (
            f"; tied within the noise with {tied} other(s) (within one standard error of the "
            "winner's mean: more validation images would tell them apart)"
        )
    if board.refit:
        text += (
            "; the model is its refit: retrained at its rate on the training and validation "
            "images together"
        )
    else:
        text += "; the model is the winner as measured"
    return text
