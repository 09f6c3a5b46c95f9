"""The built-in timm plugin: listing without building, input configs, offline weights."""

from __future__ import annotations

import pytest
import timm
from timm.models import get_pretrained_cfg

import zoo
from zoo.builtin.timm_backbones import _pretrained_cfg_reader, ensure_weights_available


def test_every_timm_architecture_and_pretrained_tag_is_listed():
    assert set(zoo.list_backbones("timm:*")) == {f"timm:{a}" for a in timm.list_models()}
    tagged = set(zoo.list_backbones("timm:*", pretrained=True))
    assert tagged == {f"timm:{n}" for n in timm.list_models(pretrained=True)}


def test_fast_config_reader_agrees_with_timms_public_function():
    read = _pretrained_cfg_reader()
    for name in timm.list_models() + timm.list_models(pretrained=True):
        fast, public = read(name), get_pretrained_cfg(name)
        assert (fast is None) == (public is None), name
        if fast is not None:
            used = (
                "input_size",
                "mean",
                "std",
                "interpolation",
                "crop_pct",
                "crop_mode",
                "classifier",
                "num_classes",
                "paper_name",
                "description",
            )
            assert [getattr(fast, f) for f in used] == [getattr(public, f) for f in used], name


def test_input_config_comes_from_the_pretrained_config_of_each_tag():
    spec = zoo.get_backbone("timm:resnet50")
    assert spec.input_config.input_size == (3, 224, 224)
    assert spec.head == "fc" and spec.num_classes == 1000
    cfg = get_pretrained_cfg("resnet50.a1_in1k")
    tagged = spec.input_config_for("a1_in1k")
    assert tagged.crop_pct == pytest.approx(cfg.crop_pct)
    assert tagged.interpolation == cfg.interpolation
    assert zoo.get_backbone("timm:resnet50.a1_in1k") is spec


def test_pretrained_without_network_or_cache_fails_fast_and_names_the_weights(network_calls):
    with pytest.raises(zoo.WeightsUnavailableError) as info:
        zoo.create("timm:resnet18.a1_in1k", pretrained=True)
    message = str(info.value)
    assert "resnet18.a1_in1k" in message
    assert "weights=" in message and "HF_HOME" in message
    # fast because it never tries the network (timm alone retries for most of a minute)
    assert network_calls == []


def test_weights_check_names_an_unknown_tag():
    with pytest.raises(zoo.WeightsUnavailableError, match="no pretrained weights"):
        ensure_weights_available("resnet18.not_a_tag")


def test_a_tag_only_names_weights():
    model = zoo.create("timm:resnet18.a1_in1k", num_classes=4)
    assert model.zoo.build.tag is None
    assert model.fc.out_features == 4


def test_zoo_identify_model_names_a_model_timm_built():
    """``zoo.adapt(timm.create_model(...))`` can save its result: the plugin says what it is."""
    from torch import nn

    from zoo.adaptation.prepare import identify

    catalog = zoo.get_catalog()
    assert identify(timm.create_model("test_resnet"), catalog).qualified_name == "timm:test_resnet"
    assert identify(nn.Linear(2, 2), catalog) is None


def test_a_vit_built_with_img_size_records_the_size_it_accepts(tmp_path):
    """timm keeps the pretrained config's 224 px for a ViT built with ``img_size=32``; zoo
    records the size the model accepts, so saving and adapting from it use that size."""
    import torch

    model = zoo.create(
        "timm:vit_tiny_patch16_224", num_classes=3, img_size=32, patch_size=8, depth=1
    )
    assert model.zoo.input_config.input_size == (3, 32, 32)
    assert model.zoo.input_config.mean == (0.5, 0.5, 0.5)  # the rest is the backbone's config
    path = zoo.save(model, tmp_path / "small-vit.safetensors")
    loaded = zoo.load(path)
    assert loaded.zoo.input_config.input_size == (3, 32, 32)
    assert loaded(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
    assert zoo.create("timm:vit_tiny_patch16_224").zoo.input_config.input_size == (3, 224, 224)
