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
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from zoo.core.specs import InputConfig
from zoo.errors import CorruptFileError, UnsupportedFormatError, ZooError, short_repr
from zoo.plans.plan import Addition, Plan

#: Version of the metadata layout; bumped only for changes an older reader would misread.
FORMAT_VERSION = 1
KINDS = ("full", "delta")
BASE_KINDS = ("file", "store", "pretrained")
#: The most classes a head may have (``zoo.num_classes``, ``zoo.build``, ``zoo.classes``).
MAX_CLASSES = 10_000_000
#: JSON integers in metadata must fit a signed 64-bit integer.
MAX_JSON_INT = 2**63 - 1
#: Short texts (names, versions): longest accepted.
MAX_NAME_LENGTH = 200
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")

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
        reader.check_text()
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
    kwargs = build.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise reader.bad("zoo.build", "kwargs must be an object")
    num = build.get("num_classes")
    if num is not None and not (_is_int(num) and 0 <= num <= MAX_CLASSES):
        raise reader.bad(
            "zoo.build",
            f"num_classes must be a non-negative integer (at most "
            f"{MAX_CLASSES}) or null, got {short_repr(num)}",
        )
    tag = build.get("tag")
    if tag is not None and not (isinstance(tag, str) and _is_name(tag)):
        raise reader.bad(
            "zoo.build",
            f"tag must be a short name without control characters or null, got {short_repr(tag)}",
        )


def _check_base(base: dict[str, Any], reader: _Reader, *, need_hash: bool) -> None:
    if base.get("kind") not in BASE_KINDS:
        raise reader.bad("zoo.base", f"kind must be one of {', '.join(BASE_KINDS)}")
    ref = base.get("ref")
    if not isinstance(ref, str) or not ref or _CONTROL.search(ref):
        raise reader.bad(
            "zoo.base",
            f"ref must be a non-empty string without control characters, got {short_repr(ref)}",
        )
    digest = base.get("sha256")
    if digest is None and not need_hash:
        return
    if not isinstance(digest, str) or not _HEX64.match(digest):
        raise reader.bad("zoo.base", "sha256 must be 64 lowercase hex digits")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_name(text: str) -> bool:
    """A short text for one line: a name, a version, a tag."""
    return 0 < len(text) <= MAX_NAME_LENGTH and not _CONTROL.search(text)


def _is_version(value: object) -> bool:
    return value is None or value == "" or (isinstance(value, str) and _is_name(value))


def _not_text(text: str) -> str | None:
    """Why ``text`` is not valid Unicode (a lone surrogate cannot be encoded), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start : exc.end]
        return f"holds a lone surrogate {bad[:1]!r} (not valid Unicode, cannot be encoded)"
    return None


def class_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a saved class name (a control character, a lone surrogate from
    an undecodable file name), or None: what reading a file refuses, so that adapt can refuse
    a class folder's name before training instead of failing to save."""
    if _CONTROL.search(name):
        return "holds a control character"
    return _not_text(name)


def _may_hold_surrogates(text: str) -> bool:
    """Whether decoding JSON ``text`` may give a surrogate: it holds one, or a ``\\uD800``-
    ``\\uDFFF`` escape (a fast test, so that most values are not walked)."""
    return _SURROGATE_ESCAPE.search(text) is not None or _not_text(text) is not None


def _first_bad_text(value: Any) -> tuple[str, str] | None:
    """``(where, why)`` of the first string (value or key) in a JSON value that is not text."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            problem = _not_text(item)
            if problem:
                return where or "the value", problem
        elif isinstance(item, dict):
            for key in item:
                problem = _not_text(key)
                if problem:
                    return f"{where or 'the object'} key {key!r}", problem
            stack.extend((f"{where}[{k!r}]", v) for k, v in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((f"{where}[{i}]", v) for i, v in reversed(list(enumerate(item))))
    return None


class _BadNumber(ValueError):
    """A JSON number out of range (raised from inside ``json.loads``)."""


def _parse_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > 19:
        raise _BadNumber(f"the integer {text[:20]}… has {digits} digits; integers must fit 64 bits")
    value = int(text)
    if abs(value) > MAX_JSON_INT:
        raise _BadNumber(f"the integer {text} does not fit 64 bits")
    return value


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BadNumber(f"the number {text[:40]} is out of range (not a finite float)")
    return value


def _no_constant(name: str) -> Any:
    raise _BadNumber(f"non-standard JSON constant {name} (numbers must be finite)")


def loads(text: str) -> Any:
    """``json.loads`` for untrusted metadata: every number finite and integers within 64 bits.

    ``NaN``, ``Infinity``, ``1e999`` and 400-digit integers raise ``ValueError``.
    """
    return json.loads(
        text, parse_constant=_no_constant, parse_float=_parse_float, parse_int=_parse_int
    )


class _Reader:
    """Typed access to metadata values, with errors that name the file and the key."""

    def __init__(self, metadata: Mapping[str, str], source: str) -> None:
        self.md = metadata
        self.source = source
        self.failed: str | None = None  # the key of the last error made by bad()

    def bad(self, key: str, problem: str) -> CorruptFileError:
        self.failed = key
        return CorruptFileError(f"{self.source}: metadata {key!r} is invalid: {problem}")

    def require(self, key: str) -> None:
        if key not in self.md:
            self.failed = key
            raise CorruptFileError(f"{self.source}: metadata {key!r} is missing")

    def check_text(self) -> None:
        """Every key and plain value is a string of valid Unicode (JSON values: see json)."""
        for key, value in self.md.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise self.bad(
                    short_repr(key),
                    f"keys and values must be strings, got "
                    f"{type(key).__name__} -> {type(value).__name__}",
                )
            problem = _not_text(key) or (None if key in _JSON_KEYS else _not_text(value))
            if problem:
                raise self.bad(key, problem)

    def text(self, key: str) -> str:
        self.require(key)
        value = self.md[key]
        if not value:
            raise self.bad(key, "empty")
        return value

    def name(self, key: str, *, qualified: bool = False, default: str | None = None) -> str:
        """A one-line name: no control characters, at most MAX_NAME_LENGTH characters."""
        if default is not None and not self.md.get(key):
            return default
        value = self.text(key)
        if not _is_name(value):
            raise self.bad(
                key,
                f"expected a name of at most {MAX_NAME_LENGTH} characters "
                f"without control characters, got {short_repr(value)}",
            )
        plugin, colon, bare = value.partition(":")
        if qualified and not (plugin and colon and bare):
            raise self.bad(key, f'expected "plugin:name", got {short_repr(value)}')
        return value

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
        if not _HEX64.match(value):
            raise self.bad(key, "expected 64 lowercase hex digits")
        return value

    def json(self, key: str, default: Any = None) -> Any:
        if key not in self.md:
            return default
        try:
            value = loads(self.md[key])
        except _BadNumber as exc:
            raise self.bad(key, str(exc)) from None
        except (ValueError, RecursionError) as exc:
            raise self.bad(key, f"not valid JSON ({exc})") from None
        found = _first_bad_text(value) if _may_hold_surrogates(self.md[key]) else None
        if found:
            raise self.bad(key, f"{found[0]} {found[1]}")
        return value

    def obj(self, key: str, default: dict[str, Any] | None = None) -> dict[str, Any]:
        if key not in self.md and default is not None:
            return dict(default)
        self.require(key)
        value = self.json(key)
        if not isinstance(value, dict):
            raise self.bad(key, f"expected a JSON object, got {type(value).__name__}")
        return value

    def optional_obj(self, key: str) -> dict[str, Any] | None:
        value = self.json(key)
        if value is not None and not isinstance(value, dict):
            raise self.bad(key, f"expected a JSON object or null, got {type(value).__name__}")
        return value

    def optional_int(self, key: str, maximum: int) -> int | None:
        value = self.json(key)
        if value is not None and not (_is_int(value) and 0 <= value <= maximum):
            raise self.bad(
                key,
                f"expected a non-negative integer (at most {maximum}) or null, "
                f"got {short_repr(value)}",
            )
        return value

    def str_list(self, key: str, default: list[str]) -> list[str]:
        value = self.json(key, default)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.bad(key, "expected a JSON list of strings")
        return value

    def classes(self, key: str) -> list[str] | None:
        value = self.json(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.bad(key, "expected a JSON list of strings or null")
        if len(value) > MAX_CLASSES:
            raise self.bad(key, f"{len(value)} class names; at most {MAX_CLASSES}")
        for index, name in enumerate(value):
            problem = class_name_problem(name)
            if problem:
                raise self.bad(key, f"class name {index} {short_repr(name)} {problem}")
        return value

    def input_config(self, key: str) -> dict[str, Any]:
        value = self.obj(key, default={})
        try:
            InputConfig.from_dict(value)
        except ValueError as exc:  # SpecError, from the one check of input configs
            raise self.bad(key, str(exc)) from None
        return value

    def plan(self, key: str) -> dict[str, Any] | None:
        value = self.optional_obj(key)
        if value is not None:
            try:
                Plan.from_dict(value)
            except ZooError as exc:  # PlanError
                raise self.bad(key, str(exc)) from None
        return value

    def plugins(self, key: str) -> dict[str, Any]:
        value = self.obj(key, default={})
        for plugin, version in value.items():
            if not _is_name(plugin) or not _is_version(version):
                raise self.bad(
                    key,
                    f"expected plugin name -> version (a string or null), got "
                    f"{short_repr(plugin)}: {short_repr(version)}",
                )
        return value

    def leaderboard(self, key: str) -> dict[str, Any] | None:
        """A ``zoo.compare`` leaderboard, checked field by field (unknown fields dropped)."""
        value = self.optional_obj(key)
        if value is None:
            return None
        try:
            return check_leaderboard(value)
        except ValueError as exc:
            raise self.bad(key, str(exc)) from None

    def adapters(self, key: str) -> list[dict[str, Any]]:
        """The injected adapters (``zoo.adapters``), each checked for type and size."""
        value = self.json(key, [])
        try:
            return check_adapters(value)
        except ValueError as exc:
            raise self.bad(key, str(exc)) from None

    def created(self, key: str) -> str:
        value = self.md.get(key, "")
        if value:
            try:
                _dt.datetime.fromisoformat(value)
            except ValueError:
                raise self.bad(key, f"expected an ISO 8601 time, got {short_repr(value)}") from None
        return value


# ---------------------------------------------------------------- untrusted JSON values
# The checks of one JSON value read from a file zoo did not write in this process (a saved
# model's metadata, a checkpoint's state.json): each returns the value or raises ValueError
# naming ``what`` and the rule, with a short repr of what was found.

#: Longest text :func:`check_text` accepts (a policy spec, a note).
MAX_TEXT = 1000


def check_number(value: Any, what: str, low: float, high: float, *, integer: bool = False) -> Any:
    """``value`` if it is a number (an int when ``integer``; never a bool or NaN) in
    ``[low, high]``."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = _is_int(value) if integer else number
    # compared before any float(): a 400-digit integer is out of range, not an overflow
    if not ok or not low <= value <= high or (isinstance(value, float) and math.isnan(value)):
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"{what} must be {kind} from {low:g} to {high:g}, got {short_repr(value)}")
    return value


def check_text(value: Any, what: str) -> str:
    """``value`` if it is a text of 1 to :data:`MAX_TEXT` characters of valid Unicode without
    control characters (it is printed on one line)."""
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
        raise ValueError(
            f"{what} must be a text of 1 to {MAX_TEXT} characters, got {short_repr(value)}"
        )
    if _CONTROL.search(value):
        raise ValueError(f"{what} {short_repr(value)} holds a control character")
    problem = _not_text(value)
    if problem:
        raise ValueError(f"{what} {problem}")
    return value


def check_flag(value: Any, what: str) -> bool:
    """``value`` if it is ``true`` or ``false``."""
    if not isinstance(value, bool):
        raise ValueError(f"{what} must be true or false, got {short_repr(value)}")
    return value


# ---------------------------------------------------------------- zoo.compare

#: Most candidates, notes and rungs a ``zoo.compare`` leaderboard may hold.
MAX_LEADERBOARD_ROWS = 256
_MAX_EPOCHS = 1_000_000
_MAX_SECONDS = 1e9


def _check_row(row: Any, index: int) -> dict[str, Any]:
    where = f"candidate {index}"
    if not isinstance(row, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(row).__name__}")
    try:
        loss = row["val_loss"]
        checked = {
            "policy": check_text(row["policy"], f"{where} policy"),
            "val_acc": check_number(row["val_acc"], f"{where} val_acc", 0, 1),
            "val_loss": None if loss is None else check_number(loss, f"{where} val_loss", 0, 1e12),
            "trainable_params": check_number(
                row["trainable_params"], f"{where} trainable_params", 0, MAX_JSON_INT, integer=True
            ),
            "trainable_percent": check_number(
                row["trainable_percent"], f"{where} trainable_percent", 0, 100
            ),
            "epochs": check_number(row["epochs"], f"{where} epochs", 0, _MAX_EPOCHS, integer=True),
            "seconds": check_number(row["seconds"], f"{where} seconds", 0, _MAX_SECONDS),
            "stopped_early": check_flag(row["stopped_early"], f"{where} stopped_early"),
            "trained_on": check_text(row.get("trained_on", "images"), f"{where} trained_on"),
        }
    except KeyError as exc:
        raise ValueError(f"{where} has no {exc.args[0]!r}") from None
    return checked


def check_leaderboard(value: dict[str, Any]) -> dict[str, Any]:
    """The ``zoo.compare`` object with every field checked for type and range (finite numbers,
    bounded sizes, texts without control characters, the winner one of the candidates);
    unknown fields are dropped. Raises ``ValueError`` saying what is wrong."""
    rows = value.get("candidates")
    if not isinstance(rows, list) or not 1 <= len(rows) <= MAX_LEADERBOARD_ROWS:
        raise ValueError(f"candidates must be a list of 1 to {MAX_LEADERBOARD_ROWS} objects")
    candidates = [_check_row(row, i) for i, row in enumerate(rows)]
    winner = check_text(value.get("winner"), "winner")
    if winner != candidates[0]["policy"]:
        raise ValueError(f"winner {short_repr(winner)} is not the first candidate")
    epochs = check_number(value.get("epochs"), "epochs", 1, _MAX_EPOCHS, integer=True)
    rungs = value.get("rungs", [])
    if not isinstance(rungs, list) or len(rungs) > 64:
        raise ValueError("rungs must be a list of at most 64 epoch counts")
    budget = value.get("budget")
    notes = value.get("notes", [])
    if not isinstance(notes, list) or len(notes) > MAX_LEADERBOARD_ROWS:
        raise ValueError(f"notes must be a list of at most {MAX_LEADERBOARD_ROWS} texts")
    return {
        "winner": winner,
        "epochs": epochs,
        "rungs": [check_number(r, "rung", 1, _MAX_EPOCHS, integer=True) for r in rungs],
        "budget": None if budget is None else check_number(budget, "budget", 0, _MAX_SECONDS),
        "budget_cut": check_flag(value.get("budget_cut", False), "budget_cut"),
        "seconds": check_number(value.get("seconds", 0.0), "seconds", 0, _MAX_SECONDS),
        "candidates": candidates,
        "notes": [check_text(n, "note") for n in notes],
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
_MODULE_PATH = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")
_QUALIFIED = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*:[A-Za-z0-9_][A-Za-z0-9_.+-]*$")


def _path(value: Any, what: str) -> str:
    if (
        not isinstance(value, str)
        or len(value) > MAX_TARGET_LENGTH
        or not _MODULE_PATH.match(value)
    ):
        raise ValueError(
            f"{what} must be a module path (names joined by '.', at most {MAX_TARGET_LENGTH} "
            f"characters), got {short_repr(value)}"
        )
    return value


def _arg_values(value: Any, depth: int = 0) -> int:
    """How many JSON values ``value`` holds; ``ValueError`` past the bounds."""
    if depth > 4:
        raise ValueError("args nest deeper than 4 levels")
    if isinstance(value, dict):
        return 1 + sum(_arg_values(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(_arg_values(v, depth + 1) for v in value)
    if isinstance(value, str) and len(value) > MAX_TARGET_LENGTH:
        raise ValueError(f"an args text is longer than {MAX_TARGET_LENGTH} characters")
    return 1


def _check_adapter(item: Any, index: int) -> dict[str, Any]:
    where = f"adapter {index}"
    if not isinstance(item, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(item).__name__}")
    unknown = sorted(set(item) - {"target", "kind", "args", "params", "depth", "group"})
    if unknown:
        raise ValueError(f"{where} has unknown field(s) {short_repr(unknown)}")
    target = _path(item.get("target"), f"{where} target")
    kind = item.get("kind")
    if not isinstance(kind, str) or len(kind) > MAX_NAME_LENGTH or not _QUALIFIED.match(kind):
        raise ValueError(f'{where} kind must be "plugin:name", got {short_repr(kind)}')
    args = item.get("args", {})
    if not isinstance(args, dict):
        raise ValueError(f"{where} args must be a JSON object, got {type(args).__name__}")
    if _arg_values(args) > MAX_ADAPTER_ARG_VALUES:
        raise ValueError(f"{where} args hold more than {MAX_ADAPTER_ARG_VALUES} values")
    params = item.get("params")
    if not isinstance(params, dict) or not 1 <= len(params) <= MAX_ADAPTER_PARAMS:
        raise ValueError(
            f"{where} params must map 1 to {MAX_ADAPTER_PARAMS} parameter names to shapes"
        )
    shapes: dict[str, list[int]] = {}
    for name, shape in params.items():
        _path(name, f"{where} parameter name")
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_ADAPTER_DIMS
            or not all(_is_int(d) and 0 <= d <= MAX_ADAPTER_DIM for d in shape)
        ):
            raise ValueError(
                f"{where} shape of {name!r} must be a list of at most {MAX_ADAPTER_DIMS} "
                f"integers from 0 to {MAX_ADAPTER_DIM}, got {short_repr(shape)}"
            )
        shapes[name] = list(shape)
    depth = item.get("depth", 0)
    if not _is_int(depth) or not 0 <= depth <= 1_000_000:
        raise ValueError(f"{where} depth must be an integer from 0 to 1000000")
    group = item.get("group", "")
    if not isinstance(group, str) or len(group) > MAX_NAME_LENGTH or _CONTROL.search(group):
        raise ValueError(f"{where} group must be a short text, got {short_repr(group)}")
    checked = {
        "target": target,
        "kind": kind,
        "args": args,
        "params": shapes,
        "depth": depth,
        "group": group,
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
        config = loads(metadata.get("zoo.timm_config", "null")) or {}
    except (ValueError, RecursionError):
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
