"""The boundary activation cache: prefix-frozen plans train their top on cached activations."""

from __future__ import annotations

import pytest
import timm
import torch
from test_adapt_resume import StopAfter
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchrun_helpers import run_worker

import zoo
from zoo.adaptation.cache import (
    MAX_BYTES_ENV,
    Boundary,
    CacheUnsupported,
    extract_boundaries,
    find_boundary,
)
from zoo.adaptation.checkpoint import AdaptInterrupted

FAST = {"image_size": 32, "batch_size": 8, "lr": 1e-2, "seed": 0, "scratch": True}


def _planned(name: str, spec: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=3, **kwargs)
    zoo.freeze(model, zoo.plan(model, spec))
    return model


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.randn(4, 3, 32, 32)


@pytest.mark.parametrize(
    ("spec", "path", "forward_head"),
    [
        ("train-last:n=1", "layer4", True),
        ("train-last:n=2", "layer3", True),
        ("linear-probe", "fc", False),
    ],
)
def test_resnet18_cuts_before_the_first_trained_stage(images, spec, path, forward_head):
    model = _planned("resnet18", spec)
    boundary = find_boundary(model, images)
    assert boundary.path == path and boundary.chain[0] == path
    assert boundary.uses_forward_head is forward_head
    with torch.no_grad():
        model.eval()
        expected = model(images)
        taken = extract_boundaries(model, [path], [(images, torch.zeros(4))], device=images.device)
        got = boundary.suffix(model).eval()(taken[path].features)
    torch.testing.assert_close(got, expected)
    # the suffix shares the model's parameters, and only the top's
    suffix_params = {id(p) for p in boundary.suffix(model).parameters()}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable <= suffix_params
    assert not any(id(p) in suffix_params for p in model.conv1.parameters())


def test_a_deeper_freeze_cuts_later(images):
    shallow = find_boundary(_planned("resnet18", "train-last:n=3"), images)
    deep = find_boundary(_planned("resnet18", "freeze-to:depth=4"), images)
    assert (shallow.path, deep.path) == ("layer2", "layer4")
    assert shallow.chain == ("layer2", "layer3", "layer4")


def test_vit_cuts_at_a_block_and_finishes_with_forward_head(images):
    model = _planned("vit_tiny_patch16_224", "train-last:n=1", img_size=32)
    boundary = find_boundary(model, images)
    assert boundary.path.startswith("blocks.") and boundary.uses_forward_head
    assert boundary.chain[-1] == "norm" and "head" in boundary.head_modules
    model.pos_embed.requires_grad_(True)
    with pytest.raises(CacheUnsupported, match="pos_embed"):
        find_boundary(model, images)
    full = _planned("vit_tiny_patch16_224", "full", img_size=32)
    with pytest.raises(CacheUnsupported, match="the model itself holds trainable"):
        find_boundary(full, images)


def test_convnext_cuts_at_its_last_stage(images):
    boundary = find_boundary(_planned("convnext_atto", "train-last:n=1"), images)
    assert boundary == Boundary("stages.3", ("stages.3", "norm_pre"), True, ("head",))


class _Net(nn.Module):
    def __init__(self, prefix: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), prefix, nn.ReLU())
        self.top = nn.Sequential(nn.Conv2d(4, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4, 3)
        self.body.requires_grad_(False)

    def forward(self, x):
        return self.fc(self.top(self.body(x)))


@pytest.mark.parametrize(
    ("prefix", "why"),
    [
        (nn.Dropout(0.5), "Dropout p=0.5"),
        (nn.BatchNorm2d(4), "BatchNorm2d in train mode"),  # frozen weights, batch statistics
    ],
)
def test_a_random_prefix_has_no_boundary(images, prefix, why):
    model = _Net(prefix)
    with pytest.raises(CacheUnsupported, match="not deterministic") as info:
        find_boundary(model, images)
    assert why in str(info.value)
    assert find_boundary(_Net(nn.Identity()), images).path == "top"


class _Doubles(_Net):
    """Something functional runs between two modules: no cut before it is exact."""

    def forward(self, x):
        return self.fc(self.top(self.body(x)) * 2)


def test_functional_code_between_modules_is_not_skipped(images):
    model = _Doubles(nn.Identity())
    model.top.requires_grad_(False)
    assert find_boundary(model, images).path == "fc"
    model.top.requires_grad_(True)
    with pytest.raises(CacheUnsupported, match="is not the output of the module before it"):
        find_boundary(model, images)


def test_one_pass_extracts_several_boundaries_like_separate_passes():
    model = _planned("resnet18", "train-last:n=1")
    torch.manual_seed(2)
    loader = DataLoader(TensorDataset(torch.randn(10, 3, 32, 32), torch.arange(10)), batch_size=4)
    paths = ["layer3", "layer4", "layer4.0.act1", "fc"]
    device = torch.device("cpu")
    together = extract_boundaries(model, paths, loader, device=device, total=len(loader))
    for path in paths:
        alone = extract_boundaries(model, [path], loader, device=device)[path]
        assert torch.equal(together[path].features, alone.features), path
        assert together[path].labels.tolist() == list(range(10))
    # the input of an in-place ReLU is kept as it was, not as the ReLU left it
    assert (together["layer4.0.act1"].features < 0).any()
    assert model.training  # modes restored


def test_train_last_on_the_cache_is_bit_identical_to_the_plain_loop(colours):
    runs = {}
    for cache in (True, False):  # 24 images in batches of 5: a partial last batch
        model, history = zoo.adapt(
            "timm:resnet18", colours / "train", colours / "val", policy="train-last:n=1", epochs=2,
            augment=False, feature_cache=cache, **{**FAST, "batch_size": 5},
        )  # fmt: skip
        assert history.feature_cache is cache
        runs[cache] = (model.state_dict(), history)
    assert runs[True][1].feature_cache_note.startswith(
        "activations cached at the input of 'layer4' ("
    )
    assert "MB)" in runs[True][1].feature_cache_note
    cached, plain = runs[True][0], runs[False][0]
    different = [k for k in plain if not torch.equal(cached[k], plain[k])]
    assert different == []  # every parameter and buffer (layer4's batch-norm statistics)
    assert [e.train_loss for e in runs[True][1]] == [e.train_loss for e in runs[False][1]]
    assert [e.val_loss for e in runs[True][1]] == pytest.approx(
        [e.val_loss for e in runs[False][1]], rel=1e-5
    )


def test_augmented_images_and_schedules_stay_on_the_plain_loop(colours):
    _, history = zoo.adapt(
        "timm:test_resnet", colours / "train", policy="train-last:n=1", epochs=1, **FAST
    )
    assert not history.feature_cache and history.augment
    assert "more than the classifier" in history.feature_cache_note
    assert "training images are augmented" in history.feature_cache_note
    with pytest.raises(zoo.ZooError, match=r"cannot be used: .*training images are augmented"):
        zoo.adapt(
            "timm:test_resnet", colours / "train", policy="train-last:n=1", epochs=1,
            feature_cache=True, **FAST,
        )  # fmt: skip
    with pytest.raises(zoo.ZooError, match=r"feature cache cannot be used.*schedule"):
        zoo.adapt(
            "timm:test_resnet", colours / "train", policy="gradual", epochs=1, augment=False,
            feature_cache=True, **FAST,
        )  # fmt: skip


def test_over_the_memory_budget_falls_back_or_refuses(colours, monkeypatch):
    monkeypatch.setenv(MAX_BYTES_ENV, "1000")
    options = {"policy": "train-last:n=1", "epochs": 1, "augment": False, **FAST}
    model, history = zoo.adapt("timm:test_resnet", colours / "train", **options)
    assert not history.feature_cache and len(history) == 1
    note = history.feature_cache_note
    assert note.startswith("plain loop: the cached activations would take about ")
    assert "more than the budget of 0.00 MB (ZOO_FEATURE_CACHE_MAX_BYTES)" in note
    plain, _ = zoo.adapt("timm:test_resnet", colours / "train", feature_cache=False, **options)
    a, b = model.state_dict(), plain.state_dict()  # the fallback is the plain loop, shuffled
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    with pytest.raises(zoo.ZooError, match="budget"):
        zoo.adapt("timm:test_resnet", colours / "train", feature_cache=True, **options)
    monkeypatch.delenv(MAX_BYTES_ENV)
    _, history = zoo.adapt("timm:test_resnet", colours / "train", **options)
    assert history.feature_cache


def test_an_interrupted_cached_run_resumes_bit_identical(colours):
    options = {"policy": "train-last:n=2", "epochs": 3, "augment": False, **FAST}
    train, val = colours / "train", colours / "val"
    whole, whole_history = zoo.adapt("timm:test_resnet", train, val, name="whole", **options)
    assert whole_history.feature_cache
    with pytest.raises(AdaptInterrupted):
        zoo.adapt("timm:test_resnet", train, val, name="cut", callback=StopAfter(2), **options)
    resumed, history = zoo.adapt("timm:test_resnet", train, val, name="cut", resume=True, **options)
    assert history.feature_cache and history.resumed_from == 2
    a, b = resumed.state_dict(), whole.state_dict()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert [e.train_loss for e in history] == [e.train_loss for e in whole_history]


def test_early_stopping_works_on_the_cached_path(colours):
    _, history = zoo.adapt(
        "timm:test_resnet", colours / "train", colours / "val", policy="train-last:n=1", epochs=4,
        augment=False, early_stop=1, **{**FAST, "lr": 5.0},
    )  # fmt: skip
    assert history.feature_cache
    assert history.best_epoch is not None and history.best_epoch <= len(history)


WORKER = """
import json, os, sys
import torch
torch.set_num_threads(1)
import zoo

out, data = sys.argv[1], sys.argv[2]
rank = int(os.environ["RANK"])
model, history = zoo.adapt(
    "timm:test_resnet", os.path.join(data, "train"), os.path.join(data, "val"),
    policy="train-last:n=1", epochs=2, augment=False, feature_cache=True, image_size=32,
    batch_size=4, lr=1e-2, seed=0, scratch=True,
)
torch.save(model.state_dict(), os.path.join(out, f"rank{rank}.pt"))
with open(os.path.join(out, f"history{rank}.json"), "w") as f:
    json.dump(history.to_dict(), f)
"""


@pytest.mark.slow
def test_the_boundary_cache_under_torchrun_two_processes(tmp_path, colours):
    import json

    out = tmp_path / "out"
    out.mkdir()
    proc = run_worker(tmp_path, WORKER, out, colours)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rank0, rank1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert [k for k in rank0 if not torch.equal(rank0[k], rank1[k])] == []
    history = json.loads((out / "history0.json").read_text())
    assert history["world_size"] == 2 and history["feature_cache"]
    assert history["ddp_wraps"] == 1  # the suffix, wrapped once
    assert "'layer4'" in history["feature_cache_note"]
