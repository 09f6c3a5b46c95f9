"""Parameter tables of backbone names, cached on disk for ``zoo show``.

Building a table needs torch, timm and every plugin imported (seconds) even though the build
itself, on the meta device, takes a tenth of a second. A table built from a name depends only on
the installed plugins and the build arguments, so it is cached under the listing's key (see
:mod:`zoo.cli.listing`): installing, upgrading or editing a plugin makes every cached table stale.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from zoo.tables.table import ParamTable


def table_for_name(name: str, **create_kwargs: Any) -> ParamTable:
    """``zoo.params(name, **create_kwargs)``, served from the disk cache when it can be.

    The cache is bypassed when this process already has a catalog of its own (a test, a
    notebook that installed plugins) or ``ZOO_NO_CACHE=1`` is set; build arguments that are
    not JSON values (a tensor, a class) are never cached.
    """
    from zoo.cli.listing import (
        NO_CACHE_ENV,
        cache_dir,
        catalog_matches_installed,
        find_backbone,
        write_cache_file,
    )
    from zoo.core.catalog import current_catalog
    from zoo.core.plugins import env_flag

    if not catalog_matches_installed(current_catalog()) or env_flag(NO_CACHE_ENV):
        return _params(name, **create_kwargs)
    key, entry, _tag = find_backbone(name)  # a tag names weights, not a table
    try:
        arguments = json.dumps([entry.qualified_name, create_kwargs], sort_keys=True)
    except (TypeError, ValueError):
        return _params(name, **create_kwargs)
    digest = hashlib.sha256(f"{key}\n{arguments}".encode()).hexdigest()
    prefix = f"{key[:16]}-"
    path = cache_dir() / "tables" / f"{prefix}{digest[:32]}.json"
    try:
        return ParamTable.from_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    table = _params(entry.qualified_name, **create_kwargs)
    write_cache_file(path, table.to_json(), stale=lambda p: not p.name.startswith(prefix))
    return table


def _params(name: str, **create_kwargs: Any) -> ParamTable:
    """``zoo.params(name)``, imported only on a cache miss (a cached table needs no model code)."""
    from zoo.api import params

    return params(name, **create_kwargs)
