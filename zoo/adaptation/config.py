"""How a run trains: :class:`TrainConfig`, the one configuration of ``zoo.adapt`` and
``zoo.compare``.

Its fields are the keyword arguments of both functions, under the names users pass and
checkpoints compare on resume; each value is checked when the config is made, before any work
(no folder scanned, no model built), and a refused one is an :class:`~zoo.AdaptArgumentError`
naming it. :data:`LEFT_OUT` says which fields each job does not take; the public signatures of
``zoo.adapt`` and ``zoo.compare`` (:func:`signature`) and the options of ``zoo adapt`` and
``zoo compare`` (:mod:`zoo.cli.train_options`) are built from the fields. The module imports
neither torch nor plugins: the command line reads it to build its parsers.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from dataclasses import Field, asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from zoo.core import checks
from zoo.core.specs import CROP_MODES, INTERPOLATIONS, MAX_IMAGE_SIDE, InputConfig
from zoo.errors import AdaptArgumentError, suggest

if TYPE_CHECKING:
    from zoo.adaptation.history import AdaptCallback
    from zoo.core.specs import PolicySpec

__all__ = ["LEFT_OUT", "Augment", "TrainConfig", "signature", "split_policies"]

OPTIMIZERS = ("adamw", "sgd")
LR_SCHEDULES = ("cosine", "constant")
SIMILARITIES = ("high", "low")
ON_CORRUPT = ("skip", "error")
#: ``precision``: ``auto`` is bf16 autocast on a GPU that supports it, fp16 (with a gradient
#: scaler) on an older GPU, fp32 on a CPU (:mod:`zoo.adaptation.speed`).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: Most micro-batches one optimizer step accumulates.
MAX_ACCUMULATE = 4096
#: Upper bound of ``num_workers``: more loader processes than this is a typo, not a plan.
MAX_WORKERS = 256
#: Upper bound (exclusive) of ``seed``: what ``torch.manual_seed`` accepts on every platform.
SEED_LIMIT = 2**63
#: Most candidates one comparison takes (each holds a copy of the model).
MAX_CANDIDATES = 64
#: Largest budget in seconds (about 31 years: what the saved leaderboard accepts).
MAX_BUDGET = 1e9
#: The decay of ``ema=True`` (``--ema`` without a value): timm's train.py default. zoo ramps
#: up to it (timm's ``use_warmup``), so a short fine-tuning run averages its own steps.
EMA_DECAY = 0.9998
#: Largest mixup / cutmix alpha (a Beta(alpha, alpha) draw: beyond this it is always 0.5).
MAX_MIX_ALPHA = 100.0


@dataclass(frozen=True)
class Augment:
    """The training augmentation of a run, in one record: what builds timm's training
    transform (``create_transform``: random resized crop to ``scale``, a horizontal flip with
    probability 0.5 when ``hflip``, colour jitter ``color_jitter``, RandAugment-style
    ``auto_augment`` such as ``"rand-m9-mstd0.5"``) and the batch mixing (timm's ``Mixup``:
    ``mixup`` and ``cutmix`` alphas, 0: off). The defaults are timm's. Saved in
    ``zoo.training`` and shown by ``zoo inspect``."""

    hflip: bool = True
    scale: tuple[float, float] = (0.08, 1.0)
    color_jitter: float = 0.4
    auto_augment: str | None = None
    mixup: float = 0.0
    cutmix: float = 0.0

    @property
    def mixes(self) -> bool:
        """Whether batches are mixed (mixup or cutmix): the loss then takes soft targets."""
        return self.mixup > 0 or self.cutmix > 0

    def transform_options(self) -> dict[str, Any]:
        """The training options of ``timm.data.create_transform``."""
        return {
            "hflip": 0.5 if self.hflip else 0.0,
            "scale": tuple(self.scale),
            "color_jitter": self.color_jitter or None,  # 0: no jitter step at all
            "auto_augment": self.auto_augment,
        }

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["scale"] = list(self.scale)
        return data

    def describe(self) -> str:
        """``flip, crop scale 0.08-1, colour jitter 0.4, mixup 0.2``: what is on."""
        return describe_augment(self.to_dict())


def describe_augment(record: Any) -> str:
    """An augmentation record (:meth:`Augment.to_dict`, or untrusted metadata) in words."""
    if not isinstance(record, Mapping):
        return "off"
    parts = ["flip" if record.get("hflip") else "no flip"]
    scale = record.get("scale")
    if isinstance(scale, Sequence) and len(scale) == 2:
        parts.append(
            f"crop scale {scale[0]:g}-{scale[1]:g}" if all(map(checks.is_real, scale)) else "crop"
        )
    jitter = record.get("color_jitter")
    if checks.is_real(jitter) and jitter:
        parts.append(f"colour jitter {jitter:g}")
    if record.get("auto_augment"):
        parts.append(str(record["auto_augment"]))
    for key in ("mixup", "cutmix"):
        value = record.get(key)
        if checks.is_real(value) and value:
            parts.append(f"{key} {value:g}")
    return ", ".join(parts)


#: The fields of :class:`TrainConfig` that shape the augmentation (one per :class:`Augment`
#: field, same name; None: timm's default).
AUGMENT_FIELDS = tuple(f.name for f in fields(Augment))


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How a run trains: one field per keyword argument of :func:`zoo.adapt` and
    :func:`zoo.compare`, with their defaults (the docstrings of those functions say what each
    does). Every value is checked here; a refused one raises :class:`~zoo.AdaptArgumentError`
    naming the field. Two settings of the process are checked when the run starts instead
    (:func:`zoo.adaptation.prepare.open_run`): the device, and the feature cache's budget
    ``ZOO_FEATURE_CACHE_MAX_BYTES``."""

    policy: str | PolicySpec = "auto"
    policy_args: Mapping[str, Any] | None = None
    policies: Sequence[str] | str | None = None
    epochs: int = 5
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 32
    optimizer: str = "adamw"
    momentum: float = 0.9
    lr_schedule: str = "cosine"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    budget: float | None = None
    name: str | None = None
    overwrite: bool = False
    delta: bool | None = None
    plot: str | os.PathLike[str] | None = None
    refit: bool | None = None
    pretrained: bool | str | None = None
    weights: str | os.PathLike[str] | None = None
    scratch: bool = False
    model_kwargs: Mapping[str, Any] | None = None
    classes: Sequence[str] | None = None
    val_split: float | None = None
    image_size: int | Sequence[int] | None = None
    input_config: Mapping[str, Any] | None = None
    augment: bool | None = None
    hflip: bool | None = None
    scale: Sequence[float] | None = None
    color_jitter: float | None = None
    auto_augment: str | None = None
    mixup: float | None = None
    cutmix: float | None = None
    ema: bool | float | None = None
    similarity: str = "high"
    samples_per_class: int | None = None
    feature_cache: bool | str = "auto"
    on_corrupt: str = "skip"
    device: str | None = None
    distributed: bool | None = None
    num_workers: int | None = None
    precision: str = "auto"
    channels_last: bool | str = "auto"
    compile: bool | str = False
    compile_fallback: bool = False
    grad_checkpointing: bool = False
    accumulate: int = 1
    shard: bool = False
    seed: int = 0
    callback: AdaptCallback | None = None
    early_stop: int | None = None
    resume: bool = False
    probe_start: float = 0.0
    blend: bool = False

    def __post_init__(self) -> None:
        try:
            self._check()
        except checks.Invalid as exc:
            raise AdaptArgumentError(exc.what, exc.value, exc.rule) from None

    @classmethod
    def of(cls, job: str, options: Mapping[str, Any]) -> TrainConfig:
        """The config of ``job``'s keyword arguments (``"adapt"`` or ``"compare"``); a field the
        job leaves out, or an unknown keyword, is an :class:`~zoo.AdaptArgumentError` naming it
        (not a ``TypeError``)."""
        taken = [f.name for f in job_fields(job)]
        for key, value in options.items():
            if key not in taken:
                close = suggest(str(key), taken, n=3)
                why = LEFT_OUT[job].get(key) or (
                    f"left out: it is not an argument of zoo.{job}"
                    + (f" (did you mean {', '.join(close)}?)" if close else "")
                )
                raise AdaptArgumentError(str(key), value, why)
        return cls(**options)

    def to_dict(self, job: str) -> dict[str, Any]:
        """The fields ``job`` takes, as given (a checkpoint compares them on resume)."""
        return {f.name: getattr(self, f.name) for f in job_fields(job)}

    def augmentation(self, default: bool) -> Augment | None:
        """The run's :class:`Augment`, or None for un-augmented images: ``augment=False`` is
        off; any augmentation field given, or ``augment=True``, is on (timm's defaults for the
        fields not given); ``augment=None`` alone is ``default``."""
        given = {k: getattr(self, k) for k in AUGMENT_FIELDS if getattr(self, k) is not None}
        if self.augment is False or not (given or self.augment or default):
            return None
        if "scale" in given:
            given["scale"] = tuple(float(v) for v in given["scale"])
        return Augment(**given)

    @property
    def ema_decay(self) -> float | None:
        """The EMA decay (None: no EMA of the weights)."""
        if self.ema is None or self.ema is False:
            return None
        return EMA_DECAY if self.ema is True else float(self.ema)

    def policy_list(self) -> list[str] | None:
        """``policies`` as a list of specs (one text split by :func:`split_policies`)."""
        if self.policies is None:
            return None
        if isinstance(self.policies, str):
            return split_policies(self.policies)
        return list(self.policies)

    def _check(self) -> None:
        """Raise :class:`~zoo.core.checks.Invalid` naming the first field refused."""
        checks.integer(self.epochs, "epochs", 1)
        checks.real(self.lr, "lr", 0, open_low=True)
        checks.real(self.weight_decay, "weight_decay", 0)
        checks.integer(self.batch_size, "batch_size", 1)
        checks.choice(self.optimizer, "optimizer", OPTIMIZERS)
        checks.real(self.momentum, "momentum", 0, 1, open_high=True)
        checks.choice(self.lr_schedule, "lr_schedule", LR_SCHEDULES)
        checks.real(self.warmup_epochs, "warmup_epochs", 0, self.epochs)
        checks.real(self.label_smoothing, "label_smoothing", 0, 1, open_high=True)
        if self.val_split is not None:
            checks.real(self.val_split, "val_split", 0, 1, open_low=True, open_high=True)
        if self.image_size is not None:
            _check_image_size(self.image_size)
        if self.input_config is not None:
            _check_input_config(self.input_config)
        _check_augment(self)
        checks.choice(self.similarity, "similarity", SIMILARITIES)
        if self.samples_per_class is not None:
            checks.integer(self.samples_per_class, "samples_per_class", 1)
        checks.choice(self.feature_cache, "feature_cache", (True, False, "auto"))
        checks.choice(self.on_corrupt, "on_corrupt", ON_CORRUPT)
        if self.num_workers is not None:
            checks.integer(self.num_workers, "num_workers", 0, MAX_WORKERS)
        checks.choice(self.precision, "precision", PRECISIONS)
        checks.choice(self.channels_last, "channels_last", (True, False, "auto"))
        if not isinstance(self.compile, bool):
            checks.text(self.compile, "compile", max_len=100)  # a torch.compile backend name
        checks.flag(self.compile_fallback, "compile_fallback")
        if self.compile_fallback and self.compile is False:
            rule = "False unless compile is asked for (compile=True)"
            raise checks.Invalid("compile_fallback", rule, self.compile_fallback)
        checks.flag(self.grad_checkpointing, "grad_checkpointing")
        checks.integer(self.accumulate, "accumulate", 1, MAX_ACCUMULATE)
        checks.flag(self.shard, "shard")
        if self.shard and (self.early_stop is not None or self.ema_decay is not None):
            rule = "False with early_stop or ema (a sharded run keeps no copy of the weights)"
            raise checks.Invalid("shard", rule, self.shard)
        checks.integer(self.seed, "seed", 0, SEED_LIMIT - 1)
        if self.early_stop is not None:
            checks.integer(self.early_stop, "early_stop", 1)
        checks.flag(self.resume, "resume")
        checks.real(self.probe_start, "probe_start", 0, 1, open_high=True)
        checks.flag(self.blend, "blend")
        checks.choice(self.distributed, "distributed", (None, True, False))
        checks.choice(self.delta, "delta", (None, True, False))
        checks.choice(self.refit, "refit", (None, True, False))
        checks.flag(self.overwrite, "overwrite")
        checks.flag(self.scratch, "scratch")
        if not (self.pretrained is None or isinstance(self.pretrained, (bool, str))):
            rule = "None (default), True, False or a pretrained tag"
            raise checks.Invalid("pretrained", rule, self.pretrained)
        for mapping in ("policy_args", "model_kwargs"):
            value = getattr(self, mapping)
            if value is not None and not isinstance(value, Mapping):
                raise checks.Invalid(mapping, "a mapping (dict) or None", value)
        if self.classes is not None:
            _check_classes(self.classes)
        if self.policies is not None:
            _check_policies(self.policies)
        if self.budget is not None and not (
            checks.is_real(self.budget) and 0 < self.budget <= MAX_BUDGET
        ):
            rule = f"None or a number of seconds > 0 (at most {MAX_BUDGET:g})"
            raise checks.Invalid("budget", rule, self.budget)
        if self.plot is not None and not isinstance(self.plot, (str, os.PathLike)):
            raise checks.Invalid("plot", "None or the path of a .png file", self.plot)


#: The fields each job leaves out, with the rule its refusal states ("ARG must be RULE");
#: None: "left out: it is not an argument of zoo.JOB".
LEFT_OUT: dict[str, dict[str, str | None]] = {
    "adapt": {
        "policies": "left out: zoo.adapt trains one policy (policy=SPEC); zoo.compare compares "
        "policies=[SPEC, ...]",
        "budget": None,
        "plot": None,
        "blend": "left out: blends average the candidates of zoo.compare (blend=True)",
    },
    "compare": {
        "policy": "left out: zoo.compare takes policies=[SPEC, ...] (the candidates to compare)",
        "policy_args": None,
        "delta": None,
        "similarity": None,
        "samples_per_class": None,
        "feature_cache": None,
        "early_stop": None,
        "resume": None,
        "shard": "left out: zoo.compare trains a copy of the model per candidate; shard one "
        "run of zoo.adapt (shard=True)",
    },
}


def job_fields(job: str) -> list[Field[Any]]:
    """The fields of :class:`TrainConfig` that ``job`` takes, in order."""
    return [f for f in fields(TrainConfig) if f.name not in LEFT_OUT[job]]


def signature(function: Any, job: str, returns: str) -> inspect.Signature:
    """A job function's signature as users see it: the starting point and the data (its first
    three parameters), then every field ``job`` takes as a keyword argument, then ``catalog``
    (which zoo.api fills). ``adapt`` and ``compare`` take ``**options``."""
    own = list(inspect.signature(function).parameters.values())
    options = [
        inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type
        )
        for f in job_fields(job)
    ]
    return inspect.Signature([*own[:3], *options, own[3]], return_annotation=returns)


def split_policies(text: str) -> list[str]:
    """The specs of a policy list: ``"linear-probe;lora:rank=4,alpha=8"`` or
    ``"linear-probe,train-last:n=2,lora:rank=4,alpha=8"``.

    With a ``;`` anywhere, ``;`` alone separates specs (so a spec's arguments, lists included,
    keep their commas). Without one, commas separate specs, except inside brackets and before
    a ``key=value`` that names no policy (``alpha=8``), which continues the spec before it.
    """
    if ";" in text:
        return [p.strip() for p in text.split(";") if p.strip()]
    parts: list[str] = []
    depth = 0
    current = ""
    for char in text + ",":
        if char in "[({":
            depth += 1
        elif char in "])}":
            depth -= 1
        if char == "," and depth == 0:
            piece = current.strip()
            if parts and _continues_spec(piece):
                parts[-1] += "," + piece
            elif piece:
                parts.append(piece)
            current = ""
        else:
            current += char
    return parts


def _continues_spec(piece: str) -> bool:
    """Whether ``piece`` of a comma-separated list is an argument (``alpha=8``) of the spec
    before it rather than a spec of its own (``lora``, ``lora:rank=4``)."""
    name, eq, _ = piece.partition("=")
    return bool(eq) and ":" not in name


def _check_policies(policies: Any) -> None:
    items = [policies] if isinstance(policies, str) else policies
    if (
        isinstance(items, (str, bytes))
        or not isinstance(items, Sequence)
        or not all(isinstance(p, str) and p.strip() for p in items)
    ):
        rule = "a list of policy specs, 'spec,spec,...' or 'spec;spec'"
        raise checks.Invalid("policies", rule, policies)
    count = len(split_policies(policies) if isinstance(policies, str) else items)
    if not 1 <= count <= MAX_CANDIDATES:
        raise checks.Invalid("policies", f"1 to {MAX_CANDIDATES} policy specs", policies)


def _check_augment(config: TrainConfig) -> None:
    """The augmentation fields, and what they cannot go with (``auto_augment``'s text is
    parsed by timm when the run starts: :func:`zoo.adaptation.data.check_auto_augment`)."""
    if config.augment is not None and not isinstance(config.augment, bool):
        rule = (
            "None (default), True or False; shape the augmentation with hflip=, scale=, "
            "color_jitter=, auto_augment=, mixup=, cutmix="
        )
        raise checks.Invalid("augment", rule, config.augment)
    if config.hflip is not None:
        checks.flag(config.hflip, "hflip")
    if config.scale is not None:
        rule = "(min, max): two numbers with 0 < min <= max <= 1, the crop's share of the image"
        if not (
            isinstance(config.scale, Sequence)
            and not isinstance(config.scale, str)
            and len(config.scale) == 2
            and all(checks.is_real(v) for v in config.scale)
            and 0 < config.scale[0] <= config.scale[1] <= 1
        ):
            raise checks.Invalid("scale", rule, config.scale)
    if config.color_jitter is not None:
        checks.real(config.color_jitter, "color_jitter", 0, 1)
    if config.auto_augment is not None:
        checks.text(config.auto_augment, "auto_augment", max_len=200)
    for alpha in ("mixup", "cutmix"):
        if getattr(config, alpha) is not None:
            checks.real(getattr(config, alpha), alpha, 0, MAX_MIX_ALPHA)
    given = [k for k in AUGMENT_FIELDS if getattr(config, k) is not None]
    if config.augment is False and given:
        rule = (
            f"True or None when {', '.join(given)} {'is' if len(given) == 1 else 'are'} given "
            "(augment=False turns the augmentation off; pass one or the other)"
        )
        raise checks.Invalid("augment", rule, False)
    if config.ema is not None and not isinstance(config.ema, bool):
        checks.real(config.ema, "ema", 0, 1, open_low=True, open_high=True)
    if config.ema_decay is not None:
        for other in ("resume", "early_stop"):
            if getattr(config, other) not in (None, False):
                keeps = (
                    "a checkpoint keeps the trained weights, not their moving average"
                    if other == "resume"
                    else "early stopping keeps the best epoch's trained weights, not their "
                    "moving average"
                )
                rule = f"left out when ema is on: {keeps}; use one or the other"
                raise checks.Invalid(other, rule, getattr(config, other))


def _check_image_size(image_size: Any) -> None:
    sides = [image_size, image_size] if checks.is_int(image_size) else image_size
    try:
        checks.int_list(sides, "image_size", size=2, low=1, high=MAX_IMAGE_SIDE)
    except checks.Invalid:
        rule = f"an int or (height, width) from 1 to {MAX_IMAGE_SIDE} pixels"
        raise checks.Invalid("image_size", rule, image_size) from None


def _check_input_config(overrides: Any) -> None:
    """Each override a user gives, checked before any work (the full config, which also
    depends on the model, is checked again by ``InputConfig.from_dict`` once it is known)."""
    if not isinstance(overrides, Mapping):
        raise checks.Invalid("input_config", "a mapping of input config fields", overrides)
    known = InputConfig().to_dict()
    for key, value in overrides.items():
        arg = f"input_config[{key!r}]"
        if key not in known:
            rule = "a mapping with the keys " + ", ".join(sorted(known))
            raise checks.Invalid("input_config", rule, dict(overrides))
        if key == "crop_pct" and not (checks.is_real(value) and 0 < value <= 2):
            raise checks.Invalid(arg, "a finite number in (0, 2] (1.0: no crop)", value)
        if key in ("interpolation", "crop_mode"):
            checks.choice(value, arg, INTERPOLATIONS if key == "interpolation" else CROP_MODES)
        elif key == "input_size":
            rule = f"(channels, height, width): 3 ints from 1 to {MAX_IMAGE_SIDE}"
            if not (
                isinstance(value, Sequence)
                and not isinstance(value, str)
                and len(value) == 3
                and all(checks.is_int(v) and 1 <= v <= MAX_IMAGE_SIDE for v in value)
            ):
                raise checks.Invalid(arg, rule, value)
        elif key in ("mean", "std") and not (
            isinstance(value, Sequence)
            and not isinstance(value, str)
            and value
            and all(checks.is_real(v) and (key == "mean" or v > 0) for v in value)
        ):
            rule = "finite numbers > 0" if key == "std" else "finite numbers"
            raise checks.Invalid(arg, f"a list of {rule}, one per channel", value)


def _check_classes(classes: Any) -> None:
    if (
        isinstance(classes, str)
        or not isinstance(classes, Sequence)
        or not all(isinstance(c, str) and c for c in classes)
    ):
        raise checks.Invalid("classes", "a list of class names (non-empty strings)", classes)
    if len(set(classes)) != len(classes):
        raise checks.Invalid("classes", "a list of distinct class names", classes)
    try:
        for name in classes:
            checks.text(name, "classes", max_len=None)
    except checks.Invalid:
        rule = "a list of class names without control characters"
        raise checks.Invalid("classes", rule, classes) from None
    if len(classes) < 2:
        rule = "at least 2 class names (a classifier with one class always predicts it)"
        raise checks.Invalid("classes", rule, classes)
