"""Building a backbone by name with optional weights: the body of ``zoo.create``.

It resolves the name in the catalog it is given, builds through :func:`zoo.core.build.build`,
records the base a delta save will refer to, and loads a local ``.safetensors`` file when asked.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.core.build import build
from zoo.core.record import BuildArgs
from zoo.errors import ZooError
from zoo.io.persistence import file_state

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
    """``zoo.create`` against ``catalog`` (see :func:`zoo.create` for the rules).

    ``weights=FILE`` loads the file strictly, except for a classifier (the plugin's head
    locator) that changed shape: it keeps its fresh initialisation.
    """
    spec, tag = catalog.backbone(name)
    if weights is not None and pretrained:
        raise ZooError("pass either pretrained=True or weights=FILE, not both")
    args = BuildArgs(spec.qualified_name, num_classes, kwargs, tag)
    if weights is None:
        model = build(spec, args, pretrained=pretrained)
        if pretrained:  # the base a delta save refers to (zoo.io.persistence)
            ref = spec.qualified_name + (f".{tag}" if tag else "")
            model.zoo.base = {"kind": "pretrained", "ref": ref, "sha256": None}
        return model
    path = Path(weights)
    resolved = file_state(path, catalog=catalog)  # a zoo delta is merged with its base here
    model = build(spec, args, state=resolved.tensors, skip=spec.head_modules, source=str(path))
    model.zoo.base = {"kind": "file", "ref": str(path.resolve()), "sha256": resolved.sha256}
    return model
