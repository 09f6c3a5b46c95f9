"""The declarative records plugins register: backbones, policies, parameter groups.

Specs are frozen dataclasses. Listing them never builds a model: a :class:`BackboneSpec` holds a
``create`` callable and the facts a user needs to choose (summary, pretrained tags, input config).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from zoo.errors import SpecError

if TYPE_CHECKING:
    from torch import nn

    from zoo.plans import Plan

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


@dataclass(frozen=True)
class InputConfig:
    """How images must be prepared for a backbone (timm's data config, as data)."""

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
        defaults = cls()
        return cls(
            input_size=tuple(int(v) for v in data.get("input_size", defaults.input_size)),
            mean=tuple(float(v) for v in data.get("mean", defaults.mean)),
            std=tuple(float(v) for v in data.get("std", defaults.std)),
            interpolation=str(data.get("interpolation", defaults.interpolation)),
            crop_pct=float(data.get("crop_pct", defaults.crop_pct)),
            crop_mode=str(data.get("crop_mode", defaults.crop_mode)),
        )


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone (or one architecture of a family) that a plugin offers.

    ``create(num_classes, pretrained, **kwargs) -> nn.Module`` builds it. ``num_classes=None``
    keeps the architecture's default head; ``0`` removes it. ``pretrained`` is ``False``, ``True``
    (the default weights) or a tag string from ``pretrained_tags`` naming specific weights.
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

    def __post_init__(self) -> None:
        check_spec_name("backbone", self.name)
        if not callable(self.create):
            raise SpecError(f"backbone {self.name!r}: create must be callable")
        for tag in self.pretrained_tags:
            if not isinstance(tag, str) or not _TAG_RE.match(tag):
                raise SpecError(f"backbone {self.name!r}: invalid pretrained tag {tag!r}")
        if not isinstance(self.input_config, InputConfig):
            raise SpecError(f"backbone {self.name!r}: input_config must be a zoo.InputConfig")

    @property
    def qualified_name(self) -> str:
        return f"{self.plugin}:{self.name}"

    @property
    def has_pretrained(self) -> bool:
        return bool(self.pretrained_tags)

    def input_config_for(self, tag: str | None) -> InputConfig:
        """The input config of one pretrained tag (the default one when ``tag`` is None)."""
        if tag is not None and tag in self.tag_input_configs:
            return self.tag_input_configs[tag]
        return self.input_config


@dataclass(frozen=True)
class PolicyArg:
    """One keyword argument of a policy, read from the ``plan`` function's signature."""

    name: str
    annotation: str
    default: Any
    required: bool

    def to_dict(self) -> dict[str, Any]:
        default = None if self.required else self.default
        return {
            "name": self.name,
            "type": self.annotation,
            "default": default if _is_jsonable(default) else repr(default),
            "required": self.required,
        }


def _is_jsonable(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str, list, tuple))


@dataclass(frozen=True)
class PolicySpec:
    """A freeze policy: a pure function from a :class:`~zoo.ParamTable` to a plan.

    ``plan(table, **args)`` returns a :class:`~zoo.Plan` or an iterable of the parameter names
    that train (everything else frozen, norms in ``frozen-stats`` when frozen). Its keyword
    parameters, with defaults and annotations, are the policy's arguments. A policy never touches
    an ``nn.Module``. ``schedule=True`` marks a policy whose ``plan`` accepts ``epoch`` and
    returns the plan for that epoch (gradual unfreezing).
    """

    name: str
    plan: Callable[..., Plan | Iterable[str]]
    summary: str = ""
    plugin: str = ""
    schedule: bool = False

    def __post_init__(self) -> None:
        check_spec_name("policy", self.name)
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
        """The policy's keyword arguments (``epoch`` of a schedule is not one: zoo passes it)."""
        found = []
        params = list(inspect.signature(self.plan).parameters.values())[1:]
        for p in params:
            if p.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
                continue
            if self.schedule and p.name == "epoch":
                continue
            annotation = p.annotation
            if annotation is inspect.Parameter.empty:
                text = "" if p.default is inspect.Parameter.empty else type(p.default).__name__
            elif isinstance(annotation, str):
                text = annotation
            else:
                text = getattr(annotation, "__name__", str(annotation))
            required = p.default is inspect.Parameter.empty
            found.append(PolicyArg(p.name, text, None if required else p.default, required))
        return tuple(found)


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
