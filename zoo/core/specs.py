"""The declarative records plugins register: backbones, policies, parameter groups.

Specs are frozen dataclasses. Listing them never builds a model: a :class:`BackboneSpec` holds a
``create`` callable and the facts a user needs to choose (summary, pretrained tags, input config).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

from zoo.core import checks
from zoo.core.policy_args import PolicyArg, signature_args
from zoo.errors import SpecError

if TYPE_CHECKING:
    from torch import nn


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


def check_spec_name(kind: str, name: object) -> str:
    """Validate a backbone or policy name (letters, digits, ``_ . -``; no ``:``)."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise SpecError(
            f"invalid {kind} name {name!r}: use letters, digits, '_', '.', '-' "
            "(no ':' — the plugin prefix is added by zoo)"
        )
    return name


#: Interpolation names timm's transforms accept (``timm.data.transforms.str_to_interp_mode``).
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")
#: Evaluation crop modes of ``timm.data.transforms_factory.transforms_imagenet_eval``.
CROP_MODES = ("center", "squash", "border")
#: Bounds of an input config: image side, channels, and the resize a crop implies.
MAX_IMAGE_SIDE = 8192
MAX_CHANNELS = 64
MAX_RESIZE = 2 * MAX_IMAGE_SIDE
#: Bounds of normalization: |mean| <= MAX_MEAN and MIN_STD <= std <= MAX_STD keep every
#: normalized pixel a finite float32.
MAX_MEAN = 1e4
MIN_STD, MAX_STD = 1e-4, 1e4


@dataclass(frozen=True)
class InputConfig:
    """How images must be prepared for a backbone (timm's data config, as data).

    :meth:`from_dict` is the one place an input config is checked: ``input_size`` is
    ``(channels, height, width)`` of positive ints (channels <= 64, sides <= 8192), ``mean``
    and ``std`` hold one finite number per channel (std > 0), ``interpolation`` is one of
    :data:`INTERPOLATIONS`, ``crop_mode`` one of :data:`CROP_MODES`, ``0 < crop_pct <= 2``.
    """

    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    crop_mode: str = "center"

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "crop_mode": self.crop_mode,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputConfig:
        """An input config from a dict (missing fields take the defaults), fully checked.

        Raises :class:`~zoo.SpecError` naming the field for a value of the wrong type or out of
        range (a non-finite number, a size that is not 3 positive ints, an unknown mode).
        Keys it does not know are ignored.
        """
        if not isinstance(data, Mapping):
            raise SpecError(f"invalid input config: expected a mapping, got {type(data).__name__}")
        try:
            return cls._checked(data)
        except checks.Invalid as exc:
            raise SpecError(f"invalid input config: {exc}") from None

    @classmethod
    def _checked(cls, data: Mapping[str, Any]) -> InputConfig:
        defaults = cls()
        size = _input_size(data.get("input_size", defaults.input_size))
        channels = size[0]
        mean = _per_channel("mean", data.get("mean", defaults.mean), channels, -MAX_MEAN, MAX_MEAN)
        std = _per_channel("std", data.get("std", defaults.std), channels, MIN_STD, MAX_STD)
        crop_pct = checks.real(data.get("crop_pct", defaults.crop_pct), "crop_pct")
        if not 0 < crop_pct <= 2:
            raise _bad_input("crop_pct", f"must be in (0, 2], got {crop_pct!r}")
        if max(size[1:]) / crop_pct > MAX_RESIZE:
            raise _bad_input(
                "crop_pct",
                f"{crop_pct!r} would resize a {max(size[1:])}-pixel "
                f"side to more than {MAX_RESIZE} pixels",
            )
        return cls(
            input_size=size,
            mean=mean,
            std=std,
            interpolation=checks.choice(
                data.get("interpolation", defaults.interpolation), "interpolation", INTERPOLATIONS
            ),
            crop_pct=crop_pct,
            crop_mode=checks.choice(
                data.get("crop_mode", defaults.crop_mode), "crop_mode", CROP_MODES
            ),
        )

    def checked(self) -> InputConfig:
        """This config, checked like :meth:`from_dict` checks a dict (one built directly with
        ``InputConfig(...)`` is not checked); raises :class:`~zoo.SpecError`."""
        return type(self).from_dict({f.name: getattr(self, f.name) for f in fields(self)})


def _bad_input(name: str, problem: str) -> SpecError:
    return SpecError(f"invalid input config: {name} {problem}")


def _input_size(value: object) -> tuple[int, int, int]:
    channels, height, width = checks.int_list(value, "input_size", size=3, low=None)
    checks.integer(channels, "input_size channels", 1, MAX_CHANNELS)
    for side in (height, width):
        checks.integer(side, "input_size height and width", 1, MAX_IMAGE_SIDE)
    return channels, height, width


def _per_channel(
    name: str, value: object, channels: int, low: float, high: float
) -> tuple[float, ...]:
    value = checks.sequence(value, name)
    if len(value) != channels:
        raise _bad_input(name, f"must hold one number per channel ({channels}), got {len(value)}")
    out = tuple(checks.real(v, name) for v in value)
    if not all(low <= v <= high for v in out):
        raise _bad_input(name, f"values must be in [{low:g}, {high:g}], got {list(out)}")
    return out


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone (or one architecture of a family) that a plugin offers.

    ``create(num_classes, pretrained, **kwargs) -> nn.Module`` builds it. ``num_classes=None``
    keeps the architecture's default head; ``0`` removes it. ``pretrained`` is ``False``, ``True``
    (the default weights) or a tag string from ``pretrained_tags`` naming specific weights.

    ``unsafe_kwargs`` names the architecture arguments that make ``create`` read files,
    unpickle or use the network (``fnmatch`` patterns, matched case-insensitively, such as
    ``"checkpoint_path"`` or ``"*_url"``). zoo refuses them when they come from a saved file's
    metadata (loading, inspecting, resolving a delta's base) and refuses to save a model built
    with them; a user may still pass them to ``zoo.create`` directly.

    ``config_json(model, label_names, data_config) -> dict | None``, when given, writes the
    ``config.json`` of a saved model the way the backbone's own library does (timm's plugin
    uses timm's writer, so a saved folder loads in plain timm); without it, or when it returns
    None, zoo writes the timm-style layout from the model's build record.
    """

    name: str
    create: Callable[..., nn.Module]
    summary: str = ""
    plugin: str = ""
    pretrained_tags: tuple[str, ...] = ()
    input_config: InputConfig = field(default_factory=InputConfig)
    tag_input_configs: Mapping[str, InputConfig] = field(default_factory=dict)
    head: str | None = None
    num_classes: int | None = None
    family: str = ""
    unsafe_kwargs: tuple[str, ...] = ()
    config_json: Callable[..., Mapping[str, Any] | None] | None = None

    def __post_init__(self) -> None:
        check_spec_name("backbone", self.name)
        unsafe = self.unsafe_kwargs
        if isinstance(unsafe, str) or not all(isinstance(k, str) and k for k in unsafe):
            raise SpecError(
                f"backbone {self.name!r}: unsafe_kwargs must be a tuple of argument names or "
                f"fnmatch patterns, got {unsafe!r}"
            )
        object.__setattr__(self, "unsafe_kwargs", tuple(unsafe))
        if not callable(self.create):
            raise SpecError(f"backbone {self.name!r}: create must be callable")
        if self.config_json is not None and not callable(self.config_json):
            raise SpecError(f"backbone {self.name!r}: config_json must be callable or None")
        for tag in self.pretrained_tags:
            if not isinstance(tag, str) or not _TAG_RE.match(tag):
                raise SpecError(f"backbone {self.name!r}: invalid pretrained tag {tag!r}")
        if not isinstance(self.input_config, InputConfig):
            raise SpecError(f"backbone {self.name!r}: input_config must be a zoo.InputConfig")

    @property
    def qualified_name(self) -> str:
        return f"{self.plugin}:{self.name}"

    @property
    def head_modules(self) -> tuple[str, ...]:
        """The module paths ``head`` locates (``"head,head_dist"``: two classifiers)."""
        return tuple(h.strip() for h in (self.head or "").split(",") if h.strip())

    def input_config_for(self, tag: str | None) -> InputConfig:
        """The input config of one pretrained tag (the default one when ``tag`` is None)."""
        if tag is not None and tag in self.tag_input_configs:
            return self.tag_input_configs[tag]
        return self.input_config


#: Largest learning-rate scale a policy may declare (:attr:`PolicySpec.lr_scale`).
MAX_LR_SCALE = 1e4


@dataclass(frozen=True)
class PolicySpec:
    """A freeze policy: a pure function from a :class:`~zoo.ParamTable` to a plan.

    ``plan(table, **args)`` returns a :class:`~zoo.Plan` or an iterable of the parameter names
    that train (everything else frozen, norms in ``frozen-stats`` when frozen). Its keyword
    parameters, with defaults and annotations, are the policy's arguments. A policy never touches
    an ``nn.Module``. ``schedule=True`` marks a policy whose ``plan`` accepts ``epoch`` and
    returns the plan for that epoch (gradual unfreezing).

    ``lr_scale`` is the learning rate the policy's trained parameters want, relative to the
    run's ``lr`` (the rate of a whole network): a head or adapters alone train at a larger
    rate (10 for zoo's ``linear-probe``, ``bitfit``, ``norm-only``, ``lora``, ``ssf`` and
    ``vpt``). zoo multiplies every trained parameter's lr scale in the policy's plan by it,
    so ``zoo plan`` shows it and ``zoo.adapt`` and ``zoo.compare`` train with it.
    """

    name: str
    plan: Callable[..., Any]  # -> zoo.Plan | Iterable[str] (zoo.plans sits above the specs)
    summary: str = ""
    plugin: str = ""
    schedule: bool = False
    lr_scale: float = 1.0
    #: The ``lr_scale`` zoo's policies that train a few parameters (a head, biases, norms,
    #: adapters) declare: 10x the rate of a whole network; LP-FT's probe stage trains the head
    #: at it too. On the MNIST transfer case of issue 21 (digits 0-4 -> 5-9, 10 labels per
    #: class) ``linear-probe`` and ``lora:rank=8`` reached 31.8% and 37.9% at compare's 1e-3 and
    #: 75.8% and 84.4% at 1e-2.
    HEAD_RATE: ClassVar[float] = 10.0

    def __post_init__(self) -> None:
        check_spec_name("policy", self.name)
        try:
            scale = checks.real(self.lr_scale, f"policy {self.name!r} lr_scale", 0, MAX_LR_SCALE)
        except checks.Invalid as exc:
            raise SpecError(str(exc)) from None
        if scale <= 0:
            raise SpecError(f"policy {self.name!r}: lr_scale must be > 0, not {scale}")
        object.__setattr__(self, "lr_scale", scale)
        if not callable(self.plan):
            raise SpecError(f"policy {self.name!r}: plan must be callable")
        params = list(inspect.signature(self.plan).parameters.values())
        if not params or params[0].kind not in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            raise SpecError(
                f"policy {self.name!r}: plan must take the ParamTable as its first argument"
            )
        if self.schedule and "epoch" not in {p.name for p in params}:
            raise SpecError(f"schedule policy {self.name!r}: plan must accept 'epoch'")

    @property
    def qualified_name(self) -> str:
        return f"{self.plugin}:{self.name}"

    @property
    def args(self) -> tuple[PolicyArg, ...]:
        """The policy's keyword arguments (``epoch`` of a schedule is not one: zoo passes it),
        each with the type zoo accepts for it."""
        return signature_args(self.plan, schedule=self.schedule)


@dataclass(frozen=True)
class AdapterSpec:
    """A kind of adapter: small modules a policy adds to a model (LoRA, SSF, VPT, a plugin's).

    Registered through the same hook as policies (``zoo_register_policies``: ``register``
    accepts a :class:`PolicySpec` or an :class:`AdapterSpec`). A policy names the kind of each
    module it adds in its plan (``zoo.Addition(kind="myplugin:my-kind", ...)``); when the plan is
    applied, zoo calls ``build(target, addition)`` with the target module and the
    :class:`~zoo.Addition`, and injects the ``zoo.Adapter`` it returns as a child of the target.
    ``build`` must give the adapter exactly the parameters (names and shapes) the addition lists.
    """

    name: str
    build: Callable[..., Any]  # (target: nn.Module, addition: zoo.Addition) -> zoo.Adapter
    summary: str = ""
    plugin: str = ""

    def __post_init__(self) -> None:
        check_spec_name("adapter kind", self.name)
        if not callable(self.build):
            raise SpecError(f"adapter kind {self.name!r}: build must be callable")

    @property
    def qualified_name(self) -> str:
        return f"{self.plugin}:{self.name}"


@dataclass(frozen=True)
class ParamGroup:
    """An ordered group of parameters (by name), as a plugin answers ``zoo_param_groups``.

    Groups come stem first, head last. ``name`` is ``"stem"``, ``"stage.N"``-like or ``"head"``.
    """

    name: str
    params: Sequence[str]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"ParamGroup name must be a non-empty string, got {self.name!r}")
        object.__setattr__(self, "params", tuple(self.params))
