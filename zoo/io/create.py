"""Building a backbone by name with optional weights: the body of ``zoo.create``.

It resolves the name in the catalog it is given, builds through :func:`zoo.core.build.build`,
records the base a delta save will refer to, and loads a local ``.safetensors`` file when asked;
:func:`timm_folder_model` builds a model from a timm folder (a Hub repository timm wrote).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.core import checks
from zoo.core.build import build
from zoo.core.record import BuildArgs
from zoo.core.specs import InputConfig
from zoo.errors import CorruptFileError, SpecError, UnknownNameError, ZooError
from zoo.io.build_args import check_saved_kwargs
from zoo.io.metadata import MAX_CLASSES, class_names
from zoo.io.persistence import file_state
from zoo.io.rebuild import check_pretrained_size
from zoo.io.trust import file_in, read_json_in

if TYPE_CHECKING:
    from torch import nn

    from zoo.core.catalog import Catalog
    from zoo.core.specs import BackboneSpec


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


#: The largest ``config.json`` of a timm folder read (label names of many classes included).
MAX_TIMM_CONFIG_BYTES = 16 << 20
#: The input-config fields of a timm ``pretrained_cfg`` (:class:`~zoo.InputConfig`'s).
_INPUT_FIELDS = ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")


@dataclass(frozen=True)
class TimmFolder:
    """What a timm folder's ``config.json`` says (checked) and its weights file."""

    spec: BackboneSpec
    kwargs: dict[str, Any]
    num_classes: int | None
    classes: list[str] | None
    input_config: InputConfig
    weights: Path


def read_timm_folder(folder: Path, *, catalog: Catalog) -> TimmFolder:
    """A timm folder (``config.json`` + ``model.safetensors``, the layout timm's
    ``push_to_hf_hub`` writes), checked: the ``timm:`` backbone its ``architecture`` names, its
    ``model_args``, ``num_classes``, ``label_names`` (the classes) and ``pretrained_cfg`` (the
    input config).

    The folder is untrusted (:mod:`zoo.io.trust`): the config is bounded JSON read without
    following links, its arguments are checked as a saved file's (and may not make the model
    much larger than the architecture's default); a bad value raises
    :class:`~zoo.CorruptFileError` naming the file and the field.
    """
    source = str(folder / "config.json")
    config = read_json_in(
        folder, "config.json", max_bytes=MAX_TIMM_CONFIG_BYTES, what="a timm config"
    )
    try:
        checks.json_object(config, "config.json")
        arch = checks.name(config.get("architecture"), "architecture")
        outputs = config.get("num_classes")
        if outputs is not None:
            checks.integer(outputs, "num_classes", 0, MAX_CLASSES)
        args = dict(checks.json_object(config.get("model_args") or {}, "model_args"))
        args.pop("num_classes", None)  # timm records it there too; the head is num_classes=
        labels = config.get("label_names")
        classes = class_names(labels) if isinstance(labels, list) else None
        pretrained = checks.json_object(config.get("pretrained_cfg") or {}, "pretrained_cfg")
        input_config = InputConfig.from_dict(
            {k: pretrained[k] for k in _INPUT_FIELDS if k in pretrained}
        )
    except (checks.Invalid, SpecError) as exc:
        raise CorruptFileError(f"{source}: {exc}") from None
    try:
        spec, _tag = catalog.backbone(f"timm:{arch}")
    except UnknownNameError as exc:
        raise UnknownNameError(
            f"timm architecture (from {source})", arch, exc.suggestions
        ) from None
    kwargs = check_saved_kwargs(spec, args, source=source, key="model_args")
    check_pretrained_size(spec, kwargs, source=source, key="model_args")
    weights = file_in(folder, "model.safetensors", what="a timm folder")
    return TimmFolder(spec, kwargs, outputs, classes, input_config, weights)


def timm_folder_model(folder: Path, *, catalog: Catalog) -> nn.Module:
    """The model of a timm folder (:func:`read_timm_folder`): its backbone built with its
    arguments and weights (``weights=``), its classes and input config recorded."""
    found = read_timm_folder(folder, catalog=catalog)
    model = create_model(
        catalog,
        found.spec.qualified_name,
        num_classes=found.num_classes,
        weights=found.weights,
        **found.kwargs,
    )
    if found.classes is not None and found.num_classes == len(found.classes):
        model.zoo.classes = found.classes
    model.zoo.input_config = found.input_config
    return model
