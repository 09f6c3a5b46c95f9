"""Ctrl-C keeps the work (checkpoints, --resume) and early stopping on the best epoch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

import zoo
from zoo.adaptation.checkpoint import AdaptInterrupted, CheckpointError
from zoo.adaptation.history import AdaptCallback
from zoo.cli.main import main
from zoo.errors import DataError
from zoo.io.fileformat import PAUSE_AFTER_EPOCH_ENV
from zoo.io.store import checkpoint_folder, gc

BACKBONE = "timm:test_resnet"
FAST = {"image_size": 32, "batch_size": 8, "lr": 1e-2, "seed": 3, "scratch": True}
#: What a checkpoint records of its run, under the names of zoo.adapt's keyword arguments: a
#: resume compares each with its own, so a renamed one would refuse every older checkpoint.
CHECKPOINT_SETTINGS = {
    *("policy", "policy_args", "epochs", "lr", "weight_decay", "batch_size", "optimizer"),
    *("momentum", "lr_schedule", "warmup_epochs", "label_smoothing", "name", "delta"),
    *("pretrained", "weights", "scratch", "model_kwargs", "classes", "val_split"),
    *("image_size", "input_config", "augment", "similarity", "samples_per_class"),
    *("hflip", "scale", "color_jitter", "auto_augment", "mixup", "cutmix", "ema"),
    *("feature_cache", "on_corrupt", "device", "distributed", "seed"),
    *("early_stop", "refit", "start", "train", "val", "images", "world_size", "probe_start"),
    # the speed options that change the arithmetic (the others may differ on resume:
    # zoo.adaptation.checkpoint.MAY_DIFFER)
    *("precision", "accumulate", "shard"),
}


class StopAfter(AdaptCallback):
    """Presses Ctrl-C at the end of epoch ``epoch``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, record) -> None:
        if record.epoch == self.epoch:
            raise KeyboardInterrupt


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return [k for k in sa if not torch.equal(sa[k], sb[k])]


@pytest.mark.parametrize(
    ("options", "stop"),
    [
        # plain loop over augmented images, a schedule that adds optimizer groups per epoch
        # (stopped after epoch 2: resuming replays the plan change made at its start); the
        # frozen tensors change with the schedule, and the best epoch's state is kept with them
        ({"policy": "gradual", "augment": True, "early_stop": 3}, 2),
        # head on cached features (the frozen backbone is written once)
        ({"policy": "linear-probe", "early_stop": 3}, 1),
    ],
    ids=["plain-gradual", "cached-probe"],
)
def test_interrupted_run_resumes_bit_identical(colours, options, stop):
    train, val = colours / "train", colours / "val"
    whole, whole_history = zoo.adapt(
        BACKBONE, train, val, epochs=3, name="whole", **options, **FAST
    )
    assert not checkpoint_folder("whole").exists()  # removed once saved

    with pytest.raises(AdaptInterrupted, match=rf"after epoch {stop} of 3.*--resume"):
        zoo.adapt(
            BACKBONE, train, val, epochs=3, name="cut", callback=StopAfter(stop), **options, **FAST
        )
    folder = checkpoint_folder("cut")
    state = json.loads((folder / "state.json").read_text())
    assert state["epoch"] == stop and len(state["history"]) == stop
    assert set(state["config"]) == CHECKPOINT_SETTINGS  # the names a resume compares
    assert not any(p.suffix == ".pt" for p in folder.iterdir())  # nothing pickled
    with pytest.raises(zoo.ModelNotFoundError):
        zoo.load("cut")

    resumed, history = zoo.adapt(
        BACKBONE, train, val, epochs=3, name="cut", resume=True, **options, **FAST
    )
    assert history.resumed_from == stop and [e.epoch for e in history] == [1, 2, 3]
    assert _same(resumed, whole) == []
    assert [e.train_loss for e in history] == [e.train_loss for e in whole_history]
    assert not folder.exists()
    assert _same(zoo.load("cut"), zoo.load("whole")) == []


def test_resume_refuses_other_settings_and_missing_checkpoints(colours):
    train, val = colours / "train", colours / "val"
    with pytest.raises(CheckpointError, match="no checkpoint to resume"):
        zoo.adapt(BACKBONE, train, val, epochs=2, name="r", resume=True, **FAST)
    with pytest.raises(AdaptInterrupted):
        zoo.adapt(
            BACKBONE,
            train,
            val,
            epochs=2,
            name="r",
            policy="linear-probe",
            callback=StopAfter(1),
            **FAST,
        )
    with pytest.raises(CheckpointError) as info:
        zoo.adapt(
            BACKBONE,
            train,
            val,
            epochs=3,
            name="r",
            policy="linear-probe",
            resume=True,
            **{**FAST, "lr": 0.5},
        )
    message = str(info.value)
    assert "epochs: 2 there, 3 here" in message and "lr: 0.01 there, 0.5 here" in message
    assert "without --resume" in message
    # gc finds the stale checkpoint and says what it was
    assert [p.name for p, _ in gc(dry_run=True).checkpoints] == ["adapt-r"]
    assert checkpoint_folder("r").exists()
    result = gc()
    assert [p.name for p, _ in result.checkpoints] == ["adapt-r"]
    assert "epoch 1 of 2" in result.checkpoints[0][1] and "--resume" in result.checkpoints[0][1]
    assert not checkpoint_folder("r").exists()
    assert result.to_dict()["checkpoints"][0]["reason"] == result.checkpoints[0][1]


def test_early_stop_keeps_the_best_epoch(colours):
    train, val = colours / "train", colours / "val"
    # lr this high makes the validation loss go up after the first epochs
    options = {**FAST, "lr": 0.3, "optimizer": "sgd", "lr_schedule": "constant"}
    _free, free_history = zoo.adapt(BACKBONE, train, val, epochs=6, policy="full", **options)
    losses = [e.val_loss for e in free_history]
    _model, history = zoo.adapt(
        BACKBONE, train, val, epochs=6, policy="full", early_stop=1, name="es", **options
    )
    assert [e.val_loss for e in history] == losses[: len(history)]
    # stops at the first epoch that does not improve on the best so far
    first_worse = next(i for i in range(1, 6) if losses[i] >= min(losses[:i])) + 1
    assert len(history) == first_worse and history.stopped_early == (first_worse < 6)
    assert history.best_epoch == min(range(first_worse), key=lambda i: losses[i]) + 1
    assert history.best_epoch < len(history)
    assert any(f"best validation epoch, {history.best_epoch}" in n for n in history.notes)
    # the returned and saved model is the best epoch's: its validation loss is the best one
    scores = zoo.evaluate(zoo.load("es"), val)
    assert scores.loss == pytest.approx(min(losses[:first_worse]), rel=1e-4)

    with pytest.raises(DataError, match="needs a validation set"):
        zoo.adapt(BACKBONE, train, epochs=2, early_stop=2, **FAST)
    with pytest.raises(zoo.AdaptArgumentError, match="early_stop"):
        zoo.adapt(BACKBONE, train, val, epochs=2, early_stop=0, **FAST)


def _sigint_as_at_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_cli_sigint_keeps_the_epoch_and_gc_finds_it(colours, _isolated_zoo, capsys):
    args = [
        "adapt", BACKBONE, "--data", str(colours / "train"), "--val", str(colours / "val"),
        "--policy", "freeze-to:depth=4", "--epochs", "40", "--image-size", "32",
        "--batch-size", "8", "--scratch", "--name", "sig", "--seed", "1",
    ]  # fmt: skip
    # the run stops after epoch 1's checkpoint and says so; it cannot finish before the signal
    env = {
        **os.environ,
        "ZOO_HOME": str(_isolated_zoo),
        "HF_HUB_OFFLINE": "1",
        PAUSE_AFTER_EPOCH_ENV: "600",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "zoo.cli.main", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as at a terminal: a suite started in the background by a shell (`pytest &`,
        # nohup, some CI runners) inherits SIGINT ignored, and so would the run
        preexec_fn=_sigint_as_at_a_terminal,
    )
    try:
        before = []
        for line in proc.stderr:  # ends at EOF if the run fails before the pause
            before.append(line)
            if line.startswith("zoo-test: paused after epoch 1"):
                break
        assert before and before[-1].startswith("zoo-test: paused"), "".join(before)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=300)  # a hang guard only
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    state = checkpoint_folder("sig") / "state.json"
    assert json.loads(state.read_text())["epoch"] == 1
    assert "interrupted after epoch 1 of 40" in " ".join(err.split())
    assert "--resume" in err
    # resuming with other settings is refused, naming them; the right command finishes
    assert main([*args[:-2], "--seed", "2", "--resume"]) == 1
    assert "seed: 1 there, 2 here" in " ".join(capsys.readouterr().err.split())
    assert main(["gc", "--dry-run"]) == 0  # the text view says what the checkpoint held
    assert "epoch 1 of 40" in " ".join(capsys.readouterr().out.split())
    assert main(["gc", "--json"]) == 0
    removed = json.loads(capsys.readouterr().out)["checkpoints"]
    assert len(removed) == 1 and "epoch 1 of 40" in removed[0]["reason"]


def test_training_metadata_key_round_trips():
    from zoo.io.metadata import ZooMetadata

    record = {"epochs": 6, "epochs_run": 3, "best_epoch": 2, "early_stop": 1}
    build = {"backbone": "timm:test_resnet", "tag": None, "num_classes": 3, "kwargs": {}}
    meta = ZooMetadata("full", build, plan={}, training=record)
    md = meta.to_metadata()
    assert json.loads(md["zoo.training"]) == record
    sealed = {**md, "zoo.tensors_sha256": "0" * 64, "zoo.content_sha256": "0" * 64}
    assert ZooMetadata.parse(sealed, source="x").training == record
    plain = ZooMetadata("full", build, plan={}).to_metadata()
    assert "zoo.training" not in plain  # files not made by adapt are unchanged
    bad = {**sealed, "zoo.training": "[1]"}
    with pytest.raises(zoo.CorruptFileError, match=r"zoo\.training"):
        ZooMetadata.parse(bad, source="x")
