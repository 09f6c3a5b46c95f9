"""The backbone specs of torchvision's classification models, read without building any."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator

from zoo import BackboneSpec, InputConfig

from zoo_torchvision import weights as tv_weights
from zoo_torchvision.build import create_torchvision_model
from zoo_torchvision.families import HEADS, family_of

_RST_LINK = re.compile(r"`([^`<]+?)\s*<[^>]*>`_{1,2}")


def summary_of(doc: str | None) -> str:
    """The first sentence of a builder's docstring, without reStructuredText markup."""
    paragraph = (doc or "").strip().split("\n\n", 1)[0]
    text = " ".join(_RST_LINK.sub(r"\1", paragraph).replace("``", "").split())
    return text.rstrip(".")


def model_names() -> list[str]:
    """Every classification model torchvision registers (``torchvision.models`` itself)."""
    import torchvision.models as tvm

    return list(tvm.list_models(module=tvm))


def backbone_spec(model_name: str) -> BackboneSpec:
    """The spec of one model: its weights as tags, their input configs, head and family."""
    import torchvision.models as tvm

    family = family_of(model_name)
    enum = tv_weights.weights_enum(model_name)
    tags = tv_weights.tags(model_name)
    configs = {tag: tv_weights.input_config(enum[tag]) for tag in tags} if enum else {}
    default = configs[tags[0]] if tags else InputConfig(interpolation="bilinear")
    categories = enum[tags[0]].meta.get("categories") if tags else None
    summary = summary_of(tvm.get_model_builder(model_name).__doc__)
    return BackboneSpec(
        name=model_name,
        create=functools.partial(create_torchvision_model, model_name),
        summary=summary or f"torchvision {model_name}",
        pretrained_tags=tags,
        input_config=default,
        tag_input_configs=configs,
        head=",".join(HEADS.get(family, ())) or None,
        num_classes=len(categories) if categories else 1000,
        family=family,
    )


def backbone_specs() -> Iterator[BackboneSpec]:
    for name in model_names():
        yield backbone_spec(name)
