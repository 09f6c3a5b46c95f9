"""Augmentation you control (issue 22): one record (``Augment``) builds timm's transform, mixes
batches, is recorded in the saved file and shown by ``zoo inspect``; EMA weights are what is
evaluated and saved; compare and the measured auto measure with the augmentation the model
they return trains with; the cache is never used on randomly augmented images."""

from __future__ import annotations

import json

import pytest
import torch
from test_adapt_resume import StopAfter
from torch import nn

import zoo
from zoo.adaptation.checkpoint import AdaptInterrupted
from zoo.adaptation.config import EMA_DECAY, Augment, TrainConfig
from zoo.adaptation.data import ImageDataset, build_transform, scan_image_folder
from zoo.adaptation.distributed import DistContext
from zoo.adaptation.history import AdaptCallback
from zoo.adaptation.inputs import image_size_hint, prepare_data
from zoo.adaptation.training import Trainee
from zoo.cli.main import main
from zoo.core.specs import InputConfig
from zoo.io.store import checkpoint_folder

BACKBONE = "timm:test_resnet"
FAST = {"image_size": 32, "batch_size": 8, "lr": 1e-2, "scratch": True, "epochs": 1}
SMALL = InputConfig(input_size=(3, 32, 32))


def _steps(transform) -> list[str]:
    return [type(step).__name__ for step in transform.transforms]


def test_the_record_builds_timms_transform():
    flips = _steps(build_transform(SMALL, train=True, augment=Augment()))
    assert "RandomHorizontalFlip" in flips and "ColorJitter" in flips
    plain = build_transform(SMALL, train=True, augment=Augment(hflip=False, color_jitter=0.0))
    assert "RandomHorizontalFlip" not in _steps(plain) and "ColorJitter" not in _steps(plain)
    crop = build_transform(SMALL, train=True, augment=Augment(scale=(0.5, 1.0))).transforms[0]
    assert tuple(crop.scale) == (0.5, 1.0)
    rand = build_transform(SMALL, train=True, augment=Augment(auto_augment="rand-m9-mstd0.5"))
    assert "RandAugment" in _steps(rand)
    # no augmentation (or an evaluation transform): resize and centre crop only
    assert "RandomResizedCropAndInterpolation" not in _steps(build_transform(SMALL, train=True))


def test_augment_true_false_and_the_fields():
    assert TrainConfig().augmentation(default=False) is None
    assert TrainConfig().augmentation(default=True) == Augment()
    assert TrainConfig(augment=True).augmentation(default=False) == Augment()
    assert TrainConfig(augment=False).augmentation(default=True) is None
    # a field turns it on, with timm's defaults for the others
    given = TrainConfig(hflip=False, scale=[0.5, 1], mixup=0.2).augmentation(default=False)
    assert given == Augment(hflip=False, scale=(0.5, 1.0), mixup=0.2)
    assert given.describe() == "no flip, crop scale 0.5-1, colour jitter 0.4, mixup 0.2"
    assert TrainConfig(ema=True).ema_decay == EMA_DECAY
    assert TrainConfig(ema=0.99).ema_decay == 0.99 and TrainConfig().ema_decay is None


@pytest.mark.parametrize(
    ("options", "argument", "said"),
    [
        ({"augment": False, "hflip": False}, "augment", "augment=False turns"),
        ({"augment": {"hflip": 0.0}}, "augment", "hflip="),
        ({"scale": (0.9, 0.5)}, "scale", "0 < min <= max <= 1"),
        ({"scale": "0.5"}, "scale", "(min, max)"),
        ({"color_jitter": 2.0}, "color_jitter", "[0, 1]"),
        ({"mixup": -1.0}, "mixup", ""),
        ({"hflip": 0.5}, "hflip", "True or False"),
        ({"ema": 1.0}, "ema", ""),
        ({"ema": True, "resume": True}, "resume", "moving average"),
        ({"ema": 0.9, "early_stop": 2}, "early_stop", "moving average"),
    ],
)
def test_refused_augmentation_settings_name_the_argument(options, argument, said):
    with pytest.raises(zoo.AdaptArgumentError) as info:
        TrainConfig.of("adapt", options)
    assert info.value.argument == argument and said in str(info.value)


def test_timms_parser_checks_auto_augment_before_any_data(tmp_path):
    missing = tmp_path / "not-there"  # never read: the text is refused first
    with pytest.raises(zoo.AdaptArgumentError) as info:
        zoo.adapt(BACKBONE, missing, auto_augment="rand-x9", **FAST)
    assert info.value.argument == "auto_augment" and "timm's parser said" in str(info.value)


def _trainee(augment: Augment | None, ema: float | None = None) -> Trainee:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    batches = [(torch.randn(5, 3, 2, 2), torch.tensor([0, 1, 2, 0, 1]))]
    config = TrainConfig(label_smoothing=0.1, ema=ema, lr=0.5)
    plan = zoo.plan(model, "full")
    return Trainee(
        model, plan, batches, batches, config, ctx=DistContext(), callback=AdaptCallback(),
        num_classes=3, augment=augment,
    )  # fmt: skip


def test_mixup_mixes_images_and_gives_soft_targets():
    trainee = _trainee(Augment(mixup=1.0))
    images, targets = torch.randn(5, 3, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    torch.manual_seed(3)
    mixed, soft = trainee._mixed(images.clone(), targets)
    assert mixed.shape == images.shape and soft.shape == (5, 3)
    assert not torch.equal(mixed[:4], images[:4])  # the even part is mixed
    assert torch.equal(mixed[4], images[4])  # the odd one out keeps its image ...
    assert torch.allclose(soft[4], torch.tensor([0.1 / 3, 1 - 0.2 / 3, 0.1 / 3]))  # ... smoothed
    assert torch.allclose(soft.sum(1), torch.ones(5))
    assert (soft[:4].max(1).values < 1 - 0.2 / 3 - 1e-4).any()  # two labels in a mixed target
    assert trainee.epoch(1).train_loss > 0  # trains on soft targets
    assert _trainee(None)._mixed(images, targets)[1] is None  # no mixing: hard targets


def _val_loss(model: nn.Module, colours) -> float:
    data = ImageDataset.from_folder(
        scan_image_folder(colours / "val", classes=model.zoo.classes),
        build_transform(model.zoo.input_config),
    )
    images = torch.stack([data[i][0] for i in range(len(data))])
    labels = torch.tensor([data[i][1] for i in range(len(data))])
    model.eval()
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(images), labels))


def test_ema_is_what_is_evaluated_and_saved(colours):
    options = {**FAST, "epochs": 2, "policy": "full", "augment": False}
    raw, _ = zoo.adapt(BACKBONE, colours / "train", colours / "val", **options)
    model, history = zoo.adapt(
        BACKBONE, colours / "train", colours / "val", ema=0.6, name="ema", **options
    )
    assert history.ema == 0.6
    # the same training run (nothing random differs); the model returned is the average
    changed = [k for k, v in raw.state_dict().items() if not torch.equal(v, model.state_dict()[k])]
    assert changed
    saved = zoo.load("ema")
    assert all(torch.equal(v, saved.state_dict()[k]) for k, v in model.state_dict().items())
    # what was evaluated in the last epoch is the model returned, not the raw weights
    assert _val_loss(model, colours) == pytest.approx(history.epochs[-1].val_loss, rel=1e-5)
    assert _val_loss(raw, colours) != pytest.approx(history.epochs[-1].val_loss, rel=1e-5)
    training = zoo.inspect("ema").metadata.training
    assert training["ema"] == 0.6 and training["augment"] is None


def test_augmentation_rules_out_the_cache_and_is_recorded(colours):
    _model, history = zoo.adapt(
        BACKBONE, colours / "train", policy="linear-probe", hflip=False, name="aug", **FAST
    )
    assert not history.feature_cache
    assert "training images are augmented (no flip, crop scale 0.08-1" in (
        history.feature_cache_note
    )
    assert history.augment == Augment(hflip=False).to_dict()
    assert zoo.inspect("aug").metadata.training["augment"]["hflip"] is False
    with pytest.raises(zoo.ZooError, match="training images are augmented"):
        zoo.adapt(
            BACKBONE, colours / "train", policy="linear-probe", hflip=False, feature_cache=True,
            **FAST,
        )  # fmt: skip


def test_loaders_bring_their_own_transform(colours):
    from torch.utils.data import DataLoader, TensorDataset

    data = TensorDataset(torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2] * 2))
    loader = DataLoader(data, batch_size=3)
    with pytest.raises(zoo.DataError, match="a DataLoader brings its own"):
        zoo.adapt(BACKBONE, loader, classes=["a", "b", "c"], mixup=0.2, **FAST)


def test_compare_measures_with_the_augmentation_the_winner_trains_with(colours):
    common = {**FAST, "policies": "linear-probe,train-last:n=1"}
    plain = zoo.compare(BACKBONE, colours / "train", colours / "val", name="plain", **common)
    assert {r.trained_on for r in plain.leaderboard.rows} != {"images"}  # cached
    assert plain.history.augment is None
    result = zoo.compare(
        BACKBONE, colours / "train", colours / "val", name="flipless", hflip=False, **common
    )
    assert {r.trained_on for r in result.leaderboard.rows} == {"images"}
    assert any("training images are augmented" in n for n in result.leaderboard.notes)
    assert result.history.augment == Augment(hflip=False).to_dict()
    assert zoo.inspect("flipless").metadata.training["augment"]["hflip"] is False


def test_measured_auto_trains_the_winner_as_measured(colours, tmp_path):
    weights = zoo.save(zoo.create(BACKBONE, num_classes=3), tmp_path / "base.safetensors")
    options = {**FAST, "epochs": 1, "policy": "auto", "scratch": False, "weights": weights}
    _m, history = zoo.adapt(BACKBONE, colours / "train", colours / "val", **options)
    assert history.augment is None  # measured un-augmented: trained un-augmented
    assert any("on un-augmented images" in n for n in history.notes)
    _m, history = zoo.adapt(BACKBONE, colours / "train", colours / "val", hflip=False, **options)
    assert history.augment == Augment(hflip=False).to_dict()
    assert any("images augmented as the winner trains (no flip" in n for n in history.notes)


def test_small_images_get_an_image_size_hint(colours):
    data = prepare_data(
        colours / "train", None, classes=None, val_split=None, seed=0, on_corrupt="skip"
    )
    hint = image_size_hint(data, InputConfig(input_size=(3, 224, 224)), given=False)
    assert hint is not None
    assert "median side 32 px" in hint and "--image-size 32" in hint and "49x fewer" in hint
    assert image_size_hint(data, InputConfig(input_size=(3, 224, 224)), given=True) is None
    assert image_size_hint(data, InputConfig(input_size=(3, 48, 48)), given=False) is None
    # adapt says so before training (its start notes), compare too
    options = {k: v for k, v in FAST.items() if k != "image_size"}
    _m, history = zoo.adapt(BACKBONE, colours / "train", policy="linear-probe", **options)
    assert any("--image-size 32" in n for n in history.notes)
    heard = []

    class Hear(AdaptCallback):
        def on_start(self, info):
            heard.extend(info["notes"])

    result = zoo.compare(
        BACKBONE, colours / "train", colours / "val", policies="linear-probe", callback=Hear(),
        **options,
    )  # fmt: skip
    assert any("--image-size 32" in n for n in heard)  # said before training
    assert any("--image-size 32" in n for n in result.history.notes)


def test_resume_compares_the_augmentation_and_old_checkpoints_are_refused_clearly(colours):
    options = {**FAST, "epochs": 2, "policy": "full", "name": "res", "hflip": False}
    with pytest.raises(AdaptInterrupted):
        zoo.adapt(BACKBONE, colours / "train", callback=StopAfter(1), **options)
    with pytest.raises(zoo.CheckpointError, match=r"hflip: False there, True here"):
        zoo.adapt(BACKBONE, colours / "train", resume=True, **{**options, "hflip": True})
    # a checkpoint written before these settings existed: no crash, the difference is named
    state = checkpoint_folder("res") / "state.json"
    raw = json.loads(state.read_text())
    for key in ("hflip", "scale", "color_jitter", "auto_augment", "mixup", "cutmix", "ema"):
        raw["config"].pop(key)
    state.write_text(json.dumps(raw))
    with pytest.raises(zoo.CheckpointError, match=r"hflip: None there, False here"):
        zoo.adapt(BACKBONE, colours / "train", resume=True, **options)
    _m, history = zoo.adapt(BACKBONE, colours / "train", resume=True, **{**options, "hflip": None})
    assert history.resumed_from == 1 and history.augment == Augment().to_dict()


def test_cli_flags_reach_the_record(colours, capsys):
    argv = [
        "adapt", BACKBONE, "--data", str(colours / "train"), "--scratch", "--image-size", "32",
        "--batch-size", "8", "--epochs", "1", "--policy", "full", "--no-hflip", "--scale",
        "0.5,1", "--color-jitter", "0", "--mixup", "0.2", "--ema", "--name", "cli",
    ]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "no flip, crop scale 0.5-1, mixup 0.2" in out
    training = zoo.inspect("cli").metadata.training
    assert (
        training["augment"]
        == Augment(hflip=False, scale=(0.5, 1.0), color_jitter=0.0, mixup=0.2).to_dict()
    )
    assert training["ema"] == EMA_DECAY
    assert main(["inspect", "cli"]) == 0
    shown = capsys.readouterr().out
    assert "augmentation no flip, crop scale 0.5-1, mixup 0.2" in shown and "EMA" in shown
    assert main([*argv[:-2], "--scale", "big", "--name", "bad"]) == 1
    assert "--scale must be (min, max)" in capsys.readouterr().err
