"""What zoo needs to know per torchvision model family, without building a model.

A family is the torchvision module that defines the builder (``resnet`` for ``resnet50`` and
``wide_resnet50_2``). For each one: the classifier module(s), as dotted paths, whose output
size is the number of classes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

#: Classifier modules per family; the first is the main one, others are auxiliary heads.
HEADS: dict[str, tuple[str, ...]] = {
    "alexnet": ("classifier.6",),
    "convnext": ("classifier.2",),
    "densenet": ("classifier",),
    "efficientnet": ("classifier.1",),
    "googlenet": ("fc", "aux1.fc2", "aux2.fc2"),
    "inception": ("fc", "AuxLogits.fc"),
    "maxvit": ("classifier.5",),
    "mnasnet": ("classifier.1",),
    "mobilenetv2": ("classifier.1",),
    "mobilenetv3": ("classifier.3",),
    "regnet": ("fc",),
    "resnet": ("fc",),
    "shufflenetv2": ("fc",),
    "squeezenet": ("classifier.1",),
    "swin_transformer": ("head",),
    "vgg": ("classifier.6",),
    "vision_transformer": ("heads.head",),
}


def family_of(model_name: str) -> str:
    """The family of a torchvision model name: the module of its builder (``"resnet"``)."""
    import torchvision.models as tvm

    return tvm.get_model_builder(model_name).__module__.rpartition(".")[2]


def head_paths(model: nn.Module, family: str) -> list[str]:
    """The classifier module paths present in ``model`` (the last ``nn.Linear`` if unknown)."""
    from torch import nn

    modules = dict(model.named_modules())
    known = [p for p in HEADS.get(family, ()) if modules.get(p) is not None]
    if known:
        return known
    linears = [path for path, module in modules.items() if isinstance(module, nn.Linear)]
    return linears[-1:]


def replace_heads(model: nn.Module, family: str, num_classes: int) -> None:
    """Give ``model`` fresh classifier(s) with ``num_classes`` outputs (``0``: no classifier).

    A removed classifier becomes ``nn.Identity``, so the model returns its pooled features.
    New layers live on the device and dtype of the ones they replace.
    """
    from torch import nn

    for path in head_paths(model, family):
        parent_path, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        old = getattr(parent, attr)
        new: nn.Module
        if num_classes == 0:
            new = nn.Identity()
        elif isinstance(old, nn.Linear):
            new = nn.Linear(
                old.in_features,
                num_classes,
                bias=old.bias is not None,
                device=old.weight.device,
                dtype=old.weight.dtype,
            )
        elif isinstance(old, nn.Conv2d):
            new = nn.Conv2d(
                old.in_channels,
                num_classes,
                kernel_size=old.kernel_size,
                stride=old.stride,
                bias=old.bias is not None,
                device=old.weight.device,
                dtype=old.weight.dtype,
            )
        else:
            from zoo.errors import ZooError

            raise ZooError(
                f"cannot resize the classifier {path!r} ({type(old).__name__}) of this "
                f"torchvision {family} model; build it with num_classes=None"
            )
        setattr(parent, attr, new)
