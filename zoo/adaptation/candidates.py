"""The candidates of :func:`zoo.compare`: the default ladder of policies, and their plans.

:func:`default_policies` reads the ladder off the parameter table (from training least to most);
:func:`plan_candidates` runs each policy on the table and compares two specs that train the same
parameters the same way only once. Schedules (``gradual``) and ``auto`` cannot be candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zoo.adaptation.probe import with_probe
from zoo.errors import AdaptArgumentError, ZooError
from zoo.io.leaderboard import short_policy
from zoo.plans.binding import bind, resolve_policy

if TYPE_CHECKING:
    from zoo.core.catalog import Catalog
    from zoo.plans.plan import Plan
    from zoo.tables.table import ParamTable

#: The adapter policies (other plugins' or zoo's) added to the default ladder when registered.
ADAPTER_POLICIES = ("lora", "ssf")
#: How many ``train-last:n=K`` rungs of the default ladder (K = 1 .. this, at most the stages).
LADDER_STAGES = 3
#: Policies that cannot be compared: a schedule changes what trains, auto is what compare measures.
NOT_COMPARED = ("zoo:auto",)


def default_policies(
    table: ParamTable, catalog: Catalog, surgical: Sequence[int] = ()
) -> list[str]:
    """The default ladder, from training least to most: ``linear-probe``,
    ``train-last:n=1..3`` (at most the backbone's stages), ``surgical:depth=K`` for each depth
    in ``surgical`` (those the gradient signal points to, :mod:`zoo.adaptation.rgn`),
    ``bitfit``, ``norm-only``, the
    adapter policies that are registered (``lora``, ``ssf``), ``layer-decay``, ``lp-ft`` (the
    head first, then everything) and ``full``."""
    stages = [s.depth for s in table.depth_summary() if s.group not in ("head", "neck")]
    ladder = ["linear-probe"]
    ladder += [f"train-last:n={n}" for n in range(1, min(LADDER_STAGES, len(stages) - 1) + 1)]
    ladder += [f"surgical:depth={depth}" for depth in surgical]
    ladder += ["bitfit", "norm-only"]
    known = set(catalog.list_policies())
    ladder += [name for name in ADAPTER_POLICIES if name in known or f"zoo:{name}" in known]
    ladder += ["layer-decay", "lp-ft", "full"]
    return ladder


@dataclass(frozen=True)
class PlannedCandidate:
    """A policy to compare: its spec text (CLI form, qualified) and its plan for the model."""

    spec: str
    plan: Plan


def plan_candidates(
    policies: Sequence[str] | None,
    table: ParamTable,
    catalog: Catalog,
    *,
    context: dict[str, Any] | None = None,
    probe_start: float = 0.0,
    surgical: Sequence[int] = (),
) -> tuple[list[PlannedCandidate], list[str]]:
    """The plans of ``policies`` (default: :func:`default_policies`), duplicates collapsed:
    two specs that train the same parameters with the same lr scales and norm modes are
    compared once. ``probe_start``: every plan that trains more than the head first fits the
    head alone for that share of the epochs (:func:`~zoo.adaptation.probe.with_probe`).
    ``surgical``: the depths whose ``surgical`` candidates join the default ladder.
    Returns ``(candidates, notes)``. A policy given explicitly that cannot run
    raises; one of the default ladder that does not apply is left out with a note."""
    given = policies is not None
    specs = list(policies) if policies is not None else default_policies(table, catalog, surgical)
    found: dict[Any, PlannedCandidate] = {}
    notes: list[str] = []
    for text in specs:
        try:
            check_policy(text, catalog)
            plan = bind(text, _context_for(text, context, catalog), catalog).run(table)
        except ZooError as exc:
            if given or isinstance(exc, AdaptArgumentError):
                raise
            notes.append(f"{text} left out: {exc}")
            continue
        if not plan.trainable:
            if given:
                raise AdaptArgumentError("policies", text, "a policy that trains something")
            continue
        _check_spec_text(plan.spec_text)
        plan = with_probe(plan, probe_start)
        key = _plan_key(plan)
        if key in found:
            notes.append(
                f"{short_policy(plan.spec_text)} trains the same as "
                f"{short_policy(found[key].spec)}: compared once"
            )
            continue
        found[key] = PlannedCandidate(plan.spec_text, plan)
    if not found:
        raise AdaptArgumentError("policies", specs, "at least one policy that trains something")
    return list(found.values()), notes


def check_policy(text: str, catalog: Catalog) -> None:
    """Refuse (before any work) a policy that is unknown or cannot be compared: a schedule
    changes what trains each epoch, and ``auto`` is what compare measures."""
    _check_spec_text(text)
    spec, _raw = resolve_policy(text, catalog)
    if spec.schedule or spec.qualified_name in NOT_COMPARED:
        what = "a schedule" if spec.schedule else "what compare measures"
        raise AdaptArgumentError(
            "policies",
            text,
            f"fixed freeze policies ({spec.qualified_name} is {what}; compare its fixed stages "
            "instead, e.g. linear-probe, train-last:n=1, full)",
        )


#: Longest policy spec a leaderboard keeps (the saved ``zoo.compare`` metadata's limit).
MAX_SPEC_TEXT = 1000


def _check_spec_text(text: str) -> None:
    if len(text) > MAX_SPEC_TEXT or any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text):
        raise AdaptArgumentError(
            "policies",
            text,
            f"policy specs of at most {MAX_SPEC_TEXT} characters without control characters",
        )


def _context_for(text: str, context: dict[str, Any] | None, catalog: Catalog) -> dict[str, Any]:
    """The context arguments (``num_classes``, ``epochs``…) the policy declares."""
    if not context:
        return {}
    spec, raw = resolve_policy(text, catalog)
    declared = {a.name for a in spec.args}
    return {k: v for k, v in context.items() if k in declared and k not in raw}


def _plan_key(plan: Plan) -> tuple:
    trained = tuple(sorted((n, p.lr_scale) for n, p in plan.params.items() if p.trainable))
    norms = tuple(sorted((k, str(v)) for k, v in plan.norms.items()))
    added = repr(getattr(plan, "additions", ()))  # adapters a plan adds (rank, placement)
    return trained, norms, added, plan.probe
