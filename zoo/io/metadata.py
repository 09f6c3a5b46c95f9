"""The ``zoo.*`` metadata of a saved model: what each key holds, building it, parsing it back.

Every value in a safetensors ``__metadata__`` is a string. zoo writes plain strings for scalars
(``zoo.kind = "full"``) and JSON text for structures (``zoo.classes = '["cat", "dog"]'``).
:class:`ZooMetadata` is the typed view. Format 2 records each fact once: the ``zoo.create``
arguments in ``zoo.build``, the policy, its arguments, what trained and what was added
(adapters) in ``zoo.plan``; counts are derived from the plan and the tensors' shapes. A
format-1 file (which repeated some of them) is read through :func:`upgrade_v1` after its seal
was checked on its own map.

Everything in a file's metadata is untrusted input (the seal is two public hashes: anyone can
edit and re-seal), so :meth:`ZooMetadata.parse` checks every key's type *and range* and raises
:class:`~zoo.CorruptFileError` naming the file and the key: numbers are finite and bounded
however they are spelled (``1e999``, a 400-digit integer, ``NaN``), text is valid Unicode (no
lone surrogate, even one written as a JSON escape), names and class names hold no control
characters, the input config is one :class:`~zoo.InputConfig` accepts, the plan one
:meth:`~zoo.Plan.from_dict` accepts and the leaderboard one :meth:`~zoo.io.leaderboard.
Leaderboard.from_dict` accepts. Writing runs the same checks (:meth:`ZooMetadata.to_metadata`),
so zoo never writes a file it would refuse to read. ``docs/file-format.md`` documents each key
and the versioning promise: readers accept every file whose ``zoo.format_version`` is not newer
than theirs and ignore keys they do not know.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from zoo.core import checks
from zoo.core.specs import InputConfig
from zoo.errors import CorruptFileError, UnsupportedFormatError, ZooError, short_repr
from zoo.io.fileformat import MAX_DIMS, MAX_TENSORS
from zoo.io.leaderboard import Leaderboard
from zoo.plans.plan import MAX_ADDITIONS, Addition, Plan

#: Version of the metadata layout; bumped only for changes an older reader would misread.
FORMAT_VERSION = 2
KINDS = ("full", "delta")
BASE_KINDS = ("file", "store", "pretrained")
#: Where else a base can be found (``zoo.base``'s ``locations``): a store name, a file, a Hub
#: repository (``org/name``) or a backbone's pretrained weights (``timm:resnet18.a1_in1k``).
LOCATION_KINDS = ("store", "file", "hub", "pretrained")
MAX_LOCATIONS = 16
#: The most classes a head may have (``zoo.build``, ``zoo.classes``).
MAX_CLASSES = 10_000_000

#: Every key of format 2 (``docs/file-format.md`` says what each holds; a test checks the two
#: agree).
KEYS = (
    "format",
    "zoo.format_version",
    "zoo.kind",
    "zoo.build",
    "zoo.classes",
    "zoo.input_config",
    "zoo.plan",
    "zoo.base",
    "zoo.base_tensors",
    "zoo.state_sha256",
    "zoo.version",
    "zoo.plugins",
    "zoo.created",
    "zoo.timm_config",
    "zoo.training",
    "zoo.compare",
    "zoo.tensors_sha256",
    "zoo.content_sha256",
)
#: The keys of format 1 that format 2 records once, elsewhere (read from format-1 files only).
V1_KEYS = (
    "zoo.backbone",
    "zoo.num_classes",
    "zoo.policy",
    "zoo.policy_args",
    "zoo.trained",
    "zoo.num_params",
    "zoo.num_trained_params",
    "zoo.adapters",
)

_REQUIRED = (
    "zoo.format_version",
    "zoo.kind",
    "zoo.build",
    "zoo.plan",
    "zoo.tensors_sha256",
    "zoo.content_sha256",
)
#: The keys whose values are JSON text (format 2, then format 1's own).
_JSON_KEYS = frozenset(
    {
        "zoo.build",
        "zoo.classes",
        "zoo.input_config",
        "zoo.plan",
        "zoo.base",
        "zoo.base_tensors",
        "zoo.plugins",
        "zoo.timm_config",
        "zoo.training",
        "zoo.compare",
        "zoo.num_classes",
        "zoo.policy_args",
        "zoo.trained",
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
    "zoo.plan": "use a plan whose policy, arguments, names and lr scales are finite numbers and "
    "valid text, and adapters with arguments a reader accepts",
}
_SAVE_HINT = "this value came from the backbone's or a plugin's data; report it to its author"
_SAVING = "cannot save the model"


def is_zoo_metadata(metadata: Mapping[str, str]) -> bool:
    """True when a file's metadata was written by zoo (it carries ``zoo.format_version``)."""
    return "zoo.format_version" in metadata


@dataclass(frozen=True)
class ZooMetadata:
    """The typed content of a zoo-written file's metadata.

    ``plan`` is the checked ``zoo.plan`` (:meth:`~zoo.Plan.to_dict`); ``base_tensors`` maps each
    tensor a delta takes from its base to its shape (None: a format-1 file, which recorded
    names only). ``num_params`` and ``num_trained_params`` are not written: :meth:`parse`
    derives them from the plan's names and the shapes of the file's tensors and the base's (a
    format-1 file's stored counts are read as they are).
    """

    kind: str
    build: dict[str, Any]
    plan: dict[str, Any]
    classes: list[str] | None = None
    input_config: dict[str, Any] = field(default_factory=dict)
    base: dict[str, Any] | None = None
    base_tensors: dict[str, list[int] | None] = field(default_factory=dict)
    state_sha256: str | None = None
    zoo_version: str = ""
    plugins: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    timm_config: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    compare: dict[str, Any] | None = None
    tensors_sha256: str = ""
    content_sha256: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    num_params: int = 0
    num_trained_params: int = 0

    # ------------------------------------------------------------ derived

    @property
    def backbone(self) -> str:
        """The qualified backbone name (``zoo.build``'s)."""
        return str(self.build.get("backbone", ""))

    @property
    def num_classes(self) -> int | None:
        """The head's outputs as ``zoo.create`` was asked for them (``zoo.build``'s)."""
        return self.build.get("num_classes")

    @property
    def policy(self) -> str:
        """The qualified policy name of the plan, ``""`` when no policy was applied."""
        return str(self.plan.get("policy", ""))

    @property
    def policy_args(self) -> dict[str, Any]:
        return dict(self.plan.get("args", {}))

    @property
    def trained(self) -> list[str]:
        """The names of the parameters that were trained (the plan's trainable ones)."""
        return list(self.plan.get("trainable", []))

    @property
    def adapters(self) -> list[dict[str, Any]]:
        """The adapters injected in the model (the plan's additions, as dicts)."""
        return list(self.plan.get("additions", []))

    @property
    def trained_fraction(self) -> float:
        return self.num_trained_params / self.num_params if self.num_params else 0.0

    # ------------------------------------------------------------ writing

    def to_metadata(self) -> dict[str, str]:
        """The ``__metadata__`` map of format 2 (without the seal, which the writer adds).

        Raises :class:`~zoo.ZooError` naming the key and what to change, before anything is
        written, for a value a reader would refuse (:meth:`parse`): a non-finite number, text
        that is not valid Unicode (a lone surrogate cannot be encoded as UTF-8), a class name
        with a control character, an input config out of range.
        """
        md = {
            "format": "pt",
            "zoo.format_version": str(FORMAT_VERSION),
            "zoo.kind": self.kind,
            "zoo.build": _dumps("zoo.build", self.build),
            "zoo.classes": _dumps("zoo.classes", self.classes),
            "zoo.input_config": _dumps("zoo.input_config", self.input_config),
            "zoo.plan": _dumps("zoo.plan", self.plan),
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
        if self.kind == "delta":
            md["zoo.base_tensors"] = _dumps("zoo.base_tensors", self.base_tensors)
            md["zoo.state_sha256"] = self.state_sha256 or ""
        for key, value in self.extra.items():
            md.setdefault(key, value)
        _check_writable(md)
        return md

    # ------------------------------------------------------------ reading

    @classmethod
    def parse(
        cls,
        metadata: Mapping[str, str],
        *,
        source: str,
        shapes: Mapping[str, tuple[int, ...]] | None = None,
    ) -> ZooMetadata:
        """Check and convert a zoo file's metadata; :class:`~zoo.CorruptFileError` names the key.

        Every value is checked against its documented type and range (see the module's
        docstring); nothing else is ever raised for any content of ``metadata``. ``shapes``
        (the file's tensors, from its header) give the derived counts.
        """
        return cls._read(_Reader(metadata, source), shapes or {})

    @classmethod
    def _read(cls, reader: _Reader, shapes: Mapping[str, tuple[int, ...]]) -> ZooMetadata:
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
        for key in _REQUIRED if version > 1 else _V1_REQUIRED:
            reader.require(key)
        if metadata.get("format", "pt") != "pt":
            raise reader.bad("format", f'must be "pt", got {metadata["format"]!r}')
        kind = reader.choice("zoo.kind", KINDS)
        build = reader.build("zoo.build")
        base = reader.optional_obj("zoo.base")
        if base is not None:
            _check_base(base, reader, need_hash=kind == "delta")
        elif kind == "delta":
            raise reader.bad("zoo.base", "a delta needs its base reference")
        if version == 1:
            plan, base_tensors, counts = upgrade_v1(reader, build)
        else:
            plan = reader.plan("zoo.plan")
            base_tensors = reader.shapes("zoo.base_tensors")
            counts = _counts(plan, {**base_tensors, **shapes})
        known = KEYS if version > 1 else (*KEYS, *V1_KEYS)
        return cls(
            format_version=version,
            kind=kind,
            build=build,
            plan=plan,
            classes=reader.classes("zoo.classes"),
            input_config=reader.input_config("zoo.input_config"),
            base=base,
            base_tensors=base_tensors if kind == "delta" else {},
            state_sha256=reader.hex_hash("zoo.state_sha256") if kind == "delta" else None,
            zoo_version=reader.name("zoo.version", default=""),
            plugins=reader.plugins("zoo.plugins"),
            created=reader.created("zoo.created"),
            timm_config=reader.optional_obj("zoo.timm_config"),
            training=reader.optional_obj("zoo.training"),
            compare=reader.leaderboard("zoo.compare"),
            tensors_sha256=reader.hex_hash("zoo.tensors_sha256"),
            content_sha256=reader.hex_hash("zoo.content_sha256"),
            extra={k: v for k, v in metadata.items() if k not in known},
            num_params=counts[0],
            num_trained_params=counts[1],
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


def _counts(
    plan: Mapping[str, Any], shapes: Mapping[str, list[int] | tuple[int, ...] | None]
) -> tuple[int, int]:
    """``(num_params, num_trained_params)``: the numbers in the plan's parameters, by the
    shapes of the tensors that hold them (a name without a known shape counts 0)."""

    def total(names: list[str]) -> int:
        return sum(math.prod(shape) for name in names if (shape := shapes.get(name)) is not None)

    trainable = total(plan.get("trainable", []))
    return trainable + total(plan.get("frozen", [])), trainable


# ---------------------------------------------------------------- format 1

_V1_REQUIRED = (
    "zoo.format_version",
    "zoo.kind",
    "zoo.backbone",
    "zoo.build",
    "zoo.tensors_sha256",
    "zoo.content_sha256",
)


def upgrade_v1(
    reader: _Reader, build: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, list[int] | None], tuple[int, int]]:
    """A format-1 file's plan, base tensors and counts, as format 2 records them.

    Format 1 wrote some facts twice (``zoo.backbone`` beside ``zoo.build``; ``zoo.policy``,
    ``zoo.policy_args``, ``zoo.trained`` and ``zoo.adapters`` beside ``zoo.plan``), always from
    one source: each copy is checked as it always was, and copies that disagree are refused
    (:class:`~zoo.CorruptFileError` naming the key: the metadata contradicts itself). A file
    saved without a plan gets the plan of what it trained (its policy, arguments, trained
    names and adapters). Its base tensors' shapes were not recorded (None); its counts are
    read as stored. Run on a map whose seal was checked as it is.
    """
    backbone = reader.name("zoo.backbone", qualified=True)
    if build.get("backbone") != backbone:
        raise reader.bad(
            "zoo.build",
            f"names backbone {short_repr(build.get('backbone'))}, zoo.backbone says {backbone!r}",
        )
    num_classes = reader.optional_int("zoo.num_classes", MAX_CLASSES)
    if build.get("num_classes") not in (None, num_classes):
        raise reader.bad(
            "zoo.num_classes",
            f"says {num_classes} but zoo.build says {build['num_classes']}; the metadata "
            "contradicts itself",
        )
    policy = reader.name("zoo.policy", default="")
    args = reader.obj("zoo.policy_args", default={})
    trained = reader.str_list("zoo.trained", default=[])
    additions = reader.adapters("zoo.adapters")
    plan = reader.plan("zoo.plan", optional=True)
    if plan is None:
        with reader.about("zoo.trained"):
            plan = Plan.from_dict({"policy": policy, "args": args, "trainable": trained}).to_dict()
    else:
        _same(reader, "zoo.policy", policy, plan["policy"])
        _same(reader, "zoo.policy_args", args, plan["args"])
        _same(reader, "zoo.trained", sorted(trained), sorted(plan["trainable"]))
        planned = plan.get("additions", [])
        if planned and _canonical(planned) != _canonical(additions):
            raise reader.bad(
                "zoo.plan",
                f"adds {len(planned)} adapter(s) that differ from the {len(additions)} "
                "'zoo.adapters' lists; the metadata contradicts itself",
            )
    if additions and not plan.get("additions"):
        listed = {*plan["trainable"], *plan.get("frozen", [])}
        names = [f"{a['target']}.{n}" for a in additions for n in a["params"]]
        plan = {
            **plan,
            "format": 2,
            "frozen": [*plan.get("frozen", []), *(n for n in names if n not in listed)],
            "additions": additions,
        }
        with reader.about("zoo.adapters"):
            plan = Plan.from_dict(plan).to_dict()
    num_params = reader.integer("zoo.num_params", default=0)
    num_trained_params = reader.integer("zoo.num_trained_params", default=0)
    if num_trained_params > num_params:
        raise reader.bad(
            "zoo.num_trained_params",
            f"{num_trained_params} is more than zoo.num_params ({num_params})",
        )
    base_tensors = dict.fromkeys(reader.str_list("zoo.base_tensors", default=[]))
    return plan, base_tensors, (num_params, num_trained_params)


def class_names(value: Any) -> list[str]:
    """``value`` if it is a list of at most :data:`MAX_CLASSES` class names, each valid text
    without control characters; else :class:`~zoo.core.checks.Invalid`."""
    checks.str_list(value, "the value", max_items=MAX_CLASSES)
    for index, name in enumerate(value):
        checks.text(name, f"class name {index} {short_repr(name)}", max_len=None, empty=True)
    return value


def _same(reader: _Reader, key: str, value: Any, planned: Any) -> None:
    if value != planned:
        raise reader.bad(
            key,
            f"{short_repr(value)} differs from what 'zoo.plan' records ({short_repr(planned)}); "
            "the metadata contradicts itself",
        )


def _canonical(additions: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(Addition.from_dict(a).to_dict(), sort_keys=True) for a in additions)


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
        ZooMetadata._read(reader, {})
    except CorruptFileError as exc:
        hint = _SAVE_HINTS.get(reader.failed or "", _SAVE_HINT)
        raise ZooError(f"{exc}; {hint}") from None


# ---------------------------------------------------------------- reading helpers


def _check_base(base: dict[str, Any], reader: _Reader, *, need_hash: bool) -> None:
    with reader.about("zoo.base"):
        checks.choice(base.get("kind"), "kind", BASE_KINDS)
        checks.text(base.get("ref"), "ref", max_len=None)
        if base.get("sha256") is not None or need_hash:
            checks.sha256_hex(base.get("sha256"), "sha256")
        locations = checks.sequence(base.get("locations", []), "locations", (0, MAX_LOCATIONS))
        for index, location in enumerate(locations):
            where = f"locations[{index}]"
            checks.json_object(location, where)
            checks.choice(location.get("kind"), f"{where}.kind", LOCATION_KINDS)
            checks.text(location.get("ref"), f"{where}.ref")


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

    def build(self, key: str) -> dict[str, Any]:
        """The ``zoo.create`` arguments: a qualified backbone name, a bounded ``num_classes``, a
        ``tag`` name and JSON ``kwargs``."""
        build = self.obj(key)
        with self.about(key):
            checks.name(build.get("backbone"), "backbone", qualified=True)
            checks.json_object(build.get("kwargs", {}), "kwargs")
            if build.get("num_classes") is not None:
                checks.integer(build["num_classes"], "num_classes", 0, MAX_CLASSES)
            if build.get("tag") is not None:
                checks.name(build["tag"], "tag")
        return build

    def shapes(self, key: str) -> dict[str, list[int] | None]:
        """Tensor name -> shape (a delta's base tensors), at most :data:`MAX_TENSORS`."""
        value = self.json(key, {})
        with self.about(key):
            checks.json_object(value, "the value")
            if len(value) > MAX_TENSORS:
                raise ValueError(f"lists more than {MAX_TENSORS} tensors")
            return {
                name: checks.int_list(shape, f"shape of {short_repr(name)}", size=(0, MAX_DIMS))
                for name, shape in value.items()
            }

    def classes(self, key: str) -> list[str] | None:
        value = self.json(key)
        with self.about(key):
            return None if value is None else class_names(value)

    def input_config(self, key: str) -> dict[str, Any]:
        value = self.obj(key, default={})
        with self.about(key):  # SpecError, from the one check of input configs
            InputConfig.from_dict(value)
        return value

    def plan(self, key: str, *, optional: bool = False) -> Any:
        """The plan (:meth:`~zoo.Plan.from_dict` checks it) as :meth:`~zoo.Plan.to_dict`
        writes it; None only where ``optional`` (format 1)."""
        value = self.optional_obj(key) if optional else self.obj(key)
        if value is None:
            return None
        with self.about(key):  # PlanError
            return Plan.from_dict(value).to_dict()

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
        """A ``zoo.compare`` leaderboard, checked by its one schema (unknown fields dropped)."""
        value = self.optional_obj(key)
        with self.about(key):
            return None if value is None else Leaderboard.from_dict(value).to_dict()

    def adapters(self, key: str) -> list[dict[str, Any]]:
        """Format 1's ``zoo.adapters``: a list of at most as many additions as a plan holds
        (each checked by :meth:`~zoo.Addition.from_dict`), one of a kind per target."""
        value = self.json(key, [])
        with self.about(key):
            if not isinstance(value, list) or len(value) > MAX_ADDITIONS:
                raise ValueError(f"expected a JSON list of at most {MAX_ADDITIONS} adapters")
            additions = [Addition.from_dict(item).to_dict() for item in value]
            seen: set[tuple[str, str]] = set()
            for item in additions:
                if (item["target"], item["kind"]) in seen:
                    raise ValueError(f"{item['kind']} is listed twice on target {item['target']!r}")
                seen.add((item["target"], item["kind"]))
        return additions

    def created(self, key: str) -> str:
        value = self.md.get(key, "")
        if value:
            try:
                _dt.datetime.fromisoformat(value)
            except ValueError:
                raise self.bad(key, f"expected an ISO 8601 time, got {short_repr(value)}") from None
        return value


# ---------------------------------------------------------------- config.json


def config_json(metadata: Mapping[str, str]) -> str:
    """The ``config.json`` of a store entry, regenerated from its file's metadata.

    It is the timm-style config (``architecture``, ``num_classes``, ``model_args``,
    ``pretrained_cfg``…, as timm's ``push_to_hf_hub`` writes it) plus a ``zoo`` section that
    ties it to the exact ``model.safetensors`` it describes (``content_sha256``).
    """
    config = _json_or_none(metadata.get("zoo.timm_config"))
    build = _json_or_none(metadata.get("zoo.build"))
    config = config if isinstance(config, dict) else {}
    backbone = build.get("backbone") if isinstance(build, dict) else None
    config["zoo"] = {
        "format_version": metadata.get("zoo.format_version"),
        "kind": metadata.get("zoo.kind"),
        "backbone": backbone if isinstance(backbone, str) else metadata.get("zoo.backbone"),
        "content_sha256": metadata.get("zoo.content_sha256"),
    }
    return json.dumps(config, indent=2, ensure_ascii=False) + "\n"


def _json_or_none(text: str | None) -> Any:
    try:
        return checks.loads(text or "null")
    except checks.Invalid:
        return None
