"""The public functions: where a call by name meets the process-wide catalog.

Every function ``import zoo`` exports is defined or re-exported here; those that need no
catalog (``unwrap``, ``snapshot``, ``check_frozen``, ``list_saved``, ``remove``,
``classifier_param_names``) come as they are from the floor that holds them.

A process-wide catalog is built on first use (never at import) from the default plugin host;
:func:`reset_catalog` forgets it, for instance after installing a plugin in a notebook. This
module is the only one below the edges (CLI, pytest plugin) that reads it: each public function
takes it here and hands it down, so everything beneath receives the catalog it works with as an
argument (``catalog=``) and can be given another one.
"""

from __future__ import annotations

import functools
import importlib
import inspect as _inspect
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from zoo.core.catalog import current_catalog, get_catalog, reset_catalog, set_catalog
from zoo.core.record import unwrap
from zoo.core.specs import BackboneSpec, PolicySpec
from zoo.errors import PlanError
from zoo.io import peft_format as _peft_format
from zoo.io import persistence as _persistence
from zoo.io import sharing as _sharing
from zoo.io.create import create_model
from zoo.io.store import list_saved, remove
from zoo.plans import adapters as _adapters
from zoo.plans import schedule as _schedule
from zoo.plans.binding import bind
from zoo.plans.freeze import apply_plan, check_frozen, snapshot
from zoo.plans.plan import Addition, Plan
from zoo.tables.build import classifier_param_names, table_for
from zoo.tables.table import ParamTable

if TYPE_CHECKING:
    from torch import nn

    from zoo.adaptation.compare import compare
    from zoo.adaptation.job import adapt
    from zoo.adaptation.predict import predict

__all__ = [
    "ScheduleDriver",
    "adapt",
    "adapters",
    "check_frozen",
    "classifier_param_names",
    "compare",
    "create",
    "current_catalog",
    "export",
    "freeze",
    "get_backbone",
    "get_catalog",
    "get_policy",
    "import_peft",
    "inspect",
    "list_backbones",
    "list_policies",
    "list_saved",
    "load",
    "merge_adapters",
    "params",
    "plan",
    "predict",
    "remove",
    "reset_catalog",
    "save",
    "set_catalog",
    "snapshot",
    "unwrap",
]

F = TypeVar("F", bound=Callable[..., Any])


def _with_process_catalog(function: F) -> F:
    """``function`` (whose last parameter is ``catalog``) called with the process catalog.

    The public function keeps ``function``'s name, docstring and signature, less ``catalog``.
    """

    @functools.wraps(function)
    def public(*args: Any, **kwargs: Any) -> Any:
        return function(*args, catalog=get_catalog(), **kwargs)

    signature = _inspect.signature(function)
    public.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p for p in signature.parameters.values() if p.name != "catalog"]
    )
    del public.__wrapped__  # type: ignore[attr-defined]  # the signature above is the public one
    return public  # type: ignore[return-value]


save = _with_process_catalog(_persistence.save)
load = _with_process_catalog(_sharing.load)
inspect = _with_process_catalog(_persistence.inspect)
export = _with_process_catalog(_sharing.export)


def export_peft(
    model: nn.Module | str | os.PathLike[str],
    folder: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    without_base: bool = False,
) -> Any:
    """``zoo.export(model, folder, format="peft", ...)``: a LoRA model as a PEFT folder (kept
    under its former name; :func:`export` is the public one)."""
    return export(model, folder, format="peft", overwrite=overwrite, without_base=without_base)


import_peft = _with_process_catalog(_peft_format.import_peft)

#: The functions of the jobs, imported on first use: a job imports torch, and listing,
#: specs and plans through this module do not.
_JOBS = {
    "adapt": "zoo.adaptation.job",
    "compare": "zoo.adaptation.compare",
    "predict": "zoo.adaptation.predict",
}


def __getattr__(name: str) -> Any:
    """``adapt``, ``compare`` and ``predict`` (:data:`_JOBS`) with the process catalog."""
    module = _JOBS.get(name)
    if module is None:
        raise AttributeError(f"module 'zoo.api' has no attribute {name!r}")
    public = _with_process_catalog(getattr(importlib.import_module(module), name))
    globals()[name] = public
    return public


def list_backbones(pattern: str | None = None, *, pretrained: bool | None = None) -> list[str]:
    """Qualified backbone names (``plugin:name``) matching an fnmatch ``pattern``.

    ``pretrained=True`` lists each pretrained tag (``timm:resnet50.a1_in1k``); ``False`` only
    architectures without pretrained weights.
    """
    return get_catalog().list_backbones(pattern, pretrained=pretrained)


def list_policies(pattern: str | None = None) -> list[str]:
    """Qualified freeze-policy names (``plugin:name``)."""
    return get_catalog().list_policies(pattern)


def get_backbone(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` a name resolves to (a ``.tag`` suffix is accepted)."""
    return get_catalog().backbone(name)[0]


def get_policy(name: str) -> PolicySpec:
    """The :class:`PolicySpec` a name resolves to."""
    return get_catalog().policy(name)


def create(
    name: str,
    *,
    num_classes: int | None = None,
    pretrained: bool = False,
    weights: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build backbone ``name`` through its plugin.

    ``num_classes`` replaces the head (``0`` removes it, ``None`` keeps the default).
    ``pretrained=True`` loads the default pretrained weights, or those of the tag in the name
    (``"resnet50.a1_in1k"``); without network or cache it fails fast with
    :class:`~zoo.WeightsUnavailableError`. Without ``pretrained=True`` a tag is ignored: no
    weights are loaded and the architecture's defaults apply.

    ``weights=`` loads a local ``.safetensors`` file instead (a zoo-saved model or a plain
    state dict); tensors of a classifier whose shape no longer fits ``num_classes`` are
    skipped, everything else must match.

    A plugin whose ``create`` raises (other than a :class:`~zoo.ZooError`, which passes
    unchanged) or returns something that is not an ``nn.Module`` gives a
    :class:`~zoo.errors.ModelBuildError` naming the plugin and the backbone.
    """

    return create_model(
        get_catalog(),
        name,
        num_classes=num_classes,
        pretrained=pretrained,
        weights=weights,
        **kwargs,
    )


def params(model_or_name: nn.Module | str, **create_kwargs: Any) -> ParamTable:
    """The parameter table of a model, or of a backbone name built on the ``meta`` device.

    Given a name (``"timm:resnet18"``, or a bare name when unique) the backbone is built on the
    ``meta`` device: no weights are allocated and nothing is downloaded; ``create_kwargs``
    (``num_classes=``, architecture arguments) are passed to its ``create``. Given a model, its
    ``trainable`` column follows ``requires_grad``. Groups come from the first plugin whose
    ``zoo_param_groups`` answers validly (timm's ``group_matcher`` last), else a generic split
    of the module tree; the head is always ``model.get_classifier()``'s parameters, at
    ``table.max_depth``. A wrapped model (``torch.compile``, DDP) is described as the model it
    wraps (:func:`unwrap`). See ``docs/parameter-table.md``.
    """
    return table_for(model_or_name, catalog=get_catalog(), **create_kwargs)


def plan(
    model_or_name: nn.Module | str | ParamTable,
    policy: str | PolicySpec,
    /,
    *,
    epoch: int | None = None,
    **args: Any,
) -> Plan:
    """Compute the plan of ``policy`` for a model, a backbone name or a table; touches nothing.

    ``policy`` is a name (``"freeze-to"``, ``"zoo:freeze-to"``), the CLI form with arguments
    (``"freeze-to:depth=3"``) or a :class:`~zoo.PolicySpec`; ``args`` are the policy's keyword
    arguments (``zoo.plan(model, "freeze-to", depth=3)``). A name is described on the ``meta``
    device. ``epoch`` selects the epoch of a schedule policy (``gradual``; default 0).

    Raises :class:`~zoo.UnknownNameError` (with close names) for an unknown policy,
    :class:`~zoo.PolicyArgumentError` for a bad argument and :class:`~zoo.PlanError` when the
    policy returns something unusable.
    """
    catalog = get_catalog()
    bound = bind(policy, args, catalog)
    if isinstance(model_or_name, ParamTable):
        table = model_or_name
    else:
        table = table_for(model_or_name, catalog=catalog)
    return bound.run(table, epoch=epoch)


def freeze(
    model: nn.Module,
    policy: str | PolicySpec | Plan,
    /,
    *,
    epoch: int | None = None,
    **args: Any,
) -> Plan:
    """Compute the plan of ``policy`` for ``model`` and apply it; returns the plan.

    ``policy`` is a policy name or CLI form (``"freeze-to:depth=3"``) with keyword ``args``, or
    a :class:`~zoo.Plan` to apply as is. Afterwards ``requires_grad`` says what trains, norm
    layers keep their mode through ``model.train()``, ``model.zoo.plan`` is the plan, and
    ``plan.param_groups(model, lr=...)`` gives the optimizer groups. An adapter policy
    (``"lora:rank=8"``, ``"ssf"``, ``"vpt"``) first injects its adapters, which train with the
    head while the rest is frozen. A wrapped model (``torch.compile``, DDP) has the plan applied
    to the model it wraps (:func:`unwrap`).
    """
    if isinstance(policy, Plan):
        if epoch is not None or args:
            raise PlanError("a Plan is applied as is: it takes no epoch or policy arguments")
        return apply_plan(model, policy, catalog=get_catalog() if policy.additions else None)
    return apply_plan(model, plan(model, policy, epoch=epoch, **args))


def adapters(model: nn.Module) -> list[Addition]:
    """The adapters injected into ``model`` (by an adapter policy), as :class:`~zoo.Addition`
    records in model order; empty for a plain model."""
    return _adapters.adapters(model)


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every adapter of ``model`` into its target's weights and remove it; returns ``model``.

    LoRA and SSF merge exactly (outputs equal within float rounding); the merged model has no
    adapter modules or hooks and the state-dict keys of its base. A model with an adapter that
    cannot merge (VPT) raises :class:`~zoo.AdapterMergeError` before anything changes.
    """
    return _adapters.merge_adapters(model)


class ScheduleDriver(_schedule.ScheduleDriver):
    __doc__ = _schedule.ScheduleDriver.__doc__

    def __init__(
        self,
        model: nn.Module,
        policy: str | PolicySpec,
        /,
        *,
        table: ParamTable | None = None,
        **args: Any,
    ) -> None:
        catalog = get_catalog()
        bound = bind(policy, args, catalog)
        super().__init__(
            model, bound, table=table if table is not None else table_for(model, catalog=catalog)
        )
