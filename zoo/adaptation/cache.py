"""The activation cache: compute the frozen part of a model once, train the rest on its output.

A plan that freezes a prefix of the model (``linear-probe``, ``train-last:n=K``,
``freeze-to:depth=D``) computes the same frozen activations every epoch when nothing random
touches the images. This module finds where the frozen prefix ends — the *boundary* — caches
the activations there once, and builds the *suffix*: a module that computes the logits from a
cached activation with the model's own (shared) parameters, so an epoch costs only the
trainable top (for a linear probe, the classifier on its cached input features). ``zoo.adapt``
(:mod:`zoo.adaptation.training`) and every candidate of ``zoo.compare``
(:mod:`zoo.adaptation.halving`) train on it.

How the boundary is found (:func:`find_boundary`, generic for any ``nn.Module``): one eval
forward pass with hooks on every module records each call's start and end order, its input
and its output (by object identity). A module ``M`` is a valid cut when

(a) it is called exactly once, with one tensor argument and no keyword arguments, and every
    trainable parameter is owned by ``M``, by a module inside ``M`` or by a module first called
    after ``M`` starts (a trainable parameter held directly by a module that encloses ``M``,
    such as a ViT's ``pos_embed`` on the model itself, rules ``M`` out);
(b) from ``M`` on, the calls not nested in an earlier one form a chain — each one's input *is*
    the previous one's output — ending at the model's output, or, for models with
    ``forward_features``/``forward_head`` (timm, whose pooling may be functional), at
    ``forward_features``' output, after which ``forward_head`` finishes;
(c) the frozen prefix is deterministic: the plain loop runs the model in training mode, so no
    dropout or drop-path with ``p > 0`` and no batch-norm using batch statistics (not pinned to
    ``frozen-stats``/``frozen``) may run before ``M`` (:func:`random_frozen_modules`), and
    ``M``'s input must be the same in training mode (for modules that branch on
    ``self.training``);
(d) numerically, the suffix applied to ``M``'s input gives the model's output (nothing after
    the head — a distillation average, a scale — is lost).

The latest valid cut wins (the most computation cached); among modules that take the same
input tensor, the outermost (``layer4`` rather than ``layer4.0`` and ``layer4.1``).

:func:`extract_boundaries` then computes the inputs of one or more cuts in a single eval,
no-grad pass over the data (cloned, so in-place operations downstream cannot change them).
Computed in chunks of the training batch size, they are bit-identical to what the plain loop
computes on its own batches (CPU convolutions may round differently for other batch sizes).
:func:`extract` drives it over the training and validation splits, reports progress, keeps
the cache within its memory budget (:func:`max_cache_bytes`) and, under ``torchrun``, makes
every rank give up when one cannot cache (:class:`CacheUnsupported` says why; the run falls
back to the plain loop).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    RandomSampler,
    Sampler,
    SequentialSampler,
    TensorDataset,
)

from zoo.errors import DataError, ZooError, short_repr
from zoo.plans.freeze import norm_mode
from zoo.plans.plan import NormMode

if TYPE_CHECKING:
    from zoo.adaptation.config import Augment
    from zoo.adaptation.distributed import DistContext
    from zoo.adaptation.history import AdaptCallback

__all__ = [
    "Boundary",
    "CacheUnsupported",
    "CachedFeatures",
    "Suffix",
    "augmentation_rule",
    "decode",
    "extract",
    "extract_boundaries",
    "find_boundary",
    "max_cache_bytes",
    "megabytes",
    "on_every_rank",
    "random_frozen_modules",
    "sampled_images",
    "stored",
]

MAX_BYTES_ENV = "ZOO_FEATURE_CACHE_MAX_BYTES"
#: images per batch when computing activations (inference only: larger batches run faster)
INFERENCE_BATCH = 128
DEFAULT_MAX_BYTES = 4 << 30
#: The suffixes ``ZOO_FEATURE_CACHE_MAX_BYTES`` accepts after its number (powers of 1024).
SIZE_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_ATOL, _RTOL = 1e-5, 1e-4


class CacheUnsupported(Exception):
    """The cache cannot stand in for the plain loop on this model; the message says why."""


def augmentation_rule(augment: Augment | None) -> str | None:
    """Why random augmentation rules the cache out (None: zoo's transform of the images is
    the same every epoch). The one rule of ``zoo.adapt`` and ``zoo.compare``: an activation
    computed once cannot stand for an image that is cropped, flipped or mixed anew each
    epoch."""
    if augment is None:
        return None
    return f"training images are augmented ({augment.describe()})"


def max_cache_bytes() -> int:
    """The largest cache zoo builds: ``ZOO_FEATURE_CACHE_MAX_BYTES``, default 4 GiB.

    The value is a whole number of bytes, optionally followed by ``K``, ``M``, ``G`` or ``T``
    (powers of 1024, either case): ``500000000``, ``512M``, ``2G``; ``0`` never caches. Anything
    else (``1e3``, ``nan``, ``-5``, ``2 GB``) raises a :class:`~zoo.ZooError` naming the
    variable, instead of silently becoming the default. Unset or empty: the default.
    """
    value = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_BYTES
    match = re.fullmatch(r"([0-9]{1,15})([KMGT]?)", value, flags=re.IGNORECASE)
    if match is None:
        raise ZooError(
            f"{MAX_BYTES_ENV}={short_repr(value)} is not a size: write a whole number of bytes, "
            "optionally followed by K, M, G or T (powers of 1024), e.g. 2G or 500M (0: never "
            f"cache); unset it for the default {DEFAULT_MAX_BYTES >> 30}G"
        )
    number, suffix = match.groups()
    return int(number) * SIZE_SUFFIXES[suffix.upper()]


def megabytes(nbytes: int) -> str:
    return f"{nbytes / 1e6:,.0f} MB" if nbytes >= 1e6 else f"{nbytes / 1e6:.2f} MB"


@dataclass
class CachedFeatures:
    """What enters the trained part for each image (or the decoded images themselves), with
    the labels, on one device."""

    features: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def nbytes(self) -> int:
        return self.features.element_size() * self.features.nelement()

    def loader(self, batch_size: int, *, seed: int | None = None) -> DataLoader:
        """Mini-batches of ``(features, labels)``, indexing whole batches at once: in order
        without ``seed``; shuffled with it, drawn exactly as zoo's plain loop over the images
        draws them (:func:`~zoo.adaptation.data.make_loader`: a ``RandomSampler`` with a
        generator seeded ``seed``, the loader's own generator another one)."""
        dataset = TensorDataset(self.features, self.labels)
        order: Sampler[int] = SequentialSampler(dataset)
        if seed is not None:
            generator = torch.Generator()
            generator.manual_seed(seed)
            order = RandomSampler(dataset, generator=generator)
        sampler = BatchSampler(order, batch_size, drop_last=False)
        workers_seed = torch.Generator()  # drawn each epoch, as the plain loop's own is
        workers_seed.manual_seed(0 if seed is None else seed)
        return DataLoader(
            dataset, batch_size=None, sampler=sampler, generator=workers_seed, collate_fn=_identity
        )


def _identity(batch: Any) -> Any:
    return batch


def random_frozen_modules(model: nn.Module, top: Sequence[str]) -> list[str]:
    """Modules outside ``top`` (the module paths that run on the cached activation) whose
    output differs between training and eval mode, as ``"<path> (<why>)"``: dropout with
    ``p > 0``, drop-path / drop-block with a drop probability above 0, batch-norm layers that
    the plan leaves in ``train`` mode (they normalize with batch statistics and update their
    running ones)."""
    found = []
    for path, module in model.named_modules():
        if any(_inside(path, c) for c in top):
            continue
        label = path or "<model>"
        name = type(module).__name__
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            found.append(f"{label} ({name} p={module.p})")
        elif ("DropPath" in name or "DropBlock" in name) and _drop_prob(module) > 0:
            found.append(f"{label} ({name} {_drop_prob(module)})")
        elif (
            isinstance(module, nn.modules.batchnorm._NormBase)
            and (isinstance(module, nn.modules.batchnorm._BatchNorm) or module.track_running_stats)
            and norm_mode(module) is NormMode.TRAIN
        ):
            found.append(f"{label} ({name} in train mode: batch statistics)")
    return found


def _drop_prob(module: nn.Module) -> float:
    for attr in ("drop_prob", "p", "drop_rate"):
        value = getattr(module, attr, None)
        if isinstance(value, (int, float)):
            return float(value)
    return 1.0  # unknown: assume it drops


@dataclass(frozen=True)
class Boundary:
    """Where a prefix-frozen model is cut.

    ``path`` is the module whose input is cached; ``chain`` the module paths that run, in
    order, on the cached activation (the first is ``path``); ``uses_forward_head``: the chain
    ends at ``forward_features``' output and ``model.forward_head`` computes the logits.
    ``head_modules`` are the modules ``forward_head`` calls (registered on the suffix so that
    DDP sees their parameters).
    """

    path: str
    chain: tuple[str, ...]
    uses_forward_head: bool
    head_modules: tuple[str, ...] = field(default=())

    def suffix(self, model: nn.Module) -> Suffix:
        """An ``nn.Module`` computing the logits from the cached activation with ``model``'s
        own parameters (shared, not copied); DDP can wrap it."""
        return Suffix(model, self)


class Suffix(nn.Module):
    """The trainable top of a model: the boundary's chain of modules (and ``forward_head``).

    ``train(mode)`` also sets the model's own ``training`` flag, which ``forward_head`` may
    read (timm's head dropout), without touching the frozen prefix's modules.
    """

    def __init__(self, model: nn.Module, boundary: Boundary) -> None:
        super().__init__()
        self.chain = nn.ModuleList([model.get_submodule(p) for p in boundary.chain])
        self.head = nn.ModuleList([model.get_submodule(p) for p in boundary.head_modules])
        self.uses_forward_head = boundary.uses_forward_head
        # not registered: the prefix's parameters are not the suffix's
        object.__setattr__(self, "_model", model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.chain:
            x = module(x)
        if self.uses_forward_head:
            x = self._model.forward_head(x)  # type: ignore[operator]
        return x

    def train(self, mode: bool = True) -> Suffix:
        super().train(mode)
        self._model.training = mode
        return self


# ---------------------------------------------------------------- recording one forward pass


@dataclass
class _Call:
    path: str
    start: int
    end: int = -1
    arg: Any = None  # the single tensor argument, or None
    bad_args: bool = False
    output: Any = None


class _Recorder:
    """Hooks on every module (and on ``forward_features``) recording one forward pass."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.clock = 0
        self.calls: list[_Call] = []
        self.open: dict[int, list[_Call]] = {}
        self.features_end: int | None = None
        self.features_output: Any = None
        self._handles: list[Any] = []
        for path, module in model.named_modules():
            self._handles.append(
                module.register_forward_pre_hook(self._pre(path), with_kwargs=True)
            )
            self._handles.append(module.register_forward_hook(self._post(path)))
        self._patched = False
        self._shadowed: Any = None
        features = getattr(model, "forward_features", None)
        if callable(features) and callable(getattr(model, "forward_head", None)):

            def recorded(*args: Any, **kwargs: Any) -> Any:
                out = features(*args, **kwargs)
                self.clock += 1
                self.features_end = self.clock
                self.features_output = out
                return out

            self._shadowed = model.__dict__.get("forward_features")
            model.__dict__["forward_features"] = recorded
            self._patched = True

    def _pre(self, path: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            self.clock += 1
            single = not kwargs and len(args) == 1 and isinstance(args[0], torch.Tensor)
            call = _Call(path, self.clock, arg=args[0] if single else None, bad_args=not single)
            self.calls.append(call)
            self.open.setdefault(id(module), []).append(call)

        return hook

    def _post(self, path: str) -> Callable[..., None]:
        def hook(module: nn.Module, _args: Any, output: Any) -> None:
            self.clock += 1
            stack = self.open.get(id(module))
            if stack:
                call = stack.pop()
                call.end = self.clock
                call.output = output

        return hook

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        if self._patched:
            if self._shadowed is None:
                del self.model.__dict__["forward_features"]
            else:
                self.model.__dict__["forward_features"] = self._shadowed


def _owner(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def _inside(path: str, outer: str) -> bool:
    return outer == "" or path == outer or path.startswith(outer + ".")


class _Modes:
    """Every module's ``training`` flag, restored on exit."""

    def __init__(self, model: nn.Module) -> None:
        self.flags = {m: m.training for m in model.modules()}

    def __enter__(self) -> _Modes:
        return self

    def __exit__(self, *_exc: Any) -> None:
        for module, flag in self.flags.items():
            module.training = flag


def find_boundary(model: nn.Module, images: torch.Tensor) -> Boundary:
    """The latest valid cut of ``model`` (its plan applied), checked on one batch of
    ``images`` on the model's device; :class:`CacheUnsupported` says why there is none."""
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise CacheUnsupported("nothing trains")
    recorder = _Recorder(model)
    try:
        with _Modes(model), torch.no_grad():
            model.eval()
            output = model(images)
    finally:
        recorder.close()
    if not isinstance(output, torch.Tensor):
        raise CacheUnsupported("the model does not return a tensor of logits")
    calls = [c for c in recorder.calls if c.path != ""]
    counts: dict[str, int] = {}
    first_start: dict[str, int] = {}
    for call in calls:
        counts[call.path] = counts.get(call.path, 0) + 1
        first_start.setdefault(call.path, call.start)
    on_model = [n for n in trainable if "." not in n]
    if on_model:
        raise CacheUnsupported(
            f"the model itself holds trainable parameters ({on_model[0]!r}), used around every "
            "sub-module, so no frozen prefix can be cut off"
        )
    # in the order they first run, so that a message names the earliest
    owners = sorted({_owner(n) for n in trainable}, key=lambda o: first_start.get(o, 0))
    model_input = next((c.arg for c in recorder.calls if c.path == ""), images)
    reasons: list[str] = []  # candidates before everything that trains, latest first
    before: list[str] = []  # candidates with something trainable before them
    candidates = sorted(
        (c for c in calls if counts[c.path] == 1 and not c.bad_args and c.end > 0),
        key=lambda c: c.start,
        reverse=True,
    )
    valid: list[Boundary] = []
    for call in candidates:
        if call.arg is model_input:
            before.append(f"{call.path!r}: nothing frozen runs before it")
            continue
        why, boundary = _check_cut(model, call, calls, counts, owners, recorder, output)
        if boundary is None:
            (before if why.startswith("trainable") else reasons).append(f"{call.path!r}: {why}")
            continue
        valid.append(boundary)
        break
    if not valid:
        if reasons:
            why = f"latest candidate {reasons[0]}"
        else:
            trained = [b for b in before if "nothing frozen" not in b]
            why = trained[-1] if trained else "no sub-module is called once with one tensor"
        raise CacheUnsupported(
            f"no sub-module of the model separates a frozen prefix from what trains ({why})"
        )
    best = _outermost(model, valid[0], calls, counts, owners, recorder, output)
    _check_deterministic(model, best)
    _check_numerically(model, best, images)
    return best


def _check_cut(
    model: nn.Module,
    cut: _Call,
    calls: list[_Call],
    counts: dict[str, int],
    owners: Sequence[str],
    recorder: _Recorder,
    output: torch.Tensor,
) -> tuple[str, Boundary | None]:
    """(why not, None) or ("", the boundary at ``cut``) — rules (a) and (b)."""
    for owner in owners:
        if _inside(owner, cut.path) and owner != "":
            continue
        if owner == "" or _inside(cut.path, owner):
            return f"trainable parameters of {owner or 'the model'!r} sit around it", None
        starts = [c.start for c in calls if c.path == owner]
        if not starts or min(starts) < cut.start:
            return f"trainable module {owner!r} runs before it", None
    end = recorder.features_end
    stop = end if end is not None and end > cut.start else None
    chain: list[_Call] = []
    head: list[_Call] = []
    last_end = 0
    for call in calls:
        if call.start < cut.start or call.start < last_end:
            continue
        if stop is not None and call.start > stop:
            head.append(call)
        else:
            chain.append(call)
        last_end = call.end
    previous: Any = cut.arg
    for call in chain:
        if call.bad_args or counts[call.path] != 1:
            return f"{call.path!r} after it is not a one-tensor module call", None
        if call.arg is not previous:
            return f"the input of {call.path!r} is not the output of the module before it", None
        previous = call.output
    if stop is not None:
        if previous is not recorder.features_output:
            return "the modules after it do not end at forward_features' output", None
        heads = tuple(c.path for c in head)
        return "", Boundary(cut.path, tuple(c.path for c in chain), True, heads)
    if previous is not output:
        return "something runs after its last module (its output is not the model's output)", None
    return "", Boundary(cut.path, tuple(c.path for c in chain), False)


def _outermost(
    model: nn.Module,
    boundary: Boundary,
    calls: list[_Call],
    counts: dict[str, int],
    owners: Sequence[str],
    recorder: _Recorder,
    output: torch.Tensor,
) -> Boundary:
    """The outermost valid cut that takes the same input tensor as ``boundary``."""
    by_path = {c.path: c for c in calls if counts[c.path] == 1}
    arg = by_path[boundary.path].arg
    best = boundary
    path = boundary.path
    while "." in path:
        path = path.rsplit(".", 1)[0]
        call = by_path.get(path)
        if call is None or call.bad_args or call.arg is not arg:
            break
        _why, found = _check_cut(model, call, calls, counts, owners, recorder, output)
        if found is not None:
            best = found
    return best


def _check_deterministic(model: nn.Module, boundary: Boundary) -> None:
    random = random_frozen_modules(model, [*boundary.chain, *boundary.head_modules])
    if random:
        more = f" (+{len(random) - 1} more)" if len(random) > 1 else ""
        raise CacheUnsupported(
            f"the frozen part is not deterministic in training mode: {random[0]}{more}"
        )


class _InputCapture:
    """A pre-hook keeping a clone of each call's single tensor input."""

    def __init__(self, module: nn.Module) -> None:
        self.inputs: list[torch.Tensor] = []
        self._handle = module.register_forward_pre_hook(self._pre)

    def _pre(self, _module: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], torch.Tensor):
            self.inputs.append(args[0].detach().clone())

    def close(self) -> None:
        self._handle.remove()


def _check_numerically(model: nn.Module, boundary: Boundary, images: torch.Tensor) -> None:
    """Rules (c) and (d) on one batch: the cut's input is the same in training mode as in eval
    mode (the plain loop runs the model in training mode, pinned norms staying in eval), and
    the suffix on it gives the model's output. Random state forked, buffers restored."""
    module = model.get_submodule(boundary.path)
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    capture = _InputCapture(module)
    devices = [images.device] if images.device.type == "cuda" else []
    try:
        with _Modes(model), torch.random.fork_rng(devices=devices), torch.no_grad():
            model.eval()
            expected = model(images)
            if len(capture.inputs) != 1:
                raise CacheUnsupported(f"{boundary.path!r} does not run once per forward pass")
            cached = capture.inputs.pop()
            got = boundary.suffix(model).eval()(cached)  # before training mode moves statistics
            capture.inputs.clear()
            model.train()
            model(images)
            capture.close()
            again = capture.inputs[0] if capture.inputs else cached
            if again.shape != cached.shape or not torch.allclose(
                again, cached, atol=_ATOL, rtol=_RTOL
            ):
                raise CacheUnsupported(
                    f"the input of {boundary.path!r} differs in training mode (the frozen part "
                    "branches on self.training: dropout, drop-path or batch statistics), so "
                    "cached activations are not what the plain loop would train on"
                )
    finally:
        capture.close()
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
    if (
        not isinstance(got, torch.Tensor)
        or got.shape != expected.shape
        or not torch.allclose(got, expected, atol=_ATOL, rtol=_RTOL)
    ):
        raise CacheUnsupported(
            f"the modules from {boundary.path!r} on do not reproduce the model's output "
            "(the model computes something between them)"
        )


# ---------------------------------------------------------------- extraction


def _pairs(batches: Iterable[Any], sizes: list[int]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for batch in batches:
        if not (isinstance(batch, (list, tuple)) and len(batch) >= 2):
            raise CacheUnsupported("the data loader does not yield (images, labels) batches")
        sizes.append(int(batch[0].shape[0]))
        yield batch[0], batch[1]


def _rechunk(
    pairs: Iterator[tuple[torch.Tensor, torch.Tensor]], size: int | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """``(images, labels, loader batches consumed so far)`` in chunks of exactly ``size``
    images (the last may be smaller); as the loader yields them when ``size`` is None."""
    consumed = 0
    if size is None:
        for images, labels in pairs:
            consumed += 1
            yield images, labels, consumed
        return
    images_buf: list[torch.Tensor] = []
    labels_buf: list[torch.Tensor] = []
    held = 0
    for images, labels in pairs:
        consumed += 1
        images_buf.append(images)
        labels_buf.append(labels)
        held += images.shape[0]
        while held >= size:
            all_images, all_labels = torch.cat(images_buf), torch.cat(labels_buf)
            yield all_images[:size], all_labels[:size], consumed
            images_buf, labels_buf = [all_images[size:]], [all_labels[size:]]
            held -= size
    if held:
        yield torch.cat(images_buf), torch.cat(labels_buf), consumed


def extraction_chunk(batch_size: int | None) -> int | None:
    """How many training images one extraction pass runs at once: the largest multiple of the
    training batch size up to :data:`INFERENCE_BATCH` (whole training batches, so every image
    sees the prefix as in the plain loop; on CPU a batch of 128 runs about 1.6x faster than
    four of 32, and the tests check the activations stay bit-identical)."""
    if batch_size is None:
        return None
    return batch_size * max(1, INFERENCE_BATCH // batch_size)


def extract_boundaries(
    model: nn.Module,
    paths: Sequence[str],
    batches: Iterable[Any],
    *,
    device: torch.device,
    total: int | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    max_bytes: int | None = None,
    batch_size: int | None = None,
    total_images: int | None = None,
    precision: torch.dtype | None = None,
) -> dict[str, CachedFeatures]:
    """One eval-mode, no-grad pass over ``batches`` keeping (cloned) the input of every module
    in ``paths``; each path's :class:`CachedFeatures` share the labels tensor.

    ``batch_size`` runs the model on chunks of exactly that many images (the training batch
    size: CPU kernels may round differently for other batch sizes, and the cache must equal
    what the plain loop computes). ``total`` is the number of loader batches (for
    ``progress``); ``total_images`` (or ``total`` times the first batch's size) sizes the cache on
    the first chunk: over ``max_bytes`` (default :func:`max_cache_bytes`) raises
    :class:`CacheUnsupported` before anything else is computed. ``precision``: the training
    precision (autocast's dtype; None: fp32), which the activations are kept in when that
    halves their size (:func:`stored`).
    """
    if not paths:
        raise ValueError("extract_boundaries needs at least one module path")
    limit = max_cache_bytes() if max_bytes is None else max_bytes
    captures = {path: _InputCapture(model.get_submodule(path)) for path in dict.fromkeys(paths)}
    kept: dict[str, list[torch.Tensor]] = {path: [] for path in captures}
    stores: dict[str, torch.Tensor] = {}  # preallocated when the number of images is known
    filled = 0
    labels: list[torch.Tensor] = []
    sizes: list[int] = []  # images per loader batch (the first), for the estimate
    try:
        with _Modes(model), torch.no_grad():
            model.eval()
            reported = 0
            chunks = _rechunk(_pairs(batches, sizes), batch_size)
            for i, (images, targets, consumed) in enumerate(chunks):
                model(images.to(device, non_blocking=True))
                for path, capture in captures.items():
                    if len(capture.inputs) != 1:
                        raise CacheUnsupported(
                            f"{path!r} runs {len(capture.inputs)} times per forward pass"
                        )
                    kept[path].append(stored(capture.inputs.pop(), precision))
                labels.append(targets.to(device))
                if i == 0:
                    images_total = total_images
                    if images_total is None and total is not None and sizes:
                        images_total = total * sizes[0]
                    _check_budget(kept, images_total, limit)
                    if total_images is not None:
                        stores = {
                            path: parts[0].new_empty((total_images, *parts[0].shape[1:]))
                            for path, parts in kept.items()
                        }
                n = int(targets.shape[0])
                if stores and filled + n <= total_images:  # type: ignore[operator]
                    for path, parts in kept.items():
                        stores[path][filled : filled + n] = parts.pop()
                filled += n
                if progress is not None and consumed != reported:
                    reported = consumed
                    progress(consumed, total)
    finally:
        for capture in captures.values():
            capture.close()
    if not labels:
        raise CacheUnsupported("the data loader yielded no batches")
    all_labels = torch.cat(labels).long()
    result = {}
    if stores and filled == total_images:
        result = {path: CachedFeatures(store, all_labels) for path, store in stores.items()}
    else:  # the loader yielded another number of images than it said: concatenate
        for path, parts in kept.items():
            if stores:
                raise CacheUnsupported(
                    f"the data loader yielded {filled} images, not the {total_images} it has"
                )
            result[path] = CachedFeatures(torch.cat(parts), all_labels)
    size = sum(c.nbytes for c in result.values())
    if size > limit:
        raise CacheUnsupported(
            f"the cached activations take {megabytes(size)}, more than the budget of "
            f"{megabytes(limit)} ({MAX_BYTES_ENV})"
        )
    return result


def stored(activation: torch.Tensor, precision: torch.dtype | None) -> torch.Tensor:
    """An activation as the cache keeps it: in the training ``precision`` (bf16, fp16) when
    that halves its size, else as computed."""
    halves = precision is not None and 2 * precision.itemsize == activation.element_size()
    return activation.to(precision) if halves and activation.is_floating_point() else activation


def _check_budget(kept: dict[str, list[torch.Tensor]], images: int | None, limit: int) -> None:
    """Estimated from the first chunk, before the rest is computed."""
    per_image = sum(parts[0][:1].nelement() * parts[0].element_size() for parts in kept.values())
    estimate = per_image * (images or 0)
    if estimate > limit:
        raise CacheUnsupported(
            f"the cached activations would take about {megabytes(estimate)} "
            f"({megabytes(per_image * 1000)} per 1000 images), more than the budget of "
            f"{megabytes(limit)} ({MAX_BYTES_ENV})"
        )


# ---------------------------------------------------------------- the driver: splits and ranks

T = TypeVar("T")


def on_every_rank(ctx: DistContext, work: Callable[[], T]) -> T:
    """``work()``, agreed by every rank: when it raises :class:`CacheUnsupported` on any rank,
    it raises on every rank (with this rank's reason, or that another rank had one), so that
    all fall back to the plain loop together."""
    failure = None
    result = None
    try:
        result = work()
    except CacheUnsupported as exc:
        failure = str(exc)
    if ctx.any(failure is not None):
        raise CacheUnsupported(failure or "another rank could not use the cache")
    return result  # type: ignore[return-value]


def sampled_images(loader: DataLoader) -> int | None:
    """How many images ``loader`` yields on this rank, when it tells."""
    try:
        return len(loader.sampler) if loader.batch_sampler is not None else len(loader.dataset)
    except TypeError:
        return None


def extract(
    model: nn.Module,
    paths: Sequence[str],
    splits: Sequence[tuple[str, DataLoader]],
    *,
    ctx: DistContext,
    callback: AdaptCallback,
    max_bytes: int | None = None,
    batch_size: int | None = None,
    train_batches: Iterable[Any] | None = None,
    precision: torch.dtype | None = None,
) -> dict[str, list[CachedFeatures]]:
    """The input of every module in ``paths`` for each ``(name, loader)`` split, in one pass
    over each (:func:`extract_boundaries`): ``{path: [one per split]}``, within ``max_bytes``
    (default :func:`max_cache_bytes`) for all of them together.

    The ``"train"`` split is computed in chunks of whole training batches (``batch_size``,
    :func:`extraction_chunk`: what the plain loop computes) and read from ``train_batches``
    when the caller drew from its loader already. ``callback`` hears each split start and each
    batch; a failure on any rank raises :class:`CacheUnsupported` on every rank
    (:func:`on_every_rank`). Run it under
    the training's autocast; ``precision`` is its dtype (:func:`stored`).
    """
    budget = max_cache_bytes() if max_bytes is None else max_bytes
    result: dict[str, list[CachedFeatures]] = {path: [] for path in paths}
    for name, loader in splits:
        total = len(loader)
        callback.on_features_start(name, total)
        one_pass = functools.partial(
            extract_boundaries,
            model,
            paths,
            train_batches if name == "train" and train_batches is not None else loader,
            device=ctx.device,
            total=total,
            progress=functools.partial(_progress, ctx, callback, name),
            max_bytes=max(0, budget),
            batch_size=extraction_chunk(batch_size) if name == "train" else None,
            total_images=sampled_images(loader),
            precision=precision,
        )
        out = on_every_rank(ctx, one_pass)
        for path in paths:
            result[path].append(out[path])
            budget -= out[path].nbytes
    return result


def _progress(
    ctx: DistContext, callback: AdaptCallback, split: str, done: int, total: int | None
) -> None:
    """One batch of ``split`` extracted: a failed peer stops this rank; the callback hears it."""
    ctx.check_peers()
    callback.on_features_batch(split, done, total or 0)


def decode(loader: DataLoader, device: torch.device, limit: int) -> CachedFeatures | None:
    """Every batch of ``loader`` kept as tensors on ``device`` (the decoded images, cached
    like activations); None past ``limit`` bytes."""
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
