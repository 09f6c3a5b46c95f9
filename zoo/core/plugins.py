"""Finding, loading and calling plugins, one at a time, so that one broken plugin hurts nobody.

:func:`make_plugin_host` builds a :class:`PluginHost`: a pluggy manager with zoo's hookspecs, the
built-in plugins registered through the same call a third-party plugin goes through, and every
entry point of the group ``zoo.plugins`` loaded on its own. A plugin that fails to import, has a
misspelled hook or a wrong signature, or raises inside a hook (anything but ``KeyboardInterrupt``:
``sys.exit`` too), is recorded on its :class:`PluginRecord` and skipped; the rest keep working.
Hooks are called through pluggy one plugin at a time, so wrappers and ``firstresult`` behave as
pluggy defines; what plugin code prints goes to stderr. Nothing happens at import time.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata as importlib_metadata
import inspect
import io
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pluggy

from zoo import hookspecs
from zoo._version import __version__
from zoo.errors import PluginError, suggest

DISABLE_AUTOLOAD_ENV = "ZOO_DISABLE_PLUGIN_AUTOLOAD"
STRICT_ENV = "ZOO_STRICT_PLUGINS"
TRACE_ENV = "ZOO_TRACE_PLUGINS"

#: Built-in plugins: (plugin name, module). They are registered exactly like entry points.
BUILTIN_PLUGINS: tuple[tuple[str, str], ...] = (
    ("timm", "zoo.builtin.timm_backbones"),
    ("zoo", "zoo.builtin.standard_policies"),
)


def env_flag(name: str) -> bool:
    """True when the environment variable is set to a truthy value (1, true, yes, on)."""
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass
class PluginRecord:
    """What zoo knows about one plugin: where it came from, what it did, what went wrong."""

    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    builtin: bool = False
    hooks: list[str] = field(default_factory=list)
    backbones: int = 0
    policies: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "distribution": self.distribution,
            "version": self.version,
            "builtin": self.builtin,
            "hooks": list(self.hooks),
            "backbones": self.backbones,
            "policies": self.policies,
            "errors": list(self.errors),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PluginRecord:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class PluginSource:
    """An entry point of the group ``zoo.plugins``, described without importing it."""

    name: str
    value: str
    distribution: str | None
    version: str | None


def discover_entry_points(group: str = hookspecs.ENTRY_POINT_GROUP) -> list[PluginSource]:
    """Every installed entry point of ``group``, sorted by (name, distribution), not imported."""
    found = []
    for ep in importlib_metadata.entry_points(group=group):
        dist = getattr(ep, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else None
        version = dist.version if dist is not None else None
        found.append(PluginSource(ep.name, ep.value, dist_name, version))
    return sorted(set(found), key=lambda s: (s.name, s.distribution or "", s.value))


def _load_object(value: str) -> Any:
    """Load ``module`` or ``module:attr.path`` like an entry point does."""
    module_name, _, attrs = value.partition(":")
    obj: Any = importlib.import_module(module_name.strip())
    for attr in filter(None, attrs.strip().split(".")):
        obj = getattr(obj, attr)
    return obj


def _is_function(obj: object) -> bool:
    """A function or method (what a hook implementation is), not a module, class or value."""
    return inspect.isfunction(obj) or inspect.ismethod(obj)


@contextlib.contextmanager
def plugin_output() -> Iterator[None]:
    """While plugin code runs, what it prints goes to stderr: stdout may carry JSON.

    Only Python-level writes to ``sys.stdout`` are redirected; a C extension writing to file
    descriptor 1 is not (and ``os._exit`` cannot be contained at all).
    """
    with contextlib.redirect_stdout(sys.stderr if sys.stderr is not None else io.StringIO()):
        yield


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, SyntaxError) and exc.filename:
        text = f"SyntaxError: {exc.msg} ({exc.filename}, line {exc.lineno})"
    return text


class PluginHost:
    """A pluggy manager plus a record per plugin; calls hooks one plugin at a time."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}
        self._callers: dict[tuple[str, str], Callable[..., Any]] = {}
        if env_flag(TRACE_ENV):
            self._enable_tracing()

    def _enable_tracing(self) -> None:
        """pluggy's tracing to stderr (what ``pm.enable_tracing`` does), naming the plugin
        each call goes to and what it raised."""
        self.pm.trace.root.setwriter(lambda text: sys.stderr.write(text))
        hooktrace = self.pm.trace.root.get("hook")

        def before(hook_name: str, impls: Any, kwargs: Any) -> None:
            hooktrace.root.indent += 1
            plugins = ", ".join(dict.fromkeys(impl.plugin_name for impl in impls))
            hooktrace(hook_name, f"of plugin {plugins}", kwargs)

        def after(outcome: Any, hook_name: str, impls: Any, kwargs: Any) -> None:
            if outcome.exception is None:
                hooktrace("finish", hook_name, "-->", outcome.get_result())
            else:
                hooktrace("raised", hook_name, "-->", _describe(outcome.exception))
            hooktrace.root.indent -= 1

        self.pm.add_hookcall_monitoring(before, after)

    # ------------------------------------------------------------ registration

    def add(self, plugin: object, record: PluginRecord) -> bool:
        """Register ``plugin`` under ``record.name``; on failure record why and return False."""
        if record.name in self.records:
            other = self.records[record.name]
            record.errors.append(
                f"plugin name {record.name!r} is already taken by "
                f"{other.distribution or other.module}; this one is ignored"
            )
            self.records[f"{record.name}@{record.distribution or record.module}"] = record
            return False
        self.records[record.name] = record
        self._callers.clear()  # each cached caller leaves out every other plugin
        try:
            self.pm.register(plugin, name=record.name)
        except Exception as exc:  # pluggy.PluginValidationError, ValueError
            record.errors.append(f"invalid plugin: {_describe(exc)}")
            if self.pm.get_plugin(record.name) is not None:  # pluggy keeps the hooks it checked
                self.pm.unregister(name=record.name)
            return False
        record.hooks = sorted(
            caller.name for caller in self.pm.get_hookcallers(plugin) or () if caller.name
        )
        for attr in sorted(dir(plugin)):
            if not attr.startswith("zoo_") or not _is_function(getattr(plugin, attr, None)):
                continue  # a helper module or class named zoo_* is not a hook
            if attr not in hookspecs.HOOK_NAMES:
                close = suggest(attr, hookspecs.HOOK_NAMES, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                record.errors.append(f"unknown hook {attr!r}{hint}; it is never called")
            elif attr not in record.hooks:
                record.errors.append(f"{attr!r} is not marked @zoo.hookimpl; it is never called")
        return True

    def add_module(self, name: str, value: str, **info: Any) -> bool:
        """Import ``value`` (``module`` or ``module:attr``) and register it as plugin ``name``."""
        record = PluginRecord(name=name, module=value, **info)
        try:
            with plugin_output():
                plugin = _load_object(value)
        except BaseException as exc:  # a plugin's import may even call sys.exit
            if isinstance(exc, KeyboardInterrupt):
                raise
            record.errors.append(f"failed to import {value!r}: {_describe(exc)}")
            self.records.setdefault(name, record)
            if self.records[name] is not record:
                self.records[f"{name}@{record.distribution or value}"] = record
            return False
        return self.add(plugin, record)

    # ------------------------------------------------------------ calling hooks

    def _plugin_order(self, hook_name: str) -> list[str]:
        """Plugins implementing ``hook_name`` in pluggy's call order (tryfirst … trylast,
        later-registered first); a plugin with only a wrapper comes after the others."""
        impls = list(reversed(getattr(self.pm.hook, hook_name).get_hookimpls()))
        ordered = [i.plugin_name for i in impls if not (i.wrapper or i.hookwrapper)]
        ordered += [i.plugin_name for i in impls]
        return list(dict.fromkeys(ordered))

    def _caller(self, hook_name: str, plugin_name: str) -> Callable[..., Any]:
        """pluggy's caller of ``hook_name`` restricted to one plugin (cached): its wrappers wrap
        its own implementation, and ``firstresult`` holds, exactly as pluggy defines."""
        key = (hook_name, plugin_name)
        caller = self._callers.get(key)
        if caller is None:
            others = [p for n, p in self.pm.list_name_plugin() if n != plugin_name]
            caller = self._callers[key] = self.pm.subset_hook_caller(hook_name, others)
        return caller

    def call_each(
        self,
        hook_name: str,
        kwargs_for: Callable[[str], dict[str, Any]],
        *,
        accept: Callable[[str, Any], Any] | None = None,
    ) -> Iterator[tuple[str, Any]]:
        """Call ``hook_name`` plugin by plugin through pluggy, isolating failures.

        ``kwargs_for(plugin_name)`` gives each plugin its own arguments (a ``register`` bound to
        it). Yields ``(plugin_name, result)``: for a ``firstresult`` hook the plugin's answer,
        else each of its results (``None`` when it returned nothing). ``accept(plugin, result)``,
        when given, runs inside the same isolation (a result that raises while it is read is
        the plugin's fault) and its return value is yielded instead. A plugin that raises anything
        but ``KeyboardInterrupt`` (``SystemExit`` included) is recorded and skipped; what it
        prints goes to stderr, never stdout.
        """
        firstresult = bool((getattr(self.pm.hook, hook_name).spec.opts or {}).get("firstresult"))
        for plugin_name in self._plugin_order(hook_name):
            kwargs = kwargs_for(plugin_name)
            try:
                with plugin_output():
                    results = self._results(hook_name, plugin_name, kwargs, firstresult)
                    if accept is not None:
                        results = [accept(plugin_name, result) for result in results]
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt):
                    raise
                self.record_error(plugin_name, f"{hook_name} raised {_describe(exc)}", exc)
                continue
            for result in results:
                yield plugin_name, result

    def _results(
        self, hook_name: str, plugin_name: str, kwargs: dict[str, Any], firstresult: bool
    ) -> list[Any]:
        answer = self._caller(hook_name, plugin_name)(**kwargs)
        if firstresult:
            return [answer]
        if not isinstance(answer, list):  # only a wrapper can turn pluggy's list into this
            raise PluginError(f"a wrapper returned {type(answer).__name__}, not pluggy's list")
        return answer or [None]

    def record_error(
        self, plugin_name: str, message: str, exc: BaseException | None = None
    ) -> None:
        record = self.records.get(plugin_name)
        if record is None:
            record = self.records[plugin_name] = PluginRecord(plugin_name, module="?")
        if exc is not None and env_flag("ZOO_DEBUG"):
            message += "\n" + "".join(traceback.format_exception(exc))
        if message not in record.errors:
            record.errors.append(message)

    # ------------------------------------------------------------ problems

    @property
    def problems(self) -> list[tuple[PluginRecord, str]]:
        """Every recorded plugin error, sorted by plugin name."""
        return [
            (record, error)
            for _key, record in sorted(self.records.items())
            for error in record.errors
        ]

    def raise_if_problems(self) -> None:
        """Strict mode: turn recorded plugin errors into one :class:`PluginError`."""
        problems = self.problems
        if problems:
            lines = [f"{format_origin(r)}: {e}" for r, e in problems]
            raise PluginError("plugin problems (strict mode):\n  " + "\n  ".join(lines))


def format_origin(record: PluginRecord) -> str:
    """``name (distribution version)``: how messages name a plugin."""
    if record.builtin:
        return f"{record.name} (built-in)"
    if record.distribution:
        return f"{record.name} ({record.distribution} {record.version or ''})".replace(" )", ")")
    return f"{record.name} ({record.module})"


def make_plugin_host(
    *,
    autoload: bool | None = None,
    builtins: bool = True,
    extra: Mapping[str, object] | None = None,
) -> PluginHost:
    """Build a plugin host: built-ins, then installed entry points, then ``extra`` objects.

    ``autoload=None`` loads entry points unless ``ZOO_DISABLE_PLUGIN_AUTOLOAD`` is set.
    ``extra`` maps plugin names to plugin objects (modules, classes, instances) to register too,
    as tests and notebooks do.
    """

    host = PluginHost()
    if builtins:
        for name, module in BUILTIN_PLUGINS:
            host.add_module(
                name, module, builtin=True, distribution="zoo-transfer", version=__version__
            )
    if autoload is None:
        autoload = not env_flag(DISABLE_AUTOLOAD_ENV)
    if autoload:
        for source in discover_entry_points():
            host.add_module(
                source.name, source.value, distribution=source.distribution, version=source.version
            )
    for name, plugin in (extra or {}).items():
        host.add(plugin, PluginRecord(name=name, module=getattr(plugin, "__name__", repr(plugin))))
    return host
