"""Applying plans to models, and proving afterwards that the freeze held.

:func:`freeze` computes a plan and applies it: ``requires_grad`` for every parameter, and a mode
for every normalization layer. A layer in ``frozen-stats`` or ``frozen`` mode is pinned to eval
mode (running statistics used, never updated) through an override of its ``train`` method on
the instance, so ``model.train()`` keeps it that way. This works for any module (BatchNorm1d/2d/3d,
SyncBatchNorm, timm's norm-act layers), adds no buffer or state-dict key, and survives
``copy.deepcopy`` and pickling.

:func:`snapshot` takes a reference of every frozen tensor; :func:`check_frozen` reports each
frozen parameter or fixed norm statistic that changed since::

    plan = zoo.freeze(model, "freeze-to:depth=3")
    with zoo.snapshot(model):          # raises FreezeViolationError on exit if a frozen
        train_a_few_steps(model)       # tensor moved
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from zoo.core.record import attach_record, record_of, unwrap
from zoo.errors import FreezeViolationError, PlanError
from zoo.plans.adapters import inject
from zoo.plans.plan import NormMode, Plan, unknown_message

if TYPE_CHECKING:
    import torch
    from torch import nn

    from zoo.core.catalog import Catalog


# ---------------------------------------------------------------- norm modes


class PinnedTrain:
    """Stands in for ``module.train`` on a norm layer whose statistics are fixed.

    Whatever mode is asked for, the layer (and anything inside it) goes to eval mode. Set as an
    instance attribute, it shadows ``nn.Module.train``; removing it restores the usual method.
    """

    def __init__(self, module: nn.Module, mode: NormMode) -> None:
        self.module = module
        self.mode = NormMode(mode)

    def __call__(self, mode: bool = True) -> nn.Module:
        from torch import nn

        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        return nn.Module.train(self.module, False)

    def __repr__(self) -> str:
        return f"<zoo {self.mode.value} train() of {type(self.module).__name__}>"


def norm_mode(module: nn.Module) -> NormMode:
    """The mode installed on a module: ``frozen-stats``/``frozen`` when pinned, else ``train``."""
    override = module.__dict__.get("train")
    return override.mode if isinstance(override, PinnedTrain) else NormMode.TRAIN


def set_norm_mode(module: nn.Module, mode: NormMode | str, *, training: bool | None = None) -> None:
    """Install ``mode`` on one norm layer; ``training`` is the mode the model is in."""
    from torch import nn

    mode = NormMode.coerce(mode)
    current = module.__dict__.get("train")
    if mode is NormMode.TRAIN:
        if isinstance(current, PinnedTrain):
            del module.__dict__["train"]
            nn.Module.train(module, module.training if training is None else training)
        return
    if isinstance(current, PinnedTrain):
        current.mode = mode
    else:
        module.__dict__["train"] = PinnedTrain(module, mode)
    nn.Module.train(module, False)


# ---------------------------------------------------------------- applying


def apply_plan(model: nn.Module, plan: Plan, *, catalog: Catalog | None = None) -> Plan:
    """Apply ``plan`` to ``model``; returns it and records it as ``model.zoo.plan``.

    The plan's additions (adapters) are injected first (:func:`zoo.plans.adapters.inject`;
    already injected ones are kept). Parameters the plan marks trainable get
    ``requires_grad=True``, all others (including parameters the plan does not list) ``False``
    and their ``.grad`` cleared. Each listed norm layer gets its mode; a pinned layer the plan
    does not list goes back to ``train``. Names the model does not have raise
    :class:`~zoo.PlanError`, before anything changes. A plan computed by a policy knows its
    adapter kinds; one read with :meth:`Plan.from_dict` needs ``catalog`` to resolve them.
    A wrapped model (``torch.compile``, DDP) gets the plan applied to the model it wraps.
    """
    if not isinstance(plan, Plan):
        raise PlanError(f"apply_plan expects a zoo.Plan, got {type(plan).__name__}")
    model = unwrap(model)
    named = dict(model.named_parameters())
    added = set(plan.added_names)
    unknown = [n for n in plan.params if n not in named and n not in added]
    if unknown:
        raise PlanError(unknown_message("parameter", unknown, named, where="the model"))
    modules = dict(model.named_modules())
    unknown = [p for p in plan.norms if p not in modules]
    if unknown:
        raise PlanError(unknown_message("normalization layer", unknown, modules, where="the model"))
    if plan.additions:
        inject(model, plan.additions, catalog=catalog, specs=plan.adapter_specs)
        named = dict(model.named_parameters())
        modules = dict(model.named_modules())
    for name, param in named.items():
        item = plan.params.get(name)
        trainable = bool(item and item.trainable)
        param.requires_grad_(trainable)
        if not trainable:
            param.grad = None
    for path, module in modules.items():
        mode = plan.norms.get(path)
        if mode is None and isinstance(module.__dict__.get("train"), PinnedTrain):
            mode = NormMode.TRAIN
        if mode is not None:
            set_norm_mode(module, mode, training=model.training)
    attach_record(model).plan = plan
    return plan


# ---------------------------------------------------------------- checking the freeze


@dataclass(frozen=True)
class Change:
    """A frozen tensor that changed: its name, kind and the largest absolute difference."""

    name: str
    kind: Literal["parameter", "statistic"]
    max_abs_diff: float

    def __str__(self) -> str:
        return f"{self.kind} {self.name} changed (max |diff| {self.max_abs_diff:.3g})"


@dataclass(frozen=True)
class FreezeReport:
    """What :func:`check_frozen` found.

    ``changed``: frozen parameters and fixed norm statistics that differ from the reference.
    ``unchecked``: frozen tensors the reference does not hold (a snapshot taken before
    freezing). ``not_moved``: trainable parameters whose value did not change (only known
    against a :class:`Snapshot`; a hint that the optimizer does not hold them).
    """

    changed: tuple[Change, ...]
    checked_params: int
    checked_stats: int
    unchecked: tuple[str, ...] = ()
    not_moved: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when no frozen tensor changed."""
        return not self.changed

    def summary(self) -> str:
        head = (
            f"freeze held: {self.checked_params} frozen parameters and {self.checked_stats} "
            "norm statistics unchanged"
        )
        if self.changed:
            head = (
                f"freeze broken: {len(self.changed)} frozen tensors changed (checked "
                f"{self.checked_params} frozen parameters and {self.checked_stats} norm "
                "statistics)"
            )
        lines = [head, *(f"  {c}" for c in self.changed[:20])]
        if len(self.changed) > 20:
            lines.append(f"  ... and {len(self.changed) - 20} more")
        if self.unchecked:
            lines.append(
                f"{len(self.unchecked)} frozen tensors were not in the reference "
                "(take the snapshot after freezing)"
            )
        if self.not_moved:
            lines.append(
                f"{len(self.not_moved)} trainable parameters did not move, e.g. {self.not_moved[0]}"
            )
        return "\n".join(lines)

    def raise_if_changed(self) -> None:
        """Raise :class:`~zoo.FreezeViolationError` listing what changed."""
        if self.changed:
            raise FreezeViolationError(self.summary())


@dataclass
class Snapshot:
    """A reference of a model's frozen tensors, taken by :func:`snapshot`.

    Also a context manager: on a clean exit it checks the model and raises
    :class:`~zoo.FreezeViolationError` if a frozen tensor changed; the report stays in
    ``report``.
    """

    params: dict[str, torch.Tensor]
    stats: dict[str, torch.Tensor]
    fingerprints: dict[str, tuple[float, float]] = field(default_factory=dict)
    model: nn.Module | None = field(default=None, repr=False)
    report: FreezeReport | None = None

    def check(self, model: nn.Module | None = None) -> FreezeReport:
        target = model if model is not None else self.model
        if target is None:
            raise PlanError("this snapshot holds no model; pass the model to check")
        return check_frozen(target, self)

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.report = self.check()
            self.report.raise_if_changed()


def frozen_tensors(model: nn.Module) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``(frozen params, fixed norm statistics, trainable params)`` of ``model``, by name.

    A parameter is frozen when ``requires_grad`` is off or ``model.zoo.plan`` freezes it. The
    statistics are the buffers of norm layers pinned by a plan (or listed as non-``train``).
    Injected adapters are parameters like the others: trained ones may change, the base
    weights they sit on must not. Names are those of the model inside any wrapper
    (:func:`~zoo.unwrap`).
    """
    model = unwrap(model)
    record = record_of(model)
    planned = record.plan if record is not None and isinstance(record.plan, Plan) else None
    frozen: dict[str, Any] = {}
    trainable: dict[str, Any] = {}
    for name, param in model.named_parameters():
        item = planned.params.get(name) if planned is not None else None
        planned_frozen = planned is not None and not (item and item.trainable)
        if not param.requires_grad or planned_frozen:
            frozen[name] = param
        else:
            trainable[name] = param
    stats: dict[str, Any] = {}
    for path, module in model.named_modules():
        fixed = norm_mode(module) is not NormMode.TRAIN or (
            planned is not None and planned.norm_mode(path) is not NormMode.TRAIN
        )
        if not fixed:
            continue
        prefix = f"{path}." if path else ""
        for buffer_name, buffer in module.named_buffers(recurse=False):
            if buffer is not None:
                stats[prefix + buffer_name] = buffer
    return frozen, stats, trainable


def snapshot(model: nn.Module) -> Snapshot:
    """Copy every frozen parameter and fixed norm statistic of ``model`` (take it after
    :func:`freeze`); trainable parameters get a cheap fingerprint to tell whether they moved."""
    import torch

    frozen, stats, trainable = frozen_tensors(model)
    with torch.no_grad():
        params = {n: t.detach().clone() for n, t in frozen.items() if not t.is_meta}
        buffers = {n: t.detach().clone() for n, t in stats.items() if not t.is_meta}
        prints = {n: _fingerprint(t) for n, t in trainable.items() if not t.is_meta}
    return Snapshot(params=params, stats=buffers, fingerprints=prints, model=model)


def check_frozen(model: nn.Module, reference: Snapshot | Mapping[str, Any]) -> FreezeReport:
    """Report every frozen parameter or fixed norm statistic of ``model`` that changed.

    ``reference`` is a :class:`Snapshot` (see :func:`snapshot`) or a state dict taken earlier
    (``copy.deepcopy(model.state_dict())``). What counts as frozen is read from the model now
    (``requires_grad`` and ``model.zoo.plan``). Comparison is bit for bit.
    """
    import torch

    frozen, stats, trainable = frozen_tensors(model)
    if isinstance(reference, Snapshot):
        ref_params, ref_stats = reference.params, reference.stats
    elif isinstance(reference, Mapping):
        ref_params = ref_stats = reference
    else:
        raise PlanError(
            f"check_frozen needs a zoo snapshot or a state dict, got {type(reference).__name__}"
        )
    changed: list[Change] = []
    unchecked: list[str] = []
    checked = {"parameter": 0, "statistic": 0}
    with torch.no_grad():
        for kind, current, ref in (
            ("parameter", frozen, ref_params),
            ("statistic", stats, ref_stats),
        ):
            for name, tensor in current.items():
                before = ref.get(name)
                if before is None or tensor.is_meta:
                    unchecked.append(name)
                    continue
                checked[kind] += 1
                if not _same_bits(tensor.detach(), before.detach().to(tensor.device)):
                    diff = _max_diff(tensor, before)
                    changed.append(Change(name, kind, diff))  # type: ignore[arg-type]
        not_moved: list[str] = []
        if isinstance(reference, Snapshot):
            for name, tensor in trainable.items():
                fingerprint = reference.fingerprints.get(name)
                if fingerprint is not None and _fingerprint(tensor) == fingerprint:
                    not_moved.append(name)
    return FreezeReport(
        changed=tuple(changed),
        checked_params=checked["parameter"],
        checked_stats=checked["statistic"],
        unchecked=tuple(unchecked),
        not_moved=tuple(not_moved),
    )


def _fingerprint(tensor: torch.Tensor) -> tuple[float, float]:
    """Two float64 reductions (no full copy): enough to tell whether a tensor moved."""
    import torch

    data = tensor.detach()
    if data.is_complex():
        data = torch.view_as_real(data)
    if not data.is_floating_point():
        data = data.double()
    return (
        float(data.sum(dtype=torch.float64)),
        float(torch.linalg.vector_norm(data, dtype=torch.float64)),
    )


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    import torch

    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point() or a.is_complex():
        flat_a = a.contiguous().reshape(-1)
        flat_b = b.contiguous().reshape(-1)
        return torch.equal(flat_a.view(torch.uint8), flat_b.view(torch.uint8))
    return torch.equal(a, b)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    try:
        if a.shape != b.shape:
            return float("inf")
        diff = (a.detach().double() - b.detach().to(a.device).double()).abs()
        return float(diff.max()) if diff.numel() else 0.0
    except (RuntimeError, TypeError):
        return float("nan")
