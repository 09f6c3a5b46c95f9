"""The freeze policy of this plugin. A policy reads a table and never touches a model."""

from __future__ import annotations

from zoo import ParamTable, PolicyArgumentError


def top_half(table: ParamTable, min_depths: int = 1) -> list[str]:
    """Train the upper half of the depths (at least ``min_depths`` of them); freeze the rest.

    Depth 0 is the stem, ``table.max_depth`` the head, so the head always trains.
    """
    if min_depths < 1:
        raise PolicyArgumentError(f"min_depths must be at least 1, got {min_depths}")
    depths = table.max_depth + 1
    first = max(depths - max(depths // 2, min_depths), 0)
    return [row.name for row in table if row.depth >= first]
