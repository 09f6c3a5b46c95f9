"""Rebuilding a saved model from its untrusted metadata, and checking that metadata.

Everything in a saved file's metadata is untrusted (the seal is two public hashes: anyone can
edit and re-seal). A rebuild for loading therefore resolves the backbone, naming the file and a
missing plugin if it is not installed (:func:`saved_spec`); refuses architecture arguments that
are not safe to pass from a file (:func:`zoo.io.build_args.check_saved_kwargs`: no file reads,
no unpickling, no network); and builds with :func:`zoo.core.build.build` (``untrusted=True``):
on ``meta`` first, bounded by the file's own tensors, every shape compared before anything is
materialized.

A file of a model with adapters (``zoo.adapters``) gets them injected into the skeleton before
the shapes are compared (:func:`inject_saved`): each kind must be installed (a missing plugin is
named with the file), each target must exist, each declared shape must be the file's tensor's
and the one the kind builds -- all on ``meta``, so a hostile rank or token count allocates
nothing.

:func:`check_consistency` then refuses metadata that contradicts the tensors: class names or
``zoo.num_classes`` that do not match the head, trained names the model does not have.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from zoo.core.build import (
    ALLOCATION_FLOOR,
    build,
    root_cause,
    tensor_count_limit,
)
from zoo.core.record import BuildArgs
from zoo.errors import CorruptFileError, ModelBuildError, UnknownNameError, ZooError
from zoo.io.build_args import check_saved_kwargs
from zoo.plans.adapters import inject
from zoo.plans.plan import Addition
from zoo.tables.build import classifier_param_names

if TYPE_CHECKING:
    import torch
    from torch import nn

    from zoo.core.catalog import Catalog
    from zoo.core.specs import AdapterSpec, BackboneSpec
    from zoo.io.metadata import ZooMetadata
    from zoo.plans.plan import Plan

__all__ = ["ALLOCATION_FLOOR"]  # re-exported for zoo.io.persistence


def saved_spec(
    name: str,
    *,
    source: str,
    plugins: Mapping[str, Any] | None = None,
    catalog: Catalog,
) -> tuple[BackboneSpec, str | None]:
    """``(spec, tag)`` of the backbone a file names; an unknown one is named with the file
    (:func:`_unknown_in_file`)."""
    try:
        return catalog.backbone(name)
    except UnknownNameError as exc:
        raise _unknown_in_file(exc, "saved with backbone", name, source, plugins, catalog) from None


def saved_kind(
    kind: str,
    *,
    source: str,
    plugins: Mapping[str, Any] | None = None,
    catalog: Catalog,
) -> AdapterSpec:
    """The adapter kind a file names; an unknown one is named with the file
    (:func:`_unknown_in_file`)."""
    try:
        return catalog.adapter_kind(kind)
    except UnknownNameError as exc:
        raise _unknown_in_file(
            exc, "has adapters of kind", kind, source, plugins, catalog
        ) from None


def _unknown_in_file(
    exc: UnknownNameError,
    what: str,
    name: str,
    source: str,
    plugins: Mapping[str, Any] | None,
    catalog: Catalog,
) -> UnknownNameError:
    """``exc`` (a name the catalog does not know) reworded to name the file: when the name's
    plugin is not installed, with the plugin version the file records (``zoo.plugins``) and
    the installed plugins; else with the installed version of a plugin the file records."""
    plugin = name.split(":", 1)[0] if ":" in name else None
    installed = sorted(r for r in catalog.host.records if "@" not in r)
    version = (plugins or {}).get(plugin) if plugin else None
    recorded = f" {version}" if isinstance(version, str) and version else ""
    if plugin is not None and plugin not in installed:
        message = (
            f"{source}: {what} {name!r} from plugin {plugin!r}{recorded}, which is not "
            f"installed (installed plugins: {', '.join(installed) or 'none'}); install the "
            "plugin that provides it, then load the file again"
        )
    else:
        message = f"{source}: {what} {name!r}, which is unknown: {exc}"
        record = catalog.host.records.get(plugin) if plugin else None
        if recorded and record is not None and record.version:
            message += (
                f" (the file was saved with plugin {plugin!r}{recorded}; "
                f"{record.version} is installed)"
            )
    exc.args = (message,)
    return exc


def saved_additions(adapters: Sequence[Mapping[str, Any]], *, source: str) -> list[Addition]:
    """The ``zoo.adapters`` entries of a file as :class:`~zoo.Addition` records."""
    try:
        return [Addition.from_dict(item) for item in adapters]
    except ZooError as exc:  # PlanError
        raise CorruptFileError(f"{source}: metadata 'zoo.adapters' is invalid: {exc}") from None


def inject_saved(
    model: nn.Module,
    additions: Sequence[Addition],
    state: Mapping[str, Any] | None,
    *,
    source: str,
    plugins: Mapping[str, Any] | None = None,
    catalog: Catalog,
    unchecked: Collection[str] = (),
) -> None:
    """Inject a file's adapters into ``model`` (its rebuilt backbone), refusing metadata that
    contradicts the model or the tensors with :class:`~zoo.CorruptFileError`.

    Every kind is resolved first (:func:`saved_kind`), every target must be a module of the
    model, every declared parameter must be in ``state`` (when given: tensors or header entries)
    with the declared shape, and the kind must build exactly the declared parameters
    (``unchecked`` names are not looked for in ``state``: a delta's tensors taken from its
    base). It is the ``prepare`` of :func:`zoo.core.build.build`, which runs it on the ``meta``
    skeleton (nothing allocated, whatever the file's arguments say) and bounds what it
    allocates on a real model.
    """
    if not additions:
        return
    specs = {
        a.kind: saved_kind(a.kind, source=source, plugins=plugins, catalog=catalog)
        for a in additions
    }
    modules = dict(model.named_modules())
    for addition in additions:
        if addition.target not in modules:
            raise CorruptFileError(
                f"{source}: metadata 'zoo.adapters' puts a {addition.kind} adapter on module "
                f"{addition.target!r}, which the rebuilt backbone does not have; the metadata "
                "contradicts the model"
            )
        if state is None:
            continue
        for name, shape in zip(addition.names, addition.params.values(), strict=True):
            if name in unchecked:
                continue
            tensor = state.get(name)
            if tensor is None or tuple(tensor.shape) != tuple(shape):
                found = "no such tensor" if tensor is None else f"shape {tuple(tensor.shape)}"
                raise CorruptFileError(
                    f"{source}: metadata 'zoo.adapters' declares {name!r} of shape "
                    f"{tuple(shape)}, but the file holds {found}; the metadata contradicts the "
                    "tensors"
                )
    try:
        with tensor_count_limit(8 * len(additions) + 256, "the saved adapters"):
            inject(model, additions, specs=specs)
    except ZooError as exc:  # AdapterError, ModelBuildError
        raise CorruptFileError(
            f"{source}: metadata 'zoo.adapters' cannot be injected: {exc}; the metadata is not "
            "trusted"
        ) from None
    except Exception as exc:  # a plugin's adapter kind failed on the file's arguments
        raise CorruptFileError(
            f"{source}: metadata 'zoo.adapters' cannot be injected ({type(exc).__name__}: "
            f"{exc}); the metadata is not trusted"
        ) from None


def rebuild(
    build_args: Mapping[str, Any],
    state: Mapping[str, torch.Tensor],
    *,
    source: str,
    plugins: Mapping[str, Any] | None = None,
    catalog: Catalog,
    additions: Sequence[Addition] = (),
) -> nn.Module:
    """Build ``build_args``'s backbone (``zoo.build``: no pretrained weights), inject
    ``additions`` (the file's adapters, :func:`inject_saved`) and load ``state`` into it
    strictly, with :func:`zoo.core.build.build` (``untrusted=True``).

    Never reads a file, unpickles or touches the network, and allocates nothing beyond what
    ``state`` implies. Raises :class:`~zoo.CorruptFileError` for refused arguments and adapters
    and :class:`~zoo.WeightsMismatchError` naming the tensors that do not fit.
    """
    name = str(build_args["backbone"])
    spec, _tag = saved_spec(name, source=source, plugins=plugins, catalog=catalog)
    kwargs = check_saved_kwargs(spec, build_args.get("kwargs"), source=source)
    args = BuildArgs(spec.qualified_name, build_args.get("num_classes"), kwargs)

    def prepare(model: nn.Module) -> None:
        inject_saved(model, additions, state, source=source, plugins=plugins, catalog=catalog)

    return build(spec, args, state=state, untrusted=True, prepare=prepare, source=source)


def check_pretrained_size(
    spec: BackboneSpec, kwargs: dict[str, Any], *, source: str, key: str = "zoo.build"
) -> None:
    """Before a pretrained base is built with a file's ``kwargs`` (a delta's, or a PEFT
    folder's; ``key`` names where they are): refuse arguments that make it much larger than the
    architecture's default, which its pretrained weights fit.

    Both are built on ``meta`` (no memory), the asked one bounded by the default's tensors
    (:func:`zoo.core.build.build` with ``untrusted=True``): a base may be at most twice the
    default's size plus :data:`~zoo.core.build.ALLOCATION_FLOOR` (arguments such as
    ``img_size`` or ``in_chans`` change it a little), and register at most
    :func:`~zoo.core.build.tensor_budget` of the default's tensors; an inflated one
    (``embed_dim``, ``depth``) raises :class:`~zoo.CorruptFileError`.
    """

    if not kwargs:
        return
    default = build(spec, BuildArgs(spec.qualified_name), device="meta")
    default_bytes = _total_bytes(default)
    asked_args = BuildArgs(spec.qualified_name, None, kwargs)
    try:
        asked = build(
            spec,
            asked_args,
            device="meta",
            untrusted=True,
            state=default.state_dict(),
            source=source,
        )
    except ModelBuildError as exc:
        if isinstance(root_cause(exc), ModelBuildError):  # stopped by a limit above: inflated
            raise CorruptFileError(
                f"{source}: metadata {key!r} asks for a pretrained base {spec.qualified_name} "
                f"with arguments {sorted(kwargs)} more than twice its default size "
                f"({root_cause(exc)}); zoo does not build it"
            ) from None
        raise
    asked_bytes = _total_bytes(asked)
    if asked_bytes > ALLOCATION_FLOOR + 2 * default_bytes:
        raise CorruptFileError(
            f"{source}: metadata {key!r} asks for a pretrained base {spec.qualified_name} "
            f"of {asked_bytes:,} bytes with arguments {sorted(kwargs)}, more than twice its "
            f"default size ({default_bytes:,} bytes), which its pretrained weights fit; "
            "zoo does not build it"
        )


def _total_bytes(model: nn.Module) -> int:
    return sum(int(t.nbytes) for t in (*model.parameters(), *model.buffers()))


# ---------------------------------------------------------------- metadata vs tensors


def head_outputs(model: nn.Module, spec: BackboneSpec | None) -> int | None:
    """Outputs of ``model``'s classifier (the plugin's head locator, else
    ``get_classifier()``); None when it has none or they cannot be told."""

    params = dict(model.named_parameters())
    heads = tuple(f"{h}." for h in spec.head_modules) if spec is not None else ()
    names = sorted(n for n in params if n.startswith(heads)) or classifier_param_names(model)
    for name in names:
        if name.rsplit(".", 1)[-1] == "weight" and params[name].dim() >= 1:
            return int(params[name].shape[0])
    return None


def check_consistency(
    model: nn.Module,
    meta: ZooMetadata,
    spec: BackboneSpec | None,
    plan: Plan | None,
    *,
    source: str,
) -> None:
    """Refuse metadata that contradicts the model built from the file's tensors.

    Checks ``zoo.num_classes`` and the length of ``zoo.classes`` against the head's outputs
    (or each other when the head cannot be told), and that every name in ``zoo.trained`` and in
    the plan (``zoo.plan``) is a parameter (or norm layer) of the model. Raises
    :class:`~zoo.CorruptFileError` naming the file and the key.
    """
    outputs = head_outputs(model, spec)
    against = "the head's outputs" if outputs is not None else "'zoo.num_classes'"
    expected = outputs if outputs is not None else meta.num_classes
    if outputs is not None and meta.num_classes is not None and meta.num_classes != outputs:
        raise CorruptFileError(
            f"{source}: metadata 'zoo.num_classes' says {meta.num_classes} but the saved head "
            f"has {outputs} outputs; the metadata contradicts the tensors"
        )
    if meta.classes is not None and expected is not None and len(meta.classes) != expected:
        raise CorruptFileError(
            f"{source}: metadata 'zoo.classes' names {len(meta.classes)} classes but "
            f"{against} say {expected}; the metadata contradicts the tensors"
        )
    params = {n for n, _ in model.named_parameters()}
    if plan is not None:
        _known(source, "zoo.plan", "parameter", list(plan.params), params)
        modules = {n for n, _ in model.named_modules()}
        _known(source, "zoo.plan", "normalization layer", list(plan.norms), modules)


def _known(source: str, key: str, kind: str, names: list[str], known: set[str]) -> None:
    unknown = [n for n in names if n not in known]
    if unknown:
        shown = ", ".join(repr(n) for n in unknown[:5])
        more = f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""
        raise CorruptFileError(
            f"{source}: metadata {key!r} names {len(unknown)} {kind}(s) the model does not "
            f"have: {shown}{more}; the metadata contradicts the tensors"
        )
