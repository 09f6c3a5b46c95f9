"""The one table style of the CLI's listings (``zoo list``, ``zoo plugins``, ``zoo models``).

A bold title, a bold header, a dim rule, then one aligned line per row: no boxes, two spaces
between columns, laid out for the width the table is printed at (the terminal's, ``COLUMNS``,
or 160 when piped). Key columns (names, sizes, dates) are never cut; when the table is too wide,
shrinkable columns (summaries) are cut with an ellipsis, or folded onto more lines, down to a
minimum, then the least important columns are dropped, highest ``drop`` first, and last the
shrinkable columns are cut further (a terminal narrower than the key columns crops them).

Laid out by hand rather than by a rich ``Table``, which measures every cell: a listing of
timm's 1,400 backbones renders in milliseconds, and 100,000 rows as plain text
(:meth:`Columns.plain`) in a few tenths of a second.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.text import Text

from zoo.cli.output import wrap_words

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions

GAP = 2
#: What a shrinkable column keeps when even the key columns alone do not fit.
HARD_MIN = 4


@dataclass(frozen=True)
class Col:
    """A column: ``drop`` > 0 lets it be dropped at narrow widths (the highest first);
    ``shrink`` lets it be cut to ``min_width`` (an ellipsis, or more lines with ``fold``)."""

    header: str
    right: bool = False
    style: str | None = None
    drop: int = 0
    shrink: bool = False
    fold: bool = False
    min_width: int = 12


Cell = str | Text


def _plain(cell: Cell) -> str:
    return cell.plain if isinstance(cell, Text) else cell


def _style(cell: Cell) -> Any:
    if isinstance(cell, Text):
        return cell.style or (cell.spans[0].style if cell.spans else None)
    return None


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


class Columns:
    """Rows of text cells laid out for a width; a rich renderable (laid out for the width it
    is printed at), or plain text (:meth:`plain`)."""

    def __init__(
        self,
        columns: Sequence[Col],
        rows: Sequence[Sequence[Cell]],
        *,
        title: str | None = None,
    ) -> None:
        self.columns = list(columns)
        self.rows = rows
        self.title = title

    def _natural(self) -> list[int]:
        widths = []
        for i, col in enumerate(self.columns):
            cells = [_plain(row[i]) for row in self.rows]
            n = max(map(len, cells), default=0)
            if any("\n" in c for c in cells):
                n = max(len(line) for c in cells for line in c.split("\n"))
            widths.append(max(n, len(col.header)))
        return widths

    def layout(self, width: int) -> list[tuple[int, int]]:
        """``(column index, width)`` of the columns shown at ``width``."""
        natural = self._natural()
        kept = list(range(len(self.columns)))

        def least(i: int) -> int:
            col = self.columns[i]
            return (
                min(natural[i], max(col.min_width, len(col.header))) if col.shrink else natural[i]
            )

        while True:
            smallest = sum(least(i) for i in kept) + GAP * (len(kept) - 1)
            droppable = [i for i in kept if self.columns[i].drop > 0]
            if smallest <= width or not droppable:
                break
            kept.remove(max(droppable, key=lambda i: (self.columns[i].drop, i)))
        widths = {i: natural[i] for i in kept}
        excess = sum(widths.values()) + GAP * (len(kept) - 1) - width
        for floor in (least, lambda i: min(natural[i], HARD_MIN)):  # then below the minimum
            while excess > 0:  # take from the widest shrinkable column, a little at a time
                room = [i for i in kept if self.columns[i].shrink and widths[i] > floor(i)]
                if not room:
                    break
                widest = max(room, key=lambda i: widths[i])
                others = [widths[i] for i in room if i != widest]
                step = min(excess, widths[widest] - floor(widest))
                if others:
                    step = min(step, max(widths[widest] - max(others), 1))
                widths[widest] -= step
                excess -= step
        return [(i, widths[i]) for i in kept]

    def _lines(self, width: int) -> Iterator[tuple[str, list[tuple[str, Any]]]]:
        """("head"|"rule"|"row", [(text, style)...]) per output line."""
        shown = self.layout(width)
        head = [(self.columns[i].header, w, self.columns[i].right) for i, w in shown]
        yield "head", [(_pad(h, w, r), None) for h, w, r in head]
        yield "rule", [("─" * w, None) for _, w in shown]
        for row in self.rows:
            cells = []
            for i, w in shown:
                col, cell = self.columns[i], row[i]
                text = _plain(cell)
                parts = text.split("\n") if "\n" in text else [text]
                if col.fold:  # at commas and spaces, never inside a word
                    parts = [p for part in parts for p in wrap_words(part, w)]
                cells.append(([_cut(p, w) for p in parts], w, col, _style(cell) or col.style))
            for k in range(max(len(c[0]) for c in cells)):
                yield (
                    "row",
                    [
                        (_pad(lines[k] if k < len(lines) else "", w, col.right), style)
                        for lines, w, col, style in cells
                    ],
                )

    def text(self, width: int) -> Text:
        """The table at ``width`` as styled :class:`~rich.text.Text`."""
        out = Text(no_wrap=True, overflow="ignore")
        if self.title:
            out.append("\n".join(wrap_words(self.title, width)) + "\n", style="bold")
        for kind, cells in self._lines(width):
            line_style = {"head": "bold", "rule": "dim"}.get(kind)
            last = len(cells) - 1
            for n, (cell, style) in enumerate(cells):
                if n == last:
                    cell = cell.rstrip()
                out.append(cell, style=style or line_style)
                if n != last:
                    out.append(" " * GAP)
            out.append("\n")
        out.rstrip()
        return out

    def plain(self, width: int) -> str:
        """The table at ``width`` as plain text, one line per row (and a final newline)."""
        lines = [self.title] if self.title else []
        shown = self.layout(width)
        if any(self.columns[i].fold for i, _ in shown) or any(
            isinstance(c, Text) or "\n" in c for row in self.rows for c in row
        ):
            for _, cells in self._lines(width):
                lines.append((" " * GAP).join(c for c, _ in cells).rstrip())
            return "\n".join(lines) + "\n"
        # the fast path (100,000 rows): whole columns cut, then one format per line
        cols = [
            [c if len(c) <= w else _cut(c, w) for c in (row[i] for row in self.rows)]
            for i, w in shown
        ]
        line = (
            (" " * GAP)
            .join(f"{{:{'>' if self.columns[i].right else '<'}{w}}}" for i, w in shown)
            .format
        )
        lines.append(line(*(self.columns[i].header for i, _ in shown)).rstrip())
        lines.append((" " * GAP).join("─" * w for _, w in shown))
        lines += [line(*cells).rstrip() for cells in zip(*cols, strict=True)]
        return "\n".join(lines) + "\n"

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Text]:
        yield self.text(options.max_width)


def _pad(text: str, width: int, right: bool) -> str:
    return text.rjust(width) if right else text.ljust(width)
