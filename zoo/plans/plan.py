"""Plans: what trains, at which learning-rate scale, and how each normalization layer behaves.

A :class:`Plan` is pure data. For every parameter it holds a :class:`ParamPlan` (trained or
frozen, an lr scale, whether weight decay applies); for every normalization layer a
:class:`NormMode`. :mod:`zoo.plans.binding` computes one by running a freeze policy on a
:class:`~zoo.ParamTable`, without touching the model; :mod:`zoo.plans.freeze` applies it.
This module is data only: it imports no service.

A plan may also add parameters: an adapter policy (``lora``, ``ssf``, ``vpt``) lists the small
modules it adds as :class:`Addition` records (target module, adapter kind, arguments, parameter
shapes), which :mod:`zoo.plans.adapters` injects when the plan is applied. Added parameters are
planned like the others (they train).

A plan serializes to a compact dict (:meth:`Plan.to_dict`), small enough for a saved file's
metadata, and back (:meth:`Plan.from_dict`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING, Any

from zoo.core import checks
from zoo.core.policy_args import format_policy_spec
from zoo.core.record import unwrap
from zoo.errors import PlanError, UnknownNameError, short_repr, suggest

if TYPE_CHECKING:
    from torch import nn

    from zoo.tables.table import NormInfo, ParamInfo, ParamTable

#: The newest plan format: 2 adds ``additions`` (a plan without additions is still written as 1,
#: so files without adapters read in older zoo versions).
PLAN_FORMAT = 2
NO_DECAY_ROLES = frozenset({"bias", "norm", "embedding"})
#: Bounds of an :class:`Addition` (one read from a file is untrusted): parameters it adds,
#: dimensions and size of each, values in its arguments, its depth; additions in one plan.
MAX_ADDED_PARAMS = 16
MAX_ADDED_DIMS = 8
MAX_ADDED_DIM = 2**31 - 1
MAX_ADDED_ARG_VALUES = 1000
MAX_DEPTH = 1_000_000
MAX_ADDITIONS = 10_000
_KIND_RE = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.\-]*:)?[A-Za-z0-9][A-Za-z0-9_.\-]*")


class NormMode(str, Enum):
    """How a normalization layer behaves while the model trains.

    ``train``: batch statistics in train mode, running statistics update, affine as planned.
    ``frozen-stats``: always in eval mode (running statistics used and fixed), affine trainable
    as planned. ``frozen``: eval mode and affine frozen. Applied modes survive ``model.train()``.
    """

    TRAIN = "train"
    FROZEN_STATS = "frozen-stats"
    FROZEN = "frozen"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def coerce(cls, value: NormMode | str) -> NormMode:
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(repr(m.value) for m in cls)
            raise PlanError(f"unknown norm mode {value!r}; valid modes: {valid}") from None


@dataclass(frozen=True)
class ParamPlan:
    """The plan of one parameter: trained or frozen, lr scale, weight decay on or off."""

    name: str
    trainable: bool
    lr_scale: float = 1.0
    weight_decay: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:  # from a file: checks.text
            raise PlanError(f"a parameter plan needs a parameter name, got {short_repr(self.name)}")
        try:
            scale = checks.real(self.lr_scale, f"lr scale of {self.name!r}", 0)
        except checks.Invalid as exc:
            raise PlanError(str(exc)) from None
        object.__setattr__(self, "lr_scale", scale)
        object.__setattr__(self, "trainable", bool(self.trainable))
        object.__setattr__(self, "weight_decay", bool(self.weight_decay))


def default_weight_decay(row: ParamInfo) -> bool:
    """Whether weight decay applies by default: not on biases, norms, embeddings, 1-D tensors."""
    leaf = row.name.rpartition(".")[2]
    return len(row.shape) > 1 and row.role not in NO_DECAY_ROLES and leaf != "bias"


@dataclass(frozen=True)
class Addition:
    """Parameters a policy adds to one module: an adapter, as data.

    ``target`` is the module path (``"blocks.3.attn.qkv"``), ``kind`` the qualified adapter kind
    (``"zoo:lora"``, an :class:`~zoo.AdapterSpec` of some plugin), ``params`` the added parameters
    by name relative to the target, each with its shape (``{"lora.A": (8, 192), "lora.B": (576,
    8)}``; every name starts with the same child module name, :attr:`child`), ``args`` the kind's
    JSON-able arguments (``{"rank": 8, "alpha": 16.0}``), ``depth`` and ``group`` those of the
    target in the parameter table. In the model the parameters are named
    ``f"{target}.{name}"`` (:attr:`names`).
    """

    target: str
    kind: str
    params: Mapping[str, tuple[int, ...]]
    args: Mapping[str, Any] = field(default_factory=dict)
    depth: int = 0
    group: str = ""

    def __post_init__(self) -> None:
        try:
            self._check()
        except checks.Invalid as exc:
            raise PlanError(f"addition to {short_repr(self.target, 200)}: {exc}") from None

    def _check(self) -> None:
        """The checks of :meth:`__post_init__` (it names the target in each refusal)."""
        checks.module_path(self.target, "target")
        checks.name(self.kind, "kind")
        if not _KIND_RE.fullmatch(self.kind):
            rule = 'an adapter kind name, "plugin:name" or "name" (letters, digits, _ . -)'
            raise checks.Invalid("kind", rule, self.kind)
        if not isinstance(self.params, Mapping) or not 1 <= len(self.params) <= MAX_ADDED_PARAMS:
            rule = f"a mapping of 1 to {MAX_ADDED_PARAMS} parameter names to shapes"
            raise checks.Invalid("params", rule, self.params)
        params: dict[str, tuple[int, ...]] = {}
        for name, shape in self.params.items():
            if not isinstance(name, str) or "." not in name:
                raise checks.Invalid(
                    "a parameter name", "'<child>.<name>' (such as 'lora.A')", name
                )
            checks.module_path(name, "a parameter name")
            dims = (0, MAX_ADDED_DIMS)
            shape = checks.int_list(
                shape, f"shape of {name!r}", size=dims, low=1, high=MAX_ADDED_DIM
            )
            params[name] = tuple(shape)
        children = {name.partition(".")[0] for name in params}
        if len(children) != 1:
            raise checks.Invalid(
                "every parameter name",
                "a name under the same child module",
                sorted(children),
                f"must start with the same child module name, got {sorted(children)}",
            )
        object.__setattr__(self, "params", params)
        if not isinstance(self.args, Mapping):
            raise checks.Invalid("args", "a mapping of argument names to JSON data", self.args)
        checks.json_value(self.args, "args")
        object.__setattr__(self, "args", jsonable(self.args))
        object.__setattr__(self, "depth", checks.integer(self.depth, "depth", 0))
        if not isinstance(self.group, str):
            raise checks.Invalid("group", "a string", self.group)

    __hash__ = None  # type: ignore[assignment]  # holds dicts

    @property
    def child(self) -> str:
        """The name of the adapter module inside the target (``"lora"``)."""
        return next(iter(self.params)).partition(".")[0]

    @property
    def names(self) -> list[str]:
        """The added parameters' names in the model (``"blocks.3.attn.qkv.lora.A"``)."""
        return [f"{self.target}.{name}" for name in self.params]

    @property
    def numel(self) -> int:
        """How many numbers the addition adds."""
        return sum(math.prod(shape) for shape in self.params.values())

    def shape_of(self, name: str) -> tuple[int, ...]:
        """The shape of an added parameter, by its name in the model."""
        return self.params[name.removeprefix(f"{self.target}.")]

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "kind": self.kind,
            "args": jsonable(self.args),
            "params": {name: list(shape) for name, shape in self.params.items()},
            "depth": self.depth,
            "group": self.group,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Addition:
        """The inverse of :meth:`to_dict`, strict: the one check of an adapter read from an
        untrusted file (a plan's additions, a version-1 file's ``zoo.adapters``). Besides the
        rules of the class, the data holds only the fields :meth:`to_dict` writes and the kind
        is qualified (``"plugin:name"``). Raises :class:`~zoo.PlanError`."""
        if not isinstance(data, Mapping):
            raise _malformed(f"an addition must be a mapping, got {short_repr(data)}")
        extra = sorted(str(k) for k in data if k not in _ADDITION_KEYS)
        if extra:
            raise _malformed(
                f"an addition has unknown keys {short_repr(extra[:5])}; unknown fields are "
                f"refused (it has {', '.join(sorted(_ADDITION_KEYS))})"
            )
        missing = [k for k in ("target", "kind", "params") if k not in data]
        if missing:
            raise _malformed(f"an addition lacks {missing}")
        params = data["params"]
        if not isinstance(params, Mapping):
            raise _malformed(f"an addition's params must be a mapping, got {short_repr(params)}")
        try:  # the bounds of a file, tighter than those of an addition a policy makes
            checks.name(data["kind"], "kind", qualified=True)
            bounds = {"max_depth": 4, "max_items": MAX_ADDED_ARG_VALUES, "max_text": 1000}
            checks.json_value(data.get("args", {}), "args", **bounds)
            checks.integer(data.get("depth", 0), "depth", 0, MAX_DEPTH)
            checks.text(data.get("group", ""), "group", max_len=checks.MAX_NAME, empty=True)
        except checks.Invalid as exc:
            raise _malformed(f"addition to {short_repr(data['target'], 200)}: {exc}") from None
        try:
            return cls(
                target=data["target"],
                kind=data["kind"],
                params=dict(params),
                args=data.get("args", {}),
                depth=data.get("depth", 0),
                group=data.get("group", ""),
            )
        except PlanError as exc:
            raise _malformed(str(exc)) from None


_ADDITION_KEYS = frozenset({"target", "kind", "args", "params", "depth", "group"})


def added_weight_decay(shape: tuple[int, ...]) -> bool:
    """Weight decay of an added parameter by default: matrices yes, vectors (scale, shift) no."""
    return len(shape) > 1


@dataclass(frozen=True)
class Plan:
    """Which parameters train (with lr scale and weight decay) and each norm layer's mode.

    ``params`` maps every parameter name to its :class:`ParamPlan` (in model order when the
    plan came from a table); ``norms`` maps each normalization layer's module path to its
    :class:`NormMode`. ``policy`` is the qualified policy name, ``args`` its arguments,
    ``epoch`` the epoch of a schedule policy, ``notes`` what the policy wants a user to know
    (``auto`` explains its choice there). ``table`` is the table the plan was computed from,
    kept in memory only (not serialized, not compared). Parameters a plan does not list are
    frozen when it is applied.

    ``additions`` are the adapters the plan adds (:class:`Addition`); their parameters are
    planned in ``params`` too (trainable unless a plan says otherwise), so :attr:`trainable` and
    :meth:`param_groups` include them. ``adapter_specs`` holds the adapter kinds the policy's
    catalog resolved (in memory only), so applying the plan needs no catalog.

    ``probe`` is the share of the epochs (0 to 1, 1 excluded) that first train the classifier
    head alone, on features cached at its input, before the plan's parameters train from that
    head (LP-FT, Kumar et al. 2022: the ``lp-ft`` policy, or ``probe_start=`` for any plan).
    """

    params: Mapping[str, ParamPlan]
    norms: Mapping[str, NormMode] = field(default_factory=dict)
    policy: str = ""
    args: Mapping[str, Any] = field(default_factory=dict)
    epoch: int | None = None
    notes: tuple[str, ...] = ()
    backbone: str | None = None
    additions: tuple[Addition, ...] = ()
    table: ParamTable | None = field(default=None, compare=False, repr=False)
    adapter_specs: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    probe: float = 0.0

    def __post_init__(self) -> None:
        try:
            object.__setattr__(
                self, "probe", checks.real(self.probe, "probe", 0, 1, open_high=True)
            )
        except checks.Invalid as exc:
            raise PlanError(f"Plan.probe: {exc}") from None
        params = self.params
        if isinstance(params, Mapping):
            items = list(params.values())
        elif isinstance(params, Iterable) and not isinstance(params, (str, bytes)):
            items = list(params)
        else:
            raise PlanError(f"Plan.params must map names to ParamPlan, got {type(params).__name__}")
        checked: dict[str, ParamPlan] = {}
        for item in items:
            if not isinstance(item, ParamPlan):
                raise PlanError(f"Plan.params holds {type(item).__name__}, expected zoo ParamPlan")
            if item.name in checked:
                raise PlanError(f"parameter {item.name!r} is planned twice")
            checked[item.name] = item
        additions = _checked_additions(self.additions)
        for addition in additions:
            for name, shape in zip(addition.names, addition.params.values(), strict=True):
                if name not in checked:
                    checked[name] = ParamPlan(name, True, 1.0, added_weight_decay(shape))
        object.__setattr__(self, "additions", additions)
        object.__setattr__(self, "adapter_specs", dict(self.adapter_specs))
        if isinstance(params, Mapping):
            for key, item in params.items():
                if key != item.name:
                    raise PlanError(f"Plan.params key {key!r} holds the plan of {item.name!r}")
        object.__setattr__(self, "params", checked)
        if not isinstance(self.norms, Mapping):
            raise PlanError(f"Plan.norms must map module paths to modes, got {self.norms!r}")
        object.__setattr__(
            self, "norms", {str(k): NormMode.coerce(v) for k, v in self.norms.items()}
        )
        object.__setattr__(self, "args", dict(self.args))
        object.__setattr__(self, "notes", tuple(str(n) for n in self.notes))
        if self.epoch is not None:
            object.__setattr__(self, "epoch", int(self.epoch))

    __hash__ = None  # type: ignore[assignment]  # holds dicts

    # ------------------------------------------------------------ building

    @classmethod
    def from_table(
        cls,
        table: ParamTable,
        trainable: Iterable[str],
        *,
        lr_scales: Mapping[str, float] | None = None,
        weight_decay: Mapping[str, bool] | None = None,
        norm_modes: Mapping[str, NormMode | str] | None = None,
        notes: Iterable[str] = (),
        additions: Iterable[Addition] = (),
    ) -> Plan:
        """A complete plan for ``table``: ``trainable`` names train, everything else is frozen.

        ``lr_scales`` and ``weight_decay`` override the defaults (1.0; no decay on biases,
        norms, embeddings and 1-D tensors) per parameter name. ``norm_modes`` sets modes by
        module path; a norm layer not named gets its mode from its parameters: all trained ->
        ``train``, all frozen -> ``frozen``, some -> ``frozen-stats`` (a layer without affine
        follows the parameters at its depth). ``additions`` are adapters the plan adds; their
        parameters train. Unknown names raise :class:`~zoo.PlanError`.
        """
        names = name_list(trainable, "trainable")
        lr_scales = dict(lr_scales or {})
        decay = dict(weight_decay or {})
        additions = _checked_additions(additions)
        added = {name: a.shape_of(name) for a in additions for name in a.names}
        _check_known(table, [*names, *lr_scales, *decay], "parameter", also=added)
        wanted = set(names)
        params = {
            row.name: ParamPlan(
                row.name,
                row.name in wanted,
                lr_scales.get(row.name, 1.0),
                decay.get(row.name, default_weight_decay(row)),
            )
            for row in table.rows
            if row.name not in added
        }
        for name, shape in added.items():
            params[name] = ParamPlan(
                name, True, lr_scales.get(name, 1.0), decay.get(name, added_weight_decay(shape))
            )
        modes = _derive_norm_modes(table, params, norm_modes or {})
        return cls(
            params=params,
            norms=modes,
            notes=tuple(notes),
            table=table,
            backbone=table.backbone,
            additions=additions,
        )

    def complete(self, table: ParamTable) -> Plan:
        """This plan checked against ``table`` and filled in: unlisted parameters frozen,
        unlisted norm layers given their derived mode. Raises :class:`~zoo.PlanError` for
        names the table does not have or a ``frozen`` norm whose affine trains."""
        added = set(self.added_names)
        _check_known(table, list(self.params), "parameter", also=added)
        known_norms = {n.path for n in table.norms}
        unknown = [p for p in self.norms if p not in known_norms]
        if unknown:
            raise PlanError(unknown_message("normalization layer", unknown, known_norms))
        params = {
            row.name: self.params.get(row.name)
            or ParamPlan(row.name, False, 1.0, default_weight_decay(row))
            for row in table.rows
            if row.name not in added
        }
        params.update({name: self.params[name] for name in self.added_names})
        modes = _derive_norm_modes(table, params, self.norms)
        return replace(
            self, params=params, norms=modes, table=table, backbone=self.backbone or table.backbone
        )

    # ------------------------------------------------------------ reading

    @property
    def trainable(self) -> list[str]:
        """Names of the parameters that train, in order."""
        return [name for name, p in self.params.items() if p.trainable]

    @property
    def frozen(self) -> list[str]:
        """Names of the parameters that stay frozen, in order."""
        return [name for name, p in self.params.items() if not p.trainable]

    @property
    def added_names(self) -> list[str]:
        """Names (in the model) of the parameters the plan's additions add, in order."""
        return [name for addition in self.additions for name in addition.names]

    def added_numel(self, *, trainable: bool | None = None) -> int:
        """How many numbers the additions add (all, or only the trained or frozen ones)."""
        return sum(
            math.prod(addition.params[rel])
            for addition in self.additions
            for rel, name in zip(addition.params, addition.names, strict=True)
            if trainable is None or self.params[name].trainable == trainable
        )

    def __getitem__(self, name: str) -> ParamPlan:
        try:
            return self.params[name]
        except KeyError:
            raise UnknownNameError("parameter", name, self.params) from None

    def __contains__(self, name: object) -> bool:
        return name in self.params

    def norm_mode(self, path: str) -> NormMode:
        """The mode of the norm layer at ``path`` (``train`` when the plan does not list it)."""
        return self.norms.get(path, NormMode.TRAIN)

    @property
    def spec_text(self) -> str:
        """The policy in CLI form, e.g. ``"zoo:freeze-to:depth=3"``."""

        return format_policy_spec(self.policy or "<custom>", self.args)

    def numel(self, *, trainable: bool | None = None, table: ParamTable | None = None) -> int:
        """Parameter count (all, trained or frozen), added parameters included; needs the
        table."""
        table = table if table is not None else self.table
        if table is None:
            raise PlanError("this plan carries no parameter table; pass table=zoo.params(model)")
        added = set(self.added_names)
        return sum(
            row.numel
            for row in table.rows
            if row.name not in added
            and (trainable is None or self.params.get(row.name, _FROZEN).trainable == trainable)
        ) + self.added_numel(trainable=trainable)

    def summary(self) -> str:
        """A few lines for a human: policy, what trains, norm modes, notes."""
        lines = [
            f"plan {self.spec_text}" + (f" at epoch {self.epoch}" if self.epoch is not None else "")
        ]
        n_train, n_all = len(self.trainable), len(self.params)
        if self.table is not None:
            total = self.numel()
            trained = self.numel(trainable=True)
            share = 100.0 * trained / total if total else 0.0
            lines.append(
                f"trains {trained:,} of {total:,} parameters ({share:.1f}%), "
                f"{n_train} of {n_all} tensors"
            )
            for d in self.table.depth_summary(self):
                state = (
                    "trained"
                    if d.trainable_tensors == d.tensors
                    else "frozen"
                    if d.trainable_tensors == 0
                    else "partly trained"
                )
                extra = ", ".join(f"{k} x{v}" for k, v in d.norm_modes.items())
                scale = ""
                if d.lr_scales and d.lr_scales != (1.0, 1.0):
                    lo, hi = d.lr_scales
                    scale = f", lr x{lo:.3g}" if lo == hi else f", lr x{lo:.3g}-{hi:.3g}"
                lines.append(
                    f"  {d.depth:>3} {d.group:<10} {state}{scale}"
                    + (f" (norms: {extra})" if extra else "")
                )
        else:
            lines.append(f"trains {n_train} of {n_all} tensors")
        if self.additions:
            kinds = sorted({a.kind for a in self.additions})
            lines.append(
                f"adds {self.added_numel():,} parameters in {len(self.additions)} adapters "
                f"({', '.join(kinds)})"
            )
        counts: dict[str, int] = {}
        for mode in self.norms.values():
            counts[mode.value] = counts.get(mode.value, 0) + 1
        if counts:
            lines.append("norms: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)

    # ------------------------------------------------------------ optimizer groups

    def param_groups(
        self,
        model: nn.Module,
        *,
        lr: float,
        weight_decay: float = 0.0,
        decay_norm_and_bias: bool = False,
        names: Iterable[str] | None = None,
        with_names: bool = True,
    ) -> list[dict[str, Any]]:
        """Optimizer parameter groups: only trainable parameters, lr scales applied.

        Parameters with the same (lr scale, decay) share a group, in model order. A group
        is ``{"params", "lr", "weight_decay", "lr_scale"}`` plus ``"param_names"`` when
        ``with_names`` (torch >= 2.6 keeps them in the optimizer's state dict). Biases, norms,
        embeddings and 1-D tensors get no weight decay unless ``decay_norm_and_bias``.
        ``names`` restricts the groups to those parameters (how a schedule adds new ones).
        A wrapped model (``torch.compile``, DDP) gives the parameters of the model it wraps.
        """
        named = dict(unwrap(model).named_parameters())
        only = set(names) if names is not None else None
        groups: dict[tuple[float, bool], dict[str, Any]] = {}
        for name, item in self.params.items():
            if not item.trainable or (only is not None and name not in only):
                continue
            if name not in named:
                raise PlanError(unknown_message("parameter", [name], named, where="the model"))
            decay = item.weight_decay or decay_norm_and_bias
            key = (item.lr_scale, decay and weight_decay > 0)
            group = groups.get(key)
            if group is None:
                group = groups[key] = {
                    "params": [],
                    "lr": lr * item.lr_scale,
                    "weight_decay": weight_decay if key[1] else 0.0,
                    "lr_scale": item.lr_scale,
                }
                if with_names:
                    group["param_names"] = []
            group["params"].append(named[name])
            if with_names:
                group["param_names"].append(name)
        return list(groups.values())

    # ------------------------------------------------------------ serialization

    def to_dict(self) -> dict[str, Any]:
        """A compact, JSON-ready dict: names by state, only non-default lr scales."""
        by_mode: dict[str, list[str]] = {m.value: [] for m in NormMode}
        for path, mode in self.norms.items():
            by_mode[mode.value].append(path)
        # trained names first, then frozen ones: the order from_dict rebuilds, so that
        # to_dict(from_dict(d)) == d exactly
        ordered = [self.params[n] for n in (*self.trainable, *self.frozen)]
        data = {
            "format": PLAN_FORMAT if self.additions else 1,
            "policy": self.policy,
            "args": jsonable(self.args),
            "epoch": self.epoch,
            "backbone": self.backbone,
            "notes": list(self.notes),
            "trainable": self.trainable,
            "frozen": self.frozen,
            "lr_scale": {p.name: p.lr_scale for p in ordered if p.lr_scale != 1.0},
            "no_weight_decay": [p.name for p in ordered if not p.weight_decay],
            "norms": {mode: paths for mode, paths in by_mode.items() if paths},
        }
        if self.additions:
            data["additions"] = [addition.to_dict() for addition in self.additions]
        if self.probe:
            data["probe"] = self.probe
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        """The inverse of :meth:`to_dict`; raises :class:`~zoo.PlanError` on malformed data.

        The data may come from an untrusted file, so every field must have the type
        :meth:`to_dict` writes: names are strings, lr scales finite numbers >= 0 for planned
        parameters, the epoch an integer >= 0, norm modes known ones.
        """
        try:
            checks.json_object(data, "a plan")
            version = checks.integer(data.get("format", PLAN_FORMAT), "format", 1)
        except checks.Invalid as exc:
            raise _malformed(str(exc)) from None
        if version > PLAN_FORMAT:
            raise PlanError(
                f"plan format {version} is newer than this zoo understands ({PLAN_FORMAT}); "
                "upgrade zoo"
            )
        try:
            return cls._from_dict(data)
        except checks.Invalid as exc:
            raise _malformed(str(exc)) from None
        except PlanError as exc:  # the rules of a parameter plan, an addition, a norm mode
            if str(exc).startswith("malformed plan data"):
                raise
            raise _malformed(str(exc)) from None

    @classmethod
    def _from_dict(cls, data: Mapping[str, Any]) -> Plan:
        """:meth:`from_dict` past the format, without its error wrapping."""
        order = [(n, True) for n in checks.str_list(data.get("trainable", []), "trainable")]
        order += [(n, False) for n in checks.str_list(data.get("frozen", []), "frozen")]
        for name, _ in order:
            checks.text(name, "a parameter name", max_len=None)
        planned = {name for name, _ in order}
        no_decay = set(checks.str_list(data.get("no_weight_decay", []), "no_weight_decay"))
        scales = checks.json_object(data.get("lr_scale", {}), "lr_scale")
        stray = sorted(n for n in (*scales, *no_decay) if n not in planned)
        if stray:
            raise checks.Invalid(
                "lr_scale or no_weight_decay",
                "names the plan lists",
                stray,
                f"names parameters the plan does not list: {', '.join(map(repr, stray[:5]))}",
            )
        params = [  # a list: a name planned twice is refused, not merged
            ParamPlan(name, trainable, scales.get(name, 1.0), name not in no_decay)
            for name, trainable in order
        ]
        norms: dict[str, NormMode] = {}
        for mode, paths in checks.json_object(data.get("norms", {}), "norms").items():
            for path in checks.str_list(paths, f"norms[{mode!r}]"):
                if path in norms:
                    raise checks.Invalid(
                        "norm layer", "in one mode", path, f"{path!r} has two modes"
                    )
                norms[path] = NormMode.coerce(mode)
        epoch = data.get("epoch")
        if epoch is not None:
            checks.integer(epoch, "epoch", 0)
        raw = checks.sequence(data.get("additions", []), "additions", (0, MAX_ADDITIONS))
        additions = _checked_additions([Addition.from_dict(item) for item in raw])
        missing = [n for a in additions for n in a.names if n not in planned]
        if missing:
            raise checks.Invalid(
                "added parameter",
                "listed in trainable or frozen",
                missing[0],
                f"{missing[0]!r} is not listed in trainable or frozen",
            )
        args = checks.json_object(data.get("args", {}), "args")  # checked when saved
        return cls(
            params=params,
            norms=norms,
            policy=checks.text(data.get("policy", ""), "policy", empty=True),
            args=args,
            epoch=epoch,
            notes=tuple(checks.str_list(data.get("notes", []), "notes")),
            backbone=_optional_text(data.get("backbone"), "backbone"),
            additions=additions,
            probe=checks.real(data.get("probe", 0.0), "probe", 0, 1, open_high=True),
        )

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"malformed plan JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise PlanError("malformed plan JSON: expected an object")
        return cls.from_dict(data)


_FROZEN = ParamPlan("<frozen>", False)


# ---------------------------------------------------------------- helpers


def name_list(value: Any, what: str) -> list[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise PlanError(f"{what} must be an iterable of parameter names, got {value!r}")
    out = list(value)
    bad = [v for v in out if not isinstance(v, str)]
    if bad:
        raise PlanError(f"{what} must hold parameter names (str), got {bad[0]!r}")
    return out


def unknown_message(
    kind: str, unknown: list[str], known: Iterable[str], where: str = "the table"
) -> str:
    known = list(known)
    shown = ", ".join(repr(n) for n in unknown[:5])
    more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
    message = f"{len(unknown)} unknown {kind} name(s) not in {where}: {shown}{more}"
    close = suggest(unknown[0], known, n=3)
    if close:
        message += f" (did you mean {', '.join(repr(c) for c in close)}?)"
    return message


def _check_known(table: ParamTable, names: list[str], kind: str, also: Iterable[str] = ()) -> None:
    extra = set(also)
    unknown = [n for n in dict.fromkeys(names) if n not in table and n not in extra]
    if unknown:
        raise PlanError(unknown_message(kind, unknown, table.names))


def derive_norm_mode(
    norm: NormInfo, params: Mapping[str, ParamPlan], table: ParamTable
) -> NormMode:
    """A norm layer's mode from its parameters (see :meth:`Plan.from_table`)."""
    if norm.params:
        flags = [params[p].trainable for p in norm.params if p in params]
    else:
        flags = [
            any(params[r.name].trainable for r in table.at_depth(norm.depth) if r.name in params)
        ]
    if flags and all(flags):
        return NormMode.TRAIN
    if not any(flags):
        return NormMode.FROZEN
    return NormMode.FROZEN_STATS


def _derive_norm_modes(
    table: ParamTable, params: Mapping[str, ParamPlan], given: Mapping[str, NormMode | str]
) -> dict[str, NormMode]:
    known = {n.path for n in table.norms}
    unknown = [p for p in given if p not in known]
    if unknown:
        raise PlanError(unknown_message("normalization layer", unknown, known))
    modes: dict[str, NormMode] = {}
    for norm in table.norms:
        if norm.path in given:
            mode = NormMode.coerce(given[norm.path])
            if mode is NormMode.FROZEN:
                training = [p for p in norm.params if p in params and params[p].trainable]
                if training:
                    raise PlanError(
                        f"norm layer {norm.path!r} is planned 'frozen' but its parameter "
                        f"{training[0]!r} trains; use 'frozen-stats' to train the affine with "
                        "fixed statistics"
                    )
        else:
            mode = derive_norm_mode(norm, params, table)
        modes[norm.path] = mode
    return modes


def _checked_additions(value: Any) -> tuple[Addition, ...]:
    """``value`` as a tuple of Additions: at most :data:`MAX_ADDITIONS`, no two on the same
    module child, no kind twice on one target."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise PlanError(f"additions must be a sequence of zoo.Addition, got {short_repr(value)}")
    out = tuple(value)
    if len(out) > MAX_ADDITIONS:
        raise PlanError(f"a plan adds at most {MAX_ADDITIONS} adapters, got {len(out)}")
    children: set[tuple[str, str]] = set()
    kinds: set[tuple[str, str]] = set()
    for item in out:
        if not isinstance(item, Addition):
            raise PlanError(f"additions hold {type(item).__name__}, expected zoo.Addition")
        if (item.target, item.child) in children:
            raise PlanError(f"two additions put a {item.child!r} module into {item.target!r}")
        if (item.target, item.kind) in kinds:
            raise PlanError(f"{item.kind} is listed twice on target {item.target!r}")
        children.add((item.target, item.child))
        kinds.add((item.target, item.kind))
    return out


def _malformed(problem: str) -> PlanError:
    return PlanError(f"malformed plan data: {problem}")


def _optional_text(value: Any, what: str) -> str | None:
    return None if value is None else checks.text(value, what)


def jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
