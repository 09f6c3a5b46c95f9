"""The work every candidate of :func:`zoo.compare` shares, done once.

The images are decoded and resized once, with the *un-augmented* evaluation transform of the
input config, into tensors every candidate trains on (within the memory budget of
:func:`~zoo.adaptation.feature_cache.max_cache_bytes`; beyond it they are streamed from the
folders each epoch). Every candidate whose plan freezes a prefix of the model trains on the
activations at its freeze boundary (:mod:`zoo.adaptation.boundary_cache`): all distinct
boundaries are extracted in one pass of the base model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from zoo.adaptation.boundary_cache import extract_boundaries, find_boundary
from zoo.adaptation.feature_cache import (
    INFERENCE_BATCH,
    CachedFeatures,
    CacheUnsupported,
    max_cache_bytes,
    start_extraction,
)
from zoo.adaptation.inputs import loaders_for_folders
from zoo.errors import DataError

if TYPE_CHECKING:
    from zoo.adaptation.distributed import DistContext
    from zoo.adaptation.halving import Candidate
    from zoo.adaptation.history import AdaptCallback
    from zoo.adaptation.inputs import AdaptData
    from zoo.core.specs import InputConfig


@dataclass
class SharedData:
    """The inputs every candidate shares: decoded images (or, over the memory budget, the
    eval-transform loaders to stream from), and activations at each boundary."""

    train: CachedFeatures | None
    val: CachedFeatures | None
    train_loader: Any
    val_loader: Any
    activations: dict[str, tuple[CachedFeatures, CachedFeatures]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def nbytes(self) -> int:
        total = sum(c.nbytes for c in (self.train, self.val) if c is not None)
        for pair in self.activations.values():
            total += sum(c.nbytes for c in pair)
        return total


def _decode(loader: Any, device: torch.device, limit: int) -> CachedFeatures | None:
    """Every batch of ``loader`` kept as tensors on ``device``; None past ``limit`` bytes."""
    images: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    size = 0
    total = len(loader.dataset)
    for batch in loader:
        x, y = batch[0], batch[1]
        if not images and x[:1].nelement() * x.element_size() * total > limit:
            return None
        size += x.nelement() * x.element_size()
        if size > limit:
            return None
        images.append(x.to(device))
        labels.append(torch.as_tensor(y).to(device))
    if not images:
        raise DataError("the training data yielded no batches")
    return CachedFeatures(torch.cat(images), torch.cat(labels).long())


def prepare_shared(
    data: AdaptData,
    config: InputConfig,
    *,
    ctx: DistContext,
    num_workers: int,
    seed: int,
) -> SharedData:
    """Decode train and validation images once (un-augmented), within the memory budget."""
    start = time.perf_counter()
    if data.from_folders:
        train_loader, val_loader = loaders_for_folders(
            data,
            config,
            augment=False,
            batch_size=INFERENCE_BATCH,
            num_workers=num_workers,
            seed=seed,
            ctx=ctx,
            shuffle_train=False,
        )
    else:
        train_loader, val_loader = data.train, data.val
    if val_loader is None:
        raise DataError("compare needs validation images: pass val (--val) or val_split")
    limit = max_cache_bytes()
    train = _decode(train_loader, ctx.device, limit)
    val = _decode(val_loader, ctx.device, limit - train.nbytes) if train is not None else None
    notes = []
    if ctx.any(train is None or val is None):
        train = val = None
        notes.append(
            f"the decoded images would exceed the cache budget ({limit:,} bytes, "
            "ZOO_FEATURE_CACHE_MAX_BYTES): streamed from the folders every epoch"
        )
    shared = SharedData(train, val, train_loader, val_loader, notes=notes)
    shared.seconds = time.perf_counter() - start
    return shared


def _sample_images(shared: SharedData, device: torch.device) -> torch.Tensor:
    if shared.train is not None:
        return shared.train.features[:8].to(device)
    batch = next(iter(shared.train_loader))
    return batch[0][:8].to(device)


def find_boundaries(
    candidates: list[Candidate], shared: SharedData, ctx: DistContext
) -> dict[int, Any]:
    """Index -> Boundary for each candidate that can train on boundary activations."""
    sample = _sample_images(shared, ctx.device)
    found: dict[int, Any] = {}
    for i, cand in enumerate(candidates):
        if cand.trainable_params == cand.total_params:
            continue  # trains everything: nothing frozen to cache
        try:
            found[i] = find_boundary(cand.model, sample)
        except CacheUnsupported as exc:
            cand.cache_note = str(exc)
    return ctx.broadcast(found)  # every rank trains the way rank 0 decided


def extract_shared_boundaries(
    model: nn.Module,
    candidates: list[Candidate],
    boundaries: dict[int, Any],
    shared: SharedData,
    *,
    ctx: DistContext,
    callback: AdaptCallback,
) -> None:
    """Every distinct boundary's activations in one pass over train and one over val."""
    paths = sorted({b.path for b in boundaries.values()})
    start = time.perf_counter()
    budget = max_cache_bytes() - shared.nbytes
    result: dict[str, list[CachedFeatures]] = {p: [] for p in paths}
    failure = None
    for split in ("train", "val"):
        cached = shared.train if split == "train" else shared.val
        loader = shared.train_loader if split == "train" else shared.val_loader
        batches = cached.batches(INFERENCE_BATCH) if cached is not None else loader
        total = cached.num_batches(INFERENCE_BATCH) if cached is not None else len(loader)
        progress = start_extraction(ctx, callback, split, total)

        out: dict[str, CachedFeatures] = {}
        try:
            out = extract_boundaries(
                model,
                paths,
                batches,
                device=ctx.device,
                total=total,
                progress=progress,
                max_bytes=max(0, budget),
            )
        except CacheUnsupported as exc:
            failure = str(exc)
        if ctx.any(failure is not None):
            failure = failure or "another rank could not cache the activations"
            break
        for path in paths:
            result[path].append(out[path])
            budget -= out[path].nbytes
    shared.seconds += time.perf_counter() - start
    if failure is not None:
        shared.notes.append(
            f"boundary cache not used, every candidate trained on images: {failure}"
        )
        return
    shared.activations = {p: (pair[0], pair[1]) for p, pair in result.items()}
    for i, boundary in boundaries.items():
        candidates[i].cut = boundary
