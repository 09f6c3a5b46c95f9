"""Predict classes with a saved model: ``zoo.predict(model, images, topk=5)``.

Images are prepared exactly as the model was evaluated during adaptation: the evaluation
transform (resize, centre crop, normalise) of the input config saved with the model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zoo.errors import DataError, ZooError
from zoo.io.persistence import load

if TYPE_CHECKING:
    import torch
    from torch import nn

    from zoo.core.catalog import Catalog
    from zoo.core.specs import InputConfig

ImageLike = Any  # a path, a PIL image, or a tensor (C, H, W) already prepared


@dataclass(frozen=True)
class Prediction:
    """The top classes for one image, most probable first."""

    source: str
    top: tuple[tuple[str, float], ...]

    @property
    def label(self) -> str:
        """The most probable class."""
        return self.top[0][0]

    @property
    def probability(self) -> float:
        return self.top[0][1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.source,
            "top": [{"class": name, "probability": prob} for name, prob in self.top],
        }


def _as_list(images: ImageLike | Sequence[ImageLike]) -> list[ImageLike]:
    import torch

    if isinstance(images, (str, os.PathLike)):
        return [images]
    if isinstance(images, torch.Tensor):
        return list(images) if images.ndim == 4 else [images]
    if hasattr(images, "convert") and hasattr(images, "size"):  # a PIL image
        return [images]
    return list(images)


def _prepare(item: ImageLike, index: int, transform: Any) -> tuple[str, torch.Tensor]:
    import torch

    from zoo.adaptation.data import load_image

    if isinstance(item, (str, os.PathLike)):
        path = os.fspath(item)
        if not os.path.isfile(path):
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


def _checked_config(config: InputConfig) -> InputConfig:
    """``config`` checked (a model's ``zoo_input_config`` may have been set to anything)."""
    try:
        return config.checked()
    except ZooError as exc:
        raise ZooError(
            f"cannot prepare images for this model: {exc}; set "
            "model.zoo_input_config to a valid zoo.InputConfig"
        ) from None


def predict(
    model: nn.Module | str | os.PathLike[str],
    images: ImageLike | Sequence[ImageLike],
    *,
    topk: int = 5,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    catalog: Catalog,
) -> list[Prediction]:
    """The ``topk`` most probable classes of each image, with probabilities (softmax).

    ``model``: a loaded model (``zoo.load(name)``) or a store name / file, loaded here.
    ``images``: one or a list of image paths, PIL images, or tensors already prepared
    (``(C, H, W)`` or a ``(N, C, H, W)`` batch). Paths and PIL images go through the
    evaluation transform of ``model.zoo_input_config``. Class names come from
    ``model.zoo_classes`` (indices as strings when the model has none). Returns one
    :class:`Prediction` per image, in order; an unreadable image raises
    :class:`~zoo.DataError` naming it.
    """
    import torch

    from zoo.adaptation.data import build_transform, input_config_of

    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ZooError(f"topk must be an int >= 1, not {topk!r}")
    if isinstance(model, (str, os.PathLike)):
        model = load(model, catalog=catalog)
    transform = build_transform(_checked_config(input_config_of(model)), train=False)
    items = _as_list(images)
    if not items:
        raise DataError("no images to predict")
    if device is None:
        try:
            device = next(model.parameters()).device
        except StopIteration:
            device = torch.device("cpu")
    classes = getattr(model, "zoo_classes", None)
    model.eval()
    results: list[Prediction] = []
    for start in range(0, len(items), batch_size):
        chunk = [
            _prepare(item, start + i, transform)
            for i, item in enumerate(items[start : start + batch_size])
        ]
        batch = torch.stack([tensor for _, tensor in chunk]).to(device)
        with torch.no_grad():
            probs = model(batch).float().softmax(dim=1).cpu()
        if not bool(torch.isfinite(probs).all()):
            raise ZooError(
                f"the model gave non-finite outputs (NaN or infinity) for {chunk[0][0]}"
                f"{' and others' if len(chunk) > 1 else ''}: its weights are damaged or the "
                "images are not prepared for it; no prediction is returned"
            )
        names = list(classes) if classes else [str(i) for i in range(probs.shape[1])]
        if len(names) != probs.shape[1]:
            raise ZooError(f"the model has {probs.shape[1]} outputs but {len(names)} class names")
        values, indices = probs.topk(min(topk, probs.shape[1]), dim=1)
        for (source, _), vals, idxs in zip(chunk, values.tolist(), indices.tolist(), strict=True):
            results.append(
                Prediction(
                    source, tuple((names[i], float(v)) for v, i in zip(vals, idxs, strict=True))
                )
            )
    return results
