"""The ``zoo.*`` metadata of a saved model: what each key holds, building it, parsing it back.

Every value in a safetensors ``__metadata__`` is a string. zoo writes plain strings for scalars
(``zoo.kind = "full"``) and JSON text for structures (``zoo.classes = '["cat", "dog"]'``).
:class:`ZooMetadata` is the typed view. Everything in a file's metadata is untrusted input (the
seal is two public hashes: anyone can edit and re-seal), so :meth:`ZooMetadata.parse` checks
every key's type *and range* and raises :class:`~zoo.CorruptFileError` naming the file and the
key: numbers are finite and bounded however they are spelled (``1e999``, a 400-digit integer,
``NaN``), text is valid Unicode (no lone surrogate, even one written as a JSON escape), names
and class names hold no control characters, the input config is one :class:`~zoo.InputConfig`
accepts and the plan one :meth:`~zoo.Plan.from_dict` accepts. Writing runs the same checks
(:meth:`ZooMetadata.to_metadata`), so zoo never writes a file it would refuse to read.
``docs/file-format.md`` documents each key and the versioning promise: readers accept every
file whose ``zoo.format_version`` is not newer than theirs and ignore keys they do not know. The
functions at the end gather what a save records from the model and the plugins: plugin
versions, ``zoo_extra_metadata`` entries, the timm-style config.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from zoo.core import checks
from zoo.core.specs import InputConfig
from zoo.errors import CorruptFileError, UnsupportedFormatError, ZooError, short_repr
from zoo.plans.plan import Addition, Plan

#: Version of the metadata layout; bumped only for changes an older reader would misread.
FORMAT_VERSION = 1
KINDS = ("full", "delta")
BASE_KINDS = ("file", "store", "pretrained")
#: The most classes a head may have (``zoo.num_classes``, ``zoo.build``, ``zoo.classes``).
MAX_CLASSES = 10_000_000

#: Every core key and what it holds (the reference ``docs/file-format.md`` is checked against).
KEYS: dict[str, str] = {
    "format": 'always "pt" (safetensors convention: the tensors are PyTorch tensors)',
    "zoo.format_version": "integer, version of this layout (currently 1)",
    "zoo.kind": '"full" (every tensor) or "delta" (only what changed from a base)',
    "zoo.backbone": 'qualified backbone name, "plugin:name"',
    "zoo.build": "JSON object: backbone, tag, num_classes, kwargs — the zoo.create arguments",
    "zoo.num_classes": "JSON integer or null: outputs of the classifier head",
    "zoo.classes": "JSON list of class names (index order) or null",
    "zoo.input_config": "JSON object: input_size, mean, std, interpolation, crop_pct, crop_mode",
    "zoo.policy": 'qualified freeze-policy name, "" when no policy was applied',
    "zoo.policy_args": "JSON object: the policy's arguments",
    "zoo.plan": "JSON object (zoo.Plan.to_dict()) or null",
    "zoo.trained": "JSON list: names of the trained parameters",
    "zoo.num_params": "integer: parameters of the model",
    "zoo.num_trained_params": "integer: parameters that were trained",
    "zoo.base": 'JSON object {"kind", "ref", "sha256"} or null: the weights training started from',
    "zoo.base_tensors": "delta only — JSON list: tensors taken unchanged from the base",
    "zoo.state_sha256": "delta only — canonical sha256 of the complete state (base + delta)",
    "zoo.version": "version of zoo that wrote the file",
    "zoo.plugins": "JSON object: plugin name -> version, for the backbone's and policy's plugins",
    "zoo.created": "creation time, ISO 8601 in UTC",
    "zoo.timm_config": "JSON object: the timm-style config.json of the model",
    "zoo.training": "optional — JSON object: how zoo.adapt trained (epochs, epochs_run, "
    "best_epoch, early_stop, stopped_early, resumed_from)",
    "zoo.adapters": "optional — JSON list: the adapters injected in the model (target, kind, "
    "args, params, depth), which zoo.load injects again",
    "zoo.compare": "optional — JSON object: the leaderboard of zoo.compare (winner, epochs, "
    "rungs, budget, budget_cut, seconds, candidates, notes)",
    "zoo.tensors_sha256": "canonical sha256 of the tensors in this file",
    "zoo.content_sha256": "sha256 of zoo.tensors_sha256 and every other metadata entry",
}

_REQUIRED = (
    "zoo.format_version",
    "zoo.kind",
    "zoo.backbone",
    "zoo.build",
    "zoo.tensors_sha256",
    "zoo.content_sha256",
)
#: The keys whose values are JSON text.
_JSON_KEYS = frozenset(
    {
        "zoo.build",
        "zoo.num_classes",
        "zoo.classes",
        "zoo.input_config",
        "zoo.policy_args",
        "zoo.plan",
        "zoo.trained",
        "zoo.base",
        "zoo.base_tensors",
        "zoo.plugins",
        "zoo.timm_config",
        "zoo.training",
        "zoo.compare",
        "zoo.adapters",
    }
)
#: What to change when a save is refused because of a key's value.
_SAVE_HINTS = {
    "zoo.build": "the model's architecture arguments (zoo.create keyword arguments) must be "
    "JSON values of valid text",
    "zoo.classes": "pass class names that are valid text without control characters "
    "(classes=[...] or model.zoo.classes)",
    "zoo.input_config": "give the model a valid input config (model.zoo.input_config, a "
    "zoo.InputConfig)",
    "zoo.policy": "name the plan's policy with text without control characters",
    "zoo.policy_args": "use policy arguments that are finite numbers, valid text, lists or "
    "dicts of them",
    "zoo.plan": "use a plan whose arguments, names and lr scales are finite numbers and valid text",
}
_SAVE_HINT = "this value came from the backbone's or a plugin's data; report it to its author"
_SAVING = "cannot save the model"


def is_zoo_metadata(metadata: Mapping[str, str]) -> bool:
    """True when a file's metadata was written by zoo (it carries ``zoo.format_version``)."""
    return "zoo.format_version" in metadata


@dataclass(frozen=True)
class ZooMetadata:
    """The typed content of a zoo-written file's metadata."""

    format_version: int
    kind: str
    backbone: str
    build: dict[str, Any]
    num_classes: int | None = None
    classes: list[str] | None = None
    input_config: dict[str, Any] = field(default_factory=dict)
    policy: str = ""
    policy_args: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] | None = None
    trained: list[str] = field(default_factory=list)
    num_params: int = 0
    num_trained_params: int = 0
    base: dict[str, Any] | None = None
    base_tensors: list[str] = field(default_factory=list)
    state_sha256: str | None = None
    zoo_version: str = ""
    plugins: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    timm_config: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    compare: dict[str, Any] | None = None
    adapters: list[dict[str, Any]] = field(default_factory=list)
    tensors_sha256: str = ""
    content_sha256: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def trained_fraction(self) -> float:
        return self.num_trained_params / self.num_params if self.num_params else 0.0

    # ------------------------------------------------------------ writing

    def to_metadata(self) -> dict[str, str]:
        """The ``__metadata__`` map (without the seal, which the writer adds).

        Raises :class:`~zoo.ZooError` naming the key and what to change, before anything is
        written, for a value a reader would refuse (:meth:`parse`): a non-finite number, text
        that is not valid Unicode (a lone surrogate cannot be encoded as UTF-8), a class name
        with a control character, an input config out of range.
        """
        md = {
            "format": "pt",
            "zoo.format_version": str(self.format_version),
            "zoo.kind": self.kind,
            "zoo.backbone": self.backbone,
            "zoo.build": _dumps("zoo.build", self.build),
            "zoo.num_classes": _dumps("zoo.num_classes", self.num_classes),
            "zoo.classes": _dumps("zoo.classes", self.classes),
            "zoo.input_config": _dumps("zoo.input_config", self.input_config),
            "zoo.policy": self.policy,
            "zoo.policy_args": _dumps("zoo.policy_args", self.policy_args),
            "zoo.plan": _dumps("zoo.plan", self.plan),
            "zoo.trained": _dumps("zoo.trained", self.trained),
            "zoo.num_params": str(self.num_params),
            "zoo.num_trained_params": str(self.num_trained_params),
            "zoo.base": _dumps("zoo.base", self.base),
            "zoo.version": self.zoo_version,
            "zoo.plugins": _dumps("zoo.plugins", self.plugins),
            "zoo.created": self.created,
            "zoo.timm_config": _dumps("zoo.timm_config", self.timm_config),
        }
        if self.training is not None:  # optional: absent from files not made by adapt
            md["zoo.training"] = _dumps("zoo.training", self.training)
        if self.compare is not None:  # optional: only the winner of zoo.compare has it
            md["zoo.compare"] = _dumps("zoo.compare", self.compare)
        if self.adapters:  # optional: only a model with injected adapters has it
            md["zoo.adapters"] = _dumps("zoo.adapters", self.adapters)
        if self.kind == "delta":
            md["zoo.base_tensors"] = _dumps("zoo.base_tensors", self.base_tensors)
            md["zoo.state_sha256"] = self.state_sha256 or ""
        for key, value in self.extra.items():
            md.setdefault(key, value)
        _check_writable(md)
        return md

    # ------------------------------------------------------------ reading

    @classmethod
    def parse(cls, metadata: Mapping[str, str], *, source: str) -> ZooMetadata:
        """Check and convert a zoo file's metadata; :class:`~zoo.CorruptFileError` names the key.

        Every value is checked against its documented type and range (see the module's
        docstring); nothing else is ever raised for any content of ``metadata``.
        """
        return cls._read(_Reader(metadata, source))

    @classmethod
    def _read(cls, reader: _Reader) -> ZooMetadata:
        metadata = reader.md
        if not is_zoo_metadata(metadata):
            raise CorruptFileError(
                f"{reader.source}: not a zoo model file (no zoo.format_version in its "
                "metadata); plain safetensors weights load with zoo.create(name, weights=FILE)"
            )
        reader.check_strings()
        version = reader.integer("zoo.format_version")
        if version > FORMAT_VERSION:
            raise UnsupportedFormatError(
                f"{reader.source}: written with zoo file format {version}, but this zoo reads "
                f"up to format {FORMAT_VERSION}; upgrade zoo (pip install -U zoo-transfer)"
            )
        if version < 1:
            raise reader.bad("zoo.format_version", f"must be >= 1, got {version}")
        for key in _REQUIRED:
            reader.require(key)
        if metadata.get("format", "pt") != "pt":
            raise reader.bad("format", f'must be "pt", got {metadata["format"]!r}')
        kind = reader.choice("zoo.kind", KINDS)
        build = reader.obj("zoo.build")
        backbone = reader.name("zoo.backbone", qualified=True)
        _check_build(build, backbone, reader)
        base = reader.optional_obj("zoo.base")
        if base is not None:
            _check_base(base, reader, need_hash=kind == "delta")
        elif kind == "delta":
            raise reader.bad("zoo.base", "a delta needs its base reference")
        num_params = reader.integer("zoo.num_params", default=0)
        num_trained_params = reader.integer("zoo.num_trained_params", default=0)
        if num_trained_params > num_params:
            raise reader.bad(
                "zoo.num_trained_params",
                f"{num_trained_params} is more than zoo.num_params ({num_params})",
            )
        return cls(
            format_version=version,
            kind=kind,
            backbone=backbone,
            build=build,
            num_classes=reader.optional_int("zoo.num_classes", MAX_CLASSES),
            classes=reader.classes("zoo.classes"),
            input_config=reader.input_config("zoo.input_config"),
            policy=reader.name("zoo.policy", default=""),
            policy_args=reader.obj("zoo.policy_args", default={}),
            plan=reader.plan("zoo.plan"),
            trained=reader.str_list("zoo.trained", default=[]),
            num_params=num_params,
            num_trained_params=num_trained_params,
            base=base,
            base_tensors=reader.str_list("zoo.base_tensors", default=[]),
            state_sha256=reader.hex_hash("zoo.state_sha256") if kind == "delta" else None,
            zoo_version=reader.name("zoo.version", default=""),
            plugins=reader.plugins("zoo.plugins"),
            created=reader.created("zoo.created"),
            timm_config=reader.optional_obj("zoo.timm_config"),
            training=reader.optional_obj("zoo.training"),
            compare=reader.leaderboard("zoo.compare"),
            adapters=reader.adapters("zoo.adapters"),
            tensors_sha256=reader.hex_hash("zoo.tensors_sha256"),
            content_sha256=reader.hex_hash("zoo.content_sha256"),
            extra={k: v for k, v in metadata.items() if k not in KEYS},
        )

    def summary(self) -> dict[str, Any]:
        """A JSON-ready dict of everything but the plan and the timm config."""
        return {
            "format_version": self.format_version,
            "kind": self.kind,
            "backbone": self.backbone,
            "build": self.build,
            "num_classes": self.num_classes,
            "classes": self.classes,
            "input_config": self.input_config,
            "policy": self.policy or None,
            "policy_args": self.policy_args,
            "trained": self.trained,
            "num_params": self.num_params,
            "num_trained_params": self.num_trained_params,
            "trained_fraction": self.trained_fraction,
            "base": self.base,
            "zoo_version": self.zoo_version,
            "plugins": self.plugins,
            "created": self.created,
            "training": self.training,
            "compare": self.compare,
            "adapters": self.adapters,
            "tensors_sha256": self.tensors_sha256,
            "content_sha256": self.content_sha256,
            "extra": self.extra,
        }


# ---------------------------------------------------------------- writing helpers


def _dumps(key: str, value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, sort_keys=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ZooError(
            f"{_SAVING}: metadata {key!r} cannot be written as JSON ({exc}); "
            f"{_SAVE_HINTS.get(key, _SAVE_HINT)}"
        ) from None


def _check_writable(md: Mapping[str, str]) -> None:
    """Refuse to write what :meth:`ZooMetadata.parse` would refuse to read."""
    reader = _Reader(
        {**md, "zoo.tensors_sha256": "0" * 64, "zoo.content_sha256": "0" * 64}, _SAVING
    )
    try:
        ZooMetadata._read(reader)
    except CorruptFileError as exc:
        hint = _SAVE_HINTS.get(reader.failed or "", _SAVE_HINT)
        raise ZooError(f"{exc}; {hint}") from None


# ---------------------------------------------------------------- reading helpers


def _check_build(build: dict[str, Any], backbone: str, reader: _Reader) -> None:
    if build.get("backbone") != backbone:
        raise reader.bad(
            "zoo.build",
            f"names backbone {short_repr(build.get('backbone'))}, zoo.backbone says {backbone!r}",
        )
    with reader.about("zoo.build"):
        checks.json_object(build.get("kwargs", {}), "kwargs")
        if build.get("num_classes") is not None:
            checks.integer(build["num_classes"], "num_classes", 0, MAX_CLASSES)
        if build.get("tag") is not None:
            checks.name(build["tag"], "tag")


def _check_base(base: dict[str, Any], reader: _Reader, *, need_hash: bool) -> None:
    with reader.about("zoo.base"):
        checks.choice(base.get("kind"), "kind", BASE_KINDS)
        checks.text(base.get("ref"), "ref", max_len=None)
        if base.get("sha256") is not None or need_hash:
            checks.sha256_hex(base.get("sha256"), "sha256")


class _Reader:
    """Typed access to metadata values, with errors that name the file and the key."""

    def __init__(self, metadata: Mapping[str, str], source: str) -> None:
        self.md = metadata
        self.source = source
        self.failed: str | None = None  # the key of the last error made by bad()

    def bad(self, key: str, problem: str) -> CorruptFileError:
        self.failed = key
        return CorruptFileError(f"{self.source}: metadata {key!r} is invalid: {problem}")

    @contextmanager
    def about(self, key: str) -> Iterator[None]:
        """The checks of ``key``'s value: a value refused (:class:`~zoo.core.checks.Invalid`,
        or the ``ValueError`` of a data check such as :meth:`~zoo.Plan.from_dict`) becomes the
        :class:`~zoo.CorruptFileError` naming the file and the key."""
        try:
            yield
        except ValueError as exc:
            raise self.bad(key, str(exc)) from None

    def require(self, key: str) -> None:
        if key not in self.md:
            self.failed = key
            raise CorruptFileError(f"{self.source}: metadata {key!r} is missing")

    def check_strings(self) -> None:
        """Every key and plain value is a string of valid Unicode (JSON values: see json)."""
        for key, value in self.md.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise self.bad(
                    short_repr(key),
                    f"keys and values must be strings, got "
                    f"{type(key).__name__} -> {type(value).__name__}",
                )
            with self.about(key):
                checks.unicode(key, "")
                if key not in _JSON_KEYS:
                    checks.unicode(value, "")

    def text(self, key: str) -> str:
        self.require(key)
        value = self.md[key]
        if not value:
            raise self.bad(key, "empty")
        return value

    def name(self, key: str, *, qualified: bool = False, default: str | None = None) -> str:
        """A one-line name: no control characters, at most :data:`~zoo.core.checks.MAX_NAME`
        characters."""
        if default is not None and not self.md.get(key):
            return default
        value = self.text(key)
        with self.about(key):
            return checks.name(value, "", qualified=qualified)

    def choice(self, key: str, options: tuple[str, ...]) -> str:
        value = self.text(key)
        if value not in options:
            raise self.bad(key, f"{short_repr(value)} is not one of {', '.join(options)}")
        return value

    def integer(self, key: str, default: int | None = None) -> int:
        if key not in self.md and default is not None:
            return default
        value = self.text(key)
        if not re.fullmatch(r"[0-9]{1,18}", value):
            raise self.bad(key, f"expected a non-negative integer, got {short_repr(value)}")
        return int(value)

    def hex_hash(self, key: str) -> str:
        value = self.text(key)
        with self.about(key):
            return checks.sha256_hex(value, "")

    def json(self, key: str, default: Any = None) -> Any:
        if key not in self.md:
            return default
        with self.about(key):
            return checks.loads(self.md[key])

    def obj(self, key: str, default: dict[str, Any] | None = None) -> dict[str, Any]:
        if key not in self.md and default is not None:
            return dict(default)
        self.require(key)
        value = self.json(key)
        with self.about(key):
            return checks.json_object(value, "the value")

    def optional_obj(self, key: str) -> dict[str, Any] | None:
        value = self.json(key)
        with self.about(key):
            return None if value is None else checks.json_object(value, "the value")

    def optional_int(self, key: str, maximum: int) -> int | None:
        value = self.json(key)
        if value is not None and not (checks.is_int(value) and 0 <= value <= maximum):
            raise self.bad(
                key,
                f"expected a non-negative integer (at most {maximum}) or null, "
                f"got {short_repr(value)}",
            )
        return value

    def str_list(self, key: str, default: list[str]) -> list[str]:
        value = self.json(key, default)
        with self.about(key):
            return checks.str_list(value, "the value")

    def classes(self, key: str) -> list[str] | None:
        value = self.json(key)
        if value is None:
            return None
        with self.about(key):
            checks.str_list(value, "the value", max_items=MAX_CLASSES)
            for index, name in enumerate(value):
                checks.text(
                    name, f"class name {index} {short_repr(name)}", max_len=None, empty=True
                )
        return value

    def input_config(self, key: str) -> dict[str, Any]:
        value = self.obj(key, default={})
        with self.about(key):  # SpecError, from the one check of input configs
            InputConfig.from_dict(value)
        return value

    def plan(self, key: str) -> dict[str, Any] | None:
        value = self.optional_obj(key)
        if value is not None:
            with self.about(key):  # PlanError
                Plan.from_dict(value)
        return value

    def plugins(self, key: str) -> dict[str, Any]:
        value = self.obj(key, default={})
        for plugin, version in value.items():
            try:
                checks.name(plugin, "")
                if version not in (None, ""):
                    checks.name(version, "")
            except checks.Invalid:
                raise self.bad(
                    key,
                    f"expected plugin name -> version (a string or null), got "
                    f"{short_repr(plugin)}: {short_repr(version)}",
                ) from None
        return value

    def leaderboard(self, key: str) -> dict[str, Any] | None:
        """A ``zoo.compare`` leaderboard, checked field by field (unknown fields dropped)."""
        value = self.optional_obj(key)
        with self.about(key):
            return None if value is None else check_leaderboard(value)

    def adapters(self, key: str) -> list[dict[str, Any]]:
        """The injected adapters (``zoo.adapters``), each checked for type and size."""
        value = self.json(key, [])
        with self.about(key):
            return check_adapters(value)

    def created(self, key: str) -> str:
        value = self.md.get(key, "")
        if value:
            try:
                _dt.datetime.fromisoformat(value)
            except ValueError:
                raise self.bad(key, f"expected an ISO 8601 time, got {short_repr(value)}") from None
        return value


# ---------------------------------------------------------------- zoo.compare

#: Most candidates, notes and rungs a ``zoo.compare`` leaderboard may hold.
MAX_LEADERBOARD_ROWS = 256
_MAX_EPOCHS = 1_000_000
_MAX_SECONDS = 1e9


def _check_row(row: Any, index: int) -> dict[str, Any]:
    where = f"candidate {index}"
    checks.json_object(row, where)
    try:
        loss = row["val_loss"]
        checked = {
            "policy": checks.text(row["policy"], f"{where} policy"),
            "val_acc": checks.real(row["val_acc"], f"{where} val_acc", 0, 1),
            "val_loss": None if loss is None else checks.real(loss, f"{where} val_loss", 0, 1e12),
            "trainable_params": checks.integer(
                row["trainable_params"], f"{where} trainable_params", 0, checks.MAX_INT
            ),
            "trainable_percent": checks.real(
                row["trainable_percent"], f"{where} trainable_percent", 0, 100
            ),
            "epochs": checks.integer(row["epochs"], f"{where} epochs", 0, _MAX_EPOCHS),
            "seconds": checks.real(row["seconds"], f"{where} seconds", 0, _MAX_SECONDS),
            "stopped_early": checks.flag(row["stopped_early"], f"{where} stopped_early"),
            "trained_on": checks.text(row.get("trained_on", "images"), f"{where} trained_on"),
        }
    except KeyError as exc:
        raise ValueError(f"{where} has no {exc.args[0]!r}") from None
    return checked


def check_leaderboard(value: dict[str, Any]) -> dict[str, Any]:
    """The ``zoo.compare`` object with every field checked for type and range (finite numbers,
    bounded sizes, texts without control characters, the winner one of the candidates);
    unknown fields are dropped. Raises ``ValueError`` saying what is wrong."""
    rows = checks.sequence(value.get("candidates"), "candidates", (1, MAX_LEADERBOARD_ROWS))
    candidates = [_check_row(row, i) for i, row in enumerate(rows)]
    winner = checks.text(value.get("winner"), "winner")
    if winner != candidates[0]["policy"]:
        raise ValueError(f"winner {short_repr(winner)} is not the first candidate")
    budget = value.get("budget")
    notes = checks.sequence(value.get("notes", []), "notes", (0, MAX_LEADERBOARD_ROWS))
    return {
        "winner": winner,
        "epochs": checks.integer(value.get("epochs"), "epochs", 1, _MAX_EPOCHS),
        "rungs": checks.int_list(
            value.get("rungs", []), "rungs", size=(0, 64), low=1, high=_MAX_EPOCHS
        ),
        "budget": None if budget is None else checks.real(budget, "budget", 0, _MAX_SECONDS),
        "budget_cut": checks.flag(value.get("budget_cut", False), "budget_cut"),
        "seconds": checks.real(value.get("seconds", 0.0), "seconds", 0, _MAX_SECONDS),
        "candidates": candidates,
        "notes": [checks.text(n, "note") for n in notes],
    }


# ---------------------------------------------------------------- zoo.adapters

#: The most adapters a file may list, parameters one adapter may add, and dimensions per shape.
MAX_ADAPTERS = 10_000
MAX_ADAPTER_PARAMS = 16
MAX_ADAPTER_DIMS = 8
#: The largest dimension of an added parameter (the file's tensors must also match it).
MAX_ADAPTER_DIM = 2**31 - 1
#: Longest module path of a target, and most values in an adapter's ``args``.
MAX_TARGET_LENGTH = 1000
MAX_ADAPTER_ARG_VALUES = 1000
_QUALIFIED = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*:[A-Za-z0-9_][A-Za-z0-9_.+-]*")


def _check_adapter(item: Any, index: int) -> dict[str, Any]:
    where = f"adapter {index}"
    checks.json_object(item, where)
    unknown = sorted(set(item) - {"target", "kind", "args", "params", "depth", "group"})
    if unknown:
        raise ValueError(f"{where} has unknown field(s) {short_repr(unknown)}")
    target = checks.module_path(item.get("target"), f"{where} target", MAX_TARGET_LENGTH)
    kind = item.get("kind")
    if not isinstance(kind, str) or len(kind) > checks.MAX_NAME or not _QUALIFIED.fullmatch(kind):
        raise ValueError(f'{where} kind must be "plugin:name", got {short_repr(kind)}')
    args = checks.json_object(item.get("args", {}), f"{where} args")
    checks.json_value(
        args,
        f"{where} args",
        max_depth=4,
        max_items=MAX_ADAPTER_ARG_VALUES,
        max_text=MAX_TARGET_LENGTH,
    )
    params = item.get("params")
    if not isinstance(params, dict) or not 1 <= len(params) <= MAX_ADAPTER_PARAMS:
        raise ValueError(
            f"{where} params must map 1 to {MAX_ADAPTER_PARAMS} parameter names to shapes"
        )
    shapes = {
        checks.module_path(name, f"{where} parameter name", MAX_TARGET_LENGTH): checks.int_list(
            shape, f"{where} shape of {name!r}", size=(0, MAX_ADAPTER_DIMS), high=MAX_ADAPTER_DIM
        )
        for name, shape in params.items()
    }
    checked = {
        "target": target,
        "kind": kind,
        "args": args,
        "params": shapes,
        "depth": checks.integer(item.get("depth", 0), f"{where} depth", 0, 1_000_000),
        "group": checks.text(
            item.get("group", ""), f"{where} group", max_len=checks.MAX_NAME, empty=True
        ),
    }
    try:
        Addition.from_dict(checked)  # the same data a plan's additions accept
    except ZooError as exc:  # PlanError
        raise ValueError(f"{where}: {exc}") from None
    return checked


def check_adapters(value: Any) -> list[dict[str, Any]]:
    """The ``zoo.adapters`` list with every entry checked for type and size (a module path
    target, a ``plugin:name`` kind, bounded JSON args, 1 to 16 parameters with bounded shapes,
    one adapter of a kind per target). Whether the kinds are installed, the targets exist and
    the shapes are what the kinds build is checked when the model is rebuilt
    (:mod:`zoo.io.rebuild`). Raises ``ValueError`` saying what is wrong."""
    if not isinstance(value, list) or len(value) > MAX_ADAPTERS:
        raise ValueError(f"expected a JSON list of at most {MAX_ADAPTERS} adapters")
    checked = [_check_adapter(item, i) for i, item in enumerate(value)]
    seen: set[tuple[str, str]] = set()
    for item in checked:
        key = (item["target"], item["kind"])
        if key in seen:
            raise ValueError(f"{item['kind']} is listed twice on target {item['target']!r}")
        seen.add(key)
    return checked


# ---------------------------------------------------------------- config.json


def config_json(metadata: Mapping[str, str]) -> str:
    """The ``config.json`` of a store entry, regenerated from its file's metadata.

    It is the timm-style config (``architecture``, ``num_classes``, ``model_args``,
    ``pretrained_cfg``…, as timm's ``push_to_hf_hub`` writes it) plus a ``zoo`` section that
    ties it to the exact ``model.safetensors`` it describes (``content_sha256``).
    """
    try:
        config = checks.loads(metadata.get("zoo.timm_config", "null")) or {}
    except checks.Invalid:
        config = {}
    if not isinstance(config, dict):
        config = {}
    config["zoo"] = {
        "format_version": metadata.get("zoo.format_version"),
        "kind": metadata.get("zoo.kind"),
        "backbone": metadata.get("zoo.backbone"),
        "content_sha256": metadata.get("zoo.content_sha256"),
    }
    return json.dumps(config, indent=2, ensure_ascii=False) + "\n"
