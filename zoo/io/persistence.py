"""Saving and loading models: ``zoo.save``, ``zoo.load``, ``zoo.inspect``.

``save`` writes one self-sufficient ``.safetensors`` file (tensors + ``zoo.*`` metadata, see
:mod:`zoo.io.metadata`) into the store or to a path; ``load`` rebuilds the backbone through its
plugin and loads the tensors strictly. A *delta* stores only what training changed, plus a
reference to its base (pretrained weights, a file, or another store entry) and the base's hash;
loading resolves the base again and refuses one whose hash differs. The base of a model is
recorded when it is built: ``zoo.create(pretrained=True)``, ``zoo.create(weights=FILE)`` and
``zoo.load(...)`` set ``model.zoo.base``.

The file records the model's plan (``zoo.plan``: the policy, what trained, the adapters added),
or for a model saved without one, the plan of what trained. A model with injected adapters
(LoRA, SSF, VPT…) saves as a delta of its base by default (the adapters, the head and whatever
else changed), and loading rebuilds the base, injects the plan's adapters again and loads the
tensors (``merge=True`` then folds them into the weights).
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo._version import __version__
from zoo.core.build import build as build_model
from zoo.core.build import describe_mismatch
from zoo.core.record import BuildArgs, ModelRecord, record_of, unwrap
from zoo.core.specs import InputConfig
from zoo.errors import (
    AdapterMergeError,
    BaseMismatchError,
    CorruptFileError,
    InvalidNameError,
    MissingBaseError,
    ModelBuildError,
    ModelExistsError,
    ModelNotFoundError,
    PlanError,
    StoreError,
    UnknownNameError,
    WeightsMismatchError,
    ZooError,
)
from zoo.io import hub, store
from zoo.io.broadcast import broadcast_from_first
from zoo.io.build_args import check_save_kwargs, check_saved_kwargs
from zoo.io.fileformat import (
    Header,
    SavedFile,
    TensorEntry,
    atomic_write_bytes,
    current_umask,
    fsync_dir,
    hash_tensors,
    open_regular,
    read_file,
    read_header,
    seal,
    write_tensors,
)
from zoo.io.metadata import MAX_LOCATIONS, ZooMetadata, config_json, is_zoo_metadata
from zoo.io.provenance import plugin_metadata, plugin_versions, timm_config
from zoo.io.rebuild import (
    check_consistency,
    check_pretrained_size,
    inject_saved,
    saved_spec,
)
from zoo.io.rebuild import rebuild as rebuild
from zoo.io.trust import check_folder, file_in, read_header_in
from zoo.plans.adapters import adapters as injected_adapters
from zoo.plans.adapters import merge_adapters
from zoo.plans.freeze import apply_plan
from zoo.plans.plan import ParamPlan, Plan
from zoo.tables.build import describe

if TYPE_CHECKING:
    import torch
    from torch import nn

    from zoo.core.catalog import Catalog
    from zoo.core.specs import BackboneSpec

MAX_BASE_CHAIN = 32


# ---------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """Where a model is saved or loaded from: a store entry, a folder, or a single file."""

    kind: str  # "store" | "dir" | "file"
    model_path: Path
    config_path: Path | None
    lock_key: str
    name: str | None = None

    @property
    def display(self) -> str:
        return repr(self.name) if self.name else str(self.model_path)


def resolve_target(name_or_path: str | os.PathLike[str]) -> Target:
    """Where ``name_or_path`` points (see :func:`zoo.io.store.is_path_target` for the rule).

    A store name is ``<ZOO_HOME>/models/<name>/``; a path ending in ``.safetensors`` is that
    single file; any other path is a folder laid out like a store entry (``model.safetensors`` +
    ``config.json``). An existing file is always a single file.
    """
    if not store.is_path_target(name_or_path):
        name = store.validate_name(name_or_path)
        folder = store.entry_dir(name)
        return Target("store", folder / store.MODEL_FILE, folder / store.CONFIG_FILE, name, name)
    path = Path(os.path.abspath(Path(name_or_path).expanduser()))
    if path.suffix == ".safetensors" or path.is_file():
        return Target("file", path, None, str(path))
    return Target("dir", path / store.MODEL_FILE, path / store.CONFIG_FILE, str(path))


def _existing(target: Target) -> Path:
    if target.kind == "store":  # never read through a symlink that leaves the store
        store.check_inside(target.model_path, store.models_dir())
    if target.model_path.is_file():
        return target.model_path
    if target.kind == "file" and os.path.lexists(target.model_path):
        # a FIFO or device named like a model: say what it is (open_regular never opens it)
        with open_regular(target.model_path):
            pass
    if target.kind == "store":
        return store.existing_entry(target.name or "")
    raise ModelNotFoundError("model file", str(target.model_path))


# ---------------------------------------------------------------- bases


@dataclass
class ResolvedState:
    """A complete state dict read from a file (a delta merged with its base) and its hash."""

    tensors: dict[str, torch.Tensor]
    sha256: str
    meta: ZooMetadata | None = None
    saved: SavedFile | None = None


def file_state(path: str | os.PathLike[str], *, catalog: Catalog) -> ResolvedState:
    """The complete state a weights file holds: a plain file, a full save, or a zoo delta
    merged with its (verified) base (a pretrained base is built through ``catalog``)."""
    return _state_of_file(Path(path), (), catalog=catalog)


def _state_of_file(
    path: Path, chain: tuple[Path, ...], *, catalog: Catalog, saved: SavedFile | None = None
) -> ResolvedState:
    real = path.resolve()
    if real in chain:
        loop = " -> ".join(str(p) for p in (*chain, real))
        raise CorruptFileError(f"{path}: the chain of delta bases loops: {loop}")
    if len(chain) >= MAX_BASE_CHAIN:
        raise CorruptFileError(f"{path}: more than {MAX_BASE_CHAIN} deltas stacked on each other")
    saved = saved if saved is not None else read_file(path)
    if not is_zoo_metadata(saved.metadata):
        digest = saved.tensors_sha256 or hash_tensors(saved.tensors)
        return ResolvedState(saved.tensors, digest, None, saved)
    meta = ZooMetadata.parse(saved.metadata, source=str(path), shapes=saved.header.shapes)
    if meta.kind == "full":
        return ResolvedState(saved.tensors, meta.tensors_sha256, meta, saved)
    assert meta.base is not None  # parse guarantees it for deltas
    base = resolve_base(meta.base, meta.build, catalog=catalog, chain=(*chain, real), for_file=path)
    missing = [n for n in meta.base_tensors if n not in base.tensors]
    if missing:
        raise BaseMismatchError(
            f"{path}: its base lacks {len(missing)} tensor(s) the delta needs: "
            + ", ".join(missing[:6])
        )
    merged = {n: base.tensors[n] for n in meta.base_tensors}
    merged.update(saved.tensors)
    digest = hash_tensors(merged)
    if digest != meta.state_sha256:
        raise BaseMismatchError(
            f"{path}: delta + base do not rebuild the saved model (state hash {digest[:16]}… "
            f"vs recorded {str(meta.state_sha256)[:16]}…)"
        )
    return ResolvedState(merged, digest, meta, saved)


def resolve_base(
    base: Mapping[str, Any],
    build: Mapping[str, Any],
    *,
    catalog: Catalog,
    chain: tuple[Path, ...] = (),
    for_file: Path | str = "model",
) -> ResolvedState:
    """The complete state of a base reference, accepted only when its hash is the recorded one.

    The reference's own place is tried first: ``kind="file"`` reads the file (itself possibly
    a delta), ``"store"`` the store entry, ``"pretrained"`` builds the backbone with its
    pretrained weights (default head, the saved architecture arguments) through the plugin.
    When that place is gone or holds other weights and the reference records a ``sha256``,
    the base is looked for by that hash (:func:`_places`): its ``locations`` (a store name, a
    file, a Hub repository, pretrained weights), then every store entry and every cached Hub
    snapshot whose zoo header records the hash. Raises :class:`~zoo.MissingBaseError` when no
    place holds it and :class:`~zoo.BaseMismatchError` when places hold other weights, naming
    the hash and where zoo looked.
    """
    kind, ref, recorded = base.get("kind"), base.get("ref"), base.get("sha256")
    if kind not in ("file", "store", "pretrained"):
        raise CorruptFileError(f"{for_file}: unknown base kind {kind!r}")
    try:
        resolved = _resolve_at(str(kind), str(ref), build, catalog, chain, for_file)
    except MissingBaseError as exc:
        if not recorded:
            raise
        missing: MissingBaseError | None = exc
    else:
        if not recorded or resolved.sha256 == recorded:
            return resolved
        missing = None
    looked = [f"{kind} {ref!r}"]
    for where, place_kind, place_ref in _places(base, str(recorded)):
        looked.append(where)
        try:
            other = _resolve_at(place_kind, place_ref, build, catalog, chain, for_file)
        except (ZooError, OSError):  # not there, unreadable or unusable: look on
            continue
        if other.sha256 == recorded:
            return other
    places = "; looked for it by hash in " + ", ".join(looked)
    if missing is not None:
        raise MissingBaseError(
            f"{missing} (sha256 {recorded}){places}, and in every store entry and cached Hugging "
            "Face snapshot; save the same weights in the store under any name, or put the "
            "Hub repository in the cache, to load this delta"
        )
    raise BaseMismatchError(
        f"{for_file}: its base {kind} {ref!r} has changed: expected sha256 {recorded}, "
        f"found {resolved.sha256}{places}; a delta only loads on the exact weights it was "
        "trained from"
    )


def _resolve_at(
    kind: str,
    ref: str,
    build: Mapping[str, Any],
    catalog: Catalog,
    chain: tuple[Path, ...],
    for_file: Path | str,
) -> ResolvedState:
    """The complete state at one place: a file, a store entry, pretrained weights or a Hub
    repository (its cached or downloaded ``model.safetensors``)."""
    if kind == "file":
        path = Path(ref)
        if not path.is_file():
            raise MissingBaseError(
                f"{for_file}: its base file {path} is missing; restore it to load this delta"
            )
        return _state_of_file(path, chain, catalog=catalog)
    if kind == "store":
        try:
            path = store.existing_entry(ref)
        except (ModelNotFoundError, InvalidNameError) as exc:
            raise MissingBaseError(
                f"{for_file}: its base, store entry {ref!r}, cannot be found ({exc}); "
                "restore it to load this delta"
            ) from None
        return _state_of_file(path, chain, catalog=catalog)
    if kind == "hub":
        folder = hub.snapshot(hub.parse(hub.PREFIX + hub.repo_id(ref)))
        return _state_of_file(_hub_model(folder), chain, catalog=catalog)
    if kind == "hub-cache":
        return _state_of_file(_hub_model(Path(ref)), chain, catalog=catalog)
    spec, tag = saved_spec(ref, source=str(for_file), catalog=catalog)
    kwargs = check_saved_kwargs(spec, build.get("kwargs"), source=str(for_file))
    check_pretrained_size(spec, kwargs, source=str(for_file))
    model = build_model(spec, BuildArgs(spec.qualified_name, None, kwargs, tag), pretrained=True)
    tensors = {k: v.detach() for k, v in model.state_dict().items()}
    return ResolvedState(tensors, hash_tensors(tensors))


def _hub_model(folder: Path) -> Path:
    """The ``model.safetensors`` of a cached Hub snapshot (untrusted: :mod:`zoo.io.trust`)."""
    return file_in(
        check_folder(folder, what="the Hub snapshot"), store.MODEL_FILE, what="a Hub model"
    )


def _places(base: Mapping[str, Any], recorded: str) -> Iterator[tuple[str, str, str]]:
    """``(description, kind, ref)`` of each other place a base with hash ``recorded`` may be:
    the reference's ``locations``, then the store entries and the cached Hub snapshots whose
    zoo header records that hash (a full file's ``zoo.tensors_sha256``, a delta's
    ``zoo.state_sha256``)."""
    seen = {(base.get("kind"), base.get("ref"))}
    for location in base.get("locations") or []:
        key = (location.get("kind"), location.get("ref"))
        if key not in seen:
            seen.add(key)
            yield f"{key[0]} {key[1]!r}", str(key[0]), str(key[1])
    for name in store.entry_names():
        if ("store", name) not in seen and _records(store.entry_dir(name), recorded):
            yield f"store entry {name!r}", "store", name
    for repo, folder in hub.cached_files(store.MODEL_FILE):
        if _records(folder, recorded):
            yield f"cached Hub snapshot {repo} ({folder.name[:12]})", "hub-cache", str(folder)


def _records(folder: Path, digest: str) -> bool:
    """Whether ``folder/model.safetensors`` is a zoo file whose complete state has ``digest``
    (read from its header alone; anything unreadable is no)."""
    try:
        metadata = read_header_in(folder, store.MODEL_FILE, what="a model").metadata
    except (ZooError, OSError):
        return False
    key = "zoo.state_sha256" if metadata.get("zoo.kind") == "delta" else "zoo.tensors_sha256"
    return metadata.get(key) == digest


def base_reference(base: Mapping[str, Any], digest: str | None) -> dict[str, Any]:
    """The ``zoo.base`` a save records: the base's place, its hash and the other places it is
    known at (``locations``, carried from the model's record: a Hub repository it was loaded
    from)."""
    reference = {"kind": base.get("kind"), "ref": base.get("ref"), "sha256": digest}
    locations = [
        {"kind": loc.get("kind"), "ref": loc.get("ref")}
        for loc in base.get("locations") or []
        if isinstance(loc, Mapping)
    ]
    if locations:
        reference["locations"] = locations[:MAX_LOCATIONS]
    return reference


# ---------------------------------------------------------------- saving


def save(
    model: nn.Module,
    name_or_path: str | os.PathLike[str],
    *,
    classes: Sequence[str] | None = None,
    delta: bool | None = None,
    overwrite: bool = False,
    catalog: Catalog,
) -> Path:
    """Save ``model`` as one self-sufficient ``.safetensors`` file; returns the file's path.

    ``name_or_path``: a store name (``"cats-v1"`` -> ``<ZOO_HOME>/models/cats-v1/``, with a
    timm-style ``config.json``), or a path — an ``os.PathLike``, or a ``str`` with a path
    separator or ending in ``.safetensors``. A ``.safetensors`` path is written as that single
    file; another path becomes a folder like a store entry.

    ``classes`` (default ``model.zoo.classes``) names the outputs. ``delta=True`` stores only the
    trained tensors and whatever else differs from the model's base (recorded at build time),
    with the base's hash; ``delta=False`` stores every tensor. The default, ``delta=None``, saves
    a model with injected adapters (``zoo.freeze(model, "lora")``) as a delta when it has a base
    (the adapters, the head and whatever else changed: a few percent of the full file) and any
    other model in full. The plan (``zoo.plan``) records the adapters. An existing model is
    only replaced with ``overwrite=True`` (:class:`~zoo.ModelExistsError`). The model must come
    from ``zoo.create`` or ``zoo.load``.

    A wrapped model (``torch.compile``, DDP) saves as the model it wraps (:func:`zoo.unwrap`).
    A model sharded with FSDP2's ``fully_shard`` is gathered to a full state dict on the CPU;
    every process calls ``save``, process 0 writes, and every process returns the path (or
    raises process 0's error).
    """
    model = unwrap(model)
    record = _record_of(model)
    args = record.build
    assert args is not None  # _record_of refuses a model without
    spec = _spec_of(args.backbone, catalog)
    if spec is not None:  # refuse architecture arguments that loading would refuse
        check_save_kwargs(spec, dict(args.kwargs))
    target = resolve_target(name_or_path)
    check_free(target, overwrite)

    def write(state: dict[str, torch.Tensor]) -> Path:
        return _save_state(
            model, record, spec, state, target, classes, delta, overwrite, catalog=catalog
        )

    if _is_sharded(model):
        return _save_sharded(model, write)
    return write({k: v.detach() for k, v in model.state_dict().items()})


def _save_state(
    model: nn.Module,
    record: ModelRecord,
    spec: BackboneSpec | None,
    state: dict[str, torch.Tensor],
    target: Target,
    classes: Sequence[str] | None,
    delta: bool | None,
    overwrite: bool,
    *,
    catalog: Catalog,
) -> Path:
    """Write ``state`` (the model's full state dict) with the metadata ``record`` gives."""
    tensors, metadata = _contents(model, record, spec, state, target, classes, delta, catalog)
    with store.locked(target.lock_key):
        check_free(target, overwrite)
        try:
            _write(target, tensors, metadata)
        except OSError as exc:
            raise StoreError(f"cannot save to {target.model_path}: {exc.strerror or exc}") from exc
    return target.model_path


def file_contents(
    model: nn.Module, *, catalog: Catalog
) -> tuple[Mapping[str, torch.Tensor], dict[str, str]]:
    """The tensors and sealed metadata a full save of ``model`` writes (``zoo.save(model, ...,
    delta=False)``), for a writer that places them itself (an exported folder)."""
    model = unwrap(model)
    record = _record_of(model)
    assert record.build is not None  # _record_of refuses a model without
    spec = _spec_of(record.build.backbone, catalog)
    if spec is not None:
        check_save_kwargs(spec, dict(record.build.kwargs))
    state = {k: v.detach() for k, v in model.state_dict().items()}
    return _contents(model, record, spec, state, None, None, False, catalog)


def _contents(
    model: nn.Module,
    record: ModelRecord,
    spec: BackboneSpec | None,
    state: dict[str, torch.Tensor],
    target: Target | None,
    classes: Sequence[str] | None,
    delta: bool | None,
    catalog: Catalog,
) -> tuple[Mapping[str, torch.Tensor], dict[str, str]]:
    """The tensors (all of ``state``, or a delta's) and the sealed metadata of a save."""
    args = record.build
    assert args is not None
    build = args.to_dict()
    plan = _saved_plan(model, record.plan)
    names = _classes(record, classes, _num_classes(model, args))
    base = record.base
    if delta is None:  # adapters save as a delta of their base when there is one
        delta = bool(plan.additions) and bool(base)
    meta_kwargs: dict[str, Any] = {}
    tensors: Mapping[str, torch.Tensor] = state
    if delta:
        if not base:
            raise MissingBaseError(
                "a delta stores only what changed from the model's base weights, but this model "
                "has none recorded (it was built with random weights); build it with "
                "zoo.create(..., pretrained=True), zoo.create(..., weights=FILE) or zoo.load(...), "
                "or save it in full (delta=False)"
            )
        if target is not None:
            _check_not_own_base(base, target)
        resolved = resolve_base(base, build, catalog=catalog, for_file="the model's base")
        kept = _delta_names(state, resolved.tensors, plan.trainable)
        tensors = {n: state[n] for n in sorted(kept)}
        base = base_reference(base, resolved.sha256)
        meta_kwargs = {
            "base_tensors": {n: list(state[n].shape) for n in sorted(set(state) - kept)},
            "state_sha256": hash_tensors(state),
        }
    input_config = record.input_config.to_dict() if record.input_config is not None else {}
    meta = ZooMetadata(
        kind="delta" if delta else "full",
        build=build,
        plan=plan.to_dict(),
        classes=names,
        input_config=input_config,
        base=base_reference(base, base.get("sha256")) if base else None,
        zoo_version=__version__,
        plugins=plugin_versions(args.backbone, plan, catalog, plan.additions),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        timm_config=timm_config(model, names, input_config, build, spec),
        extra=plugin_metadata(model, args.backbone, catalog),
        training=record.training,
        compare=record.compare,
        **meta_kwargs,
    )
    return tensors, seal(tensors, meta.to_metadata())


def _saved_plan(model: nn.Module, plan: Plan | None) -> Plan:
    """The plan a file records: the model's, else the plan of what trains (``requires_grad``);
    listing every parameter (one it does not list is frozen, as when a plan is applied) and
    the adapters injected in the model, so the file derives its counts from it."""
    if plan is None:
        plan = Plan(params=[ParamPlan(n, p.requires_grad) for n, p in model.named_parameters()])
    missing = [ParamPlan(n, False) for n, _ in model.named_parameters() if n not in plan.params]
    additions = tuple(injected_adapters(model))
    if missing or additions != plan.additions:
        plan = replace(plan, params=[*plan.params.values(), *missing], additions=additions)
    return plan


def _loaded_plan(plan: Plan) -> Plan | None:
    """The plan a loaded model carries: None for one that only says what trained (what a model
    saved without a plan records), else the plan."""
    plain = Plan(params=[ParamPlan(n, p.trainable) for n, p in plan.params.items()])
    return None if plan == plain else plan


def _record_of(model: nn.Module) -> ModelRecord:
    record = record_of(model)
    if record is None or not isinstance(record.build, BuildArgs):
        raise ZooError(
            "zoo.save needs a model built by zoo.create or zoo.load (it reads model.zoo.build to "
            "know how to rebuild it); build it with zoo.create(name, ...)"
        )
    return record


def _is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` is sharded across processes: FSDP2 ``fully_shard`` on it or a part of
    it (whose parameters are DTensors, except the root's between a forward and a backward), or
    any DTensor parameter."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return False
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    return any(isinstance(m, FSDPModule) for m in model.modules()) or any(
        isinstance(p, DTensor) for p in model.parameters()
    )


def _save_sharded(model: nn.Module, write: Callable[[dict[str, torch.Tensor]], Path]) -> Path:
    """Gather ``model``'s full state dict on the CPU of process 0 (a collective: every process
    calls it), let process 0 ``write`` it, and hand its path or its error to every process."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options)
    outcome: list[str | None] = [None, None]  # the path, or process 0's error
    error: Exception | None = None
    if dist.get_rank() == 0:
        try:
            outcome[0] = str(write(state))
        except Exception as exc:
            error, outcome[1] = exc, f"{type(exc).__name__}: {exc}"
    outcome = broadcast_from_first(outcome)  # the store, not a collective: zoo.io.broadcast
    if error is not None:
        raise error
    if outcome[1] is not None:
        raise ZooError(f"process 0 could not save the model: {outcome[1]}")
    return Path(str(outcome[0]))


def _spec_of(backbone: str, catalog: Catalog) -> BackboneSpec | None:
    """The spec of ``backbone`` (None when no installed plugin offers it)."""
    try:
        return catalog.backbones.lookup(backbone)
    except ZooError:
        return None


def _num_classes(model: nn.Module, args: BuildArgs) -> int | None:
    value = args.num_classes
    if value is None:
        value = getattr(model, "num_classes", None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _classes(
    record: ModelRecord, classes: Sequence[str] | None, num_classes: int | None
) -> list[str] | None:
    if classes is None:
        classes = record.classes
    if classes is None:
        return None
    if isinstance(classes, (str, bytes)) or not all(isinstance(c, str) for c in classes):
        raise ZooError("classes must be a list of class names (strings)")
    names = list(classes)
    if num_classes is not None and len(names) != num_classes:
        raise ZooError(
            f"got {len(names)} class names for a model with {num_classes} outputs; "
            "pass one name per output, in index order"
        )
    return names


def _delta_names(
    state: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor], trained: Sequence[str]
) -> set[str]:
    """Tensors a delta must hold: the trained ones and every tensor that differs from the base."""
    import torch

    kept = {n for n in trained if n in state}
    for name, tensor in state.items():
        if name in kept:
            continue
        other = base.get(name)
        if (
            other is None
            or other.shape != tensor.shape
            or other.dtype != tensor.dtype
            or not torch.equal(other, tensor.to(other.device))
        ):
            kept.add(name)
    return kept


def _check_not_own_base(base: Mapping[str, Any], target: Target) -> None:
    kind, ref = base.get("kind"), str(base.get("ref"))
    same = (kind == "store" and target.kind == "store" and ref == target.name) or (
        kind == "file" and Path(ref).resolve() == target.model_path.resolve()
    )
    if same:
        raise ZooError(
            f"cannot save a delta over its own base {target.display}: the delta would need the "
            "weights it replaces; save it under another name, or in full (delta=False)"
        )


def check_free(target: Target, overwrite: bool) -> None:
    """Refuse a save to ``target`` that exists (unless ``overwrite``) or is unsafe to write."""
    if target.kind == "store":
        twin = store.case_twin(target.name or "")
        if twin is not None:
            raise InvalidNameError(
                f"invalid model name {target.name!r}: it differs only in case from the existing "
                f"entry {twin!r} (names must stay distinct on case-insensitive file systems)"
            )
        store.check_inside(target.model_path, store.models_dir())
    if target.model_path.exists() and not overwrite:
        raise ModelExistsError(
            f"a model is already saved at {target.display} ({target.model_path}); pass "
            "overwrite=True (CLI: --overwrite) to replace it, or choose another name"
        )


def _write(
    target: Target, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> None:
    config = config_json(metadata).encode("utf-8")
    if target.kind == "store" and target.name is not None:
        _warn_dependents(target.name)
    if target.kind == "store" and not target.model_path.parent.exists():
        _write_new_entry(target, tensors, metadata, config)
        return
    target.model_path.parent.mkdir(parents=True, exist_ok=True)
    write_tensors(target.model_path, tensors, metadata)
    if target.config_path is not None:
        atomic_write_bytes(target.config_path, [config])


def _write_new_entry(
    target: Target, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], config: bytes
) -> None:
    """A new entry is written whole into a hidden folder, then renamed into place at once."""
    root = store.models_dir()
    root.mkdir(parents=True, exist_ok=True)
    folder = target.model_path.parent
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{folder.name}.", suffix=".zoo-tmp"))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())
        write_tensors(tmp / store.MODEL_FILE, tensors, metadata)
        atomic_write_bytes(tmp / store.CONFIG_FILE, [config])
        os.rename(tmp, folder)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(root)


def _warn_dependents(name: str) -> None:
    if not store.model_file(name).is_file():
        return
    needed_by = store.dependents(name)
    if needed_by:
        warnings.warn(
            f"replacing {name!r}, the base of the delta(s) {', '.join(map(repr, needed_by))}; "
            "they will refuse to load (base hash mismatch) until saved again",
            stacklevel=4,
        )


# ---------------------------------------------------------------- loading


def load(
    name_or_path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    trainable: bool = False,
    merge: bool = False,
    catalog: Catalog,
) -> nn.Module:
    """Load a saved model, ready to predict (eval mode, nothing trainable).

    The backbone is rebuilt through its plugin (``zoo.create`` with the saved backbone,
    ``num_classes`` and arguments, no pretrained download) and the tensors are loaded strictly:
    missing, unexpected or wrongly shaped tensors raise :class:`~zoo.WeightsMismatchError`
    naming them. A delta's base is resolved and checked (:class:`~zoo.BaseMismatchError`).

    The model's record ``model.zoo`` (:class:`~zoo.ModelRecord`) holds its ``classes``,
    ``input_config``, ``build``, ``base`` (now this saved model, so a delta of it can be saved
    again), ``plan`` (or None) and ``metadata`` (the raw metadata). ``trainable=True``
    re-applies the saved plan (which parameters train, norm modes) to continue training; the
    model is still in eval mode.

    A model saved with adapters gets them injected again (their kinds' plugins must be
    installed) and computes exactly what was saved. ``merge=True`` folds them into the dense
    weights (``zoo.merge_adapters``): a plain model without adapter modules, which saves as an
    ordinary full file; adapters that cannot merge (VPT) raise :class:`~zoo.AdapterMergeError`.
    """
    if merge and trainable:
        raise ZooError(
            "merge=True returns a plain model whose adapters are folded into its weights, so "
            "there is no adapter plan to continue training; load with trainable=True alone to "
            "continue training the adapters, or merge and then zoo.freeze the merged model"
        )
    target = resolve_target(name_or_path)
    path = _existing(target)
    header = read_header(path)
    if not header.sealed and not is_zoo_metadata(header.metadata):  # plain: refuse it early
        ZooMetadata.parse(header.metadata, source=str(path))  # raises "not a zoo model file"
    # one read: metadata and tensors of the same version
    resolved = _state_of_file(path, (), catalog=catalog)
    assert resolved.saved is not None
    metadata = resolved.saved.metadata
    meta = resolved.meta or ZooMetadata.parse(metadata, source=str(path))
    plan = _plan_of(meta, path)
    model = rebuild(
        meta.build,
        resolved.tensors,
        source=str(path),
        plugins=meta.plugins,
        catalog=catalog,
        additions=plan.additions,
    )
    spec, _tag = saved_spec(meta.backbone, source=str(path), plugins=meta.plugins, catalog=catalog)
    check_consistency(model, meta, spec, plan, source=str(path))
    base_kind = "store" if target.kind == "store" else "file"
    ref = target.name if target.kind == "store" else str(path.resolve())
    model.zoo = ModelRecord(  # type: ignore[assignment]
        build=BuildArgs.from_dict(meta.build),
        input_config=InputConfig.from_dict(meta.input_config),
        classes=list(meta.classes) if meta.classes is not None else None,
        plan=_loaded_plan(plan),
        base={"kind": base_kind, "ref": ref, "sha256": resolved.sha256},
        metadata=dict(metadata),
    )
    model.to(device)
    model.eval()
    if merge and plan.additions:
        _merge(model, path)
    if trainable and model.zoo.plan is not None:
        apply_plan(model, plan, catalog=catalog)
    else:
        trained = set(meta.trained) if trainable else set()
        for name, param in model.named_parameters():
            param.requires_grad_(name in trained)
    return model


def _merge(model: nn.Module, path: Path) -> None:
    try:
        merge_adapters(model)
    except AdapterMergeError as exc:
        raise AdapterMergeError(
            f"{path}: cannot load with merge=True: {exc}; load it without merge=True to use "
            "the model with its adapters (the file is unchanged)"
        ) from None


def _plan_of(meta: ZooMetadata, path: Path) -> Plan:
    try:
        return Plan.from_dict(meta.plan)
    except PlanError as exc:  # parse checked it: only a ZooMetadata made by hand gets here
        raise CorruptFileError(f"{path}: metadata 'zoo.plan' is invalid: {exc}") from None


# ---------------------------------------------------------------- inspecting


def _depths(
    spec: BackboneSpec,
    meta: ZooMetadata,
    kwargs: dict[str, Any],
    header: Header,
    path: Path,
    catalog: Catalog,
) -> tuple[list[dict[str, Any]], int]:
    """The per-depth summary of a saved model, from its backbone built on ``meta``, and the
    bytes of a full file's tensors without the adapters (what the base takes).

    The file's tensors (their shapes, from the header) must fit the meta-built model (with its
    adapters injected), and the metadata must agree with it
    (:func:`~zoo.io.rebuild.check_consistency`).
    """

    entries = {e.name: e for e in header.entries}
    num_classes = meta.build.get("num_classes")
    plan = _plan_of(meta, path)
    additions = plan.additions
    model = build_model(
        spec,
        BuildArgs(spec.qualified_name, num_classes, kwargs),
        device="meta",
        untrusted=True,  # bounded by the file's tensors and, for a delta, its base's count
        state={**{n: TensorEntry(n, "F32", (), 0, 0) for n in meta.base_tensors}, **entries},
        prepare=lambda skeleton: inject_saved(
            skeleton,
            additions,
            entries,
            unchecked=set(meta.base_tensors),
            source=str(path),
            plugins=meta.plugins,
            catalog=catalog,
        ),
        source=str(path),
    )
    _check_header_fits(model, entries, full=meta.kind == "full", source=str(path))
    check_consistency(model, meta, spec, plan, source=str(path))
    table = describe(model, spec=spec, catalog=catalog)
    added = {n for a in additions for n in a.names}
    base_bytes = sum(
        t.numel() * t.element_size() for n, t in model.state_dict().items() if n not in added
    )
    depths = [
        {
            "depth": summary.depth,
            "group": summary.group,
            "tensors": summary.tensors,
            "numel": summary.numel,
            "trained_numel": summary.trainable_numel,
            "norms": summary.norms,
        }
        for summary in table.with_trainable(set(meta.trained)).depth_summary()
    ]
    return depths, base_bytes


def _check_header_fits(
    model: nn.Module, entries: Mapping[str, Any], *, full: bool, source: str
) -> None:
    """A full file's tensors must be exactly the model's; a delta's must be some of them."""

    own = set(model.state_dict())
    skip = set() if full else own - set(entries)
    problems = describe_mismatch(model, entries, skip=skip)
    if problems:
        raise WeightsMismatchError(f"{source} does not fit the model: " + "; ".join(problems))


@dataclass
class Inspection:
    """What ``zoo.inspect`` reports about a saved model."""

    path: Path
    name: str | None
    size: int
    metadata: ZooMetadata
    tensors: int
    tensor_bytes: int
    verified: bool
    depths: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: bytes of the tensors of a full file of the model without its adapters (0: not known)
    base_bytes: int = 0

    @property
    def adapters(self) -> list[dict[str, Any]]:
        """The adapters by kind: ``kind``, ``args`` (each distinct set), ``targets`` and
        ``params`` (numbers added); empty for a model without adapters."""
        return adapter_summary(self.metadata.adapters)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "size": self.size,
            "tensors": self.tensors,
            "tensor_bytes": self.tensor_bytes,
            "verified": self.verified,
            **self.metadata.summary(),
            "plan": self.metadata.plan,
            "depths": self.depths,
            "notes": self.notes,
            "adapter_summary": self.adapters,
            "base_bytes": self.base_bytes or None,
            "size_vs_base": self.size / self.base_bytes if self.base_bytes else None,
        }


def adapter_summary(adapters: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The plan's additions (checked entries) grouped by kind: arguments, targets, added
    numbers."""
    kinds: dict[str, dict[str, Any]] = {}
    for item in adapters:
        row = kinds.setdefault(
            item["kind"], {"kind": item["kind"], "args": [], "targets": 0, "params": 0}
        )
        if item["args"] not in row["args"]:
            row["args"].append(item["args"])
        row["targets"] += 1
        row["params"] += sum(math.prod(shape) for shape in item["params"].values())
    return list(kinds.values())


def inspect(
    name_or_path: str | os.PathLike[str], *, verify: bool = True, catalog: Catalog
) -> Inspection:
    """Describe a saved model without building it: metadata, size, what was trained per depth.

    ``verify=True`` reads the whole file and checks its seal (raising
    :class:`~zoo.TamperedFileError` if a byte changed); the per-depth summary comes from
    ``zoo.params`` of the backbone on the ``meta`` device with the saved trained names.
    """
    target = resolve_target(name_or_path)
    path = _existing(target)
    header = read_file(path).header if verify else read_header(path)
    meta = ZooMetadata.parse(header.metadata, source=str(path), shapes=header.shapes)
    notes: list[str] = []
    depths: list[dict[str, Any]] = []
    base_bytes = 0
    try:
        spec, _tag = saved_spec(
            meta.backbone, source=str(path), plugins=meta.plugins, catalog=catalog
        )
    except UnknownNameError as exc:
        spec = None
        notes.append(f"no per-depth summary: {exc}")
    if spec is not None:
        kwargs = check_saved_kwargs(spec, meta.build.get("kwargs"), source=str(path))
        try:
            depths, base_bytes = _depths(spec, meta, kwargs, header, path, catalog)
        except (ModelBuildError, UnknownNameError) as exc:  # UnknownNameError: an adapter kind
            notes.append(f"no per-depth summary: {exc}")
    return Inspection(
        path=path,
        name=target.name,
        size=header.file_size,
        metadata=meta,
        tensors=len(header.entries),
        tensor_bytes=header.data_len,
        verified=verify,
        depths=depths,
        notes=notes,
        base_bytes=base_bytes,
    )
