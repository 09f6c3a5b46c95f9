"""Where the CLI writes: rich on stdout, errors and warnings on stderr, JSON when asked.

Rich is used only here and in render functions, which return renderables and are tested on a
``Console(file=StringIO())``. When stdout is not a terminal, rich writes plain text without
colour codes.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions
    from rich.text import Text

PIPE_WIDTH = 160
#: Spaces between a label and its value (:class:`Fields`).
GAP = 2


class Output:
    """The CLI's consoles. ``json_mode`` means stdout carries exactly one JSON document."""

    def __init__(self, *, json_mode: bool = False, stdout: Any = None, stderr: Any = None) -> None:
        from rich.console import Console

        self.json_mode = json_mode
        file = stdout or sys.stdout
        self.console = Console(file=file, highlight=False, soft_wrap=False, width=_pipe_width(file))
        self.err = Console(file=stderr or sys.stderr, highlight=False, soft_wrap=True)

    def print(self, *renderables: Any) -> None:
        """Print renderables; a :class:`~rich.text.Text` laid out already (``no_wrap``: a
        table) is never re-wrapped, other text wraps between words at the console's width."""
        from rich.text import Text

        soft = all(isinstance(r, Text) and r.no_wrap for r in renderables)
        self.console.print(*renderables, soft_wrap=soft)

    def json(self, data: Any) -> None:
        """Print ``data`` as indented JSON (plain, never coloured).

        Only valid JSON is ever printed: a non-finite number (which ``json.dumps`` would write
        as the invalid ``NaN``/``Infinity``) raises :class:`~zoo.ZooError` naming where it is,
        and nothing is written. Text is ASCII-escaped, so any string can be printed.
        """
        try:
            text = json.dumps(data, indent=2, default=str, allow_nan=False)
        except ValueError:
            from zoo.errors import ZooError

            raise ZooError(
                f"cannot print JSON: {_non_finite_at(data)} is not a finite number, which JSON "
                "cannot represent; run the command without --json to see it"
            ) from None
        self.console.file.write(text + "\n")
        self.console.file.flush()

    def error(self, message: str) -> None:
        self.err.print(f"[bold red]error:[/] {_escape(message)}")

    def warn(self, message: str) -> None:
        self.err.print(f"[yellow]warning:[/] {_escape(message)}")

    def info(self, message: str) -> None:
        self.err.print(_escape(message))


def _non_finite_at(data: Any) -> str:
    """Where the first non-finite float in ``data`` is, as ``$.a[0].b`` (``$``: the document)."""
    stack: list[tuple[str, Any]] = [("$", data)]
    seen: set[int] = set()
    while stack:
        where, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return f"{where} ({item})"
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, dict):
            stack.extend((f"{where}.{k}", v) for k, v in reversed(item.items()))
        elif isinstance(item, (list, tuple)):
            stack.extend((f"{where}[{i}]", v) for i, v in reversed(list(enumerate(item))))
    return "a value"


def _pipe_width(file: Any) -> int | None:
    """Width for output that is not a terminal: wide enough that tables are not folded
    (rich would assume 80 columns); ``COLUMNS`` still wins. None: let rich ask the terminal."""
    isatty = getattr(file, "isatty", None)
    if (isatty is not None and isatty()) or os.environ.get("COLUMNS"):
        return None
    return PIPE_WIDTH


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def bar(fraction: float, width: int = 20, *, on: str = "█", off: str = "░") -> str:
    """A text bar ``fraction`` full (clamped to 0..1)."""
    fraction = min(max(fraction, 0.0), 1.0)
    filled = round(fraction * width)
    return on * filled + off * (width - filled)


def percent(part: float | None, whole: float = 1.0) -> str:
    """``part`` of ``whole`` in percent with one decimal (``72.5%``), or two significant digits
    where one decimal would round a share to zero (``0.042%``); ``-`` when unknown (``None``,
    or a ``whole`` of 0)."""
    if part is None or not whole:
        return "-"
    value = 100 * part / whole
    return f"{value:.2g}%" if 0 < abs(value) < 0.05 else f"{value:.1f}%"


def printable(text: object) -> str:
    """``text`` safe to print: every character that is not printable (a control character, a
    lone surrogate from an undecodable file name, an escape sequence) is shown escaped, as in
    ``repr``, so an odd name in the store, a file or a folder can neither crash the output nor
    drive the terminal."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def human_count(n: float) -> str:
    """1234567 -> '1.23M' (parameter counts)."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def human_bytes(n: float) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def aligned_text(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    right: Collection[int] = (),
    title: str | None = None,
    rule: bool = False,
    first_style: str | None = "cyan",
    row_style: Callable[[Sequence[str]], str | None] | None = None,
    max_width: int | None = None,
) -> Text:
    """Plain aligned columns as one :class:`~rich.text.Text`, one line per row.

    A rich ``Table`` measures every cell (about a second for timm's 1,371 backbones) and squeezes
    long names at 80 columns; this renders in milliseconds and keeps every row on one line.
    Print it with ``soft_wrap=True`` (:meth:`Output.print` does). Cells longer than
    ``max_width`` are cut with an ellipsis; ``row_style(row)`` styles a whole row.
    """
    from rich.text import Text

    if max_width is not None:
        rows = [[c if len(c) <= max_width else c[: max_width - 1] + "…" for c in r] for r in rows]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ).rstrip()

    text = Text()
    if title:
        text.append(f"{title}\n", style="bold")
    text.append(line(headers) + "\n", style="bold")
    if rule:
        text.append("  ".join("─" * w for w in widths) + "\n", style="dim")
    for row in rows:
        style = row_style(row) if row_style else None
        if first_style and not style and len(row) > 1:
            first = row[0].ljust(widths[0])
            text.append(first, style=first_style)
            text.append(line(row)[len(first) :] + "\n")
        else:
            text.append(line(row) + "\n", style=style)
    text.rstrip()
    return text


def wrap_words(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` characters, broken only after a comma, a space or
    a ``/`` (a policy spec ``lora:rank=8,alpha=16`` breaks between its arguments, a sentence
    between its words, a path between its folders; never inside a word). A piece longer than
    ``width`` on its own is cut with an ellipsis rather than broken."""
    width = max(width, 1)
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for piece in re.findall(r"[^,/\s]*(?:,|/|\s+|$)", paragraph):
            if not piece:
                continue
            if line and len(line) + len(piece.rstrip()) > width:
                lines.append(line.rstrip())
                line = piece.lstrip()
            else:
                line += piece
        lines.append(line.rstrip())
    return [ln if len(ln) <= width else ln[: width - 1] + "…" for ln in lines]


class Wrapped:
    """A paragraph wrapped by :func:`wrap_words` at the width it is printed at (rich's own
    wrapping breaks a long spec mid-word); continuation lines are indented by ``indent``."""

    def __init__(self, text: str, style: str | None = None, indent: int = 2) -> None:
        self.text, self.style, self.indent = text, style, indent

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Text]:
        from rich.text import Text

        lines = wrap_words(self.text, max(options.max_width - self.indent, 12))
        lines = [lines[0], *(" " * self.indent + line for line in lines[1:])]
        yield Text("\n".join(lines), style=self.style or "", no_wrap=True, overflow="ignore")


class Fields:
    """``label  value`` lines (a key-value table such as ``zoo inspect``'s or ``zoo adapt``'s
    summary) laid out for the width they are printed at: the labels in one bold column, each
    value wrapped by :func:`wrap_words` beside it (never cut mid-word)."""

    def __init__(self, rows: Sequence[tuple[str, str]], *, title: str | None = None) -> None:
        self.rows, self.title = list(rows), title

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Text]:
        from rich.text import Text

        label_width = max((len(label) for label, _ in self.rows), default=0)
        room = max(options.max_width - label_width - GAP, 12)
        out = Text(no_wrap=True, overflow="ignore")
        if self.title:
            out.append(self.title + "\n", style="bold")
        for label, value in self.rows:
            for k, line in enumerate(wrap_words(printable(value), room)):
                out.append((label if k == 0 else "").ljust(label_width), style="bold")
                out.append(" " * GAP + line + "\n")
        out.rstrip()
        yield out
