"""The ``zoo.*`` metadata of a saved model: what each key holds, building it, parsing it back.

Every value in a safetensors ``__metadata__`` is a string. zoo writes plain strings for scalars
(``zoo.kind = "full"``) and JSON text for structures (``zoo.classes = '["cat", "dog"]'``).
:class:`ZooMetadata` is the typed view; :meth:`ZooMetadata.parse` checks every key's type and
raises :class:`~zoo.CorruptFileError` naming the key, so a file with metadata of the wrong type
never becomes a wrong model. ``docs/file-format.md`` documents each key and the versioning
promise: readers accept every file whose ``zoo.format_version`` is not newer than theirs and
ignore keys they do not know. The functions at the end gather what a save records from the
model and the plugins: plugin versions, ``zoo_extra_metadata`` entries, the timm-style config.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.errors import CorruptFileError, UnsupportedFormatError, ZooError
from zoo.specs import InputConfig

if TYPE_CHECKING:
    from torch import nn

    from zoo.plans import Plan

#: Version of the metadata layout; bumped only for changes an older reader would misread.
FORMAT_VERSION = 1
KINDS = ("full", "delta")
BASE_KINDS = ("file", "store", "pretrained")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

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
    "zoo.tensors_sha256": "canonical sha256 of the tensors in this file",
    "zoo.content_sha256": "sha256 of zoo.tensors_sha256 and every other metadata entry",
}

_REQUIRED = (
    "zoo.format_version", "zoo.kind", "zoo.backbone", "zoo.build", "zoo.tensors_sha256",
    "zoo.content_sha256",
)


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
    tensors_sha256: str = ""
    content_sha256: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def trained_fraction(self) -> float:
        return self.num_trained_params / self.num_params if self.num_params else 0.0

    # ------------------------------------------------------------ writing

    def to_metadata(self) -> dict[str, str]:
        """The ``__metadata__`` map (without the seal, which the writer adds)."""
        md = {
            "format": "pt",
            "zoo.format_version": str(self.format_version),
            "zoo.kind": self.kind,
            "zoo.backbone": self.backbone,
            "zoo.build": _dumps(self.build),
            "zoo.num_classes": _dumps(self.num_classes),
            "zoo.classes": _dumps(self.classes),
            "zoo.input_config": _dumps(self.input_config),
            "zoo.policy": self.policy,
            "zoo.policy_args": _dumps(self.policy_args),
            "zoo.plan": _dumps(self.plan),
            "zoo.trained": _dumps(self.trained),
            "zoo.num_params": str(self.num_params),
            "zoo.num_trained_params": str(self.num_trained_params),
            "zoo.base": _dumps(self.base),
            "zoo.version": self.zoo_version,
            "zoo.plugins": _dumps(self.plugins),
            "zoo.created": self.created,
            "zoo.timm_config": _dumps(self.timm_config),
        }
        if self.kind == "delta":
            md["zoo.base_tensors"] = _dumps(self.base_tensors)
            md["zoo.state_sha256"] = self.state_sha256 or ""
        for key, value in self.extra.items():
            md.setdefault(key, value)
        return md

    # ------------------------------------------------------------ reading

    @classmethod
    def parse(cls, metadata: Mapping[str, str], *, source: str) -> ZooMetadata:
        """Check and convert a zoo file's metadata; :class:`~zoo.CorruptFileError` names the key."""
        reader = _Reader(metadata, source)
        if not is_zoo_metadata(metadata):
            raise CorruptFileError(
                f"{source}: not a zoo model file (no zoo.format_version in its metadata); "
                "plain safetensors weights load with zoo.create(name, weights=FILE)"
            )
        version = reader.integer("zoo.format_version")
        if version > FORMAT_VERSION:
            raise UnsupportedFormatError(
                f"{source}: written with zoo file format {version}, but this zoo reads up to "
                f"format {FORMAT_VERSION}; upgrade zoo (pip install -U zoo-transfer)"
            )
        if version < 1:
            raise reader.bad("zoo.format_version", f"must be >= 1, got {version}")
        for key in _REQUIRED:
            reader.require(key)
        if metadata.get("format", "pt") != "pt":
            raise reader.bad("format", f'must be "pt", got {metadata["format"]!r}')
        kind = reader.choice("zoo.kind", KINDS)
        build = reader.obj("zoo.build")
        backbone = reader.text("zoo.backbone")
        _check_build(build, backbone, reader)
        base = reader.optional_obj("zoo.base")
        if base is not None:
            _check_base(base, reader, need_hash=kind == "delta")
        elif kind == "delta":
            raise reader.bad("zoo.base", "a delta needs its base reference")
        trained = reader.str_list("zoo.trained", default=[])
        classes = reader.optional_str_list("zoo.classes")
        num_classes = reader.optional_int("zoo.num_classes")
        plugins = reader.obj("zoo.plugins", default={})
        input_config = reader.obj("zoo.input_config", default={})
        try:
            InputConfig.from_dict(input_config)
        except (TypeError, ValueError) as exc:
            raise reader.bad("zoo.input_config", f"{type(exc).__name__}: {exc}") from None
        extra = {k: v for k, v in metadata.items() if k not in KEYS}
        return cls(
            format_version=version,
            kind=kind,
            backbone=backbone,
            build=build,
            num_classes=num_classes,
            classes=classes,
            input_config=input_config,
            policy=metadata.get("zoo.policy", ""),
            policy_args=reader.obj("zoo.policy_args", default={}),
            plan=reader.optional_obj("zoo.plan"),
            trained=trained,
            num_params=reader.integer("zoo.num_params", default=0),
            num_trained_params=reader.integer("zoo.num_trained_params", default=0),
            base=base,
            base_tensors=reader.str_list("zoo.base_tensors", default=[]),
            state_sha256=reader.hex_hash("zoo.state_sha256") if kind == "delta" else None,
            zoo_version=metadata.get("zoo.version", ""),
            plugins=plugins,
            created=metadata.get("zoo.created", ""),
            timm_config=reader.optional_obj("zoo.timm_config"),
            tensors_sha256=reader.hex_hash("zoo.tensors_sha256"),
            content_sha256=reader.hex_hash("zoo.content_sha256"),
            extra=extra,
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
            "tensors_sha256": self.tensors_sha256,
            "content_sha256": self.content_sha256,
            "extra": self.extra,
        }


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, sort_keys=False)


def _check_build(build: dict[str, Any], backbone: str, reader: _Reader) -> None:
    if build.get("backbone") != backbone:
        raise reader.bad("zoo.build", f"names backbone {build.get('backbone')!r}, "
                                      f"zoo.backbone says {backbone!r}")
    kwargs = build.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise reader.bad("zoo.build", "kwargs must be an object")
    num = build.get("num_classes")
    if num is not None and (not isinstance(num, int) or isinstance(num, bool) or num < 0):
        raise reader.bad("zoo.build", f"num_classes must be a non-negative integer, got {num!r}")
    tag = build.get("tag")
    if tag is not None and not isinstance(tag, str):
        raise reader.bad("zoo.build", f"tag must be a string or null, got {tag!r}")


def _check_base(base: dict[str, Any], reader: _Reader, *, need_hash: bool) -> None:
    if base.get("kind") not in BASE_KINDS:
        raise reader.bad("zoo.base", f"kind must be one of {', '.join(BASE_KINDS)}")
    if not isinstance(base.get("ref"), str) or not base["ref"]:
        raise reader.bad("zoo.base", "ref must be a non-empty string")
    digest = base.get("sha256")
    if digest is None and not need_hash:
        return
    if not isinstance(digest, str) or not _HEX64.match(digest):
        raise reader.bad("zoo.base", "sha256 must be 64 lowercase hex digits")


class _Reader:
    """Typed access to metadata values, with errors that name the file and the key."""

    def __init__(self, metadata: Mapping[str, str], source: str) -> None:
        self.md = metadata
        self.source = source

    def bad(self, key: str, problem: str) -> CorruptFileError:
        return CorruptFileError(f"{self.source}: metadata {key!r} is invalid: {problem}")

    def require(self, key: str) -> None:
        if key not in self.md:
            raise CorruptFileError(f"{self.source}: metadata {key!r} is missing")

    def text(self, key: str) -> str:
        self.require(key)
        value = self.md[key]
        if not value:
            raise self.bad(key, "empty")
        return value

    def choice(self, key: str, options: tuple[str, ...]) -> str:
        value = self.text(key)
        if value not in options:
            raise self.bad(key, f"{value!r} is not one of {', '.join(options)}")
        return value

    def integer(self, key: str, default: int | None = None) -> int:
        if key not in self.md and default is not None:
            return default
        value = self.text(key)
        if not re.fullmatch(r"[0-9]{1,18}", value):
            raise self.bad(key, f"expected a non-negative integer, got {value[:40]!r}")
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
            return json.loads(self.md[key], parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:
            raise self.bad(key, f"not valid JSON ({exc})") from None

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

    def optional_int(self, key: str) -> int | None:
        value = self.json(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < 0):
            raise self.bad(key, f"expected a non-negative integer or null, got {value!r}")
        return value

    def str_list(self, key: str, default: list[str]) -> list[str]:
        value = self.json(key, default)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.bad(key, "expected a JSON list of strings")
        return value

    def optional_str_list(self, key: str) -> list[str] | None:
        value = self.json(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.bad(key, "expected a JSON list of strings or null")
        return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


# ---------------------------------------------------------------- config.json


def config_json(metadata: Mapping[str, str]) -> str:
    """The ``config.json`` of a store entry, regenerated from its file's metadata.

    It is the timm-style config (``architecture``, ``num_classes``, ``model_args``,
    ``pretrained_cfg``…, as timm's ``push_to_hf_hub`` writes it) plus a ``zoo`` section that
    ties it to the exact ``model.safetensors`` it describes (``content_sha256``).
    """
    try:
        config = json.loads(metadata.get("zoo.timm_config", "null")) or {}
    except ValueError:
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


# ---------------------------------------------------------------- from a model and plugins


def plugin_versions(backbone: str, plan: Plan | None) -> dict[str, Any]:
    """Versions of the plugins a saved model depends on: the backbone's and the policy's."""
    from zoo.api import get_catalog

    wanted = {backbone.split(":", 1)[0]}
    if plan is not None and ":" in plan.policy:
        wanted.add(plan.policy.split(":", 1)[0])
    records = get_catalog().host.records
    return {name: (records[name].version if name in records else None) for name in sorted(wanted)}


def plugin_metadata(model: nn.Module, backbone: str) -> dict[str, str]:
    """Entries from every plugin's ``zoo_extra_metadata``; bad entries are recorded, not saved."""
    from zoo.api import get_catalog

    catalog = get_catalog()
    try:
        spec = catalog.backbones.lookup(backbone)
    except ZooError:
        spec = None
    extra: dict[str, str] = {}
    host = catalog.host
    for plugin, result in host.call_each(
        "zoo_extra_metadata", lambda _name: {"model": model, "backbone": spec}
    ):
        if result is None:
            continue
        if not isinstance(result, Mapping):
            host.record_error(plugin, f"zoo_extra_metadata returned {type(result).__name__}, "
                                      "not a mapping of str to str")
            continue
        for key, value in result.items():
            if not isinstance(key, str) or not key.startswith(f"{plugin}.") or key in KEYS:
                host.record_error(plugin, f"zoo_extra_metadata key {key!r} is not namespaced "
                                          f"'{plugin}.<key>'; it was not saved")
            elif not isinstance(value, str):
                host.record_error(plugin, f"zoo_extra_metadata value of {key!r} is a "
                                          f"{type(value).__name__}, not a string; not saved")
            else:
                extra[key] = value
    return extra


def timm_config(
    model: nn.Module,
    classes: list[str] | None,
    input_config: Mapping[str, Any],
    build: Mapping[str, Any],
) -> dict[str, Any]:
    """The timm-style ``config.json`` of ``model``, as ``timm.models.push_to_hf_hub`` writes it.

    A timm model gets timm's own writer (``save_config_for_hf``), so the folder loads with
    ``timm.create_model("local-dir:<folder>", pretrained=True)``; other models get the same
    layout from zoo's build record.
    """
    data_config = {k: input_config[k] for k in ("mean", "std", "interpolation", "crop_pct",
                                                "crop_mode") if k in input_config}
    if isinstance(getattr(model, "pretrained_cfg", None), dict):
        try:
            from timm.models._hub import save_config_for_hf

            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "config.json"
                save_config_for_hf(
                    model, str(path),
                    model_config={"label_names": list(classes)} if classes else None,
                    data_config=data_config,
                )
                return json.loads(path.read_text(encoding="utf-8"))
        except Exception:  # an older timm, or arguments it cannot serialize: generic layout
            pass
    name = str(build.get("backbone", "")).split(":", 1)[-1]
    num_classes = build.get("num_classes")
    if num_classes is None:
        num_classes = getattr(model, "num_classes", None)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool):
        num_classes = None
    pretrained_cfg = {
        "architecture": name,
        **({"tag": build["tag"]} if build.get("tag") else {}),
        **input_config,
        "num_classes": num_classes,
    }
    config: dict[str, Any] = {"architecture": name, "num_classes": num_classes}
    if classes:
        config["label_names"] = list(classes)
    if build.get("kwargs"):
        config["model_args"] = dict(build["kwargs"])
    config["pretrained_cfg"] = pretrained_cfg
    return config
