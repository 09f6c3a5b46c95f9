"""Testing helpers for zoo plugin authors: pytest fixtures and :func:`check_plugin`.

zoo installs this module as a pytest plugin (entry point ``pytest11``), so in any project
where zoo is installed these fixtures are available without an import:

``zoo_home``
    A private, empty ``ZOO_HOME`` (and ``ZOO_CACHE_DIR``) for one test; returns its path.
``zoo_autoload``
    Whether the fixtures below load installed plugins (entry points). ``None`` (the
    default) follows ``ZOO_DISABLE_PLUGIN_AUTOLOAD``; override the fixture to change it.
``zoo_plugin_host``
    A fresh :class:`~zoo.core.plugins.PluginHost` (no arguments: it is a fixture; its
    ``records`` map plugin names to what each loaded and its errors): built-ins plus installed
    plugins (see ``zoo_autoload``). Build a catalog with ``zoo.Catalog(zoo_plugin_host)``.
``zoo_catalog``
    A fresh :class:`~zoo.Catalog` from ``zoo_plugin_host``, installed as the process-wide
    catalog for the test (so ``zoo.create`` and friends use it) and restored afterwards.
``zoo_register_plugin``
    A function ``zoo_register_plugin(plugin, name=None, *, autoload=False) -> Catalog`` that
    registers a plugin object (a module, class or instance with ``@zoo.hookimpl`` functions)
    in a fresh catalog, installs that catalog for the rest of the test and returns it.
    ``plugin`` is the object; ``name`` the plugin name (default: its ``PLUGIN_NAME``, else the
    last part of its module name), which qualifies its backbones and policies
    (``name:tinynet-s``); ``autoload=True`` loads the installed plugins too (default: only the
    built-ins and ``plugin``). Call it again to register another plugin in a new catalog.

:func:`check_plugin` verifies a plugin the way zoo uses it: it loads without errors, its
backbones build on the ``meta`` device (no weights), get a parameter table and run a forward
pass with a new head that returns a logits tensor, its metadata is namespaced, and its policies
return valid plans. It returns a :class:`PluginReport` (with warnings, such as a backbone that
only the generic stem + head grouping describes) and raises
:class:`~zoo.errors.PluginCheckError` (an ``AssertionError``) with the whole report when
something fails.

Nothing heavy is imported at import time: pytest loads this module in every test run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from zoo.core.catalog import Catalog
    from zoo.core.plugins import PluginHost, PluginRecord
    from zoo.core.specs import BackboneSpec, PolicySpec
    from zoo.tables.table import ParamTable

__all__ = [
    "Check",
    "PluginReport",
    "check_plugin",
    "installed_catalog",
    "zoo_autoload",
    "zoo_catalog",
    "zoo_home",
    "zoo_plugin_host",
    "zoo_register_plugin",
]

FORWARD_CLASSES = 3


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def zoo_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private, empty model store (``ZOO_HOME``) and cache directory for one test."""
    home = tmp_path / "zoo_home"
    home.mkdir()
    monkeypatch.setenv("ZOO_HOME", str(home))
    monkeypatch.setenv("ZOO_CACHE_DIR", str(home / "cache"))
    return home


@pytest.fixture
def zoo_autoload() -> bool | None:
    """Whether ``zoo_plugin_host`` loads installed plugins; None follows the environment."""
    return None


@pytest.fixture
def zoo_plugin_host(zoo_autoload: bool | None) -> PluginHost:
    """A fresh plugin host: built-in plugins, then installed ones (see ``zoo_autoload``)."""
    from zoo.core.plugins import make_plugin_host

    return make_plugin_host(autoload=zoo_autoload)


@pytest.fixture
def zoo_catalog(zoo_plugin_host: PluginHost) -> Iterator[Catalog]:
    """A fresh catalog, installed as the process-wide catalog for the test, then restored."""
    from zoo.core.catalog import Catalog

    with installed_catalog(Catalog(zoo_plugin_host)) as catalog:
        yield catalog


@pytest.fixture
def zoo_register_plugin() -> Iterator[Callable[..., Catalog]]:
    """Register a plugin object for one test: ``zoo_register_plugin(obj, name=...)``.

    Builds a fresh catalog with the built-in plugins and ``obj`` (installed plugins too when
    ``autoload=True``), installs it as the process-wide catalog and returns it. ``name``
    defaults to the object's ``PLUGIN_NAME`` attribute, else the last part of its module name.
    The previous catalog comes back after the test.
    """
    from zoo.core.catalog import set_catalog

    saved: list[Catalog | None] = []

    def register(plugin: object, name: str | None = None, *, autoload: bool = False) -> Catalog:
        from zoo.core.catalog import Catalog
        from zoo.core.plugins import make_plugin_host

        plugin_name = name or default_plugin_name(plugin)
        catalog = Catalog(make_plugin_host(autoload=autoload, extra={plugin_name: plugin}))
        previous = set_catalog(catalog)
        if not saved:
            saved.append(previous)
        return catalog

    yield register
    if saved:
        set_catalog(saved[0])


@contextlib.contextmanager
def installed_catalog(catalog: Catalog) -> Iterator[Catalog]:
    """Make ``catalog`` the process-wide catalog inside the ``with`` block."""
    from zoo.core.catalog import set_catalog

    previous = set_catalog(catalog)
    try:
        yield catalog
    finally:
        set_catalog(previous)


def default_plugin_name(plugin: object) -> str:
    """``plugin.PLUGIN_NAME`` if set, else the last part of its module (or class) name."""
    name = getattr(plugin, "PLUGIN_NAME", None)
    if isinstance(name, str) and name:
        return name
    if isinstance(plugin, ModuleType):
        return plugin.__name__.rpartition(".")[2]
    return getattr(plugin, "__name__", type(plugin).__name__)


# ---------------------------------------------------------------- the report


@dataclass(frozen=True)
class Check:
    """One verified property of a plugin."""

    name: str
    ok: bool
    detail: str = ""
    skipped: bool = False
    warning: bool = False  # passed, but something a plugin author should look at

    def line(self) -> str:
        status = (
            "SKIP"
            if self.skipped
            else ("FAIL" if not self.ok else "WARN" if self.warning else "ok  ")
        )
        return f"  {status} {self.name}" + (f": {self.detail}" if self.detail else "")


@dataclass
class PluginReport:
    """What :func:`check_plugin` found: one :class:`Check` per verified property."""

    plugin: str
    origin: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [check for check in self.checks if not check.ok]

    @property
    def warnings(self) -> list[Check]:
        return [check for check in self.checks if check.ok and check.warning]

    def add(
        self, name: str, ok: bool, detail: str = "", *, skipped: bool = False, warning: bool = False
    ) -> bool:
        self.checks.append(Check(name, ok, detail, skipped, warning))
        return ok

    def __str__(self) -> str:
        verdict = "passed" if self.ok else f"{len(self.failures)} check(s) failed"
        if self.warnings:
            verdict += f", {len(self.warnings)} warning(s)"
        lines = [f"zoo plugin check of {self.origin}: {verdict}"]
        lines += [check.line() for check in self.checks]
        return "\n".join(lines)

    def raise_for_failures(self) -> None:
        """Raise :class:`~zoo.errors.PluginCheckError` with this report if a check failed."""
        if not self.ok:
            from zoo.errors import PluginCheckError

            raise PluginCheckError(str(self))


# ---------------------------------------------------------------- check_plugin


def check_plugin(
    plugin: str | object,
    catalog: Catalog | None = None,
    max_backbones: int = 3,
    *,
    name: str | None = None,
    policy_args: Mapping[str, Mapping[str, Any]] | None = None,
    forward: bool = True,
    raise_on_failure: bool = True,
    backbone: str | None = None,
) -> PluginReport:
    """Verify a zoo plugin end to end and report what works and what does not.

    ``plugin`` is a plugin name as listed by ``zoo plugins`` (looked up in ``catalog``, by
    default the process-wide one) or a plugin object (a module with ``@zoo.hookimpl``
    functions), which is registered as ``name`` in a fresh catalog with the built-in plugins
    when ``catalog`` is None.

    Checked: the plugin loaded and its hooks ran without errors; it implements at least one
    hook; up to ``max_backbones`` of its backbones (in name order) build on the ``meta``
    device without weights, get a parameter table (``zoo.params``; an invalid
    ``zoo_param_groups`` answer fails here, and a table that the generic grouping splits into
    only ``stem`` + ``head`` is a warning: depth-based policies then have nothing between "all"
    and "the head") and, with ``forward``, run a forward pass with a ``num_classes=3`` head that
    must return a logits tensor of shape ``(batch, 3)``; its ``zoo_extra_metadata`` entries are
    ``str -> str`` with keys ``"<plugin>.<key>"``; every policy returns a valid plan
    (``zoo.plan``) that survives ``Plan.to_dict``/``from_dict``, planned on ``backbone`` (any
    backbone name the catalog resolves, ``"timm:resnet18"`` for instance), by default on the
    plugin's first backbone in name order (a small CNN for a plugin without backbones).
    ``policy_args`` gives arguments per policy name (bare); a policy with required arguments
    and none given is skipped.

    Returns the :class:`PluginReport`; raises :class:`~zoo.errors.PluginCheckError` with the
    report when a check failed (unless ``raise_on_failure=False``).
    """
    from zoo.errors import UnknownNameError

    catalog, plugin_name = _catalog_for(plugin, catalog, name)
    record = catalog.host.records.get(plugin_name)
    if record is None:
        raise UnknownNameError("plugin", plugin_name, catalog.host.records)
    from zoo.core.plugins import format_origin

    report = PluginReport(plugin_name, format_origin(record))
    known_errors = len(record.errors)
    with installed_catalog(catalog):
        _check_loaded(report, record)
        backbones = [s for s in catalog.backbones if s.plugin == plugin_name]
        policies = [s for s in catalog.policies if s.plugin == plugin_name]
        tables = [
            table
            for spec in backbones[: max(max_backbones, 0)]
            if (table := _check_backbone(report, catalog, spec, forward=forward)) is not None
        ]
        if policies:
            if backbone is not None:
                table = _table_of(report, backbone)
            else:
                table = tables[0] if tables else _fallback_table(report)
            for spec in policies:
                if table is not None:
                    _check_policy(report, spec, table, (policy_args or {}).get(spec.name, {}))
        # hooks that raised while tables were built are recorded on the plugin
        late = record.errors[known_errors:]
        if late:
            report.add("hooks raised no errors while checking", False, "; ".join(late))
    if raise_on_failure:
        report.raise_for_failures()
    return report


def _catalog_for(
    plugin: str | object, catalog: Catalog | None, name: str | None
) -> tuple[Catalog, str]:
    if isinstance(plugin, str):
        if catalog is None:
            from zoo.core.catalog import get_catalog

            catalog = get_catalog()
        return catalog, plugin
    if catalog is None:
        from zoo.core.catalog import Catalog
        from zoo.core.plugins import make_plugin_host

        plugin_name = name or default_plugin_name(plugin)
        return Catalog(make_plugin_host(autoload=False, extra={plugin_name: plugin})), plugin_name
    registered = catalog.host.pm.get_name(plugin)
    if registered is None:
        from zoo.errors import PluginError

        raise PluginError(
            f"{default_plugin_name(plugin)!r} is not registered in the given catalog; "
            "pass catalog=None to check it in a fresh catalog"
        )
    return catalog, registered


def _check_loaded(report: PluginReport, record: PluginRecord) -> None:
    report.add("loads and registers without errors", record.ok, "; ".join(record.errors))
    report.add(
        "implements at least one zoo hook",
        bool(record.hooks),
        ", ".join(record.hooks) if record.hooks else "no @zoo.hookimpl function found",
    )


def _check_backbone(
    report: PluginReport, catalog: Catalog, spec: BackboneSpec, *, forward: bool
) -> ParamTable | None:
    import zoo
    from zoo.tables.build import build_meta

    name = spec.qualified_name
    try:
        model = build_meta(name, catalog=catalog)
    except Exception as exc:
        report.add(f"{name} builds on the meta device", False, _describe(exc))
        return None
    n_params = sum(1 for _ in model.parameters())
    report.add(
        f"{name} builds on the meta device",
        True,
        f"{type(model).__name__}, {n_params} parameter tensors",
    )
    try:
        table = zoo.params(model)
    except Exception as exc:
        report.add(f"{name} has a parameter table", False, _describe(exc))
        return None
    problems = _table_problems(model, table)
    problems += [
        note
        for note in table.notes
        if note.startswith(f"plugin {report.plugin!r}: zoo_param_groups")
    ]
    report.add(
        f"{name} has a parameter table",
        not problems,
        "; ".join(problems)
        or f"{len(table)} rows, groups {', '.join(table.groups)} "
        f"(grouped by {table.grouped_by or '?'})",
    )
    if not problems and table.grouped_by == "generic" and len(table.groups) <= 2:
        report.add(
            f"{name} has stages between stem and head",
            True,
            f"the generic grouping found only {' + '.join(table.groups)}: policies by depth "
            "(freeze-to, train-last, gradual) can train only everything or the head; implement "
            "zoo_param_groups to split the body into stage.1 … stage.N",
            warning=True,
        )
    _check_metadata(report, catalog, model, spec)
    if forward:
        _check_forward(report, catalog, spec)
    return table


def _table_problems(model: Any, table: ParamTable) -> list[str]:
    names = [n for n, _ in model.named_parameters()]
    problems = []
    if table.names != names:
        missing = sorted(set(names) - set(table.names))
        problems.append(f"table rows differ from model parameters (missing: {missing[:5]})")
    depths = sorted({row.depth for row in table})
    if depths and depths != list(range(depths[-1] + 1)):
        problems.append(f"depths are not contiguous from 0: {depths}")
    return problems


def _check_metadata(report: PluginReport, catalog: Catalog, model: Any, spec: BackboneSpec) -> None:
    plugin = report.plugin
    if "zoo_extra_metadata" not in catalog.host.records[plugin].hooks:
        return
    check = f"{spec.qualified_name} metadata is namespaced '{plugin}.<key>' -> str"
    errors_before = len(catalog.host.records[plugin].errors)
    answers = catalog.host.call_each(
        "zoo_extra_metadata",
        lambda _name: {"model": model, "backbone": spec},
        accept=_copied_mapping,  # a mapping that raises while read is the plugin's error
    )
    for answer_plugin, answer in answers:
        if answer_plugin != plugin or answer is None:
            continue
        if not isinstance(answer, dict):
            report.add(check, False, f"returned {type(answer).__name__}, not a mapping")
            continue
        bad = [
            repr(k)
            for k, v in answer.items()
            if not (isinstance(k, str) and k.startswith(f"{plugin}.") and isinstance(v, str))
        ]
        report.add(
            check, not bad, f"bad entries: {', '.join(bad)}" if bad else f"{len(answer)} entries"
        )
    raised = catalog.host.records[plugin].errors[errors_before:]
    if raised:
        report.add(check, False, raised[-1])


def _copied_mapping(_plugin: str, answer: Any) -> Any:
    return dict(answer) if isinstance(answer, Mapping) else answer


def _check_forward(report: PluginReport, catalog: Catalog, spec: BackboneSpec) -> None:
    import torch

    from zoo.tables.build import build_meta

    label = f"{spec.qualified_name} runs forward with num_classes={FORWARD_CLASSES} (meta)"
    try:
        model = build_meta(spec.qualified_name, catalog=catalog, num_classes=FORWARD_CLASSES)
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("meta")
        x = torch.empty((2, *spec.input_config.input_size), device=device)
        with torch.no_grad():
            out = model.eval()(x)
    except Exception as exc:
        report.add(label, False, _describe(exc))
        return
    expected = (2, FORWARD_CLASSES)
    if not isinstance(out, torch.Tensor):
        report.add(
            label,
            False,
            f"forward(x) returned {type(out).__name__}, not a tensor: a backbone's forward(x) "
            f"must return the logits, one tensor of shape (batch, num_classes) = {expected} "
            "(unwrap a model output object, e.g. return outputs.logits)",
        )
        return
    shape = tuple(out.shape)
    report.add(
        label,
        shape == expected,
        f"output shape {shape}"
        if shape == expected
        else f"forward(x) returned a tensor of shape {shape}, expected logits of shape "
        f"(batch, num_classes) = {expected}: does create() give the model a "
        f"num_classes={FORWARD_CLASSES} head?",
    )


def _table_of(report: PluginReport, backbone: str) -> ParamTable | None:
    """The table of ``backbone`` (any name the installed catalog resolves), for policy checks."""
    import zoo

    try:
        return zoo.params(backbone)
    except Exception as exc:
        report.add(f"policies can be planned on {backbone}", False, _describe(exc))
        return None


def _fallback_table(report: PluginReport) -> ParamTable | None:
    """The table a policy-only plugin's policies are planned on: a small CNN built here (stem,
    three stages with BatchNorm, a linear head), so the check needs no backbone plugin."""
    from collections import OrderedDict

    from torch import nn

    from zoo.tables.build import describe

    def stage(channels_in: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(channels_in, 8, 3), nn.BatchNorm2d(8), nn.ReLU())

    try:
        model = nn.Sequential(
            OrderedDict(
                stem=stage(3),
                stage1=stage(8),
                stage2=stage(8),
                stage3=stage(8),
                pool=nn.AdaptiveAvgPool2d(1),
                flatten=nn.Flatten(),
                fc=nn.Linear(8, FORWARD_CLASSES),
            )
        )
        return describe(model)
    except Exception as exc:
        report.add("policies can be planned on a small CNN", False, _describe(exc))
        return None


def _check_policy(
    report: PluginReport, spec: PolicySpec, table: ParamTable, args: Mapping[str, Any]
) -> None:
    import zoo

    label = f"policy {spec.qualified_name} plans {table.backbone or 'a small CNN'}"
    required = [a.name for a in spec.args if a.required and a.name not in args]
    if required:
        report.add(
            label,
            True,
            f"needs argument(s) {', '.join(required)}: pass policy_args={{{spec.name!r}: {{...}}}}",
            skipped=True,
        )
        return
    epochs = [0, 1] if spec.schedule else [None]
    for epoch in epochs:
        try:
            kwargs = dict(args) if epoch is None else {**args, "epoch": epoch}
            plan = zoo.plan(table, spec.qualified_name, **kwargs)
            problems = _plan_problems(plan, table)
        except Exception as exc:
            report.add(label, False, _describe(exc))
            return
        if problems:
            report.add(label, False, "; ".join(problems))
            return
    report.add(label, True, f"{len(plan.trainable)} of {len(table)} tensors train")


def _plan_problems(plan: Any, table: ParamTable) -> list[str]:
    from zoo.plans.plan import Plan

    if not isinstance(plan, Plan):
        return [f"zoo.plan returned {type(plan).__name__}, not a zoo.Plan"]
    problems = []
    unknown = sorted(set(plan.trainable) - set(table.names))
    if unknown:
        problems.append(f"trains unknown parameters {unknown[:5]}")
    again = Plan.from_dict(plan.to_dict())
    if sorted(again.trainable) != sorted(plan.trainable):
        problems.append("the plan does not survive to_dict()/from_dict()")
    return problems


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
