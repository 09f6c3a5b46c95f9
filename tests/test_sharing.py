"""Sharing models: Hub-ready folders with a model card (``zoo.export``), hub ids as starting
points and loads (``hf-hub:ORG/NAME`` through the real Hugging Face cache layout, offline),
and bases found by their hash wherever they are.

Real timm models (resnet10t on 32 px images), real files; the Hub cache is a real cache folder
(``HF_HUB_CACHE``: ``models--ORG--NAME/blobs``, ``snapshots/REV`` links, ``refs/main``) laid out
by :func:`publish`, never a fake server.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import ModelCard, ModelCardData

import zoo
from zoo.errors import BaseMismatchError, MissingBaseError, WeightsUnavailableError
from zoo.io.fileformat import read_header

CNN = "timm:resnet10t"
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
CLASSES = ["ant", "bee", "cicada"]


def nudged(model: torch.nn.Module, *, trainable_only: bool = False) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad or not trainable_only:
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return model.eval()


def out(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(X)


def base(name: str = "src") -> str:
    zoo.save(nudged(zoo.create(CNN, num_classes=3)), name, classes=CLASSES)
    return name


def lora(on: str = "src", name: str = "adapted") -> torch.nn.Module:
    model = zoo.load(on)
    zoo.freeze(model, "lora:rank=2")
    nudged(model, trainable_only=True)
    zoo.save(model, name)
    return model


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def publish(cache: Path, repo: str, folder: Path, revision: str = "a" * 40) -> Path:
    """Place ``folder`` in the Hub cache as ``repo`` at ``revision``, the way huggingface_hub's
    downloads leave it: each file once in ``blobs/`` (named by its hash), the snapshot a tree
    of relative links to them, ``refs/main`` naming the revision. Returns the snapshot."""
    org, name = repo.split("/")
    root = cache / f"models--{org}--{name}"
    snapshot = root / "snapshots" / revision
    for path in sorted(folder.rglob("*")):
        if path.is_dir() or ".zoo-tmp" in str(path):
            continue
        data = path.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(revision)
    return snapshot


# ---------------------------------------------------------------- export


def test_the_exported_config_carries_the_input_the_model_was_adapted_at(tmp_path):
    """timm's ``resolve_data_config`` reads the folder's ``pretrained_cfg``: a model adapted at
    32 px must say 32 px there, not its architecture's 176."""
    model = zoo.create(CNN, num_classes=3)
    model.zoo.input_config = dataclasses.replace(model.zoo.input_config, input_size=(3, 32, 32))
    zoo.save(model, "small", classes=CLASSES)
    assert zoo.load("small").zoo.input_config.input_size == (3, 32, 32)
    folder = zoo.export("small", tmp_path / "hub")
    timm_model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    resolved = timm.data.resolve_data_config({}, model=timm_model)
    assert resolved["input_size"] == (3, 32, 32)


def test_hub_export_of_a_full_model_loads_in_timm_within_1e5_with_a_valid_card(tmp_path):
    base()
    folder = zoo.export("src", tmp_path / "hub")
    assert sorted(os.listdir(folder)) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "resnet10t" and config["num_classes"] == 3
    assert config["label_names"] == CLASSES
    assert config["pretrained_cfg"]["input_size"] == [3, 176, 176]
    model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert (out(model) - out(zoo.load("src"))).abs().max() <= 1e-5

    card = ModelCard.load(folder / "README.md")
    assert isinstance(card.data, ModelCardData)
    data = card.data.to_dict()
    assert data["library_name"] == "timm" and data["pipeline_tag"] == "image-classification"
    assert {"timm", "zoo", "image-classification"} <= set(data["tags"])
    assert "base_model" not in data  # trained from random weights: no base to name
    ModelCardData(**data)  # the Hub's metadata class accepts it as it is
    text = card.text
    assert "3 classes, in output order: ant, bee, cicada." in text
    assert "| depth | group | tensors | params | trained |" in text
    assert "| 5 | head | 2 | 1,539 | all |" not in text  # nothing recorded as trained


def test_card_names_the_base_the_policy_what_trained_and_the_leaderboard(tmp_path):
    base()
    model = zoo.load("src")
    zoo.freeze(model, "linear-probe")
    nudged(model, trainable_only=True)
    model.zoo.compare = {
        "winner": "zoo:linear-probe",
        "epochs": 1,
        "rungs": [1],
        "budget": None,
        "budget_cut": False,
        "seconds": 1.0,
        "candidates": [
            {
                "policy": "zoo:linear-probe",
                "val_acc": 0.75,
                "val_loss": 0.5,
                "trainable_params": 1539,
                "trainable_percent": 0.03,
                "epochs": 1,
                "seconds": 1.0,
                "stopped_early": False,
                "trained_on": "24 images",
            }
        ],
        "notes": [],
    }
    folder = zoo.export(model, tmp_path / "probe")
    card = ModelCard.load(folder / "README.md")
    assert card.data.to_dict()["metrics"] == ["accuracy"]
    assert "- policy: `zoo:linear-probe`" in card.text
    assert "| 5 | head | 2 | 1,539 | all |" in card.text
    assert "| 1 | stage.1 | 6 | 73,984 | frozen |" in card.text
    assert "| zoo:linear-probe | 75.0 % | 0.5000 |" in card.text
    recorded = read_header(folder / "model.safetensors").metadata["zoo.base"]
    assert json.loads(recorded)["sha256"] in card.text  # the base, by hash
    with pytest.raises(zoo.ModelExistsError):
        zoo.export(model, folder)
    zoo.export(model, folder, overwrite=True)


def test_peft_export_on_a_saved_base_carries_the_base_and_refuses_other_weights(tmp_path):
    base()
    model = lora()
    folder = zoo.export("adapted", tmp_path / "peft")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] is None  # no timm name is these weights
    assert sorted(os.listdir(folder / "base")) == ["config.json", "model.safetensors"]
    card = ModelCard.load(folder / "README.md").data.to_dict()
    assert card["library_name"] == "peft" and "base_model" not in card
    # zoo loads it on the base beside it, and refuses other weights, naming both hashes
    assert torch.equal(out(zoo.import_peft(folder)), out(model))
    zoo.save(nudged(zoo.create(CNN, num_classes=3)), "other")
    with pytest.raises(BaseMismatchError) as info:
        zoo.import_peft(folder, base="other")
    recorded = zoo.inspect("src").metadata.tensors_sha256
    assert recorded in str(info.value) and "store 'other'" in str(info.value)
    # the base beside it is a timm folder: timm builds the base with the adapter's head
    timm_base = timm.create_model(f"local-dir:{folder / 'base'}", pretrained=True)
    assert torch.equal(out(timm_base), out(zoo.load("src")))


def test_peft_export_without_base_names_its_hash(tmp_path):
    base()
    lora()
    folder = zoo.export_peft("adapted", tmp_path / "peft", without_base=True)
    assert not (folder / "base").exists()
    recorded = zoo.inspect("src").metadata.tensors_sha256
    assert recorded in (folder / "README.md").read_text()
    with pytest.raises(zoo.ZooError, match="base_model_name_or_path is None"):
        zoo.import_peft(folder)  # nothing names a base: the user passes it
    assert torch.equal(out(zoo.import_peft(folder, base="src")), out(zoo.load("adapted")))


def test_cli_export_hub(tmp_path, capsys):
    from zoo.cli.main import main

    base()
    lora()
    assert main(["export", "adapted", "--hub", str(tmp_path / "x"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["files"] == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "base/config.json",
        "base/model.safetensors",
    ]
    assert summary["base_model_name_or_path"] is None
    recorded = zoo.inspect("src").metadata.tensors_sha256
    assert summary["base_sha256"] == recorded
    assert main(["export", "adapted", "--peft", str(tmp_path / "z"), "--without-base"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert f"the adapter needs the base with sha256 {recorded}: not included" in said
    assert main(["export", "src", "--peft", str(tmp_path / "y")]) == 1
    assert "no adapters to export" in capsys.readouterr().err


# ---------------------------------------------------------------- hub ids


def test_hf_hub_ids_load_a_timm_folder_a_zoo_file_and_a_peft_folder(tmp_path, hub_cache):
    base()
    model = lora()
    timm_folder = zoo.export("src", tmp_path / "full")
    (timm_folder / "model.safetensors").unlink()  # a plain timm folder: timm's own weights
    from safetensors.torch import save_file

    save_file(zoo.load("src").state_dict(), timm_folder / "model.safetensors")
    publish(hub_cache, "org/plain", timm_folder)
    plain = zoo.load("hf-hub:org/plain")
    assert torch.equal(out(plain), out(zoo.load("src")))
    assert plain.zoo.classes == CLASSES and plain.zoo.input_config.input_size == (3, 176, 176)
    assert plain.zoo.base["locations"] == [{"kind": "hub", "ref": "org/plain"}]

    publish(hub_cache, "org/zoo-file", zoo.export("src", tmp_path / "zoo-file"))
    assert torch.equal(out(zoo.load("hf-hub:org/zoo-file")), out(zoo.load("src")))

    publish(hub_cache, "org/adapter", zoo.export("adapted", tmp_path / "peft"))
    assert torch.equal(out(zoo.load("hf-hub:org/adapter")), out(model))


def test_hub_ids_as_starting_points(tmp_path, hub_cache, colours):
    base()
    publish(hub_cache, "org/src", zoo.export("src", tmp_path / "full"))
    result = zoo.adapt(
        "hf-hub:org/src",
        colours / "train",
        policy="linear-probe",
        epochs=1,
        batch_size=8,
        name="from-hub",
        delta=True,
    )
    assert result is not None
    # the delta names its base by hash and by hub id: it loads once the store copy is gone
    reference = json.loads(read_header(zoo.io.store.model_file("from-hub")).metadata["zoo.base"])
    assert {"kind": "hub", "ref": "org/src"} in reference["locations"]
    weights = zoo.adapt(
        CNN,
        colours / "train",
        policy="linear-probe",
        weights="hf-hub:org/src",
        epochs=1,
        batch_size=8,
    )
    assert weights is not None


def test_offline_hub_id_without_a_cached_copy_fails_at_once_naming_the_ways_out(
    hub_cache, network_calls, monkeypatch, colours
):
    for offline in ("1", ""):  # offline, or a network that refuses every connection
        monkeypatch.setenv("HF_HUB_OFFLINE", offline)
        for start in (
            lambda: zoo.load("hf-hub:org/missing"),
            lambda: zoo.adapt("hf-hub:org/missing", colours / "train", epochs=1),
            lambda: zoo.adapt(CNN, colours / "train", weights="hf-hub:org/missing", epochs=1),
        ):
            with pytest.raises(WeightsUnavailableError) as info:
                start()
            message = str(info.value)
            assert "hf-hub:org/missing" in message and str(hub_cache) in message
            assert "huggingface-cli download org/missing" in message
        if offline:
            assert network_calls == []  # offline: the network is never tried
    with pytest.raises(zoo.ZooError, match="is not a Hugging Face Hub id"):
        zoo.load("hf-hub:../etc")


def test_a_hub_snapshot_link_out_of_its_blobs_is_refused(tmp_path, hub_cache):
    base()
    snapshot = publish(hub_cache, "org/evil", zoo.export("src", tmp_path / "full"))
    outside = tmp_path / "outside.safetensors"
    shutil.copy(zoo.io.store.model_file("src"), outside)
    (snapshot / "model.safetensors").unlink()
    os.symlink(outside, snapshot / "model.safetensors")
    with pytest.raises(zoo.CorruptFileError, match="link"):
        zoo.load("hf-hub:org/evil")


# ---------------------------------------------------------------- bases by hash


def test_a_delta_in_a_fresh_zoo_home_finds_its_base_by_hash(tmp_path, monkeypatch):
    base()
    model = zoo.load("src")
    zoo.freeze(model, "linear-probe")
    nudged(model, trainable_only=True)
    delta = zoo.save(model, tmp_path / "delta.safetensors", delta=True)
    src = zoo.io.store.model_file("src").read_bytes()
    expected = out(model)

    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "fresh"))  # another machine
    with pytest.raises(MissingBaseError) as info:
        zoo.load(delta)
    recorded = json.loads(read_header(delta).metadata["zoo.base"])["sha256"]
    assert recorded in str(info.value) and "store entry 'src'" in str(info.value)
    # the same weights under another name: found by hash
    folder = zoo.io.store.entry_dir("copied-base")
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(src)
    assert torch.equal(out(zoo.load(delta)), expected)
    # other weights under the base's own name are refused, naming both hashes
    shutil.rmtree(folder)
    zoo.save(nudged(zoo.create(CNN, num_classes=3), trainable_only=False), "src")
    zoo.save(zoo.create(CNN, num_classes=3), "unrelated")
    with pytest.raises(BaseMismatchError) as info:
        zoo.load(delta)
    assert recorded in str(info.value) and "store entry" not in str(info.value)


def test_a_delta_finds_its_base_in_the_hub_cache(tmp_path, hub_cache, monkeypatch):
    base()
    model = zoo.load("src")
    zoo.freeze(model, "linear-probe")
    nudged(model, trainable_only=True)
    delta = zoo.save(model, tmp_path / "delta.safetensors", delta=True)
    publish(hub_cache, "org/src", zoo.export("src", tmp_path / "full"))
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "fresh"))
    assert torch.equal(out(zoo.load(delta)), out(model))


def test_format_2_files_written_before_locations_keep_loading(tmp_path):
    base()
    model = zoo.load("src")
    nudged(model)
    delta = zoo.save(model, tmp_path / "d.safetensors", delta=True)
    assert "locations" not in json.loads(read_header(delta).metadata["zoo.base"])
    assert torch.equal(out(zoo.load(delta)), out(model))


def test_an_adapter_on_a_hub_base_names_it_and_loads_from_the_hub(tmp_path, hub_cache):
    base()
    publish(hub_cache, "org/src", zoo.export("src", tmp_path / "full"))
    model = zoo.load("hf-hub:org/src")
    zoo.freeze(model, "lora:rank=2")
    nudged(model, trainable_only=True)
    folder = zoo.export(model, tmp_path / "adapter")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "org/src"  # exactly those weights
    assert not (folder / "base").exists()
    card = ModelCard.load(folder / "README.md").data.to_dict()
    assert (card["base_model"], card["base_model_relation"]) == ("org/src", "adapter")
    publish(hub_cache, "org/adapter", folder)
    assert torch.equal(out(zoo.load("hf-hub:org/adapter")), out(model))
    again = zoo.export("hf-hub:org/adapter", tmp_path / "again")  # exported again, by hub id
    assert (again / "README.md").read_text().count("# org/adapter\n") == 1
    assert json.loads((again / "adapter_config.json").read_text())["base_model_name_or_path"] == (
        "org/src"
    )
    assert torch.equal(out(zoo.import_peft(folder, base="hf-hub:org/src")), out(model))


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"architecture": "../../etc"}, "architecture"),
        ({"model_args": {"pretrained_cfg_overlay": {"file": "/etc/passwd"}}}, "model_args"),
        ({"model_args": {"stem_width": 100000}}, "model_args"),
        ({"label_names": ["ok", "bad\nname", "x"]}, "class name 1"),
        ({"pretrained_cfg": {"input_size": [3, -1, 32]}}, "input_size"),
    ],
)
def test_a_hostile_timm_config_in_the_hub_cache_is_refused_naming_the_field(
    tmp_path, hub_cache, change, fragment
):
    base()
    folder = zoo.export("src", tmp_path / "full")
    config = json.loads((folder / "config.json").read_text())
    config.update(change)
    (folder / "config.json").write_text(json.dumps(config))
    from safetensors.torch import save_file

    save_file(zoo.load("src").state_dict(), folder / "model.safetensors")  # timm's, no zoo keys
    publish(hub_cache, "org/hostile", folder)
    with pytest.raises(zoo.ZooError) as info:
        zoo.load("hf-hub:org/hostile")
    assert "config.json" in str(info.value) and fragment in str(info.value)
