"""Adapt a backbone to your images: ``zoo.adapt`` — the main job zoo exists for.

::

    model, history = zoo.adapt("timm:resnet18", "data/train", "data/val",
                                    policy="freeze-to:depth=3", epochs=5, name="flowers")

``train`` / ``val`` are image folders (one sub-folder per class) or PyTorch data loaders. The
freeze plan decides what trains, the optimizer's parameter groups and their lr scales; a
schedule policy (``gradual``) unfreezes more each epoch. A plan that trains only the head on
un-augmented images uses the feature cache (:mod:`zoo.adaptation.feature_cache`). Under
``torchrun`` the same call trains with DistributedDataParallel
(:mod:`zoo.adaptation.distributed`). With ``name``, the
result is saved into the store with its class names, input config and plan — checked *before*
training, so an existing name without ``overwrite=True`` fails fast and changes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from torch import nn

from zoo.adaptation.checkpoint import Checkpointer, run_config, seed_rngs
from zoo.adaptation.compare import (
    auto_ladder,
    auto_note,
    keep_winner,
    measure_auto,
    should_refit,
)
from zoo.adaptation.config import TrainConfig, signature
from zoo.adaptation.early_stop import EarlyStop
from zoo.adaptation.evaluation import Evaluation, evaluate
from zoo.adaptation.fit import fit, refit_config, refit_data
from zoo.adaptation.history import AdaptCallback, AdaptResult, EpochRecord, History
from zoo.adaptation.prepare import Run, open_run, saved_input_config
from zoo.adaptation.training import augmentation_of
from zoo.core import checks
from zoo.core.record import attach_record
from zoo.errors import AdaptArgumentError, DataError
from zoo.io.store import checkpoint_folder
from zoo.plans.binding import resolve_policy

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from zoo.adaptation.halving import Outcome
    from zoo.core.catalog import Catalog
    from zoo.core.specs import PolicySpec
    from zoo.io.leaderboard import Leaderboard

__all__ = [
    "AdaptCallback",
    "AdaptResult",
    "EpochRecord",
    "Evaluation",
    "History",
    "adapt",
    "evaluate",
]

#: Arguments zoo offers to any policy that declares them (``auto`` declares the first two).
CONTEXT_ARGS = ("samples_per_class", "similarity", "num_classes", "epochs")


def _policy_kwargs(
    policy: str | PolicySpec, given: Mapping[str, Any], context: Mapping[str, Any], catalog: Catalog
) -> dict[str, Any]:
    """``given`` plus the context arguments the policy declares and was not given.

    Raises when the policy needs ``samples_per_class`` and neither the data nor the caller
    can tell it.
    """
    spec, raw = resolve_policy(policy, catalog)
    declared = {a.name for a in spec.args}
    kwargs = dict(given)
    for key in CONTEXT_ARGS:
        if (
            key in declared
            and key not in kwargs
            and key not in raw
            and context.get(key) is not None
        ):
            kwargs[key] = context[key]
    if (
        "samples_per_class" in declared
        and "samples_per_class" not in kwargs
        and "samples_per_class" not in raw
    ):
        raise DataError(
            f"policy {spec.qualified_name!r} needs the number of samples per class, which this "
            "data loader does not tell (its dataset has no .targets); pass samples_per_class=N"
        )
    return kwargs


def adapt(
    backbone_or_model: str | os.PathLike[str] | nn.Module,
    train: str | os.PathLike[str] | DataLoader,
    val: str | os.PathLike[str] | DataLoader | None = None,
    *,
    catalog: Catalog,
    **options: Any,
) -> AdaptResult:
    """Adapt a backbone to the images in ``train``; returns ``(model, history)``.

    Starting point ``backbone_or_model``: a backbone name, built with its **pretrained
    weights** by default (``pretrained="tag"`` picks other ones; offline without a cached copy
    this fails fast, naming the ways out), with ``weights=`` (a ``.safetensors`` file or a saved
    model's name, whose input config the run then uses unless ``image_size`` / ``input_config``
    say otherwise), or with random weights when ``scratch=True`` (or a backbone that has no
    pretrained weights: then only a plan that trains everything runs unless ``scratch=True``
    is given, and ``auto`` trains everything). Or the name of a model in the store or a saved
    ``.safetensors`` file (adapted again; its head is replaced when the class count differs,
    and the saved model stays recorded as the base, so ``delta=True`` stores the new head plus
    what changed), or an ``nn.Module`` (a timm model's head is reset to the
    class count with ``reset_classifier``).

    Data: ``train``/``val`` are image folders (one sub-folder per class; unreadable images
    are skipped and listed in ``history.skipped``, or an error with ``on_corrupt="error"``)
    or data loaders (class names from ``loader.dataset.classes`` or ``classes=``).
    ``val_split=0.2`` holds out a stratified 20% of a training folder. Images are prepared
    with timm's transforms for the backbone's input config (``image_size`` and
    ``input_config={"crop_pct": 1.0, ...}`` override it; the saved model records the result).

    Policy: a name or ``"name:key=value"`` with more arguments in ``policy_args``. Context a
    policy declares is filled in: ``samples_per_class`` (from the data, or given) and
    ``similarity`` (default ``"high"``) for ``auto``, ``num_classes``, ``epochs``. The plan
    decides the optimizer's parameter groups (lr scales, no decay on norms and biases); a
    schedule policy re-plans each epoch and adds new groups as layers unfreeze.
    ``policy="auto"`` with validation data (``val`` or ``val_split``) measures instead: it
    compares the standard policies on the validation set (``zoo.compare``'s successive halving,
    within about one full run of the slowest) and trains the winner; its note says what won.

    ``augment=None`` augments the training images (timm's random resized crop, flip, colour
    jitter) unless the plan trains only the head, or ``auto`` measures (it trains the winner
    with the augmentation it measured with, off unless asked for). ``augment=True`` turns it
    on, ``False`` off; ``hflip=False``, ``scale=(min, max)``, ``color_jitter=F``,
    ``auto_augment="rand-m9-mstd0.5"`` (timm's text), ``mixup=A`` and ``cutmix=A`` (timm's
    ``Mixup`` alphas: soft targets, label smoothing in them) shape it and turn it on. ``ema``
    (``True`` or a decay such as ``0.999``) keeps timm's ``ModelEmaV3`` moving average of the
    weights: it is what is evaluated each epoch, returned and saved. The augmentation and the
    EMA decay are recorded in the saved file (``zoo.training``; ``zoo inspect`` shows them).
    ``feature_cache="auto"`` trains a head-only plan on features computed once when nothing
    random touches the images; ``True`` insists (an error says why it can't), ``False``
    always runs the plain loop.

    ``name``: save into the store under this name (class names, input config and plan
    included); checked before anything is trained. ``delta=None`` (default) saves a model
    with adapters (``policy="lora"``…) as a small delta of its starting weights and any other
    model in full; ``True``/``False`` force either. ``device=None`` picks the GPU when there is
    one. Under ``torchrun`` the run is distributed (``distributed=False`` opts out); only
    rank 0 saves. ``callback`` (an :class:`AdaptCallback`) sees progress on rank 0.
    """
    return run(backbone_or_model, train, val, TrainConfig.of("adapt", options), catalog=catalog)


adapt.__signature__ = signature(adapt, "adapt", "AdaptResult")  # type: ignore[attr-defined]


def run(
    backbone_or_model: str | os.PathLike[str] | nn.Module,
    train: str | os.PathLike[str] | DataLoader,
    val: str | os.PathLike[str] | DataLoader | None,
    config: TrainConfig,
    *,
    catalog: Catalog,
) -> AdaptResult:
    """The adapt job: :func:`zoo.adapt` with its keyword arguments gathered in ``config``."""
    with open_run(backbone_or_model, config, catalog=catalog) as job:
        spec, _raw = resolve_policy(config.policy, catalog)  # before any data is read
        if config.refit and spec.qualified_name != "zoo:auto":
            raise _refit_refused(config.refit)
        keeper = _keeper(config, job.ctx)
        # the checkpoint folder is owned (no other run of the name, no link, no file there)
        # before any data is read, and held until the model is saved
        with keeper.holding():
            model = job.prepare(train, val)
            _check_resume(keeper, train, val, job)
            model, history = _train(job, model, keeper)
            job.finish(model, history, keeper=keeper)
        return AdaptResult(model, job.end(history))


def _train(job: Run, model: nn.Module, keeper: Checkpointer) -> tuple[nn.Module, History]:
    """Decide the plan (``auto`` included), train it (checkpointing each epoch) and return the
    model and the run's history. A measured ``auto`` returns the model it measured, or
    trains its refit here."""
    config, data, catalog = job.config, job.data, job.catalog
    start_notes = [_input_note(job)]
    context = {
        "samples_per_class": config.samples_per_class or data.samples_per_class,
        "similarity": config.similarity,
        "num_classes": len(data.classes),
        "epochs": config.epochs,
    }
    decided = _decide_auto(job, model, keeper)
    start_notes += [*job.hints, *decided.notes]
    if decided.measured is not None:  # the winner as measured, not trained again
        winner, history, _board = keep_winner(job, model, decided.measured, "auto")
        history.notes = [*start_notes, *history.notes[1:]]
        return winner, history
    kwargs = _policy_kwargs(decided.policy, decided.args, context, catalog)
    train_data, train_config = data, config
    if decided.refit is not None:
        train_data = refit_data(data)
        train_config = refit_config(
            config,
            decided.refit["lr_factor"],
            decided.refit["epochs"],
            data.images("train") + data.images("val"),
        )
    history = fit(
        job,
        model,
        decided.policy,
        kwargs,
        start_notes,
        keeper=keeper,
        data=train_data,
        config=train_config,
        # a refit trains with the augmentation the candidates were measured with
        augment_default=False if decided.refit is not None else None,
    )
    if decided.board is not None:
        attach_record(model).compare = decided.board.to_dict()
    history.notes += _training_notes(history)
    return model, history


@dataclass
class _Decision:
    """What :func:`_decide_auto` decided: the policy to train (with its arguments) and the
    notes saying why; for a measured ``auto``, the comparison (``measured``: its winner is the
    model) or what its refit trains (``refit``: the winner's ``lr_factor`` and ``epochs``,
    with its leaderboard ``board``)."""

    policy: str | PolicySpec
    args: dict[str, Any]
    notes: list[str]
    measured: Outcome | None = None
    refit: dict[str, Any] | None = None
    board: Leaderboard | None = None


def _decide_auto(job: Run, model: nn.Module, keeper: Checkpointer) -> _Decision:
    """The asked policy, or what ``auto`` decides.

    ``auto`` *measures* when there is validation data: the default ladder of policies is
    compared as ``zoo.compare`` does (:func:`zoo.adaptation.compare.measure_auto`) and the
    winner it measured is the model — or, with a refit (the default on a small validation
    set), the winner's policy is retrained at its rate on every labelled image, and the
    checkpoint keeps the winner, so a resumed run trains it on without measuring again.
    Without validation data it guesses from its table (samples per class, similarity), and
    says so; on random weights it trains everything."""
    config, data, start, catalog = job.config, job.data, job.start, job.catalog
    policy = config.policy
    args = dict(config.policy_args or {})
    is_auto = resolve_policy(policy, catalog)[0].qualified_name == "zoo:auto"
    measures = is_auto and not start.random and data.val is not None
    if config.refit and not measures:
        raise _refit_refused(config.refit)
    saved = keeper.saved_auto(measures=measures and should_refit(config, data.images("val")))
    if not is_auto:
        return _Decision(policy, args, [])
    if start.random:
        return _Decision(
            "full",
            {},
            [
                "auto chose zoo:full: the backbone starts from random weights, so every "
                "layer has to learn (a probe of random features learns little)"
            ],
        )
    if data.val is None:
        return _Decision(
            policy,
            args,
            [
                "auto guessed from its rule of thumb (samples per class and similarity): there is "
                "no validation data to measure on; with val / val_split (--val, --val-split) auto "
                "compares the policies on it and trains the winner"
            ],
        )
    if saved is not None:
        ladder = {c.spec for c in auto_ladder(model, config, len(data.classes), catalog)[0]}
        # the surgical candidate joined by the interrupted run's gradient signal: its depth
        # is checked when the policy is bound, as any spec's arguments are
        surgical = saved["policy"].startswith("zoo:surgical:")
        if saved["policy"] not in ladder and not surgical:
            raise keeper.refuse(
                "auto.policy",
                f"{saved['policy']!r} is not one of the policies auto compares on this model "
                f"({', '.join(sorted(ladder))})",
            )
        note = f"{saved['note']} (measured by the interrupted run; resumed without measuring again)"
        refit = {"lr_factor": saved["lr_factor"], "epochs": saved["epochs"]}
        return _Decision(saved["policy"], {}, [note], refit=refit)
    outcome = measure_auto(model, data, job.input_config, config, ctx=job.ctx, catalog=catalog)
    board = replace(outcome.leaderboard, refit=should_refit(config, data.images("val")))
    note = auto_note(board, augmentation_of(config, data, default=False))
    if not board.refit:
        return _Decision(outcome.winner.spec, {}, [note], measured=outcome)
    winner = outcome.winner
    refit = {"lr_factor": winner.lr_factor, "epochs": winner.epochs_run}
    keeper.auto = {"policy": winner.spec, "note": note[: checks.MAX_TEXT], **refit}
    seed_rngs(config.seed)  # the refit trains as if nothing had run before it
    return _Decision(winner.spec, {}, [note], refit=refit, board=board)


def _refit_refused(value: object) -> AdaptArgumentError:
    return AdaptArgumentError(
        "refit",
        value,
        "left out unless policy='auto' measures (with validation data, from pretrained or "
        "given weights): a refit retrains what auto measured; to train a fixed policy on "
        "every labelled image, pass them all as training data",
    )


def _input_note(job: Run) -> str:
    """Which input config the run uses, and why (printed in the summary)."""
    used, start, config = job.input_config, job.start, job.config
    size = "x".join(str(v) for v in used.input_size[1:])
    if start.weights is not None and saved_input_config(start.weights) is not None:
        why = f"the config the weights were trained with ({start.weights.name})"
    else:
        why = "the backbone's config"
    if config.image_size is not None:
        why += ", image size given (image_size / --image-size)"
    if config.input_config:
        why += ", " + ", ".join(sorted(config.input_config)) + " given (input_config)"
    mean = ", ".join(f"{v:.3g}" for v in used.mean)
    std = ", ".join(f"{v:.3g}" for v in used.std)
    return f"input {size} px, mean ({mean}), std ({std}): {why}"


def _keeper(config: TrainConfig, ctx: Any) -> Checkpointer:
    """The run's checkpointing and early stopping (its settings are filled in once the data
    is known: :func:`_check_resume`)."""
    return Checkpointer(
        checkpoint_folder(config.name) if config.name is not None else None,
        {"name": config.name},
        write=ctx.is_main,
        resume=config.resume,
        early=EarlyStop(config.early_stop) if config.early_stop is not None else None,
    )


def _check_resume(keeper: Checkpointer, train: Any, val: Any, job: Run) -> None:
    """Give the keeper the run's settings and, with ``resume``, check its checkpoint against
    them (before any training)."""
    early_stop = job.config.early_stop
    if early_stop is not None and job.data.val is None:
        raise DataError(
            f"early_stop={early_stop} needs a validation set to watch: pass val (--val "
            "DIR) or val_split (--val-split F)"
        )
    data = job.data
    images = (  # a loader's size is in its description (run_config)
        {"train": len(data.train), "val": len(data.val) if data.val is not None else 0}
        if data.from_folders
        else None
    )
    keeper.config = run_config(
        job.point,
        train,
        val,
        job.config.to_dict("adapt"),
        classes=list(data.classes),
        images=images,
        world_size=job.ctx.world_size,
    )
    keeper.check()


def _training_notes(history: History) -> list[str]:
    """Say in the summary which epoch the model is from, and where a resumed run began."""
    notes = []
    if history.resumed_from is not None:
        notes.append(f"resumed after epoch {history.resumed_from} of an interrupted run")
    if history.early_stop is not None:
        last = history.epochs[-1].epoch if history.epochs else 0
        how = (
            f"stopped early after epoch {last}: {history.early_stop} epoch(s) without a lower "
            "validation loss"
            if history.stopped_early
            else f"early stop (patience {history.early_stop}) did not trigger"
        )
        notes.append(
            f"the model is from the best validation epoch, {history.best_epoch} "
            f"(lowest validation loss); {how}"
        )
    return notes
