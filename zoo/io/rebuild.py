"""Rebuilding a saved model from its untrusted metadata, and checking that metadata.

Everything in a saved file's metadata is untrusted (the seal is two public hashes: anyone can
edit and re-seal). A rebuild for loading therefore:

1. resolves the backbone, naming the file and a missing plugin if it is not installed
   (:func:`saved_spec`);
2. refuses architecture arguments that are not safe to pass from a file
   (:func:`zoo.io.build_args.check_saved_kwargs`: no file reads, no unpickling, no network);
3. builds the model on the ``meta`` device, where no weights are allocated; a constructor that
   cannot run there is built with each tensor moved to ``meta`` as it is registered, and no
   single tensor may exceed what the file's own tensors imply;
4. compares every tensor's shape with the file's and refuses a mismatch
   (:class:`~zoo.WeightsMismatchError`) — before anything is materialized;
5. bounds the buffers the file does not hold (non-persistent ones) by the same limit;
6. only then materializes: the file's tensors are assigned in place, or (tied weights,
   non-persistent buffers) the backbone is built normally and loaded strictly.

:func:`check_consistency` then refuses metadata that contradicts the tensors: class names or
``zoo.num_classes`` that do not match the head, trained names the model does not have.

A file of a model with adapters (``zoo.adapters``) gets them injected into the skeleton before
step 4 (:func:`inject_saved`): each kind must be installed (a missing plugin is named with the
file), each target must exist, each declared shape must be the file's tensor's and the one the
kind builds -- all on ``meta``, so a hostile rank or token count allocates nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from zoo.core.create import attach_build_info, call_create
from zoo.errors import (
    CorruptFileError,
    ModelBuildError,
    UnknownNameError,
    WeightsMismatchError,
    ZooError,
    short_repr,
)
from zoo.io.build_args import check_saved_kwargs
from zoo.io.weights import describe_mismatch, head_tensor_names, load_state_strict
from zoo.plans.adapters import inject
from zoo.plans.plan import Addition
from zoo.tables.build import (
    allocation_limit,
    classifier_param_names,
    meta_model,
    tensor_budget,
    tensor_count_limit,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from zoo.core.catalog import Catalog
    from zoo.core.specs import AdapterSpec, BackboneSpec
    from zoo.io.metadata import ZooMetadata
    from zoo.plans.plan import Plan

#: A constructor may allocate temporaries beyond the saved tensors; this much is always allowed.
ALLOCATION_FLOOR = 64 * 2**20


def saved_spec(
    name: str,
    *,
    source: str,
    plugins: Mapping[str, Any] | None = None,
    catalog: Catalog,
) -> tuple[BackboneSpec, str | None]:
    """``(spec, tag)`` of the backbone a file names; an unknown one is named with the file.

    If the backbone's plugin is not installed the message says so, with the plugin version the
    file records (``zoo.plugins``) and the installed plugins.
    """
    try:
        return catalog.backbone(name)
    except UnknownNameError as exc:
        plugin = name.split(":", 1)[0] if ":" in name else None
        installed = sorted(r for r in catalog.host.records if "@" not in r)
        if plugin is not None and plugin not in installed:
            version = (plugins or {}).get(plugin)
            recorded = f" {version}" if isinstance(version, str) and version else ""
            message = (
                f"{source}: saved with backbone {name!r} from plugin {plugin!r}{recorded}, "
                f"which is not installed (installed plugins: {', '.join(installed) or 'none'}); "
                f"install the plugin that provides it, then load the file again"
            )
        else:
            message = f"{source}: saved with backbone {name!r}, which is unknown: {exc}"
            if plugin is not None:
                version = (plugins or {}).get(plugin)
                record = catalog.host.records.get(plugin)
                if isinstance(version, str) and record is not None and record.version:
                    message += (
                        f" (the file was saved with plugin {plugin!r} {version}; "
                        f"{record.version} is installed)"
                    )
        exc.args = (message,)
        raise exc from None


def saved_kind(
    kind: str,
    *,
    source: str,
    plugins: Mapping[str, Any] | None = None,
    catalog: Catalog,
) -> AdapterSpec:
    """The adapter kind a file names; an unknown one is named with the file and its plugin.

    Like :func:`saved_spec` for backbones: a kind whose plugin is not installed says so, with
    the version the file records (``zoo.plugins``) and the installed plugins.
    """
    try:
        return catalog.adapter_kind(kind)
    except UnknownNameError as exc:
        plugin = kind.split(":", 1)[0] if ":" in kind else None
        installed = sorted(r for r in catalog.host.records if "@" not in r)
        version = (plugins or {}).get(plugin) if plugin else None
        recorded = f" {version}" if isinstance(version, str) and version else ""
        if plugin is not None and plugin not in installed:
            message = (
                f"{source}: has adapters of kind {kind!r} from plugin {plugin!r}{recorded}, "
                f"which is not installed (installed plugins: {', '.join(installed) or 'none'}); "
                "install the plugin that provides it, then load the file again"
            )
        else:
            message = (
                f"{source}: has adapters of kind {kind!r}, which no installed plugin provides "
                f"({exc})"
            )
            record = catalog.host.records.get(plugin) if plugin else None
            if recorded and record is not None and record.version:
                message += (
                    f"; the file was saved with plugin {plugin!r}{recorded}, "
                    f"{record.version} is installed"
                )
        exc.args = (message,)
        raise exc from None


def saved_additions(adapters: Sequence[Mapping[str, Any]], *, source: str) -> list[Addition]:
    """The ``zoo.adapters`` entries of a file as :class:`~zoo.Addition` records."""
    try:
        return [Addition.from_dict(item) for item in adapters]
    except ZooError as exc:  # PlanError
        raise CorruptFileError(f"{source}: metadata 'zoo.adapters' is invalid: {exc}") from None


def inject_saved(
    model: nn.Module,
    additions: Sequence[Addition],
    state: Mapping[str, torch.Tensor] | None,
    *,
    source: str,
    plugins: Mapping[str, Any] | None = None,
    catalog: Catalog,
    on_meta: bool,
    max_bytes: int | None = None,
    unchecked: Collection[str] = (),
) -> None:
    """Inject a file's adapters into ``model`` (its rebuilt backbone), refusing metadata that
    contradicts the model or the tensors with :class:`~zoo.CorruptFileError`.

    Every kind is resolved first (:func:`saved_kind`), every target must be a module of the
    model, every declared parameter must be in ``state`` (when given) with the declared shape,
    and the kind must build exactly the declared parameters (``unchecked`` names are not looked
    for in ``state``: a delta's tensors taken from its base). ``on_meta`` builds the adapters on
    the ``meta`` device (nothing allocated, whatever the file's arguments say); otherwise no
    single tensor may exceed ``max_bytes``.
    """
    import contextlib

    import torch

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
    device = torch.device("meta") if on_meta else contextlib.nullcontext()
    try:
        with (
            device,
            allocation_limit(max_bytes, "the saved adapters"),
            tensor_count_limit(8 * len(additions) + 256, "the saved adapters"),
        ):
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


def max_tensor_bytes(state: Mapping[str, Any]) -> int:
    """The largest single allocation a rebuild of ``state`` may make."""
    largest = max((_nbytes(t) for t in state.values()), default=0)
    return ALLOCATION_FLOOR + 2 * largest


def _nbytes(tensor: Any) -> int:
    return int(tensor.numel()) * int(tensor.element_size())


def rebuild(
    build: Mapping[str, Any],
    state: Mapping[str, torch.Tensor],
    *,
    source: str,
    plugins: Mapping[str, Any] | None = None,
    catalog: Catalog,
    additions: Sequence[Addition] = (),
) -> nn.Module:
    """Build ``build``'s backbone (no pretrained weights), inject ``additions`` (the file's
    adapters, :func:`inject_saved`) and load ``state`` into it strictly.

    Never reads a file, unpickles or touches the network, and allocates nothing beyond what
    ``state`` implies (see the module docstring). Raises :class:`~zoo.CorruptFileError` for
    refused arguments and adapters and :class:`~zoo.WeightsMismatchError` naming the tensors
    that do not fit.
    """

    spec, _tag = saved_spec(str(build["backbone"]), source=source, plugins=plugins, catalog=catalog)
    kwargs = check_saved_kwargs(spec, build.get("kwargs"), source=source)
    num_classes = build.get("num_classes")
    limit = max_tensor_bytes(state)
    try:
        skeleton, _notes = meta_model(
            spec,
            num_classes,
            kwargs,
            max_tensor_bytes=limit,
            max_tensors=tensor_budget(len(state)),
        )
    except ModelBuildError as exc:
        raise _cannot_rebuild(spec, num_classes, kwargs, source, exc) from exc
    inject_saved(
        skeleton, additions, state, source=source, plugins=plugins, catalog=catalog, on_meta=True
    )
    problems = describe_mismatch(skeleton, state)
    if problems:
        raise WeightsMismatchError(f"{source} does not fit the model: " + "; ".join(problems))
    _check_extra_tensors(skeleton, state, limit, source)
    model = _assign(skeleton, state)
    if model is None:
        model = _build_and_load(spec, num_classes, kwargs, state, source, additions, catalog)
    attach_build_info(model, spec, tag=None, num_classes=num_classes, kwargs=kwargs)
    return model


def check_pretrained_size(
    spec: BackboneSpec, kwargs: dict[str, Any], *, source: str, key: str = "zoo.build"
) -> None:
    """Before a pretrained base is built with a file's ``kwargs`` (a delta's, or a PEFT
    folder's; ``key`` names where they are): refuse arguments that make it much larger than the
    architecture's default, which its pretrained weights fit.

    Both are built on ``meta`` (no memory). A base may be at most twice the default's size plus
    :data:`ALLOCATION_FLOOR` (arguments such as ``img_size`` or ``in_chans`` change it a little),
    and register at most :func:`~zoo.tables.build.tensor_budget` of the default's tensors; an
    inflated one (``embed_dim``, ``depth``) raises :class:`~zoo.CorruptFileError`.
    """

    if not kwargs:
        return
    default, _notes = meta_model(spec, None, {})
    default_bytes = _total_bytes(default)
    state = default.state_dict()
    largest = max((_nbytes(t) for t in state.values()), default=0)
    limit = ALLOCATION_FLOOR + 2 * default_bytes
    try:
        asked, _notes = meta_model(
            spec,
            None,
            kwargs,
            max_tensor_bytes=ALLOCATION_FLOOR + 2 * largest,
            max_tensors=tensor_budget(len(state)),
        )
    except ModelBuildError as exc:
        if isinstance(_root(exc), ModelBuildError):  # stopped by a limit above: inflated
            raise CorruptFileError(
                f"{source}: metadata {key!r} asks for a pretrained base {spec.qualified_name} "
                f"with arguments {sorted(kwargs)} more than twice its default size "
                f"({_root(exc)}); zoo does not build it"
            ) from None
        raise _cannot_rebuild(spec, None, kwargs, source, exc, key=key) from exc
    asked_bytes = _total_bytes(asked)
    if asked_bytes > limit:
        raise CorruptFileError(
            f"{source}: metadata {key!r} asks for a pretrained base {spec.qualified_name} "
            f"of {asked_bytes:,} bytes with arguments {sorted(kwargs)}, more than twice its "
            f"default size ({default_bytes:,} bytes), which its pretrained weights fit; "
            "zoo does not build it"
        )


def _total_bytes(model: nn.Module) -> int:
    return sum(_nbytes(t) for t in (*model.parameters(), *model.buffers()))


def _check_extra_tensors(
    skeleton: nn.Module, state: Mapping[str, Any], limit: int, source: str
) -> None:
    """Tensors the file does not hold (non-persistent buffers) may not exceed the limit."""
    persistent = set(skeleton.state_dict())
    extra = sum(_nbytes(t) for n, t in skeleton.named_buffers() if n not in persistent)
    if extra > limit:
        raise CorruptFileError(
            f"{source}: its architecture arguments make non-saved buffers of {extra:,} bytes, "
            f"more than the {limit:,} its tensors allow; the metadata 'zoo.build' is not trusted"
        )


def _assign(skeleton: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module | None:
    """The meta-built model with ``state`` assigned in place, or None if that cannot work."""
    if not _assignable(skeleton):
        return None
    skeleton.load_state_dict(state, strict=True, assign=True)
    if any(t.is_meta for t in (*skeleton.parameters(), *skeleton.buffers())):
        return None
    return skeleton


def _assignable(model: nn.Module) -> bool:
    persistent = set(model.state_dict())
    params = list(model.named_parameters(remove_duplicate=False))
    buffers = list(model.named_buffers(remove_duplicate=False))
    unique = {id(t) for _, t in params} | {id(t) for _, t in buffers}
    if len(unique) != len(params) + len(buffers):
        return False  # tied tensors: assignment would untie them
    return all(n in persistent for n, _ in (*params, *buffers))


def _build_and_load(
    spec: BackboneSpec,
    num_classes: int | None,
    kwargs: dict[str, Any],
    state: Mapping[str, torch.Tensor],
    source: str,
    additions: Sequence[Addition] = (),
    catalog: Catalog | None = None,
) -> nn.Module:
    """The normal build, only ever reached after the meta shapes matched ``state`` and the
    buffers the file does not hold were bounded: what it allocates is what the file implies.
    (It runs without :func:`~zoo.tables.build.allocation_limit`, whose per-operation hook
    would slow such builds by a third; the adapters, checked on ``meta`` already, are injected
    under it.)"""

    try:
        model = call_create(spec, num_classes, False, dict(kwargs))
    except ModelBuildError as exc:
        raise _cannot_rebuild(spec, num_classes, kwargs, source, exc) from exc
    if additions and catalog is not None:
        inject_saved(
            model,
            additions,
            state,
            source=source,
            catalog=catalog,
            on_meta=False,
            max_bytes=max_tensor_bytes(state),
        )
    load_state_strict(model, state, source=source)
    return model


def _root(exc: BaseException) -> BaseException:
    """The first cause of ``exc``'s chain."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def _cannot_rebuild(
    spec: BackboneSpec,
    num_classes: int | None,
    kwargs: dict[str, Any],
    source: str,
    exc: ModelBuildError,
    *,
    key: str = "zoo.build",
) -> ModelBuildError:
    root = _root(exc)
    if isinstance(root, ModelBuildError):  # zoo's own refusal (a tensor over the limit)
        why, hint = str(root), f"; the metadata {key!r} is not trusted"
    else:
        why = f"{type(root).__name__}: {root}"
        hint = " (was the file written with another version of the backbone's plugin?)"
    arguments = short_repr(kwargs, 301)
    return ModelBuildError(
        f"{source}: cannot rebuild backbone {spec.qualified_name} with "
        f"num_classes={num_classes!r} and arguments {arguments}: {why}{hint}"
    )


# ---------------------------------------------------------------- metadata vs tensors


def head_outputs(model: nn.Module, spec: BackboneSpec | None) -> int | None:
    """Outputs of ``model``'s classifier (the plugin's head locator, else
    ``get_classifier()``); None when it has none or they cannot be told."""

    params = dict(model.named_parameters())
    names = sorted(head_tensor_names(list(params), spec.head if spec else None))
    names = names or classifier_param_names(model)
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
