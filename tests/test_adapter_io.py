"""Saving, loading, merging and exchanging models with adapters (LoRA, SSF, VPT).

Real timm backbones, shrunk (a 2-block ViT on 32x32 images, resnet10t), real files in a private
store, the real ``peft`` layout (its key names and shapes, checked against what
``PeftModel.save_pretrained`` writes; the package itself is not a dependency).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import zoo
from zoo.core.catalog import Catalog
from zoo.core.plugins import make_plugin_host
from zoo.errors import AdapterMergeError, MissingBaseError, UnknownNameError, ZooError
from zoo.io.fileformat import read_file, read_header
from zoo.testing import installed_catalog

VIT = "timm:vit_tiny_patch16_224"
VIT_ARGS = {"img_size": 32, "patch_size": 8, "depth": 2}
CNN = "timm:resnet10t"
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def nudge(model: nn.Module, *, trainable_only: bool = False, scale: float = 0.05) -> nn.Module:
    """Change parameters as training would (all, or only the trainable ones), reproducibly."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad or not trainable_only:
                param.add_(torch.randn(param.shape, generator=generator) * scale)
    return model.eval()


def save_base(backbone: str = VIT, name: str = "base", **kwargs: object) -> str:
    """A base in the store: a random backbone with every weight nudged (no zero-init layer
    hides what an adapter does)."""
    args = VIT_ARGS if backbone == VIT and not kwargs else kwargs
    zoo.save(nudge(zoo.create(backbone, num_classes=3, **args)), name)
    return name


def adapted(base: str, policy: str) -> nn.Module:
    """The base loaded, adapters injected by ``policy``, the trainable tensors nudged."""
    model = zoo.load(base)
    zoo.freeze(model, policy)
    return nudge(model, trainable_only=True)


def out(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(X)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- save and load


@pytest.mark.parametrize(
    ("backbone", "policy"),
    [(VIT, "lora:rank=4"), (VIT, "ssf"), (VIT, "vpt:tokens=3"), (CNN, "lora:rank=4")],
)
def test_save_load_is_bit_identical(backbone, policy):
    base = save_base(backbone)
    model = adapted(base, policy)
    expected = out(model)
    path = zoo.save(model, "adapted")
    meta = read_header(path).metadata
    assert meta["zoo.kind"] == "delta"  # the default for an adapted model with a base
    assert json.loads(meta["zoo.plan"])["additions"] == [a.to_dict() for a in zoo.adapters(model)]
    loaded = zoo.load("adapted")
    assert torch.equal(out(loaded), expected)
    assert [a.to_dict() for a in zoo.adapters(loaded)] == [a.to_dict() for a in zoo.adapters(model)]
    assert not any(p.requires_grad for p in loaded.parameters())
    again = zoo.load("adapted", trainable=True)  # re-applies the plan, same adapters
    trained = {n for n, p in again.named_parameters() if p.requires_grad}
    assert {n for a in zoo.adapters(again) for n in a.names} <= trained
    assert torch.equal(out(again), expected)


def test_adapter_file_holds_adapters_head_and_changed_tensors_only():
    base = save_base()
    model = adapted(base, "lora:rank=2")
    path = zoo.save(model, "adapted")
    names = set(read_header(path).names)
    added = {n for a in zoo.adapters(model) for n in a.names}
    assert names == added | {"head.weight", "head.bias"}
    full = zoo.save(model, "adapted-full", delta=False)
    assert set(read_header(full).names) == set(model.state_dict())
    assert read_header(full).metadata["zoo.kind"] == "full"
    assert torch.equal(out(zoo.load("adapted-full")), out(model))


def test_adapter_file_is_under_two_percent_of_the_full_file():
    # the bound of issue 15 (resnet50 and vit_base at rank 8: benchmarks/adapter_sizes.py)
    # on a 12-block ViT-tiny at rank 2: the same rank-to-width ratio as rank 8 on a ViT-B
    base = save_base(VIT, img_size=32, patch_size=8)
    model = adapted(base, "lora:rank=2")
    size = zoo.save(model, "adapted").stat().st_size
    full = zoo.save(model, "adapted-full", delta=False).stat().st_size
    assert size < 0.02 * full, (size, full)


def test_delta_argument_with_adapters():
    model = zoo.create(VIT, num_classes=3, **VIT_ARGS)  # random weights: no base
    zoo.freeze(model, "lora:rank=2")
    path = zoo.save(model, "nobase")  # the default falls back to a full file
    assert read_header(path).metadata["zoo.kind"] == "full"
    assert torch.equal(out(zoo.load("nobase")), out(model.eval()))
    with pytest.raises(MissingBaseError):
        zoo.save(model, "nobase-delta", delta=True)
    plain = zoo.load(save_base(name="plain-base"))
    zoo.freeze(plain, "linear-probe")  # no adapters: full by default, as before
    assert read_header(zoo.save(plain, "probe")).metadata["zoo.kind"] == "full"


def test_adapters_stack_on_an_adapter_file():
    base = save_base()
    zoo.save(adapted(base, "lora:rank=2"), "first")
    model = zoo.load("first", trainable=True)
    with torch.no_grad():
        model.head.weight.add_(1.0)
    path = zoo.save(model, "second")  # a delta of "first": trained tensors only
    header = read_header(path)
    added = {n for a in zoo.adapters(model) for n in a.names}
    assert set(header.names) == added | {"head.weight", "head.bias"}
    assert json.loads(header.metadata["zoo.base"])["ref"] == "first"
    plan = json.loads(header.metadata["zoo.plan"])
    assert plan["additions"] == [a.to_dict() for a in zoo.adapters(model)]
    assert torch.equal(out(zoo.load("second")), out(model.eval()))
    assert zoo.inspect("second").adapters[0]["kind"] == "zoo:lora"


# ---------------------------------------------------------------- merging


@pytest.mark.parametrize(("backbone", "policy"), [(VIT, "lora:rank=4"), (VIT, "ssf"), (CNN, "ssf")])
def test_merge_folds_adapters_and_saves_a_plain_timm_file(backbone, policy):
    import timm

    zoo.save(adapted(save_base(backbone), policy), "adapted")
    expected = out(zoo.load("adapted"))
    merged = zoo.load("adapted", merge=True)
    assert zoo.adapters(merged) == []
    assert not any(isinstance(m, zoo.Adapter) for m in merged.modules())
    scale = expected.abs().max().item()
    assert (out(merged) - expected).abs().max().item() <= 1e-5 * max(1.0, scale)
    path = zoo.save(merged, "merged")
    meta = read_header(path).metadata
    assert meta["zoo.kind"] == "full" and "additions" not in json.loads(meta["zoo.plan"])
    config = json.loads((path.parent / "config.json").read_text())
    assert config["architecture"] == backbone.split(":")[1]
    plain = timm.create_model(f"local-dir:{path.parent}", pretrained=True).eval()
    assert set(plain.state_dict()) == set(read_header(path).names)
    assert (out(plain) - expected).abs().max().item() <= 1e-5 * max(1.0, scale)


def test_merge_of_lora_on_convolutions():
    zoo.save(adapted(save_base(CNN), "lora:rank=4"), "adapted")
    expected = out(zoo.load("adapted"))
    assert not torch.equal(expected, out(zoo.load(save_base(CNN, name="b2"))))  # LoRA acts
    merged = zoo.load("adapted", merge=True)
    assert (out(merged) - expected).abs().max().item() <= 1e-5 * max(
        1.0, expected.abs().max().item()
    )


def test_merge_of_vpt_is_refused_and_nothing_changes():
    zoo.save(adapted(save_base(), "vpt:tokens=2"), "prompts")
    path = zoo.inspect("prompts").path
    before = digest(path)
    with pytest.raises(AdapterMergeError, match=r"zoo:vpt.*without merge=True") as info:
        zoo.load("prompts", merge=True)
    assert str(path) in str(info.value)
    assert digest(path) == before
    assert zoo.adapters(zoo.load("prompts"))  # still loads with its adapters
    with pytest.raises(ZooError, match="merge=True returns a plain model"):
        zoo.load("prompts", merge=True, trainable=True)


# ---------------------------------------------------------------- plugins


class ShiftPlugin:
    """A third-party adapter kind: a learned shift of a Linear's output (``myplug:shift``)."""

    PLUGIN_NAME = "myplug"

    @staticmethod
    @zoo.hookimpl
    def zoo_register_policies(register):
        def build(target, addition):
            class Shift(zoo.Adapter):
                mergeable = False

                def __init__(self, n):
                    super().__init__()
                    self.b = nn.Parameter(torch.zeros(n))

                def post_forward(self, target, args, output):
                    return output + self.b

            return Shift(target.out_features)

        register(zoo.AdapterSpec(name="shift", build=build))


def test_missing_adapter_kind_plugin_is_named():
    with installed_catalog(
        Catalog(make_plugin_host(autoload=False, extra={"myplug": ShiftPlugin}))
    ) as catalog:
        base = save_base()
        model = zoo.load(base)
        addition = zoo.Addition(target="head", kind="myplug:shift", params={"shift.b": (3,)})
        from zoo.plans.adapters import inject

        inject(model, [addition], catalog=catalog)
        with torch.no_grad():
            model.head.shift.b.fill_(0.5)
        path = zoo.save(model, "shifted")
        assert torch.equal(out(zoo.load("shifted")), out(model))
    with installed_catalog(Catalog(make_plugin_host(autoload=False))):
        with pytest.raises(UnknownNameError) as info:
            zoo.load("shifted")
        message = str(info.value)
        assert str(path) in message and "'myplug:shift'" in message
        assert "plugin 'myplug'" in message and "not installed" in message
        info = zoo.inspect("shifted")  # still described, without the per-depth summary
        assert info.adapters == [{"kind": "myplug:shift", "args": [{}], "targets": 1, "params": 3}]
        assert any("no per-depth summary" in n and "myplug" in n for n in info.notes)


# ---------------------------------------------------------------- inspect


def test_inspect_shows_the_adapters(capsys):
    base = save_base()
    model = adapted(base, "lora:rank=2")
    zoo.save(model, "adapted")
    info = zoo.inspect("adapted")
    (row,) = info.adapters
    added = sum(a.numel for a in zoo.adapters(model))
    assert row == {
        "kind": "zoo:lora",
        "args": [{"rank": 2, "alpha": 16.0, "dropout": 0.0}],
        "targets": len(zoo.adapters(model)),
        "params": added,
    }
    full_bytes = sum(
        t.numel() * t.element_size()
        for n, t in zoo.load(base).state_dict().items()  # the base: the model less adapters
    )
    assert info.base_bytes == full_bytes
    data = info.to_dict()
    assert data["adapter_summary"] == [row] and data["size_vs_base"] == info.size / full_bytes
    from zoo.cli.main import main  # (test_peft_cli_export_and_import runs a real process)

    capsys.readouterr()
    assert main(["inspect", "adapted"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"zoo:lora (rank=2, alpha=16.0, dropout=0.0) on {row['targets']} target(s)" in text
    assert "of a full file of the model" in text
    assert main(["inspect", "adapted", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["adapter_summary"] == [row]


# ---------------------------------------------------------------- PEFT


def test_peft_export_writes_peft_layout(tmp_path):
    model = adapted(save_base(), "lora:rank=4,alpha=8")
    folder = zoo.export_peft(model, tmp_path / "peft")
    config = json.loads((folder / "adapter_config.json").read_text())
    targets = sorted(a.target for a in zoo.adapters(model))
    assert config["peft_type"] == "LORA"
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (4, 8.0, 0.0)
    assert config["target_modules"] == targets
    assert config["bias"] == "none" and config["modules_to_save"] == ["head"]
    # the base is a saved model, which no timm name is: it is written beside the adapter
    assert config["base_model_name_or_path"] is None
    assert sorted(p.name for p in (folder / "base").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    assert config["use_dora"] is False and config["rank_pattern"] == {}
    saved = read_file(folder / "adapter_model.safetensors")
    expected = {f"base_model.model.{t}.lora_{m}.weight" for t in targets for m in "AB"}
    expected |= {"base_model.model.head.weight", "base_model.model.head.bias"}
    assert set(saved.tensors) == expected
    qkv = "base_model.model.blocks.0.attn.qkv"
    assert saved.tensors[f"{qkv}.lora_A.weight"].shape == (4, 192)
    assert saved.tensors[f"{qkv}.lora_B.weight"].shape == (576, 4)
    assert torch.equal(saved.tensors[f"{qkv}.lora_B.weight"], model.blocks[0].attn.qkv.lora.B)
    with pytest.raises(zoo.ModelExistsError):
        zoo.export_peft(model, folder)
    zoo.export_peft(model, folder, overwrite=True)


def test_peft_conv_shapes_and_round_trip(tmp_path):
    base = save_base(CNN)
    model = adapted(base, "lora:rank=4")
    zoo.save(model, "adapted")
    folder = zoo.export_peft("adapted", tmp_path / "peft")  # a saved model, by name
    saved = read_file(folder / "adapter_model.safetensors").tensors
    conv = zoo.load(base).layer1[0].conv1
    key = "base_model.model.layer1.0.conv1"
    assert saved[f"{key}.lora_A.weight"].shape == (4, conv.in_channels, 3, 3)
    assert saved[f"{key}.lora_B.weight"].shape == (conv.out_channels, 4, 1, 1)
    back = zoo.import_peft(folder, base=base).eval()
    assert torch.equal(out(back), out(model))
    assert zoo.save(back, "imported").stat().st_size < 0.05 * zoo.inspect(base).size


def test_peft_round_trip_into_a_model(tmp_path):
    base = save_base()
    model = adapted(base, "lora:rank=4")
    folder = zoo.export_peft(model, tmp_path / "peft")
    fresh = zoo.load(base)
    back = zoo.import_peft(folder, base=fresh)
    assert back is fresh and torch.equal(out(back.eval()), out(model))
    assert [a.to_dict() for a in zoo.adapters(back)] == [a.to_dict() for a in zoo.adapters(model)]
    assert {n for n, p in back.named_parameters() if p.requires_grad} == {
        n for n, p in model.named_parameters() if p.requires_grad
    }
    path = zoo.save(back, "imported")
    assert read_header(path).metadata["zoo.kind"] == "delta"
    assert torch.equal(out(zoo.load("imported")), out(model))


def _peft_folder(tmp_path: Path, **config_changes: object) -> Path:
    model = adapted(save_base(), "lora:rank=2")
    folder = zoo.export_peft(model, tmp_path / "peft", without_base=True)
    config = json.loads((folder / "adapter_config.json").read_text())
    config.update(config_changes)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"use_dora": True}, "use_dora=True"),
        ({"use_rslora": True}, "use_rslora=True"),
        ({"rank_pattern": {"qkv": 16}}, "rank_pattern="),
        ({"alpha_pattern": {"qkv": 16}}, "alpha_pattern="),
        ({"bias": "all"}, "bias='all'"),
        ({"fan_in_fan_out": True}, "fan_in_fan_out=True"),
        ({"init_lora_weights": "pissa"}, "init_lora_weights='pissa'"),
        ({"layers_to_transform": [0]}, "layers_to_transform=[0]"),
        ({"some_future_option": {"on": True}}, "some_future_option="),
        ({"peft_type": "IA3"}, "zoo imports LoRA adapters only"),
    ],
)
def test_peft_import_refuses_unsupported_options(tmp_path, change, fragment):
    folder = _peft_folder(tmp_path, **change)
    with pytest.raises(ZooError, match=r"unsupported PEFT option|LoRA adapters only") as info:
        zoo.import_peft(folder, base="base")
    assert fragment in str(info.value)


def test_peft_import_refuses_malformed_folders(tmp_path):
    from fileformat_helpers import write_file

    folder = _peft_folder(tmp_path)
    with pytest.raises(ZooError, match="pass the base"):
        zoo.import_peft(folder)  # base_model_name_or_path is no hub id: the base must be named
    weights = folder / "adapter_model.safetensors"
    tensors = read_file(weights).tensors
    key = "base_model.model.blocks.0.attn.qkv.lora_A.weight"

    def rewrite(changed: dict[str, torch.Tensor]) -> None:
        write_file(weights, changed, {"format": "pt"})

    rewrite({**tensors, key: torch.zeros(2, 7)})
    with pytest.raises(zoo.CorruptFileError, match=r"PEFT builds \(2, 192\)"):
        zoo.import_peft(folder, base="base")
    rewrite({k: v for k, v in tensors.items() if "qkv.lora_B" not in k or "blocks.0" not in k})
    with pytest.raises(zoo.CorruptFileError, match="lacks lora_A or lora_B"):
        zoo.import_peft(folder, base="base")
    rewrite({**tensors, "base_model.model.pos_embed": torch.zeros(1, 17, 192)})
    with pytest.raises(zoo.CorruptFileError, match="neither a LoRA tensor nor in modules_to_save"):
        zoo.import_peft(folder, base="base")
    rewrite({**tensors, "blocks.0.x": torch.zeros(1)})
    with pytest.raises(zoo.CorruptFileError, match="does not start with"):
        zoo.import_peft(folder, base="base")
    b_key = key.replace("lora_A", "lora_B")
    rewrite(
        {
            **tensors,
            key.replace("qkv", "nothere"): tensors[key],
            b_key.replace("qkv", "nothere"): tensors[b_key],
        }
    )
    with pytest.raises(zoo.CorruptFileError, match="target_modules does not name"):
        zoo.import_peft(folder, base="base")
    (folder / "adapter_config.json").write_text("{not json")
    with pytest.raises(zoo.CorruptFileError, match="not valid JSON"):
        zoo.import_peft(folder, base="base")
    weights.unlink()
    (folder / "adapter_model.bin").write_bytes(b"pickle")
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2}))
    with pytest.raises(ZooError, match="never loads"):
        zoo.import_peft(folder, base="base")


def test_peft_export_refusals(tmp_path):
    base = save_base()
    with pytest.raises(ZooError, match="PEFT export covers LoRA only"):
        zoo.export_peft(adapted(base, "ssf"), tmp_path / "x")
    with pytest.raises(ZooError, match="no adapters to export"):
        zoo.export_peft(zoo.load(base), tmp_path / "x")


@pytest.mark.slow
def test_peft_cli_export_and_import(tmp_path, capsys):
    base = save_base()
    model = adapted(base, "lora:rank=2")
    zoo.save(model, "adapted")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "zoo", *args], capture_output=True, text=True, check=False
        )

    done = run("export", "adapted", "--peft", str(tmp_path / "peft"), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["targets"] == len(zoo.adapters(model)) and summary["modules_to_save"] == ["head"]
    from zoo.cli.main import main  # the other commands in this process (a process costs ~10 s)

    capsys.readouterr()
    assert main(["import-peft", str(tmp_path / "peft"), "--name", "back", "--base", base]) == 0
    assert "saved back: timm:vit_tiny_patch16_224 with LoRA" in capsys.readouterr().out
    assert torch.equal(out(zoo.load("back")), out(zoo.load("adapted")))
    assert main(["import-peft", str(tmp_path / "peft"), "--name", "bad/name"]) == 1
    assert "invalid model name" in capsys.readouterr().err
    assert main(["export", "base", "--peft", str(tmp_path / "none")]) == 1
    assert "no adapters to export" in capsys.readouterr().err


def test_adapt_with_an_adapter_policy_saves_a_small_delta(tmp_path):
    """``zoo.adapt(policy="lora")`` saves the adapters and the head, not the whole model."""
    from test_data import make_color_folder

    base = save_base(VIT)
    data = make_color_folder(tmp_path / "data", per_class=4, size=32)
    _, history = zoo.adapt(
        base, data, policy="lora:rank=2", epochs=1, batch_size=4, name="adapted-run"
    )
    meta = read_header(Path(history.path)).metadata
    assert meta["zoo.kind"] == "delta"
    saved = read_file(Path(history.path)).tensors
    assert saved and all(".lora." in name or name.startswith("head.") for name in saved)
    reloaded = zoo.load("adapted-run")
    assert zoo.adapters(reloaded)
