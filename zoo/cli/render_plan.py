"""Rich renderables and JSON for ``zoo plan`` (pure: a Plan and its table in, output out)."""

from __future__ import annotations

import math
from typing import Any

from rich.table import Table
from rich.text import Text

from zoo.cli.output import aligned_text, human_count
from zoo.plans.plan import NormMode, Plan
from zoo.tables.table import DepthSummary, ParamTable

BAR_WIDTH = 16
TRAINED, FROZEN = "█", "░"


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def share_bar(trained: int, total: int, width: int = BAR_WIDTH) -> Text:
    """``█`` for the trained share, ``░`` for the frozen share (at least one cell each if any)."""
    if total <= 0:
        return Text("")
    filled = round(width * trained / total)
    if trained and not filled:
        filled = 1
    if trained < total and filled == width:
        filled = width - 1
    text = Text()
    text.append(TRAINED * filled, style="green")
    text.append(FROZEN * (width - filled), style="dim")
    return text


def _scale(scales: tuple[float, float] | None) -> str:
    if scales is None:
        return "-"
    lo, hi = scales
    return f"{lo:.3g}" if lo == hi else f"{lo:.3g}-{hi:.3g}"


def _modes(counts: dict[str, int]) -> str:
    order = [m.value for m in NormMode]
    return ", ".join(f"{m} x{counts[m]}" for m in order if counts.get(m))


def header(plan: Plan, table: ParamTable) -> Text:
    """Model, policy and totals: what trains, in numbers; the notes of the policy."""
    text = Text()
    text.append(table.backbone or table.model_type.rpartition(".")[2] or "model", style="bold cyan")
    text.append("  policy ")
    text.append(plan.spec_text, style="bold")
    if plan.epoch is not None:
        text.append(f" at epoch {plan.epoch}")
    text.append("\n")
    total = plan.numel(table=table)
    trained = plan.numel(trainable=True, table=table)
    text.append(
        f"trains {human_count(trained)} of {human_count(total)} parameters "
        f"({_percent(trained, total)}), {len(plan.trainable)} of {len(plan.params)} tensors; "
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
    text.append(f"norm layers: {_modes(counts) or 'none'}\n")
    for note in plan.notes:
        text.append(f"note: {note}\n", style="yellow")
    return text


def depth_table(plan: Plan, table: ParamTable, *, bar_width: int = BAR_WIDTH) -> Table:
    """One row per depth: group, parameters, trained share (and a bar), norm modes, lr scale;
    with an adapter policy also the parameters its adapters add (included in ``params``).

    Fits 80 columns; counts of tensors and trained parameters are in ``--full`` and ``--json``.
    """
    out = Table(box=None, pad_edge=False, header_style="bold")
    out.add_column("depth", justify="right", no_wrap=True)
    out.add_column("group", style="cyan", no_wrap=True)
    out.add_column("params", justify="right", no_wrap=True)
    adds = bool(plan.additions)
    if adds:
        out.add_column("added", justify="right", no_wrap=True)
    out.add_column("trained", justify="right", no_wrap=True)
    out.add_column(f"{TRAINED} trained {FROZEN} frozen", no_wrap=True)
    out.add_column("norms")
    out.add_column("lr scale", justify="right", no_wrap=True)
    depths = table.depth_summary(plan)
    for d in depths:
        if d.trainable_tensors == d.tensors:
            state = Text("all", style="green")
        elif d.trainable_tensors == 0:
            state = Text("frozen", style="dim")
        else:
            state = Text(_percent(d.trainable_numel, d.numel))
        added = [human_count(d.added_numel) if d.added_numel else "-"] if adds else []
        out.add_row(
            str(d.depth),
            d.group,
            human_count(d.numel),
            *added,
            state,
            share_bar(d.trainable_numel, d.numel, bar_width),
            _modes(d.norm_modes),
            _scale(d.lr_scales),
        )
    total = sum(d.numel for d in depths)
    trained = sum(d.trainable_numel for d in depths)
    total_added = [human_count(sum(d.added_numel for d in depths))] if adds else []
    out.add_row(
        "",
        Text("total", style="bold"),
        human_count(total),
        *total_added,
        Text(_percent(trained, total), style="bold"),
        share_bar(trained, total, bar_width),
        "",
        "",
    )
    return out


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
    text = Text()
    headers = ("norm layer", "type", "depth", "running stats", "mode")
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    text.append(
        "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip() + "\n",
        style="bold",
    )
    for row in rows:
        style = "green" if row[-1] == NormMode.TRAIN.value else "dim"
        text.append(
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n",
            style=style,
        )
    return text


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
