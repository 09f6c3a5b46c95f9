"""Renderables for ``zoo list`` and ``zoo plugins`` (pure: data in, a
:class:`~zoo.cli.columns.Columns` out, in the listings' one style)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from rich.text import Text

from zoo.cli.columns import Col, Columns
from zoo.cli.listing import BackboneEntry, PolicyEntry
from zoo.cli.output import PIPE_WIDTH, plural
from zoo.core.plugins import PluginRecord, format_origin

#: Listings longer than this are plain text (and their JSON one entry per line): rich styles
#: and measures every row, seconds for 100,000.
PLAIN_ROWS = 5_000


def _size(entry_input: dict[str, Any]) -> str:
    size = entry_input.get("input_size") or []
    return "x".join(str(v) for v in size[1:]) if len(size) == 3 else "?"


def backbones_table(
    entries: Sequence[BackboneEntry], *, title: str = "Backbones", width: int | None = None
) -> Columns | str:
    """One row per backbone in the listings' style (:mod:`zoo.cli.columns`); plain text laid
    out for ``width`` (default :data:`~zoo.cli.output.PIPE_WIDTH`) above :data:`PLAIN_ROWS`.
    At narrow widths the summary is cut first, then the pretrained and input columns go."""
    rows = [
        (e.qualified_name, str(len(e.tags)) if e.tags else "-", _size(e.input), e.summary)
        for e in entries
    ]
    columns = (
        Col("name", style="cyan"),
        Col("pretrained", right=True, drop=2),
        Col("input", right=True, drop=1),
        Col("summary", shrink=True, min_width=20),
    )
    return _columns(columns, rows, title=f"{title} ({len(entries)})", width=width)


def pretrained_table(
    pairs: Sequence[tuple[BackboneEntry, str]], *, width: int | None = None
) -> Columns | str:
    """One row per pretrained tag with that tag's own input config (plain text above
    :data:`PLAIN_ROWS`); at narrow widths interpolation, then crop, are dropped."""
    rows = [
        (
            f"{entry.qualified_name}.{tag}",
            _size(config),
            str(config.get("interpolation", "")),
            f"{config.get('crop_pct', 0):.3g}",
        )
        for entry, tag in pairs
        for config in (entry.input_for(tag),)
    ]
    columns = (
        Col("name", style="cyan"),
        Col("input", right=True),
        Col("interpolation", drop=2),
        Col("crop", right=True, drop=1),
    )
    return _columns(columns, rows, title=f"Pretrained weights ({len(pairs)})", width=width)


def _columns(
    columns: Sequence[Col], rows: Sequence[Sequence[str]], *, title: str, width: int | None
) -> Columns | str:
    table = Columns(columns, rows, title=title)
    if len(rows) <= PLAIN_ROWS:
        return table
    return table.plain(width or PIPE_WIDTH)


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


def policies_table(entries: Sequence[PolicyEntry]) -> Columns:
    """One row per freeze policy; at narrow widths the arguments and summary fold."""
    rows = [
        (
            entry.qualified_name,
            ", ".join(_arg_text(a) for a in entry.args) or "-",
            entry.summary + (" [schedule]" if entry.schedule else ""),
        )
        for entry in entries
    ]
    columns = (
        Col("name", style="cyan"),
        Col("arguments", shrink=True, fold=True, min_width=16),
        Col("summary", shrink=True, fold=True, min_width=24),
    )
    return Columns(columns, rows, title=f"Freeze policies ({len(entries)})")


def plugins_table(records: Sequence[PluginRecord]) -> Columns:
    """One row per plugin; at narrow widths hooks, distribution and version are dropped
    first, and errors fold onto more lines."""
    rows = []
    for record in records:
        registered = []
        if record.backbones:
            registered.append(plural(record.backbones, "backbone"))
        if record.policies:
            registered.append(plural(record.policies, "policy", "policies"))
        status = (
            Text("ok", style="green") if record.ok else Text("\n".join(record.errors), style="red")
        )
        rows.append(
            (
                record.name,
                record.version or "-",
                "built-in" if record.builtin else (record.distribution or record.module),
                ", ".join(h.removeprefix("zoo_") for h in record.hooks) or "-",
                ", ".join(registered) or "-",
                status,
            )
        )
    columns = (
        Col("plugin", style="cyan"),
        Col("version", drop=2),
        Col("distribution", drop=3, shrink=True),
        Col("hooks", drop=4, shrink=True, fold=True, min_width=16),
        Col("registered", drop=1),
        Col("status", shrink=True, fold=True, min_width=20),
    )
    return Columns(columns, rows, title=f"Plugins ({len(records)})")


def problem_lines(problems: Sequence[tuple[PluginRecord, str]]) -> list[str]:
    """One line per plugin problem: ``plugin (distribution version): error``."""
    return [f"plugin {format_origin(record)}: {error}" for record, error in problems]
