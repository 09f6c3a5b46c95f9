"""Building a torchvision model the way ``zoo.create`` asks: head size and pretrained weights."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zoo_torchvision import weights as tv_weights
from zoo_torchvision.families import family_of, replace_heads

if TYPE_CHECKING:
    from torch import nn

#: Families whose builders warn unless ``init_weights`` is given (scipy-based init is slow).
LEGACY_INIT = frozenset({"googlenet", "inception"})


def create_torchvision_model(
    model_name: str, num_classes: int | None = None, pretrained: bool | str = False, **kwargs: Any
) -> nn.Module:
    """Build torchvision ``model_name``.

    ``pretrained`` is False, True (the weights enum's ``DEFAULT``) or a tag (an enum member
    name such as ``"IMAGENET1K_V2"``). With weights, a different ``num_classes`` gets a fresh
    classifier; with the original head the model carries the hint ``zoo_classes``, the weights'
    category names, which zoo records as ``model.zoo.classes``. ``num_classes=0`` replaces the
    classifier by ``nn.Identity``. Other keyword arguments go to torchvision's builder.
    """
    import torchvision.models as tvm

    family = family_of(model_name)
    weights = tv_weights.resolve(model_name, pretrained)
    if weights is not None:
        tv_weights.ensure_weights_available(model_name, weights)
        model = tvm.get_model(model_name, weights=weights, **kwargs)
        categories = list(weights.meta.get("categories") or ())
        if num_classes is not None and num_classes != len(categories):
            replace_heads(model, family, num_classes)
        elif categories:
            model.zoo_classes = categories  # type: ignore[assignment]
        model.zoo_torchvision_weights = repr(weights)  # type: ignore[assignment]
        return model
    if num_classes:
        kwargs["num_classes"] = num_classes
    if family in LEGACY_INIT:
        kwargs.setdefault("init_weights", False)  # torchvision's future default, and fast
    model = tvm.get_model(model_name, **kwargs)
    if num_classes == 0:
        replace_heads(model, family, 0)
    return model
