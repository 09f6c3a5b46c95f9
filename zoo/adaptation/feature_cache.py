"""Fast linear probes: compute the frozen part of a model once, train the head on the features.

When a plan trains only the head and the training images are not randomly augmented, every
epoch would push the same images through the same frozen backbone. Instead, zoo runs the
backbone once, keeps what enters the trained part, and trains that part alone on the cached
tensors: the same computation, many times faster.

When the cache is allowed (:func:`classifier_cut`): only the classifier's parameters train
(the rows of the parameter table's ``head`` group: ``get_classifier()`` when the model has one,
else the plugin's or the generic head) — never because the trainable parameters happen to sit
in one sub-module, which a wrapper model (``self.hf = <transformers model>``) makes true of every
plan — and the frozen part is deterministic: the plain loop runs the model in training mode, so
a frozen part with active dropout or drop-path, or with batch-norm layers that use batch
statistics (not pinned to ``frozen-stats``/``frozen``) would feed the head something different
each epoch than the cached features. That is checked twice: by module type before anything
runs (:func:`random_frozen_modules`) and numerically on the first batch (the head's input in
training mode must equal the cached one, for modules that branch on ``self.training``).

How the cut is found (the generic way, for any ``nn.Module``): the *trained module* is the
deepest sub-module that holds every trainable parameter (for timm models with a linear-probe
plan this is the classifier, ``fc`` / ``head`` / ``head.fc``). A forward pre-hook captures its
input and a forward hook its output. The cut is accepted only when, on the first batch, the
module runs exactly once, takes a single tensor, and its output *is* the model's output
(checked numerically) — so nothing after the head (a distillation average, a second head) is
lost. Otherwise :class:`CacheUnsupported` says why and adapt falls back to the plain loop. For
timm this is equivalent to ``forward_head(forward_features(x), pre_logits=True)`` followed by
the classifier, but it also covers heads that hold more than a linear layer (ConvNeXt's
``head.norm``) and models that are not timm models.

Plans that train more than the head but freeze a prefix (``train-last``, ``freeze-to``) cache
the activations at their freeze boundary instead: :mod:`zoo.adaptation.boundary_cache`, which
reuses :class:`CachedFeatures`, :class:`CacheUnsupported` and the budget defined here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from zoo.errors import ZooError, short_repr
from zoo.plans.freeze import norm_mode
from zoo.plans.plan import NormMode

MAX_BYTES_ENV = "ZOO_FEATURE_CACHE_MAX_BYTES"
#: images per batch when computing features (inference only: larger batches run faster)
INFERENCE_BATCH = 128
DEFAULT_MAX_BYTES = 4 << 30


class CacheUnsupported(Exception):
    """The feature cache cannot stand in for the plain loop on this model; the message says why."""


def trained_module_path(model: nn.Module) -> str | None:
    """Dotted path of the deepest sub-module holding every trainable parameter.

    ``None`` when nothing trains, or only the model itself holds them all (the backbone
    trains: no cut is possible).
    """
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if not names:
        return None
    owners = [n.rsplit(".", 1)[0] if "." in n else "" for n in names]
    common = owners[0].split(".") if owners[0] else []
    for owner in owners[1:]:
        parts = owner.split(".") if owner else []
        i = 0
        while i < min(len(common), len(parts)) and common[i] == parts[i]:
            i += 1
        common = common[:i]
    path = ".".join(common)
    if not path:
        return None
    # the common prefix of parameter owners is itself a module
    model.get_submodule(path)
    return path


def classifier_cut(model: nn.Module, head_names: Collection[str]) -> tuple[str | None, str]:
    """``(path to cut at, "")`` when the cache may stand in for the plain loop, else
    ``(None, why)``.

    Allowed only when every trainable parameter is one of ``head_names`` (the classifier's:
    the parameter table's ``head`` group), those sit in one sub-module, and no module of the
    frozen part behaves randomly or differently in training mode (:func:`random_frozen_modules`).
    """
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        return None, "nothing trains"
    heads = set(head_names)
    if not heads:
        return None, "the model has no classifier (no 'head' group in its parameter table)"
    outside = [n for n in trainable if n not in heads]
    if outside:
        return None, (
            f"the plan trains more than the classifier ({len(outside)} trainable tensors "
            f"outside it, e.g. {outside[0]!r})"
        )
    path = trained_module_path(model)
    if path is None:
        return None, "the classifier's parameters do not sit in one sub-module"
    random = random_frozen_modules(model, path)
    if random:
        more = f" (+{len(random) - 1} more)" if len(random) > 1 else ""
        return None, f"the frozen part is not deterministic in training mode: {random[0]}{more}"
    return path, ""


def random_frozen_modules(model: nn.Module, cut: str | Collection[str]) -> list[str]:
    """Modules outside ``cut`` (a module path, or several: the trained top) whose output
    differs between training and eval mode, as ``"<path> (<why>)"``: dropout with ``p > 0``,
    drop-path / drop-block with a drop probability above 0, batch-norm layers that the plan
    leaves in ``train`` mode (they normalize with batch statistics and update their running
    ones)."""
    found = []
    cuts = [cut] if isinstance(cut, str) else list(cut)
    for path, module in model.named_modules():
        if any(path == c or path.startswith(f"{c}.") for c in cuts):
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


def start_extraction(
    ctx: Any, callback: Any, split: str, total: int
) -> Callable[[int, int | None], None]:
    """Announce the extraction of ``split`` (``total`` batches) to ``callback`` and return the
    ``progress`` function to pass to the extraction: it checks the other ranks (a failed peer
    stops this one) and reports each batch."""
    callback.on_features_start(split, total)

    def progress(done: int, n: int | None) -> None:
        ctx.check_peers()
        callback.on_features_batch(split, done, n or 0)

    return progress


#: The suffixes ``ZOO_FEATURE_CACHE_MAX_BYTES`` accepts after its number (powers of 1024).
SIZE_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def max_cache_bytes() -> int:
    """The largest feature cache zoo builds: ``ZOO_FEATURE_CACHE_MAX_BYTES``, default 4 GiB.

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


@dataclass
class CachedFeatures:
    """What enters the trained module for each image, with the labels, on one device."""

    features: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def nbytes(self) -> int:
        return self.features.element_size() * self.features.nelement()

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Mini-batches of ``(features, labels)`` in order (for evaluation)."""
        for start in range(0, len(self), batch_size):
            yield (
                self.features[start : start + batch_size],
                self.labels[start : start + batch_size],
            )

    def loader(self, batch_size: int, *, seed: int) -> torch.utils.data.DataLoader:
        """Shuffled mini-batches, drawn exactly as a plain ``DataLoader(shuffle=True)`` with a
        generator seeded ``seed`` draws them (same order as zoo's plain loop over the images),
        but indexing whole batches at once."""
        from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

        dataset = TensorDataset(self.features, self.labels)
        generator = torch.Generator()
        generator.manual_seed(seed)
        sampler = BatchSampler(
            RandomSampler(dataset, generator=generator), batch_size, drop_last=False
        )
        return DataLoader(
            dataset, batch_size=None, sampler=sampler, generator=generator, collate_fn=_identity
        )

    def num_batches(self, batch_size: int) -> int:
        return (len(self) + batch_size - 1) // batch_size


def _identity(batch: Any) -> Any:
    return batch


class _Capture:
    """Hooks on the trained module that record its input (and output on the first batch)."""

    def __init__(self, module: nn.Module) -> None:
        self.inputs: list[torch.Tensor] = []
        self.outputs: list[Any] = []
        self.bad_call: str | None = None
        self.keep_output = True
        self._handles = [
            module.register_forward_pre_hook(self._pre, with_kwargs=True),
            module.register_forward_hook(self._post),
        ]

    def _pre(self, _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if kwargs or len(args) != 1 or not isinstance(args[0], torch.Tensor):
            self.bad_call = "it is called with more than one tensor argument"
        elif args:
            self.inputs.append(args[0].detach())

    def _post(self, _module: nn.Module, _args: Any, output: Any) -> None:
        if self.keep_output:
            self.outputs.append(output)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def _first_tensor(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise CacheUnsupported("the data loader does not yield (images, labels) batches")


def extract_features(
    model: nn.Module,
    module_path: str,
    batches: Iterable[Any],
    *,
    device: torch.device,
    total: int | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    max_bytes: int | None = None,
) -> CachedFeatures:
    """Run ``model`` once over ``batches`` (eval mode, no grad); keep the trained module's input.

    Raises :class:`CacheUnsupported` when the cut is not exact (see the module docstring) or
    the cache would exceed ``max_bytes`` (default :func:`max_cache_bytes`).
    """
    module = model.get_submodule(module_path)
    limit = max_cache_bytes() if max_bytes is None else max_bytes
    was_training = {m: m.training for m in model.modules()}
    model.eval()
    capture = _Capture(module)
    feats: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches):
                images, targets = _first_tensor(batch)
                images = images.to(device, non_blocking=True)
                capture.inputs.clear()
                capture.outputs.clear()
                capture.keep_output = i == 0
                output = model(images)
                if capture.bad_call:
                    raise CacheUnsupported(
                        f"the trained module {module_path!r}: {capture.bad_call}"
                    )
                if len(capture.inputs) != 1:
                    raise CacheUnsupported(
                        f"the trained module {module_path!r} runs {len(capture.inputs)} times "
                        "per forward pass"
                    )
                if i == 0:
                    _check_output_is_model_output(module_path, capture.outputs, output)
                    _check_same_in_training_mode(
                        model, module, module_path, images, capture.inputs[0]
                    )
                    per_image = capture.inputs[0][0].nelement() * capture.inputs[0].element_size()
                    if total is not None and per_image * total * images.shape[0] > limit:
                        raise CacheUnsupported(
                            f"the cache would take about {per_image * total * images.shape[0]:,} "
                            f"bytes, more than {limit:,} ({MAX_BYTES_ENV})"
                        )
                feats.append(capture.inputs[0])
                labels.append(targets.to(device))
                if progress is not None:
                    progress(i + 1, total)
    finally:
        capture.close()
        for m, flag in was_training.items():
            m.training = flag
    if not feats:
        raise CacheUnsupported("the data loader yielded no batches")
    cached = CachedFeatures(torch.cat(feats), torch.cat(labels).long())
    if cached.nbytes > limit:
        raise CacheUnsupported(f"the cache takes {cached.nbytes:,} bytes, more than {limit:,}")
    return cached


def _check_output_is_model_output(path: str, outputs: list[Any], model_output: Any) -> None:
    if len(outputs) != 1 or not isinstance(outputs[0], torch.Tensor):
        raise CacheUnsupported(f"the trained module {path!r} does not return one tensor")
    if not isinstance(model_output, torch.Tensor):
        raise CacheUnsupported("the model does not return a tensor of logits")
    out = outputs[0]
    if out.shape != model_output.shape or not torch.allclose(
        out, model_output, atol=1e-5, rtol=1e-4
    ):
        raise CacheUnsupported(
            f"the output of {path!r} is not the model's output (something runs after it)"
        )


def _check_same_in_training_mode(
    model: nn.Module,
    module: nn.Module,
    path: str,
    images: torch.Tensor,
    cached: torch.Tensor,
) -> None:
    """The plain loop runs the model in training mode (pinned norms stay in eval): the trained
    module's input must be the same there as in the cache. Runs one batch in training mode with
    the random state forked and every buffer restored afterwards."""
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    capture = _Capture(module)
    capture.keep_output = False
    devices = [images.device] if images.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            model.train()
            model(images)
    finally:
        capture.close()
        model.eval()  # the caller restores each module's own mode at the end
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
    if len(capture.inputs) != 1:
        return  # reported by the caller's own checks
    again = capture.inputs[0]
    if again.shape != cached.shape or not torch.allclose(again, cached, atol=1e-5, rtol=1e-4):
        raise CacheUnsupported(
            f"the input of {path!r} differs in training mode (the frozen part branches on "
            "self.training: dropout, drop-path or batch statistics), so cached features are not "
            "what the plain loop would train on"
        )
