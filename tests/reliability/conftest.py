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
    """A short lock timeout: a lock left held by a killed process would fail fast, not hang."""
    monkeypatch.setenv("ZOO_LOCK_TIMEOUT", "10")
    return 10.0
