"""The one record zoo keeps on a model, ``model.zoo``, and :func:`unwrap`.

A model zoo built (``zoo.create``), loaded (``zoo.load``) or adapted carries a
:class:`ModelRecord`: how to rebuild it, the weights it started from, how to prepare its
images, its class names, its plan, and what its run recorded. Saving writes it into the
file's metadata and loading puts it back. A wrapper (``torch.compile``, DDP) carries no record
of its own: :func:`record_of` reads the record of the model it wraps.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from zoo.core.specs import InputConfig

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class BuildArgs:
    """The ``zoo.create`` arguments a model is rebuilt from (the file key ``zoo.build``):
    ``backbone`` (``plugin:name``), ``num_classes``, the architecture ``kwargs`` and the
    pretrained ``tag`` its weights came from (None without pretrained weights)."""

    backbone: str
    num_classes: int | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    tag: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone,
            "tag": self.tag,
            "num_classes": self.num_classes,
            "kwargs": dict(self.kwargs),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BuildArgs:
        """The arguments of a ``zoo.build`` mapping already checked (other keys are ignored)."""
        return cls(
            backbone=str(data["backbone"]),
            num_classes=data.get("num_classes"),
            kwargs=dict(data.get("kwargs") or {}),
            tag=data.get("tag"),
        )


@dataclass
class ModelRecord:
    """What zoo knows about a model, kept on it as ``model.zoo`` (see :func:`record_of`).

    - ``build``: how to rebuild it (:class:`BuildArgs`); None for a module zoo did not build
      and no plugin identified, which zoo can train and predict with but not save.
    - ``input_config``: how its images are prepared (a :class:`~zoo.InputConfig`).
    - ``classes``: the names of its outputs, in index order, or None.
    - ``plan``: the :class:`~zoo.Plan` applied to it (``zoo.freeze``, training, loading), or None.
    - ``base``: the weights it started from, which a delta save refers to:
      ``{"kind": "pretrained" | "file" | "store", "ref": ..., "sha256": ...}``, or None for
      random weights.
    - ``training``, ``compare``: what ``zoo.adapt`` / ``zoo.compare`` recorded of its run (saved
      as ``zoo.training`` / ``zoo.compare``), or None.
    - ``metadata``: the raw metadata (str -> str) of the file it was loaded from; empty otherwise.
    - ``notes``: what was unusual in building it (a constructor that could not run on the
      ``meta`` device as it is); tables show them. Never saved.
    """

    build: BuildArgs | None = None
    input_config: InputConfig | None = None
    classes: list[str] | None = None
    plan: Any = None  # a zoo.Plan: plans sit above the core, which may not import them
    base: Mapping[str, Any] | None = None
    training: Mapping[str, Any] | None = None
    compare: Mapping[str, Any] | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside the wrappers around ``model``: ``torch.compile``'s ``OptimizedModule``
    (``_orig_mod``), ``DistributedDataParallel`` and ``DataParallel`` (``.module``), nested in
    any order. A model sharded with FSDP2's ``fully_shard`` is its own model (its class is
    changed in place), as is any other module."""
    from torch import nn

    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
            continue
        dynamo = sys.modules.get("torch._dynamo.eval_frame")  # loaded once anything compiled
        if dynamo is not None and isinstance(model, dynamo.OptimizedModule):
            model = model._orig_mod
            continue
        return model


def record_of(model: nn.Module) -> ModelRecord | None:
    """The record on ``model`` (seen through its wrappers, :func:`unwrap`), or None."""
    record = getattr(unwrap(model), "zoo", None)
    return record if isinstance(record, ModelRecord) else None


def backbone_of(model: nn.Module) -> str | None:
    """The backbone (``plugin:name``) ``model``'s record names; None when zoo did not build it."""
    record = record_of(model)
    return record.build.backbone if record is not None and record.build is not None else None


def attach_record(model: nn.Module) -> ModelRecord:
    """The record on ``model`` (seen through its wrappers), a new empty one attached if it has
    none: for a module zoo did not build, which still gets a plan, classes, an input config."""
    inner = unwrap(model)
    record = record_of(inner)
    if record is None:
        record = ModelRecord()
        inner.zoo = record  # type: ignore[assignment]
    return record
