"""Predict classes with a saved model: ``zoo.predict(model, images, topk=5)``.

Images are prepared exactly as the model was evaluated during adaptation: the evaluation
transform (resize, centre crop, normalise) of the input config saved with the model.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from zoo.adaptation.data import IMAGE_EXTENSIONS, build_transform, list_images, load_image
from zoo.adaptation.evaluation import check_finite, checked_input_config, model_classes
from zoo.core import checks
from zoo.errors import DataError, ZooError
from zoo.io.persistence import load

if TYPE_CHECKING:
    from torch import nn

    from zoo.core.catalog import Catalog

ImageLike = Any  # a path, a PIL image, or a tensor (C, H, W) already prepared


@dataclass(frozen=True)
class Prediction:
    """The top classes for one image, most probable first; or, for an image that could not
    be read (``predict(..., errors="report")``), no classes and the reason in ``error``."""

    source: str
    top: tuple[tuple[str, float], ...]
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def label(self) -> str | None:
        """The most probable class (None for an image that could not be read)."""
        return self.top[0][0] if self.top else None

    @property
    def probability(self) -> float | None:
        return self.top[0][1] if self.top else None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"image": self.source, "error": self.error}
        return {
            "image": self.source,
            "top": [{"class": name, "probability": prob} for name, prob in self.top],
        }


def image_files(folder: str | os.PathLike[str], *, recursive: bool = False) -> list[str]:
    """The image files in ``folder`` (its subfolders too with ``recursive``), sorted by path,
    each once; hidden files and other files are left out, and links to folders are not followed
    (:func:`~zoo.adaptation.data.list_images`). A folder without images raises
    :class:`~zoo.DataError`."""
    paths, left_out = list_images(Path(folder), recursive=recursive)
    found = sorted(map(str, paths))
    if not found:
        hint = "" if recursive else "; to include its subfolders, pass recursive=True (--recursive)"
        if left_out:
            hint += f"; left out: {str(left_out[0].path)!r}: {left_out[0].reason}"
        raise DataError(
            f"no images in folder {os.fspath(folder)!r} (looked for "
            f"{', '.join(IMAGE_EXTENSIONS)}){hint}"
        )
    return found


def _as_list(images: ImageLike | Sequence[ImageLike], recursive: bool) -> list[ImageLike]:
    """``images`` as a flat list, each folder replaced by its image files (sorted)."""
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    elif isinstance(images, torch.Tensor):
        return list(images) if images.ndim == 4 else [images]
    elif hasattr(images, "convert") and hasattr(images, "size"):  # a PIL image
        return [images]
    items: list[ImageLike] = []
    for item in images:
        if isinstance(item, (str, os.PathLike)) and os.path.isdir(item):
            items.extend(image_files(item, recursive=recursive))
        else:
            items.append(item)
    return items


def _prepare(item: ImageLike, index: int, transform: Any) -> tuple[str, torch.Tensor]:
    if isinstance(item, (str, os.PathLike)):
        path = os.fspath(item)
        if not os.path.exists(path):
            raise DataError(f"image {path!r} does not exist")
        return path, transform(load_image(path))
    if isinstance(item, torch.Tensor):
        if item.ndim != 3:
            raise DataError(
                f"image tensor {index} must be (channels, height, width), "
                f"got shape {tuple(item.shape)}"
            )
        return f"<tensor {index}>", item.float()
    if hasattr(item, "convert"):
        return f"<image {index}>", transform(item.convert("RGB"))
    raise DataError(
        f"cannot predict on {type(item).__name__}: pass image paths, PIL images or prepared tensors"
    )


def _source(item: ImageLike, index: int) -> str:
    return os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"<image {index}>"


def predict(
    model: nn.Module | str | os.PathLike[str],
    images: ImageLike | Sequence[ImageLike],
    *,
    topk: int = 5,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    recursive: bool = False,
    errors: Literal["raise", "report"] = "raise",
    catalog: Catalog,
) -> list[Prediction]:
    """The ``topk`` most probable classes of each image, with probabilities (softmax).

    ``model``: a loaded model (``zoo.load(name)``) or a store name / file, loaded here.
    ``images``: one or a list of image paths, PIL images, or tensors already prepared
    (``(C, H, W)`` or a ``(N, C, H, W)`` batch). A folder stands for the image files in it,
    sorted by path (:func:`image_files`; its subfolders too with ``recursive=True``). Paths
    and PIL images go through the evaluation transform of ``model.zoo.input_config``, in
    batches of ``batch_size``. Class names come from ``model.zoo.classes`` (indices as
    strings when the model has none). A wrapped model (``torch.compile``, DDP) runs as it is;
    its record is read from the model it wraps (:func:`zoo.unwrap`). Returns one
    :class:`Prediction` per image, in order. An unreadable image raises :class:`~zoo.DataError`
    naming it; with ``errors="report"`` its prediction has no classes and the reason in
    ``error`` instead, and the other images are still predicted.
    """

    return list(
        predictions(
            model,
            images,
            topk=topk,
            batch_size=batch_size,
            device=device,
            recursive=recursive,
            errors=errors,
            catalog=catalog,
        )
    )


def predictions(
    model: nn.Module | str | os.PathLike[str],
    images: ImageLike | Sequence[ImageLike],
    *,
    topk: int = 5,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    recursive: bool = False,
    errors: Literal["raise", "report"] = "raise",
    catalog: Catalog,
) -> Iterator[Prediction]:
    """:func:`predict`, one :class:`Prediction` at a time, in order, as each batch is
    predicted (``zoo predict --csv`` writes them as they come). The arguments are checked, the
    images listed and the model loaded here, before the first prediction is asked for."""
    try:
        topk = checks.integer(topk, "topk", 1)
        batch_size = checks.integer(batch_size, "batch_size", 1)
    except checks.Invalid as exc:
        raise ZooError(str(exc)) from None
    if errors not in ("raise", "report"):
        raise ZooError(f"errors must be 'raise' or 'report', not {errors!r}")
    items = _as_list(images, recursive)
    if not items:
        raise DataError("no images to predict")
    if isinstance(model, (str, os.PathLike)):
        model = load(model, catalog=catalog)
    transform = build_transform(checked_input_config(model), train=False)
    if device is None:
        try:
            device = next(model.parameters()).device
        except StopIteration:
            device = torch.device("cpu")
    model.eval()
    return _predicted(model, items, transform, topk, batch_size, device, errors)


def _predicted(
    model: nn.Module,
    items: list[ImageLike],
    transform: Any,
    topk: int,
    batch_size: int,
    device: str | torch.device,
    errors: str,
) -> Iterator[Prediction]:
    classes = model_classes(model)
    for start in range(0, len(items), batch_size):
        done: dict[int, Prediction] = {}
        chunk: list[tuple[int, str, torch.Tensor]] = []
        for index in range(start, min(start + batch_size, len(items))):
            try:
                chunk.append((index, *_prepare(items[index], index, transform)))
            except DataError as exc:
                if errors == "raise":
                    raise
                done[index] = Prediction(_source(items[index], index), (), error=str(exc))
        if chunk:
            batch = torch.stack([tensor for _, _, tensor in chunk]).to(device)
            with torch.no_grad():
                probs = model(batch).float().softmax(dim=1).cpu()
            check_finite(probs, f"{chunk[0][1]}{' and others' if len(chunk) > 1 else ''}")
            names = classes or [str(i) for i in range(probs.shape[1])]
            if len(names) != probs.shape[1]:
                raise ZooError(
                    f"the model has {probs.shape[1]} outputs but {len(names)} class names"
                )
            values, indices = probs.topk(min(topk, probs.shape[1]), dim=1)
            for (index, source, _), vals, idxs in zip(
                chunk, values.tolist(), indices.tolist(), strict=True
            ):
                done[index] = Prediction(
                    source, tuple((names[i], float(v)) for v, i in zip(vals, idxs, strict=True))
                )
        yield from (done[index] for index in sorted(done))
