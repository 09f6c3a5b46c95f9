"""Where the task pulls on a pretrained model: the relative gradient norm of each depth.

Auto-RGN (Lee et al., *Surgical Fine-Tuning Improves Adaptation to Distribution Shifts*, ICLR
2023): on a few batches of the task's images, each parameter tensor's gradient norm divided by
its weight norm, ``||g|| / ||w||``, says how hard the task pulls on it relative to its size.
Averaged per depth of the parameter table (0 = stem … the last stage) and divided by the
largest, the body's depths read from 0 to 1: a shift in the input (colours, contrast,
corruptions) pulls hardest on early depths, a new labelling on late ones. ``surgical:depth=K``
trains the depth it points to; ``zoo compare`` adds that candidate to its ladder and ``zoo
plan NAME --data DIR`` shows the signal. The head (new for the task, so its gradients are
large and say nothing about the body) and the neck are left out of the comparison.

The gradients are computed on a copy of the model in evaluation mode (running statistics and
dropout as at inference), so the model itself is not changed.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from zoo.adaptation.inputs import loaders_for_folders
from zoo.core.record import unwrap
from zoo.errors import DataError

if TYPE_CHECKING:
    from zoo.adaptation.config import TrainConfig
    from zoo.adaptation.distributed import DistContext
    from zoo.adaptation.inputs import AdaptData
    from zoo.core.specs import InputConfig
    from zoo.tables.table import ParamTable

#: Batches of training images the signal is computed on by default.
SIGNAL_BATCHES = 4
#: Groups of the parameter table that are not the body (left out of the signal).
NOT_BODY = frozenset({"head", "neck"})


@dataclass(frozen=True)
class DepthSignal:
    """One depth of the body: its group, the mean ``||g|| / ||w||`` of its parameter tensors,
    and that value divided by the largest depth's (1.0: the depth the task pulls hardest on)."""

    depth: int
    group: str
    rgn: float
    relative: float


@dataclass(frozen=True)
class ShiftSignal:
    """The relative gradient norm of each depth of the body, from ``images`` images."""

    depths: tuple[DepthSignal, ...]
    images: int

    def strongest(self, count: int = 1) -> list[int]:
        """The ``count`` depths with the largest signal, strongest first."""
        ranked = sorted(self.depths, key=lambda d: (-d.relative, d.depth))
        return [d.depth for d in ranked[:count]]

    def text(self) -> str:
        """``relative gradient norm per depth (Auto-RGN, 64 images): 0=stem 1.00, ...``."""
        parts = " ".join(f"{d.depth}={d.group} {d.relative:.2f}" for d in self.depths)
        return f"relative gradient norm per depth (Auto-RGN, {self.images} images): {parts}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "depths": [
                {"depth": d.depth, "group": d.group, "rgn": d.rgn, "relative": d.relative}
                for d in self.depths
            ],
        }


def shift_signal(
    model: nn.Module,
    table: ParamTable,
    batches: Iterable[Any],
    *,
    device: torch.device,
    max_batches: int = SIGNAL_BATCHES,
) -> ShiftSignal:
    """The relative gradient norm of each depth of ``model`` (described by ``table``) on the
    first ``max_batches`` ``(images, labels)`` batches of ``batches``; ``model`` is not
    changed. Raises :class:`~zoo.DataError` when there is no batch."""
    work = copy.deepcopy(unwrap(model)).to(device)
    work.eval()
    for param in work.parameters():
        param.requires_grad_(True)
        param.grad = None
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    images = 0
    for i, batch in enumerate(batches):
        if i >= max_batches:
            break
        x, y = batch[0].to(device), torch.as_tensor(batch[1]).to(device)
        loss_fn(work(x), y).backward()
        images += int(y.shape[0])
    if not images:
        raise DataError("no training images to compute the gradient signal on")
    return _per_depth(work, table, images)


def _per_depth(model: nn.Module, table: ParamTable, images: int) -> ShiftSignal:
    rows = {row.name: row for row in table.rows if row.group not in NOT_BODY}
    sums: dict[int, list[float]] = {}
    groups: dict[int, str] = {}
    for name, param in model.named_parameters():
        row = rows.get(name)
        if row is None or param.grad is None:
            continue
        weight = float(param.detach().float().norm())
        if weight == 0.0:  # a zero-initialised tensor: no scale to compare with
            continue
        grad = float(param.grad.detach().float().norm()) / images
        if not (math.isfinite(grad) and math.isfinite(weight)):
            continue
        sums.setdefault(row.depth, []).append(grad / weight)
        groups[row.depth] = row.group
    means = {depth: sum(v) / len(v) for depth, v in sorted(sums.items())}
    top = max(means.values(), default=0.0)
    return ShiftSignal(
        tuple(
            DepthSignal(depth, groups[depth], value, value / top if top > 0 else 0.0)
            for depth, value in means.items()
        ),
        images,
    )


def signal_for_run(
    model: nn.Module,
    table: ParamTable,
    data: AdaptData,
    input_config: InputConfig,
    config: TrainConfig,
    ctx: DistContext,
) -> ShiftSignal:
    """The signal of a run's training images: shuffled (seeded), un-augmented batches of its
    batch size, from the folders or the run's own loader."""
    if data.from_folders:
        batches, _ = loaders_for_folders(
            data,
            input_config,
            augment=None,
            batch_size=config.batch_size,
            num_workers=config.num_workers,
            seed=config.seed,
            ctx=ctx,
            shuffle_train=True,
        )
    else:
        batches = data.train
    return shift_signal(model, table, batches, device=ctx.device)
