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

import inspect
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from zoo.adaptation.checkpoint import Checkpointer, run_config, seed_python_rngs
from zoo.adaptation.early_stop import EarlyStop
from zoo.adaptation.evaluation import Evaluation, evaluate
from zoo.adaptation.history import AdaptCallback, AdaptResult, EpochRecord, History
from zoo.adaptation.inputs import prepare_data
from zoo.adaptation.starting_point import (
    StartWeights,
    check_start,
    check_target,
    choose_weights,
    prepare_model,
    saved_input_config,
)
from zoo.adaptation.training import LR_SCHEDULES, OPTIMIZERS, run_training
from zoo.core import checks
from zoo.core.record import attach_record, backbone_of
from zoo.core.specs import CROP_MODES, INTERPOLATIONS, MAX_IMAGE_SIDE, InputConfig
from zoo.errors import AdaptArgumentError, DataError, ZooError
from zoo.io.persistence import save
from zoo.io.store import checkpoint_folder
from zoo.plans.binding import bind, resolve_policy
from zoo.plans.schedule import ScheduleDriver
from zoo.tables.build import table_for

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.data import DataLoader

    from zoo.core.catalog import Catalog
    from zoo.core.specs import PolicySpec

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


@dataclass(frozen=True)
class AdaptConfig:
    """How an adapt run trains: one field per keyword argument of :func:`zoo.adapt`, with the
    same defaults. ``zoo adapt`` fills one from its options; :meth:`check` refuses a value of
    the wrong type or out of range before any work."""

    policy: str | PolicySpec = "auto"
    policy_args: Mapping[str, Any] | None = None
    epochs: int = 5
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 32
    optimizer: str = "adamw"
    momentum: float = 0.9
    lr_schedule: str = "cosine"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    name: str | None = None
    overwrite: bool = False
    delta: bool | None = None
    pretrained: bool | str | None = None
    weights: str | os.PathLike[str] | None = None
    scratch: bool = False
    model_kwargs: Mapping[str, Any] | None = None
    classes: Sequence[str] | None = None
    val_split: float | None = None
    image_size: int | Sequence[int] | None = None
    input_config: Mapping[str, Any] | None = None
    augment: bool | Mapping[str, Any] | None = None
    similarity: str = "high"
    samples_per_class: int | None = None
    feature_cache: bool | str = "auto"
    on_corrupt: str = "skip"
    device: str | None = None
    distributed: bool | None = None
    num_workers: int = 0
    seed: int = 0
    callback: AdaptCallback | None = None
    early_stop: int | None = None
    resume: bool = False

    def check(self) -> None:
        """Raise :class:`~zoo.AdaptArgumentError` naming the first refused field."""
        _check_arguments({f.name: getattr(self, f.name) for f in fields(self)})


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
    jitter; a mapping of ``create_transform`` options customises it) unless the plan trains
    only the head, where it is off. ``feature_cache="auto"`` trains a head-only plan on
    features computed once when nothing random touches the images; ``True`` insists (an
    error says why it can't), ``False`` always runs the plain loop.

    ``name``: save into the store under this name (class names, input config and plan
    included); checked before anything is trained. ``delta=None`` (default) saves a model
    with adapters (``policy="lora"``…) as a small delta of its starting weights and any other
    model in full; ``True``/``False`` force either. ``device=None`` picks the GPU when there is
    one. Under ``torchrun`` the run is distributed (``distributed=False`` opts out); only
    rank 0 saves. ``callback`` (an :class:`AdaptCallback`) sees progress on rank 0.
    """
    return run(backbone_or_model, train, val, AdaptConfig(**options), catalog=catalog)


def config_signature(function: Any, config: type, returns: str) -> inspect.Signature:
    """A job function's signature as users see it: the starting point and the data (its first
    three parameters), then every field of the ``config`` dataclass as a keyword argument, then
    ``catalog`` (which zoo.api fills). ``adapt`` and ``compare`` take ``**options``."""
    own = list(inspect.signature(function).parameters.values())
    options = [
        inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type
        )
        for f in fields(config)
    ]
    return inspect.Signature([*own[:3], *options, own[3]], return_annotation=returns)


adapt.__signature__ = config_signature(adapt, AdaptConfig, "AdaptResult")  # type: ignore[attr-defined]


def run(
    backbone_or_model: str | os.PathLike[str] | nn.Module,
    train: str | os.PathLike[str] | DataLoader,
    val: str | os.PathLike[str] | DataLoader | None,
    options: AdaptConfig,
    *,
    catalog: Catalog,
) -> AdaptResult:
    """The adapt job: :func:`zoo.adapt` with its keyword arguments gathered in ``options``."""

    from zoo.adaptation.distributed import setup

    t_start = time.perf_counter()
    options.check()
    ctx = setup(options.distributed, options.device)
    try:
        with ctx.guard():  # a failure on any rank stops every rank, with its message
            start_desc, start = _check_start(
                backbone_or_model,
                name=options.name,
                overwrite=options.overwrite,
                weights=options.weights,
                pretrained=options.pretrained,
                scratch=options.scratch,
                policy=options.policy,
                catalog=catalog,
            )
            keeper = _keeper(options, ctx)
            # the checkpoint folder is owned (no other run of the name, no link, no file there)
            # before any data is read, and held until the model is saved
            with keeper.holding():
                data = prepare_data(
                    train,
                    val,
                    classes=options.classes,
                    val_split=options.val_split,
                    seed=options.seed,
                    on_corrupt=options.on_corrupt,
                )
                callback = options.callback
                if callback is None or not ctx.is_main:
                    callback = AdaptCallback()
                model, config = prepare_model(
                    backbone_or_model,
                    data.classes,
                    start,
                    seed=options.seed,
                    model_kwargs=options.model_kwargs,
                    image_size=options.image_size,
                    input_config=options.input_config,
                    name=options.name,
                    delta=options.delta,
                    device=ctx.device,
                    catalog=catalog,
                )
                _check_resume(keeper, backbone_or_model, train, val, data, options, ctx)
                history = _train(
                    model,
                    data,
                    config,
                    start,
                    start_desc,
                    options,
                    keeper=keeper,
                    callback=callback,
                    ctx=ctx,
                    catalog=catalog,
                )
                if options.name is not None:
                    _save(model, data, history, options, keeper=keeper, ctx=ctx, catalog=catalog)
            history.total_seconds = time.perf_counter() - t_start
            callback.on_end(history)
            return AdaptResult(model, history)
    finally:
        ctx.close()


def _train(
    model: nn.Module,
    data: Any,
    config: InputConfig,
    start: StartWeights,
    start_desc: str,
    options: AdaptConfig,
    *,
    keeper: Checkpointer,
    callback: AdaptCallback,
    ctx: Any,
    catalog: Catalog,
) -> History:
    """Decide the plan (``auto`` included), train it (checkpointing each epoch) and return the
    run's history; the model is left in eval mode with its training record."""
    start_notes = [_input_note(config, start, options)]
    context = {
        "samples_per_class": options.samples_per_class or data.samples_per_class,
        "similarity": options.similarity,
        "num_classes": len(data.classes),
        "epochs": options.epochs,
    }

    policy, policy_args, auto_notes = _decide_auto(
        model, data, config, start, options, keeper=keeper, ctx=ctx, catalog=catalog
    )
    start_notes += auto_notes
    kwargs = _policy_kwargs(policy, policy_args, context, catalog)
    planner = ScheduleDriver(
        model,
        bind(policy, kwargs, catalog),
        table=table_for(model, catalog=catalog),
    )
    plan = planner.step(0).plan
    _check_random_start(model, plan, start)
    history = History(
        backbone=backbone_of(model),
        start=start.description
        if start.description == start_desc
        else f"{start_desc}, {start.description}",
        policy=plan.policy,
        policy_args=dict(plan.args),
        classes=list(data.classes),
        skipped=data.skipped,
        input_size=list(config.input_size),
        optimizer=options.optimizer,
        lr=options.lr,
        batch_size=options.batch_size,
        device=str(ctx.device),
        world_size=ctx.world_size,
        name=options.name,
        notes=[*start_notes, *plan.notes],
    )
    try:
        run_training(
            model,
            data,
            planner,
            history,
            ctx=ctx,
            config=config,
            callback=callback,
            epochs=options.epochs,
            lr=options.lr,
            weight_decay=options.weight_decay,
            batch_size=options.batch_size,
            optimizer=options.optimizer,
            momentum=options.momentum,
            lr_schedule=options.lr_schedule,
            warmup_epochs=options.warmup_epochs,
            label_smoothing=options.label_smoothing,
            augment=options.augment,
            feature_cache=options.feature_cache,
            num_workers=options.num_workers,
            seed=options.seed,
            keeper=keeper,
        )
    except KeyboardInterrupt as exc:
        kept = keeper.interrupted(options.epochs) if ctx.is_main else None
        if kept is not None:
            raise kept from exc
        raise
    history.total_params = sum(p.numel() for p in model.parameters())
    final = planner.plan
    assert final is not None
    history.trainable_params = sum(
        p.numel() for n, p in model.named_parameters() if n in set(final.trainable)
    )
    history.policy, history.policy_args = final.policy, dict(final.args)
    history.notes = [*start_notes, *final.notes]
    history.notes += _training_notes(history)
    attach_record(model).training = history.training_record(options.epochs)  # zoo.training
    model.eval()
    return history


def _save(
    model: nn.Module,
    data: Any,
    history: History,
    options: AdaptConfig,
    *,
    keeper: Checkpointer,
    ctx: Any,
    catalog: Catalog,
) -> None:
    """Save the trained model under ``options.name`` (rank 0), then delete its checkpoint. A
    save that fails says that the trained run is kept and how to save it without training."""
    assert options.name is not None
    if ctx.is_main:
        try:
            path = save(
                model,
                options.name,
                classes=list(data.classes),
                delta=options.delta,
                overwrite=options.overwrite,
                catalog=catalog,
            )
        except ZooError as exc:
            kept = keeper.not_saved(exc, options.epochs)
            if kept is None:
                raise
            raise kept from exc
        history.path = str(path)
        keeper.remove()  # saved: the checkpoint is no longer needed
    ctx.barrier()
    history.path = ctx.broadcast(history.path)


def _decide_auto(
    model: nn.Module,
    data: Any,
    config: InputConfig,
    start: StartWeights,
    options: AdaptConfig,
    *,
    keeper: Checkpointer,
    ctx: Any,
    catalog: Catalog,
) -> tuple[str | PolicySpec, dict[str, Any], list[str]]:
    """``(policy, its arguments, notes)`` to train: the asked policy, or what ``auto`` decides.

    ``auto`` *measures* when there is validation data: the default ladder of policies is
    compared by successive halving (:func:`zoo.adaptation.halving.measure_auto`) and the winner
    is trained — and kept in the checkpoint, so a resumed run trains it on without measuring
    again. Without validation data it guesses from its table (samples per class, similarity),
    and says so; on random weights it trains everything."""
    policy = options.policy
    args = dict(options.policy_args or {})
    is_auto = resolve_policy(policy, catalog)[0].qualified_name == "zoo:auto"
    saved = keeper.saved_auto(measures=is_auto and not start.random and data.val is not None)
    if not is_auto:
        return policy, args, []
    if start.random:
        return (
            "full",
            {},
            [
                "auto chose zoo:full: the backbone starts from random weights, so every "
                "layer has to learn (a probe of random features learns little)"
            ],
        )
    if data.val is None:
        return (
            policy,
            args,
            [
                "auto guessed from its rule of thumb (samples per class and similarity): there is "
                "no validation data to measure on; with val / val_split (--val, --val-split) auto "
                "compares the policies on it and trains the winner"
            ],
        )
    import torch

    from zoo.adaptation.auto_measure import auto_ladder, measure_auto
    from zoo.adaptation.halving import TrainSettings

    settings = TrainSettings.from_options(options, len(data.classes))
    if saved is not None:
        ladder = {c.spec for c in auto_ladder(model, settings, catalog=catalog)[0]}
        if saved["policy"] not in ladder:
            raise keeper.refuse(
                "auto.policy",
                f"{saved['policy']!r} is not one of the policies auto compares on this model "
                f"({', '.join(sorted(ladder))})",
            )
        spec, note = saved["policy"], saved["note"]
        notes = [f"{note} (measured by the interrupted run; resumed without measuring again)"]
    else:
        spec, note, _board = measure_auto(
            model, data, config, settings, ctx=ctx, catalog=catalog, num_workers=options.num_workers
        )
        notes = [note]
    keeper.auto = {"policy": spec, "note": note[: checks.MAX_TEXT]}
    torch.manual_seed(options.seed)  # the winner trains as if nothing had run before it
    seed_python_rngs(options.seed)
    return spec, {}, notes


def _check_start(
    backbone_or_model: Any,
    *,
    name: str | None,
    overwrite: bool,
    weights: Any,
    pretrained: bool | str | None,
    scratch: bool,
    policy: str | PolicySpec,
    catalog: Catalog,
) -> tuple[str, StartWeights]:
    """(description of the starting point, where its weights come from): the target name, the
    start, the policy and the weights checked before any data is read."""

    check_target(name, overwrite)
    start_desc = check_start(backbone_or_model, catalog)
    start = choose_weights(
        backbone_or_model,
        start_desc,
        pretrained=pretrained,
        weights=weights,
        scratch=scratch,
        catalog=catalog,
    )
    resolve_policy(policy, catalog)
    return start_desc, start


def _check_random_start(model: nn.Module, plan: Any, start: StartWeights) -> None:
    """Refuse a plan that freezes part of a randomly initialised backbone unless the caller
    asked for random weights: frozen random features are noise, not a starting point."""
    if not start.random or start.explicit:
        return
    names = [n for n, _ in model.named_parameters()]
    if len(set(plan.trainable)) >= len(names):
        return
    raise ZooError(
        f"policy {plan.policy!r} freezes part of the backbone, which starts from "
        f"{start.description}: frozen random layers only add noise. Use --policy full "
        "(policy='full'), start from trained weights (--weights FILE|NAME), or pass --scratch "
        "(scratch=True) to train this plan on random weights anyway"
    )


def _input_note(config: Any, start: StartWeights, options: AdaptConfig) -> str:
    """Which input config the run uses, and why (printed in the summary)."""
    size = "x".join(str(v) for v in config.input_size[1:])
    if start.weights is not None and saved_input_config(start.weights) is not None:
        why = f"the config the weights were trained with ({start.weights.name})"
    else:
        why = "the backbone's config"
    if options.image_size is not None:
        why += ", image size given (image_size / --image-size)"
    if options.input_config:
        why += ", " + ", ".join(sorted(options.input_config)) + " given (input_config)"
    mean = ", ".join(f"{v:.3g}" for v in config.mean)
    std = ", ".join(f"{v:.3g}" for v in config.std)
    return f"input {size} px, mean ({mean}), std ({std}): {why}"


def _keeper(options: AdaptConfig, ctx: Any) -> Checkpointer:
    """The run's checkpointing and early stopping (its settings are filled in once the data
    is known: :func:`_check_resume`)."""
    return Checkpointer(
        checkpoint_folder(options.name) if options.name is not None else None,
        {"name": options.name},
        write=ctx.is_main,
        resume=options.resume,
        early=EarlyStop(options.early_stop) if options.early_stop is not None else None,
    )


def _check_resume(
    keeper: Checkpointer,
    start: Any,
    train: Any,
    val: Any,
    data: Any,
    options: AdaptConfig,
    ctx: Any,
) -> None:
    """Give the keeper the run's settings and, with ``resume``, check its checkpoint against
    them (before any training)."""
    if options.early_stop is not None and data.val is None:
        raise DataError(
            f"early_stop={options.early_stop} needs a validation set to watch: pass val (--val "
            "DIR) or val_split (--val-split F)"
        )
    settings = {f.name: getattr(options, f.name) for f in fields(options)}
    images = (  # a loader's size is in its description (run_config)
        {"train": len(data.train), "val": len(data.val) if data.val is not None else 0}
        if data.from_folders
        else None
    )
    keeper.config = run_config(
        start,
        train,
        val,
        settings,
        classes=list(data.classes),
        images=images,
        world_size=ctx.world_size,
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


#: Upper bound of ``num_workers``: more loader processes than this is a typo, not a plan.
MAX_WORKERS = 256
#: Upper bound (exclusive) of ``seed``: what ``torch.manual_seed`` accepts on every platform.
SEED_LIMIT = 2**63
SIMILARITIES = ("high", "low")
ON_CORRUPT = ("skip", "error")


def _check_image_size(image_size: Any) -> None:
    sides = [image_size, image_size] if checks.is_int(image_size) else image_size
    try:
        checks.int_list(sides, "image_size", size=2, low=1, high=MAX_IMAGE_SIDE)
    except checks.Invalid:
        raise AdaptArgumentError(
            "image_size", image_size, f"an int or (height, width) from 1 to {MAX_IMAGE_SIDE} pixels"
        ) from None


def _check_input_config(overrides: Any) -> None:
    """Each override a user gives, checked before any work (the full config, which also
    depends on the model, is checked again by ``InputConfig.from_dict`` once it is known)."""

    if not isinstance(overrides, Mapping):
        raise AdaptArgumentError("input_config", overrides, "a mapping of input config fields")
    known = InputConfig().to_dict()
    for key, value in overrides.items():
        arg = f"input_config[{key!r}]"
        if key not in known:
            raise AdaptArgumentError(
                "input_config",
                dict(overrides),
                "a mapping with the keys " + ", ".join(sorted(known)),
            )
        if key == "crop_pct" and not (checks.is_real(value) and 0 < value <= 2):
            raise AdaptArgumentError(arg, value, "a finite number in (0, 2] (1.0: no crop)")
        if key in ("interpolation", "crop_mode"):
            checks.choice(value, arg, INTERPOLATIONS if key == "interpolation" else CROP_MODES)
        elif key == "input_size":
            rule = f"(channels, height, width): 3 ints from 1 to {MAX_IMAGE_SIDE}"
            if not (
                isinstance(value, Sequence)
                and not isinstance(value, str)
                and len(value) == 3
                and all(checks.is_int(v) and 1 <= v <= MAX_IMAGE_SIDE for v in value)
            ):
                raise AdaptArgumentError(arg, value, rule)
        elif key in ("mean", "std") and not (
            isinstance(value, Sequence)
            and not isinstance(value, str)
            and value
            and all(checks.is_real(v) and (key == "mean" or v > 0) for v in value)
        ):
            rule = "finite numbers > 0" if key == "std" else "finite numbers"
            raise AdaptArgumentError(arg, value, f"a list of {rule}, one per channel")


def _check_classes(classes: Any) -> None:
    if classes is None:
        return
    if (
        isinstance(classes, str)
        or not isinstance(classes, Sequence)
        or not all(isinstance(c, str) and c for c in classes)
    ):
        raise AdaptArgumentError("classes", classes, "a list of class names (non-empty strings)")
    if len(set(classes)) != len(classes):
        raise AdaptArgumentError("classes", classes, "a list of distinct class names")
    try:
        for name in classes:
            checks.text(name, "classes", max_len=None)
    except checks.Invalid:
        raise AdaptArgumentError(
            "classes", classes, "a list of class names without control characters"
        ) from None
    if len(classes) < 2:
        raise AdaptArgumentError(
            "classes",
            classes,
            "at least 2 class names (a classifier with one class always predicts it)",
        )


def _check_arguments(args: Mapping[str, Any]) -> None:
    """Refuse any argument of :func:`adapt` of the wrong type or out of range, before any work
    (no folder scanned, no model built, no weights read); raises :class:`AdaptArgumentError`."""
    try:
        _check_values(args)
    except checks.Invalid as exc:
        raise AdaptArgumentError(exc.what, exc.value, exc.rule) from None


def _check_values(args: Mapping[str, Any]) -> None:
    """The checks of :func:`_check_arguments`: a value refused raises
    :class:`~zoo.core.checks.Invalid` naming the argument."""
    checks.integer(args["epochs"], "epochs", 1)
    checks.real(args["lr"], "lr", 0, open_low=True)
    checks.real(args["weight_decay"], "weight_decay", 0)
    checks.integer(args["batch_size"], "batch_size", 1)
    checks.choice(args["optimizer"], "optimizer", OPTIMIZERS)
    checks.real(args["momentum"], "momentum", 0, 1, open_high=True)
    checks.choice(args["lr_schedule"], "lr_schedule", LR_SCHEDULES)
    checks.real(args["warmup_epochs"], "warmup_epochs", 0, args["epochs"])
    checks.real(args["label_smoothing"], "label_smoothing", 0, 1, open_high=True)
    if args["val_split"] is not None:
        checks.real(args["val_split"], "val_split", 0, 1, open_low=True, open_high=True)
    if args["image_size"] is not None:
        _check_image_size(args["image_size"])
    if args["input_config"] is not None:
        _check_input_config(args["input_config"])
    if not (args["augment"] is None or isinstance(args["augment"], (bool, Mapping))):
        raise AdaptArgumentError(
            "augment", args["augment"], "None, True, False or a mapping of timm transform options"
        )
    checks.choice(args["similarity"], "similarity", SIMILARITIES)
    if args["samples_per_class"] is not None:
        checks.integer(args["samples_per_class"], "samples_per_class", 1)
    checks.choice(args["feature_cache"], "feature_cache", (True, False, "auto"))
    if args["feature_cache"] is not False:
        from zoo.adaptation.feature_cache import max_cache_bytes

        max_cache_bytes()  # a bad ZOO_FEATURE_CACHE_MAX_BYTES is refused before any work too
    checks.choice(args["on_corrupt"], "on_corrupt", ON_CORRUPT)
    checks.integer(args["num_workers"], "num_workers", 0, MAX_WORKERS)
    checks.integer(args["seed"], "seed", 0, SEED_LIMIT - 1)
    if args["early_stop"] is not None:
        checks.integer(args["early_stop"], "early_stop", 1)
    checks.flag(args["resume"], "resume")
    checks.choice(args["distributed"], "distributed", (None, True, False))
    checks.choice(args["delta"], "delta", (None, True, False))
    checks.flag(args["overwrite"], "overwrite")
    checks.flag(args["scratch"], "scratch")
    if not (args["pretrained"] is None or isinstance(args["pretrained"], (bool, str))):
        raise AdaptArgumentError(
            "pretrained", args["pretrained"], "None (default), True, False or a pretrained tag"
        )
    for mapping in ("policy_args", "model_kwargs"):
        if args[mapping] is not None and not isinstance(args[mapping], Mapping):
            raise AdaptArgumentError(mapping, args[mapping], "a mapping (dict) or None")
    _check_classes(args["classes"])
    if args["device"] is not None:
        from zoo.adaptation.distributed import resolve_device

        resolve_device(args["device"])
