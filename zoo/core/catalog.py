"""The catalog: every backbone, policy and adapter kind the plugins registered, and names.

Names resolve the same way everywhere: ``plugin:name`` always; a bare ``name`` when exactly one
plugin registers it; an ambiguous bare name raises :class:`~zoo.AmbiguousNameError` listing the
qualified candidates; an unknown one raises :class:`~zoo.UnknownNameError` with close names.
A backbone name may carry a pretrained tag after a dot, as in timm: ``resnet50.a1_in1k``.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, Generic, Protocol, TypeVar

from zoo.core.plugins import STRICT_ENV, PluginHost, env_flag, make_plugin_host
from zoo.core.policy_args import split_policy_spec
from zoo.core.specs import AdapterSpec, BackboneSpec, PolicySpec
from zoo.errors import AmbiguousNameError, SpecError, UnknownNameError


class Named(Protocol):
    """What a registry holds: a spec, or its cached listing entry."""

    @property
    def name(self) -> str: ...
    @property
    def plugin(self) -> str: ...
    @property
    def qualified_name(self) -> str: ...


class Tagged(Named, Protocol):
    @property
    def pretrained_tags(self) -> tuple[str, ...]: ...


SpecT = TypeVar("SpecT", bound=Named)
TaggedT = TypeVar("TaggedT", bound=Tagged)


class Registry(Generic[SpecT]):
    """Specs (or listing entries) of one kind keyed by qualified name; bare-name resolution."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.by_qualified: dict[str, SpecT] = {}
        self.by_bare: dict[str, list[str]] = {}

    def add(self, spec: SpecT) -> None:
        qualified = spec.qualified_name
        if qualified in self.by_qualified:
            raise SpecError(f"plugin {spec.plugin!r} registers {self.kind} {spec.name!r} twice")
        self.by_qualified[qualified] = spec
        self.by_bare.setdefault(spec.name, []).append(qualified)

    def __len__(self) -> int:
        return len(self.by_qualified)

    def __iter__(self):
        return iter(self.by_qualified[k] for k in sorted(self.by_qualified))

    def lookup(self, name: str) -> SpecT | None:
        """The spec for ``name`` (qualified or bare); None if unknown; raises if ambiguous."""
        if ":" in name:
            return self.by_qualified.get(name)
        candidates = self.by_bare.get(name, [])
        if len(candidates) > 1:
            raise AmbiguousNameError(self.kind, name, candidates)
        return self.by_qualified[candidates[0]] if candidates else None

    def resolve(self, name: str) -> SpecT:
        if not isinstance(name, str) or not name:
            raise UnknownNameError(self.kind, str(name), ())
        spec = self.lookup(name)
        if spec is None:
            raise UnknownNameError(self.kind, name, self.by_qualified)
        return spec


class Catalog:
    """Backbones and policies from every loaded plugin, and the plugin records."""

    def __init__(self, host: PluginHost) -> None:
        self.host = host
        self.backbones: Registry[BackboneSpec] = Registry("backbone")
        self.policies: Registry[PolicySpec] = Registry("policy")
        #: adapter kinds (``zoo:lora``…), registered through ``zoo_register_policies``
        self.adapters: Registry[AdapterSpec] = Registry("adapter kind")
        self._collect("zoo_register_backbones", {BackboneSpec: (self.backbones, "backbones")})
        self._collect(
            "zoo_register_policies",
            {PolicySpec: (self.policies, "policies"), AdapterSpec: (self.adapters, None)},
        )

    def _collect(self, hook: str, kinds: dict[type, tuple[Registry, str | None]]) -> None:
        first, *others = (f"zoo.{t.__name__}" for t in kinds)
        also = "".join(f" (or a {other})" for other in others)

        def kwargs_for(plugin_name: str) -> dict[str, Any]:
            record = self.host.records[plugin_name]

            def register(spec: Any) -> None:
                target = kinds.get(type(spec)) or next(
                    (v for t, v in kinds.items() if isinstance(spec, t)), None
                )
                if target is None:
                    raise SpecError(
                        f"register() expects a {first}, got {type(spec).__name__}{also}"
                    )
                registry, counter = target
                try:
                    registry.add(replace(spec, plugin=plugin_name))
                except SpecError as exc:
                    self.host.record_error(plugin_name, str(exc))
                    return
                if counter is not None:
                    setattr(record, counter, getattr(record, counter) + 1)

            return {"register": register}

        for _plugin, _result in self.host.call_each(hook, kwargs_for):
            pass

    # ------------------------------------------------------------ resolution

    def backbone(self, name: str) -> tuple[BackboneSpec, str | None]:
        """Resolve a backbone name to ``(spec, pretrained tag or None)``."""
        return resolve_backbone(self.backbones, name)

    def policy(self, name: str) -> PolicySpec:
        return self.policies.resolve(name)

    def adapter_kind(self, name: str) -> AdapterSpec:
        """The adapter kind a name (``zoo:lora``, or a bare unique ``lora``) resolves to."""
        return self.adapters.resolve(name)

    def check_names(self, backbone: str | None = None, policy: str | None = None) -> None:
        """Raise if a backbone name or a policy spec's name does not resolve."""
        check_names(self.backbones, self.policies, backbone=backbone, policy=policy)

    # ------------------------------------------------------------ listing

    def list_backbones(
        self, pattern: str | None = None, *, pretrained: bool | None = None
    ) -> list[str]:
        """Qualified names matching ``pattern`` (fnmatch on bare or qualified name).

        ``pretrained=True`` lists every pretrained tag (``timm:resnet50.a1_in1k``) instead of the
        architectures; ``False`` lists architectures without pretrained weights.
        """
        return filter_backbone_names(
            ((s.qualified_name, s.pretrained_tags) for s in self.backbones), pattern, pretrained
        )

    def list_policies(self, pattern: str | None = None) -> list[str]:
        return [s.qualified_name for s in self.policies if matches(pattern, s.qualified_name)]


def resolve_backbone(registry: Registry[TaggedT], name: str) -> tuple[TaggedT, str | None]:
    """``(entry, tag)`` for a backbone name, ``arch.tag`` included; raises with candidates."""
    spec = registry.lookup(name) if isinstance(name, str) and name else None
    if spec is not None:
        return spec, None
    if isinstance(name, str) and "." in name:
        arch, _, tag = name.rpartition(".")
        base = registry.lookup(arch)
        if base is not None:
            if tag in base.pretrained_tags:
                return base, tag
            raise UnknownNameError(
                f"pretrained tag of {base.qualified_name}", tag, base.pretrained_tags
            )
    return registry.resolve(name), None


def check_names(
    backbones: Registry[TaggedT],
    policies: Registry[SpecT],
    *,
    backbone: str | None = None,
    policy: str | None = None,
) -> None:
    """Resolve ``backbone`` and the name of ``policy`` (``NAME[:k=v,...]``, arguments not
    checked), raising what the catalog raises: unknown with suggestions, ambiguous with the
    candidates."""
    if backbone is not None:
        resolve_backbone(backbones, backbone)
    if policy is not None:
        policies.resolve(split_policy_spec(policy)[0])


def matches(pattern: str | None, qualified: str) -> bool:
    """fnmatch ``pattern`` against a qualified name or its bare part (case-insensitive)."""
    if not pattern:
        return True
    match = _pattern_matcher(pattern)
    qualified = qualified.lower()
    return match(qualified) is not None or match(qualified.split(":", 1)[-1]) is not None


@functools.lru_cache(maxsize=32)
def _pattern_matcher(pattern: str) -> Callable[[str], re.Match[str] | None]:
    """``fnmatch.fnmatchcase`` of the lower-cased ``pattern``, compiled once."""
    return re.compile(fnmatch.translate(pattern.lower())).match


def filter_backbone_names(
    entries: Iterable[tuple[str, Iterable[str]]], pattern: str | None, pretrained: bool | None
) -> list[str]:
    """Shared by the live catalog and the cached listing: names or tags that match."""
    names: list[str] = []
    for qualified, tags in entries:
        tags = list(tags)
        if pretrained is True:
            names.extend(
                f"{qualified}.{tag}"
                for tag in tags
                if matches(pattern, f"{qualified}.{tag}") or matches(pattern, qualified)
            )
        elif pretrained is False:
            if not tags and matches(pattern, qualified):
                names.append(qualified)
        elif matches(pattern, qualified):
            names.append(qualified)
    return names


def build_catalog(**host_options: Any) -> Catalog:
    """A fresh catalog from a fresh plugin host (see :func:`zoo.core.plugins.make_plugin_host`)."""
    return Catalog(make_plugin_host(**host_options))


# ---------------------------------------------------------------- the process-wide catalog
# Read only by the public functions (zoo.api) and the edges (cli, testing): code below them
# receives the catalog it needs as an argument.

_lock = threading.Lock()
_catalog: Catalog | None = None


def get_catalog(*, strict: bool | None = None) -> Catalog:
    """The process-wide catalog, built on first use.

    In strict mode (``strict=True``, or ``None`` with ``ZOO_STRICT_PLUGINS=1``) any plugin
    problem raises :class:`~zoo.PluginError` instead of being recorded and skipped.
    """
    global _catalog
    with _lock:
        if _catalog is None:
            _catalog = build_catalog()
        catalog = _catalog
    if strict is None:
        strict = env_flag(STRICT_ENV)
    if strict:
        catalog.host.raise_if_problems()
    return catalog


def current_catalog() -> Catalog | None:
    """The process-wide catalog if one is built or set, else None (builds nothing)."""
    return _catalog


def set_catalog(catalog: Catalog | None) -> Catalog | None:
    """Replace the process-wide catalog (``None`` forgets it); returns the previous one."""
    global _catalog
    with _lock:
        previous, _catalog = _catalog, catalog
    return previous


def reset_catalog() -> None:
    """Forget the process-wide catalog; the next call rebuilds it from installed plugins."""
    set_catalog(None)
