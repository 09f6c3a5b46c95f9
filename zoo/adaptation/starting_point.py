"""Where an adaptation starts: a backbone name, a saved model, a file or a module.

:func:`check_start` and :func:`check_target` fail fast, before any data is read;
:func:`build_model` then gives the model to adapt a classifier for the run's classes (a fresh
backbone, a saved model re-used or given a new head, or the caller's module with its head
reset).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.adaptation.checkpoint import seed_python_rngs
from zoo.core.build import attach_build_info
from zoo.core.record import attach_record, record_of, unwrap
from zoo.core.specs import InputConfig
from zoo.errors import (
    AdaptArgumentError,
    MissingBaseError,
    UnknownNameError,
    WeightsMismatchError,
    WeightsUnavailableError,
    ZooError,
)
from zoo.io import store
from zoo.io.create import create_model
from zoo.io.fileformat import read_header
from zoo.io.metadata import ZooMetadata, is_zoo_metadata
from zoo.io.persistence import check_free, load, resolve_target
from zoo.io.store import is_path_target, list_saved
from zoo.tables.build import classifier_param_names

if TYPE_CHECKING:
    from torch import nn

    from zoo.core.catalog import Catalog
    from zoo.core.specs import BackboneSpec


def _store_path(name: str) -> Path | None:
    """The file of store entry ``name`` when it exists (None otherwise, or for invalid names)."""

    try:
        path = store.model_file(name)
    except ZooError:
        return None
    return path if path.is_file() else None


def check_target(name: str | os.PathLike[str] | None, overwrite: bool) -> None:
    """Fail before training when ``name`` is invalid or taken (and ``overwrite`` is False)."""
    if name is None:
        return

    check_free(resolve_target(name), overwrite)


def resolve_weights(weights: str | os.PathLike[str] | None) -> Path | None:
    if weights is None:
        return None
    path = Path(weights).expanduser()
    if path.is_file():
        return path
    stored = _store_path(str(weights)) if isinstance(weights, str) else None
    if stored is not None:
        return stored
    raise ZooError(
        f"weights {str(weights)!r} are neither a file nor a model in the store (see `zoo models`)"
    )


def check_start(backbone_or_model: Any, catalog: Catalog) -> str:
    """Check (cheaply, before data is read) that a starting point resolves; describe it."""
    from torch import nn

    if isinstance(backbone_or_model, nn.Module):
        return f"module {type(backbone_or_model).__name__}"
    if not isinstance(backbone_or_model, (str, os.PathLike)):
        raise ZooError(
            "adapt() starts from a backbone name, a saved model's name, a .safetensors file or "
            f"an nn.Module, not {type(backbone_or_model).__name__}"
        )

    text = str(backbone_or_model)
    if is_path_target(backbone_or_model):
        if Path(text).expanduser().is_file():
            return f"file {text}"
        raise ZooError(f"model file {text!r} does not exist")
    if _store_path(text) is not None:
        return f"saved model {text!r}"

    try:
        spec, _ = catalog.backbone(text)
    except UnknownNameError as exc:
        raise UnknownNameError(
            "backbone or saved model",
            text,
            [*catalog.backbones.by_qualified, *_saved_names()],
        ) from exc
    return f"backbone {spec.qualified_name}"


@dataclass(frozen=True)
class StartWeights:
    """Where the starting weights of an adapt run come from.

    ``pretrained``/``weights`` are what the backbone is built with; ``random`` is True for
    random initialisation and ``explicit`` when the caller asked for it (``scratch=True`` or
    ``pretrained=False``); ``description`` is what the summary prints.
    """

    pretrained: bool | str = False
    weights: Path | None = None
    random: bool = False
    explicit: bool = False
    description: str = ""


def choose_weights(
    backbone_or_model: Any,
    start_desc: str,
    *,
    pretrained: bool | str | None,
    weights: str | os.PathLike[str] | None,
    scratch: bool,
    catalog: Catalog,
) -> StartWeights:
    """Decide (before any data is read) which weights an adapt run starts from.

    A backbone name starts from its pretrained weights unless ``weights`` (a file or a saved
    model) or ``scratch=True`` / ``pretrained=False`` (random init) say otherwise; a backbone
    without pretrained weights starts from random weights. A saved model, a file or a module
    starts from its own weights, and the three options are refused there.
    """

    if scratch and (weights is not None or pretrained):
        raise AdaptArgumentError(
            "scratch",
            scratch,
            "False when pretrained= or weights= is given (scratch starts from random weights; "
            "pass only one of scratch, pretrained and weights)",
        )
    if not start_desc.startswith("backbone"):
        if weights is not None or pretrained is not None or scratch:
            raise ZooError(
                f"pretrained=, weights= and scratch= (--pretrained, --weights, --scratch) apply "
                f"when starting from a backbone name; this run starts from the {start_desc}, "
                "whose weights are used as they are"
            )
        return StartWeights(description=start_desc)  # its own weights
    spec, tag = catalog.backbone(str(backbone_or_model))
    if weights is not None:
        path = resolve_weights(weights)
        shown = f"saved model {weights!r}" if path != Path(weights).expanduser() else str(path)
        return StartWeights(weights=path, description=f"weights of {shown}")
    if scratch or pretrained is False:
        how = "scratch=True" if scratch else "pretrained=False"
        return StartWeights(
            random=True, explicit=True, description=f"random weights (asked for: {how})"
        )
    if not spec.pretrained_tags:
        return StartWeights(
            random=True,
            description=f"random weights ({spec.qualified_name} has no pretrained weights)",
        )
    chosen = pretrained if isinstance(pretrained, str) else True
    shown_tag = chosen if isinstance(chosen, str) else (tag or spec.pretrained_tags[0])
    return StartWeights(
        pretrained=chosen,
        description=f"pretrained weights {spec.qualified_name}.{shown_tag}"
        + ("" if pretrained else " (default; scratch=True / --scratch for random init)"),
    )


def _saved_names() -> list[str]:
    try:
        return [getattr(e, "name", str(e)) for e in list_saved()]
    except Exception:  # listing is only for suggestions
        return []


def build_model(
    backbone_or_model: Any,
    classes: Sequence[str],
    *,
    pretrained: bool | str,
    weights: Path | None,
    kwargs: Mapping[str, Any],
    catalog: Catalog,
) -> nn.Module:
    """The model to adapt, with a classifier for ``classes``; a wrapped module
    (``torch.compile``, DDP) is adapted as the model it wraps."""
    from torch import nn

    if isinstance(backbone_or_model, nn.Module):
        model = unwrap(backbone_or_model)
        _ensure_build_info(model, catalog)
        _fit_head(model, len(classes))
        return model
    text = str(backbone_or_model)
    if is_path_target(backbone_or_model) or _store_path(text) is not None:
        saved = load(backbone_or_model, trainable=True, catalog=catalog)
        old = saved.zoo.classes
        if (old is not None and list(old) == list(classes)) or (
            old is None and _num_outputs(saved) == len(classes)
        ):
            return saved
        return _with_new_head(saved, len(classes), catalog)
    try:
        model = create_model(
            catalog,
            text,
            num_classes=len(classes),
            pretrained=pretrained,
            weights=weights,
            **dict(kwargs),
        )
    except WeightsUnavailableError as exc:
        raise WeightsUnavailableError(
            f"{exc} To adapt without them: --weights FILE|NAME (weights=) starts from a file or "
            "a saved model, --scratch (scratch=True) from random weights."
        ) from None
    if weights is not None:
        saved = saved_input_config(weights)
        if saved is not None:  # the input config the weights were trained with
            model.zoo.input_config = saved
    return model


def check_savable(model: nn.Module, *, name: str | None, delta: bool | None) -> None:
    """Refuse, before training, a save under ``name`` that could not happen afterwards."""
    record = record_of(model)
    if delta and name is not None and not (record is not None and record.base):
        raise MissingBaseError(
            "delta=True saves only what differs from recorded starting weights, and this "
            "model has none (random weights); start from pretrained weights, weights=FILE "
            "or a saved model, or save in full (delta=False)"
        )
    if name is not None and (record is None or record.build is None):
        raise ZooError(
            f"cannot save this {type(model).__name__} as {str(name)!r}: zoo only saves models "
            "it can rebuild (built by zoo.create, loaded by zoo.load, or a timm model); "
            "start from a backbone name, or pass name=None and save the weights yourself"
        )


def prepare_model(
    backbone_or_model: Any,
    classes: Sequence[str],
    start: StartWeights,
    *,
    seed: int,
    model_kwargs: Mapping[str, Any] | None,
    image_size: int | Sequence[int] | None,
    input_config: Mapping[str, Any] | None,
    name: str | None,
    delta: bool | None,
    device: Any,
    catalog: Catalog,
) -> tuple[nn.Module, InputConfig]:
    """The model a run trains, and its input config: the random generators seeded, the model
    built from ``start`` with a classifier for ``classes`` (:func:`build_model`), a save under
    ``name`` checked (:func:`check_savable`), the input config with ``image_size`` and
    ``input_config`` applied, the class names attached, and the model on ``device``. What
    ``zoo.adapt`` and ``zoo.compare`` both do before they plan anything."""
    import torch

    from zoo.adaptation.data import input_config_of, with_overrides

    torch.manual_seed(seed)
    seed_python_rngs(seed)  # timm's augmentations draw from `random`
    model = build_model(
        backbone_or_model,
        classes,
        pretrained=start.pretrained,
        weights=start.weights,
        kwargs=model_kwargs or {},
        catalog=catalog,
    )
    check_savable(model, name=name, delta=delta)
    config = with_overrides(input_config_of(model), image_size=image_size, overrides=input_config)
    record = attach_record(model)
    record.input_config = config
    record.classes = list(classes)
    model.to(device)
    return model, config


def saved_input_config(path: Path) -> InputConfig | None:
    """The input config a zoo-saved file records (an :class:`~zoo.InputConfig`), else None."""
    try:
        header = read_header(path)
        if not is_zoo_metadata(header.metadata):
            return None
        meta = ZooMetadata.parse(header.metadata, source=str(path))
        return InputConfig.from_dict(meta.input_config) if meta.input_config else None
    except ZooError:
        return None


def _with_new_head(saved: nn.Module, num_classes: int, catalog: Catalog) -> nn.Module:
    """A copy of a loaded model with a freshly initialised classifier of ``num_classes``.

    Everything but the classifier (found with ``get_classifier`` or as the last linear layer)
    is copied; a saved model trained for other classes keeps its features, not its head.
    """

    record = saved.zoo
    name = record.build.backbone  # no tag: a tag names weights, these come from the saved model
    # the kwargs were checked when the model was loaded (zoo.io.build_args.check_saved_kwargs)
    fresh = create_model(catalog, name, num_classes=num_classes, **dict(record.build.kwargs))
    state = saved.state_dict()
    own = fresh.state_dict()
    head = set(classifier_param_names(fresh))
    skip = {k for k in own if k in head or (k in state and state[k].shape != own[k].shape)}
    missing = [k for k in own if k not in state and k not in skip]
    if missing:
        raise WeightsMismatchError(
            f"the saved model does not fit a fresh {name}: missing {', '.join(missing[:5])}"
        )
    fresh.load_state_dict(
        {k: v for k, v in state.items() if k in own and k not in skip}, strict=False
    )
    fresh.zoo.input_config = record.input_config
    if record.base:  # provenance: the new model still comes from the saved one
        fresh.zoo.base = dict(record.base)
    return fresh


def _num_outputs(model: nn.Module) -> int | None:
    record = record_of(model)
    if record is not None and record.build is not None and record.build.num_classes:
        return int(record.build.num_classes)
    value = getattr(model, "num_classes", None)
    return int(value) if isinstance(value, int) else None


def _ensure_build_info(model: nn.Module, catalog: Catalog) -> None:
    """Give a model built outside zoo its record with build arguments (so it can be saved) when
    a plugin says which backbone it is (hook ``zoo_identify_model``); its input config is the
    one its own data config gives (timm's), unless it carries the hint ``zoo_input_config``."""
    record = record_of(model)
    if record is not None and record.build is not None:
        return
    spec = identify(model, catalog)
    if spec is None:
        return
    from zoo.adaptation.data import input_config_of

    attach_build_info(
        model,
        spec,
        tag=None,
        num_classes=getattr(model, "num_classes", None),
        kwargs={},
        input_config=input_config_of(model),
    )


def identify(model: nn.Module, catalog: Catalog) -> BackboneSpec | None:
    """The spec of the first plugin answer to ``zoo_identify_model`` that the catalog knows."""
    for _plugin, name in catalog.host.call_each(
        "zoo_identify_model", lambda _plugin: {"model": model}
    ):
        if isinstance(name, str):
            try:
                return catalog.backbone(name)[0]
            except ZooError:
                continue
    return None


def _fit_head(model: nn.Module, num_classes: int) -> None:
    current = _num_outputs(model)
    if current == num_classes:
        return
    reset = getattr(model, "reset_classifier", None)
    if callable(reset):
        reset(num_classes)
        record = record_of(model)
        if record is not None and record.build is not None:
            record.build = replace(record.build, num_classes=num_classes)
    # otherwise checked on the first batch: the logits must have num_classes columns
