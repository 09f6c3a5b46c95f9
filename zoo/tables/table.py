"""The uniform parameter dictionary: one row per parameter, the same form for every model.

A :class:`ParamTable` is plain data: rows of :class:`ParamInfo` in module order, the
normalization layers as :class:`NormInfo`, per-depth totals (of the table, or of a plan on it:
:meth:`ParamTable.depth_summary`), and JSON. Policies read it and
never touch the model. :func:`params` builds one from a model or a backbone name (on the
``meta`` device: no weights allocated, nothing downloaded); building lives in
:mod:`zoo.tables.build`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from zoo.errors import UnknownNameError

ROLES = ("weight", "bias", "norm", "embedding", "head", "adapter")


@dataclass(frozen=True)
class ParamInfo:
    """One parameter of a model, described uniformly."""

    name: str
    module: str
    module_type: str
    role: str
    shape: tuple[int, ...]
    numel: int
    dtype: str
    group: str
    depth: int
    trainable: bool = True

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["shape"] = list(self.shape)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParamInfo:
        return cls(**{**data, "shape": tuple(int(v) for v in data["shape"])})


@dataclass(frozen=True)
class NormInfo:
    """One normalization layer: its path, type, depth and whether it tracks running stats."""

    path: str
    type: str
    depth: int
    group: str
    tracks_running_stats: bool
    params: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["params"] = list(self.params)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NormInfo:
        return cls(**{**data, "params": tuple(data.get("params", ()))})


@dataclass(frozen=True)
class DepthSummary:
    """Totals of one depth (one group) of a table, or of a plan on it (what ``zoo show`` and
    ``zoo plan`` show per line): parameters, what trains, norm layers; with a plan also the
    norm layers by mode, the lr scales of what trains (lowest, highest) and the parameters its
    adapters add (included in ``tensors`` and ``numel``; without a plan: the table's adapter
    rows)."""

    depth: int
    group: str
    tensors: int
    numel: int
    trainable_numel: int
    norms: int
    trainable_tensors: int = 0
    norm_modes: dict[str, int] = field(default_factory=dict)
    lr_scales: tuple[float, float] | None = None
    added_tensors: int = 0
    added_numel: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["lr_scale"] = list(data.pop("lr_scales") or ()) or None
        return data


@dataclass(frozen=True)
class ParamTable:
    """Every parameter of a model, in module order, with its group and depth."""

    rows: tuple[ParamInfo, ...]
    norms: tuple[NormInfo, ...] = ()
    backbone: str | None = None
    model_type: str = ""
    grouped_by: str = ""
    notes: tuple[str, ...] = ()
    _index: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", tuple(self.rows))
        object.__setattr__(self, "norms", tuple(self.norms))
        object.__setattr__(self, "notes", tuple(self.notes))
        self._index.update({row.name: i for i, row in enumerate(self.rows)})

    # ------------------------------------------------------------ access

    def __iter__(self) -> Iterator[ParamInfo]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __getitem__(self, name: str) -> ParamInfo:
        try:
            return self.rows[self._index[name]]
        except KeyError:
            raise UnknownNameError("parameter", name, self._index) from None

    @property
    def names(self) -> list[str]:
        return [row.name for row in self.rows]

    @property
    def max_depth(self) -> int:
        return max((row.depth for row in self.rows), default=0)

    @property
    def groups(self) -> list[str]:
        """Group names in depth order (stem first, head last)."""
        seen: dict[int, str] = {}
        for row in self.rows:
            seen.setdefault(row.depth, row.group)
        return [seen[d] for d in sorted(seen)]

    @property
    def total_numel(self) -> int:
        return sum(row.numel for row in self.rows)

    @property
    def trainable_numel(self) -> int:
        return sum(row.numel for row in self.rows if row.trainable)

    def at_depth(self, depth: int) -> list[ParamInfo]:
        return [row for row in self.rows if row.depth == depth]

    def in_group(self, group: str) -> list[ParamInfo]:
        return [row for row in self.rows if row.group == group]

    def with_role(self, *roles: str) -> list[ParamInfo]:
        return [row for row in self.rows if row.role in roles]

    def head(self) -> list[ParamInfo]:
        """The rows of the head: the parameters at ``max_depth``, when that group is the head.

        Empty when the model has no head parameters (a classifier removed with
        ``num_classes=0``): then the deepest group is a body stage, not a head.
        """
        rows = self.at_depth(self.max_depth)
        if any(r.group == "head" or r.role == "head" for r in rows):
            return rows
        return []

    @property
    def depths(self) -> list[int]:
        """The depths present, in order (``0`` … ``max_depth``)."""
        return sorted({row.depth for row in self.rows})

    def depth_summary(self, plan: Any = None) -> list[DepthSummary]:
        """One :class:`DepthSummary` per depth, in depth order: of this table (its
        ``trainable`` column), or of ``plan`` (a :class:`~zoo.Plan`) applied to it: what the
        plan trains, at which lr scales, its norm modes and the parameters its adapters add."""
        rows_at: dict[int, list[ParamInfo]] = {}
        for row in self.rows:
            rows_at.setdefault(row.depth, []).append(row)
        norms_at: dict[int, list[NormInfo]] = {}
        for norm in self.norms:
            norms_at.setdefault(norm.depth, []).append(norm)
        added = set(plan.added_names) if plan is not None else set()
        out = []
        for depth, rows in sorted(rows_at.items()):
            norms = norms_at.get(depth, [])
            if plan is None:  # (numel, trains, lr scale, added)
                members = [(r.numel, r.trainable, None, r.role == "adapter") for r in rows]
                modes: dict[str, int] = {}
            else:
                members = [
                    (r.numel, *_planned(plan, r.name), False) for r in rows if r.name not in added
                ]
                members += [
                    (math.prod(a.shape_of(name)), *_planned(plan, name), True)
                    for a in plan.additions
                    if a.depth == depth
                    for name in a.names
                ]
                modes = {}
                for norm in norms:
                    mode = plan.norm_mode(norm.path).value
                    modes[mode] = modes.get(mode, 0) + 1
            trained = [m for m in members if m[1]]
            scales = [m[2] for m in trained if m[2] is not None]
            out.append(
                DepthSummary(
                    depth=depth,
                    group=rows[0].group,
                    tensors=len(members),
                    numel=sum(m[0] for m in members),
                    trainable_numel=sum(m[0] for m in trained),
                    norms=len(norms),
                    trainable_tensors=len(trained),
                    norm_modes=modes,
                    lr_scales=(min(scales), max(scales)) if scales else None,
                    added_tensors=sum(1 for m in members if m[3]),
                    added_numel=sum(m[0] for m in members if m[3]),
                )
            )
        return out

    def with_trainable(self, trainable: Sequence[str] | set[str]) -> ParamTable:
        """A copy whose ``trainable`` column says which of ``trainable`` names train."""
        wanted = set(trainable)
        return replace(self, rows=tuple(replace(r, trainable=r.name in wanted) for r in self.rows))

    # ------------------------------------------------------------ serialization

    def to_dict(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone,
            "model_type": self.model_type,
            "grouped_by": self.grouped_by,
            "notes": list(self.notes),
            "max_depth": self.max_depth,
            "total_numel": self.total_numel,
            "trainable_numel": self.trainable_numel,
            "depths": [s.to_dict() for s in self.depth_summary()],
            "rows": [row.to_dict() for row in self.rows],
            "norms": [norm.to_dict() for norm in self.norms],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParamTable:
        return cls(
            rows=tuple(ParamInfo.from_dict(r) for r in data["rows"]),
            norms=tuple(NormInfo.from_dict(n) for n in data.get("norms", ())),
            backbone=data.get("backbone"),
            model_type=data.get("model_type", ""),
            grouped_by=data.get("grouped_by", ""),
            notes=tuple(data.get("notes", ())),
        )

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> ParamTable:
        return cls.from_dict(json.loads(text))

    # ------------------------------------------------------------ rendering: the one edge
    # A data module imports nothing above its floor, except here: printed, in a notebook or by
    # rich, a table shows what ``zoo show`` shows (its header and per-depth table), drawn by the
    # CLI's one renderer, zoo.cli.render_params. That import, and rich's, happen inside these
    # methods only, when a table is shown, so ``import zoo`` loads neither; the layers contract
    # in pyproject.toml names this one upward import.

    def __rich__(self) -> Any:
        """The table as ``zoo show`` prints it (a rich renderable: ``rich.print(table)``)."""
        from rich.console import Group

        from zoo.cli.render_params import depth_table, header

        return Group(header(self), depth_table(self.depth_summary()))

    def __str__(self) -> str:
        """The table as ``zoo show`` prints it, as plain text (``print(table)``), laid out for
        the terminal's width (``COLUMNS``; 100 when there is none)."""
        import shutil

        return self._rendered(width=shutil.get_terminal_size((100, 24)).columns, html=False)

    def _repr_html_(self) -> str:
        """The table as ``zoo show`` prints it, as HTML, for Jupyter."""
        return self._rendered(width=100, html=True)

    def _rendered(self, *, width: int, html: bool) -> str:
        from io import StringIO

        from rich.console import Console

        console = Console(
            file=StringIO(),
            width=width,
            record=html,
            color_system=None if not html else "auto",
            force_terminal=html,
            highlight=False,
        )
        console.print(self)
        if html:
            return console.export_html(inline_styles=True, code_format="<pre>{code}</pre>")
        return console.file.getvalue().rstrip("\n")


def _planned(plan: Any, name: str) -> tuple[bool, float]:
    """Whether ``plan`` trains parameter ``name``, and at which lr scale (unlisted: frozen)."""
    item = plan.params.get(name)
    return (bool(item and item.trainable), item.lr_scale if item else 1.0)
