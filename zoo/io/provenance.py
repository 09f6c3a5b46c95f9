"""What a save records about where a model comes from: the versions of the plugins it depends
on, the plugins' ``zoo_extra_metadata`` entries, and the timm-style ``config.json``.

These read the model and the catalog's plugins; the metadata schema they fill is
:mod:`zoo.io.metadata`. A plugin's answers are untrusted: bad entries are recorded on the
plugin and left out, never saved.
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from zoo.core import checks
from zoo.errors import ZooError
from zoo.io.metadata import KEYS, V1_KEYS

if TYPE_CHECKING:
    from torch import nn

    from zoo.core.catalog import Catalog
    from zoo.core.specs import BackboneSpec
    from zoo.plans.plan import Addition, Plan


def plugin_versions(
    backbone: str, plan: Plan | None, catalog: Catalog, additions: Sequence[Addition] = ()
) -> dict[str, Any]:
    """Versions of the plugins a saved model depends on: the backbone's, the policy's and
    those of its adapters' kinds."""

    wanted = {backbone.split(":", 1)[0]}
    if plan is not None and ":" in plan.policy:
        wanted.add(plan.policy.split(":", 1)[0])
    wanted.update(a.kind.split(":", 1)[0] for a in additions if ":" in a.kind)
    records = catalog.host.records
    return {name: (records[name].version if name in records else None) for name in sorted(wanted)}


def plugin_metadata(model: nn.Module, backbone: str, catalog: Catalog) -> dict[str, str]:
    """Entries from every plugin's ``zoo_extra_metadata``; bad entries are recorded, not saved.

    A plugin's mapping is read inside the plugin's isolation: one that raises while iterated
    (even ``SystemExit``) is recorded and adds nothing, and the save goes on. Keys must be
    ``"<plugin>.<key>"`` and values strings, both valid Unicode (no lone surrogates); at most
    :data:`EXTRA_METADATA_LIMIT` bytes (UTF-8, keys and values) per plugin are kept.
    """
    try:
        spec = catalog.backbones.lookup(backbone)
    except ZooError:
        spec = None
    extra: dict[str, str] = {}
    host = catalog.host
    for plugin, (entries, problems) in host.call_each(
        "zoo_extra_metadata",
        lambda _name: {"model": model, "backbone": spec},
        accept=_read_extra_metadata,
    ):
        for problem in problems:
            host.record_error(plugin, f"zoo_extra_metadata {problem}")
        extra.update(entries)
    return extra


#: The most one plugin's ``zoo_extra_metadata`` may add to a file: keys and values, UTF-8 bytes,
#: and entries read (refused ones included).
EXTRA_METADATA_LIMIT = 64 * 1024
EXTRA_METADATA_ENTRIES = 1024


def _read_extra_metadata(plugin: str, result: Any) -> tuple[dict[str, str], list[str]]:
    """A plugin's answer copied to plain ``str`` entries, and why entries were refused."""
    if result is None:
        return {}, []
    if not isinstance(result, Mapping):
        return {}, [f"returned {type(result).__name__}, not a mapping of str to str"]
    entries: dict[str, str] = {}
    problems: list[str] = []
    size = 0
    for count, (key, value) in enumerate(result.items(), 1):
        if count > EXTRA_METADATA_ENTRIES:
            return {}, [f"returned more than {EXTRA_METADATA_ENTRIES} entries; none were saved"]
        key, value = _plain(key), _plain(value)  # a str subclass's own methods never run
        problem = _extra_entry_problem(plugin, key, value)
        if problem is None:
            size += len(key.encode("utf-8")) + len(value.encode("utf-8"))
            entries[key] = value
        elif len(problems) < 5:
            problems.append(problem)
    if size > EXTRA_METADATA_LIMIT:
        return {}, [f"entries exceed {EXTRA_METADATA_LIMIT // 1024} KiB; none were saved"]
    return entries, problems


def _plain(value: Any) -> Any:
    return str.__str__(value) if isinstance(value, str) else value


def _extra_entry_problem(plugin: str, key: Any, value: Any) -> str | None:
    shown = reprlib.repr(key)
    if not isinstance(key, str) or not key.startswith(f"{plugin}.") or key in (*KEYS, *V1_KEYS):
        return f"key {shown} is not namespaced '{plugin}.<key>'; it was not saved"
    if not isinstance(value, str):
        return f"value of {shown} is a {type(value).__name__}, not a string; not saved"
    if checks.lone_surrogate(key) is not None or checks.lone_surrogate(value) is not None:
        return f"entry {shown} is not valid Unicode (a lone surrogate); not saved"
    return None


def timm_config(
    model: nn.Module,
    classes: list[str] | None,
    input_config: Mapping[str, Any],
    build: Mapping[str, Any],
    spec: BackboneSpec | None = None,
) -> dict[str, Any]:
    """The timm-style ``config.json`` of ``model`` (the layout ``timm.models.push_to_hf_hub``
    writes, so a saved folder loads with ``timm.create_model("local-dir:<folder>")``).

    A backbone whose spec has ``config_json`` (the timm plugin's: timm's own writer) gives it;
    when that is missing, fails or returns no mapping, zoo writes the same layout from its
    build record.
    """
    data_config = {
        k: input_config[k]
        for k in ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")
        if k in input_config
    }
    writer = getattr(spec, "config_json", None)
    if writer is not None:
        try:
            written = writer(model, list(classes) if classes else None, data_config)
        except Exception:  # the plugin's writer failed: the generic layout is written instead
            written = None
        if isinstance(written, Mapping):
            return dict(written)
    name = str(build.get("backbone", "")).split(":", 1)[-1]
    num_classes = build.get("num_classes")
    if num_classes is None:
        num_classes = getattr(model, "num_classes", None)
    num_classes = int(num_classes) if checks.is_int(num_classes) else None
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
