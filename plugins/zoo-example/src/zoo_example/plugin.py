"""The zoo plugin "example": its hooks. pyproject.toml's entry point points at this module."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import zoo

from zoo_example.policies import top_half

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from torch import nn
    from zoo.hookspecs import RegisterBackbone, RegisterPolicy

PLUGIN_NAME = "example"  # the entry point's name in pyproject.toml
SIZES = {"s": (8, 16, 32), "m": (16, 32, 64, 128)}


def create_tinynet(
    size: str, num_classes: int | None = None, pretrained: bool | str = False, **kwargs: Any
) -> nn.Module:
    """Build TinyNet of one size; zoo calls this from ``zoo.create``."""
    if pretrained:
        raise zoo.WeightsUnavailableError(
            f"{PLUGIN_NAME}:tinynet-{size} has no pretrained weights; "
            "use pretrained=False, or weights='file.safetensors' to start from a saved model"
        )
    from zoo_example.tinynet import TinyNet  # torch is imported only when building

    classes = 10 if num_classes is None else num_classes
    return TinyNet(SIZES[size], num_classes=classes, **kwargs)


@zoo.hookimpl
def zoo_register_backbones(register: RegisterBackbone) -> None:
    for size, widths in SIZES.items():
        register(
            zoo.BackboneSpec(
                name=f"tinynet-{size}",
                create=functools.partial(create_tinynet, size),
                summary=f"TinyNet, a small plain-torch CNN (widths {widths})",
                input_config=zoo.InputConfig(
                    input_size=(3, 32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
                ),
                head="head",
                num_classes=10,
                family="tinynet",
            )
        )


@zoo.hookimpl
def zoo_register_policies(register: RegisterPolicy) -> None:
    register(
        zoo.PolicySpec(
            name="top-half",
            plan=top_half,
            summary="train the upper half of the depths (head included), freeze the rest",
        )
    )


@zoo.hookimpl
def zoo_param_groups(
    model: nn.Module, backbone: zoo.BackboneSpec | None
) -> Sequence[zoo.ParamGroup] | None:
    from zoo_example.tinynet import TinyNet

    if not isinstance(model, TinyNet):
        return None  # not ours: let the next plugin answer
    names = [name for name, _ in model.named_parameters()]
    groups = [zoo.ParamGroup("stem", [n for n in names if n.startswith("stem.")])]
    for i in range(len(model.stages)):
        stage = [n for n in names if n.startswith(f"stages.{i}.")]
        groups.append(zoo.ParamGroup(f"stage.{i + 1}", stage))
    head = [n for n in names if n.startswith("head.")]
    if head:
        groups.append(zoo.ParamGroup("head", head))
    return groups


@zoo.hookimpl
def zoo_extra_metadata(
    model: nn.Module, backbone: zoo.BackboneSpec | None
) -> Mapping[str, str] | None:
    from zoo_example.tinynet import TinyNet

    if not isinstance(model, TinyNet):
        return None
    return {f"{PLUGIN_NAME}.widths": ",".join(str(w) for w in model.widths)}
