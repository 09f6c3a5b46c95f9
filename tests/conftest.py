"""Shared fixtures: every test runs offline, with its own ZOO_HOME and catalog cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")

# No property test depends on the machine's speed: no per-example deadline, no "too slow"
# health check (a loaded machine would fail them), derandomized so a run is repeatable.
settings.register_profile(
    "zoo",
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("zoo")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread: on a small, shared machine more threads only contend."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _isolated_zoo(tmp_path_factory, monkeypatch):
    """A private store and cache directory per test; the process catalog is left as is."""
    home = tmp_path_factory.mktemp("zoo_home")
    monkeypatch.setenv("ZOO_HOME", str(home))
    monkeypatch.setenv("ZOO_CACHE_DIR", str(home / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield home


@pytest.fixture(scope="session")
def colours(tmp_path_factory) -> Path:
    """Image folders whose classes (red, green, blue) differ by colour, learnable in a few
    steps, made once for the whole session: ``train`` 24 images of 32 px (8 per class: 3
    optimizer steps at batch 8), ``val`` 9 (3 per class, other images) and ``two`` 8 images of
    2 classes (4 red, 4 green). Shared, so read-only: a test that changes images makes its own
    folder (``test_data.make_color_folder``)."""
    from test_data import make_color_folder

    root = tmp_path_factory.mktemp("colours")
    make_color_folder(root / "train", per_class=8, seed=0)
    make_color_folder(root / "val", per_class=3, seed=1)
    make_color_folder(root / "two", per_class=4, seed=2, classes=("red", "green"))
    return root


@pytest.fixture
def network_calls(monkeypatch):
    """Every attempt to resolve a host name or open a connection, recorded and refused (as a
    machine without network would): an offline failure that never tries the network fails
    fast on any machine, which is what a test can assert without a clock."""
    import socket

    calls: list[str] = []

    def refused(name):
        def call(*args, **kwargs):
            calls.append(f"{name}{args[:2]!r}")
            raise OSError(f"{name}: the network is refused in this test")

        return call

    monkeypatch.setattr(socket, "getaddrinfo", refused("getaddrinfo"))
    monkeypatch.setattr(socket, "create_connection", refused("create_connection"))
    monkeypatch.setattr(socket.socket, "connect", refused("connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refused("connect_ex"))
    return calls
