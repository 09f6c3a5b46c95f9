"""LP-FT's first stage: the classifier head alone, on features cached at its input.

A plan with ``probe > 0`` (the ``lp-ft`` policy, or ``probe_start=`` for any plan that trains
more than the head) trains in two stages (Kumar et al., *Fine-Tuning can Distort Pretrained
Features and Underperform Out-of-Distribution*, ICLR 2022): the first :func:`probe_epochs`
epochs fit the head alone — a linear probe (:func:`head_plan`), on the activations at the
head's input, computed once — and the remaining epochs train the plan's parameters from that
head, with an lr schedule of their own. The engine (:func:`zoo.adaptation.training.probe_trainee`)
trains the first stage for ``zoo.adapt`` and for each compare candidate.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from zoo.core.specs import PolicySpec
from zoo.errors import PlanError
from zoo.plans.plan import NormMode, Plan

if TYPE_CHECKING:
    from zoo.adaptation.config import TrainConfig


def probe_epochs(plan: Plan, epochs: int) -> int:
    """How many of ``epochs`` fit the head alone: the plan's ``probe`` share, rounded, at
    least 1 and leaving at least 1 for the second stage (0: no probe, or a one-epoch run)."""
    if not plan.probe or epochs < 2:
        return 0
    return min(epochs - 1, max(1, round(plan.probe * epochs)))


def head_plan(plan: Plan) -> Plan:
    """The probe stage's plan on the table ``plan`` was made from: the classifier head's
    parameters (role ``head``) train, every norm layer keeps its statistics (the rule of
    ``linear-probe``), at the rate ``linear-probe`` declares (``PolicySpec.HEAD_RATE``)."""
    table = plan.table
    if table is None:
        raise PlanError("a plan with probe > 0 needs its parameter table (plan.complete(table))")
    head = {row.name for row in table.rows if row.role == "head"}
    if not head:
        raise PlanError(
            f"{plan.spec_text} fits the classifier head first (probe={plan.probe:g}), but the "
            "model has no parameter with the role 'head'"
        )
    modes = {
        norm.path: NormMode.FROZEN_STATS if head.intersection(norm.params) else NormMode.FROZEN
        for norm in table.norms
    }
    names = [name for name in table.names if name in head]
    scales = dict.fromkeys(names, PolicySpec.HEAD_RATE)  # the rate linear-probe declares
    return dataclasses.replace(
        Plan.from_table(table, names, norm_modes=modes, lr_scales=scales), policy="probe stage"
    )


def stage_config(config: TrainConfig, epochs: int) -> TrainConfig:
    """``config`` for a stage of ``epochs`` epochs (its own lr schedule; warm-up capped)."""
    return dataclasses.replace(
        config, epochs=epochs, warmup_epochs=min(config.warmup_epochs, epochs)
    )


def with_probe(plan: Plan, share: float) -> Plan:
    """``plan`` with the probe stage ``probe_start=share`` asks for, when it trains more than
    the head and has none of its own (``lp-ft`` keeps its ``probe=``) and adds no modules
    (an adapter policy starts from its identity adapters); else ``plan``."""
    if not share or plan.probe or plan.additions or plan.table is None:
        return plan
    head = {row.name for row in plan.table.rows if row.role == "head"}
    if not head or set(plan.trainable) <= head:
        return plan
    return dataclasses.replace(plan, probe=share, notes=(*plan.notes, probe_note(share)))


def probe_note(share: float) -> str:
    """What a plan with a probe stage says about it."""
    return (
        f"LP-FT: the classifier head trains alone first ({share:.0%} of the epochs, on "
        "features cached at its input), then the plan's parameters train from that head"
    )
