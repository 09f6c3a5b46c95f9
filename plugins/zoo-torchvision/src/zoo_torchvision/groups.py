"""Parameter groups of torchvision models: ``stem``, ``stage.1`` … ``stage.K``, ``neck``, ``head``.

Each family has a few rules: a regular expression on the parameter name and the group key it
gives (``STEM``, a stage number, ``NECK``, ``HEAD``, or a function of the match). The first
matching rule wins; a parameter no rule matches joins the group of the parameter before it in
module order. Stages are renumbered ``1..K`` in order, so only their relative order matters.
The names and modules are read, never the values: this works on the ``meta`` device.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from zoo import ParamGroup

if TYPE_CHECKING:
    from torch import nn

STEM = 0
NECK = 10_000
HEAD = 20_000

Key = int | Callable[[re.Match[str]], int]
Rules = list[tuple[str, Key]]


def _index(offset: int = 0) -> Callable[[re.Match[str]], int]:
    return lambda match: int(match[1]) + offset


def _pairs(match: re.Match[str]) -> int:
    """features.1 → 1, features.2 (downsample) + features.3 → 2, … (ConvNeXt, Swin)."""
    return int(match[1]) // 2 + 1


def _mnasnet(match: re.Match[str]) -> int:
    index = int(match[1])
    return STEM if index < 8 else min(index - 7, 7)


_STATIC: dict[str, Rules] = {
    "resnet": [(r"(conv1|bn1)\.", STEM), (r"layer(\d+)\.", _index()), (r"fc\.", HEAD)],
    "regnet": [
        (r"stem\.", STEM),
        (r"trunk_output\.block(\d+)\.", _index()),
        (r"fc\.", HEAD),
    ],
    "convnext": [
        (r"features\.0\.", STEM),
        (r"features\.(\d+)\.", _pairs),
        (r"classifier\.2\.", HEAD),
        (r"classifier\.", NECK),
    ],
    "swin_transformer": [
        (r"features\.0\.", STEM),
        (r"features\.(\d+)\.", _pairs),
        (r"norm\.", NECK),
        (r"head\.", HEAD),
    ],
    "vision_transformer": [
        (r"(class_token$|conv_proj\.|encoder\.pos_embedding$)", STEM),
        (r"encoder\.layers\.encoder_layer_(\d+)\.", _index(1)),
        (r"encoder\.ln\.", NECK),
        (r"heads\.head\.", HEAD),
        (r"heads\.", NECK),
    ],
    "maxvit": [
        (r"stem\.", STEM),
        (r"blocks\.(\d+)\.", _index(1)),
        (r"classifier\.5\.", HEAD),
        (r"classifier\.", NECK),
    ],
    "efficientnet": [
        (r"features\.0\.", STEM),
        (r"features\.(\d+)\.", _index()),
        (r"classifier\.", HEAD),
    ],
    "mobilenetv2": [
        (r"features\.0\.", STEM),
        (r"features\.(\d+)\.", _index()),
        (r"classifier\.", HEAD),
    ],
    "mobilenetv3": [
        (r"features\.0\.", STEM),
        (r"features\.(\d+)\.", _index()),
        (r"classifier\.3\.", HEAD),
        (r"classifier\.", NECK),
    ],
    "mnasnet": [(r"layers\.(\d+)\.", _mnasnet), (r"classifier\.", HEAD)],
    "densenet": [
        (r"features\.(conv0|norm0)\.", STEM),
        (r"features\.(?:denseblock|transition)(\d+)\.", _index()),
        (r"features\.norm5\.", NECK),
        (r"classifier\.", HEAD),
    ],
    "shufflenetv2": [
        (r"conv1\.", STEM),
        (r"stage(\d+)\.", _index(-1)),
        (r"conv5\.", 4),
        (r"fc\.", HEAD),
    ],
    "googlenet": [
        (r"conv[123]\.", STEM),
        (r"inception3", 1),
        (r"inception4", 2),
        (r"inception5", 3),
        (r"(aux1|aux2|fc)\.", HEAD),
    ],
    "inception": [
        (r"Conv2d_", STEM),
        (r"Mixed_5", 1),
        (r"Mixed_6", 2),
        (r"Mixed_7", 3),
        (r"(AuxLogits|fc)\.", HEAD),
    ],
}

#: Families whose ``features`` is split into stages at each max-pooling layer.
_POOLED_HEADS = {"vgg": "classifier.6.", "alexnet": "classifier.6.", "squeezenet": "classifier."}

#: Model class name → family, for a model whose spec does not say.
CLASS_FAMILIES = {
    "AlexNet": "alexnet",
    "ConvNeXt": "convnext",
    "DenseNet": "densenet",
    "EfficientNet": "efficientnet",
    "GoogLeNet": "googlenet",
    "Inception3": "inception",
    "MaxVit": "maxvit",
    "MNASNet": "mnasnet",
    "MobileNetV2": "mobilenetv2",
    "MobileNetV3": "mobilenetv3",
    "RegNet": "regnet",
    "ResNet": "resnet",
    "ShuffleNetV2": "shufflenetv2",
    "SqueezeNet": "squeezenet",
    "SwinTransformer": "swin_transformer",
    "VGG": "vgg",
    "VisionTransformer": "vision_transformer",
}

FAMILIES = tuple(sorted({*_STATIC, *_POOLED_HEADS}))


def _pooled_rules(model: nn.Module, head: str) -> Rules:
    """Stem = the layers before the first max-pool; each pool starts the next stage."""
    from torch import nn

    rules: Rules = []
    stage = STEM
    for index, child in model.features.named_children():
        if isinstance(child, nn.MaxPool2d):
            stage += 1
        rules.append((rf"features\.{index}\.", stage))
    rules += [(re.escape(head), HEAD), (r"classifier\.", NECK)]
    return rules


def rules_for(model: nn.Module, family: str | None) -> Rules | None:
    """The grouping rules of ``family`` (or of the model's class), None if unknown."""
    family = family or CLASS_FAMILIES.get(type(model).__name__)
    if family in _POOLED_HEADS and hasattr(model, "features"):
        return _pooled_rules(model, _POOLED_HEADS[family])
    return _STATIC.get(family or "")


def key_of(name: str, rules: Rules) -> int | None:
    for pattern, key in rules:
        match = re.match(pattern, name)
        if match:
            return key(match) if callable(key) else key
    return None


def torchvision_param_groups(model: nn.Module, family: str | None) -> list[ParamGroup] | None:
    """Ordered groups of a torchvision model; None for a family without rules."""
    rules = rules_for(model, family)
    if rules is None:
        return None
    members: dict[int, list[str]] = {}
    previous = STEM
    for name, _ in model.named_parameters():
        key = key_of(name, rules)
        previous = previous if key is None else key
        members.setdefault(previous, []).append(name)
    groups: list[ParamGroup] = []
    stage = 0
    for key in sorted(members):
        if key == STEM:
            label = "stem"
        elif key == NECK:
            label = "neck"
        elif key == HEAD:
            label = "head"
        else:
            stage += 1
            label = f"stage.{stage}"
        groups.append(ParamGroup(label, members[key]))
    return groups
