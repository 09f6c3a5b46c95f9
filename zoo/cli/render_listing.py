"""Rich renderables for ``zoo list`` and ``zoo plugins`` (pure: data in, Table out)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from rich.table import Table
from rich.text import Text

from zoo.cli.listing import BackboneEntry, PolicyEntry
from zoo.cli.output import aligned_text
from zoo.core.plugins import PluginRecord, format_origin

#: Listings longer than this are plain text (and their JSON one entry per line): rich styles
#: and measures every row, seconds for 100,000.
PLAIN_ROWS = 5_000


def _size(entry_input: dict[str, Any]) -> str:
    size = entry_input.get("input_size") or []
    return "x".join(str(v) for v in size[1:]) if len(size) == 3 else "?"


def backbones_table(entries: Sequence[BackboneEntry], *, title: str = "Backbones") -> Text | str:
    """One row per backbone: :class:`Text`, or a plain ``str`` above :data:`PLAIN_ROWS`."""
    rows = [
        (e.qualified_name, str(len(e.tags)) if e.tags else "-", _size(e.input), e.summary)
        for e in entries
    ]
    return _columns(
        ("name", "pretrained", "input", "summary"),
        rows,
        right=(1, 2),
        title=f"{title} ({len(entries)})",
        max_width=60,
    )


def pretrained_table(pairs: Sequence[tuple[BackboneEntry, str]]) -> Text | str:
    """One row per pretrained tag (plain ``str`` above :data:`PLAIN_ROWS`)."""
    rows = [
        (
            f"{entry.qualified_name}.{tag}",
            _size(entry.input),
            str(entry.input.get("interpolation", "")),
            f"{entry.input.get('crop_pct', 0):.3g}",
        )
        for entry, tag in pairs
    ]
    return _columns(
        ("name", "input", "interpolation", "crop"),
        rows,
        right=(1, 3),
        title=f"Pretrained weights ({len(pairs)})",
        max_width=80,
    )


def _columns(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    right: Sequence[int],
    title: str,
    max_width: int,
) -> Text | str:
    if len(rows) <= PLAIN_ROWS:
        return aligned_text(headers, rows, right=right, title=title, rule=True, max_width=max_width)
    return plain_columns(headers, rows, right=right, title=title, max_width=max_width)


def plain_columns(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    right: Sequence[int] = (),
    title: str = "",
    max_width: int = 60,
) -> str:
    """:func:`~zoo.cli.output.aligned_text`'s layout (title, header, rule, rows) as plain
    text, without styles: 100,000 rows in a few tenths of a second."""
    rows = [
        r
        if max(map(len, r)) <= max_width
        else [c if len(c) <= max_width else c[: max_width - 1] + "…" for c in r]
        for r in rows
    ]
    columns = list(zip(*rows, strict=True)) or [()] * len(headers)
    widths = [max([len(h), *map(len, c)]) for h, c in zip(headers, columns, strict=True)]
    line = "  ".join(f"{{:{'>' if i in right else '<'}{w}}}" for i, w in enumerate(widths)).format
    lines = [title, line(*headers).rstrip(), "  ".join("─" * w for w in widths)]
    lines += [line(*row).rstrip() for row in rows]
    return "\n".join(lines) + "\n"


def json_document(data: Mapping[str, Any]) -> str:
    """``data`` as JSON with each item of a top-level list on its own line: valid JSON that
    greps well, and written by the C encoder (``indent=`` would use the slow Python one)."""
    encode = json.JSONEncoder(default=str).encode
    members = []
    for key, value in data.items():
        if isinstance(value, list) and value:
            items = ",\n    ".join(map(encode, value))
            members.append(f"  {encode(key)}: [\n    {items}\n  ]")
        else:
            members.append(f"  {encode(key)}: {encode(value)}")
    return "{\n" + ",\n".join(members) + "\n}\n"


def _arg_text(arg: dict[str, Any]) -> str:
    text = arg["name"]
    if arg.get("type"):
        text += f": {arg['type']}"
    if not arg.get("required"):
        text += f" = {arg.get('default')!r}"
    return text


def policies_table(entries: Sequence[PolicyEntry]) -> Table:
    table = Table(title=f"Freeze policies ({len(entries)})", title_justify="left")
    table.add_column("name", style="cyan", no_wrap=True)
    table.add_column("arguments")
    table.add_column("summary", overflow="fold", max_width=70)
    for entry in entries:
        args = ", ".join(_arg_text(a) for a in entry.args) or "-"
        summary = entry.summary + (" [schedule]" if entry.schedule else "")
        table.add_row(entry.qualified_name, args, summary)
    return table


def plugins_table(records: Sequence[PluginRecord]) -> Table:
    table = Table(title=f"Plugins ({len(records)})", title_justify="left")
    table.add_column("plugin", style="cyan", no_wrap=True)
    table.add_column("version")
    table.add_column("distribution")
    table.add_column("hooks")
    table.add_column("registered")
    table.add_column("status", overflow="fold", max_width=60)
    for record in records:
        registered = []
        if record.backbones:
            registered.append(f"{record.backbones} backbones")
        if record.policies:
            registered.append(f"{record.policies} policies")
        status = (
            Text("ok", style="green") if record.ok else Text("\n".join(record.errors), style="red")
        )
        table.add_row(
            record.name,
            record.version or "-",
            "built-in" if record.builtin else (record.distribution or record.module),
            ", ".join(h.removeprefix("zoo_") for h in record.hooks) or "-",
            ", ".join(registered) or "-",
            status,
        )
    return table


def problem_lines(problems: Sequence[tuple[PluginRecord, str]]) -> list[str]:
    """One line per plugin problem: ``plugin (distribution version): error``."""
    return [f"plugin {format_origin(record)}: {error}" for record, error in problems]
