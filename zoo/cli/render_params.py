"""Rich renderables for ``zoo show`` (pure: a :class:`~zoo.ParamTable` in, renderables out)."""

from __future__ import annotations

from collections import Counter

from rich.table import Table
from rich.text import Text

from zoo.cli.output import aligned_text, bar, human_count
from zoo.tables.table import ParamTable

BAR_WIDTH = 20


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def header(table: ParamTable, *, title: str | None = None) -> Text:
    """Who the model is and its totals: name, class, parameters, depths, norms, grouping."""
    text = Text()
    name = title or table.backbone or table.model_type.rpartition(".")[2] or "model"
    text.append(name, style="bold cyan")
    if table.model_type:
        text.append(f"  ({table.model_type})", style="dim")
    text.append("\n")
    frozen = table.total_numel - table.trainable_numel
    text.append(
        f"{human_count(table.total_numel)} parameters in {len(table)} tensors"
        + (f", {human_count(frozen)} frozen" if frozen else "")
        + "\n"
    )
    groups = table.groups
    if groups:
        text.append(f"depths 0 ({groups[0]}) … {table.max_depth} ({groups[-1]})")
    else:
        text.append("no parameters")
    text.append(f"; grouped by {table.grouped_by or '?'}\n")
    kinds = Counter(n.type for n in table.norms)
    if kinds:
        running = sum(1 for n in table.norms if n.tracks_running_stats)
        listed = ", ".join(f"{count} {kind}" for kind, count in kinds.most_common())
        text.append(f"norm layers: {listed}")
        text.append(f" ({running} with running statistics)\n" if running else "\n")
    else:
        text.append("norm layers: none\n")
    for note in table.notes:
        text.append(f"note: {note}\n", style="yellow")
    return text


def depth_table(table: ParamTable, *, bar_width: int = BAR_WIDTH) -> Table:
    """One row per depth: group, tensors, parameters, % of total, trainable, norms, a bar."""
    total = table.total_numel
    out = Table(box=None, pad_edge=False, header_style="bold")
    out.add_column("depth", justify="right")
    out.add_column("group", style="cyan")
    out.add_column("tensors", justify="right")
    out.add_column("params", justify="right")
    out.add_column("%", justify="right")
    out.add_column("trainable", justify="right")
    out.add_column("norms", justify="right")
    out.add_column("share", no_wrap=True)
    for summary in table.depth_summary():
        if summary.trainable_numel == summary.numel:
            trainable = "all"
        elif summary.trainable_numel == 0:
            trainable = "none"
        else:
            trainable = human_count(summary.trainable_numel)
        out.add_row(
            str(summary.depth),
            summary.group,
            str(summary.tensors),
            human_count(summary.numel),
            _percent(summary.numel, total),
            trainable,
            str(summary.norms) if summary.norms else "",
            Text(bar(summary.numel / total if total else 0.0, bar_width), style="green"),
        )
    out.add_row(
        "",
        Text("total", style="bold"),
        str(len(table)),
        human_count(total),
        "100%" if total else "-",
        human_count(table.trainable_numel) if table.trainable_numel != total else "all",
        "",
        "",
    )
    return out


def rows_table(table: ParamTable) -> Text:
    """Every parameter: name, depth, group, role, module type, shape, count, dtype, trainable."""
    rows = [
        (
            row.name,
            str(row.depth),
            row.group,
            row.role,
            row.module_type,
            "x".join(str(s) for s in row.shape) or "scalar",
            human_count(row.numel),
            row.dtype,
            "yes" if row.trainable else "no",
        )
        for row in table
    ]
    headers = (
        "name",
        "depth",
        "group",
        "role",
        "module type",
        "shape",
        "params",
        "dtype",
        "trainable",
    )
    return aligned_text(headers, rows, right={1, 6})


def norms_table(table: ParamTable) -> Text:
    """Every normalization layer: path, type, depth, group, running statistics, affine."""
    rows = [
        (
            norm.path,
            norm.type,
            str(norm.depth),
            norm.group,
            "yes" if norm.tracks_running_stats else "no",
            ", ".join(p.rpartition(".")[2] for p in norm.params) or "-",
        )
        for norm in table.norms
    ]
    headers = ("norm layer", "type", "depth", "group", "running stats", "affine")
    return aligned_text(headers, rows, right={2})
