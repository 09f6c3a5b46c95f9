"""Injecting, listing, checking and merging adapters: the modules an adapter policy adds.

A plan's :class:`~zoo.Addition` records say what to add; :func:`inject` builds each through its
kind (an :class:`~zoo.AdapterSpec`'s ``build``), checks that the adapter has exactly the
parameters the addition lists, registers it as a child of its target and installs the forward
hooks that run it. Injecting is idempotent; a different adapter already in place is an error.

A silently dead adapter (one whose target's ``forward`` is bypassed, as when a parent calls
``F.linear(x, self.qkv.weight)``) is impossible: a hook on the model's root first runs the
first forward pass's inputs eagerly, without gradients, recording which adapters run, and
raises :class:`~zoo.AdapterError` naming the ones that did not; once all have run, the check
removes itself (:func:`verify_adapters`). The adapters' own hooks keep no state, so
``torch.compile`` traces them as pure functions.

:func:`merge_adapters` folds every mergeable adapter into its target's weights and removes it
(refusing, before anything changes, when one cannot merge).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from zoo.core.record import record_of, unwrap
from zoo.errors import AdapterError, AdapterMergeError, UnknownNameError, ZooError, suggest
from zoo.plans.plan import Addition, Plan

if TYPE_CHECKING:
    from torch import nn

    from zoo.core.catalog import Catalog
    from zoo.core.specs import AdapterSpec
    from zoo.plans.adapter_module import Adapter

    #: One module as :func:`_copy_state` saw it: its attributes (each dict's items too: its
    #: children, parameters, buffers, hooks) and a CPU copy of each tensor with its device.
    _Saved = tuple[nn.Module, dict[str, tuple[Any, dict | None]], dict[str, tuple[Any, Any]]]


def is_adapter(module: object) -> bool:
    """Whether ``module`` is a ``zoo.Adapter`` (read from the class marker, without importing
    torch here)."""
    return getattr(type(module), "zoo_adapter", False) is True and hasattr(module, "merge_into")


def adapter_modules(model: nn.Module) -> list[tuple[str, Adapter]]:
    """``(path, adapter)`` of every injected adapter, in model order."""
    return [
        (path, module)
        for path, module in model.named_modules()
        if is_adapter(module) and getattr(module, "zoo_addition", None) is not None
    ]


def adapters(model: nn.Module) -> list[Addition]:
    """The additions injected into ``model`` (what :func:`inject` put there), in model order."""
    return [module.zoo_addition for _, module in adapter_modules(unwrap(model))]


def resolve_kinds(
    additions: Iterable[Addition],
    *,
    catalog: Catalog | None = None,
    specs: Mapping[str, AdapterSpec] | None = None,
) -> dict[str, AdapterSpec]:
    """The adapter kind of each addition, from ``specs`` (a plan's) or ``catalog``."""
    specs = dict(specs or {})
    out: dict[str, AdapterSpec] = {}
    for addition in additions:
        kind = addition.kind
        if kind in out:
            continue
        spec = specs.get(kind)
        if spec is None and catalog is not None:
            try:
                spec = catalog.adapter_kind(kind)
            except UnknownNameError as exc:
                raise AdapterError(
                    f"unknown adapter kind {kind!r} (for {addition.target!r}): {exc}; install "
                    "the plugin that provides it (`zoo list policies` shows what is installed)"
                ) from None
        if spec is None:
            raise AdapterError(
                f"adapter kind {kind!r} is not resolved: apply a plan read from a file with "
                "catalog= (zoo.plans.freeze.apply_plan(model, plan, catalog=catalog))"
            )
        out[kind] = spec
    return out


def inject(
    model: nn.Module,
    additions: Iterable[Addition],
    *,
    catalog: Catalog | None = None,
    specs: Mapping[str, AdapterSpec] | None = None,
) -> list[Addition]:
    """Inject ``additions`` into ``model``; returns the ones newly injected.

    Each addition's kind builds the adapter (``spec.build(target, addition)``); zoo checks that
    it is a ``zoo.Adapter`` with exactly the listed parameters, moves it to the target's device
    and dtype, adds it as ``<target>.<child>`` and hooks it in. An addition already in place
    (same kind, parameters and arguments) is skipped. Every problem -- a missing target, a
    conflicting adapter, a wrong parameter list -- raises :class:`~zoo.AdapterError` before the
    model changes.
    """
    additions = list(additions)
    if not additions:
        return []
    kinds = resolve_kinds(additions, catalog=catalog, specs=specs)
    modules = dict(model.named_modules())
    built: list[tuple[Addition, nn.Module, Adapter]] = []
    for addition in additions:
        target = modules.get(addition.target)
        if target is None:
            close = suggest(addition.target, modules, n=3)
            hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
            raise AdapterError(
                f"the model has no module {addition.target!r} to put a {addition.kind} adapter "
                f"into{hint}; was the plan made for another backbone?"
            )
        existing = target._modules.get(addition.child)
        if existing is not None:
            previous = getattr(existing, "zoo_addition", None)
            if isinstance(previous, Addition) and _same(previous, addition):
                continue
            what = (
                f"a {previous.kind} adapter with {_describe(previous)}"
                if isinstance(previous, Addition)
                else f"a {type(existing).__name__} module"
            )
            raise AdapterError(
                f"{addition.target!r} already holds {what} as {addition.child!r}; cannot add a "
                f"{addition.kind} adapter with {_describe(addition)} -- merge or remove the "
                "adapters first (zoo.merge_adapters), or start from a fresh model"
            )
        if hasattr(target, addition.child):
            raise AdapterError(
                f"cannot add a {addition.kind} adapter to {addition.target!r}: the module "
                f"already has an attribute {addition.child!r}"
            )
        _check_size(addition, target)
        adapter = _build(kinds[addition.kind], target, addition)
        if not is_adapter(adapter):
            raise AdapterError(
                f"adapter kind {addition.kind!r} built a {type(adapter).__name__} for "
                f"{addition.target!r}; build must return a zoo.Adapter"
            )
        _check_params(adapter, addition)
        built.append((addition, target, adapter))
    for addition, target, adapter in built:
        _place(adapter, target)
        target.add_module(addition.child, adapter)
        adapter.zoo_addition = addition  # type: ignore[assignment]
        adapter.__dict__["zoo_target_ref"] = target
        hooked = adapter.hook_module(target)
        if adapter.has_pre_forward:
            hooked.register_forward_pre_hook(adapter.zoo_pre_hook, with_kwargs=True)
        if adapter.has_post_forward:
            hooked.register_forward_hook(adapter.zoo_post_hook)
    if built:
        verify_adapters(model, built[0][2])
    return [addition for addition, _, _ in built]


def _same(a: Addition, b: Addition) -> bool:
    return a.kind == b.kind and dict(a.params) == dict(b.params) and dict(a.args) == dict(b.args)


def _describe(addition: Addition) -> str:
    args = ", ".join(f"{k}={v}" for k, v in addition.args.items())
    return f"arguments ({args})" if args else "no arguments"


def _build(spec: AdapterSpec, target: nn.Module, addition: Addition) -> Any:
    try:
        return spec.build(target, addition)
    except ZooError:
        raise
    except Exception as exc:
        raise AdapterError(
            f"adapter kind {spec.qualified_name!r} (plugin {spec.plugin}) failed to build for "
            f"{addition.target!r} ({type(target).__name__}): {type(exc).__name__}: {exc}"
        ) from exc


#: An addition may hold at most this many times its target's parameters (plus a floor), so a
#: plan read from an untrusted file cannot make injection allocate without bound.
MAX_ADDED_RATIO = 64
MAX_ADDED_FLOOR = 1 << 20


def _check_size(addition: Addition, target: nn.Module) -> None:
    own = sum(p.numel() for p in target.parameters())
    limit = MAX_ADDED_RATIO * own + MAX_ADDED_FLOOR
    if addition.numel > limit:
        raise AdapterError(
            f"the {addition.kind} adapter for {addition.target!r} would add {addition.numel:,} "
            f"parameters, more than {MAX_ADDED_RATIO} times its target's {own:,} (plus "
            f"{MAX_ADDED_FLOOR:,}); the plan is not plausible (a corrupt file?)"
        )


def _check_params(adapter: nn.Module, addition: Addition) -> None:
    got = {
        f"{addition.child}.{name}": tuple(int(d) for d in p.shape)
        for name, p in adapter.named_parameters()
    }
    if got != dict(addition.params):
        raise AdapterError(
            f"adapter {addition.kind!r} for {addition.target!r} has parameters {got}, but the "
            f"plan lists {dict(addition.params)}; the plan and the adapter kind disagree (a plan "
            "made by another version of the plugin?)"
        )


def _place(adapter: nn.Module, target: nn.Module) -> None:
    """Move the adapter to the device (and floating dtype) of the target's parameters."""
    for tensor in (*target.parameters(recurse=False), *target.parameters()):
        if tensor.is_floating_point():
            adapter.to(device=tensor.device, dtype=tensor.dtype)
            return


# ---------------------------------------------------------------- the dead-adapter check


def verify_adapters(model: nn.Module, adapter: Adapter) -> None:
    """Check, once, that every adapter of ``model`` runs: a forward pre-hook on its root
    (installed once, a :class:`~zoo.plans.adapter_module.AdapterCheck`, which dynamo never
    traces; ``adapter``, one of them, gives its class without importing torch here) first runs
    the inputs of the model's next forward pass eagerly and without gradients
    (:func:`check_adapters_run`); when all ran, the hook removes itself."""
    if not any(_is_check(h) for h in model._forward_pre_hooks.values()):
        model.register_forward_pre_hook(adapter.check_hook(), with_kwargs=True)


def check_adapters_run(module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
    """Run ``module.forward(*args, **kwargs)`` without gradients (buffers and random state
    restored after it; before the real pass, so no activation of it is alive) with a recorder
    on each adapter's hooked module: an adapter whose module was not called raises
    :class:`~zoo.AdapterError` naming it; when all ran, the check hook is removed."""
    import torch

    found = adapter_modules(module)
    seen: set[int] = set()
    handles = [
        adapter.hook_module(_target_of(module, adapter)).register_forward_pre_hook(
            _recorder(seen, adapter)
        )
        for _, adapter in found
    ]
    buffers = [(b, b.detach().clone()) for b in module.buffers()]
    cuda = sorted({p.device.index or 0 for p in module.parameters() if p.is_cuda})
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=cuda):
            module.forward(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
        for buffer, saved in buffers:  # through .data: what autograd saved keeps its version
            buffer.data.copy_(saved)
    dead = [adapter for _, adapter in found if id(adapter) not in seen]
    if dead:
        shown = ", ".join(f"{a.zoo_addition.kind} on {a.zoo_addition.target!r}" for a in dead[:5])
        more = f" and {len(dead) - 5} more" if len(dead) > 5 else ""
        raise AdapterError(
            f"{len(dead)} adapter(s) did not run in the forward pass: {shown}{more}. Their "
            "target's forward is bypassed (the parent uses its weight directly, as "
            "F.linear(x, self.qkv.weight) does) or never called; such an adapter would "
            "train nothing. Exclude those modules (lora:targets=...) or use another policy"
        )
    remove_check(module)


def _recorder(seen: set[int], adapter: Adapter) -> Any:
    return lambda *_: seen.add(id(adapter))


def _is_check(hook: object) -> bool:
    return getattr(type(hook), "zoo_adapter_check", False) is True


def remove_check(model: nn.Module) -> None:
    """Remove the hook of :func:`verify_adapters` (no-op when there is none)."""
    for key in [k for k, h in model._forward_pre_hooks.items() if _is_check(h)]:
        del model._forward_pre_hooks[key]
        model._forward_pre_hooks_with_kwargs.pop(key, None)


# ---------------------------------------------------------------- removing and merging


def _unhook(adapter: Adapter, target: nn.Module) -> None:
    """Remove every forward hook bound to ``adapter``: on the module it hooks and on any module
    inside it (an adapter may hook a branch of its block, as VPT does on XCiT's ``local_mp``)."""
    hooked = adapter.hook_module(target)
    for module in hooked.modules():
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            for key in [k for k, h in hooks.items() if getattr(h, "__self__", None) is adapter]:
                del hooks[key]
                module._forward_pre_hooks_with_kwargs.pop(key, None)
                module._forward_hooks_with_kwargs.pop(key, None)


def _target_of(model: nn.Module, adapter: Adapter) -> nn.Module:
    target = adapter.__dict__.get("zoo_target_ref")
    if target is None:
        target = model.get_submodule(adapter.zoo_addition.target)
    return target


def remove_adapters(model: nn.Module) -> list[Addition]:
    """Remove every adapter (without merging): the model computes what its base computes.
    A wrapped model (``torch.compile``, DDP) has the adapters of the model it wraps removed."""
    model = unwrap(model)
    removed = []
    for _, adapter in adapter_modules(model):
        addition = adapter.zoo_addition
        target = _target_of(model, adapter)
        _unhook(adapter, target)
        del target._modules[addition.child]
        removed.append(addition)
    remove_check(model)
    _forget(model, removed)
    return removed


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every adapter into its target's weights and remove it; returns ``model``.

    LoRA adds ``scale * B @ A`` to the weight, SSF multiplies the weight (and bias) by its scale
    and adds its shift to the bias: the merged model computes the same function (within float
    rounding) without adapter modules or hooks, and its state dict has the base's keys. An
    adapter that cannot merge (VPT's prompt tokens) raises :class:`~zoo.AdapterMergeError`
    naming it, before anything changes. ``model.zoo.plan`` loses the additions. A wrapped
    model (``torch.compile``, DDP) has the adapters of the model it wraps merged.

    Merging is all or nothing: each target's tensors are copied (to the CPU), with the tensors,
    children and attributes it holds, before its adapter's ``merge_into`` runs, and when one
    raises -- a plugin's kind may -- every target merged so far gets them back (the same tensor
    objects, dtypes and devices) and the error is an :class:`~zoo.AdapterMergeError` naming
    that adapter; the model keeps all its adapters and weights. The copies cost up to the
    targets' size in memory until the merge completes.
    """
    import torch

    wrapper, model = model, unwrap(model)
    found = adapter_modules(model)
    refused = [a for _, a in found if not a.mergeable]
    if refused:
        kinds = sorted({a.zoo_addition.kind for a in refused})
        raise AdapterMergeError(
            f"{len(refused)} adapter(s) cannot be merged into the weights ({', '.join(kinds)}, "
            f"e.g. on {refused[0].zoo_addition.target!r}): they do not fold into a weight (VPT "
            "prompts add inputs). Nothing was changed; keep the adapted model as it is "
            "(zoo.save stores the adapters with their base)"
        )
    with torch.no_grad():
        _merge_all(model, found)
    merged = []
    for _, adapter in found:
        addition = adapter.zoo_addition
        target = _target_of(model, adapter)
        _unhook(adapter, target)
        del target._modules[addition.child]
        merged.append(addition)
    remove_check(model)
    _forget(model, merged)
    return wrapper


def _merge_all(model: nn.Module, found: list[tuple[str, Adapter]]) -> None:
    """Call every adapter's ``merge_into``; when one raises, restore every target changed so
    far (in reverse order, so a target with two adapters gets its first state back) and raise
    :class:`~zoo.AdapterMergeError` naming the adapter."""
    saved: list[list[_Saved]] = []
    for _, adapter in found:
        target = _target_of(model, adapter)
        saved.append(_copy_state(target))
        try:
            adapter.merge_into(target)
        except BaseException as exc:
            for state in reversed(saved):
                _restore_state(state)
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt and the like: restored, and passed on as they are
            addition = adapter.zoo_addition
            raise AdapterMergeError(
                f"the {addition.kind} adapter on {addition.target!r} failed to merge: "
                f"{type(exc).__name__}: {exc}. Nothing was changed: the model keeps its "
                "adapters and weights (zoo.save stores them with their base)"
            ) from exc


def _copy_state(module: nn.Module) -> list[_Saved]:
    """What a ``merge_into`` may change in ``module`` and its submodules: each one's attributes
    -- with the items of its dicts: the children, parameters, buffers and hooks it holds (one
    replaced, deleted or added is put back as it was) -- and a CPU copy of each tensor's values
    (its ``.data`` changed -- values, dtype, shape or device -- is put back too)."""
    saved = []
    for sub in module.modules():
        attrs = {k: (v, dict(v) if isinstance(v, dict) else None) for k, v in vars(sub).items()}
        tensors = {**sub._parameters, **sub._buffers}
        values = {
            name: (tensor.detach().to("cpu", copy=True), tensor.device)
            for name, tensor in tensors.items()
            if tensor is not None
        }
        saved.append((sub, attrs, values))
    return saved


def _restore_state(saved: list[_Saved]) -> None:
    """Put back what :func:`_copy_state` saved: each module's attributes, children and tensors
    (the same objects, so an optimizer or a tied weight still holds them) with their values."""
    for sub, attrs, values in saved:
        now = vars(sub)
        now.clear()
        for key, (value, items) in attrs.items():
            if items is not None:
                value.clear()
                value.update(items)
            now[key] = value
        tensors = {**sub._parameters, **sub._buffers}
        for name, (value, device) in values.items():
            tensor = tensors[name]
            if (tensor.shape, tensor.dtype, tensor.device) == (value.shape, value.dtype, device):
                tensor.data.copy_(value)  # in place: views and tied tensors stay shared
            else:
                tensor.data = value.to(device)


def _forget(model: nn.Module, removed: list[Addition]) -> None:
    """Drop removed additions (and their parameters) from ``model.zoo.plan``."""
    record = record_of(model)
    plan = record.plan if record is not None else None
    if not isinstance(plan, Plan) or not removed:
        return
    gone = {(a.target, a.child) for a in removed}
    keep = tuple(a for a in plan.additions if (a.target, a.child) not in gone)
    names = {n for a in plan.additions if (a.target, a.child) in gone for n in a.names}
    record.plan = replace(
        plan,
        params={n: p for n, p in plan.params.items() if n not in names},
        additions=keep,
    )
