"""Malformed files: every load path refuses each one, fast, small, and without unpickling.

The corpus (``malformed.py``) breaks every rule of the safetensors format and adds pickles and
``torch.save`` archives named ``.safetensors``; a small valid file is also cut at every byte.
Each file goes through ``zoo.load``, ``zoo.inspect`` and ``zoo.create(..., weights=path)``:
each must raise a :class:`zoo.ZooError` naming the file and the problem, without allocating more
than a few MB, without ever reaching an unpickler, and without returning a model. How long each
refusal takes is measured by ``benchmarks/malformed_corpus.py``, not asserted here.
"""

from __future__ import annotations

import math
import pickle
import resource
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import malformed
import numpy
import pytest
import torch
from reliability_helpers import BACKBONE

import zoo

MB = 2**20
MEMORY_BOUND = 50 * MB

LOADERS: dict[str, Callable[[Path], Any]] = {
    "zoo.load": lambda path: zoo.load(path),
    "zoo.inspect": lambda path: zoo.inspect(path),
    "zoo.create(weights=)": lambda path: zoo.create(BACKBONE, num_classes=2, weights=path),
}


@dataclass
class Guards:
    """What the guards saw: unpickler calls (must stay empty), the largest tensor allocated."""

    unpickle_calls: list[str]
    largest_tensor: int = 0


@pytest.fixture
def guards(monkeypatch: pytest.MonkeyPatch) -> Guards:
    """Every unpickler raises (and records the call); ``torch.empty`` records its largest size."""
    seen = Guards([])

    def refuse(name: str) -> Callable[..., Any]:
        def unpickler(*args: Any, **kwargs: Any) -> Any:
            seen.unpickle_calls.append(name)
            raise AssertionError(f"{name} was called: zoo must never unpickle")

        return unpickler

    for module, attr in [
        (torch, "load"),
        (torch.serialization, "load"),
        (pickle, "load"),
        (pickle, "loads"),
        (pickle, "Unpickler"),
        (numpy, "load"),
    ]:
        monkeypatch.setattr(module, attr, refuse(f"{module.__name__}.{attr}"))

    real_empty = torch.empty

    def empty(*size: Any, **kwargs: Any) -> torch.Tensor:
        dims = (
            size[0] if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
        )
        itemsize = torch.tensor(
            [], dtype=kwargs.get("dtype") or torch.get_default_dtype()
        ).element_size()
        seen.largest_tensor = max(seen.largest_tensor, math.prod(dims) * itemsize)
        return real_empty(*size, **kwargs)

    monkeypatch.setattr(torch, "empty", empty)
    return seen


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "UNPICKLED"


def refuse_all(path: Path, problem: tuple[str, ...], *, trace: bool = True) -> None:
    """Run every loader on ``path``; each must raise a ZooError naming the file and problem,
    its traced peak under :data:`MEMORY_BOUND` (``trace=False``: not traced, faster; the
    largest tensor allocation is still watched by the ``guards`` fixture)."""
    for name, loader in LOADERS.items():
        if trace:
            tracemalloc.start()
        try:
            result = loader(path)
        except zoo.ZooError as exc:
            message = str(exc)
        else:
            raise AssertionError(f"{name}({path.name}) returned {type(result).__name__}")
        finally:
            peak = tracemalloc.get_traced_memory()[1] if trace else 0
            if trace:
                tracemalloc.stop()
        assert str(path) in message, f"{name}: the message does not name the file: {message}"
        assert any(p in message for p in problem), (
            f"{name}({path.name}): expected one of {problem} in: {message}"
        )
        assert peak < MEMORY_BOUND, f"{name}({path.name}) traced {peak / MB:.1f} MB"


CASE_NAMES = [case.name for case in malformed.named_cases(Path("/nonexistent-marker"))]


def test_the_corpus_is_large_enough():
    assert len(CASE_NAMES) >= 40


@pytest.mark.parametrize("case_name", CASE_NAMES)
def test_malformed_file_is_refused_by_every_loader(tiny, guards, marker, tmp_path, case_name):
    (case,) = [c for c in malformed.named_cases(marker) if c.name == case_name]
    path = tmp_path / malformed.file_name(case)
    path.write_bytes(case.content)
    refuse_all(path, case.problem)
    assert guards.unpickle_calls == []
    assert not marker.exists(), "a pickle payload ran"
    assert guards.largest_tensor < MEMORY_BOUND


def test_a_file_cut_at_every_byte_is_refused(tiny, guards, tmp_path):
    valid = malformed.small_valid_file(tmp_path)
    zoo.create(BACKBONE, num_classes=2)  # warm up: the first build imports lazily
    cases = malformed.truncations(valid)
    assert len(cases) == valid.stat().st_size > 200
    for cut, case in enumerate(cases):
        path = tmp_path / "cut.safetensors"
        path.write_bytes(case.content)
        try:
            refuse_all(path, case.problem, trace=cut % 10 == 0)  # tracing is slow: a sample
        except AssertionError as exc:
            raise AssertionError(f"{case.name}: {exc}") from None
    assert guards.unpickle_calls == []
    assert guards.largest_tensor < MEMORY_BOUND


def rss() -> int:
    """Resident set size of this process, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def test_the_whole_corpus_leaves_memory_where_it_was(tiny, guards, marker, tmp_path):
    written = malformed.write_corpus(tmp_path / "corpus", marker)
    for _case, path in written[:5]:  # warm up imports and allocator pools
        for loader in LOADERS.values():
            with pytest.raises(zoo.ZooError):
                loader(path)
    before = rss()
    refused = 0
    for _case, path in written:
        for loader in LOADERS.values():
            with pytest.raises(zoo.ZooError):
                loader(path)
            refused += 1
    growth = rss() - before
    assert refused == 3 * len(written) >= 3 * 40
    assert growth < MEMORY_BOUND, f"RSS grew by {growth / MB:.1f} MB over {refused} loads"
    assert guards.unpickle_calls == [] and not marker.exists()


def test_a_plain_pickle_checkpoint_never_runs(tiny, tmp_path, marker):
    """Without any guard: a real pickle bomb renamed .safetensors does not execute."""
    path = tmp_path / "pytorch_model.safetensors"
    path.write_bytes(pickle.dumps(malformed._Payload(str(marker))))
    for loader in LOADERS.values():
        with pytest.raises(zoo.CorruptFileError, match="not a valid safetensors file"):
            loader(path)
    assert not marker.exists()
