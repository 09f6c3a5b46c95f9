"""zoo: a model zoo for transfer learning whose backbones and freeze policies are plugins.

The public API is re-exported here and loaded lazily: ``import zoo`` imports neither torch nor
timm, so the command line starts fast. Everything listed in ``__all__`` is documented in
``docs/api.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from zoo._version import __version__
from zoo.hookspecs import hookimpl, hookspec

if TYPE_CHECKING:
    from zoo.adaptation.history import History
    from zoo.api import (
        ScheduleDriver,
        adapt,
        adapters,
        compare,
        create,
        export_peft,
        freeze,
        get_backbone,
        get_catalog,
        get_policy,
        import_peft,
        inspect,
        list_backbones,
        list_policies,
        load,
        merge_adapters,
        params,
        plan,
        predict,
        reset_catalog,
        save,
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
    from zoo.hookspecs import RegisterBackbone, RegisterPolicy
    from zoo.io.store import list_saved, remove
    from zoo.plans.adapter_module import Adapter
    from zoo.plans.freeze import check_frozen, snapshot
    from zoo.plans.plan import Addition, NormMode, Plan
    from zoo.tables.build import classifier_param_names
    from zoo.tables.table import NormInfo, ParamInfo, ParamTable

_LAZY: dict[str, str] = {
    "AdaptArgumentError": "zoo.errors",
    "Adapter": "zoo.plans.adapter_module",
    "AdapterError": "zoo.errors",
    "AdapterMergeError": "zoo.errors",
    "AdapterSpec": "zoo.core.specs",
    "Addition": "zoo.plans.plan",
    "AmbiguousNameError": "zoo.errors",
    "BackboneSpec": "zoo.core.specs",
    "BaseMismatchError": "zoo.errors",
    "Catalog": "zoo.core.catalog",
    "CheckpointError": "zoo.errors",
    "CorruptFileError": "zoo.errors",
    "DataError": "zoo.errors",
    "FreezeViolationError": "zoo.errors",
    "History": "zoo.adaptation.history",
    "InputConfig": "zoo.core.specs",
    "InvalidNameError": "zoo.errors",
    "LockTimeoutError": "zoo.errors",
    "MissingBaseError": "zoo.errors",
    "ModelBuildError": "zoo.errors",
    "ModelExistsError": "zoo.errors",
    "ModelNotFoundError": "zoo.errors",
    "ModelRecord": "zoo.core.record",
    "NormInfo": "zoo.tables.table",
    "NormMode": "zoo.plans.plan",
    "ParamGroup": "zoo.core.specs",
    "ParamInfo": "zoo.tables.table",
    "ParamTable": "zoo.tables.table",
    "RegisterBackbone": "zoo.hookspecs",
    "RegisterPolicy": "zoo.hookspecs",
    "Plan": "zoo.plans.plan",
    "PlanError": "zoo.errors",
    "PluginError": "zoo.errors",
    "PolicyArgumentError": "zoo.errors",
    "PolicySpec": "zoo.core.specs",
    "ScheduleDriver": "zoo.api",
    "SpecError": "zoo.errors",
    "StoreError": "zoo.errors",
    "TamperedFileError": "zoo.errors",
    "UnknownNameError": "zoo.errors",
    "UnsupportedFormatError": "zoo.errors",
    "WeightsMismatchError": "zoo.errors",
    "WeightsUnavailableError": "zoo.errors",
    "ZooError": "zoo.errors",
    "adapt": "zoo.api",
    "adapters": "zoo.api",
    "compare": "zoo.api",
    "check_frozen": "zoo.plans.freeze",
    "classifier_param_names": "zoo.tables.build",
    "create": "zoo.api",
    "export_peft": "zoo.api",
    "freeze": "zoo.api",
    "get_backbone": "zoo.api",
    "get_catalog": "zoo.api",
    "get_policy": "zoo.api",
    "import_peft": "zoo.api",
    "inspect": "zoo.api",
    "list_backbones": "zoo.api",
    "list_policies": "zoo.api",
    "list_saved": "zoo.io.store",
    "load": "zoo.api",
    "merge_adapters": "zoo.api",
    "params": "zoo.api",
    "plan": "zoo.api",
    "predict": "zoo.api",
    "remove": "zoo.io.store",
    "reset_catalog": "zoo.api",
    "save": "zoo.api",
    "snapshot": "zoo.plans.freeze",
    "unwrap": "zoo.api",
}

__all__ = sorted([*_LAZY, "__version__", "hookimpl", "hookspec"])


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'zoo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
