"""Measure a model on labelled images: :func:`evaluate` gives an :class:`Evaluation`.

One concept for every score zoo reports on held-out images: accuracy, top-k accuracy, mean
cross-entropy loss, per-class precision, recall and F1, and the confusion matrix, all derived
from the counts one pass over the data makes. The data is any image source :func:`zoo.adapt`
reads (:func:`~zoo.adaptation.sources.read_source`: a class folder, a CSV/JSONL manifest, a
Hugging Face dataset), prepared with the evaluation transform of the model's saved input
config as :func:`zoo.predict` prepares images; or a ``DataLoader`` or map-style ``Dataset`` of
``(image, label)``, used as it is.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset

from zoo.adaptation.compare_plot import check_plot_available, check_plot_path
from zoo.adaptation.data import (
    ImageDataset,
    LoaderSpec,
    SkippedFile,
    build_transform,
    input_config_of,
    make_loader,
)
from zoo.adaptation.distributed import resolve_device
from zoo.adaptation.sources import is_source, read_source
from zoo.core import checks
from zoo.core.record import record_of
from zoo.errors import AdaptArgumentError, DataError, ZooError
from zoo.io.persistence import load

if TYPE_CHECKING:
    from torch import nn

    from zoo.core.catalog import Catalog
    from zoo.core.specs import InputConfig

#: A confusion matrix is drawn with its counts written in the cells up to this many classes.
PLOT_COUNTS_UP_TO = 30
#: The most classes a confusion matrix plot shows (beyond, it is unreadable and large).
PLOT_MAX_CLASSES = 200


@dataclass(frozen=True)
class ClassScores:
    """The scores of one class: ``precision`` (of the images predicted as it, the share that
    are), ``recall`` (of its images, the share predicted as it), their harmonic mean ``f1``,
    ``support`` (its images) and ``predicted`` (images predicted as it). A share of nothing
    (a class never predicted, or without images) is 0.0."""

    name: str
    precision: float
    recall: float
    f1: float
    support: int
    predicted: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "class": self.name,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "support": self.support,
            "predicted": self.predicted,
        }


@dataclass(frozen=True)
class Evaluation:
    """How a model did on labelled images.

    Stored are the counts of one pass: ``images``, ``correct``, ``topk_correct`` (the true
    class among the ``topk`` most probable), the summed cross-entropy (``loss`` is its mean)
    and ``confusion``, the non-zero cells of the confusion matrix as ``(true, predicted,
    count)`` class indices into ``classes`` (sparse: it holds at most one cell per image, for
    any number of classes). Everything else is derived: :attr:`accuracy`,
    :attr:`topk_accuracy`, :attr:`per_class`, :meth:`matrix`. ``skipped``: the files of an
    image folder left out (unreadable, refused), each with the reason.
    """

    classes: tuple[str, ...]
    images: int
    correct: int
    topk: int
    topk_correct: int
    loss: float
    confusion: tuple[tuple[int, int, int], ...]
    skipped: tuple[SkippedFile, ...] = ()

    @property
    def accuracy(self) -> float:
        return self.correct / self.images

    @property
    def topk_accuracy(self) -> float:
        return self.topk_correct / self.images

    @property
    def per_class(self) -> tuple[ClassScores, ...]:
        """One :class:`ClassScores` per class, in the model's class order."""
        support: Counter[int] = Counter()
        predicted: Counter[int] = Counter()
        hits: Counter[int] = Counter()
        for true, pred, count in self.confusion:
            support[true] += count
            predicted[pred] += count
            if true == pred:
                hits[true] += count
        scores = []
        for index, name in enumerate(self.classes):
            precision = _share(hits[index], predicted[index])
            recall = _share(hits[index], support[index])
            f1 = _share(2 * precision * recall, precision + recall)
            scores.append(
                ClassScores(name, precision, recall, f1, support[index], predicted[index])
            )
        return tuple(scores)

    def matrix(self) -> list[list[int]]:
        """The dense confusion matrix: ``matrix()[true][predicted]`` images (classes x classes
        entries: for a few thousand classes prefer :attr:`confusion`)."""
        size = len(self.classes)
        dense = [[0] * size for _ in range(size)]
        for true, pred, count in self.confusion:
            dense[true][pred] = count
        return dense

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the scores, the per-class scores and the confusion cells by name."""
        return {
            "images": self.images,
            "accuracy": self.accuracy,
            "topk": self.topk,
            "topk_accuracy": self.topk_accuracy,
            "loss": self.loss,
            "classes": [scores.to_dict() for scores in self.per_class],
            "confusion": [
                {"true": self.classes[t], "predicted": self.classes[p], "count": n}
                for t, p, n in self.confusion
            ],
            "skipped": [s.to_dict() for s in self.skipped],
        }


def _share(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


# ---------------------------------------------------------------- preparing images


def checked_input_config(model: nn.Module) -> InputConfig:
    """The model's input config, checked (``model.zoo.input_config`` may have been set to
    anything): the evaluation transform of :func:`evaluate` and :func:`zoo.predict` is built
    from it."""
    try:
        return input_config_of(model).checked()
    except ZooError as exc:
        raise ZooError(
            f"cannot prepare images for this model: {exc}; set "
            "model.zoo.input_config to a valid zoo.InputConfig"
        ) from None


def check_finite(outputs: torch.Tensor, source: str) -> None:
    """Refuse non-finite outputs (NaN or infinity), which no score or probability survives."""
    if not bool(torch.isfinite(outputs).all()):
        raise ZooError(
            f"the model gave non-finite outputs (NaN or infinity) for {source}: its weights "
            "are damaged or the images are not prepared for it; no result is returned"
        )


def model_classes(model: nn.Module) -> list[str] | None:
    record = record_of(model)
    return list(record.classes) if record is not None and record.classes else None


# ---------------------------------------------------------------- the data


@dataclass
class _Source:
    """Batches of ``(images, labels)``; ``labels`` index ``classes`` (the model's classes, or
    the model's outputs when it has no names); ``remap`` turns the data's own label indices
    into the model's."""

    batches: Iterable[Any]
    classes: list[str] | None
    remap: torch.Tensor | None = None
    skipped: tuple[SkippedFile, ...] = ()


def _match_classes(data_classes: Sequence[str], classes: Sequence[str], where: str) -> list[int]:
    """For each of the data's classes, the model's index of the class of that name; a class of
    the model the data lacks, or a class of the data the model lacks, is an error naming it."""
    missing = [c for c in classes if c not in data_classes]
    if missing:
        raise DataError(
            f"{where} has no class {', '.join(map(repr, missing))} of the model: every class "
            f"the model predicts needs its images (the model's classes: {', '.join(classes)})"
        )
    extra = [c for c in data_classes if c not in classes]
    if extra:
        raise DataError(
            f"{where} has class(es) {', '.join(map(repr, extra))} that the model does not "
            f"predict (the model's classes: {', '.join(classes)}); remove them from the data"
        )
    index = {name: i for i, name in enumerate(classes)}
    return [index[name] for name in data_classes]


def _images_source(
    model: nn.Module, images: Any, classes: list[str] | None, batch_size: int
) -> _Source:
    """An image folder, a manifest or a Hugging Face dataset, its classes matched by name."""
    where = (
        f"{'image folder' if os.path.isdir(images) else 'manifest'} {os.fspath(images)!r}"
        if isinstance(images, (str, os.PathLike))
        else f"the {type(images).__name__}"
    )
    if classes is None:
        raise DataError(
            "the model has no class names (model.zoo.classes), so its outputs cannot be matched "
            f"to the classes of {where}: save it with classes=[...] (in the order of its "
            "outputs), or evaluate on a DataLoader whose labels are output indices"
        )
    scanned = read_source(images, on_corrupt="skip")
    to_model = _match_classes(scanned.classes, classes, where)
    samples = [(path, to_model[label]) for path, label in scanned.samples]
    transform = build_transform(checked_input_config(model), train=False)
    dataset = ImageDataset(samples, classes, transform)
    loader = make_loader(dataset, LoaderSpec(batch_size=batch_size), shuffle=False)
    return _Source(loader, classes, skipped=scanned.skipped)


def _loader_source(loader: DataLoader, classes: list[str] | None) -> _Source:
    names = getattr(loader.dataset, "classes", None)
    if names is None:  # the labels are the model's output indices
        return _Source(loader, classes)
    names = [str(n) for n in names]
    if classes is None:
        return _Source(loader, names)
    to_model = _match_classes(names, classes, "the data (its dataset's .classes)")
    remap = None if to_model == list(range(len(classes))) else torch.tensor(to_model)
    return _Source(loader, classes, remap)


def _source(model: nn.Module, data: Any, classes: list[str] | None, batch_size: int) -> _Source:
    if is_source(data):
        return _images_source(model, data, classes, batch_size)
    if isinstance(data, DataLoader):
        return _loader_source(data, classes)
    if isinstance(data, Dataset):
        loader = make_loader(data, LoaderSpec(batch_size=batch_size), shuffle=False)
        return _loader_source(loader, classes)
    raise DataError(
        f"cannot evaluate on {type(data).__name__}: pass an image folder (one sub-folder per "
        "class), a CSV or JSONL manifest, a Hugging Face dataset, or a DataLoader or Dataset "
        "of (image, label)"
    )


def _labels(batch: Any, source: _Source, outputs: int, number: int) -> tuple[Any, torch.Tensor]:
    """``(images, labels)`` of a batch, the labels checked: whole numbers within the outputs."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise DataError(
            f"batch {number} of the data is a {type(batch).__name__}, not (images, labels)"
        )
    images, labels = batch[0], batch[1]
    if not isinstance(labels, torch.Tensor):
        labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.is_floating_point() or labels.is_complex():
        raise DataError(
            f"the labels of batch {number} must be one class index per image (a 1-d tensor of "
            f"integers), not a {labels.dtype} tensor of shape {tuple(labels.shape)}"
        )
    labels = labels.long()
    if source.remap is not None:
        if labels.numel() and (labels.min() < 0 or labels.max() >= len(source.remap)):
            raise DataError(f"batch {number} has labels outside 0..{len(source.remap) - 1}")
        labels = source.remap[labels]
    if labels.numel() and (labels.min() < 0 or labels.max() >= outputs):
        bad = sorted({int(v) for v in labels.tolist() if not 0 <= v < outputs})
        raise DataError(
            f"batch {number} has label(s) {bad[:5]} outside 0..{outputs - 1}, the model's "
            f"{outputs} outputs"
        )
    return images, labels


# ---------------------------------------------------------------- evaluate


def _device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """Where the images go: the model's device; ``device``, when given, must be it."""
    try:
        own = next(model.parameters()).device
    except StopIteration:
        own = torch.device("cpu")
    if device is None:
        return own
    wanted = resolve_device(device)
    if wanted != own:
        raise AdaptArgumentError(
            "device",
            str(device),
            f"the device the model is on ({own}): move it with model.to(...) or leave out device",
        )
    return wanted


def evaluate(
    model: nn.Module | str | os.PathLike[str],
    data: str | os.PathLike[str] | DataLoader | Dataset | Any,
    *,
    topk: int = 5,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    plot: str | os.PathLike[str] | None = None,
    catalog: Catalog,
) -> Evaluation:
    """Evaluate ``model`` on labelled ``data``: accuracy, top-``topk`` accuracy (``topk`` is
    capped at the number of classes), mean cross-entropy loss, per-class precision, recall and
    F1, and the confusion matrix, as an :class:`Evaluation`.

    ``model``: a model (``zoo.load(name)``; a wrapped one is seen through) or a store name /
    file, loaded here onto ``device``. ``data``: an image folder with one sub-folder per class
    of the model, a CSV/JSONL manifest or a Hugging Face dataset (as for :func:`zoo.adapt`; its
    classes are matched to the model's by name: a class of the model without images, or a class
    the model does not predict, raises :class:`~zoo.DataError` naming it; unreadable images are
    left out and listed in ``skipped``), prepared with the evaluation transform of the model's
    input config in batches of ``batch_size``; or a ``DataLoader`` / ``Dataset`` of
    ``(images, labels)`` used as it is (its dataset's ``.classes``, when it has them, are
    matched to the model's by name; without them the labels are the model's output indices).
    A model passed as a module stays where it is (``device``, if given, must be its device)
    and in its train/eval mode.
    ``plot``: also write the confusion matrix as a PNG there (needs matplotlib, the ``plot``
    extra; checked, with the path, before any work).
    """
    try:
        topk = checks.integer(topk, "topk", 1)
        batch_size = checks.integer(batch_size, "batch_size", 1)
    except checks.Invalid as exc:
        raise AdaptArgumentError(exc.what, exc.value, exc.rule) from None
    if plot is not None:
        check_plot_available("the confusion matrix plot")
        check_plot_path(plot)
    if isinstance(model, (str, os.PathLike)):
        model = load(model, device=resolve_device(device or "cpu"), catalog=catalog)
    dev = _device(model, device)
    source = _source(model, data, model_classes(model), batch_size)
    if plot is not None and source.classes is not None:
        _check_plot_classes(len(source.classes))
    was_training = model.training
    model.eval()
    try:
        result = _run(model, source, topk, dev)
    finally:
        model.train(was_training)
    if plot is not None:
        write_confusion_plot(result, plot)
    return result


def _run(model: nn.Module, source: _Source, topk: int, device: torch.device) -> Evaluation:
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")
    cells: Counter[tuple[int, int]] = Counter()
    loss = 0.0
    images = correct = topk_correct = 0
    outputs = k = 0
    with torch.no_grad():
        for number, batch in enumerate(source.batches, start=1):
            logits = model(_to(batch[0] if isinstance(batch, (tuple, list)) else batch, device))
            if logits.ndim != 2:
                raise ZooError(
                    f"the model's output has shape {tuple(logits.shape)}: expected one row of "
                    "class scores per image (batch, classes)"
                )
            logits = logits.float()
            outputs, k = logits.shape[1], min(topk, logits.shape[1])
            if source.classes is not None and len(source.classes) != outputs:
                raise ZooError(
                    f"the model has {outputs} outputs but {len(source.classes)} class names"
                )
            _, labels = _labels(batch, source, outputs, number)
            labels = labels.to(logits.device)
            if labels.shape[0] != logits.shape[0]:
                raise DataError(
                    f"batch {number} has {logits.shape[0]} images but {labels.shape[0]} labels"
                )
            check_finite(logits, f"batch {number}")
            loss += float(loss_fn(logits, labels))
            top = logits.topk(k, dim=1).indices
            predicted = top[:, 0]
            correct += int((predicted == labels).sum())
            topk_correct += int((top == labels[:, None]).any(dim=1).sum())
            images += labels.shape[0]
            cells.update(zip(labels.tolist(), predicted.tolist(), strict=True))
    if not images:
        raise DataError("no images to evaluate on: the data is empty")
    classes = source.classes or [str(i) for i in range(outputs)]
    return Evaluation(
        classes=tuple(classes),
        images=images,
        correct=correct,
        topk=k,
        topk_correct=topk_correct,
        loss=loss / images,
        confusion=tuple((t, p, n) for (t, p), n in sorted(cells.items())),
        skipped=source.skipped,
    )


def _to(images: Any, device: torch.device) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise DataError(f"a batch's images must be a tensor, not {type(images).__name__}")
    return images.to(device)


# ---------------------------------------------------------------- the plot


def _check_plot_classes(count: int) -> None:
    if count > PLOT_MAX_CLASSES:
        raise ZooError(
            f"the confusion matrix of {count} classes is too large to plot (at most "
            f"{PLOT_MAX_CLASSES}); leave out the plot and read the confusion cells of the "
            "result (--json)"
        )


def write_confusion_plot(evaluation: Evaluation, path: str | os.PathLike[str]) -> Path:
    """Write the confusion matrix of ``evaluation`` as a PNG at ``path`` (rows: the true class,
    columns: the predicted one; each row shaded by its share of the class's images, the counts
    written in the cells up to :data:`PLOT_COUNTS_UP_TO` classes)."""
    check_plot_available("the confusion matrix plot")
    _check_plot_classes(len(evaluation.classes))
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    size = len(evaluation.classes)
    dense = evaluation.matrix()
    shares = [[n / max(1, sum(row)) for n in row] for row in dense]
    side = min(4 + 0.45 * size, 40)
    fig, ax = plt.subplots(figsize=(side + 1.5, side), dpi=110)
    try:
        image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        fig.colorbar(image, ax=ax, label="share of the true class's images")
        ax.set_xticks(range(size), evaluation.classes, rotation=90 if size > 8 else 0)
        ax.set_yticks(range(size), evaluation.classes)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(
            f"accuracy {evaluation.accuracy:.1%} on {evaluation.images} image"
            f"{'' if evaluation.images == 1 else 's'}"
        )
        if size <= PLOT_COUNTS_UP_TO:
            for true, row in enumerate(dense):
                for pred, count in enumerate(row):
                    dark = shares[true][pred] > 0.5
                    ax.text(
                        pred,
                        true,
                        str(count),
                        ha="center",
                        va="center",
                        color="white" if dark else "black",
                        fontsize=8,
                    )
        fig.tight_layout()
        target = Path(path)
        fig.savefig(target, format="png")
    finally:
        plt.close(fig)
    return target
