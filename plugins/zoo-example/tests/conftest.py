"""Every test gets a private model store (fixture ``zoo_home`` from zoo's pytest plugin)."""

import pytest


@pytest.fixture(autouse=True)
def _private_store(zoo_home):
    return zoo_home
