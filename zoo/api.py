"""The catalog-level Python API: list, look up and build backbones.

A process-wide catalog is built on first use (never at import) from the default plugin host;
:func:`reset_catalog` forgets it, for instance after installing a plugin in a notebook.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from zoo.core.catalog import current_catalog, get_catalog, reset_catalog, set_catalog
from zoo.core.specs import BackboneSpec, PolicySpec
from zoo.io.create import create_model

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "create",
    "current_catalog",
    "get_backbone",
    "get_catalog",
    "get_policy",
    "list_backbones",
    "list_policies",
    "reset_catalog",
    "set_catalog",
]


def list_backbones(pattern: str | None = None, *, pretrained: bool | None = None) -> list[str]:
    """Qualified backbone names (``plugin:name``) matching an fnmatch ``pattern``.

    ``pretrained=True`` lists each pretrained tag (``timm:resnet50.a1_in1k``); ``False`` only
    architectures without pretrained weights.
    """
    return get_catalog().list_backbones(pattern, pretrained=pretrained)


def list_policies(pattern: str | None = None) -> list[str]:
    """Qualified freeze-policy names (``plugin:name``)."""
    return get_catalog().list_policies(pattern)


def get_backbone(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` a name resolves to (a ``.tag`` suffix is accepted)."""
    return get_catalog().backbone(name)[0]


def get_policy(name: str) -> PolicySpec:
    """The :class:`PolicySpec` a name resolves to."""
    return get_catalog().policy(name)


def create(
    name: str,
    *,
    num_classes: int | None = None,
    pretrained: bool = False,
    weights: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build backbone ``name`` through its plugin.

    ``num_classes`` replaces the head (``0`` removes it, ``None`` keeps the default).
    ``pretrained=True`` loads the default pretrained weights, or those of the tag in the name
    (``"resnet50.a1_in1k"``); without network or cache it fails fast with
    :class:`~zoo.WeightsUnavailableError`. Without ``pretrained=True`` a tag is ignored: no
    weights are loaded and the architecture's defaults apply.

    ``weights=`` loads a local ``.safetensors`` file instead (a zoo-saved model or a plain
    state dict); tensors of a classifier whose shape no longer fits ``num_classes`` are
    skipped, everything else must match.

    A plugin whose ``create`` raises (other than a :class:`~zoo.ZooError`, which passes
    unchanged) or returns something that is not an ``nn.Module`` gives a
    :class:`~zoo.errors.ModelBuildError` naming the plugin and the backbone.
    """

    return create_model(
        get_catalog(), name, num_classes=num_classes, pretrained=pretrained, weights=weights,
        **kwargs,
    )
