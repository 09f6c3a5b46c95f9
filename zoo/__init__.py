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
    from zoo.adaptation import History, adapt
    from zoo.api import (
        create,
        get_backbone,
        get_catalog,
        get_policy,
        list_backbones,
        list_policies,
        reset_catalog,
    )
    from zoo.catalog import Catalog
    from zoo.errors import (
        AdaptArgumentError,
        AmbiguousNameError,
        BaseMismatchError,
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
    from zoo.freezing import check_frozen, freeze, snapshot
    from zoo.param_table import NormInfo, ParamInfo, ParamTable, params
    from zoo.persistence import inspect, load, save
    from zoo.plans import NormMode, Plan, plan
    from zoo.prediction import predict
    from zoo.schedule import ScheduleDriver
    from zoo.specs import BackboneSpec, InputConfig, ParamGroup, PolicySpec
    from zoo.store import list_saved, remove

_LAZY: dict[str, str] = {
    "AdaptArgumentError": "zoo.errors",
    "AmbiguousNameError": "zoo.errors",
    "BackboneSpec": "zoo.specs",
    "BaseMismatchError": "zoo.errors",
    "Catalog": "zoo.catalog",
    "CorruptFileError": "zoo.errors",
    "DataError": "zoo.errors",
    "FreezeViolationError": "zoo.errors",
    "History": "zoo.adaptation",
    "InputConfig": "zoo.specs",
    "InvalidNameError": "zoo.errors",
    "LockTimeoutError": "zoo.errors",
    "MissingBaseError": "zoo.errors",
    "ModelBuildError": "zoo.errors",
    "ModelExistsError": "zoo.errors",
    "ModelNotFoundError": "zoo.errors",
    "NormInfo": "zoo.param_table",
    "NormMode": "zoo.plans",
    "ParamGroup": "zoo.specs",
    "ParamInfo": "zoo.param_table",
    "ParamTable": "zoo.param_table",
    "Plan": "zoo.plans",
    "PlanError": "zoo.errors",
    "PluginError": "zoo.errors",
    "PolicyArgumentError": "zoo.errors",
    "PolicySpec": "zoo.specs",
    "ScheduleDriver": "zoo.schedule",
    "SpecError": "zoo.errors",
    "StoreError": "zoo.errors",
    "TamperedFileError": "zoo.errors",
    "UnknownNameError": "zoo.errors",
    "UnsupportedFormatError": "zoo.errors",
    "WeightsMismatchError": "zoo.errors",
    "WeightsUnavailableError": "zoo.errors",
    "ZooError": "zoo.errors",
    "adapt": "zoo.adaptation",
    "check_frozen": "zoo.freezing",
    "create": "zoo.api",
    "freeze": "zoo.freezing",
    "get_backbone": "zoo.api",
    "get_catalog": "zoo.api",
    "get_policy": "zoo.api",
    "inspect": "zoo.persistence",
    "list_backbones": "zoo.api",
    "list_policies": "zoo.api",
    "list_saved": "zoo.store",
    "load": "zoo.persistence",
    "params": "zoo.param_table",
    "plan": "zoo.plans",
    "predict": "zoo.prediction",
    "remove": "zoo.store",
    "reset_catalog": "zoo.api",
    "save": "zoo.persistence",
    "snapshot": "zoo.freezing",
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
