"""zoo: a model zoo for transfer learning whose backbones and freeze policies are plugins.

The public API is re-exported here and loaded lazily: ``import zoo`` imports neither torch nor
timm, so the command line starts fast. Everything listed in ``__all__`` is documented in
``docs/api.md``: the functions of :mod:`zoo.api`, the data and results they take and return,
and the error base classes (every error is in :mod:`zoo.errors`). Names that left ``__all__``
in issue 20 still resolve here (:data:`_MOVED`), so no import breaks.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from zoo._version import __version__
from zoo.hookspecs import hookimpl

if TYPE_CHECKING:
    from zoo.adaptation.compare import CompareResult
    from zoo.adaptation.history import AdaptCallback, AdaptResult, History
    from zoo.api import (
        ScheduleDriver,
        adapt,
        adapters,
        check_frozen,
        classifier_param_names,
        compare,
        create,
        export,
        freeze,
        get_backbone,
        get_catalog,
        get_policy,
        import_peft,
        inspect,
        list_backbones,
        list_policies,
        list_saved,
        load,
        merge_adapters,
        params,
        plan,
        predict,
        remove,
        reset_catalog,
        save,
        snapshot,
        unwrap,
    )
    from zoo.core.catalog import Catalog
    from zoo.core.record import ModelRecord
    from zoo.core.specs import AdapterSpec, BackboneSpec, InputConfig, ParamGroup, PolicySpec
    from zoo.errors import (
        AdaptArgumentError,
        AdapterError,
        AdapterMergeError,
        AmbiguousNameError,
        BaseMismatchError,
        CheckpointError,
        CorruptFileError,
        DataError,
        FreezeViolationError,
        InvalidNameError,
        LockTimeoutError,
        MissingBaseError,
        ModelBuildError,
        ModelExistsError,
        ModelNotFoundError,
        PlanError,
        PluginError,
        PolicyArgumentError,
        SpecError,
        StoreError,
        TamperedFileError,
        UnknownNameError,
        UnsupportedFormatError,
        WeightsMismatchError,
        WeightsUnavailableError,
        ZooError,
    )
    from zoo.hookspecs import RegisterBackbone, RegisterPolicy, hookspec
    from zoo.io.leaderboard import Leaderboard
    from zoo.plans.adapter_module import Adapter
    from zoo.plans.plan import Addition, NormMode, Plan
    from zoo.tables.table import NormInfo, ParamInfo, ParamTable

#: Where each public name is defined; every function is :mod:`zoo.api`'s.
_PUBLIC: dict[str, str] = {
    # the functions
    **dict.fromkeys(
        [
            "adapt",
            "adapters",
            "check_frozen",
            "compare",
            "create",
            "export",
            "freeze",
            "get_backbone",
            "get_catalog",
            "get_policy",
            "import_peft",
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
            "snapshot",
            "unwrap",
        ],
        "zoo.api",
    ),
    # what plugins register, what a model carries, what plans are made of
    "Adapter": "zoo.plans.adapter_module",
    "AdapterSpec": "zoo.core.specs",
    "Addition": "zoo.plans.plan",
    "BackboneSpec": "zoo.core.specs",
    "Catalog": "zoo.core.catalog",
    "InputConfig": "zoo.core.specs",
    "ModelRecord": "zoo.core.record",
    "NormMode": "zoo.plans.plan",
    "ParamGroup": "zoo.core.specs",
    "ParamTable": "zoo.tables.table",
    "Plan": "zoo.plans.plan",
    "PolicySpec": "zoo.core.specs",
    "ScheduleDriver": "zoo.api",
    # what the jobs return and call
    "AdaptCallback": "zoo.adaptation.history",
    "AdaptResult": "zoo.adaptation.history",
    "CompareResult": "zoo.adaptation.compare",
    "History": "zoo.adaptation.history",
    "Leaderboard": "zoo.io.leaderboard",
    # the error base classes (each has subclasses in zoo.errors)
    **dict.fromkeys(
        [
            "AdapterError",
            "CorruptFileError",
            "PluginError",
            "StoreError",
            "UnknownNameError",
            "ZooError",
        ],
        "zoo.errors",
    ),
}

#: Names ``zoo`` exported before issue 20 that are no longer in ``__all__``: each still
#: resolves (``zoo.DataError``, ``zoo.inspect``), so no program breaks, but ``from zoo import *``
#: no longer brings them (``inspect`` no longer shadows the standard library's module).
_MOVED: dict[str, str] = {
    **dict.fromkeys(
        [
            "AdaptArgumentError",
            "AdapterMergeError",
            "AmbiguousNameError",
            "BaseMismatchError",
            "CheckpointError",
            "DataError",
            "FreezeViolationError",
            "InvalidNameError",
            "LockTimeoutError",
            "MissingBaseError",
            "ModelBuildError",
            "ModelExistsError",
            "ModelNotFoundError",
            "PlanError",
            "PolicyArgumentError",
            "SpecError",
            "TamperedFileError",
            "UnsupportedFormatError",
            "WeightsMismatchError",
            "WeightsUnavailableError",
        ],
        "zoo.errors",
    ),
    "inspect": "zoo.api",
    "export_peft": "zoo.api",
    "classifier_param_names": "zoo.api",
    "NormInfo": "zoo.tables.table",
    "ParamInfo": "zoo.tables.table",
    "RegisterBackbone": "zoo.hookspecs",
    "RegisterPolicy": "zoo.hookspecs",
    "hookspec": "zoo.hookspecs",
}

__all__ = sorted([*_PUBLIC, "__version__", "hookimpl"])


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name) or _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module 'zoo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_MOVED))
