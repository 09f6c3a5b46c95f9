"""zoo.save / zoo.load / zoo.inspect: round trips, deltas, interop, safety, concurrency."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from fileformat_helpers import v1_copy, write_file

import zoo
from zoo.core.catalog import Catalog
from zoo.core.plugins import make_plugin_host
from zoo.errors import (
    BaseMismatchError,
    CorruptFileError,
    InvalidNameError,
    MissingBaseError,
    ModelExistsError,
    TamperedFileError,
    WeightsMismatchError,
    ZooError,
)
from zoo.io import store
from zoo.io.fileformat import read_file, read_header
from zoo.io.metadata import V1_KEYS, ZooMetadata
from zoo.testing import installed_catalog

# A small real plugin (registered through the real hooks) for the tests that need a fresh
# process or many saves: building it takes milliseconds. "seeded" weights stand in for a
# pretrained download (the hub is unreachable here).
TINY_PLUGIN = """
import torch
from torch import nn
import zoo

PLUGIN_NAME = "tinyplug"


def build(num_classes=None, pretrained=False, width=4):
    if pretrained:
        torch.manual_seed(1234)
    return nn.Sequential(
        nn.Conv2d(3, width, 3), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes or 5),
    )


@zoo.hookimpl
def zoo_register_backbones(register):
    register(zoo.BackboneSpec(name="tiny", create=build, pretrained_tags=("seeded",),
                              summary="conv-bn-linear", head="5"))


@zoo.hookimpl
def zoo_extra_metadata(model, backbone):
    return {"tinyplug.width": str(model[0].out_channels), "bad key": "x"}
"""


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """The tiny plugin in a catalog of its own, installed as the process-wide catalog."""
    folder = tmp_path / "plugin_src"
    folder.mkdir()
    (folder / "tinyplug_zoo.py").write_text(TINY_PLUGIN)
    monkeypatch.syspath_prepend(str(folder))
    import importlib

    module = importlib.import_module("tinyplug_zoo")
    host = make_plugin_host(builtins=False, autoload=False, extra={"tinyplug": module})
    with installed_catalog(Catalog(host)) as catalog:
        yield catalog
    sys.modules.pop("tinyplug_zoo", None)


def images(size: int, n: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(7))


def perturb(model: torch.nn.Module) -> None:
    """Make every parameter and norm statistic differ from a fresh build ("training")."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
        for name, b in model.named_buffers():
            if "running_var" in name:
                b.mul_(1.5)


# ---------------------------------------------------------------- round trips (real timm)

ROUND_TRIPS = [
    ("timm:resnet18", {}, 32, "freeze-to:depth=3"),
    ("timm:vit_tiny_patch16_224", {"img_size": 32}, 32, "bitfit"),
    ("timm:levit_128s", {"img_size": 64}, 64, "norm-only"),
]


@pytest.mark.parametrize(("backbone", "kwargs", "size", "policy"), ROUND_TRIPS)
def test_round_trip_gives_bit_identical_outputs(backbone, kwargs, size, policy):
    model = zoo.create(backbone, num_classes=3, **kwargs)
    perturb(model)
    model.eval()
    x = images(size)
    with torch.no_grad():
        expected = model(x)

    zoo.save(model, "plain", classes=["cat", "dog", "eel"])  # no policy: all trained
    loaded = zoo.load("plain")
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    assert loaded.zoo.classes == ["cat", "dog", "eel"]
    assert loaded.zoo.input_config == model.zoo.input_config
    assert loaded.zoo.build.backbone == backbone
    assert loaded.zoo.build.kwargs == kwargs
    assert loaded.zoo.base["kind"] == "store"
    assert loaded.zoo.metadata["zoo.kind"] == "full"
    assert loaded.zoo.plan is None

    zoo.freeze(model, policy)
    model.eval()
    path = zoo.save(model, "planned")
    again = zoo.load(path, trainable=True)  # re-applies the saved plan
    with torch.no_grad():
        assert torch.equal(again(x), expected)
    assert again.zoo.plan.policy == model.zoo.plan.policy
    assert again.zoo.plan.trainable == model.zoo.plan.trainable
    assert again.zoo.plan.norms == model.zoo.plan.norms
    assert [n for n, p in again.named_parameters() if p.requires_grad] == model.zoo.plan.trainable


def test_metadata_records_everything_needed(tiny):
    model = zoo.create("tinyplug:tiny", num_classes=2, width=6)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("5."))
    path = zoo.save(model, "m", classes=["a", "b"])
    header = read_header(path)
    md = header.metadata
    assert md["format"] == "pt"
    assert md["zoo.format_version"] == "2"
    assert md["zoo.kind"] == "full"
    assert json.loads(md["zoo.build"]) == {
        "backbone": "tinyplug:tiny",
        "tag": None,
        "num_classes": 2,
        "kwargs": {"width": 6},
    }
    assert json.loads(md["zoo.classes"]) == ["a", "b"]
    plan = json.loads(md["zoo.plan"])  # no policy: the plan of what trained, every parameter
    assert plan["trainable"] == ["5.weight", "5.bias"]
    assert sorted(plan["trainable"] + plan["frozen"]) == sorted(
        n for n, _ in model.named_parameters()
    )
    assert plan["policy"] == ""
    meta = ZooMetadata.parse(md, source=str(path), shapes=header.shapes)
    assert meta.num_trained_params == 6 * 2 + 2  # derived, not stored
    assert meta.num_params == sum(p.numel() for p in model.parameters())
    assert not set(V1_KEYS) & set(md)  # each fact once
    assert json.loads(md["zoo.input_config"])["mean"] == [0.485, 0.456, 0.406]
    assert md["tinyplug.width"] == "6"  # from the plugin's zoo_extra_metadata hook
    assert "bad key" not in md  # not namespaced: recorded as a plugin problem instead
    assert any("bad key" in e for _, e in tiny.host.problems)
    assert "zoo.created" in md and "zoo.version" in md and "zoo.content_sha256" in md
    config = json.loads((path.parent / "config.json").read_text())
    assert config["zoo"]["content_sha256"] == md["zoo.content_sha256"]


def test_wrong_number_of_class_names_is_refused(tiny):
    model = zoo.create("tinyplug:tiny", num_classes=2)
    with pytest.raises(ZooError, match="3 class names for a model with 2 outputs"):
        zoo.save(model, "m", classes=["a", "b", "c"])


def test_model_not_built_by_zoo_is_refused():
    with pytest.raises(ZooError, match=r"zoo\.create"):
        zoo.save(torch.nn.Linear(2, 2), "m")


# ---------------------------------------------------------------- timm interop


def test_full_save_loads_in_plain_timm_with_identical_outputs():
    import timm

    model = zoo.create("timm:resnet18", num_classes=4)
    perturb(model)
    model.eval()
    path = zoo.save(model, "cats", classes=list("abcd"))
    plain = timm.create_model(f"local-dir:{path.parent}", pretrained=True).eval()
    x = images(32)
    with torch.no_grad():
        assert torch.equal(plain(x), model(x))
    assert plain.pretrained_cfg["label_names"] == list("abcd")


# ---------------------------------------------------------------- targets and overwrite


def test_paths_and_names(tiny, tmp_path):
    model = zoo.create("tinyplug:tiny", num_classes=2)
    single = zoo.save(model, str(tmp_path / "one.safetensors"))
    assert single == tmp_path / "one.safetensors" and single.is_file()
    folder = zoo.save(model, tmp_path / "folder")
    assert folder == tmp_path / "folder" / "model.safetensors"
    assert (tmp_path / "folder" / "config.json").is_file()
    named = zoo.save(model, "named")
    assert named == store.models_dir() / "named" / "model.safetensors"
    for target in (single, tmp_path / "folder", "named"):
        assert zoo.load(target).zoo.build.backbone == "tinyplug:tiny"


def test_overwrite_is_refused_without_the_flag(tiny):
    first = zoo.create("tinyplug:tiny", num_classes=2)
    zoo.save(first, "cats")
    second = zoo.create("tinyplug:tiny", num_classes=2)
    with pytest.raises(ModelExistsError, match="overwrite=True"):
        zoo.save(second, "cats")
    zoo.save(second, "cats", overwrite=True)
    loaded = zoo.load("cats")
    assert torch.equal(loaded[5].weight, second[5].weight)
    with pytest.raises(InvalidNameError, match="differs only in case from the existing entry"):
        zoo.save(second, "CATS", overwrite=True)
    with pytest.raises(InvalidNameError, match="path separator"):
        zoo.save(second, "a\\b")


def test_load_unknown_name_suggests_close_ones(tiny):
    zoo.save(zoo.create("tinyplug:tiny"), "cats-v1")
    with pytest.raises(zoo.ModelNotFoundError, match="cats-v1"):
        zoo.load("cats-v2")


# ---------------------------------------------------------------- strictness and corruption


def reseal(path: Path, change_metadata=None, change_tensors=None) -> None:
    """Rewrite a saved file with changed content and a *valid* seal (not tampering)."""
    saved = read_file(path)
    tensors = dict(saved.tensors)
    metadata = dict(saved.metadata)
    if change_metadata:
        change_metadata(metadata)
    if change_tensors:
        change_tensors(tensors)
    write_file(path, tensors, metadata)


def test_mismatched_tensors_are_named(tiny):
    path = zoo.save(zoo.create("tinyplug:tiny", num_classes=2), "m")

    def break_tensors(t):
        t["5.weight"] = torch.zeros(7, 4)  # wrong shape
        t["extra.bias"] = torch.zeros(1)  # unexpected
        del t["1.running_mean"]  # missing

    reseal(path, change_tensors=break_tensors)
    with pytest.raises(WeightsMismatchError) as info:
        zoo.load("m")
    message = str(info.value)
    assert "1.running_mean" in message and "extra.bias" in message and "5.weight" in message


def test_tampered_saved_model_is_refused(tiny):
    path = zoo.save(zoo.create("tinyplug:tiny", num_classes=2), "m")
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(TamperedFileError, match="tensor data changed"):
        zoo.load("m")
    with pytest.raises(TamperedFileError):
        zoo.inspect("m")


def test_truncated_saved_model_is_refused(tiny):
    path = zoo.save(zoo.create("tinyplug:tiny", num_classes=2), "m")
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CorruptFileError, match=str(path)):
        zoo.load("m")


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("zoo.classes", '"cat"', "list of strings"),
        ("zoo.build", "[1]", "JSON object"),
        ("zoo.kind", "partial", "not one of full, delta"),
        ("zoo.plan", "{not json", "not valid JSON"),
    ],
)
def test_metadata_of_the_wrong_type_names_the_key(tiny, key, value, problem):
    path = zoo.save(zoo.create("tinyplug:tiny", num_classes=2), "m")
    reseal(path, change_metadata=lambda md: md.update({key: value}))
    with pytest.raises(CorruptFileError) as info:
        zoo.load("m")
    assert key in str(info.value) and problem in str(info.value)


@pytest.mark.parametrize(
    ("key", "value", "problem"), [("zoo.num_classes", "-3", "non-negative integer")]
)
def test_format_1_metadata_of_the_wrong_type_names_the_key(tmp_path, key, value, problem):
    """The keys only format 1 wrote keep their checks on format-1 files."""
    path = v1_copy(tmp_path)
    reseal(path, change_metadata=lambda md: md.update({key: value}))
    with pytest.raises(CorruptFileError) as info:
        zoo.load(path)
    assert key in str(info.value) and problem in str(info.value)


def test_build_arguments_the_plugin_rejects_are_a_clear_error(tiny):
    path = zoo.save(zoo.create("tinyplug:tiny", num_classes=2), "m")

    def bogus(md):
        build = json.loads(md["zoo.build"])
        build["kwargs"] = {"bogus": 1}
        md["zoo.build"] = json.dumps(build)

    reseal(path, change_metadata=bogus)
    with pytest.raises(ZooError, match="cannot rebuild backbone tinyplug:tiny") as info:
        zoo.load("m")
    assert "bogus" in str(info.value) and str(path) in str(info.value)


def test_plain_safetensors_is_not_a_saved_model(tmp_path):
    path = write_file(tmp_path / "w.safetensors", {"x": torch.ones(1)})
    with pytest.raises(CorruptFileError, match="not a zoo model file"):
        zoo.load(path)


# ---------------------------------------------------------------- deltas


def base_file(tmp_path: Path, num_classes: int = 1000) -> Path:
    """Weights standing in for a pretrained checkpoint (plain safetensors, as timm ships)."""
    import timm

    weights = timm.create_model("resnet18", num_classes=num_classes).state_dict()
    return write_file(tmp_path / "base.safetensors", weights)


def test_delta_round_trip_is_small_and_exact(tmp_path):
    path = base_file(tmp_path)
    model = zoo.create("timm:resnet18", num_classes=3, weights=path)
    assert model.zoo.base["kind"] == "file"
    zoo.freeze(model, "linear-probe")
    with torch.no_grad():
        model.fc.weight.add_(1.0)
        model.layer4[1].bn2.running_var.mul_(1.5)  # a frozen buffer that changed anyway
    model.eval()
    x = images(32)
    with torch.no_grad():
        expected = model(x)
    full = zoo.save(model, "full")
    delta = zoo.save(model, "delta", delta=True)
    assert read_header(delta).names == ["fc.bias", "fc.weight", "layer4.1.bn2.running_var"]
    assert delta.stat().st_size < 0.01 * full.stat().st_size
    md = read_header(delta).metadata
    assert md["zoo.kind"] == "delta"
    assert json.loads(md["zoo.base"])["sha256"] == model.zoo.base["sha256"]
    with torch.no_grad():
        assert zoo.load("delta")(x).equal(expected)
        assert zoo.load("full")(x).equal(expected)


def test_a_delta_file_is_a_valid_starting_point_for_create(tmp_path):
    """weights=DELTA merges the delta with its verified base, then adapts from that."""
    path = base_file(tmp_path)
    model = zoo.create("timm:resnet18", num_classes=3, weights=path)
    zoo.freeze(model, "linear-probe")
    with torch.no_grad():
        model.fc.weight.add_(1.0)
    delta = zoo.save(model, tmp_path / "delta.safetensors", delta=True)
    again = zoo.create("timm:resnet18", num_classes=3, weights=delta)
    assert again.fc.weight.equal(model.fc.weight)
    assert again.zoo.base["ref"] == str(delta.resolve())
    again_head = zoo.create("timm:resnet18", num_classes=5, weights=delta)  # new head
    assert again_head.layer1[0].conv1.weight.equal(model.layer1[0].conv1.weight)


def test_delta_refuses_a_changed_base_naming_both_hashes(tmp_path):
    path = base_file(tmp_path, num_classes=3)
    model = zoo.create("timm:resnet18", num_classes=3, weights=path)
    with torch.no_grad():
        model.fc.bias.add_(1.0)
    zoo.save(model, "d", delta=True)
    recorded = model.zoo.base["sha256"]
    base_file(tmp_path, num_classes=3)  # different random weights under the same path
    with pytest.raises(BaseMismatchError) as info:
        zoo.load("d")
    found = zoo.io.fileformat.hash_tensors(read_file(path).tensors)
    assert recorded in str(info.value) and found in str(info.value)
    path.unlink()
    with pytest.raises(MissingBaseError, match="missing"):
        zoo.load("d")


def test_delta_without_a_base_is_refused(tiny):
    model = zoo.create("tinyplug:tiny")
    with pytest.raises(MissingBaseError, match="random weights"):
        zoo.save(model, "d", delta=True)


def test_deltas_chain_through_store_entries(tiny):
    base = zoo.create("tinyplug:tiny", num_classes=2, pretrained="seeded")
    assert base.zoo.base == {"kind": "pretrained", "ref": "tinyplug:tiny", "sha256": None}
    base = zoo.create("tinyplug:tiny.seeded", num_classes=2, pretrained=True)
    assert base.zoo.base["ref"] == "tinyplug:tiny.seeded"
    for name, p in base.named_parameters():
        p.requires_grad_(name.startswith("5."))  # train the head only
    with torch.no_grad():
        base[5].weight.add_(1.0)
    x = images(8)
    first = zoo.save(base, "first", delta=True)
    assert read_header(first).names == ["5.bias", "5.weight"]  # new head vs the 5-class one
    stage1 = zoo.load("first", trainable=True)
    assert stage1.zoo.base["ref"] == "first"
    with torch.no_grad():
        stage1[1].weight.mul_(2.0)
    stage1.eval()
    with torch.no_grad():
        expected = stage1(x)
    second = zoo.save(stage1, "second", delta=True)
    assert read_header(second).names == ["1.weight", "5.bias", "5.weight"]
    with torch.no_grad():
        assert zoo.load("second")(x).equal(expected)
    with pytest.raises(ZooError, match="its own base"):
        zoo.save(zoo.load("second"), "second", delta=True, overwrite=True)
    with pytest.raises(zoo.StoreError, match="'second'"):
        store.remove("first")
    store.remove("first", force=True)
    with pytest.raises(MissingBaseError, match="'first'"):
        zoo.load("second")


# ---------------------------------------------------------------- inspect


def test_inspect_reports_metadata_and_trained_depths():
    model = zoo.create("timm:resnet18", num_classes=3)
    zoo.freeze(model, "linear-probe")
    zoo.save(model, "probe", classes=["a", "b", "c"])
    info = zoo.inspect("probe")
    assert info.verified and info.metadata.policy.endswith("linear-probe")
    depths = info.depths
    assert depths[-1]["trained_numel"] == depths[-1]["numel"] > 0
    assert all(d["trained_numel"] == 0 for d in depths[:-1])
    data = info.to_dict()
    assert data["classes"] == ["a", "b", "c"] and data["kind"] == "full"
    json.dumps(data)


# ---------------------------------------------------------------- crash safety and concurrency

SAVER = textwrap.dedent("""
    import sys, threading, torch, zoo
    from zoo.core.catalog import Catalog
    from zoo.core.plugins import make_plugin_host
    from zoo.api import set_catalog
    import tinyplug_zoo
    set_catalog(Catalog(make_plugin_host(builtins=False, autoload=False,
                                         extra={"tinyplug": tinyplug_zoo})))
    model = zoo.create("tinyplug:tiny", num_classes=2)
    threads = [threading.Thread(target=zoo.save, args=(model, "old"),
                                kwargs={"overwrite": True}),
               threading.Thread(target=zoo.save, args=(model, "new"))]
    for t in threads: t.start()
    for t in threads: t.join()
""")


@pytest.mark.slow
def test_save_killed_mid_write_leaves_previous_version_and_no_partial_entry(tiny, tmp_path):
    old = zoo.create("tinyplug:tiny", num_classes=2)
    zoo.save(old, "old")
    env = dict(
        os.environ,
        ZOO_TEST_PAUSE_BEFORE_REPLACE="60",
        PYTHONPATH=os.pathsep.join(
            [str(tmp_path / "plugin_src"), os.environ.get("PYTHONPATH", "")]
        ),
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", SAVER], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        paused = 0
        deadline = time.monotonic() + 120
        while paused < 2 and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            paused += line.startswith("zoo-test: paused")
        assert paused == 2, "the saver never reached the point between write and replace"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    entries = {e.name: e for e in store.list_saved()}
    assert sorted(entries) == ["old"] and entries["old"].ok  # no partial "new"
    loaded = zoo.load("old")
    for name, tensor in old.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    leftovers = store.gc().removed
    assert len(leftovers) == 2  # the temp file next to old's file, new's temp folder
    assert sorted(os.listdir(store.models_dir())) == ["old"]
    assert sorted(os.listdir(store.models_dir() / "old")) == ["config.json", "model.safetensors"]


def test_concurrent_saves_last_writer_wins_and_readers_see_whole_versions(tiny):
    versions = {}
    for i in range(3):
        model = zoo.create("tinyplug:tiny", num_classes=2)
        versions[f"v{i}"] = (model, {k: v.clone() for k, v in model.state_dict().items()})
    zoo.save(versions["v0"][0], "shared", classes=["v0", "x"])
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer(tag: str) -> None:
        try:
            for _ in range(3):
                zoo.save(versions[tag][0], "shared", classes=[tag, "x"], overwrite=True)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader() -> None:
        try:
            while not stop.is_set():
                model = zoo.load("shared")
                expected = versions[model.zoo.classes[0]][1]
                for name, tensor in model.state_dict().items():
                    assert torch.equal(tensor, expected[name]), name
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    readers = [threading.Thread(target=reader) for _ in range(2)]
    writers = [threading.Thread(target=writer, args=(tag,)) for tag in versions]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert errors == []
    final = read_header(store.model_file("shared")).metadata
    config = json.loads((store.entry_dir("shared") / "config.json").read_text())
    assert config["zoo"]["content_sha256"] == final["zoo.content_sha256"]
    assert sorted(os.listdir(store.entry_dir("shared"))) == ["config.json", "model.safetensors"]
