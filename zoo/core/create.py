"""Building a model from a spec: the plugin's ``create`` called and checked, and the build info
recorded on the model so that it can be saved, described and rebuilt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zoo.core.record import BuildArgs, ModelRecord
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
    tag is ignored. ``model.zoo.build`` records the tag only when weights were loaded.
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
    input_config: InputConfig | None = None,
) -> ModelRecord:
    """Give a freshly built ``model`` its record, ``model.zoo`` (:class:`ModelRecord`): how to
    rebuild it (saving stores it, loading rebuilds from it, tables use it to find the spec) and
    its input config: ``input_config``, by default the spec's config for ``tag``.

    A plugin's ``create`` may set two *hints* on the model it returns, which win and are then
    removed: ``model.zoo_input_config`` (an :class:`InputConfig`: the image size of a ViT built
    with ``img_size=``) and ``model.zoo_classes`` (a list of class names: the categories of its
    pretrained head). A hint of another type is ignored.
    """
    classes = model.__dict__.pop("zoo_classes", None)
    hint = model.__dict__.pop("zoo_input_config", None)
    if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes):
        classes = None
    if isinstance(hint, InputConfig):
        input_config = hint
    record = ModelRecord(
        build=BuildArgs(spec.qualified_name, num_classes, dict(kwargs), tag),
        input_config=input_config or spec.input_config_for(tag),
        classes=list(classes) if classes is not None else None,
    )
    model.zoo = record  # type: ignore[assignment]
    return record
