"""zoo.adapt and ``zoo adapt``: plans drive training, the feature cache, saving, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from test_data import make_color_folder

import zoo
from zoo.adaptation.job import AdaptCallback, History
from zoo.cli.main import main

BACKBONE = "timm:test_resnet"  # a tiny timm ResNet: stem, 4 stages, fc
FAST = {"image_size": 32, "batch_size": 8, "lr": 1e-2}
SCRATCH = {**FAST, "scratch": True}  # random weights: the hub is offline in tests


def _store_listing(home):
    models = home / "models"
    if not models.exists():
        return {}
    return {p.name: p.stat().st_mtime_ns for p in models.rglob("*") if p.is_file()}


class Recorder(AdaptCallback):
    def __init__(self):
        self.events = []

    def on_start(self, info):
        self.events.append(("start", info["feature_cache"]))

    def on_features_start(self, split, batches):
        self.events.append(("features", split))

    def on_epoch_end(self, record):
        self.events.append(("epoch", record.epoch))

    def on_plan_change(self, epoch, plan):
        self.events.append(("plan", epoch))


def test_linear_probe_uses_the_feature_cache_and_saves(colours):
    recorder = Recorder()
    model, history = zoo.adapt(
        BACKBONE,
        colours / "train",
        colours / "val",
        policy="linear-probe",
        epochs=6,
        name="colours-probe",
        callback=recorder,
        **{**SCRATCH, "lr": 5e-2},
    )
    assert isinstance(history, History) and len(history) == 6
    assert history.feature_cache and "'fc'" in history.feature_cache_note
    assert not history.augment
    assert history.classes == ["blue", "green", "red"]
    assert history.train_images == 24 and history.val_images == 9
    assert history.epochs[-1].train_loss < history.epochs[0].train_loss
    assert history.final_accuracy is not None and history.final_accuracy >= 2 / 3
    assert all(e.trainable_tensors == 2 for e in history)
    assert ("features", "train") in recorder.events and ("epoch", 6) in recorder.events
    # history, saved metadata and the plan agree
    saved = zoo.load("colours-probe")
    assert history.path and os.path.samefile(
        history.path, zoo.io.persistence.resolve_target("colours-probe").model_path
    )
    assert saved.zoo.classes == history.classes
    assert saved.zoo.plan.policy == "zoo:linear-probe" == history.policy
    assert saved.zoo.plan.trainable == ["fc.weight", "fc.bias"]
    assert saved.zoo.input_config.input_size == (3, 32, 32)
    assert history.trainable_params == sum(p.numel() for p in model.fc.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved.state_dict()[key]), key


def test_cached_features_train_exactly_like_the_plain_loop(colours):
    weights = {}
    for cache in (True, False):
        model, history = zoo.adapt(
            BACKBONE,
            colours / "train",
            colours / "val",
            policy="linear-probe",
            epochs=2,
            feature_cache=cache,
            **SCRATCH,
        )
        assert history.feature_cache is cache
        weights[cache] = (model.fc.weight.detach(), history.accuracy, history.loss)
    torch.testing.assert_close(weights[True][0], weights[False][0], atol=1e-4, rtol=1e-4)
    assert weights[True][1] == weights[False][1]
    assert weights[True][2] == pytest.approx(weights[False][2], rel=1e-4)


def test_freeze_to_trains_the_plan_and_nothing_else(colours):
    torch.manual_seed(0)
    start = zoo.create(BACKBONE, num_classes=3)
    before = {k: v.clone() for k, v in start.state_dict().items()}
    model, history = zoo.adapt(
        start, colours / "train", policy="freeze-to:depth=4", epochs=2, **FAST
    )
    plan = model.zoo.plan
    assert plan.policy == "zoo:freeze-to" and plan.args == {"depth": 4}
    assert not history.feature_cache and "more than the classifier" in history.feature_cache_note
    assert history.augment  # fine-tuning augments by default
    trained = set(plan.trainable)
    assert trained and all(n.startswith(("layer4.", "fc.")) for n in trained)
    after = model.state_dict()
    for name, _ in model.named_parameters():
        changed = not torch.equal(before[name], after[name])
        assert changed == (name in trained), name
    assert history.val_images == 0 and history.epochs[0].val_accuracy is None


def test_gradual_unfreezes_per_epoch(colours):
    recorder = Recorder()
    model, history = zoo.adapt(
        BACKBONE,
        colours / "train",
        colours / "val",
        policy="gradual",
        epochs=3,
        callback=recorder,
        **SCRATCH,
    )
    tensors = [e.trainable_tensors for e in history]
    assert tensors[0] == 2 and tensors[0] < tensors[1] < tensors[2]
    assert ("plan", 2) in recorder.events and ("plan", 3) in recorder.events
    assert not history.feature_cache and "schedule" in history.feature_cache_note
    assert model.zoo.plan.epoch == 2


def test_auto_gets_samples_per_class_and_similarity_from_adapt(colours, tmp_path):
    weights = zoo.save(zoo.create(BACKBONE, num_classes=3), tmp_path / "start.safetensors")
    # without validation data auto uses its table (with it, it measures: tests/test_compare_auto)
    _, history = zoo.adapt(
        BACKBONE, colours / "train", policy="auto", epochs=1, weights=weights, **FAST
    )
    assert history.policy == "zoo:auto"
    assert history.policy_args["samples_per_class"] == 8
    assert history.policy_args["similarity"] == "high"
    assert history.train_images == 24 and history.val_images == 0
    assert any("linear-probe" in note for note in history.notes)


def test_data_loaders_and_readapting_a_saved_model(colours):
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    x = torch.randn(24, 3, 32, 32)
    y = torch.arange(24) % 2
    x[y == 1] += 1.5
    train = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    base, _ = zoo.adapt(
        BACKBONE, colours / "train", policy="linear-probe", epochs=1, name="colours-base", **SCRATCH
    )
    model, history = zoo.adapt(
        "colours-base",
        train,
        classes=["a", "b"],
        policy="auto",
        epochs=1,
        similarity="low",
        name="ab",
    )
    assert history.start == "saved model 'colours-base'"
    # auto chose train-last:n=1; a TensorDataset has no random transform: boundary cache
    assert history.feature_cache and "'layer4'" in history.feature_cache_note
    assert history.policy_args["samples_per_class"] == 12
    assert model.fc.out_features == 2
    # the backbone came from the saved model, the head is new
    assert torch.equal(model.state_dict()["conv1.0.weight"], base.state_dict()["conv1.0.weight"])
    assert zoo.load("ab").zoo.classes == ["a", "b"]
    # same classes: the saved head is kept and trained further
    _again, hist = zoo.adapt(
        "ab", train, classes=["a", "b"], policy="linear-probe", epochs=1, feature_cache=True
    )
    assert hist.feature_cache  # a TensorDataset has no random transform


@pytest.mark.parametrize(
    "case, error, message",
    [
        ("name-taken", zoo.ModelExistsError, "already saved"),
        ("bad-name", zoo.InvalidNameError, "invalid model name"),
        ("backbone", zoo.UnknownNameError, "test_resnet"),
        ("policy", zoo.UnknownNameError, "linear-probe"),
        ("empty", zoo.DataError, "is empty"),
        ("force-cache", zoo.ZooError, "feature cache cannot be used"),
        ("delta-from-scratch", zoo.errors.MissingBaseError, "has none"),
        ("weights-for-a-saved-model", zoo.ZooError, "apply when starting from a backbone"),
    ],
)
def test_errors_are_clear_and_change_nothing(
    colours, tmp_path, _isolated_zoo, case, error, message
):
    zoo.save(zoo.create(BACKBONE, num_classes=3), "taken")
    before = _store_listing(_isolated_zoo)
    kwargs = {"policy": "linear-probe", "epochs": 1, "name": "new", **SCRATCH}
    start, train = BACKBONE, colours / "train"
    if case == "name-taken":
        kwargs["name"] = "taken"
        train = tmp_path / "missing"  # the name is checked before the data is read
    elif case == "bad-name":
        kwargs["name"] = "bad name"
    elif case == "backbone":
        start = "timm:test_resnetx"
    elif case == "policy":
        kwargs["policy"] = "linear-prob"
    elif case == "empty":
        (tmp_path / "empty").mkdir()
        train = tmp_path / "empty"
    elif case == "force-cache":
        kwargs.update(policy="full", feature_cache=True)
    elif case == "delta-from-scratch":
        kwargs["delta"] = True
    elif case == "weights-for-a-saved-model":
        start, kwargs["weights"] = "taken", "taken"
        del kwargs["scratch"]
    with pytest.raises(error, match=message):
        zoo.adapt(start, train, **kwargs)
    assert _store_listing(_isolated_zoo) == before


def test_cli_adapt_json_and_errors(colours, capsys, _isolated_zoo):
    argv = [
        "adapt",
        BACKBONE,
        "--data",
        str(colours / "train"),
        "--val-split",
        "0.25",
        "--policy",
        "linear-probe",
        "--epochs",
        "2",
        "--image-size",
        "32",
        "--batch-size",
        "8",
        "--scratch",
        "--name",
        "cli-probe",
        "--json",
    ]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["name"] == "cli-probe" and doc["feature_cache"] is True
    assert len(doc["epochs"]) == 2 and doc["policy"] == "zoo:linear-probe"
    assert zoo.load("cli-probe").zoo.classes == ["blue", "green", "red"]
    before = _store_listing(_isolated_zoo)
    assert main(argv) == 1
    assert "already saved" in capsys.readouterr().err
    assert main([*argv[:-3], "--overwrite", "--name", "cli-probe", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "cli-probe" in out and "feature cache" in out.lower()
    assert _store_listing(_isolated_zoo) != before
    assert main(["adapt", BACKBONE, "--data", str(colours / "nope"), "--name", "x"]) == 1
    assert "does not exist" in capsys.readouterr().err


def _history() -> History:
    from zoo.adaptation.job import EpochRecord

    epochs = [
        EpochRecord(i, 1.0 / i, 0.5 + i / 10, 0.9 / i, 0.6 + i / 10, 1.5, 24, 16.0, 1e-3, 291, 2)
        for i in (1, 2)
    ]
    return History(
        epochs=epochs,
        backbone="timm:test_resnet",
        start="backbone timm:test_resnet",
        policy="zoo:linear-probe",
        classes=["blue", "green", "red"],
        train_images=24,
        val_images=9,
        feature_cache=True,
        feature_cache_note="features cached at 'fc'",
        feature_seconds=0.4,
        total_seconds=3.2,
        trainable_params=291,
        total_params=372_982,
        name="colours",
        path="/store/colours/model.safetensors",
        skipped=[{"path": "red/bad.png", "reason": "OSError: truncated"}],
    )


def test_each_option_is_one_config_field_and_typing_none_keeps_the_defaults():
    """``zoo adapt`` and ``zoo compare`` take their options from one table of
    ``TrainConfig`` fields: what is typed becomes the field's value, what is not typed keeps
    the default ``zoo.adapt`` has."""
    from dataclasses import fields

    from zoo.adaptation.config import TrainConfig
    from zoo.cli.main import build_parser
    from zoo.cli.train_options import OPTIONS, config_from_args

    assert set(OPTIONS) <= {f.name for f in fields(TrainConfig)}
    parser = build_parser()
    for job in ("adapt", "compare"):
        args = parser.parse_args([job, "b", "--data", "d", "--name", "n"])
        assert config_from_args(args, job, name="n") == TrainConfig(name="n")
    typed = [
        *("adapt", "b", "--data", "d", "--augment", "off", "--feature-cache", "on"),
        *("--strict-images", "--crop-pct", "0.9", "--workers", "2", "--pretrained"),
        *("--delta", "--resume", "--early-stop", "2", "--lr-schedule", "constant"),
    ]
    config = config_from_args(parser.parse_args(typed), "adapt")
    assert (config.augment, config.feature_cache, config.on_corrupt) == (False, True, "error")
    assert config.input_config == {"crop_pct": 0.9} and config.num_workers == 2
    assert (config.pretrained, config.delta, config.resume) == (True, True, True)
    assert (config.early_stop, config.lr_schedule) == (2, "constant")
    base = ["compare", "b", "--data", "d", "--name", "n", "--policies"]
    one = config_from_args(parser.parse_args([*base, "a,lora:rank=4,alpha=8"]), "compare")
    assert one.policies == "a,lora:rank=4,alpha=8"  # as typed: a refusal shows it
    two = config_from_args(parser.parse_args([*base, "a", "--policies", "b;c"]), "compare")
    assert two.policies == ["a", "b", "c"]


def test_render_tables_and_progress():
    from io import StringIO

    from rich.console import Console

    from zoo.cli.render_adapt import AdaptProgress, history_table, skipped_text, summary_table

    history = _history()
    console = Console(file=StringIO(), width=120)
    console.print(history_table(history))
    console.print(summary_table(history))
    console.print(skipped_text(history))
    text = console.file.getvalue()
    assert "80.0%" in text and "0.5000" in text  # epoch 2: val acc, train loss
    assert "colours" in text and "0.1%" in text and "used" in text
    assert "red/bad.png" in text and "1 skipped" in text
    assert History.from_dict(json.loads(history.to_json())) == history
    # the live view, driven by hand: prints a line per epoch, leaves no bars behind
    live = Console(file=StringIO(), width=120)
    progress = AdaptProgress(live)
    progress.on_start(
        {
            "start": "backbone x",
            "policy": "zoo:full",
            "classes": ["a", "b"],
            "train_images": 4,
            "val_images": 0,
            "epochs": 2,
            "note": "plain loop",
        }
    )
    progress.on_epoch_start(1, 2, 3)
    progress.on_batch_end(1, 1, 3, 0.5, 0.75, 100.0)
    progress.on_epoch_end(history.epochs[0])
    progress.on_end(history)
    shown = live.file.getvalue()
    assert "backbone x" in shown and "epoch 1/2" in shown and "plain loop" in shown


class _Net(torch.nn.Module):
    """A plain module zoo knows nothing about; ``scale`` puts work after the classifier."""

    def __init__(self, scale: float | None = None) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
        )
        self.fc = torch.nn.Linear(8, 3)
        self.scale = scale

    def forward(self, x):
        out = self.fc(self.body(x))
        return out * self.scale if self.scale is not None else out


def test_generic_modules_get_the_cache_only_when_the_cut_is_exact(colours):
    _, plain = zoo.adapt(_Net(), colours / "train", policy="linear-probe", epochs=2, **FAST)
    assert plain.feature_cache and "'fc'" in plain.feature_cache_note
    model, scaled = zoo.adapt(
        _Net(scale=2.0), colours / "train", policy="linear-probe", epochs=2, **FAST
    )
    assert not scaled.feature_cache
    assert "not the model's output" in scaled.feature_cache_note
    assert len(scaled) == 2 and model.fc.weight.requires_grad
    with pytest.raises(zoo.ZooError, match="cannot save this _Net"):
        zoo.adapt(_Net(), colours / "train", policy="linear-probe", epochs=1, name="net", **FAST)


def test_unreadable_images_are_skipped_and_recorded(tmp_path):
    root = make_color_folder(tmp_path / "d", per_class=4)
    (root / "red" / "broken.png").write_bytes(b"\x89PNG not really")
    _, history = zoo.adapt(BACKBONE, root, policy="linear-probe", epochs=1, **SCRATCH)
    assert history.train_images == 12
    assert [Path(s["path"]).name for s in history.skipped] == ["broken.png"]
    with pytest.raises(zoo.DataError, match=r"broken\.png"):
        zoo.adapt(BACKBONE, root, policy="linear-probe", epochs=1, on_corrupt="error", **SCRATCH)
