"""The one builder: every model zoo makes comes from :func:`build`.

``zoo.create`` (with or without ``weights=FILE``), ``zoo.load`` rebuilding a saved file, the
pretrained base of a delta, and the ``meta``-device skeletons that tables (``zoo.params(name)``,
``zoo show``, ``check_plugin``) and ``zoo.inspect`` describe all call it. It calls the plugin's
``create`` (its failures named after the plugin), loads tensors strictly, and gives the model
its record, ``model.zoo`` (:func:`attach_build_info`, which also reads a plugin's hints).

Building for a file zoo did not write (``untrusted=True``) never lets the file's arguments
steer the build beyond what its own tensors imply:

1. the backbone is built on the ``meta`` device, where no weights are allocated; a
   constructor that cannot run there is built with each tensor moved to ``meta`` as it is
   registered, and no single tensor may exceed :func:`max_tensor_bytes` of the file's tensors;
2. registering more tensors than :func:`tensor_budget` allows stops the build
   (``depth=100000`` costs no memory on ``meta``, but its modules do);
3. ``prepare`` (the file's adapters) runs on that skeleton, still on ``meta``;
4. every tensor's shape is compared with the file's (:class:`~zoo.WeightsMismatchError`)
   before anything is materialized, and buffers the file does not hold are bounded too;
5. only then the file's tensors are assigned in place, or (tied weights, non-persistent
   buffers) the backbone is built normally and loaded strictly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

from zoo.core.record import BuildArgs, ModelRecord
from zoo.core.specs import BackboneSpec, InputConfig
from zoo.errors import (
    CorruptFileError,
    ModelBuildError,
    WeightsMismatchError,
    ZooError,
    short_repr,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

#: A constructor may allocate temporaries beyond the saved tensors; this much is always allowed.
ALLOCATION_FLOOR = 64 * 2**20


def build(
    spec: BackboneSpec,
    args: BuildArgs,
    *,
    pretrained: bool = False,
    state: Mapping[str, Any] | None = None,
    skip: Collection[str] = (),
    device: Literal["meta"] | None = None,
    untrusted: bool = False,
    prepare: Callable[[nn.Module], object] | None = None,
    source: str = "",
) -> nn.Module:
    """Build ``spec`` with ``args`` (``num_classes``, architecture ``kwargs``, the pretrained
    ``tag``) through its plugin; the model carries its record ``model.zoo``.

    - ``pretrained``: load the plugin's weights of ``args.tag`` (or its default ones). The
      record keeps the tag only then: without weights a tag names nothing.
    - ``state``: tensors to load, strictly (:class:`~zoo.WeightsMismatchError` names what does
      not fit; ``source`` names where they came from). ``skip``: module paths or tensor names
      (a classifier that changed shape) whose tensors keep their fresh initialisation when
      ``state`` lacks them or holds another shape.
    - ``device="meta"``: build without allocating weights (a skeleton to describe); ``state``
      then only bounds the build (with ``untrusted``) and is not loaded. The model's
      ``zoo.notes`` say when the constructor could not run on ``meta`` as it is.
    - ``untrusted``: ``args`` came from a file: the build may allocate no single tensor over
      :func:`max_tensor_bytes` of ``state`` and register at most :func:`tensor_budget` of its
      tensors; it runs on ``meta`` first and ``state`` is assigned only once every shape fits
      (see the module docstring). A refused build raises :class:`~zoo.ModelBuildError`
      naming ``source``.
    - ``prepare``: called on the model before ``state`` is loaded (a file's adapters are
      injected there): on the ``meta`` skeleton when untrusted or ``device="meta"``.
    """
    if untrusted and state is None:
        raise TypeError("build(untrusted=True) needs state=: the tensors that bound the build")
    kwargs = dict(args.kwargs)
    tag = args.tag if pretrained and device != "meta" else None
    bounds = (max_tensor_bytes(state), tensor_budget(len(state))) if untrusted else None
    notes: list[str] = []
    if device == "meta" or untrusted:
        try:
            model = _on_meta(spec, args.num_classes, kwargs, notes, bounds)
        except ModelBuildError as exc:
            if not untrusted:
                raise
            raise _cannot_build(spec, args.num_classes, kwargs, source, exc) from exc
        if prepare is not None:
            import torch

            with torch.device("meta"):
                prepare(model)
        if device != "meta" and state is not None:
            model = _materialize(spec, args, model, state, bounds, prepare, source)
    else:
        model = _call_create(spec, args.num_classes, tag or pretrained, kwargs)
        if prepare is not None:
            prepare(model)
        if state is not None:
            _load_state(model, state, skip=skip, source=source)
    record = attach_build_info(model, spec, tag=tag, num_classes=args.num_classes, kwargs=kwargs)
    record.notes = tuple(notes)
    return model


def attach_build_info(
    model: nn.Module,
    spec: BackboneSpec,
    *,
    tag: str | None,
    num_classes: int | None,
    kwargs: Mapping[str, Any],
    input_config: InputConfig | None = None,
) -> ModelRecord:
    """Give ``model`` its record, ``model.zoo`` (:class:`~zoo.ModelRecord`): how to rebuild it
    (saving stores it, loading rebuilds from it, tables use it to find the spec) and its input
    config: ``input_config``, by default the spec's config for ``tag``. :func:`build` calls it
    for every model it makes; a module built elsewhere that a plugin identified gets its
    record here too.

    A plugin's ``create`` may set two *hints* on the model it returns, which win and are then
    removed: ``model.zoo_input_config`` (an :class:`InputConfig`: the image size of a ViT built
    with ``img_size=``) and ``model.zoo_classes`` (a list of class names: the categories of its
    pretrained head). A hint of another type is ignored.
    """
    classes = model.__dict__.pop("zoo_classes", None)
    hint = model.__dict__.pop("zoo_input_config", None)
    if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes):
        classes = None
    if isinstance(hint, InputConfig):
        input_config = hint
    record = ModelRecord(
        build=BuildArgs(spec.qualified_name, num_classes, dict(kwargs), tag),
        input_config=input_config or spec.input_config_for(tag),
        classes=list(classes) if classes is not None else None,
    )
    model.zoo = record  # type: ignore[assignment]
    return record


def _call_create(
    spec: BackboneSpec, num_classes: int | None, pretrained: bool | str, kwargs: dict[str, Any]
) -> nn.Module:
    """``spec.create(num_classes, pretrained, **kwargs)``, its failures named after the plugin.

    A :class:`~zoo.ZooError` raised by the plugin (such as
    :class:`~zoo.WeightsUnavailableError`) passes unchanged; any other exception becomes a
    :class:`~zoo.ModelBuildError` chained to it, and a result that is not an ``nn.Module`` is
    refused the same way.
    """
    from torch import nn

    where = f"plugin {spec.plugin!r} failed to build backbone {spec.qualified_name}"
    try:
        model = spec.create(num_classes, pretrained, **kwargs)
    except ZooError:
        raise
    except Exception as exc:
        args = f"num_classes={num_classes!r}, pretrained={pretrained!r}" + "".join(
            f", {k}={v!r}" for k, v in kwargs.items()
        )
        args = args if len(args) <= 300 else args[:300] + "…"
        raise ModelBuildError(f"{where} ({args}): {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ModelBuildError(
            f"{where}: its create() returned {type(model).__name__}, not a torch.nn.Module; "
            "report this to the plugin's authors"
        )
    return model


# ---------------------------------------------------------------- the meta device


def _on_meta(
    spec: BackboneSpec,
    num_classes: int | None,
    kwargs: dict[str, Any],
    notes: list[str],
    bounds: tuple[int, int] | None,
) -> nn.Module:
    """``spec`` built on the ``meta`` device (no weights allocated), what was unusual in
    ``notes``.

    A constructor that cannot run on ``meta`` (one that reads tensor values while building) is
    retried with each parameter moved to ``meta`` as soon as it is registered (one tensor
    allocated at a time). ``bounds`` (max bytes of one tensor, max tensors registered) refuse,
    with :class:`~zoo.ModelBuildError`, a tensor larger than that before anything writes to it
    and a build that registers more. Never loads pretrained weights.
    """
    import torch

    max_bytes, max_tensors = bounds if bounds is not None else (None, None)
    try:
        with (
            torch.device("meta"),
            _skip_init_on_meta(),
            tensor_count_limit(max_tensors, spec.qualified_name),
        ):
            model = _call_create(spec, num_classes, False, dict(kwargs))
    except ModelBuildError as first:
        cause = first.__cause__ if first.__cause__ is not None else first
        if not isinstance(first.__cause__, Exception):
            raise  # create() returned something that is not a model: retrying cannot help
        try:
            with (
                _params_to_meta_on_register(),
                _skip_init_on_meta(),
                allocation_limit(max_bytes, spec.qualified_name),
                tensor_count_limit(max_tensors, spec.qualified_name),
            ):
                model = _call_create(spec, num_classes, False, dict(kwargs))
        except ModelBuildError as exc:
            raise ModelBuildError(
                f"cannot build {spec.qualified_name} to describe it: "
                f"{type(cause).__name__}: {cause} (and without the meta device: {exc}). Check "
                "the architecture arguments; or build the model yourself and pass it: "
                f"zoo.params(zoo.create({spec.qualified_name!r}))"
            ) from exc
        notes.append(
            f"built with parameters moved to meta one at a time ({type(cause).__name__} on the "
            "meta device)"
        )
    not_meta = sum(1 for p in model.parameters() if not p.is_meta)
    if not_meta:
        notes.append(f"{not_meta} parameter tensors were allocated by the backbone's create()")
    return model


def max_tensor_bytes(state: Mapping[str, Any] | None) -> int:
    """The largest single allocation a build bounded by ``state`` may make: twice its largest
    tensor (or header entry: anything with ``nbytes``) plus :data:`ALLOCATION_FLOOR`."""
    largest = max((int(t.nbytes) for t in (state or {}).values()), default=0)
    return ALLOCATION_FLOOR + 2 * largest


def tensor_budget(saved_tensors: int) -> int:
    """How many tensors a rebuild of a model whose file holds ``saved_tensors`` may register:
    twice as many plus a margin (re-registrations, non-persistent buffers)."""
    return 2 * saved_tensors + 256


@contextlib.contextmanager
def tensor_count_limit(max_tensors: int | None, what: str) -> Iterator[None]:
    """Stop a build (:class:`~zoo.ModelBuildError`) once it registers more than ``max_tensors``
    parameters and buffers (None: no limit).

    Uses torch's global module registration hooks, so a build in another thread at the same
    time counts too; limits are generous (see :func:`tensor_budget`).
    """
    if max_tensors is None:
        yield
        return
    from torch.nn.modules import module as nn_module

    count = 0

    def count_one(_module: Any, _name: str, _tensor: Any) -> None:
        nonlocal count
        count += 1
        if count > max_tensors:
            raise ModelBuildError(
                f"building {what} registered more than {max_tensors:,} tensors, more than the "
                "saved tensors imply"
            )

    handles = [
        nn_module.register_module_parameter_registration_hook(count_one),
        nn_module.register_module_buffer_registration_hook(count_one),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def allocation_limit(max_bytes: int | None, what: str) -> Any:
    """A torch-function mode refusing any tensor result over ``max_bytes`` (None: no limit).

    A new tensor's memory is reserved but not yet written when its factory function returns,
    so refusing it there costs no resident memory.
    """
    import torch
    from torch.overrides import TorchFunctionMode

    if max_bytes is None:
        return contextlib.nullcontext()

    class Limit(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and not out.is_meta:
                size = out.untyped_storage().nbytes()
                if size > max_bytes:
                    raise ModelBuildError(
                        f"building {what} allocated a tensor of {size:,} bytes, more than "
                        f"{max_bytes:,} (the limit the saved tensors imply)"
                    )
            return out

    return Limit()


#: In-place operations (tensor methods and ``torch.nn.init`` functions) that only change values.
#: On a meta tensor, which has no values, they are skipped, so weight initialisation is free
#: (timm's trunc_normal_ on meta otherwise costs about a second for a ViT-L, through torch's
#: Python decompositions). Shape-changing and flag-setting in-place methods (resize_,
#: requires_grad_, ...) are deliberately not listed.
_VALUE_INPLACE_OPS = frozenset(
    [
        "uniform_",
        "normal_",
        "bernoulli_",
        "random_",
        "exponential_",
        "geometric_",
        "cauchy_",
        "log_normal_",
        "zero_",
        "fill_",
        "copy_",
        "clamp_",
        "clamp_min_",
        "clamp_max_",
        "clip_",
        "erfinv_",
        "erf_",
        "mul_",
        "add_",
        "sub_",
        "div_",
        "addcmul_",
        "addcdiv_",
        "neg_",
        "abs_",
        "exp_",
        "log_",
        "sqrt_",
        "rsqrt_",
        "pow_",
        "reciprocal_",
        "sign_",
        "floor_",
        "ceil_",
        "round_",
        "trunc_",
        "tanh_",
        "sigmoid_",
        "sin_",
        "cos_",
        "masked_fill_",
        "index_fill_",
        "fill_diagonal_",
        "lerp_",
        # torch.nn.init, which dispatches through torch functions for tensor subclasses/modes
        "trunc_normal_",
        "kaiming_uniform_",
        "kaiming_normal_",
        "xavier_uniform_",
        "xavier_normal_",
        "constant_",
        "zeros_",
        "ones_",
        "orthogonal_",
        "eye_",
        "dirac_",
        "sparse_",
    ]
)


def _skip_init_on_meta() -> Any:
    """A torch-function mode that skips value-only in-place ops on meta tensors."""
    import torch
    from torch.overrides import TorchFunctionMode

    class SkipInit(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
            name = getattr(func, "__name__", "")
            if (
                name in _VALUE_INPLACE_OPS
                and args
                and isinstance(args[0], torch.Tensor)
                and args[0].is_meta
            ):
                return args[0]
            return func(*args, **(kwargs or {}))

    return SkipInit()


@contextlib.contextmanager
def _params_to_meta_on_register() -> Iterator[None]:
    """Every ``register_parameter`` / ``register_buffer`` moves its tensor to ``meta``
    (``nn.Module``'s methods are patched, and restored on exit)."""
    from torch import nn

    orig_param, orig_buffer = nn.Module.register_parameter, nn.Module.register_buffer

    def register_parameter(module: nn.Module, name: str, param: Any) -> None:
        if param is not None and not param.is_meta:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        orig_param(module, name, param)

    def register_buffer(module: nn.Module, name: str, tensor: Any, persistent: bool = True) -> None:
        if tensor is not None and not tensor.is_meta:
            tensor = tensor.to("meta")
        orig_buffer(module, name, tensor, persistent=persistent)

    nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
    nn.Module.register_buffer = register_buffer  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = orig_param  # type: ignore[method-assign]
        nn.Module.register_buffer = orig_buffer  # type: ignore[method-assign]


# ---------------------------------------------------------------- loading tensors


def _materialize(
    spec: BackboneSpec,
    args: BuildArgs,
    skeleton: nn.Module,
    state: Mapping[str, torch.Tensor],
    bounds: tuple[int, int] | None,
    prepare: Callable[[nn.Module], object] | None,
    source: str,
) -> nn.Module:
    """The untrusted ``skeleton`` (on ``meta``, prepared) with ``state`` in it: its shapes must
    fit first; the tensors are assigned in place, or the backbone is built normally and loaded
    strictly when assignment cannot work (tied tensors, buffers the file does not hold)."""
    problems = describe_mismatch(skeleton, state)
    if problems:
        raise WeightsMismatchError(f"{source} does not fit the model: " + "; ".join(problems))
    limit = bounds[0] if bounds is not None else None
    persistent = set(skeleton.state_dict())
    extra = sum(int(t.nbytes) for n, t in skeleton.named_buffers() if n not in persistent)
    if limit is not None and extra > limit:
        raise CorruptFileError(
            f"{source}: its architecture arguments make non-saved buffers of {extra:,} bytes, "
            f"more than the {limit:,} its tensors allow; the metadata 'zoo.build' is not trusted"
        )
    if _assignable(skeleton):
        skeleton.load_state_dict(state, strict=True, assign=True)
        if not any(t.is_meta for t in (*skeleton.parameters(), *skeleton.buffers())):
            return skeleton
    # The normal build, reached only once the meta shapes matched ``state`` and the buffers the
    # file does not hold were bounded: what it allocates is what the file implies. It runs
    # without allocation_limit, whose per-operation hook would slow such builds by a third;
    # ``prepare`` (the adapters, checked on meta already) runs under it.
    kwargs = dict(args.kwargs)
    try:
        model = _call_create(spec, args.num_classes, False, kwargs)
    except ModelBuildError as exc:
        raise _cannot_build(spec, args.num_classes, kwargs, source, exc) from exc
    if prepare is not None:
        with allocation_limit(limit, "the saved adapters"):
            prepare(model)
    _load_state(model, state, source=source)
    return model


def _assignable(model: nn.Module) -> bool:
    """Whether assigning a state dict in place gives every tensor its value: no tied tensors
    (assignment would untie them), no buffer the state dict does not hold."""
    persistent = set(model.state_dict())
    params = list(model.named_parameters(remove_duplicate=False))
    buffers = list(model.named_buffers(remove_duplicate=False))
    unique = {id(t) for _, t in params} | {id(t) for _, t in buffers}
    if len(unique) != len(params) + len(buffers):
        return False
    return all(n in persistent for n, _ in (*params, *buffers))


def _load_state(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: str,
    skip: Collection[str] = (),
) -> None:
    """``load_state_dict(strict=True)`` with a :class:`~zoo.WeightsMismatchError` naming the
    tensors that do not fit; tensors under ``skip`` (module paths or names) that ``state``
    lacks, or holds with another shape, keep their current values."""
    own = model.state_dict()
    prefixes = tuple(f"{s}." for s in skip)
    skipped = {
        k
        for k in (*own, *state)
        if (k in skip or k.startswith(prefixes))
        and (k not in own or k not in state or tuple(own[k].shape) != tuple(state[k].shape))
    }
    problems = describe_mismatch(model, state, skip=skipped)
    if problems:
        raise WeightsMismatchError(f"{source} does not fit the model: " + "; ".join(problems))
    kept = {k: v for k, v in state.items() if k not in skipped}
    model.load_state_dict(kept, strict=not skipped)


def describe_mismatch(
    model: nn.Module, state: Mapping[str, Any], *, skip: Collection[str] = frozenset()
) -> list[str]:
    """Human-readable problems between ``model``'s state dict and ``state`` (empty: they fit).
    ``state`` holds tensors or anything with a ``shape`` (a file's header entries)."""
    own = model.state_dict()
    problems = []
    missing = sorted(k for k in own if k not in state and k not in skip)
    unexpected = sorted(k for k in state if k not in own and k not in skip)
    shapes = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and k not in skip and tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensor(s): {_few(unexpected)}")
    if shapes:
        problems.append(f"wrong shape for {len(shapes)} tensor(s): {_few(shapes)}")
    return problems


def _few(items: list[str], n: int = 6) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", … (+{len(items) - n} more)" if len(items) > n else "")


# ---------------------------------------------------------------- refusals


def root_cause(exc: BaseException) -> BaseException:
    """The first cause of ``exc``'s chain."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def _cannot_build(
    spec: BackboneSpec,
    num_classes: int | None,
    kwargs: dict[str, Any],
    source: str,
    exc: ModelBuildError,
) -> ModelBuildError:
    root = root_cause(exc)
    if isinstance(root, ModelBuildError):  # zoo's own refusal (a tensor over the limit)
        why, hint = str(root), "; the metadata 'zoo.build' is not trusted"
    else:
        why = f"{type(root).__name__}: {root}"
        hint = " (was the file written with another version of the backbone's plugin?)"
    arguments = short_repr(kwargs, 301)
    return ModelBuildError(
        f"{source}: cannot rebuild backbone {spec.qualified_name} with "
        f"num_classes={num_classes!r} and arguments {arguments}: {why}{hint}"
    )
