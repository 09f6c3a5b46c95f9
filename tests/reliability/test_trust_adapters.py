"""The adapters a file records are untrusted, sealed or not.

A file records them once, as the additions of its plan (``zoo.plan``); a format-1 file also
listed them in ``zoo.adapters``, which must agree (``tests/data/v1/lora.safetensors``). Anyone
can edit a saved file's metadata and re-seal it. Each hostile list of adapters below is written
into a real saved model with LoRA adapters and resealed; ``zoo.load`` and ``zoo.inspect`` must
refuse it with :class:`zoo.CorruptFileError` naming the file (a kind whose plugin is missing or
unknown: :class:`zoo.UnknownNameError`, as for backbones) -- never another exception, and never
by building what the file asks for: adapters are built on the ``meta`` device first, so a
hostile rank allocates nothing.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from fileformat_helpers import v1_copy, write_file

import zoo
from zoo.io.fileformat import read_file

VIT = "timm:vit_tiny_patch16_224"
VIT_ARGS = {"img_size": 32, "patch_size": 8, "depth": 2}
QKV = "blocks.0.attn.qkv"


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    """A full file of a 2-block ViT with LoRA (rank 2) on its linears."""
    model = zoo.create(VIT, num_classes=3, **VIT_ARGS)
    zoo.freeze(model, "lora:rank=2")
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.01)
    return zoo.save(model, tmp_path / "m.safetensors", delta=False)


def reseal(path: Path, **changes: str) -> None:
    """Rewrite a saved file with changed metadata and a valid seal (what anyone can do)."""
    saved = read_file(path)
    write_file(path, dict(saved.tensors), {**saved.metadata, **changes})


@pytest.fixture
def saved_v1(tmp_path: Path) -> Path:
    """A format-1 delta of a CNN with LoRA (rank 2), whose ``zoo.adapters`` repeats the plan's
    additions."""
    return v1_copy(tmp_path, "lora")


def plan_of(path: Path) -> dict[str, Any]:
    return json.loads(read_file(path).metadata["zoo.plan"])


def listed(path: Path) -> list[dict[str, Any]]:
    """The adapters a file records: a format-1 file's ``zoo.adapters``, else its plan's."""
    metadata = read_file(path).metadata
    if "zoo.adapters" in metadata:
        return json.loads(metadata["zoo.adapters"])
    return plan_of(path)["additions"]


def on_qkv(change: Callable[[dict[str, Any]], None]) -> Callable[[list], Any]:
    """A change of the entry of ``blocks.0.attn.qkv`` (the first entry in a file without it)."""

    def apply(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        entries = copy.deepcopy(entries)
        change(next((e for e in entries if e["target"] == QKV), entries[0]))
        return entries

    return apply


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda entry: entry.__setitem__(key, value)


def _arg(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda entry: entry["args"].__setitem__(key, value)


def _param(name: str, shape: Any) -> Callable[[dict[str, Any]], None]:
    return lambda entry: entry["params"].__setitem__(name, shape)


#: (id, new adapters from the saved list: JSON text or a function, error, fragment). These are
#: refused by the checks of the metadata itself: in a format-1 file's zoo.adapters (zoo.plan is
#: left as it was), and (but the two that contradict the plan) in a file's plan.
MALFORMED: list[tuple[str, Any, type, str]] = [
    ("not-json", "[{", zoo.CorruptFileError, "not valid JSON"),
    ("not-a-list", '{"a": 1}', zoo.CorruptFileError, "JSON list"),
    (
        "nan",
        '[{"target": "a", "kind": "zoo:lora", "args": {"alpha": NaN}}]',
        zoo.CorruptFileError,
        "NaN",
    ),
    ("kind-bare", on_qkv(_set("kind", "lora")), zoo.CorruptFileError, '"plugin:name"'),
    ("kind-space", on_qkv(_set("kind", "zoo:lo ra")), zoo.CorruptFileError, '"plugin:name"'),
    ("target-not-path", on_qkv(_set("target", "a; rm -rf")), zoo.CorruptFileError, "module path"),
    (
        "params-17",
        on_qkv(_set("params", {f"lora.P{i}": [1] for i in range(17)})),
        zoo.CorruptFileError,
        "1 to 16",
    ),
    ("dims-9", on_qkv(_param("lora.A", [1] * 9)), zoo.CorruptFileError, "at most 8"),
    ("dim-huge", on_qkv(_param("lora.A", [2**40, 192])), zoo.CorruptFileError, "integers up to"),
    ("dim-negative", on_qkv(_param("lora.A", [-2, 192])), zoo.CorruptFileError, "integers up to"),
    ("unknown-field", on_qkv(_set("code", "import os")), zoo.CorruptFileError, "unknown field"),
    ("args-deep", on_qkv(_arg("x", [[[[[[1]]]]]])), zoo.CorruptFileError, "nest deeper"),
    ("depth", on_qkv(_set("depth", -1)), zoo.CorruptFileError, "depth"),
    ("twice", lambda e: [*e, e[0]], zoo.CorruptFileError, "listed twice"),
    ("too-many", lambda e: e * 10_001, zoo.CorruptFileError, "at most 10000"),
    ("fewer-than-plan", lambda e: e[1:], zoo.CorruptFileError, "contradicts itself"),
    ("other-than-plan", on_qkv(_arg("alpha", 1.0)), zoo.CorruptFileError, "contradicts itself"),
]
#: Consistent hostile files: the plan's additions (and the names it plans) changed, refused
#: when the model is rebuilt (kinds resolved, targets found, shapes compared, adapters built).
INCONSISTENT: list[tuple[str, Any, type, str]] = [
    ("kind-unknown", on_qkv(_set("kind", "zoo:evil")), zoo.UnknownNameError, "'zoo:evil'"),
    ("kind-no-plugin", on_qkv(_set("kind", "ghost:lora")), zoo.UnknownNameError, "'ghost'"),
    (
        "target-missing",
        on_qkv(_set("target", "blocks.9.attn.qkv")),
        zoo.CorruptFileError,
        "does not have",
    ),
    ("target-moved", on_qkv(_set("target", "blocks.0.norm1")), zoo.CorruptFileError, "declares"),
    ("shape-vs-file", on_qkv(_param("lora.A", [3, 192])), zoo.CorruptFileError, "declares"),
    ("shape-extra", on_qkv(_param("lora.C", [2, 2])), zoo.CorruptFileError, "declares"),
    ("rank-vs-shape", on_qkv(_arg("rank", 7)), zoo.CorruptFileError, "cannot be injected"),
    ("dropout", on_qkv(_arg("dropout", 5.0)), zoo.CorruptFileError, "cannot be injected"),
    ("args-text", on_qkv(_arg("rank", "eight")), zoo.CorruptFileError, "cannot be injected"),
    ("vpt-on-linear", on_qkv(_set("kind", "zoo:vpt")), zoo.CorruptFileError, "cannot be injected"),
]


def hostile_value(saved: Path, value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value(listed(saved)))


def in_plan(saved: Path, value: Any) -> str:
    """``zoo.plan`` with its additions replaced by the hostile value (JSON text kept as it is)."""
    return json.dumps({**plan_of(saved), "additions": "HOSTILE"}).replace(
        '"HOSTILE"', hostile_value(saved, value)
    )


def consistent(saved: Path, value: Any) -> dict[str, str]:
    """zoo.plan's additions changed by ``value``, with the names it plans: a file whose
    metadata agrees with itself."""
    old, new = listed(saved), value(listed(saved))
    plan = plan_of(saved)
    names = [f"{e['target']}.{n}" for e in old for n in e["params"]]
    plan["trainable"] = [n for n in plan["trainable"] if n not in names] + [
        f"{e['target']}.{n}" for e in new for n in e["params"]
    ]
    scales = plan.get("lr_scale", {})  # lora declares its rate: the scales move with the names
    moved = {n: scales.pop(n) for n in names if n in scales}
    for before, after in zip(old, new, strict=True):
        for n in after["params"]:
            key = f"{before['target']}.{n}"
            if key in moved:
                scales[f"{after['target']}.{n}"] = moved[key]
    plan["additions"] = new
    return {"zoo.plan": json.dumps(plan)}


def check_refused(saved: Path, error: type, fragment: str) -> None:
    """``zoo.load`` and ``zoo.inspect`` refuse the file with ``error`` naming it and saying
    ``fragment``; a kind that is not installed leaves ``zoo.inspect`` a note instead."""
    with pytest.raises(zoo.ZooError) as info:
        zoo.load(saved)
    assert isinstance(info.value, error), repr(info.value)
    assert str(saved) in str(info.value) and fragment in str(info.value), str(info.value)
    if error is zoo.UnknownNameError:  # described without the per-depth summary
        assert any(fragment in note for note in zoo.inspect(saved).notes)
        return
    with pytest.raises(error) as info:
        zoo.inspect(saved)
    assert str(saved) in str(info.value) and fragment in str(info.value), str(info.value)


@pytest.mark.parametrize(
    ("value", "error", "fragment"),
    [case[1:] for case in MALFORMED],
    ids=[case[0] for case in MALFORMED],
)
def test_malformed_adapters_are_refused(saved_v1, value, error, fragment):
    reseal(saved_v1, **{"zoo.adapters": hostile_value(saved_v1, value)})
    check_refused(saved_v1, error, fragment)


#: The fragments of :data:`MALFORMED` where the plan (the one list of a format-2 file) says it
#: in its own words; the two cases of a list that contradicts the plan have no format-2 twin.
IN_PLAN = {"not-a-list": "additions must be a list", "twice": "two additions put a 'lora'"}


@pytest.mark.parametrize(
    ("value", "error", "fragment"),
    [(v, e, IN_PLAN.get(i, f)) for i, v, e, f in MALFORMED if "than-plan" not in i],
    ids=[case[0] for case in MALFORMED if "than-plan" not in case[0]],
)
def test_malformed_additions_in_the_plan_are_refused(saved, value, error, fragment):
    reseal(saved, **{"zoo.plan": in_plan(saved, value)})
    check_refused(saved, error, fragment)
    with pytest.raises(error, match=r"'zoo\.plan'"):
        zoo.load(saved)


@pytest.mark.parametrize(
    ("value", "error", "fragment"),
    [case[1:] for case in INCONSISTENT],
    ids=[case[0] for case in INCONSISTENT],
)
def test_adapters_that_contradict_the_model_are_refused(saved, value, error, fragment):
    reseal(saved, **consistent(saved, value))
    check_refused(saved, error, fragment)


def test_missing_kind_plugin_says_which(saved):
    reseal(saved, **consistent(saved, on_qkv(_set("kind", "ghost:lora"))))
    with pytest.raises(zoo.UnknownNameError) as info:
        zoo.load(saved)
    message = str(info.value)
    assert "adapters of kind 'ghost:lora' from plugin 'ghost'" in message
    assert "not installed" in message and "install the plugin" in message


def test_hostile_rank_allocates_nothing(saved):
    # rank 2**18 on qkv (192 -> 576): A and B would take 800 MB if they were built on the CPU
    rank = 2**18
    reseal(saved, **consistent(saved, on_qkv(_arg("rank", rank))))
    clear_refs = Path("/proc/self/clear_refs")
    if not clear_refs.exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to measure the peak memory")
    before = _kib("VmRSS")
    clear_refs.write_text("5")  # resets the peak (VmHWM) to the current RSS
    with pytest.raises(zoo.CorruptFileError, match="cannot be injected"):
        zoo.load(saved)
    grown = _kib("VmHWM") - before
    assert grown < 100 * 1024, f"loading grew the peak memory by {grown} KiB"


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


def test_saving_refuses_what_loading_would_refuse(saved):
    model = zoo.load(saved)
    (adapter,) = [m for m in model.modules() if getattr(m, "zoo_addition", None) is not None][:1]
    good = adapter.zoo_addition
    adapter.zoo_addition = zoo.Addition(  # arguments over the bounds a reader accepts
        target=good.target, kind=good.kind, params=good.params, args={"note": "x" * 2000}
    )
    with pytest.raises(zoo.ZooError, match=r"zoo\.plan"):
        zoo.save(model, saved.parent / "again.safetensors")
    assert not (saved.parent / "again.safetensors").exists()
