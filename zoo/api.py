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
from zoo.errors import ModelBuildError, ZooError
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

    A plugin whose ``create`` raises (other than a :class:`~zoo.ZooError`, which passes
    unchanged) or returns something that is not an ``nn.Module`` gives a
    :class:`~zoo.errors.ModelBuildError` naming the plugin and the backbone.
    """
    spec, tag = get_catalog().backbone(name)
    if weights is not None and pretrained:
        raise ZooError("pass either pretrained=True or weights=FILE, not both")
    if not pretrained:
        tag = None  # a tag names weights; without them the architecture's defaults apply
    want: bool | str = tag if tag else bool(pretrained)
    model = call_create(spec, num_classes, want, kwargs)
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


def call_create(
    spec: BackboneSpec, num_classes: int | None, pretrained: bool | str, kwargs: dict[str, Any]
) -> nn.Module:
    """``spec.create(num_classes, pretrained, **kwargs)``, its failures named after the plugin.

    A :class:`~zoo.ZooError` raised by the plugin (such as
    :class:`~zoo.WeightsUnavailableError`) passes unchanged; any other exception becomes a
    :class:`~zoo.ModelBuildError` chained to it, and a result that is not an ``nn.Module`` is
    refused the same way.
    """
    from torch import nn

    where = f"plugin {spec.plugin!r} failed to build backbone {spec.qualified_name}"
    try:
        model = spec.create(num_classes, pretrained, **kwargs)
    except ZooError:
        raise
    except Exception as exc:
        args = f"num_classes={num_classes!r}, pretrained={pretrained!r}" + "".join(
            f", {k}={v!r}" for k, v in kwargs.items()
        )
        args = args if len(args) <= 300 else args[:300] + "…"
        raise ModelBuildError(
            f"{where} ({args}): {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ModelBuildError(
            f"{where}: its create() returned {type(model).__name__}, not a torch.nn.Module; "
            "report this to the plugin's authors"
        )
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
