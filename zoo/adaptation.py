"""Adapt a backbone to your images: ``zoo.adapt`` — the main job zoo exists for.

::

    model, history = zoo.adapt("resnet18", "data/train", "data/val",
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

import contextlib
import json
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from zoo.errors import DataError, UnknownNameError, ZooError

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

    from zoo.distributed import DistContext, Replica
    from zoo.plans import Plan
    from zoo.schedule import ScheduleDriver
    from zoo.specs import InputConfig, PolicySpec

#: Arguments zoo offers to any policy that declares them (``auto`` declares the first two).
CONTEXT_ARGS = ("samples_per_class", "similarity", "num_classes", "epochs")
OPTIMIZERS = ("adamw", "sgd")
LR_SCHEDULES = ("cosine", "constant")


# ---------------------------------------------------------------- history


@dataclass
class EpochRecord:
    """What one epoch did. Losses are means over images; accuracies are fractions (0..1)."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    seconds: float
    images: int
    images_per_second: float
    lr: float
    trainable_params: int
    trainable_tensors: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class History:
    """The record of one :func:`adapt` run: one :class:`EpochRecord` per epoch, and context.

    ``feature_cache`` says whether the head was trained on cached features
    (``feature_cache_note`` says where the cut was, or why the plain loop ran instead);
    ``feature_seconds`` is the time spent computing them. ``skipped`` lists images left out
    as unreadable. Iterating a history yields its epochs.
    """

    epochs: list[EpochRecord] = field(default_factory=list)
    backbone: str | None = None
    start: str = ""
    policy: str = ""
    policy_args: dict[str, Any] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    train_images: int = 0
    val_images: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    input_size: list[int] = field(default_factory=list)
    augment: bool = False
    feature_cache: bool = False
    feature_cache_note: str = ""
    feature_seconds: float = 0.0
    total_seconds: float = 0.0
    trainable_params: int = 0
    total_params: int = 0
    optimizer: str = "adamw"
    lr: float = 0.0
    batch_size: int = 0
    device: str = "cpu"
    world_size: int = 1
    ddp_wraps: int = 0
    name: str | None = None
    path: str | None = None
    notes: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[EpochRecord]:
        return iter(self.epochs)

    def __len__(self) -> int:
        return len(self.epochs)

    def __getitem__(self, index: int) -> EpochRecord:
        return self.epochs[index]

    @property
    def loss(self) -> list[float]:
        """Training loss per epoch."""
        return [e.train_loss for e in self.epochs]

    @property
    def accuracy(self) -> list[float | None]:
        """Validation accuracy per epoch (training accuracy when there is no validation set)."""
        return [e.val_accuracy if e.val_accuracy is not None else e.train_accuracy
                for e in self.epochs]

    @property
    def final_accuracy(self) -> float | None:
        return self.accuracy[-1] if self.epochs else None

    @property
    def best_accuracy(self) -> float | None:
        values = [a for a in self.accuracy if a is not None]
        return max(values) if values else None

    @property
    def trainable_fraction(self) -> float:
        return self.trainable_params / self.total_params if self.total_params else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["epochs"] = [e.to_dict() for e in self.epochs]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> History:
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        values["epochs"] = [EpochRecord(**e) for e in data.get("epochs", [])]
        return cls(**values)

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)


class AdaptResult(NamedTuple):
    """``(model, history)``; unpacks like a tuple."""

    model: nn.Module
    history: History


# ---------------------------------------------------------------- progress callbacks


class AdaptCallback:
    """Hooks :func:`adapt` calls on rank 0 as it goes; subclass and override what you need.

    The CLI's progress bars (``zoo.cli.render_adapt``) are one implementation.
    """

    def on_start(self, info: Mapping[str, Any]) -> None:
        """Before training: backbone, policy, classes, image counts, device, cache decision."""

    def on_features_start(self, split: str, batches: int) -> None:
        """Computing cached features of ``split`` ("train" or "val") begins."""

    def on_features_batch(self, split: str, done: int, batches: int) -> None:
        """One batch of features computed."""

    def on_epoch_start(self, epoch: int, epochs: int, batches: int) -> None:
        """Epoch ``epoch`` (1-based) of ``epochs`` starts, with ``batches`` training batches."""

    def on_batch_end(self, epoch: int, batch: int, batches: int, loss: float,
                     accuracy: float, images_per_second: float) -> None:
        """A training batch finished; loss and accuracy are running means of the epoch."""

    def on_epoch_end(self, record: EpochRecord) -> None:
        """An epoch finished (after validation)."""

    def on_plan_change(self, epoch: int, plan: Plan) -> None:
        """A schedule policy changed what trains at the start of ``epoch``."""

    def on_end(self, history: History) -> None:
        """Training (and saving) finished."""


# ---------------------------------------------------------------- where the model comes from


def _store_path(name: str) -> Path | None:
    """The file of store entry ``name`` when it exists (None otherwise, or for invalid names)."""
    from zoo import store

    try:
        path = store.model_file(name)
    except ZooError:
        return None
    return path if path.is_file() else None


def _check_target(name: str | os.PathLike[str] | None, overwrite: bool) -> None:
    """Fail before training when ``name`` is invalid or taken (and ``overwrite`` is False)."""
    if name is None:
        return
    from zoo.persistence import _check_free, resolve_target

    _check_free(resolve_target(name), overwrite)


def _resolve_weights(weights: str | os.PathLike[str] | None) -> Path | None:
    if weights is None:
        return None
    path = Path(weights).expanduser()
    if path.is_file():
        return path
    stored = _store_path(str(weights)) if isinstance(weights, str) else None
    if stored is not None:
        return stored
    raise ZooError(
        f"weights {str(weights)!r} are neither a file nor a model in the store "
        "(see `zoo models`)"
    )


def _check_start(backbone_or_model: Any) -> str:
    """Check (cheaply, before data is read) that a starting point resolves; describe it."""
    from torch import nn

    if isinstance(backbone_or_model, nn.Module):
        return f"module {type(backbone_or_model).__name__}"
    if not isinstance(backbone_or_model, (str, os.PathLike)):
        raise ZooError(
            "adapt() starts from a backbone name, a saved model's name, a .safetensors file or "
            f"an nn.Module, not {type(backbone_or_model).__name__}"
        )
    from zoo.store import is_path_target

    text = str(backbone_or_model)
    if is_path_target(backbone_or_model):
        if Path(text).expanduser().is_file():
            return f"file {text}"
        raise ZooError(f"model file {text!r} does not exist")
    if _store_path(text) is not None:
        return f"saved model {text!r}"
    from zoo.api import get_catalog

    try:
        spec, _ = get_catalog().backbone(text)
    except UnknownNameError as exc:
        raise UnknownNameError(
            "backbone or saved model", text,
            [*get_catalog().backbones.by_qualified, *_saved_names()],
        ) from exc
    return f"backbone {spec.qualified_name}"


def _saved_names() -> list[str]:
    try:
        from zoo.store import list_saved

        return [getattr(e, "name", str(e)) for e in list_saved()]
    except Exception:  # listing is only for suggestions
        return []


def _build_model(
    backbone_or_model: Any, classes: Sequence[str], *, pretrained: bool | str,
    weights: Path | None, kwargs: Mapping[str, Any],
) -> nn.Module:
    """The model to adapt, with a classifier for ``classes``."""
    from torch import nn

    import zoo
    from zoo.store import is_path_target

    if isinstance(backbone_or_model, nn.Module):
        model = backbone_or_model
        _ensure_build_info(model)
        _fit_head(model, len(classes))
        return model
    text = str(backbone_or_model)
    if is_path_target(backbone_or_model) or _store_path(text) is not None:
        from zoo.persistence import load

        saved = load(backbone_or_model, trainable=True)
        old = getattr(saved, "zoo_classes", None)
        if (old is not None and list(old) == list(classes)) or (
            old is None and _num_outputs(saved) == len(classes)
        ):
            return saved
        return _with_new_head(saved, len(classes))
    return zoo.create(text, num_classes=len(classes), pretrained=pretrained, weights=weights,
                      **dict(kwargs))


def _with_new_head(saved: nn.Module, num_classes: int) -> nn.Module:
    """A copy of a loaded model with a freshly initialised classifier of ``num_classes``.

    Everything but the classifier (found with ``get_classifier`` or as the last linear layer)
    is copied; a saved model trained for other classes keeps its features, not its head.
    """
    import zoo
    from zoo.errors import WeightsMismatchError
    from zoo.table_builder import classifier_param_names

    build = dict(saved.zoo_build)
    name = build["backbone"] + (f".{build['tag']}" if build.get("tag") else "")
    fresh = zoo.create(name, num_classes=num_classes, **dict(build.get("kwargs") or {}))
    state = saved.state_dict()
    own = fresh.state_dict()
    head = set(classifier_param_names(fresh))
    skip = {k for k in own if k in head or (k in state and state[k].shape != own[k].shape)}
    missing = [k for k in own if k not in state and k not in skip]
    if missing:
        raise WeightsMismatchError(
            f"the saved model does not fit a fresh {name}: missing {', '.join(missing[:5])}"
        )
    fresh.load_state_dict({k: v for k, v in state.items() if k in own and k not in skip},
                          strict=False)
    fresh.zoo_input_config = saved.zoo_input_config
    return fresh


def _num_outputs(model: nn.Module) -> int | None:
    build = getattr(model, "zoo_build", None) or {}
    if build.get("num_classes"):
        return int(build["num_classes"])
    value = getattr(model, "num_classes", None)
    return int(value) if isinstance(value, int) else None


def _ensure_build_info(model: nn.Module) -> None:
    """Give a plain timm model ``zoo_build`` (so it can be saved) when timm says what it is."""
    if getattr(model, "zoo_build", None):
        return
    cfg = getattr(model, "pretrained_cfg", None) or {}
    arch = cfg.get("architecture") if isinstance(cfg, Mapping) else None
    if not arch:
        return
    from zoo.api import attach_build_info, get_catalog

    try:
        spec, _ = get_catalog().backbone(f"timm:{arch}")
    except ZooError:
        return
    config = getattr(model, "zoo_input_config", None)
    attach_build_info(model, spec, tag=None, num_classes=getattr(model, "num_classes", None),
                      kwargs={})
    if config is not None:
        model.zoo_input_config = config
    else:
        from zoo.data import input_config_of

        model.zoo_input_config = input_config_of(_without_zoo_config(model))


def _without_zoo_config(model: nn.Module) -> nn.Module:
    if hasattr(model, "zoo_input_config"):
        del model.zoo_input_config
    return model


def _fit_head(model: nn.Module, num_classes: int) -> None:
    current = _num_outputs(model)
    if current == num_classes:
        return
    reset = getattr(model, "reset_classifier", None)
    if callable(reset):
        reset(num_classes)
        build = getattr(model, "zoo_build", None)
        if isinstance(build, dict):
            build["num_classes"] = num_classes
    # otherwise checked on the first batch: the logits must have num_classes columns


# ---------------------------------------------------------------- data


@dataclass
class _Data:
    classes: list[str]
    train: Any  # ImageFolder or DataLoader
    val: Any
    skipped: list[dict[str, str]]
    samples_per_class: int | None

    @property
    def from_folders(self) -> bool:
        from zoo.data import ImageFolder

        return isinstance(self.train, ImageFolder)


def _is_loader(obj: Any) -> bool:
    from torch.utils.data import DataLoader

    return isinstance(obj, DataLoader)


def _prepare_data(train: Any, val: Any, *, classes: Sequence[str] | None,
                  val_split: float | None, seed: int, on_corrupt: str) -> _Data:
    from zoo.data import class_counts_of, scan_image_folder, split_folder

    if _is_loader(train):
        if val is not None and not _is_loader(val):
            raise DataError("train is a DataLoader, so val must be a DataLoader too")
        if val_split:
            raise DataError("val_split only works with an image folder; pass val=DataLoader")
        names = list(classes) if classes is not None else getattr(train.dataset, "classes", None)
        if not names:
            raise DataError(
                "cannot tell the class names of this DataLoader: its dataset has no .classes; "
                "pass classes=[...]"
            )
        counts = class_counts_of(train.dataset, len(names))
        spc = round(sum(counts) / max(1, sum(1 for c in counts if c))) if counts else None
        return _Data([str(n) for n in names], train, val, [], spc)
    if not isinstance(train, (str, os.PathLike)):
        raise DataError(
            f"train must be an image folder path or a DataLoader, not {type(train).__name__}"
        )
    folder = scan_image_folder(train, classes=classes, on_corrupt=on_corrupt)
    skipped = [s.to_dict() for s in folder.skipped]
    val_folder = None
    if val is not None:
        if val_split:
            raise DataError("give either a validation folder or val_split, not both")
        if not isinstance(val, (str, os.PathLike)):
            raise DataError("train is an image folder, so val must be an image folder too")
        val_folder = scan_image_folder(val, classes=folder.classes, on_corrupt=on_corrupt)
        skipped += [s.to_dict() for s in val_folder.skipped]
    elif val_split:
        folder, val_folder = split_folder(folder, float(val_split), seed=seed)
    return _Data(list(folder.classes), folder, val_folder, skipped, folder.samples_per_class)


def _loaders_for_folders(data: _Data, config: InputConfig, *, augment: bool | Mapping[str, Any],
                         batch_size: int, num_workers: int, seed: int, ctx: DistContext,
                         shuffle_train: bool) -> tuple[DataLoader, DataLoader | None]:
    from torch.utils.data.distributed import DistributedSampler

    from zoo.data import ImageDataset, LoaderSpec, build_transform, make_loader
    from zoo.distributed import ShardSampler
    from zoo.feature_cache import INFERENCE_BATCH

    spec = LoaderSpec(batch_size=batch_size, num_workers=num_workers, seed=seed)
    # evaluation, and a training pass that only computes features, use larger batches
    big = LoaderSpec(batch_size=max(batch_size, INFERENCE_BATCH), num_workers=num_workers,
                     seed=seed)
    train_ds = ImageDataset.from_folder(data.train, build_transform(config, train=True,
                                                                    augment=augment))
    sampler = None
    if ctx.enabled:
        sampler = DistributedSampler(train_ds, num_replicas=ctx.world_size, rank=ctx.rank,
                                     shuffle=shuffle_train, seed=seed)
    train_loader = make_loader(train_ds, spec if shuffle_train else big, shuffle=shuffle_train,
                               sampler=sampler)
    val_loader = None
    if data.val is not None and len(data.val):
        val_ds = ImageDataset.from_folder(data.val, build_transform(config, train=False))
        val_sampler = ShardSampler(len(val_ds), ctx.rank, ctx.world_size) if ctx.enabled else None
        val_loader = make_loader(val_ds, big, shuffle=False, sampler=val_sampler)
    return train_loader, val_loader


def _distributed_loader(loader: DataLoader, ctx: DistContext, *, shuffle: bool, seed: int,
                        evaluation: bool) -> DataLoader:
    """A user's loader rebuilt with a sampler that shards its dataset over the ranks."""
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    from zoo.distributed import ShardSampler

    if evaluation:
        sampler: Any = ShardSampler(len(loader.dataset), ctx.rank, ctx.world_size)
    else:
        sampler = DistributedSampler(loader.dataset, num_replicas=ctx.world_size, rank=ctx.rank,
                                     shuffle=shuffle, seed=seed)
    return DataLoader(loader.dataset, batch_size=loader.batch_size or 1, sampler=sampler,
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                      pin_memory=loader.pin_memory, drop_last=loader.drop_last and not evaluation)


def _set_epoch(loader: Any, epoch: int) -> None:
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


# ---------------------------------------------------------------- plans and schedules


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


def _make_optimizer(name: str, groups: list[dict[str, Any]], *, lr: float, momentum: float
                    ) -> torch.optim.Optimizer:
    """AdamW or SGD over the plan's groups; the fused kernels when the parameters allow
    (several times faster per step on CPU and GPU)."""
    import torch

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


class _Loop:
    """Runs epochs of training and evaluation for one ``forward`` (model or cached head)."""

    def __init__(self, *, ctx: DistContext, optimizer: torch.optim.Optimizer, loss_fn: Any,
                 callback: AdaptCallback, schedule: str, total_steps: int, warmup_steps: int,
                 num_classes: int) -> None:
        self.ctx = ctx
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.callback = callback
        self.schedule = schedule
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.num_classes = num_classes
        self.step = 0

    def _set_lr(self) -> float:
        factor = _lr_factor(self.schedule, self.step, self.total_steps, self.warmup_steps)
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

    def train_epoch(self, epoch: int, epochs: int, forward: Any, modules: Sequence[nn.Module],
                    batches: Iterable[Any], n_batches: int
                    ) -> tuple[float, float, int, float, float]:
        """One epoch; returns (mean loss, accuracy, images, seconds, lr) summed over ranks."""
        import torch

        for module in modules:
            module.train()
        self.callback.on_epoch_start(epoch, epochs, n_batches)
        device = self.ctx.device
        loss_sum = correct = count = 0.0
        lr = 0.0
        start = time.perf_counter()
        for i, batch in enumerate(batches):
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
            self.callback.on_batch_end(epoch, i + 1, n_batches, loss_sum / count, correct / count,
                                       count * self.ctx.world_size / elapsed if elapsed else 0.0)
        seconds = time.perf_counter() - start
        for module in modules:
            self.ctx.average_buffers(module)
        loss_sum, correct, count = self.ctx.sum([loss_sum, correct, count])
        if not count:
            raise DataError("the training data yielded no batches")
        return loss_sum / count, correct / count, int(count), seconds, lr

    def evaluate(self, forward: Any, modules: Sequence[nn.Module], batches: Iterable[Any]
                 ) -> tuple[float | None, float | None]:
        import torch

        for module in modules:
            module.eval()
        device = self.ctx.device
        loss_sum = correct = count = 0.0
        with torch.no_grad():
            for batch in batches:
                images, targets = batch[0].to(device, non_blocking=True), batch[1].to(device)
                logits = forward(images)
                loss_sum += float(self.loss_fn(logits, targets)) * targets.shape[0]
                correct += float((logits.argmax(1) == targets).sum())
                count += targets.shape[0]
        loss_sum, correct, count = self.ctx.sum([loss_sum, correct, count])
        if not count:
            return None, None
        return loss_sum / count, correct / count


# ---------------------------------------------------------------- adapt


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
    _check_target(name, overwrite)
    start_desc = _check_start(backbone_or_model)
    if (weights is not None or pretrained) and not start_desc.startswith("backbone"):
        raise ZooError(
            f"pretrained= and weights= apply when starting from a backbone name; this run starts "
            f"from the {start_desc}, whose weights are used as they are"
        )
    from zoo.plans import resolve_policy

    resolve_policy(policy)  # an unknown policy fails before any data is read
    weights_path = _resolve_weights(weights)
    data = _prepare_data(train, val, classes=classes, val_split=val_split, seed=seed,
                         on_corrupt=on_corrupt)
    ctx = setup(distributed, device)
    callback = callback if (callback is not None and ctx.is_main) else AdaptCallback()
    try:
        torch.manual_seed(seed)
        model = _build_model(backbone_or_model, data.classes, pretrained=pretrained,
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
        _train(model, data, planner, history, ctx=ctx, config=config, callback=callback,
               epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size,
               optimizer=optimizer, momentum=momentum, lr_schedule=lr_schedule,
               warmup_epochs=warmup_epochs, label_smoothing=label_smoothing, augment=augment,
               feature_cache=feature_cache, num_workers=num_workers, seed=seed)
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


def _cache_decision(model: nn.Module, planner: ScheduleDriver, data: _Data, *, augment: Any,
                    feature_cache: bool | str) -> tuple[str | None, bool | Mapping[str, Any], str]:
    """(module path to cut at or None, augment setting, note explaining the decision)."""
    from zoo.data import dataset_transform, is_random_transform
    from zoo.feature_cache import trained_module_path

    path = trained_module_path(model)
    head_only = path is not None and not planner.is_schedule
    if augment is None:
        augment = not head_only
    if not head_only:
        why = ("the schedule changes what trains" if planner.is_schedule else
               "the plan trains more than one head module")
        return None, augment, f"plain loop: {why}"
    if feature_cache is False:
        return None, augment, "plain loop: feature cache turned off"
    if data.from_folders:
        if augment:
            return None, augment, "plain loop: training images are augmented"
    else:
        known, transform = dataset_transform(data.train.dataset)
        if not known and feature_cache != True:  # noqa: E712 - "auto" vs True
            return None, augment, "plain loop: cannot tell whether the loader's transform is random"
        if known and is_random_transform(transform):
            return None, augment, "plain loop: the loader's transform is random"
    return path, augment, f"features cached at the input of {path!r}"


def _train(model: nn.Module, data: _Data, planner: ScheduleDriver, history: History, *,
           ctx: DistContext, config: InputConfig, callback: AdaptCallback, epochs: int,
           lr: float, weight_decay: float, batch_size: int, optimizer: str, momentum: float,
           lr_schedule: str, warmup_epochs: float, label_smoothing: float, augment: Any,
           feature_cache: bool | str, num_workers: int, seed: int) -> None:
    import torch


    cut, augment, note = _cache_decision(model, planner, data, augment=augment,
                                         feature_cache=feature_cache)
    if feature_cache is True and cut is None:
        raise ZooError(f"the feature cache cannot be used: {note.split(': ', 1)[-1]}")
    history.augment = bool(augment)
    if data.from_folders:
        train_loader, val_loader = _loaders_for_folders(
            data, config, augment=augment, batch_size=batch_size, num_workers=num_workers,
            seed=seed, ctx=ctx, shuffle_train=cut is None)
    else:
        train_loader, val_loader = data.train, data.val
        if ctx.enabled:
            train_loader = _distributed_loader(train_loader, ctx, shuffle=cut is None, seed=seed,
                                               evaluation=False)
            if val_loader is not None:
                val_loader = _distributed_loader(val_loader, ctx, shuffle=False, seed=seed,
                                                 evaluation=True)
    history.train_images = len(train_loader.dataset)
    history.val_images = len(val_loader.dataset) if val_loader is not None else 0
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    callback.on_start({
        "start": history.start, "backbone": history.backbone, "policy": history.policy,
        "classes": history.classes, "train_images": history.train_images,
        "val_images": history.val_images, "skipped": len(history.skipped),
        "device": history.device, "world_size": ctx.world_size, "epochs": epochs,
        "augment": history.augment, "feature_cache": cut is not None, "note": note,
        "input_size": history.input_size,
    })
    cached = None
    if cut is not None:
        cached, note = _extract(model, cut, train_loader, val_loader, ctx=ctx, callback=callback,
                                history=history, note=note)
        if cached is None:
            if feature_cache is True:
                raise ZooError(f"the feature cache cannot be used: {note.split(': ', 1)[-1]}")
            # the images were prepared without augmentation and in order; keep that, shuffle
            train_loader = _reshuffled(train_loader, ctx, seed, batch_size)
    history.feature_cache = cached is not None
    history.feature_cache_note = note
    assert planner.plan is not None
    groups = planner.plan.param_groups(model, lr=lr, weight_decay=weight_decay)
    if not groups:
        raise ZooError(f"nothing trains under {planner.plan.spec_text}: no optimizer to build")
    opt = _make_optimizer(optimizer, groups, lr=lr, momentum=momentum)
    planner.attach(opt, lr=lr, weight_decay=weight_decay)
    if cached is not None:
        _train_cached(model, cut, cached, planner, history, ctx=ctx, opt=opt, loss_fn=loss_fn,
                      callback=callback, epochs=epochs, batch_size=batch_size,
                      lr_schedule=lr_schedule, warmup_epochs=warmup_epochs, seed=seed)
    else:
        _train_plain(model, train_loader, val_loader, planner, history, ctx=ctx, opt=opt,
                     loss_fn=loss_fn, callback=callback, epochs=epochs, lr=lr,
                     weight_decay=weight_decay, lr_schedule=lr_schedule,
                     warmup_epochs=warmup_epochs)


def _reshuffled(loader: DataLoader, ctx: DistContext, seed: int, batch_size: int
                ) -> DataLoader:
    """The training loader again, shuffled, when the feature cache turned out unusable."""
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    from zoo.data import LoaderSpec, make_loader

    if isinstance(loader.sampler, DistributedSampler):
        sampler = DistributedSampler(loader.dataset, num_replicas=ctx.world_size, rank=ctx.rank,
                                     shuffle=True, seed=seed)
        return DataLoader(loader.dataset, batch_size=batch_size, sampler=sampler,
                          num_workers=loader.num_workers, collate_fn=loader.collate_fn)
    spec = LoaderSpec(batch_size=batch_size, num_workers=loader.num_workers,
                      seed=seed, extra={"collate_fn": loader.collate_fn})
    return make_loader(loader.dataset, spec, shuffle=True)


def _extract(model: nn.Module, cut: str, train_loader: DataLoader, val_loader: Any, *,
             ctx: DistContext, callback: AdaptCallback, history: History, note: str
             ) -> tuple[Any, str]:
    """Compute cached features for train and val; (None, reason) when the cut is not exact."""
    from zoo.feature_cache import CacheUnsupported, extract_features

    start = time.perf_counter()
    result: dict[str, Any] = {}
    failure = None
    for split, loader in (("train", train_loader), ("val", val_loader)):
        if loader is None:
            continue
        total = len(loader)
        callback.on_features_start(split, total)
        try:
            result[split] = extract_features(
                model, cut, loader, device=ctx.device, total=total,
                progress=lambda done, n, s=split: callback.on_features_batch(s, done, n or 0))
        except CacheUnsupported as exc:
            failure = str(exc)
        if ctx.any(failure is not None):
            failure = failure or "another rank could not use the feature cache"
            break
    history.feature_seconds = time.perf_counter() - start
    if failure is not None:
        return None, f"plain loop: {failure}"
    return result, note


def _epoch_record(epoch: int, train: tuple[float, float, int, float, float],
                  val: tuple[float | None, float | None], model: nn.Module) -> EpochRecord:
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


def _train_cached(model: nn.Module, cut: str, cached: Mapping[str, Any], planner: ScheduleDriver,
                  history: History, *, ctx: DistContext, opt: torch.optim.Optimizer, loss_fn: Any,
                  callback: AdaptCallback, epochs: int, batch_size: int, lr_schedule: str,
                  warmup_epochs: float, seed: int) -> None:
    from zoo.distributed import Replica

    head = model.get_submodule(cut)
    replica = Replica(head, ctx)
    train, val = cached["train"], cached.get("val")
    n_batches = train.num_batches(batch_size)
    loop = _Loop(ctx=ctx, optimizer=opt, loss_fn=loss_fn, callback=callback,
                 schedule=lr_schedule, total_steps=n_batches * epochs,
                 warmup_steps=int(warmup_epochs * n_batches), num_classes=len(history.classes))
    batches = train.loader(batch_size, seed=seed)
    with _one_thread_on_cpu(ctx.device):
        _cached_epochs(model, head, replica, loop, batches, n_batches, val, history,
                       callback=callback, epochs=epochs, batch_size=batch_size)
    history.ddp_wraps = replica.wraps


@contextlib.contextmanager
def _one_thread_on_cpu(device: torch.device) -> Iterator[None]:
    """Run tiny head-only steps on one CPU thread: for a linear layer on cached features,
    waking a thread pool costs more than the arithmetic (several times slower on a busy
    machine). The previous thread count is restored."""
    import torch

    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _cached_epochs(model: nn.Module, head: nn.Module, replica: Replica, loop: _Loop,
                   batches: Any, n_batches: int, val: Any, history: History, *,
                   callback: AdaptCallback, epochs: int, batch_size: int) -> None:
    for epoch in range(1, epochs + 1):
        result = loop.train_epoch(epoch, epochs, replica, [head], batches, n_batches)
        scores = (loop.evaluate(head, [head], val.batches(batch_size))
                  if val is not None else (None, None))
        record = _epoch_record(epoch, result, scores, model)
        history.epochs.append(record)
        callback.on_epoch_end(record)


def _train_plain(model: nn.Module, train_loader: DataLoader, val_loader: Any,
                 planner: ScheduleDriver, history: History, *, ctx: DistContext,
                 opt: torch.optim.Optimizer, loss_fn: Any,
                 callback: AdaptCallback, epochs: int, lr: float, weight_decay: float,
                 lr_schedule: str, warmup_epochs: float) -> None:
    from zoo.distributed import Replica

    replica: Replica = Replica(model, ctx)
    n_batches = len(train_loader)
    loop = _Loop(ctx=ctx, optimizer=opt, loss_fn=loss_fn, callback=callback,
                 schedule=lr_schedule, total_steps=n_batches * epochs,
                 warmup_steps=int(warmup_epochs * n_batches), num_classes=len(history.classes))
    for epoch in range(1, epochs + 1):
        if planner.is_schedule and epoch > 1:
            change = planner.step(epoch - 1)  # adds newly trainable parameters to opt
            if change.changed:
                replica.sync()
                callback.on_plan_change(epoch, change.plan)
        _set_epoch(train_loader, epoch)
        result = loop.train_epoch(epoch, epochs, replica, [model], train_loader, n_batches)
        scores = (loop.evaluate(model, [model], val_loader) if val_loader is not None
                  else (None, None))
        record = _epoch_record(epoch, result, scores, model)
        history.epochs.append(record)
        callback.on_epoch_end(record)
    history.ddp_wraps = replica.wraps


# ---------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class Evaluation:
    """Accuracy and mean loss of a model on labelled images."""

    accuracy: float
    loss: float
    images: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(model: nn.Module, data: str | os.PathLike[str] | DataLoader, *,
             batch_size: int = 64, device: str | None = None) -> Evaluation:
    """Accuracy of ``model`` on an image folder (its class folders must be among
    ``model.zoo_classes``) or a data loader, with the evaluation transform of the model's
    input config."""
    import torch

    from zoo.data import (
        ImageDataset,
        LoaderSpec,
        build_transform,
        input_config_of,
        make_loader,
        scan_image_folder,
    )
    from zoo.distributed import resolve_device

    if _is_loader(data):
        loader = data
    else:
        classes = getattr(model, "zoo_classes", None)
        folder = scan_image_folder(data, classes=classes)
        dataset = ImageDataset.from_folder(folder, build_transform(input_config_of(model)))
        loader = make_loader(dataset, LoaderSpec(batch_size=batch_size), shuffle=False)
    dev = resolve_device(device) if device is not None else next(model.parameters()).device
    model.eval()
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")
    loss = correct = count = 0.0
    with torch.no_grad():
        for images, targets in loader:
            logits = model(images.to(dev))
            targets = targets.to(dev)
            loss += float(loss_fn(logits, targets))
            correct += float((logits.argmax(1) == targets).sum())
            count += targets.shape[0]
    if not count:
        raise DataError("no images to evaluate on")
    return Evaluation(correct / count, loss / count, int(count))
