"""Driving a schedule policy (gradual unfreezing) from any training loop.

A :class:`ScheduleDriver` holds a model, a policy and, once given one, its optimizer. One call
per epoch applies that epoch's plan: ``requires_grad`` and norm modes change, and parameters
that just became trainable join the existing optimizer as new param groups, so the optimizer
is never rebuilt and its state is kept::

    driver = zoo.ScheduleDriver(model, "gradual:every=2")
    opt = driver.optimizer(torch.optim.AdamW, lr=1e-3, weight_decay=0.05)
    for epoch in range(10):
        change = driver.step(epoch)        # before model.train() and the epoch's batches
        model.train()
        ...

It knows nothing about Lightning or torch.distributed: :meth:`ScheduleDriver.trainable_at`,
:meth:`~ScheduleDriver.unfrozen_at` and :meth:`~ScheduleDriver.milestones` say ahead of time
which parameters become trainable when, so distributed code can plan (``DistributedDataParallel``
only reduces parameters that required grad when it was built: wrap again at each milestone).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zoo.core import checks
from zoo.core.record import unwrap
from zoo.errors import PlanError, PolicyArgumentError
from zoo.plans.freeze import apply_plan
from zoo.plans.plan import Plan

if TYPE_CHECKING:
    import torch
    from torch import nn

    from zoo.plans.binding import BoundPolicy
    from zoo.tables.table import ParamTable


@dataclass(frozen=True)
class ScheduleStep:
    """What one :meth:`ScheduleDriver.step` changed.

    ``unfrozen``/``frozen``: parameter names whose state changed against the plan applied
    before; ``added_groups``: param groups added to the optimizer; ``plan``: the epoch's plan.
    """

    epoch: int
    unfrozen: tuple[str, ...]
    frozen: tuple[str, ...]
    added_groups: int
    plan: Plan

    @property
    def changed(self) -> bool:
        return bool(self.unfrozen or self.frozen)


class ScheduleDriver:
    """Applies a (schedule) policy epoch by epoch and keeps an optimizer in step.

    ``policy`` is a policy name or CLI form (``"gradual:every=2"``) with keyword ``args``. Any
    policy works; a non-schedule policy simply gives the same plan every epoch.

    (``zoo.ScheduleDriver`` resolves the name in the process catalog; this base class takes a
    policy already bound, :func:`zoo.plans.binding.bind`, and the model's table.)
    """

    def __init__(self, model: nn.Module, policy: BoundPolicy, /, *, table: ParamTable) -> None:
        self.model = unwrap(model)  # a wrapper's parameters carry its prefix
        self.policy = policy
        self.spec = policy.spec
        self.args = policy.args
        self.table = table
        self.epoch: int | None = None
        self.plan: Plan | None = None
        self.optimizer_: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self._lr: float = 0.0
        self._weight_decay: float = 0.0
        self._decay_norm_and_bias = False
        self._plans: dict[int, Plan] = {}

    # ------------------------------------------------------------ looking ahead

    @property
    def is_schedule(self) -> bool:
        return self.spec.schedule

    def plan_at(self, epoch: int) -> Plan:
        """The plan of ``epoch`` (computed once, from the table; touches nothing)."""
        try:
            epoch = checks.integer(epoch, "epoch", 0)
        except checks.Invalid as exc:
            raise PolicyArgumentError(str(exc)) from None
        key = epoch if self.spec.schedule else 0
        if key not in self._plans:
            self._plans[key] = self.policy.run(
                self.table, epoch=key if self.spec.schedule else None
            )
        return self._plans[key]

    def trainable_at(self, epoch: int) -> list[str]:
        """Names of the parameters that train at ``epoch``."""
        return self.plan_at(epoch).trainable

    def unfrozen_at(self, epoch: int) -> list[str]:
        """Names that train at ``epoch`` but not at ``epoch - 1`` (epoch 0: all that train)."""
        now = self.plan_at(epoch).trainable
        if epoch == 0:
            return now
        before = set(self.plan_at(epoch - 1).trainable)
        return [n for n in now if n not in before]

    def milestones(self, epochs: int) -> dict[int, list[str]]:
        """``{epoch: newly trainable names}`` for the epochs ``1 .. epochs-1`` where any change."""
        out = {}
        for epoch in range(1, epochs):
            names = self.unfrozen_at(epoch)
            if names:
                out[epoch] = names
        return out

    # ------------------------------------------------------------ the optimizer

    def optimizer(
        self,
        optimizer_class: type[torch.optim.Optimizer],
        *,
        lr: float,
        weight_decay: float = 0.0,
        decay_norm_and_bias: bool = False,
        **kwargs: Any,
    ) -> torch.optim.Optimizer:
        """Build ``optimizer_class`` on the trainable parameters of the current epoch (epoch 0
        is applied first if no step ran yet) and attach it."""
        if self.plan is None:
            self.step(0)
        assert self.plan is not None
        groups = self.plan.param_groups(
            self.model, lr=lr, weight_decay=weight_decay, decay_norm_and_bias=decay_norm_and_bias
        )
        if not groups:
            raise PlanError(
                f"nothing trains at epoch {self.epoch} under {self.plan.spec_text}: "
                "no optimizer to build"
            )
        opt = optimizer_class(groups, lr=lr, **kwargs)
        self.attach(opt, lr=lr, weight_decay=weight_decay, decay_norm_and_bias=decay_norm_and_bias)
        return opt

    def attach(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        lr: float | None = None,
        weight_decay: float | None = None,
        decay_norm_and_bias: bool = False,
        scheduler: Any = None,
    ) -> None:
        """Use ``optimizer`` from now on: :meth:`step` adds newly unfrozen parameters to it.

        ``lr`` and ``weight_decay`` are the base values for new groups (lr scales of the plan
        apply); by default the optimizer's ``lr`` default and the largest weight decay among
        its groups. Pass the LR ``scheduler`` so new groups join its ``base_lrs``; a new group
        starts at the scheduler's current factor (current lr / initial lr of the first group).
        """
        self.optimizer_ = optimizer
        self.scheduler = scheduler
        self._lr = float(lr if lr is not None else optimizer.defaults.get("lr", 0.0))
        if weight_decay is None:
            weight_decay = max(
                (float(g.get("weight_decay", 0.0)) for g in optimizer.param_groups),
                default=float(optimizer.defaults.get("weight_decay", 0.0)),
            )
        self._weight_decay = float(weight_decay)
        self._decay_norm_and_bias = decay_norm_and_bias
        if self.plan is not None:
            self._add_missing()

    # ------------------------------------------------------------ stepping

    def step(self, epoch: int) -> ScheduleStep:
        """Apply the plan of ``epoch``: requires_grad, norm modes, new optimizer groups."""
        new_plan = self.plan_at(epoch)
        before = set(self.plan.trainable) if self.plan is not None else None
        apply_plan(self.model, new_plan)
        now = new_plan.trainable
        if before is None:
            unfrozen: tuple[str, ...] = tuple(now)
            frozen: tuple[str, ...] = ()
        else:
            now_set = set(now)
            unfrozen = tuple(n for n in now if n not in before)
            frozen = tuple(n for n in self.plan.trainable if n not in now_set)  # type: ignore[union-attr]
        self.plan, self.epoch = new_plan, epoch
        added = self._add_missing() if self.optimizer_ is not None else 0
        return ScheduleStep(epoch, unfrozen, frozen, added, new_plan)

    def _add_missing(self) -> int:
        """Add trainable parameters the optimizer lacks as new groups; returns how many."""
        opt = self.optimizer_
        assert opt is not None and self.plan is not None
        held = {id(p) for group in opt.param_groups for p in group["params"]}
        named = dict(self.model.named_parameters())
        missing = [n for n in self.plan.trainable if id(named[n]) not in held]
        if not missing:
            return 0
        with_names = bool(opt.param_groups) and all("param_names" in g for g in opt.param_groups)
        groups = self.plan.param_groups(
            self.model,
            lr=self._lr,
            weight_decay=self._weight_decay,
            decay_norm_and_bias=self._decay_norm_and_bias,
            names=missing,
            with_names=with_names,
        )
        factor = _lr_factor(opt)
        for group in groups:
            if factor is not None:
                group["initial_lr"] = group["lr"]
                group["lr"] = group["lr"] * factor
            opt.add_param_group(group)
            base_lrs = getattr(self.scheduler, "base_lrs", None)
            if isinstance(base_lrs, list):
                base_lrs.append(group.get("initial_lr", group["lr"]))
            last = getattr(self.scheduler, "_last_lr", None)
            if isinstance(last, list):
                last.append(group["lr"])
        return len(groups)


def _lr_factor(optimizer: torch.optim.Optimizer) -> float | None:
    """Current lr / initial lr of the first group a scheduler set up; None without one."""
    for group in optimizer.param_groups:
        initial = group.get("initial_lr")
        if initial:
            return float(group["lr"]) / float(initial)
    return None
