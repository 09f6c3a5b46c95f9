"""Fixtures of the reliability suite (see ``reliability_helpers`` for the shared pieces)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from reliability_helpers import PLUGIN_NAME, TinyPlugin

from zoo.core.catalog import Catalog
from zoo.core.plugins import make_plugin_host
from zoo.testing import installed_catalog


@pytest.fixture
def tiny() -> Iterator[Catalog]:
    """A catalog holding only the ``rel`` plugin, installed process-wide for the test."""
    host = make_plugin_host(builtins=False, autoload=False, extra={PLUGIN_NAME: TinyPlugin})
    with installed_catalog(Catalog(host)) as catalog:
        yield catalog


@pytest.fixture
def lock_timeout(monkeypatch: pytest.MonkeyPatch) -> float:
    """A finite lock timeout: a lock wrongly left held would fail the test, not hang it. Far
    above the milliseconds a tiny save holds the lock, so a loaded machine never trips it."""
    monkeypatch.setenv("ZOO_LOCK_TIMEOUT", "120")
    return 120.0
