"""The feature cache is chosen by what trains (only the classifier) and a deterministic frozen
part, not by where the trainable parameters sit: wrapper models registered by a real plugin."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import zoo

FAST = {"image_size": 32, "batch_size": 8, "lr": 5e-2}


class HFLike(nn.Module):
    """Everything in one child, as a plugin wrapping a transformers model does (``self.hf``)."""

    def __init__(self, num_classes: int = 3, drop_path: float = 0.0) -> None:
        super().__init__()
        self.hf = timm.create_model(
            "test_resnet", num_classes=num_classes, drop_path_rate=drop_path
        )

    def forward(self, x):
        return self.hf(x)


class InnerPlusFc(nn.Module):
    """A wrapper holding an inner timm model (no classifier) plus its own classifier."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.inner = timm.create_model("test_resnet", num_classes=0)
        self.fc = nn.Linear(self.inner.num_features, num_classes)

    def forward(self, x):
        return self.fc(self.inner(x))


class WrapPlugin:
    """A real plugin object: registers the wrapper backbones through the hook."""

    PLUGIN_NAME = "wrapzoo"

    @zoo.hookimpl
    def zoo_register_backbones(self, register):
        config = zoo.InputConfig(input_size=(3, 32, 32))

        def hf(num_classes=None, pretrained=False, **kw):
            return HFLike(num_classes or 3, **kw)

        def inner(num_classes=None, pretrained=False, **kw):
            return InnerPlusFc(num_classes or 3)

        register(zoo.BackboneSpec(name="hf-like", create=hf, input_config=config))
        register(zoo.BackboneSpec(name="inner-fc", create=inner, input_config=config))


@pytest.fixture
def wrapzoo(zoo_register_plugin):
    return zoo_register_plugin(WrapPlugin())


@pytest.mark.parametrize("backbone", ["wrapzoo:hf-like", "wrapzoo:inner-fc"])
def test_full_plan_on_a_wrapper_is_the_plain_loop_with_augmentation(wrapzoo, colours, backbone):
    model, history = zoo.adapt(backbone, colours / "train", policy="full", epochs=1, **FAST)
    assert not history.feature_cache
    assert "more than the classifier" in history.feature_cache_note
    assert history.augment  # fine-tuning augments by default
    assert history.trainable_params == sum(p.numel() for p in model.parameters())
    with pytest.raises(zoo.ZooError, match="more than the classifier"):
        zoo.adapt(backbone, colours / "train", policy="full", epochs=1, feature_cache=True, **FAST)


@pytest.mark.parametrize(
    ("backbone", "head"), [("wrapzoo:hf-like", "hf.fc"), ("wrapzoo:inner-fc", "fc")]
)
def test_linear_probe_on_a_wrapper_caches_and_equals_the_plain_loop(
    wrapzoo, colours, backbone, head
):
    weights = {}
    for cache in (True, False):
        torch.manual_seed(0)
        model, history = zoo.adapt(
            backbone, colours / "train", colours / "val", policy="linear-probe", epochs=2,
            feature_cache=cache, seed=0, scratch=True, **FAST,
        )  # fmt: skip
        assert history.feature_cache is cache and not history.augment
        if cache:
            assert f"features cached at the input of {head!r}" == history.feature_cache_note
        fc = model.get_submodule(head)
        weights[cache] = (fc.weight.detach().clone(), history.loss, history.accuracy)
    torch.testing.assert_close(weights[True][0], weights[False][0], atol=1e-4, rtol=1e-4)
    assert weights[True][1] == pytest.approx(weights[False][1], rel=1e-4)
    assert weights[True][2] == weights[False][2]


def test_a_random_frozen_part_is_not_cached(wrapzoo, colours):
    _, history = zoo.adapt(
        "wrapzoo:hf-like", colours / "train", policy="linear-probe", epochs=1,
        model_kwargs={"drop_path": 0.5}, scratch=True, **FAST,
    )  # fmt: skip
    assert not history.feature_cache and not history.augment
    assert "not deterministic in training mode" in history.feature_cache_note
    assert "DropPath" in history.feature_cache_note


class _Branchy(nn.Module):
    """The frozen part adds noise in training mode through a functional branch (no module)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.body(x)
        if self.training:
            h = h + torch.randn_like(h)
        return self.fc(h)


def test_a_frozen_part_that_branches_on_training_is_caught_numerically(colours):
    from zoo.adaptation.cache import random_frozen_modules

    assert random_frozen_modules(_Branchy(), ["fc"]) == []  # no module type gives it away
    model, history = zoo.adapt(
        _Branchy(), colours / "train", policy="linear-probe", epochs=1, **FAST
    )
    assert not history.feature_cache
    assert "differs in training mode" in history.feature_cache_note
    assert not model.training or model.fc.weight.requires_grad
