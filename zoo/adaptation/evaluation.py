"""Measure a model on labelled images: :func:`evaluate` gives accuracy and mean loss."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch

from zoo.adaptation.data import (
    ImageDataset,
    LoaderSpec,
    build_transform,
    input_config_of,
    make_loader,
)
from zoo.adaptation.distributed import resolve_device
from zoo.adaptation.inputs import is_loader
from zoo.adaptation.sources import read_source
from zoo.core import checks
from zoo.core.record import record_of
from zoo.errors import AdaptArgumentError, DataError

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.data import DataLoader


@dataclass(frozen=True)
class Evaluation:
    """Accuracy and mean loss of a model on labelled images."""

    accuracy: float
    loss: float
    images: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(
    model: nn.Module,
    data: str | os.PathLike[str] | DataLoader | Any,
    *,
    batch_size: int = 64,
    device: str | None = None,
) -> Evaluation:
    """Accuracy of ``model`` on an image folder (its class folders must be among
    ``model.zoo.classes``), a manifest, a Hugging Face ``Dataset`` (their labels too) or a
    data loader, with the evaluation transform of the model's input config."""

    try:
        batch_size = checks.integer(batch_size, "batch_size", 1)
    except checks.Invalid as exc:
        raise AdaptArgumentError(exc.what, exc.value, exc.rule) from None
    if is_loader(data):
        loader = data
    else:
        record = record_of(model)
        classes = record.classes if record is not None else None
        folder = read_source(data, classes=classes)
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
