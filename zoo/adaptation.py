"""Adapt a backbone to your images: ``zoo.adapt`` — the main job zoo exists for.

::

    model, history = zoo.adapt("timm:resnet18", "data/train", "data/val",
                                    policy="freeze-to:depth=3", epochs=5, name="flowers")

``train`` / ``val`` are image folders (one sub-folder per class) or PyTorch data loaders. The
freeze plan decides what trains, the optimizer's parameter groups and their lr scales; a
schedule policy (``gradual``) unfreezes more each epoch. A plan that trains only the head on
un-augmented images uses the feature cache (:mod:`zoo.feature_cache`). Under ``torchrun`` the
same call trains with DistributedDataParallel (:mod:`zoo.distributed`). With ``name``, the
result is saved into the store with its class names, input config and plan — checked *before*
training, so an existing name without ``overwrite=True`` fails fast and changes nothing.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from zoo.adapt_data import prepare_data
from zoo.errors import DataError, ZooError
from zoo.evaluation import Evaluation, evaluate
from zoo.history import AdaptCallback, AdaptResult, EpochRecord, History
from zoo.starting_point import build_model, check_start, check_target, resolve_weights
from zoo.training import LR_SCHEDULES, OPTIMIZERS, run_training

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.data import DataLoader

    from zoo.specs import PolicySpec

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


def _policy_kwargs(policy: str | PolicySpec, given: Mapping[str, Any],
                   context: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` plus the context arguments the policy declares and was not given.

    Raises when the policy needs ``samples_per_class`` and neither the data nor the caller
    can tell it.
    """
    from zoo.plans import resolve_policy

    spec, raw = resolve_policy(policy)
    declared = {a.name for a in spec.args}
    kwargs = dict(given)
    for key in CONTEXT_ARGS:
        if key in declared and key not in kwargs and key not in raw \
                and context.get(key) is not None:
            kwargs[key] = context[key]
    if "samples_per_class" in declared and "samples_per_class" not in kwargs \
            and "samples_per_class" not in raw:
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
    policy: str | PolicySpec = "auto",
    policy_args: Mapping[str, Any] | None = None,
    epochs: int = 5,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    batch_size: int = 32,
    optimizer: str = "adamw",
    momentum: float = 0.9,
    lr_schedule: str = "cosine",
    warmup_epochs: float = 0.0,
    label_smoothing: float = 0.0,
    name: str | None = None,
    overwrite: bool = False,
    delta: bool = False,
    pretrained: bool | str = False,
    weights: str | os.PathLike[str] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    classes: Sequence[str] | None = None,
    val_split: float | None = None,
    image_size: int | Sequence[int] | None = None,
    input_config: Mapping[str, Any] | None = None,
    augment: bool | Mapping[str, Any] | None = None,
    similarity: str = "high",
    samples_per_class: int | None = None,
    feature_cache: bool | str = "auto",
    on_corrupt: str = "skip",
    device: str | None = None,
    distributed: bool | None = None,
    num_workers: int = 0,
    seed: int = 0,
    callback: AdaptCallback | None = None,
) -> AdaptResult:
    """Adapt a backbone to the images in ``train``; returns ``(model, history)``.

    Starting point ``backbone_or_model``: a backbone name (built with
    ``zoo.create(name, num_classes=len(classes), pretrained=..., weights=...)``), the name of a
    model in the store or a saved ``.safetensors`` file (adapted again; its head is replaced
    when the class count differs), or an ``nn.Module`` (a timm model's head is reset to the
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

    ``augment=None`` augments the training images (timm's random resized crop, flip, colour
    jitter; a mapping of ``create_transform`` options customises it) unless the plan trains
    only the head, where it is off. ``feature_cache="auto"`` trains a head-only plan on
    features computed once when nothing random touches the images; ``True`` insists (an
    error says why it can't), ``False`` always runs the plain loop.

    ``name``: save into the store under this name (class names, input config and plan
    included); checked before anything is trained. ``device=None`` picks the GPU when there is
    one. Under ``torchrun`` the run is distributed (``distributed=False`` opts out); only
    rank 0 saves. ``callback`` (an :class:`AdaptCallback`) sees progress on rank 0.
    """
    import torch

    from zoo.data import input_config_of, with_overrides
    from zoo.distributed import setup

    t_start = time.perf_counter()
    _check_arguments(epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer,
                     lr_schedule=lr_schedule, feature_cache=feature_cache,
                     on_corrupt=on_corrupt, val_split=val_split)
    check_target(name, overwrite)
    start_desc = check_start(backbone_or_model)
    if (weights is not None or pretrained) and not start_desc.startswith("backbone"):
        raise ZooError(
            f"pretrained= and weights= apply when starting from a backbone name; this run starts "
            f"from the {start_desc}, whose weights are used as they are"
        )
    from zoo.plans import resolve_policy

    resolve_policy(policy)  # an unknown policy fails before any data is read
    weights_path = resolve_weights(weights)
    data = prepare_data(train, val, classes=classes, val_split=val_split, seed=seed,
                        on_corrupt=on_corrupt)
    ctx = setup(distributed, device)
    callback = callback if (callback is not None and ctx.is_main) else AdaptCallback()
    try:
        torch.manual_seed(seed)
        model = build_model(backbone_or_model, data.classes, pretrained=pretrained,
                            weights=weights_path, kwargs=model_kwargs or {})
        if delta and name is not None and not (getattr(model, "zoo_build", None) or {}).get("base"):
            from zoo.errors import MissingBaseError

            raise MissingBaseError(
                "delta=True saves only what differs from recorded starting weights, and this "
                "model has none (random weights, or a saved model whose head was replaced for "
                "new classes); start from pretrained=True, weights=FILE or a saved model with "
                "the same classes, or save in full (delta=False)"
            )
        if name is not None and not getattr(model, "zoo_build", None):
            raise ZooError(
                f"cannot save this {type(model).__name__} as {str(name)!r}: zoo only saves models "
                "it can rebuild (built by zoo.create, loaded by zoo.load, or a timm model); "
                "start from a backbone name, or pass name=None and save the weights yourself"
            )
        config = with_overrides(input_config_of(model), image_size=image_size,
                                overrides=input_config)
        model.zoo_input_config = config
        model.zoo_classes = list(data.classes)
        model.to(ctx.device)
        context = {
            "samples_per_class": samples_per_class or data.samples_per_class,
            "similarity": similarity,
            "num_classes": len(data.classes),
            "epochs": epochs,
        }
        from zoo.schedule import ScheduleDriver

        planner = ScheduleDriver(model, policy,
                                 **_policy_kwargs(policy, dict(policy_args or {}), context))
        plan = planner.step(0).plan
        history = History(
            backbone=(getattr(model, "zoo_build", None) or {}).get("backbone"),
            start=start_desc,
            policy=plan.policy,
            policy_args=dict(plan.args),
            classes=list(data.classes),
            skipped=data.skipped,
            input_size=list(config.input_size),
            optimizer=optimizer,
            lr=lr,
            batch_size=batch_size,
            device=str(ctx.device),
            world_size=ctx.world_size,
            name=name,
            notes=list(plan.notes),
        )
        run_training(model, data, planner, history, ctx=ctx, config=config, callback=callback,
                     epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size,
                     optimizer=optimizer, momentum=momentum, lr_schedule=lr_schedule,
                     warmup_epochs=warmup_epochs, label_smoothing=label_smoothing,
                     augment=augment, feature_cache=feature_cache, num_workers=num_workers,
                     seed=seed)
        history.total_params = sum(p.numel() for p in model.parameters())
        final = planner.plan
        assert final is not None
        history.trainable_params = sum(p.numel() for n, p in model.named_parameters()
                                       if n in set(final.trainable))
        history.policy, history.policy_args = final.policy, dict(final.args)
        history.notes = list(final.notes)
        model.eval()
        if name is not None:
            if ctx.is_main:
                from zoo.persistence import save

                model.zoo_history = history
                path = save(model, name, classes=list(data.classes), delta=delta,
                            overwrite=overwrite)
                history.path = str(path)
            ctx.barrier()
            history.path = ctx.broadcast(history.path)
        history.total_seconds = time.perf_counter() - t_start
        model.zoo_history = history
        callback.on_end(history)
        return AdaptResult(model, history)
    finally:
        ctx.close()


def _check_arguments(*, epochs: int, lr: float, batch_size: int, optimizer: str,
                     lr_schedule: str, feature_cache: Any, on_corrupt: str,
                     val_split: float | None) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ZooError(f"epochs must be an int >= 1, not {epochs!r}")
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ZooError(f"lr must be a positive number, not {lr!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ZooError(f"batch_size must be an int >= 1, not {batch_size!r}")
    if optimizer not in OPTIMIZERS:
        raise ZooError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if lr_schedule not in LR_SCHEDULES:
        raise ZooError(
            f"unknown lr schedule {lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}"
        )
    if feature_cache not in (True, False, "auto"):
        raise ZooError(f"feature_cache must be True, False or 'auto', not {feature_cache!r}")
    if on_corrupt not in ("skip", "error"):
        raise ZooError(f"on_corrupt must be 'skip' or 'error', not {on_corrupt!r}")
    if val_split is not None and not 0.0 < float(val_split) < 1.0:
        raise DataError(f"val_split must be between 0 and 1 (exclusive), not {val_split!r}")
