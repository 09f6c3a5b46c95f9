"""Building a model from a spec: the plugin's ``create`` called and checked, and the build info
recorded on the model so that it can be saved, described and rebuilt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zoo.core.specs import BackboneSpec, InputConfig
from zoo.errors import ModelBuildError, ZooError

if TYPE_CHECKING:
    from torch import nn


def build(
    spec: BackboneSpec,
    *,
    tag: str | None = None,
    num_classes: int | None = None,
    pretrained: bool = False,
    kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """Build ``spec`` through its plugin and record how (:func:`attach_build_info`).

    With ``pretrained`` the weights of ``tag`` (or the default ones) are loaded; without it a
    tag is ignored. ``model.zoo_build`` records the tag only when weights were loaded.
    """
    kwargs = dict(kwargs or {})
    if not pretrained:
        tag = None
    want: bool | str = tag if tag else bool(pretrained)
    model = call_create(spec, num_classes, want, kwargs)
    attach_build_info(model, spec, tag=tag, num_classes=num_classes, kwargs=kwargs)
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
        raise ModelBuildError(f"{where} ({args}): {type(exc).__name__}: {exc}") from exc
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
    """Record on ``model`` how to rebuild it: ``model.zoo_build`` and ``model.zoo_input_config``
    (the spec's config for ``tag``, unless the plugin's ``create`` set an :class:`InputConfig`
    of its own on the model: the image size of a ViT built with ``img_size=``).

    ``zoo_build`` is ``{"backbone": "plugin:name", "tag": ..., "num_classes": ..., "kwargs":
    {...}}``; saving stores it, loading rebuilds from it, tables use it to find the spec.
    """
    model.zoo_build = {  # type: ignore[assignment]
        "backbone": spec.qualified_name,
        "tag": tag,
        "num_classes": num_classes,
        "kwargs": dict(kwargs),
    }
    own = getattr(model, "zoo_input_config", None)  # a plugin's create may know better
    model.zoo_input_config = (  # type: ignore[assignment]
        own if isinstance(own, InputConfig) else spec.input_config_for(tag)
    )
