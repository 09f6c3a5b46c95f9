"""Rich renderables for ``zoo show`` (pure: a :class:`~zoo.ParamTable` in, renderables out), and
the one per-depth table that ``zoo show``, ``zoo plan`` and ``zoo inspect`` print."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text

from zoo.cli.output import aligned_text, bar, human_count, percent, printable
from zoo.plans.plan import NormMode
from zoo.tables.table import DepthSummary, ParamTable

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions

BAR_WIDTH = 20
TRAINED, FROZEN = "█", "░"
#: The columns of ``zoo show`` and ``zoo inspect`` (see :func:`depth_table`).
TABLE_COLUMNS = ("tensors", "params", "%", "trainable", "norms", "share")


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


#: Columns a depth table leaves out, first to last, when it does not fit its width (the bar
#: narrows to :data:`MIN_BAR` first; numbers are never cut).
DROP_ORDER = ("norms", "lr scale", "tensors", "added", "%", "share", "trainable", "trained share")
#: The narrowest bar a depth table draws.
MIN_BAR = 6
BARS = ("share", "trained share")


def depth_table(
    depths: Sequence[DepthSummary],
    columns: Sequence[str] = TABLE_COLUMNS,
    *,
    bar_width: int = BAR_WIDTH,
) -> DepthTable:
    """One row per depth (a :meth:`~zoo.ParamTable.depth_summary`), then the totals; after
    ``depth`` and ``group``, the ``columns`` named:

    ``tensors``, ``params``; ``added`` (by adapters, included in ``params``); ``%`` (of the
    model's parameters); ``trainable`` (``all``, ``none`` or how many) or ``trained`` (``all``,
    ``frozen`` or the share); ``norms`` (how many, or by mode under a plan); ``lr scale``;
    ``share`` (a bar of the share of the model) or ``trained share`` (a bar, trained against
    frozen). Laid out for the width it is printed at (:class:`DepthTable`).
    """
    return DepthTable(depths, columns, bar_width)


class DepthTable:
    """A per-depth table laid out for the width it is printed at: the bar (at most
    ``bar_width``) narrows first, then the columns of :data:`DROP_ORDER` are left out, so
    that no number is cut and no word is broken."""

    def __init__(
        self, depths: Sequence[DepthSummary], columns: Sequence[str], bar_width: int
    ) -> None:
        self.depths = list(depths)
        self.columns = list(columns)
        self.bar_width = bar_width

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Table]:
        yield self.table(options.max_width)

    def layout(self, width: int) -> tuple[list[str], int]:
        """The columns shown at ``width`` and the bar's width."""
        columns = list(self.columns)
        while True:
            rows = self._rows(columns, 1)
            natural = [
                max(len(_header(name, 1)), *(len(_plain(r[i])) for r in rows))
                for i, name in enumerate(["depth", "group", *columns])
                if name not in BARS
            ]
            fixed = sum(natural) + 2 * (len(columns) + 1)  # one space each side of a column
            bars = [c for c in columns if c in BARS]
            room = width - fixed
            bar = min(self.bar_width, room // max(len(bars), 1))
            if (bars and bar >= MIN_BAR) or (not bars and room >= 0):
                return columns, max(bar, 0)
            left = [c for c in DROP_ORDER if c in columns]
            if not left:
                return columns, MIN_BAR  # a terminal narrower than depth and group: cropped
            columns.remove(left[0])

    def table(self, width: int) -> Table:
        """The table at ``width`` columns."""
        columns, bar_width = self.layout(width)
        out = Table(box=None, pad_edge=False, header_style="bold")
        out.add_column("depth", justify="right", no_wrap=True)
        out.add_column("group", style="cyan", no_wrap=True)
        words = {"share", "trained share"} | (
            {"norms"} if any(d.norm_modes for d in self.depths) else set()
        )
        for name in columns:
            out.add_column(
                _header(name, bar_width),
                justify="left" if name in words else "right",
                no_wrap=True,
            )
        for row in self._rows(columns, bar_width):
            out.add_row(*row)
        return out

    def _rows(self, columns: Sequence[str], bar_width: int) -> list[list[str | Text]]:
        whole = sum(d.numel for d in self.depths)
        total = DepthSummary(
            depth=-1,
            group="total",
            tensors=sum(d.tensors for d in self.depths),
            numel=whole,
            trainable_numel=sum(d.trainable_numel for d in self.depths),
            norms=0,
            trainable_tensors=sum(d.trainable_tensors for d in self.depths),
            added_numel=sum(d.added_numel for d in self.depths),
        )
        rows: list[list[str | Text]] = []
        for d in self.depths:
            cells = _depth_cells(d, whole, bar_width)
            rows.append([str(d.depth), Text(printable(d.group)), *(cells[n] for n in columns)])
        cells = {
            **_depth_cells(total, whole, bar_width),
            "%": "100%" if whole else "-",
            "trained": Text(percent(total.trainable_numel, whole), style="bold"),
            "norms": "",
            "lr scale": "",
            "share": "",
        }
        rows.append(["", Text("total", style="bold"), *(cells[n] for n in columns)])
        return rows


def _header(name: str, bar_width: int) -> str:
    """A column's header; the trained-share bar's says what its two marks mean when it fits."""
    if name != "trained share":
        return name
    legend = f"{TRAINED} trained {FROZEN} frozen"
    return legend if bar_width >= len(legend) else "share"


def _plain(cell: str | Text) -> str:
    return cell.plain if isinstance(cell, Text) else cell


def _depth_cells(d: DepthSummary, whole: int, bar_width: int) -> dict[str, str | Text]:
    """Every cell :func:`depth_table` can show for depth ``d`` of a model of ``whole``
    parameters."""
    if d.trainable_numel == d.numel and d.numel:
        trainable = "all"
    elif d.trainable_numel == 0:
        trainable = "none"
    else:
        trainable = human_count(d.trainable_numel)
    if d.trainable_tensors == d.tensors:
        trained = Text("all", style="green")
    elif d.trainable_tensors == 0:
        trained = Text("frozen", style="dim")
    else:
        trained = Text(percent(d.trainable_numel, d.numel))
    return {
        "tensors": str(d.tensors),
        "params": human_count(d.numel),
        "added": human_count(d.added_numel) if d.added_numel else "-",
        "%": percent(d.numel, whole),
        "trainable": trainable,
        "trained": trained,
        "norms": norm_modes_text(d.norm_modes) or (str(d.norms) if d.norms else ""),
        "lr scale": _scale(d.lr_scales),
        "share": Text(bar(d.numel / whole if whole else 0.0, bar_width), style="green"),
        "trained share": share_bar(d.trainable_numel, d.numel, bar_width),
    }


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


def norm_modes_text(counts: Mapping[str, int]) -> str:
    """``train x10, frozen x10``: norm layers by mode, in :class:`~zoo.NormMode` order."""
    return ", ".join(f"{m.value} x{counts[m.value]}" for m in NormMode if counts.get(m.value))


def _scale(scales: tuple[float, float] | None) -> str:
    if scales is None:
        return "-"
    lo, hi = scales
    return f"{lo:.3g}" if lo == hi else f"{lo:.3g}-{hi:.3g}"


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
