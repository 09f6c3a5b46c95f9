"""The training loop of an adaptation run: optimizer, lr schedule, epochs and the feature cache.

:func:`run_training` decides between the loops — a head trained on cached features
(:mod:`zoo.adaptation.feature_cache`), the trainable top of a prefix-frozen plan trained on
activations cached at its freeze boundary (:mod:`zoo.adaptation.boundary_cache`), or the plain
loop over images, re-planning each epoch under a schedule policy — and records every epoch in
the run's :class:`~zoo.adaptation.history.History`.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from zoo.adaptation.cache import (
    Boundary,
    CachedFeatures,
    CacheUnsupported,
    extract,
    find_boundary,
    megabytes,
    on_every_rank,
)
from zoo.adaptation.checkpoint import Checkpointer, loader_generators
from zoo.adaptation.config import OPTIMIZERS
from zoo.adaptation.data import dataset_transform, is_random_transform
from zoo.adaptation.distributed import Replica
from zoo.adaptation.history import EpochRecord
from zoo.adaptation.inputs import distributed_loader, loaders_for_folders, reshuffled, set_epoch
from zoo.errors import DataError, ZooError
from zoo.io.fileformat import PAUSE_AFTER_EPOCH_ENV, pause_for_tests

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.data import DataLoader

    from zoo.adaptation.config import TrainConfig
    from zoo.adaptation.distributed import DistContext
    from zoo.adaptation.history import AdaptCallback, History
    from zoo.adaptation.inputs import AdaptData
    from zoo.core.specs import InputConfig
    from zoo.plans.schedule import ScheduleDriver


def make_optimizer(
    name: str, groups: list[dict[str, Any]], *, lr: float, momentum: float
) -> torch.optim.Optimizer:
    """AdamW or SGD over the plan's groups; the fused kernels when the parameters allow
    (several times faster per step on CPU and GPU)."""
    for group in groups:
        group["initial_lr"] = group["lr"]
    if name not in OPTIMIZERS:
        raise ZooError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    params = [p for g in groups for p in g["params"]]
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    kwargs: dict[str, Any] = {"momentum": momentum} if name == "sgd" else {}
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.SGD
    if fused:
        try:
            return cls(groups, lr=lr, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):  # a torch without fused kernels here
            pass
    return cls(groups, lr=lr, **kwargs)


def _lr_factor(schedule: str, step: int, total: int, warmup: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# ---------------------------------------------------------------- the loop


class TrainLoop:
    """Runs epochs of training and evaluation for one ``forward`` (model or cached head).

    The lr ``schedule`` spans ``epochs`` epochs of ``batches_per_epoch`` steps, the first
    ``warmup_epochs`` of them (a fraction counts its steps) warming up."""

    def __init__(
        self,
        *,
        ctx: DistContext,
        optimizer: torch.optim.Optimizer,
        loss_fn: Any,
        callback: AdaptCallback,
        schedule: str,
        batches_per_epoch: int,
        epochs: int,
        warmup_epochs: float,
        num_classes: int,
    ) -> None:
        self.ctx = ctx
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.callback = callback
        self.schedule = schedule
        self.batches_per_epoch = batches_per_epoch
        self.total_steps = batches_per_epoch * epochs
        self.warmup_steps = int(warmup_epochs * batches_per_epoch)
        self.num_classes = num_classes
        self.step = 0

    def lr_factor(self, step: int) -> float:
        """The factor of every group's initial lr at optimizer step ``step`` (0-based)."""
        return _lr_factor(self.schedule, step, self.total_steps, self.warmup_steps)

    def _set_lr(self) -> float:
        factor = self.lr_factor(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor
        return self.optimizer.param_groups[0]["lr"] if self.optimizer.param_groups else 0.0

    def _check_logits(self, logits: torch.Tensor) -> None:
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ZooError(
                f"the model returns logits of shape {tuple(logits.shape)}, but the data has "
                f"{self.num_classes} classes; give the model a head with {self.num_classes} "
                "outputs (timm: model.reset_classifier(n))"
            )

    def train_epoch(
        self,
        epoch: int,
        epochs: int,
        forward: Any,
        modules: Sequence[nn.Module],
        batches: Iterable[Any],
        n_batches: int,
    ) -> tuple[float, float, int, float, float]:
        """One epoch; returns (mean loss, accuracy, images, seconds, lr) summed over ranks."""
        for module in modules:
            module.train()
        self.callback.on_epoch_start(epoch, epochs, n_batches)
        device = self.ctx.device
        loss_sum = correct = count = 0.0
        lr = 0.0
        start = time.perf_counter()
        for i, batch in enumerate(batches):
            self.ctx.check_peers()
            images, targets = batch[0].to(device, non_blocking=True), batch[1].to(device)
            lr = self._set_lr()
            logits = forward(images)
            if i == 0 and epoch == 1:
                self._check_logits(logits)
            loss = self.loss_fn(logits, targets)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.step += 1
            with torch.no_grad():
                n = targets.shape[0]
                loss_sum += float(loss.detach()) * n
                correct += float((logits.argmax(1) == targets).sum())
                count += n
            elapsed = time.perf_counter() - start
            self.callback.on_batch_end(
                epoch,
                i + 1,
                n_batches,
                loss_sum / count,
                correct / count,
                count * self.ctx.world_size / elapsed if elapsed else 0.0,
            )
        seconds = time.perf_counter() - start
        for module in modules:
            self.ctx.average_buffers(module)
        loss_sum, correct, count = self.ctx.sum([loss_sum, correct, count])
        if not count:
            raise DataError("the training data yielded no batches")
        return loss_sum / count, correct / count, int(count), seconds, lr

    def evaluate(
        self, forward: Any, modules: Sequence[nn.Module], batches: Iterable[Any]
    ) -> tuple[float | None, float | None]:
        for module in modules:
            module.eval()
        device = self.ctx.device
        loss_sum = correct = count = 0.0
        with torch.no_grad():
            for batch in batches:
                self.ctx.check_peers()
                images, targets = batch[0].to(device, non_blocking=True), batch[1].to(device)
                logits = forward(images)
                loss_sum += float(self.loss_fn(logits, targets)) * targets.shape[0]
                correct += float((logits.argmax(1) == targets).sum())
                count += targets.shape[0]
        loss_sum, correct, count = self.ctx.sum([loss_sum, correct, count])
        if not count:
            return None, None
        return loss_sum / count, correct / count


def _head_only(model: nn.Module, planner: ScheduleDriver) -> bool:
    """Only the classifier trains (the rows of the parameter table's ``head`` group: what
    trains decides, not where it sits), and no schedule changes that."""
    heads = {row.name for row in planner.table.rows if row.group == "head"}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return bool(trainable) and trainable <= heads and not planner.is_schedule


def _cache_decision(
    model: nn.Module,
    planner: ScheduleDriver,
    data: AdaptData,
    *,
    augment: bool,
    feature_cache: bool | str,
) -> str | None:
    """Why the plain loop runs (``"plain loop: ..."``), or None when the activation cache may
    stand in for it: a plan that freezes something, no schedule, images nothing random
    touches. Where the boundary is, and whether the cache fits, is found on the first batch
    (:func:`~zoo.adaptation.cache.find_boundary`)."""
    if planner.is_schedule:
        return "plain loop: the schedule changes what trains"
    heads = {row.name for row in planner.table.rows if row.group == "head"}
    params = dict(model.named_parameters())
    trainable = [n for n, p in params.items() if p.requires_grad]
    if not trainable:
        return "plain loop: nothing trains"
    outside = [n for n in trainable if n not in heads]
    why = (
        f"the plan trains more than the classifier ({len(outside)} trainable tensors "
        f"outside it, e.g. {outside[0]!r})"
        if outside
        else ""
    )
    if len(trainable) == len(params):
        return f"plain loop: {why or 'the plan trains every parameter'} and freezes nothing"
    if feature_cache is False:
        return "plain loop: feature cache turned off"
    also = f"{why}, and " if why else ""
    if data.from_folders:
        if augment:
            return f"plain loop: {also}training images are augmented"
    else:
        known, transform = dataset_transform(data.train.dataset)
        if not known and feature_cache != True:  # noqa: E712 - "auto" vs True
            return f"plain loop: {also}cannot tell whether the loader's transform is random"
        if known and is_random_transform(transform):
            return f"plain loop: {also}the loader's transform is random"
    return None


def run_training(
    model: nn.Module,
    data: AdaptData,
    planner: ScheduleDriver,
    history: History,
    config: TrainConfig,
    *,
    ctx: DistContext,
    input_config: InputConfig,
    callback: AdaptCallback,
    keeper: Checkpointer | None = None,
) -> None:
    """Train ``model`` as ``config`` says, on images prepared for ``input_config``.

    ``keeper`` checkpoints each completed epoch, resumes from a checkpoint and stops early
    (:mod:`zoo.adaptation.checkpoint`, :mod:`zoo.adaptation.early_stop`); the caller holds
    it (:meth:`~zoo.adaptation.checkpoint.Checkpointer.holding`) for the whole run.
    """
    keeper = keeper if keeper is not None else Checkpointer(None, {})
    head_only = _head_only(model, planner)
    augment = (not head_only) if config.augment is None else config.augment
    why_not = _cache_decision(
        model, planner, data, augment=augment, feature_cache=config.feature_cache
    )
    if config.feature_cache is True and why_not is not None:
        raise ZooError(f"the feature cache cannot be used: {why_not.split(': ', 1)[-1]}")
    note = why_not or "activations cached at the freeze boundary"
    history.augment = bool(augment)
    if data.from_folders:
        train_loader, val_loader = loaders_for_folders(
            data,
            input_config,
            augment=augment,
            batch_size=config.batch_size,
            num_workers=config.num_workers,
            seed=config.seed,
            ctx=ctx,
            shuffle_train=why_not is not None,
        )
    else:
        train_loader, val_loader = data.train, data.val
        if ctx.enabled:
            train_loader = distributed_loader(
                train_loader, ctx, shuffle=why_not is not None, seed=config.seed, evaluation=False
            )
            if val_loader is not None:
                val_loader = distributed_loader(
                    val_loader, ctx, shuffle=False, seed=config.seed, evaluation=True
                )
    history.train_images = len(train_loader.dataset)
    history.val_images = len(val_loader.dataset) if val_loader is not None else 0
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    callback.on_start(
        {
            "start": history.start,
            "backbone": history.backbone,
            "policy": history.policy,
            "policy_args": history.policy_args,
            "notes": history.notes,
            "classes": history.classes,
            "train_images": history.train_images,
            "val_images": history.val_images,
            "skipped": len(history.skipped),
            "device": history.device,
            "world_size": ctx.world_size,
            "epochs": config.epochs,
            "augment": history.augment,
            "feature_cache": why_not is None,
            "note": note,
            "input_size": history.input_size,
        }
    )
    cached = None
    head: Any = None
    if why_not is None:
        started = time.perf_counter()
        try:
            boundary, cached = _cache(
                model, train_loader, val_loader, ctx=ctx, callback=callback, config=config
            )
            head = boundary.suffix(model)
            size = sum(c.nbytes for c in cached.values())
            note = (
                f"features cached at the input of {boundary.path!r}"
                if head_only
                else f"activations cached at the input of {boundary.path!r} ({megabytes(size)})"
            )
        except CacheUnsupported as exc:
            if config.feature_cache is True:
                raise ZooError(f"the feature cache cannot be used: {exc}") from None
            note = f"plain loop: {exc}"
            # the images were prepared without augmentation and in order; keep that, shuffle
            train_loader = reshuffled(train_loader, ctx, config.seed, config.batch_size)
        history.feature_seconds = time.perf_counter() - started
    history.feature_cache = cached is not None
    history.feature_cache_note = note
    assert planner.plan is not None
    groups = planner.plan.param_groups(model, lr=config.lr, weight_decay=config.weight_decay)
    if not groups:
        raise ZooError(f"nothing trains under {planner.plan.spec_text}: no optimizer to build")
    opt = make_optimizer(config.optimizer, groups, lr=config.lr, momentum=config.momentum)
    planner.attach(opt, lr=config.lr, weight_decay=config.weight_decay)
    if cached is not None:
        _train_cached(
            model,
            head,
            cached,
            planner,
            history,
            ctx=ctx,
            opt=opt,
            loss_fn=loss_fn,
            callback=callback,
            epochs=config.epochs,
            batch_size=config.batch_size,
            lr_schedule=config.lr_schedule,
            warmup_epochs=config.warmup_epochs,
            seed=config.seed,
            keeper=keeper,
            one_thread=head_only,
        )
    else:
        _train_plain(
            model,
            train_loader,
            val_loader,
            planner,
            history,
            ctx=ctx,
            opt=opt,
            loss_fn=loss_fn,
            callback=callback,
            epochs=config.epochs,
            lr=config.lr,
            weight_decay=config.weight_decay,
            lr_schedule=config.lr_schedule,
            warmup_epochs=config.warmup_epochs,
            keeper=keeper,
        )
    _finish(model, history, keeper)


def _finish(model: nn.Module, history: History, keeper: Checkpointer) -> None:
    """With early stopping: put the best validation epoch's state back into the model."""
    early = keeper.early
    if early is None:
        return
    history.early_stop = early.patience
    history.best_epoch = early.best_epoch
    early.restore_best(model)


def _resume(
    keeper: Checkpointer,
    model: nn.Module,
    loop: TrainLoop,
    history: History,
    generators: list[Any],
    replay: Any = None,
) -> int:
    """The first epoch to train: 1, or the one after the checkpoint's when resuming.

    ``replay(epoch)`` re-applies the plan change made at the start of ``epoch`` (a schedule
    policy's), so the optimizer has the parameter groups the checkpoint's state belongs to.
    """
    done = keeper.saved_epoch
    if not done:
        return 1
    if replay is not None:
        for epoch in range(2, done + 1):
            replay(epoch)
    return keeper.restore(model, loop.optimizer, loop, history, generators) + 1


def _end_epoch(
    keeper: Checkpointer,
    record: EpochRecord,
    epochs: int,
    model: nn.Module,
    loop: TrainLoop,
    history: History,
    generators: list[Any],
) -> None:
    """Record the epoch: early-stopping counters, then the checkpoint (main process), then
    the callback — so an interrupt in the callback still keeps this epoch."""
    history.epochs.append(record)
    early = keeper.early
    new_best = early.update(record.epoch, record.val_loss, model) if early is not None else False
    if loop.ctx.is_main:
        keeper.save(
            record.epoch,
            epochs,
            model,
            loop.optimizer,
            loop,
            history,
            generators,
            new_best=new_best,
        )
    pause_for_tests(PAUSE_AFTER_EPOCH_ENV, f"after epoch {record.epoch}")
    loop.callback.on_epoch_end(record)


def _stopping(keeper: Checkpointer, history: History) -> bool:
    """True when early stopping has run out of patience (checked before each epoch)."""
    if keeper.early is not None and keeper.early.should_stop:
        history.stopped_early = True
        return True
    return False


def _cache(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    *,
    ctx: DistContext,
    callback: AdaptCallback,
    config: TrainConfig,
) -> tuple[Boundary, dict[str, CachedFeatures]]:
    """Find the freeze boundary on the first training batch and cache the activations there
    for train and val; :class:`CacheUnsupported` (on every rank) says why not."""
    batches = iter(train_loader)
    first = next(batches, None)

    def find() -> Boundary:
        if first is None:
            raise CacheUnsupported("the data loader yielded no batches")
        if not (isinstance(first, (list, tuple)) and len(first) >= 2):
            raise CacheUnsupported("the data loader does not yield (images, labels) batches")
        # two images show the structure (the checks are per image)
        return find_boundary(model, first[0][:2].to(ctx.device))

    boundary = on_every_rank(ctx, find)
    splits = [("train", train_loader)] + ([("val", val_loader)] if val_loader is not None else [])
    cached = extract(
        model,
        [boundary.path],
        splits,
        ctx=ctx,
        callback=callback,
        batch_size=config.batch_size,
        train_batches=itertools.chain([first], batches),  # the first batch is kept
    )[boundary.path]
    return boundary, dict(zip([name for name, _ in splits], cached, strict=True))


def epoch_record(
    epoch: int,
    train: tuple[float, float, int, float, float],
    val: tuple[float | None, float | None],
    model: nn.Module,
) -> EpochRecord:
    loss, acc, images, seconds, lr = train
    trainable = [p for p in model.parameters() if p.requires_grad]
    return EpochRecord(
        epoch=epoch,
        train_loss=loss,
        train_accuracy=acc,
        val_loss=val[0],
        val_accuracy=val[1],
        seconds=seconds,
        images=images,
        images_per_second=images / seconds if seconds else 0.0,
        lr=lr,
        trainable_params=sum(p.numel() for p in trainable),
        trainable_tensors=len(trainable),
    )


def _train_cached(
    model: nn.Module,
    head: nn.Module,
    cached: Mapping[str, Any],
    planner: ScheduleDriver,
    history: History,
    *,
    ctx: DistContext,
    opt: torch.optim.Optimizer,
    loss_fn: Any,
    callback: AdaptCallback,
    epochs: int,
    batch_size: int,
    lr_schedule: str,
    warmup_epochs: float,
    seed: int,
    keeper: Checkpointer,
    one_thread: bool = True,
) -> None:
    """Train ``head`` (the classifier, or a boundary's suffix sharing the model's parameters)
    on cached inputs. ``one_thread``: tiny head-only steps run on one CPU thread; a deeper top
    keeps the thread count of the plain loop (and its rounding)."""
    replica = Replica(head, ctx)
    train, val = cached["train"], cached.get("val")
    batches = train.loader(batch_size, seed=seed)
    n_batches = len(batches)
    loop = TrainLoop(
        ctx=ctx,
        optimizer=opt,
        loss_fn=loss_fn,
        callback=callback,
        schedule=lr_schedule,
        batches_per_epoch=n_batches,
        epochs=epochs,
        warmup_epochs=warmup_epochs,
        num_classes=len(history.classes),
    )
    with _one_thread_on_cpu(ctx.device) if one_thread else contextlib.nullcontext():
        _cached_epochs(
            model,
            head,
            replica,
            loop,
            batches,
            n_batches,
            val,
            history,
            callback=callback,
            epochs=epochs,
            batch_size=batch_size,
            keeper=keeper,
        )
    history.ddp_wraps = replica.wraps


@contextlib.contextmanager
def _one_thread_on_cpu(device: torch.device) -> Iterator[None]:
    """Run tiny head-only steps on one CPU thread: for a linear layer on cached features,
    waking a thread pool costs more than the arithmetic (several times slower on a busy
    machine). The previous thread count is restored."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _cached_epochs(
    model: nn.Module,
    head: nn.Module,
    replica: Replica,
    loop: TrainLoop,
    batches: Any,
    n_batches: int,
    val: Any,
    history: History,
    *,
    callback: AdaptCallback,
    epochs: int,
    batch_size: int,
    keeper: Checkpointer,
) -> None:
    generators = loader_generators(batches)
    for epoch in range(_resume(keeper, model, loop, history, generators), epochs + 1):
        if _stopping(keeper, history):
            break
        result = loop.train_epoch(epoch, epochs, replica, [head], batches, n_batches)
        scores = (
            loop.evaluate(head, [head], val.loader(batch_size)) if val is not None else (None, None)
        )
        record = epoch_record(epoch, result, scores, model)
        _end_epoch(keeper, record, epochs, model, loop, history, generators)


def _train_plain(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: Any,
    planner: ScheduleDriver,
    history: History,
    *,
    ctx: DistContext,
    opt: torch.optim.Optimizer,
    loss_fn: Any,
    callback: AdaptCallback,
    epochs: int,
    lr: float,
    weight_decay: float,
    lr_schedule: str,
    warmup_epochs: float,
    keeper: Checkpointer,
) -> None:
    replica: Replica = Replica(model, ctx)
    n_batches = len(train_loader)
    loop = TrainLoop(
        ctx=ctx,
        optimizer=opt,
        loss_fn=loss_fn,
        callback=callback,
        schedule=lr_schedule,
        batches_per_epoch=n_batches,
        epochs=epochs,
        warmup_epochs=warmup_epochs,
        num_classes=len(history.classes),
    )

    def replay(epoch: int) -> None:
        if planner.is_schedule and planner.step(epoch - 1).changed:
            replica.sync()

    generators = loader_generators(train_loader)
    first = _resume(keeper, model, loop, history, generators, replay)
    for epoch in range(first, epochs + 1):
        if _stopping(keeper, history):
            break
        if planner.is_schedule and epoch > 1:
            change = planner.step(epoch - 1)  # adds newly trainable parameters to opt
            if change.changed:
                replica.sync()
                callback.on_plan_change(epoch, change.plan)
        set_epoch(train_loader, epoch)
        result = loop.train_epoch(epoch, epochs, replica, [model], train_loader, n_batches)
        scores = (
            loop.evaluate(model, [model], val_loader) if val_loader is not None else (None, None)
        )
        record = epoch_record(epoch, result, scores, model)
        _end_epoch(keeper, record, epochs, model, loop, history, generators)
    history.ddp_wraps = replica.wraps
