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
from dataclasses import Field, dataclass, fields
from typing import TYPE_CHECKING, Any

from zoo.core import checks
from zoo.core.specs import CROP_MODES, INTERPOLATIONS, MAX_IMAGE_SIDE, InputConfig
from zoo.errors import AdaptArgumentError, suggest

if TYPE_CHECKING:
    from zoo.adaptation.history import AdaptCallback
    from zoo.core.specs import PolicySpec

__all__ = ["LEFT_OUT", "TrainConfig", "signature", "split_policies"]

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
    pretrained: bool | str | None = None
    weights: str | os.PathLike[str] | None = None
    scratch: bool = False
    model_kwargs: Mapping[str, Any] | None = None
    classes: Sequence[str] | None = None
    val_split: float | None = None
    image_size: int | Sequence[int] | None = None
    input_config: Mapping[str, Any] | None = None
    augment: bool | Mapping[str, Any] | None = None
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
        if not (self.augment is None or isinstance(self.augment, (bool, Mapping))):
            rule = "None, True, False or a mapping of timm transform options"
            raise checks.Invalid("augment", rule, self.augment)
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
        if self.shard and self.early_stop is not None:
            rule = "False with early_stop (a sharded run keeps no best epoch's copy yet)"
            raise checks.Invalid("shard", rule, self.shard)
        checks.integer(self.seed, "seed", 0, SEED_LIMIT - 1)
        if self.early_stop is not None:
            checks.integer(self.early_stop, "early_stop", 1)
        checks.flag(self.resume, "resume")
        checks.choice(self.distributed, "distributed", (None, True, False))
        checks.choice(self.delta, "delta", (None, True, False))
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
    },
    "compare": {
        "policy": "left out: zoo.compare takes policies=[SPEC, ...] (the candidates to compare)",
        "augment": "left out: zoo.compare always trains on un-augmented images (the same, "
        "cacheable inputs for every candidate make the comparison fair); to train the winner "
        "with augmentation, pass its policy to zoo.adapt",
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
