"""Where an adapt run starts (issue 13): pretrained weights by default, ``scratch`` for random
init, the input config of ``weights=``, provenance through a new head, store names only in
``--name``, and what the adapt output says about all of it."""

from __future__ import annotations

import os
import subprocess
import sys
from io import StringIO

import pytest
import timm
import torch
from rich.console import Console

import zoo
from zoo.cli.main import main
from zoo.io.fileformat import read_header
from zoo.io.metadata import ZooMetadata

BACKBONE = "timm:test_resnet"  # has pretrained weights (tag r160_in1k), not cached offline
FAST = {"image_size": 32, "batch_size": 8, "lr": 1e-2, "epochs": 1}


class NoWeightsPlugin:
    """A real plugin whose backbone has no pretrained weights at all."""

    PLUGIN_NAME = "bare"

    @zoo.hookimpl
    def zoo_register_backbones(self, register):
        def create(num_classes=None, pretrained=False, **kw):
            return timm.create_model("test_resnet", num_classes=num_classes or 3)

        register(
            zoo.BackboneSpec(
                name="net", create=create, input_config=zoo.InputConfig(input_size=(3, 32, 32))
            )
        )


# ---------------------------------------------------------------- item 1: the default start


def test_a_backbone_name_starts_from_pretrained_weights(colours, network_calls):
    with pytest.raises(zoo.WeightsUnavailableError, match=r"--scratch") as info:
        zoo.adapt(BACKBONE, colours / "train", policy="linear-probe", **FAST)
    assert "--weights" in str(info.value) and "r160_in1k" in str(info.value)
    assert network_calls == []  # the offline error is fast: the network is never tried
    # the CLI form the README shows fails the same way, naming the ways out
    assert main(["adapt", BACKBONE, "--data", str(colours / "train"), "--image-size", "32"]) == 1


def test_scratch_is_random_init_and_says_so(colours):
    _, history = zoo.adapt(BACKBONE, colours / "train", policy="linear-probe", scratch=True, **FAST)
    assert "random weights" in history.start and "scratch=True" in history.start
    assert history.policy == "zoo:linear-probe"  # explicit scratch: a partial plan is allowed
    # auto on random weights trains everything, and says why
    _, auto = zoo.adapt(BACKBONE, colours / "train", policy="auto", scratch=True, **FAST)
    assert auto.trainable_params == auto.total_params
    assert any("random weights" in n for n in auto.notes)
    assert not any("pretrained features already fit" in n for n in auto.notes)


@pytest.mark.parametrize(
    "kwargs, rule",
    [
        ({"scratch": True, "pretrained": True}, "scratch must be False"),
        ({"scratch": True, "weights": "some-model"}, "scratch must be False"),
        ({"scratch": "yes"}, "scratch must be True or False"),
        ({"pretrained": 1.5}, "pretrained must be"),
    ],
)
def test_start_options_that_contradict_are_refused(colours, kwargs, rule):
    with pytest.raises(zoo.AdaptArgumentError, match=rule):
        zoo.adapt(BACKBONE, colours / "train", **kwargs, **FAST)


def test_partial_policy_on_a_backbone_without_weights_needs_scratch(
    colours, zoo_register_plugin, _isolated_zoo
):
    zoo_register_plugin(NoWeightsPlugin())
    with pytest.raises(zoo.ZooError, match=r"random weights.*--scratch"):
        zoo.adapt("bare:net", colours / "train", policy="freeze-to:depth=4", name="m", **FAST)
    assert not (_isolated_zoo / "models" / "m").exists()  # nothing saved
    _, full = zoo.adapt("bare:net", colours / "train", policy="full", **FAST)
    assert "has no pretrained weights" in full.start
    _, probe = zoo.adapt("bare:net", colours / "train", policy="linear-probe", scratch=True, **FAST)
    assert probe.policy == "zoo:linear-probe"


def test_saved_start_refuses_scratch(colours):
    zoo.save(zoo.create(BACKBONE, num_classes=3), "src")
    with pytest.raises(zoo.ZooError, match="apply when starting from a backbone name"):
        zoo.adapt("src", colours / "train", scratch=True, **FAST)


# ---------------------------------------------------------------- item 3: provenance


def test_a_new_head_keeps_the_base_and_saves_as_a_delta(colours):
    zoo.adapt(BACKBONE, colours / "train", policy="full", scratch=True, name="src", **FAST)
    model, history = zoo.adapt(
        "src", colours / "two", policy="linear-probe", name="two", delta=True, **FAST
    )
    assert model.fc.out_features == 2
    meta = ZooMetadata.parse(read_header(history.path).metadata, source=history.path)
    assert meta.kind == "delta" and meta.base["kind"] == "store" and meta.base["ref"] == "src"
    assert set(meta.trained) == {"fc.weight", "fc.bias"}
    assert "fc.weight" not in meta.base_tensors  # the new head is stored in the delta
    loaded = zoo.load("two")
    assert loaded.zoo.classes == ["green", "red"]
    for name, tensor in loaded.state_dict().items():
        torch.testing.assert_close(tensor, model.state_dict()[name])
    # a full save records the base too
    _, full = zoo.adapt("src", colours / "two", policy="linear-probe", name="two-full", **FAST)
    meta = ZooMetadata.parse(read_header(full.path).metadata, source=full.path)
    assert meta.kind == "full" and meta.base["ref"] == "src"


# ---------------------------------------------------------------- item 4: input config


def test_weights_bring_their_input_config(colours):
    config = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    zoo.adapt(
        BACKBONE,
        colours / "train",
        policy="full",
        scratch=True,
        input_config=config,
        name="small",
        **FAST,
    )
    no_size = {k: v for k, v in FAST.items() if k != "image_size"}
    model, history = zoo.adapt(
        BACKBONE, colours / "train", policy="full", weights="small", **no_size
    )
    assert history.input_size == [3, 32, 32]  # not test_resnet's own 160 px
    assert list(model.zoo.input_config.mean) == [0.5, 0.5, 0.5]
    assert "weights of saved model 'small'" in history.start
    assert any("32 px" in n and "trained with" in n for n in history.notes)
    # explicit options still win, and the note says so
    model, history = zoo.adapt(
        BACKBONE, colours / "train", policy="full", weights="small", **{**no_size, "image_size": 40}
    )
    assert history.input_size == [3, 40, 40]
    assert list(model.zoo.input_config.std) == [0.25, 0.25, 0.25]
    assert any("40 px" in n and "image size given" in n for n in history.notes)


# ---------------------------------------------------------------- item 11: --name


@pytest.mark.slow
def test_cli_name_is_a_store_name_and_output_takes_paths(colours, tmp_path, _isolated_zoo):
    env = {**os.environ, "ZOO_HOME": str(_isolated_zoo), "HF_HUB_OFFLINE": "1"}
    evil = _isolated_zoo / "evil"
    argv = [sys.executable, "-m", "zoo.cli.main", "adapt", BACKBONE, "--data"]
    argv += [str(colours / "train"), "--scratch", "--epochs", "1", "--image-size", "32"]
    done = subprocess.run(
        [*argv, "--name", "../evil"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and "--output" in done.stderr and "separator" in done.stderr
    assert not evil.exists() and not (_isolated_zoo / "models").exists()
    out = tmp_path / "out.safetensors"
    assert main([*argv[3:], "--output", str(out), "--policy", "linear-probe"]) == 0
    assert zoo.load(out).zoo.classes == ["blue", "green", "red"]


# ---------------------------------------------------------------- item 7: what a person reads


def test_adapt_output_wording():
    from zoo.cli.render_adapt import cache_text, plural, start_text

    info = {
        "start": "backbone timm:test_resnet, pretrained weights timm:test_resnet.r160_in1k",
        "policy": "zoo:freeze-to",
        "policy_args": {"depth": 4},
        "notes": ["auto chose zoo:linear-probe: small data"],
        "classes": ["only"],
        "train_images": 3,
        "val_images": 1,
        "skipped": 1,
        "input_size": [3, 32, 32],
        "feature_cache": False,
        "note": "plain loop: the plan trains more than one head module",
    }
    console = Console(file=StringIO(), width=200)
    console.print(start_text(info))
    text = console.file.getvalue()
    assert "zoo:freeze-to:depth=4" in text and "auto chose zoo:linear-probe" in text
    assert "1 class (only)" in text and "1 validation image," in text
    assert "1 unreadable image\n" in text and "1 classes" not in text
    assert "plain loop" not in text and "layers below the head" in text
    assert plural(2, "class") == "2 classes" and plural(0, "image") == "0 images"
    assert cache_text(True, "features cached at 'fc'") == "used — features cached at 'fc'"
    said = cache_text(False, "plain loop: the plan trains more than the classifier")
    assert said.startswith("images go through the whole model every epoch (the plan trains")
    assert said.endswith("the classifier)")
