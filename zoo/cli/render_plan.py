"""Rich renderables and JSON for ``zoo plan`` (pure: a Plan and its table in, output out)."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Group
from rich.text import Text

from zoo.cli import render_params
from zoo.cli.output import Wrapped, aligned_text, human_count, percent
from zoo.plans.plan import NormMode, Plan
from zoo.tables.table import DepthSummary, ParamTable

#: The columns of ``zoo plan`` (see :func:`~zoo.cli.render_params.depth_table`), 80 wide; the
#: counts of tensors and trained parameters are in ``--full`` and ``--json``.
PLAN_COLUMNS = ("params", "trained", "trained share", "norms", "lr scale")
BAR_WIDTH = 16


def header(plan: Plan, table: ParamTable) -> Group:
    """Model, policy and totals: what trains, in numbers; the notes of the policy. The
    policy's spec wraps between its arguments (:class:`~zoo.cli.output.Wrapped`)."""
    name = table.backbone or table.model_type.rpartition(".")[2] or "model"
    epoch = f" at epoch {plan.epoch}" if plan.epoch is not None else ""
    title = Wrapped(f"{name}  policy {plan.spec_text}{epoch}", style="bold")
    text = Text()
    total = plan.numel(table=table)
    trained = plan.numel(trainable=True, table=table)
    text.append(
        f"trains {human_count(trained)} of {human_count(total)} parameters "
        f"({percent(trained, total)}), {len(plan.trainable)} of {len(plan.params)} tensors; "
        f"{human_count(total - trained)} frozen\n"
    )
    if plan.additions:
        added = plan.added_numel()
        kinds = ", ".join(sorted({a.kind for a in plan.additions}))
        text.append(
            f"adds {human_count(added)} parameters in {len(plan.additions)} adapters ({kinds}): "
            f"{100 * added / max(total - added, 1):.2f}% of the base's "
            f"{human_count(total - added)}\n"
        )
    counts: dict[str, int] = {}
    for mode in plan.norms.values():
        counts[mode.value] = counts.get(mode.value, 0) + 1
    text.append(f"norm layers: {render_params.norm_modes_text(counts) or 'none'}\n")
    for note in plan.notes:
        text.append(f"note: {note}\n", style="yellow")
    return Group(title, text)


def depth_table(plan: Plan, table: ParamTable) -> render_params.DepthTable:
    """One row per depth: group, parameters, trained share (and a bar), norm modes, lr scale;
    with an adapter policy also the parameters its adapters add (included in ``params``)."""
    columns = ("params", "added", *PLAN_COLUMNS[1:]) if plan.additions else PLAN_COLUMNS
    return render_params.depth_table(table.depth_summary(plan), columns, bar_width=BAR_WIDTH)


def params_text(plan: Plan, table: ParamTable) -> Text:
    """Every parameter: depth, group, shape, count, trained/frozen, lr scale, decay, norm mode."""
    norm_of = {p: norm.path for norm in table.norms for p in norm.params}
    rows = []
    added_names = set(plan.added_names)
    for row in table.rows:
        if row.name in added_names:
            continue
        item = plan.params.get(row.name)
        trained = bool(item and item.trainable)
        norm = norm_of.get(row.name)
        rows.append(
            (
                row.name,
                str(row.depth),
                row.group,
                "x".join(str(s) for s in row.shape) or "scalar",
                human_count(row.numel),
                "trained" if trained else "frozen",
                f"{item.lr_scale:.3g}" if item and trained else "-",
                ("yes" if item.weight_decay else "no") if item and trained else "-",
                plan.norm_mode(norm).value if norm else "",
            )
        )
    for addition in plan.additions:
        for name in addition.names:
            item = plan.params[name]
            shape = addition.shape_of(name)
            rows.append(
                (
                    name,
                    str(addition.depth),
                    addition.group,
                    "x".join(str(s) for s in shape) or "scalar",
                    human_count(math.prod(shape)),
                    f"added {'trained' if item.trainable else 'frozen'}",
                    f"{item.lr_scale:.3g}" if item.trainable else "-",
                    ("yes" if item.weight_decay else "no") if item.trainable else "-",
                    addition.kind,
                )
            )
    headers = ("name", "depth", "group", "shape", "params", "state", "lr scale", "decay", "norm")
    return aligned_text(
        headers,
        rows,
        right={1, 4, 6},
        first_style=None,
        row_style=lambda row: None if "trained" in row else "dim",
    )


def norms_text(plan: Plan, table: ParamTable) -> Text:
    """Every normalization layer: path, type, depth, running statistics, mode."""
    rows = [
        (
            norm.path,
            norm.type,
            str(norm.depth),
            "yes" if norm.tracks_running_stats else "no",
            plan.norm_mode(norm.path).value,
        )
        for norm in table.norms
    ]
    return aligned_text(
        ("norm layer", "type", "depth", "running stats", "mode"),
        rows,
        first_style=None,
        row_style=lambda row: "green" if row[-1] == NormMode.TRAIN.value else "dim",
    )


def plan_json(plan: Plan, table: ParamTable, *, full: bool = False) -> dict[str, Any]:
    """The ``--json`` document: totals, one entry per depth, the plan (and every parameter)."""
    depths: list[DepthSummary] = table.depth_summary(plan)
    added_names = set(plan.added_names)
    total = plan.numel(table=table)
    trained = plan.numel(trainable=True, table=table)
    data: dict[str, Any] = {
        "backbone": table.backbone,
        "policy": plan.policy,
        "args": plan.to_dict()["args"],
        "spec": plan.spec_text,
        "epoch": plan.epoch,
        "notes": list(plan.notes),
        "total_numel": total,
        "trainable_numel": trained,
        "trainable_percent": round(100 * trained / total, 3) if total else 0.0,
        "trainable_tensors": len(plan.trainable),
        "tensors": len(plan.params),
        "added_numel": plan.added_numel(),
        "additions": [a.to_dict() for a in plan.additions],
        "depths": [d.to_dict() for d in depths],
        "plan": plan.to_dict(),
    }
    if full:
        data["params"] = [
            {
                "name": row.name,
                "depth": row.depth,
                "group": row.group,
                "shape": list(row.shape),
                "numel": row.numel,
                "trainable": plan.params[row.name].trainable,
                "lr_scale": plan.params[row.name].lr_scale,
                "weight_decay": plan.params[row.name].weight_decay,
            }
            for row in table.rows
            if row.name not in added_names
        ] + [
            {
                "name": name,
                "depth": addition.depth,
                "group": addition.group,
                "shape": list(addition.shape_of(name)),
                "numel": math.prod(addition.shape_of(name)),
                "trainable": plan.params[name].trainable,
                "lr_scale": plan.params[name].lr_scale,
                "weight_decay": plan.params[name].weight_decay,
                "added": addition.kind,
            }
            for addition in plan.additions
            for name in addition.names
        ]
        data["norms"] = [
            {
                "path": n.path,
                "type": n.type,
                "depth": n.depth,
                "tracks_running_stats": n.tracks_running_stats,
                "mode": plan.norm_mode(n.path).value,
            }
            for n in table.norms
        ]
    return data
