"""The catalog-level Python API: list, look up and build backbones.

A process-wide catalog is built on first use (never at import) from the default plugin host;
:func:`reset_catalog` forgets it, for instance after installing a plugin in a notebook.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.catalog import Catalog, build_catalog
from zoo.errors import ZooError
from zoo.plugins import STRICT_ENV, env_flag
from zoo.specs import BackboneSpec, PolicySpec

if TYPE_CHECKING:
    from torch import nn

_lock = threading.Lock()
_catalog: Catalog | None = None


def get_catalog(*, strict: bool | None = None) -> Catalog:
    """The process-wide catalog, built on first use.

    In strict mode (``strict=True``, or ``None`` with ``ZOO_STRICT_PLUGINS=1``) any plugin
    problem raises :class:`~zoo.PluginError` instead of being recorded and skipped.
    """
    global _catalog
    with _lock:
        if _catalog is None:
            _catalog = build_catalog()
        catalog = _catalog
    if strict is None:
        strict = env_flag(STRICT_ENV)
    if strict:
        catalog.host.raise_if_problems()
    return catalog


def current_catalog() -> Catalog | None:
    """The process-wide catalog if one is built or set, else None (builds nothing)."""
    return _catalog


def set_catalog(catalog: Catalog | None) -> Catalog | None:
    """Replace the process-wide catalog (``None`` forgets it); returns the previous one."""
    global _catalog
    with _lock:
        previous, _catalog = _catalog, catalog
    return previous


def reset_catalog() -> None:
    """Forget the process-wide catalog; the next call rebuilds it from installed plugins."""
    set_catalog(None)


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
    """
    spec, tag = get_catalog().backbone(name)
    if weights is not None and pretrained:
        raise ZooError("pass either pretrained=True or weights=FILE, not both")
    if not pretrained:
        tag = None  # a tag names weights; without them the architecture's defaults apply
    want: bool | str = tag if tag else bool(pretrained)
    model = spec.create(num_classes, want, **kwargs)
    attach_build_info(model, spec, tag=tag, num_classes=num_classes, kwargs=kwargs)
    if pretrained:  # the base a delta save refers to (zoo.persistence)
        ref = spec.qualified_name + (f".{tag}" if tag else "")
        model.zoo_build["base"] = {"kind": "pretrained", "ref": ref, "sha256": None}
    if weights is not None:
        from zoo.persistence import file_state
        from zoo.weights import load_weights

        path = Path(weights)
        resolved = file_state(path)  # a zoo delta is merged with its base here
        load_weights(model, resolved.tensors, head=spec.head, source=str(path))
        model.zoo_build["base"] = {
            "kind": "file",
            "ref": str(path.resolve()),
            "sha256": resolved.sha256,
        }
    return model


def attach_build_info(
    model: nn.Module,
    spec: BackboneSpec,
    *,
    tag: str | None,
    num_classes: int | None,
    kwargs: dict[str, Any],
) -> None:
    """Record on ``model`` how to rebuild it: ``model.zoo_build`` and ``model.zoo_input_config``.

    ``zoo_build`` is ``{"backbone": "plugin:name", "tag": ..., "num_classes": ..., "kwargs":
    {...}}``; saving stores it, loading rebuilds from it, tables use it to find the spec.
    """
    model.zoo_build = {  # type: ignore[assignment]
        "backbone": spec.qualified_name,
        "tag": tag,
        "num_classes": num_classes,
        "kwargs": dict(kwargs),
    }
    model.zoo_input_config = spec.input_config_for(tag)  # type: ignore[assignment]
