"""The training engine: one :class:`Trainee` per model in training, and ``zoo.adapt``'s epochs.

A :class:`Trainee` is one model being trained: its optimizer over the plan's groups, its lr
schedule, its batches, and the module that runs forward — the model on images, or its
trainable top on activations cached at the freeze boundary
(:class:`~zoo.adaptation.cache.Suffix`). :meth:`Trainee.epoch` trains one epoch and evaluates.

``zoo.adapt`` trains one (:func:`run_training`): it decides whether the activation cache may
stand in for the plain loop over images (:mod:`zoo.adaptation.cache`), then drives the epochs
with checkpoints, resuming, early stopping and a schedule policy's re-planning, and records
every epoch in the run's :class:`~zoo.adaptation.history.History`. ``zoo.compare`` trains one
per candidate, in rungs (:mod:`zoo.adaptation.halving`).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn

from zoo.adaptation.cache import (
    INFERENCE_BATCH,
    Boundary,
    CachedFeatures,
    CacheUnsupported,
    augmentation_rule,
    extract,
    find_boundary,
    megabytes,
    on_every_rank,
)
from zoo.adaptation.checkpoint import Checkpointer, loader_generators
from zoo.adaptation.config import OPTIMIZERS
from zoo.adaptation.data import dataset_transform, is_random_transform, stop_workers
from zoo.adaptation.distributed import Replica, full_state, is_sharded, shard_by_depth
from zoo.adaptation.history import EpochRecord
from zoo.adaptation.inputs import distributed_loader, loaders_for_folders, reshuffled, set_epoch
from zoo.adaptation.probe import head_plan, probe_epochs, stage_config
from zoo.adaptation.speed import Compiled, Speed
from zoo.errors import DataError, ZooError
from zoo.io.fileformat import PAUSE_AFTER_EPOCH_ENV, pause_for_tests
from zoo.plans.freeze import apply_plan

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from zoo.adaptation.config import Augment, TrainConfig
    from zoo.adaptation.distributed import DistContext
    from zoo.adaptation.history import AdaptCallback, History
    from zoo.adaptation.inputs import AdaptData
    from zoo.core.specs import InputConfig
    from zoo.plans.plan import Plan
    from zoo.plans.schedule import ScheduleDriver


T = TypeVar("T")
#: On a GPU the running loss and accuracy are read (a sync) every this many batches.
REPORT_EVERY = 20


def make_optimizer(
    name: str, groups: list[dict[str, Any]], *, lr: float, momentum: float
) -> torch.optim.Optimizer:
    """AdamW or SGD over the plan's groups; the fused kernels when the parameters allow
    (several times faster per step on CPU and GPU), else the multi-tensor (foreach) ones."""
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
    return cls(groups, lr=lr, foreach=None, **kwargs)  # torch's choice: foreach on a GPU


# ---------------------------------------------------------------- one model in training


class Trainee:
    """One model in training, as ``config`` says: an optimizer over ``plan``'s groups, the lr
    schedule over all ``config.epochs`` (the first ``warmup_epochs`` of them warming up, a
    fraction counting its steps), and the batches.

    ``train`` and ``val`` are cached tensors (:class:`~zoo.adaptation.cache.CachedFeatures`:
    activations at the boundary ``cut``, or decoded images) or data loaders (``val`` may be
    None). With ``cut`` (the boundary the activations were cached at) the
    model's top above it runs forward instead of the model (sharing its parameters).
    ``one_thread``: train and evaluate on one CPU thread — for a tiny top on cached
    activations, waking a thread pool costs more than the arithmetic. ``callback`` hears each
    epoch start and each batch.

    ``augment`` mixes the batches when it says so (timm's ``Mixup``: soft targets, with
    ``label_smoothing`` as timm applies it, and a soft-target loss). With ``config.ema`` a
    moving average of the weights (timm's ``ModelEmaV3``, its decay warmed up over the first
    steps) follows every optimizer step; it is what is evaluated, and :meth:`finish` puts it
    into the model (what is saved).
    ``probe_epochs``: the first epochs of the run went to LP-FT's probe stage
    (:mod:`zoo.adaptation.probe`), so this trainee's lr schedule spans the
    ``config.epochs - probe_epochs`` epochs after them (its epochs keep the run's numbers).

    How fast it runs is ``config``'s too (:class:`~zoo.adaptation.speed.Speed`): autocast
    precision, memory layout, gradient checkpointing, ``torch.compile`` of the module that
    runs (:class:`~zoo.adaptation.speed.Compiled`), and ``accumulate`` batches per optimizer
    step (the lr schedule and :attr:`steps_per_epoch` count optimizer steps).
    """

    def __init__(
        self,
        model: nn.Module,
        plan: Plan,
        train: CachedFeatures | DataLoader,
        val: CachedFeatures | DataLoader | None,
        config: TrainConfig,
        *,
        ctx: DistContext,
        callback: AdaptCallback,
        num_classes: int,
        cut: Boundary | None = None,
        augment: Augment | None = None,
        one_thread: bool = False,
        probe_epochs: int = 0,
    ) -> None:
        groups = plan.param_groups(model, lr=config.lr, weight_decay=config.weight_decay)
        if not groups:
            raise ZooError(f"nothing trains under {plan.spec_text}: no optimizer to build")
        self.optimizer = make_optimizer(
            config.optimizer, groups, lr=config.lr, momentum=config.momentum
        )
        self.model = model
        self.speed = Speed.of(config, ctx.device)
        self.speed.prepare(model)
        self.module = cut.suffix(model) if cut is not None else model
        self.mixer = _mixer(augment, config.label_smoothing, num_classes)
        self.ema = _ema(model, config.ema_decay)
        self.eval_module = self.module
        if self.ema is not None:
            self.eval_module = cut.suffix(self.ema.module) if cut is not None else self.ema.module
        self.replica = Replica(self.module, ctx)
        self.compiled = (
            Compiled(self.replica, config.compile, fallback=config.compile_fallback)
            if config.compile is not False
            else None
        )
        self.run: Any = self.compiled if self.compiled is not None else self.replica
        self.ctx = ctx
        self.callback = callback
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.soft_loss_fn = _soft_target_loss() if self.mixer is not None else None
        self.batches: Any = (
            train.loader(config.batch_size, seed=config.seed)
            if isinstance(train, CachedFeatures)
            else train
        )
        self.val: Any = (
            val.loader(max(config.batch_size, INFERENCE_BATCH))
            if isinstance(val, CachedFeatures)
            else val
        )
        self.num_classes = num_classes
        self.one_thread = one_thread
        self.epochs = config.epochs
        self.schedule = config.lr_schedule
        self.batches_per_epoch = len(self.batches)
        self.probe_epochs = probe_epochs
        self.accumulate = config.accumulate
        #: optimizer steps per epoch: one per ``accumulate`` batches (and one for the rest)
        self.steps_per_epoch = -(-self.batches_per_epoch // self.accumulate)
        self.total_steps = self.steps_per_epoch * (config.epochs - probe_epochs)
        self.warmup_steps = int(config.warmup_epochs * self.steps_per_epoch)
        self.step = 0

    def lr_factor(self, step: int) -> float:
        """The factor of every group's initial lr at optimizer step ``step`` (0-based)."""
        total, warmup = self.total_steps, self.warmup_steps
        if warmup and step < warmup:
            return (step + 1) / warmup
        if self.schedule == "constant" or total <= warmup:
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    def epoch(self, epoch: int) -> EpochRecord:
        """Train epoch ``epoch`` (1-based), then evaluate on ``val``; summed over ranks."""
        set_epoch(self.batches, epoch)
        with _one_thread_on_cpu(self.ctx.device, self.one_thread):
            loss, accuracy, images, seconds, waited, lr = self._train(epoch)
            val_loss, val_accuracy = self._evaluate()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        return EpochRecord(
            epoch=epoch,
            train_loss=loss,
            train_accuracy=accuracy,
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            seconds=seconds,
            images=images,
            images_per_second=images / seconds if seconds else 0.0,
            loader_seconds=waited,
            lr=lr,
            trainable_params=sum(p.numel() for p in trainable),
            trainable_tensors=len(trainable),
        )

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

    def _train(self, epoch: int) -> tuple[float, float, int, float, float, float]:
        """(mean loss, accuracy, images, seconds, seconds waiting for batches, last lr) of one
        epoch, over all ranks (the waiting: this rank's)."""
        self.module.train()
        n_batches = self.batches_per_epoch
        self.callback.on_epoch_start(epoch, self.epochs, n_batches)
        device = self.ctx.device
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, correct, images
        lr = waited = 0.0
        start = time.perf_counter()
        batches = iter(self.batches)
        for i in itertools.count():
            asked = time.perf_counter()
            batch = next(batches, None)
            waited += time.perf_counter() - asked
            if batch is None:
                break
            self.ctx.check_peers()
            images, targets = self.speed.inputs(batch[0]), batch[1].to(device, non_blocking=True)
            first, group = divmod(i, self.accumulate)
            if group == 0:  # the first batch of an optimizer step
                lr = self._set_lr()
                self.optimizer.zero_grad(set_to_none=True)
            # the batches of this step: accumulate, or what is left of the epoch
            size = min(self.accumulate, n_batches - first * self.accumulate)
            last = group + 1 == size
            check = i == 0 and epoch == 1
            with self._no_sync(not last):
                logits, loss = self._guarded(self._pass, images, targets, size, check)
            if last:
                self.speed.step(self.optimizer)
                self.step += 1
                if self.ema is not None:
                    self.ema.update(self.model, step=self.step)
            with torch.no_grad():
                n = targets.shape[0]
                hits = (logits.argmax(1) == targets).sum()
                sums += torch.stack([loss.detach().double() * n, hits, sums.new_tensor(n)])
            if device.type == "cpu" or i + 1 == n_batches or i % REPORT_EVERY == 0:
                loss_sum, correct, count = sums.tolist()  # a sync on a GPU: not every batch
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
        self.ctx.average_buffers(self.module)
        loss_sum, correct, count = self.ctx.sum(sums.tolist())
        if not count:
            raise DataError("the training data yielded no batches")
        return loss_sum / count, correct / count, int(count), seconds, waited, lr

    def _pass(
        self, images: torch.Tensor, targets: torch.Tensor, batches: int, check: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward of one batch, one of ``batches`` accumulated into a step
        (``check``: the logits' shape first): ``(logits, loss)``."""
        inputs, soft = self._mixed(images, targets)
        with self.speed.autocast():
            logits = self.run(inputs)
            if check:
                self._check_logits(logits)
            loss = (
                self.loss_fn(logits, targets) if soft is None else self.soft_loss_fn(logits, soft)
            )
        self.speed.backward(loss / batches if batches > 1 else loss)
        return logits, loss

    def _guarded(self, work: Callable[..., T], *args: Any) -> T:
        """``work(*args)``; where compiling fails: the refusal, or with the fallback the same
        again, eagerly (the failure came before anything ran)."""
        if self.compiled is None:
            return work(*args)
        with self.compiled.failures():
            return work(*args)
        return work(*args)

    def _no_sync(self, skip: bool) -> contextlib.AbstractContextManager[Any]:
        """DDP's ``no_sync`` for a batch whose gradients are accumulated, not yet reduced."""
        wrapped = self.replica.wrapped
        if skip and wrapped is not self.replica.module and hasattr(wrapped, "no_sync"):
            return wrapped.no_sync()
        return contextlib.nullcontext()

    def _mixed(
        self, images: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The batch to train on and its soft targets (None: not mixed). timm mixes pairs of an
        even batch; the odd image out of an odd batch keeps its own (smoothed) target."""
        if self.mixer is None:
            return images, None
        from timm.data.mixup import mixup_target

        even = images.shape[0] - images.shape[0] % 2
        single = mixup_target(targets[even:], self.num_classes, 1.0, self.mixer.label_smoothing)
        if even == 0:
            return images, single
        mixed, soft = self.mixer(images[:even].clone(), targets[:even])
        return torch.cat([mixed, images[even:]]), torch.cat([soft, single])

    def finish(self) -> None:
        """Put the moving average of the weights into the model (with ``ema``): the model
        evaluated each epoch is the one returned and saved."""
        if self.ema is not None:
            self.model.load_state_dict(self.ema.module.state_dict())

    def _evaluate(self) -> tuple[float | None, float | None]:
        """(mean loss, accuracy) on ``val`` over all ranks (of the weights' moving average
        with ``ema``); (None, None) without one."""
        if self.val is None:
            return None, None
        self.eval_module.eval()
        device = self.ctx.device
        sums = torch.zeros(3, dtype=torch.float64, device=device)
        images = None
        done = 0
        with torch.no_grad():
            for batch in self.val:
                self.ctx.check_peers()
                images, targets = self.speed.inputs(batch[0]), batch[1].to(device)
                with self.speed.autocast():
                    logits = self.eval_module(images).float()
                n = targets.shape[0]
                loss = self.loss_fn(logits, targets)
                hits = (logits.argmax(1) == targets).sum()
                sums += torch.stack([loss.double() * n, hits, sums.new_tensor(n)])
                done += 1
            if is_sharded(self.eval_module):  # every rank joins every sharded forward pass
                self._pad_forwards(done, images)
        loss_sum, correct, count = self.ctx.sum(sums.tolist())
        if not count:
            return None, None
        return loss_sum / count, correct / count

    def _pad_forwards(self, done: int, images: torch.Tensor | None) -> None:
        """Forward passes, not counted, until this rank ran as many as the rank with the most
        validation batches (the shards differ by an image at most)."""
        rounds = int(self.ctx.max(done))
        if done < rounds and images is None:  # no batch of its own: one image of training's
            images = self.speed.inputs(next(iter(self.batches))[0][:1])
        for _ in range(rounds - done):
            with self.speed.autocast():
                self.eval_module(images)


def _mixer(augment: Augment | None, label_smoothing: float, num_classes: int) -> Any:
    """timm's ``Mixup`` for ``augment``'s mixup / cutmix alphas (None when it mixes nothing);
    the label smoothing goes into its soft targets, as in timm's training script."""
    if augment is None or not augment.mixes:
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=augment.mixup,
        cutmix_alpha=augment.cutmix,
        label_smoothing=label_smoothing,
        num_classes=num_classes,
    )


def _soft_target_loss() -> nn.Module:
    from timm.loss import SoftTargetCrossEntropy

    return SoftTargetCrossEntropy()


def _ema(model: nn.Module, decay: float | None) -> Any:
    """timm's ``ModelEmaV3`` of ``model`` (None without ``decay``). Its decay warms up
    (``1 - (1 + step) ** -2/3``, up to ``decay``): a fine-tuning run of a few hundred steps
    averages its own weights instead of staying at the start."""
    if decay is None:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay, use_warmup=True)


@contextlib.contextmanager
def _one_thread_on_cpu(device: torch.device, one: bool) -> Iterator[None]:
    """With ``one`` on a CPU: torch on one thread inside (the previous count restored)."""
    if not one or device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def probe_trainee(
    model: nn.Module,
    plan: Plan,
    boundary: Boundary,
    features: tuple[CachedFeatures, CachedFeatures | None],
    config: TrainConfig,
    *,
    epochs: int,
    ctx: DistContext,
    callback: AdaptCallback,
    num_classes: int,
) -> Trainee:
    """LP-FT's first stage (:mod:`zoo.adaptation.probe`): ``model`` with the head plan of
    ``plan`` applied (the caller applies ``plan`` again after it), on ``features`` cached at
    ``boundary`` (the head's input), with an lr schedule of its own ``epochs`` epochs."""
    probe = head_plan(plan)
    apply_plan(model, probe)
    return Trainee(
        model,
        probe,
        features[0],
        features[1],
        stage_config(config, epochs),
        ctx=ctx,
        callback=callback,
        num_classes=num_classes,
        cut=boundary,
        one_thread=True,
    )


# ---------------------------------------------------------------- zoo.adapt's run


def _head_only(model: nn.Module, planner: ScheduleDriver) -> bool:
    """Only the classifier trains (the rows of the parameter table's ``head`` group: what
    trains decides, not where it sits), and no schedule changes that."""
    heads = {row.name for row in planner.table.rows if row.group == "head"}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return bool(trainable) and trainable <= heads and not planner.is_schedule


def augmentation_of(config: TrainConfig, data: AdaptData, *, default: bool) -> Augment | None:
    """The run's augmentation (:meth:`~zoo.adaptation.config.TrainConfig.augmentation`, with
    ``default`` for ``augment=None``). Data loaders bring their own transform: there it is
    None, and an augmentation asked for is refused (:class:`~zoo.DataError`) rather than
    silently left out."""
    if data.from_folders:
        return config.augmentation(default)
    asked = config.augmentation(False)
    if asked is not None:
        raise DataError(
            "augmentation options (augment=True, hflip, scale, color_jitter, auto_augment, "
            "mixup, cutmix) shape zoo's transform of the images it reads (folders, manifests, "
            "datasets); a DataLoader brings its own: "
            "put the augmentation in its dataset's transform (timm.data.create_transform, "
            "timm.data.Mixup in its collate_fn), or train on an image folder"
        )
    return None


def _cache_decision(
    model: nn.Module,
    planner: ScheduleDriver,
    data: AdaptData,
    *,
    augment: Augment | None,
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
        augmented = augmentation_rule(augment)
        if augmented:
            return f"plain loop: {also}{augmented}"
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
    augment_default: bool | None = None,
) -> list[str]:
    """Train ``model`` as ``config`` says, on images prepared for ``input_config``; returns
    the notes of how it trained (sharding, compiling that failed with the fallback).

    ``augment_default``: what ``augment=None`` means (None: on unless only the head trains;
    the measured ``auto`` passes False, what it measured with).

    ``keeper`` checkpoints each completed epoch, resumes from a checkpoint and stops early
    (:mod:`zoo.adaptation.checkpoint`, :mod:`zoo.adaptation.early_stop`); the caller holds
    it (:meth:`~zoo.adaptation.checkpoint.Checkpointer.holding`) for the whole run.
    """
    keeper = keeper if keeper is not None else Checkpointer(None, {})
    assert planner.plan is not None
    probing = 0 if planner.is_schedule else probe_epochs(planner.plan, config.epochs)
    if probing and config.shard:
        raise ZooError(
            "--shard cannot run LP-FT's probe stage (lp-ft, or probe_start): the head trains "
            "on features cached by the whole model, which a sharded run does not cache; leave "
            "out --shard, or train without a probe stage"
        )
    trainee = _start(
        model,
        data,
        planner,
        history,
        config,
        ctx=ctx,
        input_config=input_config,
        callback=callback,
        augment_default=augment_default,
        probe_epochs=probing,
    )
    try:
        planner.attach(trainee.optimizer, lr=config.lr, weight_decay=config.weight_decay)
        generators = loader_generators(trainee.batches)
        done = keeper.saved_epoch
        if done:
            for epoch in range(2, done + 1):  # the optimizer gets the groups the state is for
                _replan(trainee, planner, epoch)
            done = keeper.restore(model, trainee.optimizer, trainee, history, generators)
        if probing and not done:
            done = _probe_stage(
                model, data, planner.plan, history, config, ctx, input_config, callback
            )
        for epoch in range(done + 1, config.epochs + 1):
            if keeper.early is not None and keeper.early.should_stop:
                history.stopped_early = True
                break
            change = _replan(trainee, planner, epoch)
            if change is not None:
                callback.on_plan_change(epoch, change)
            record = trainee.epoch(epoch)
            _end_epoch(keeper, record, trainee, history, generators)
    finally:  # the workers of the loaders zoo made end with the run, a failed one's too
        theirs = (data.train, data.val)  # a user's own loaders are the user's to end
        ours = [x for x in (trainee.batches, trainee.val) if all(x is not y for y in theirs)]
        stop_workers(*ours)
    history.ddp_wraps = trainee.replica.wraps
    trainee.finish()
    early = keeper.early
    if early is not None:  # the model is the best validation epoch's
        history.early_stop = early.patience
        history.best_epoch = early.best_epoch
        early.restore_best(model)
    notes = []
    if config.shard:
        notes.append(
            f"sharded with FSDP2 over {ctx.world_size} processes, one unit per depth; the "
            "returned model stays sharded (each forward runs on every rank), so the process "
            "group stays open until the caller ends it (torch.distributed.barrier(), then "
            "destroy_process_group(); the zoo command does)"
        )
    compiled = trainee.compiled
    if compiled is not None and compiled.note:
        notes.append(compiled.note)
    return notes


def _start(
    model: nn.Module,
    data: AdaptData,
    planner: ScheduleDriver,
    history: History,
    config: TrainConfig,
    *,
    ctx: DistContext,
    input_config: InputConfig,
    callback: AdaptCallback,
    augment_default: bool | None,
    probe_epochs: int = 0,
) -> Trainee:
    """The run's loaders, the cache when it may stand in for the plain loop, and the
    :class:`Trainee`; the history and ``callback`` hear what was decided."""
    head_only = _head_only(model, planner)
    default = (not head_only) if augment_default is None else augment_default
    augment = augmentation_of(config, data, default=default)
    why_not = _cache_decision(
        model, planner, data, augment=augment, feature_cache=config.feature_cache
    )
    if config.shard:
        if planner.is_schedule:
            raise ZooError(
                f"shard=True (--shard) with the schedule policy {history.policy!r}: a sharded "
                "model keeps the trainable set it was sharded with; pick a policy without a "
                "schedule, or train without --shard"
            )
        why_not = why_not or "plain loop: the model is sharded (shard=True)"
    if config.feature_cache is True and why_not is not None:
        raise ZooError(f"the feature cache cannot be used: {why_not.split(': ', 1)[-1]}")
    history.augment = augment.to_dict() if augment is not None else None
    history.ema = config.ema_decay
    train, val = _loaders(data, input_config, config, ctx, augment=augment, ordered=why_not is None)
    history.train_images = len(train.dataset)
    history.val_images = len(val.dataset) if val is not None else 0
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
            "ema": history.ema,
            "feature_cache": why_not is None,
            "note": why_not or "activations cached at the freeze boundary",
            "input_size": history.input_size,
        }
    )
    cut = None
    source: tuple[Any, Any] = (train, val)
    history.feature_cache_note = why_not or ""
    if why_not is None:
        started = time.perf_counter()
        try:
            boundary, cached = _cache(model, train, val, ctx=ctx, callback=callback, config=config)
        except CacheUnsupported as exc:
            if config.feature_cache is True:
                raise ZooError(f"the feature cache cannot be used: {exc}") from None
            history.feature_cache_note = f"plain loop: {exc}"
            # the images were prepared without augmentation and in order; keep that, shuffle
            batches = reshuffled(train, ctx, config.seed, config.batch_size, persistent=True)
            source = (batches, val)
        else:
            cut = boundary
            source = (cached[0], cached[1] if val is not None else None)
            size = megabytes(sum(c.nbytes for c in cached))
            history.feature_cache_note = (
                f"features cached at the input of {boundary.path!r}"
                if head_only
                else f"activations cached at the input of {boundary.path!r} ({size})"
            )
        history.feature_seconds = time.perf_counter() - started
    history.feature_cache = cut is not None
    assert planner.plan is not None
    if config.shard:  # after the plan, before the optimizer: its parameters are the shards
        shard_by_depth(model, [(row.depth, row.module) for row in planner.table.rows])
    return Trainee(
        model,
        planner.plan,
        *source,
        config,
        ctx=ctx,
        callback=callback,
        num_classes=len(history.classes),
        cut=cut,
        augment=augment,
        # a deeper top keeps the plain loop's thread count (and its rounding: bit-identical)
        one_thread=cut is not None and head_only,
        probe_epochs=probe_epochs,
    )


def _probe_stage(
    model: nn.Module,
    data: AdaptData,
    plan: Plan,
    history: History,
    config: TrainConfig,
    ctx: DistContext,
    input_config: InputConfig,
    callback: AdaptCallback,
) -> int:
    """LP-FT's first stage of a run (:mod:`zoo.adaptation.probe`): the head alone on
    features cached at its input (un-augmented images), then ``plan`` applied again; its
    epochs go into ``history``. Returns how many it trained."""
    epochs = probe_epochs(plan, config.epochs)
    train, val = _loaders(data, input_config, config, ctx, augment=None, ordered=True)
    apply_plan(model, head_plan(plan))
    try:
        boundary, cached = _cache(model, train, val, ctx=ctx, callback=callback, config=config)
    except CacheUnsupported as exc:
        raise ZooError(
            f"{plan.spec_text} fits the head first on cached features, but they cannot be "
            f"cached for this model: {exc}; train without probe (another policy, or "
            "probe_start=0)"
        ) from None
    features = (cached[0], cached[1] if val is not None else None)
    trainee = probe_trainee(
        model,
        plan,
        boundary,
        features,
        config,
        epochs=epochs,
        ctx=ctx,
        callback=callback,
        num_classes=len(history.classes),
    )
    for epoch in range(1, epochs + 1):
        record = trainee.epoch(epoch)
        history.epochs.append(record)
        callback.on_epoch_end(record)
    apply_plan(model, plan)
    return epochs


def _loaders(
    data: AdaptData,
    input_config: InputConfig,
    config: TrainConfig,
    ctx: DistContext,
    *,
    augment: Augment | None,
    ordered: bool,
) -> tuple[DataLoader, DataLoader | None]:
    """Train and val loaders, sharded over the ranks; ``ordered``: the training images in
    order, in large batches (for the cache), else shuffled in training batches."""
    if data.from_folders:
        return loaders_for_folders(
            data,
            input_config,
            augment=augment,
            batch_size=config.batch_size,
            num_workers=config.num_workers,
            seed=config.seed,
            ctx=ctx,
            shuffle_train=not ordered,
        )
    train, val = data.train, data.val
    if ctx.enabled:
        train = distributed_loader(
            train, ctx, shuffle=not ordered, seed=config.seed, evaluation=False
        )
        if val is not None:
            val = distributed_loader(val, ctx, shuffle=False, seed=config.seed, evaluation=True)
    return train, val


def _cache(
    model: nn.Module,
    train: DataLoader,
    val: DataLoader | None,
    *,
    ctx: DistContext,
    callback: AdaptCallback,
    config: TrainConfig,
) -> tuple[Boundary, list[CachedFeatures]]:
    """Find the freeze boundary on the first training batch and cache the activations there
    for train (and val); :class:`CacheUnsupported`, on every rank, says why not."""
    batches = iter(train)
    first = next(batches, None)

    def find() -> Boundary:
        if first is None:
            raise CacheUnsupported("the data loader yielded no batches")
        if not (isinstance(first, (list, tuple)) and len(first) >= 2):
            raise CacheUnsupported("the data loader does not yield (images, labels) batches")
        # two images show the structure (the checks are per image)
        return find_boundary(model, first[0][:2].to(ctx.device))

    boundary = on_every_rank(ctx, find)
    splits = [("train", train)] + ([("val", val)] if val is not None else [])
    speed = Speed.of(config, ctx.device)
    speed.prepare(model)
    with speed.autocast():  # the frozen prefix runs in the training precision
        cached = extract(
            model,
            [boundary.path],
            splits,
            ctx=ctx,
            callback=callback,
            batch_size=config.batch_size,
            train_batches=itertools.chain([first], batches),  # the first batch is kept
            precision=speed.dtype,
        )
    return boundary, cached[boundary.path]


def _replan(trainee: Trainee, planner: ScheduleDriver, epoch: int) -> Plan | None:
    """A schedule policy's plan for ``epoch`` (new trainable parameters join the optimizer,
    DDP wraps again): the new plan, or None when nothing changed."""
    if not planner.is_schedule or epoch < 2:
        return None
    change = planner.step(epoch - 1)
    if not change.changed:
        return None
    trainee.replica.sync()
    return change.plan


def _end_epoch(
    keeper: Checkpointer,
    record: EpochRecord,
    trainee: Trainee,
    history: History,
    generators: list[torch.Generator],
) -> None:
    """Record the epoch: early-stopping counters, then the checkpoint (main process), then
    the callback — so an interrupt in the callback still keeps this epoch."""
    history.epochs.append(record)
    early = keeper.early
    model = trainee.model
    new_best = early.update(record.epoch, record.val_loss, model) if early is not None else False
    full = None
    if keeper.folder is not None and is_sharded(model):  # gathered on every rank, for rank 0
        full = full_state(model, trainee.optimizer)
    if trainee.ctx.is_main:
        keeper.save(
            record.epoch,
            trainee.epochs,
            model,
            trainee.optimizer,
            trainee,
            history,
            generators,
            new_best=new_best,
            full=full,
        )
    pause_for_tests(PAUSE_AFTER_EPOCH_ENV, f"after epoch {record.epoch}")
    trainee.callback.on_epoch_end(record)
