"""What an adaptation run records: epochs, the history, the result and progress hooks.

:func:`zoo.adapt` returns an :class:`AdaptResult` — the model and its :class:`History`, one
:class:`EpochRecord` per epoch plus the run's context — and reports progress to an
:class:`AdaptCallback` as it goes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from torch import nn

    from zoo.plans.plan import Plan


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
    #: of ``seconds``, the time this process waited for the loader's batches
    loader_seconds: float = 0.0

    @property
    def loader_note(self) -> str | None:
        """What the progress line says when the loader, not the model, held the epoch back:
        it waited for batches at least as long as it computed."""
        return loader_note(self.loader_seconds, self.seconds)

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data; a loss that diverged (NaN, inf) becomes ``None``."""
        return {k: _finite_or_none(v) for k, v in asdict(self).items()}


def loader_note(waited: float, seconds: float) -> str | None:
    """The note of an epoch of ``seconds`` that waited ``waited`` of them for batches: the
    loader is the bottleneck when waiting took at least as long as computing."""
    if seconds <= 0 or waited < seconds - waited:
        return None
    return (
        f"loader-bound: {waited / seconds:.0%} of the epoch waiting for batches "
        "(more --workers, faster storage or smaller images would help)"
    )


def _finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


@dataclass
class History:
    """The record of one :func:`adapt` run: one :class:`EpochRecord` per epoch, and context.

    ``feature_cache`` says whether the head was trained on cached features
    (``feature_cache_note`` says where the cut was, or why the plain loop ran instead);
    ``feature_seconds`` is the time spent computing them. ``skipped`` lists images left out
    as unreadable. ``augment`` is the training augmentation
    (:meth:`~zoo.adaptation.config.Augment.to_dict`; None: none), ``ema`` the decay of the
    moving average of the weights that was evaluated and returned (None: none). Iterating a
    history yields its epochs.

    With early stopping (``early_stop`` = the patience), ``best_epoch`` is the epoch of the
    lowest validation loss — the weights returned and saved are that epoch's — and
    ``stopped_early`` says whether the run ended before its last epoch. ``resumed_from`` is the
    last completed epoch of the interrupted run a ``resume=True`` run continued (else None).
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
    augment: dict[str, Any] | None = None
    ema: float | None = None
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
    early_stop: int | None = None
    best_epoch: int | None = None
    stopped_early: bool = False
    resumed_from: int | None = None
    blend: dict[str, Any] | None = None

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
        return [
            e.val_accuracy if e.val_accuracy is not None else e.train_accuracy for e in self.epochs
        ]

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

    def training_record(self, epochs: int) -> dict[str, Any]:
        """The ``zoo.training`` metadata of the saved model: how the run trained it."""
        return {
            "epochs": epochs,
            "epochs_run": len(self.epochs),
            "best_epoch": self.best_epoch,
            "early_stop": self.early_stop,
            "stopped_early": self.stopped_early,
            "resumed_from": self.resumed_from,
            "augment": self.augment,
            "ema": self.ema,
        } | ({"blend": self.blend} if self.blend is not None else {})

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

    def on_batch_end(
        self,
        epoch: int,
        batch: int,
        batches: int,
        loss: float,
        accuracy: float,
        images_per_second: float,
    ) -> None:
        """A training batch finished; loss and accuracy are running means of the epoch."""

    def on_epoch_end(self, record: EpochRecord) -> None:
        """An epoch finished (after validation)."""

    def on_plan_change(self, epoch: int, plan: Plan) -> None:
        """A schedule policy changed what trains at the start of ``epoch``."""

    def on_end(self, history: History) -> None:
        """Training (and saving) finished."""
