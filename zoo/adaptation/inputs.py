"""The data of an adaptation run: image sources or loaders, scanned, split and batched.

:func:`prepare_data` turns ``train``/``val`` (image folders, manifests, Hugging Face datasets
— :mod:`zoo.adaptation.sources` — or data loaders) into an :class:`AdaptData`; the loader
builders make the batches for the training loop, sharded over the ranks when the run is
distributed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from zoo.adaptation.cache import INFERENCE_BATCH
from zoo.adaptation.data import (
    ImageDataset,
    ImageFolder,
    LoaderSpec,
    SeededSampler,
    Seen,
    build_transform,
    class_counts_of,
    dataset_targets,
    make_loader,
    median_side,
    split_folder,
)
from zoo.adaptation.distributed import ShardSampler
from zoo.adaptation.sources import dataset_splits, is_dataset, is_source, kind_of, read_source
from zoo.adaptation.speed import loader_workers, pin_memory
from zoo.errors import DataError

if TYPE_CHECKING:
    from zoo.adaptation.config import Augment
    from zoo.adaptation.distributed import DistContext
    from zoo.core.specs import InputConfig


@dataclass
class AdaptData:
    classes: list[str]
    train: Any  # ImageFolder (of any source) or DataLoader
    val: Any
    skipped: list[dict[str, str]]
    samples_per_class: int | None

    @property
    def from_folders(self) -> bool:
        """Whether the images were read by zoo (a folder, a manifest, a dataset: an
        :class:`~zoo.adaptation.data.ImageFolder`), not given as a loader."""
        return isinstance(self.train, ImageFolder)

    def images(self, split: str) -> int:
        """How many images ``split`` (``"train"`` or ``"val"``) holds: a folder's, or its
        loader's dataset's (0: none, or a dataset that does not tell)."""
        found = getattr(self, split)
        try:
            return len(getattr(found, "dataset", found)) if found is not None else 0
        except TypeError:
            return 0


#: The hint to pass ``--image-size`` appears when the images' median side is under this share
#: of the backbone's input side.
SMALL_IMAGE_SHARE = 0.5


def image_size_hint(data: AdaptData, input_config: InputConfig, given: bool) -> str | None:
    """When the training images are much smaller than the input they are resized to (their
    median side under :data:`SMALL_IMAGE_SHARE` of it) and no image size was given: the
    ``--image-size`` to pass and roughly what it saves (an estimate: the compute of a
    convolutional network grows with the pixels). None otherwise, and for data loaders."""
    if given or not data.from_folders:
        return None
    side = median_side(data.train)
    height, width = input_config.input_size[1:]
    if side is None or side >= SMALL_IMAGE_SHARE * min(height, width):
        return None
    suggested = max(side, 32)  # below 32 px many backbones pool their maps away
    ratio = height * width / suggested**2
    return (
        f"the training images are small (median side {side} px) and are resized up to the "
        f"backbone's {height}x{width}: --image-size {suggested} (image_size={suggested}) "
        f"would train on about {ratio:.0f}x fewer pixels per image (roughly that much less "
        "time per epoch, an estimate)"
    )


def is_loader(obj: Any) -> bool:
    return isinstance(obj, DataLoader)


def prepare_data(
    train: Any,
    val: Any,
    *,
    classes: Sequence[str] | None,
    val_split: float | None,
    seed: int,
    on_corrupt: str,
) -> AdaptData:
    """The run's data; refuses (:class:`~zoo.DataError`) anything a classifier cannot learn
    from: fewer than 2 classes, a class without training data, labels out of range, a
    validation set with other classes."""
    if is_loader(train):
        return _loader_data(train, val, classes=classes, val_split=val_split)
    if not is_source(train):
        raise DataError(
            "train must be an image folder, a CSV or JSONL manifest, a Hugging Face dataset "
            f"or a DataLoader, not {type(train).__name__}"
        )
    train, val = dataset_splits(train, val, val_split)
    seen: Seen = {}  # each file once, across both sources: none is trained and validated on
    folder = read_source(train, classes=classes, on_corrupt=on_corrupt, training=True, seen=seen)
    skipped = [s.to_dict() for s in folder.skipped]
    val_folder = None
    if val is not None:
        kind = kind_of(val)
        if val_split:
            raise DataError(f"give either a validation {kind} or val_split, not both")
        if not is_source(val):
            raise DataError(
                f"train is an image {kind_of(train)}, so val must be an image folder, a "
                f"manifest or a dataset too, not {type(val).__name__}"
            )
        if _same_source(train, val):
            shown = repr(os.fspath(val)) if not is_dataset(val) else "given"
            raise DataError(
                f"the validation {kind} {shown} is the training {kind}: a score on "
                f"the images trained on says nothing; pass another {kind}, or val_split "
                "(--val-split) to hold out part of it"
            )
        val_folder = read_source(val, classes=folder.classes, on_corrupt=on_corrupt, seen=seen)
        skipped += [s.to_dict() for s in val_folder.skipped]
    elif val_split:
        folder, val_folder = split_folder(folder, float(val_split), seed=seed)
    return AdaptData(list(folder.classes), folder, val_folder, skipped, folder.samples_per_class)


def _same_source(a: Any, b: Any) -> bool:
    if is_dataset(a) or is_dataset(b):
        return a is b
    try:
        return os.path.samefile(os.path.expanduser(a), os.path.expanduser(b))
    except OSError:  # the scan says what is wrong with it
        return False


def _loader_data(
    train: DataLoader, val: Any, *, classes: Sequence[str] | None, val_split: float | None
) -> AdaptData:
    if val is not None and not is_loader(val):
        raise DataError("train is a DataLoader, so val must be a DataLoader too")
    if val_split:
        raise DataError("val_split only works with an image folder; pass val=DataLoader")
    names = list(classes) if classes is not None else getattr(train.dataset, "classes", None)
    if not names:
        raise DataError(
            "cannot tell the class names of this DataLoader: its dataset has no .classes; "
            "pass classes=[...]"
        )
    names = [str(n) for n in names]
    _check_loader_classes("training", train.dataset, names)
    if val is not None:
        _check_loader_classes("validation", val.dataset, names)
    counts = class_counts_of(train.dataset, len(names))
    spc = round(sum(counts) / max(1, sum(1 for c in counts if c))) if counts else None
    return AdaptData(names, train, val, [], spc)


def _check_loader_classes(role: str, dataset: Any, names: list[str]) -> None:
    """Class names and labels of a loader's dataset, where it tells them (``.classes``,
    ``.targets``, a ``TensorDataset``'s second tensor)."""
    own = getattr(dataset, "classes", None)
    if role == "training" and len(names) < 2:
        raise DataError(
            f"the training data has a single class, {names[0]!r}: a classifier needs at least 2 "
            "classes (one class is always predicted, at 100 %)"
        )
    if own is not None and role == "validation" and [str(n) for n in own] != names:
        raise DataError(
            f"the validation data's classes {[str(n) for n in own]} differ from the training "
            f"classes {names}: its labels would be read as other classes"
        )
    targets = dataset_targets(dataset)
    if targets is None:
        return
    bad = sorted({t for t in targets if not 0 <= t < len(names)})
    if bad:
        raise DataError(
            f"the {role} data has label(s) {bad[:5]} outside 0..{len(names) - 1}, but "
            f"{len(names)} class names ({', '.join(names)}); fix the labels or the class names"
        )
    present = sorted(set(targets))
    if role == "training" and len(present) < 2:
        found = repr(names[present[0]]) if present else "none"
        raise DataError(
            f"the training data has samples of a single class ({found}) of {len(names)}: a "
            "classifier trained on it always predicts that class; give it samples of every class"
        )


def loaders_for_folders(
    data: AdaptData,
    config: InputConfig,
    *,
    augment: Augment | None,
    batch_size: int,
    num_workers: int | None,
    seed: int,
    ctx: DistContext,
    shuffle_train: bool,
) -> tuple[DataLoader, DataLoader | None]:
    """Train and val loaders over the folders, sharded over the ranks: ``num_workers`` worker
    processes each (None: :func:`~zoo.adaptation.speed.loader_workers` decides per split),
    started once and kept over the epochs, pinned memory on a GPU; the training split
    shuffled in ``batch_size`` batches when ``shuffle_train``, else in order in larger batches
    (evaluation and the cache's one pass use those)."""
    big_batch = max(batch_size, INFERENCE_BATCH)
    train_batch = batch_size if shuffle_train else big_batch
    images = len(data.train) // max(1, ctx.world_size)

    def spec(batch: int, images: int) -> LoaderSpec:
        workers = loader_workers(num_workers, images, batch)
        pinned = pin_memory(ctx.device)
        return LoaderSpec(batch, workers, seed, pin_memory=pinned, persistent=True)

    train_ds = ImageDataset.from_folder(
        data.train, build_transform(config, train=True, augment=augment)
    )
    sampler = None
    if ctx.enabled:
        sampler = DistributedSampler(
            train_ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle_train, seed=seed
        )
    train_loader = make_loader(
        train_ds,
        # workers started once: each augmented image is seeded (SeededSampler), so a resumed
        # run draws as the interrupted one did
        spec(train_batch, images),
        shuffle=shuffle_train,
        sampler=sampler,
    )
    val_loader = None
    if data.val is not None and len(data.val):
        val_ds = ImageDataset.from_folder(data.val, build_transform(config, train=False))
        val_sampler = ShardSampler(len(val_ds), ctx.rank, ctx.world_size) if ctx.enabled else None
        val_images = len(data.val) // max(1, ctx.world_size)
        val_loader = make_loader(
            val_ds, spec(big_batch, val_images), shuffle=False, sampler=val_sampler
        )
    return train_loader, val_loader


def distributed_loader(
    loader: DataLoader, ctx: DistContext, *, shuffle: bool, seed: int, evaluation: bool
) -> DataLoader:
    """A user's loader rebuilt with a sampler that shards its dataset over the ranks."""

    if evaluation:
        sampler: Any = ShardSampler(len(loader.dataset), ctx.rank, ctx.world_size)
    else:
        sampler = DistributedSampler(
            loader.dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle, seed=seed
        )
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size or 1,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last and not evaluation,
        persistent_workers=loader.persistent_workers,
    )


def set_epoch(loader: Any, epoch: int) -> None:
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


def reshuffled(
    loader: DataLoader, ctx: DistContext, seed: int, batch_size: int, *, persistent: bool
) -> DataLoader:
    """The training loader again, shuffled in ``batch_size`` batches and sharded over the
    ranks as it was (when the feature cache turned out unusable, and for compare's candidates
    on images). ``persistent``: its workers are started once and kept over the epochs (a
    comparison, whose candidates take turns, starts each one's again each epoch: persistent
    workers would keep a set of processes per candidate)."""
    sampler = loader.sampler
    if isinstance(sampler, SeededSampler):
        sampler = sampler.sampler
    shard = None
    if isinstance(sampler, DistributedSampler):
        shard = DistributedSampler(
            loader.dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed
        )
    spec = LoaderSpec(
        batch_size=batch_size,
        num_workers=loader.num_workers,
        seed=seed,
        pin_memory=loader.pin_memory,
        persistent=persistent,
        extra={"collate_fn": loader.collate_fn},
    )
    return make_loader(loader.dataset, spec, shuffle=True, sampler=shard)
