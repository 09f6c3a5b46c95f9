"""The zoo plugin ``torchvision``: hook implementations (entry point ``zoo_torchvision.plugin``).

- ``zoo_register_backbones``: one spec per torchvision classification model; listing reads
  torchvision's registry and weights enums and builds nothing.
- ``zoo_param_groups``: stem, stages, neck, head for the models this plugin built.
- ``zoo_extra_metadata``: torchvision's version and the weights a model started from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from zoo import hookimpl

if TYPE_CHECKING:
    from torch import nn
    from zoo import BackboneSpec, ParamGroup
    from zoo.hookspecs import RegisterBackbone

PLUGIN_NAME = "torchvision"


def _ours(backbone: BackboneSpec | None) -> bool:
    return backbone is not None and backbone.plugin == PLUGIN_NAME


@hookimpl
def zoo_register_backbones(register: RegisterBackbone) -> None:
    from zoo_torchvision.registry import backbone_specs

    for spec in backbone_specs():
        register(spec)


@hookimpl
def zoo_param_groups(
    model: nn.Module, backbone: BackboneSpec | None
) -> Sequence[ParamGroup] | None:
    if not _ours(backbone):
        return None
    from zoo_torchvision.groups import torchvision_param_groups

    return torchvision_param_groups(model, backbone.family or None)


@hookimpl
def zoo_extra_metadata(model: nn.Module, backbone: BackboneSpec | None) -> Mapping[str, str] | None:
    if not _ours(backbone):
        return None
    import torchvision

    extra = {"torchvision.version": torchvision.__version__}
    started_from = getattr(model, "zoo_torchvision_weights", None)
    if started_from:
        extra["torchvision.weights"] = str(started_from)
    return extra
