"""The command line's disk cache: what ``zoo list``, ``zoo plugins`` and ``zoo show`` read
without importing plugins (or torch).

A :class:`Listing` is the catalog as plain data: every backbone and policy, and every plugin
record with its errors. Building it imports every plugin (timm alone takes seconds); the cached
copy is keyed by a fingerprint of everything that can change it — zoo's version, the installed
entry points with their distributions' versions, the versions of what those distributions
require, and the modification times of the plugin modules — computed from package metadata
without importing any plugin. Installing, upgrading, removing or editing a plugin changes the
key, so the cache is never stale; a damaged cache file is ignored and rewritten. Beside the
listing, under the same key: a name index (one name costs one small file) and the parameter
tables of ``zoo show`` (:func:`table_for_name`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata as importlib_metadata
import importlib.util
import json
import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from zoo._version import __version__
from zoo.core.catalog import (
    Registry,
    check_names,
    filter_backbone_names,
    matches,
    resolve_backbone,
)
from zoo.core.plugins import (
    DISABLE_AUTOLOAD_ENV,
    PluginRecord,
    discover_entry_points,
    env_flag,
)
from zoo.errors import UnknownNameError

if TYPE_CHECKING:
    from zoo.core.catalog import Catalog
    from zoo.tables.table import ParamTable

LISTING_FORMAT = 3
T = TypeVar("T")
CACHE_ENV = "ZOO_CACHE_DIR"
NO_CACHE_ENV = "ZOO_NO_CACHE"
_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


class BackboneEntry(NamedTuple):
    """A backbone as the listing holds it. A named tuple: a listing of 100,000 entries is
    built from the cache in a tenth of a second (a frozen dataclass takes several times
    longer)."""

    plugin: str
    name: str
    summary: str
    tags: tuple[str, ...]
    input: dict[str, Any]
    head: str | None = None
    num_classes: int | None = None
    #: The input configs of the pretrained tags whose config differs from ``input`` (timm's
    #: ``convnext_base.fb_in22k_ft_in1k_384`` is 384 px, its architecture 224); None when
    #: every tag uses ``input``.
    tag_inputs: dict[str, dict[str, Any]] | None = None

    @property
    def qualified_name(self) -> str:
        return f"{self.plugin}:{self.name}"

    @property
    def pretrained_tags(self) -> tuple[str, ...]:
        return self.tags

    def input_for(self, tag: str | None) -> dict[str, Any]:
        """The input config of pretrained ``tag`` (the architecture's for None)."""
        if tag is not None and self.tag_inputs and tag in self.tag_inputs:
            return self.tag_inputs[tag]
        return self.input


@dataclass(frozen=True)
class PolicyEntry:
    plugin: str
    name: str
    summary: str
    args: tuple[dict[str, Any], ...] = ()
    schedule: bool = False

    @property
    def qualified_name(self) -> str:
        return f"{self.plugin}:{self.name}"


@dataclass
class Listing:
    """The catalog as data: what listing commands render, and what the disk cache holds."""

    backbones: list[BackboneEntry]
    policies: list[PolicyEntry]
    plugins: list[PluginRecord]
    key: str = ""
    from_cache: bool = field(default=False, compare=False)

    @property
    def problems(self) -> list[tuple[PluginRecord, str]]:
        return [(p, e) for p in sorted(self.plugins, key=lambda p: p.name) for e in p.errors]

    def find_backbones(
        self,
        pattern: str | None = None,
        *,
        pretrained: bool | None = None,
        plugin: str | None = None,
    ) -> list[BackboneEntry | tuple[BackboneEntry, str]]:
        """Entries matching; with ``pretrained=True`` one ``(entry, tag)`` per pretrained tag."""
        if pattern is None and pretrained is None and plugin is None:
            return list(self.backbones)
        by_name = {b.qualified_name: b for b in self.backbones if plugin in (None, b.plugin)}
        names = filter_backbone_names(
            ((q, b.tags) for q, b in by_name.items()), pattern, pretrained
        )
        if pretrained:
            found: list[Any] = []
            for full in names:
                qualified, _, tag = full.rpartition(".")
                found.append((by_name[qualified], tag))
            return found
        return [by_name[n] for n in names]

    def find_policies(
        self, pattern: str | None = None, *, plugin: str | None = None
    ) -> list[PolicyEntry]:
        return [
            p
            for p in self.policies
            if plugin in (None, p.plugin) and matches(pattern, p.qualified_name)
        ]

    def _registries(self) -> tuple[Registry[BackboneEntry], Registry[PolicyEntry]]:
        backbones: Registry[BackboneEntry] = Registry("backbone")
        for entry in self.backbones:
            backbones.add(entry)
        policies: Registry[PolicyEntry] = Registry("policy")
        for entry in self.policies:
            policies.add(entry)
        return backbones, policies

    def resolve_backbone(self, name: str) -> tuple[BackboneEntry, str | None]:
        """``(entry, tag)`` for a backbone name, resolved as the catalog would."""
        return resolve_backbone(self._registries()[0], name)

    def check_names(self, backbone: str | None = None, policy: str | None = None) -> None:
        """Raise at once for a backbone or policy name the catalog would refuse.

        The same errors as the catalog's (unknown with suggestions, ambiguous with the
        candidates), from the cached listing, so a typo costs no plugin imports. Only the
        policy's name is checked, not its arguments.
        """
        check_names(*self._registries(), backbone=backbone, policy=policy)

    def to_dict(self) -> dict[str, Any]:
        """The cache's form: backbones as rows ``[plugin, name, summary, tags, input, head,
        num_classes, tag_inputs]`` where ``input`` indexes the distinct input configs (most
        are shared) and ``tag_inputs`` is None or ``{tag: index}`` for the tags whose config
        differs, so 100,000 backbones parse in a fraction of a second."""
        inputs: list[dict[str, Any]] = []
        by_text: dict[str, int] = {}
        seen: dict[int, int] = {}  # id of an input dict -> its index: most entries share one

        def index_of(config: dict[str, Any]) -> int:
            index = seen.get(id(config))
            if index is None:
                text = json.dumps(config, sort_keys=True)
                if text not in by_text:
                    by_text[text] = len(inputs)
                    inputs.append(config)
                index = seen[id(config)] = by_text[text]
            return index

        rows = []
        for b in self.backbones:
            tag_index = (
                {tag: index_of(config) for tag, config in b.tag_inputs.items()}
                if b.tag_inputs
                else None
            )
            rows.append(
                [
                    b.plugin,
                    b.name,
                    b.summary,
                    list(b.tags),
                    index_of(b.input),
                    b.head,
                    b.num_classes,
                    tag_index,
                ]
            )
        return {
            "format": LISTING_FORMAT,
            "key": self.key,
            "plugins": [p.to_dict() for p in self.plugins],
            "policies": [asdict(p) for p in self.policies],
            "inputs": inputs,
            "backbones": rows,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Listing:
        if data.get("format") != LISTING_FORMAT:
            raise ValueError("listing format changed")
        inputs = data["inputs"]
        return cls(
            backbones=[
                BackboneEntry(
                    plugin,
                    name,
                    summary,
                    tuple(tags),
                    inputs[index],
                    head,
                    classes,
                    {t: inputs[i] for t, i in tag_index.items()} if tag_index else None,
                )
                for plugin, name, summary, tags, index, head, classes, tag_index in data[
                    "backbones"
                ]
            ],
            policies=[PolicyEntry(**{**p, "args": tuple(p["args"])}) for p in data["policies"]],
            plugins=[PluginRecord.from_dict(p) for p in data["plugins"]],
            key=data["key"],
        )


def listing_from_catalog(catalog: Catalog, key: str = "") -> Listing:

    inputs: dict[Any, dict[str, Any]] = {}  # one dict per distinct input config, shared
    backbones = [
        BackboneEntry(
            plugin=s.plugin,
            name=s.name,
            summary=s.summary,
            tags=tuple(s.pretrained_tags),
            input=_shared_input(inputs, s.input_config),
            head=s.head,
            num_classes=s.num_classes,
            tag_inputs=_tag_inputs(inputs, s),
        )
        for s in catalog.backbones
    ]
    policies = [
        PolicyEntry(
            plugin=s.plugin,
            name=s.name,
            summary=s.summary,
            args=tuple(a.to_dict() for a in s.args),
            schedule=s.schedule,
        )
        for s in catalog.policies
    ]
    plugins = sorted(catalog.host.records.values(), key=lambda r: r.name)
    return Listing(backbones, policies, plugins, key=key)


def _tag_inputs(inputs: dict[Any, dict[str, Any]], spec: Any) -> dict[str, dict[str, Any]] | None:
    """The tags of ``spec`` whose input config differs from the architecture's (None if none):
    the cache stores only those."""
    configs = getattr(spec, "tag_input_configs", None) or {}
    differing = {
        tag: _shared_input(inputs, config)
        for tag, config in configs.items()
        if tag in spec.pretrained_tags and config != spec.input_config
    }
    return differing or None


def _shared_input(inputs: dict[Any, dict[str, Any]], config: Any) -> dict[str, Any]:
    try:
        shared = inputs.get(config)
    except Exception:  # an unhashable config (a plugin's subclass): its own dict
        return config.to_dict()
    if shared is None:
        shared = inputs[config] = config.to_dict()
    return shared


# ---------------------------------------------------------------- the fingerprint


def _module_stamp(module: str) -> str:
    """Newest mtime and file count of a module's top-level package, found without importing
    it ("-" if missing): an edited editable install changes it."""
    top = module.split(":", 1)[0].strip().split(".", 1)[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return "-"
    if spec is None:
        return "-"
    paths = []
    for location in spec.submodule_search_locations or ([spec.origin] if spec.origin else []):
        path = Path(location)
        if path.is_dir():
            paths.extend(p for p in path.rglob("*.py"))
        else:
            paths.append(path)
    stamps = []
    for path in paths:
        try:
            stamps.append(path.stat().st_mtime_ns)
        except OSError:
            continue
    return f"{max(stamps, default=0)}:{len(stamps)}"


def _requirement_versions(distribution: str) -> list[str]:
    try:
        requires = importlib_metadata.requires(distribution) or []
    except importlib_metadata.PackageNotFoundError:
        return []
    found = []
    for requirement in requires:
        if "extra ==" in requirement or "extra==" in requirement:
            continue
        match = _REQ_NAME.match(requirement)
        if not match:
            continue
        name = match.group(1)
        try:
            found.append(f"{name}=={importlib_metadata.version(name)}")
        except importlib_metadata.PackageNotFoundError:
            found.append(f"{name}==missing")
    return sorted(found)


def listing_key() -> str:
    """A fingerprint of everything the listing depends on; reads metadata, imports nothing."""
    parts: list[str] = [f"zoo=={__version__}", f"format={LISTING_FORMAT}"]
    parts += _requirement_versions("zoo-transfer")
    parts.append(f"zoo files {_module_stamp('zoo')}")  # built-in plugins live in zoo itself
    autoload = not env_flag(DISABLE_AUTOLOAD_ENV)
    parts.append(f"autoload={autoload}")
    if autoload:
        for source in discover_entry_points():
            parts.append(
                f"ep {source.name}={source.value} {source.distribution}=={source.version} "
                f"{_module_stamp(source.value)}"
            )
            if source.distribution:
                parts += _requirement_versions(source.distribution)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


# ---------------------------------------------------------------- the cache


def cache_dir() -> Path:
    """``$ZOO_CACHE_DIR``, else ``$XDG_CACHE_HOME/zoo``, else ``~/.cache/zoo``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "zoo"


def _cache_path(key: str) -> Path:
    return cache_dir() / f"listing-{key[:24]}.json"


def _read_cache(key: str) -> Listing | None:
    try:
        data = json.loads(_cache_path(key).read_text(encoding="utf-8"))
        listing = Listing.from_dict(data)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
    if listing.key != key:
        return None
    listing.from_cache = True
    return listing


def write_cache_file(
    target: Path, text: str, *, stale: Callable[[Path], bool] | None = None
) -> None:
    """Write ``text`` to ``target`` atomically, best effort: a cache that cannot be written is
    skipped. Other ``*.json`` files beside it for which ``stale(path)`` is true are removed."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".cache-", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        for old in target.parent.glob("*.json") if stale else ():
            if old != target and stale(old):
                with contextlib.suppress(OSError):
                    old.unlink()
    except OSError:
        return


# ---------------------------------------------------------------- the name index

#: Beside the cached listing, its entries are split by name into this many small files, so
#: resolving one name reads one or two of them whatever the catalog's size.
INDEX_SHARDS = 256


def _shard(name: str) -> str:
    return f"{zlib.crc32(name.encode('utf-8', 'replace')) % INDEX_SHARDS:02x}"


def _index_path(key: str) -> Path:
    return cache_dir() / f"listing-{key[:24]}.index"


def write_index(listing: Listing) -> None:
    """Write the name index of ``listing`` (best effort, atomic: a folder renamed into place).
    Index folders of other keys are removed."""
    parts: dict[str, Listing] = {}
    for entry in listing.backbones:
        parts.setdefault(_shard(entry.name), Listing([], [], [], key=listing.key))
        parts[_shard(entry.name)].backbones.append(entry)
    for entry in listing.policies:
        parts.setdefault(_shard(entry.name), Listing([], [], [], key=listing.key))
        parts[_shard(entry.name)].policies.append(entry)
    target = _index_path(listing.key)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".index-", dir=target.parent))
        try:
            for shard, part in parts.items():
                (tmp / f"{shard}.json").write_text(json.dumps(part.to_dict()), encoding="utf-8")
            os.replace(tmp, target)
        except OSError:  # another process put the same index in place first
            shutil.rmtree(tmp, ignore_errors=True)
        for old in target.parent.glob("listing-*.index"):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)
    except OSError:
        return


def _read_index(key: str, name: str) -> Listing | None:
    """The entries of the index files ``name`` can resolve to (itself, and the architecture
    of ``arch.tag``); None when there is no valid index for ``key``."""
    bare = name.split(":", 1)[-1]
    folder = _index_path(key)
    if not folder.is_dir():
        return None
    found = Listing([], [], [], key=key)
    for shard in sorted({_shard(n) for n in (bare, bare.rpartition(".")[0]) if n}):
        try:
            part = Listing.from_dict(json.loads((folder / f"{shard}.json").read_text("utf-8")))
        except FileNotFoundError:
            continue  # no entry falls in this shard
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return None
        if part.key != key:
            return None
        found.backbones += part.backbones
        found.policies += part.policies
    return found


def find_backbone(name: str) -> tuple[str, BackboneEntry, str | None]:
    """``(listing key, entry, pretrained tag or None)`` for a backbone name, resolved as the
    catalog would, raising what it raises.

    A name the index resolves costs one or two small files, whatever the catalog's size; an
    unknown name (its suggestions need every name), a missing index or ``ZOO_NO_CACHE=1`` use
    the whole listing.
    """
    key, (entry, tag) = _from_index(name, lambda listing: listing.resolve_backbone(name))
    return key, entry, tag


def check_names_cached(backbone: str | None = None, policy: str | None = None) -> None:
    """:meth:`Listing.check_names` through the name index (see :func:`find_backbone`)."""
    if backbone is not None:
        find_backbone(backbone)
    if policy is not None:
        from zoo.core.policy_args import split_policy_spec

        _from_index(
            split_policy_spec(policy)[0], lambda listing: listing.check_names(policy=policy)
        )


def _from_index(name: str, resolve: Callable[[Listing], T]) -> tuple[str, T]:
    """``(listing key, resolve(listing))``, on the index entries of ``name`` when they
    resolve it, else on the whole listing."""
    if isinstance(name, str) and name and not env_flag(NO_CACHE_ENV):
        key = listing_key()
        part = _read_index(key, name)
        if part is not None:
            with contextlib.suppress(UnknownNameError):
                return key, resolve(part)
    listing = get_listing()
    if listing.from_cache and not _index_path(listing.key).is_dir():
        write_index(listing)
    return listing.key, resolve(listing)


_catalog_built_here: Catalog | None = None


def catalog_matches_installed(catalog: Catalog | None) -> bool:
    """True when ``catalog`` is None or the one :func:`get_listing` built from the installed
    plugins; False for a catalog a test or notebook set up itself, which caches must not
    speak for."""
    return catalog is None or catalog is _catalog_built_here


def get_listing(*, use_cache: bool = True) -> Listing:
    """The listing, from the disk cache when its key matches, else built and cached."""
    use_cache = use_cache and not env_flag(NO_CACHE_ENV)
    key = listing_key()
    if use_cache:
        cached = _read_cache(key)
        if cached is not None:
            return cached
    from zoo.core.catalog import build_catalog, set_catalog

    global _catalog_built_here
    catalog = build_catalog()  # fresh: plugins may have changed since the process catalog
    set_catalog(catalog)
    _catalog_built_here = catalog
    listing = listing_from_catalog(catalog, key=key)
    if use_cache:
        write_cache_file(
            _cache_path(key),
            json.dumps(listing.to_dict()),
            stale=lambda p: p.name.startswith("listing-"),
        )
        write_index(listing)
    return listing


# ---------------------------------------------------------------- parameter tables


def table_for_name(name: str, **create_kwargs: Any) -> ParamTable:
    """``zoo.params(name, **create_kwargs)``, served from the disk cache when it can be.

    Building a table needs torch, timm and every plugin imported (seconds) although the build
    itself, on the meta device, takes a tenth of a second; the table depends only on the
    installed plugins and the build arguments, so it is cached under the listing's key. The
    cache is bypassed when this process already has a catalog of its own (a test, a notebook
    that installed plugins) or ``ZOO_NO_CACHE=1`` is set; build arguments that are not JSON
    values (a tensor, a class) are never cached.
    """
    from zoo.core.catalog import current_catalog
    from zoo.tables.table import ParamTable

    if not catalog_matches_installed(current_catalog()) or env_flag(NO_CACHE_ENV):
        return _params(name, **create_kwargs)
    key, entry, _tag = find_backbone(name)  # a tag names weights, not a table
    try:
        arguments = json.dumps([entry.qualified_name, create_kwargs], sort_keys=True)
    except (TypeError, ValueError):
        return _params(name, **create_kwargs)
    digest = hashlib.sha256(f"{key}\n{arguments}".encode()).hexdigest()
    prefix = f"{key[:16]}-"
    path = cache_dir() / "tables" / f"{prefix}{digest[:32]}.json"
    try:
        return ParamTable.from_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    table = _params(entry.qualified_name, **create_kwargs)
    write_cache_file(path, table.to_json(), stale=lambda p: not p.name.startswith(prefix))
    return table


def _params(name: str, **create_kwargs: Any) -> ParamTable:
    """``zoo.params(name)``, imported only on a cache miss (a cached table needs no model code)."""
    from zoo.api import params

    return params(name, **create_kwargs)
