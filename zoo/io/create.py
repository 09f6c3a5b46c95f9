"""Building a backbone by name with optional weights: the body of ``zoo.create``.

It resolves the name in the catalog it is given, builds through the plugin
(:func:`zoo.core.create.build`), records the base a delta save will refer to, and loads a local
``.safetensors`` file when asked.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.core.create import build
from zoo.errors import ZooError
from zoo.io.persistence import file_state
from zoo.io.weights import load_weights

if TYPE_CHECKING:
    from torch import nn

    from zoo.core.catalog import Catalog


def create_model(
    catalog: Catalog,
    name: str,
    *,
    num_classes: int | None = None,
    pretrained: bool = False,
    weights: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """``zoo.create`` against ``catalog`` (see :func:`zoo.create` for the rules)."""
    spec, tag = catalog.backbone(name)
    if weights is not None and pretrained:
        raise ZooError("pass either pretrained=True or weights=FILE, not both")
    if not pretrained:
        tag = None  # a tag names weights; without them the architecture's defaults apply
    model = build(spec, tag=tag, num_classes=num_classes, pretrained=pretrained, kwargs=kwargs)
    if pretrained:  # the base a delta save refers to (zoo.io.persistence)
        ref = spec.qualified_name + (f".{tag}" if tag else "")
        model.zoo.base = {"kind": "pretrained", "ref": ref, "sha256": None}
    if weights is not None:
        path = Path(weights)
        resolved = file_state(path, catalog=catalog)  # a zoo delta is merged with its base here
        load_weights(model, resolved.tensors, head=spec.head, source=str(path))
        model.zoo.base = {
            "kind": "file",
            "ref": str(path.resolve()),
            "sha256": resolved.sha256,
        }
    return model
