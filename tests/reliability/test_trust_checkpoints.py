"""An adapt run's checkpoint is untrusted input (issue 19): its folder, its files, its state.

The checkpoint folder is zoo's own: a link or a file where ``tmp/`` or ``tmp/adapt-NAME``
should be is refused before any work, and nothing of the user's behind a link is written,
deleted or read (by adapt or by ``zoo gc``). Every value of a checkpoint a resume would use is
checked first: a corpus of hostile ``state.json`` and tensor files each ends in a
:class:`~zoo.CheckpointError` naming the field — never a raw traceback, never a hang, never a
value that overrides this run's settings. A checkpoint of other classes is refused by name;
a full disk keeps the last good checkpoint; a measured ``auto`` resumes without measuring
again; a second run under the same name is refused at once; a save that fails at the end says
that the trained run is kept.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import shutil
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from reliability_helpers import FORK, Injector, child_init, enospc, sigkill
from test_data import make_color_folder
from trust_helpers import cli, run_bounded

import zoo
from zoo.adaptation.checkpoint import AdaptInterrupted
from zoo.adaptation.history import AdaptCallback
from zoo.errors import CheckpointError
from zoo.io import store
from zoo.io.fileformat import read_file, seal, write_tensors
from zoo.io.store import MAX_CHECKPOINT_STATE_BYTES, checkpoint_folder, checkpoints_dir

BACKBONE = "timm:test_resnet"
NAME = "ck"
FAST = {"image_size": 32, "batch_size": 8, "lr": 1e-2, "seed": 3, "scratch": True}
#: The run every checkpoint of this file belongs to: a linear probe on cached features with
#: early stopping (so it has a frozen file and a best file), stopped after epoch 1 of 2.
RUN = {"epochs": 2, "policy": "linear-probe", "early_stop": 2, **FAST}


class StopAfter(AdaptCallback):
    """Presses Ctrl-C at the end of epoch ``epoch``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, record: Any) -> None:
        if record.epoch == self.epoch:
            raise KeyboardInterrupt


class Trained(AdaptCallback):
    """Counts the epochs a run trains."""

    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_epoch_start(self, epoch: int, epochs: int, batches: int) -> None:
        self.epochs.append(epoch)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("colours")
    make_color_folder(root / "train", per_class=6, seed=0)
    make_color_folder(root / "val", per_class=2, seed=1)
    return root


def adapt(data: Path, name: str = NAME, **options: Any) -> Any:
    return zoo.adapt(BACKBONE, data / "train", data / "val", name=name, **{**RUN, **options})


@pytest.fixture(scope="module")
def base(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkpoint of :data:`RUN` after epoch 1 (made once, copied into each test)."""
    home = tmp_path_factory.mktemp("base_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ZOO_HOME", str(home))
        with pytest.raises(AdaptInterrupted):
            adapt(data, callback=StopAfter(1))
        return checkpoint_folder(NAME)


@pytest.fixture
def ckpt(base: Path) -> Path:
    """This test's copy of the checkpoint, where ``zoo adapt --name ck --resume`` looks."""
    folder = checkpoint_folder(NAME)
    folder.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(base, folder)
    return folder


def state_of(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "state.json").read_text())


def write_state(folder: Path, state: Any) -> None:
    (folder / "state.json").write_text(json.dumps(state))


def reseal(folder: Path, name: str, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    """Rewrite a checkpoint tensor file with ``change`` applied, sealed again as zoo would:
    what an attacker who knows the format can do (the seal is a hash, not a signature)."""
    tensors = dict(read_file(folder / name).tensors)
    change(tensors)
    write_tensors(folder / name, tensors, seal(tensors, {"format": "pt"}))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def refused(data: Path, field: str) -> str:
    """Resume, which must be refused naming ``field``; returns the message."""
    with pytest.raises(CheckpointError) as info:
        adapt(data, resume=True)
    message = str(info.value)
    assert f"cannot be resumed: {field}" in message, message
    assert "without --resume" in message and "zoo gc" in message
    return message


# ---------------------------------------------------------------- the folder is zoo's own


@pytest.fixture
def users_weights(tmp_path: Path) -> Path:
    """A folder of someone's weights (and a state.json that zoo must never read)."""
    folder = tmp_path / "my-weights"
    folder.mkdir()
    (folder / "precious.safetensors").write_bytes(b"weights of a month of training")
    (folder / "other.safetensors").write_bytes(b"more weights")
    (folder / "state.json").write_text(json.dumps({"epoch": 7, "config": {"name": "LEAKED"}}))
    return folder


@pytest.mark.parametrize("where", ["tmp", "adapt-NAME"])
def test_a_linked_checkpoint_folder_is_refused_and_the_users_files_stay(
    data, users_weights, where, capsys
):
    before = snapshot(users_weights)
    link = checkpoints_dir() if where == "tmp" else checkpoint_folder(NAME)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(users_weights, target_is_directory=True)
    trained = Trained()
    with pytest.raises(CheckpointError, match="symbolic link, not a folder") as info:
        adapt(data, callback=trained)
    assert str(link) in str(info.value) and "move it out of the way" in str(info.value)
    assert trained.epochs == []  # refused before any training
    assert snapshot(users_weights) == before  # names and bytes: nothing written or deleted
    assert link.is_symlink()
    with pytest.raises(zoo.ModelNotFoundError):
        zoo.load(NAME)
    # zoo gc neither reads through the link (the LEAKED name) nor deletes behind it
    status, out, err = cli("gc", "--json")
    assert status == 0 and "LEAKED" not in out + err
    assert snapshot(users_weights) == before and link.is_symlink()
    if where == "adapt-NAME":
        skipped = {r["path"]: r["reason"] for r in json.loads(out)["skipped"]}
        assert "symbolic link" in skipped[str(link)]


@pytest.mark.parametrize("where", ["tmp", "adapt-NAME"])
def test_a_file_where_the_checkpoint_folder_goes_is_refused_before_training(data, where):
    path = checkpoints_dir() if where == "tmp" else checkpoint_folder(NAME)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a folder")
    trained = Trained()
    with pytest.raises(CheckpointError, match="a regular file, not a folder") as info:
        adapt(data, callback=trained)
    assert str(path) in str(info.value)
    assert trained.epochs == [] and path.read_bytes() == b"not a folder"


def test_zoo_deletes_only_the_files_it_wrote(data, ckpt):
    (ckpt / "notes.txt").write_text("mine")
    (ckpt / "model-99.safetensors.bak").write_text("mine too")
    _model, history = adapt(data, resume=True)
    assert history.resumed_from == 1
    assert sorted(p.name for p in ckpt.iterdir()) == ["model-99.safetensors.bak", "notes.txt"]
    # zoo gc removes a checkpoint's files, never what zoo does not write, and says so
    shutil.copytree(ckpt, checkpoints_dir() / "adapt-other")
    (checkpoints_dir() / "adapt-other" / "state.json").write_text("{}")
    result = store.gc()
    assert sorted(p.name for p in (checkpoints_dir() / "adapt-other").iterdir()) == [
        "model-99.safetensors.bak",
        "notes.txt",
    ]
    reasons = dict(result.skipped)
    assert "left alone" in reasons[checkpoints_dir() / "adapt-other"]


# ---------------------------------------------------------------- hostile state.json


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A change of ``state.json``: the value at the dotted ``path`` (list indexes allowed)."""

    def change(state: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = state
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value

    return change


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda state: state.pop(key)


def _nest(state: dict[str, Any]) -> None:
    state["config"]["classes"] = json.loads("[" * 50 + "]" * 50)


#: A measured auto's winner as a checkpoint of its refit keeps it.
AUTO = {"policy": "zoo:full", "note": "x", "lr_factor": 1.0, "epochs": 2}

HOSTILE_STATES = {
    "version-1": (_set("version", 1), "version"),
    "epoch-huge": (_set("epoch", 10**6), "epoch"),
    "epoch-negative": (_set("epoch", -5), "epoch"),
    "epoch-float": (_set("epoch", 1e30), "epoch"),
    "epoch-text": (_set("epoch", "1"), "epoch"),
    "no-files": (_drop("files"), "files: is missing"),
    "unknown-field": (_set("early", {"patience": 0, "bad_epochs": 0}), "'early'"),
    "files-absolute": (_set("files.model", "/etc/passwd"), "files.model"),
    "files-dotdot": (_set("files.model", "../adapt-x/model-1.safetensors"), "files.model"),
    "files-other-epoch": (_set("files.optimizer", "optimizer-2.safetensors"), "files.optimizer"),
    "files-frozen-later": (_set("files.frozen", "frozen-9.safetensors"), "files.frozen"),
    "files-best-path": (_set("files.best", "../../best-1.safetensors"), "files.best"),
    "files-not-object": (_set("files", ["model-1.safetensors"]), "files"),
    "history-not-list": (_set("history", {"epochs": []}), "history"),
    "history-too-long": (lambda s: s["history"].append(s["history"][0]), "history"),
    "history-loss-text": (_set("history.0.val_loss", "low"), "history[0].val_loss"),
    "history-accuracy": (_set("history.0.val_accuracy", 7.0), "history[0].val_accuracy"),
    "history-extra-key": (_set("history.0.injected", 1), "history[0]"),
    "history-epoch": (_set("history.0.epoch", 2), "history[0].epoch"),
    "lr-override": (_set("optimizer.param_groups.0.lr", 1e6), "optimizer.param_groups[0].lr"),
    "weight-decay": (
        _set("optimizer.param_groups.0.weight_decay", 0.5),
        "optimizer.param_groups[0].weight_decay",
    ),
    "betas": (
        _set("optimizer.param_groups.0.betas", [0.0, 0.0]),
        "optimizer.param_groups[0].betas",
    ),
    "initial-lr": (
        _set("optimizer.param_groups.0.initial_lr", 1e6),
        "optimizer.param_groups[0].initial_lr",
    ),
    "extra-group": (
        lambda s: s["optimizer"]["param_groups"].append(s["optimizer"]["param_groups"][0]),
        "optimizer.param_groups",
    ),
    "params-index": (_set("optimizer.param_groups.0.params", [99]), "optimizer.param_groups[0]"),
    "rng-python-short": (_set("rng.python.1", [1, 2, 3]), "rng.python[1]"),
    "rng-python-index": (lambda s: s["rng"]["python"][1].__setitem__(624, 10**6), "rng.python"),
    "rng-python-gauss": (_set("rng.python.2", "x"), "rng.python[2]"),
    "rng-numpy": (_set("rng.numpy.0", "PCG64"), "rng.numpy[0]"),
    "rng-numpy-pos": (_set("rng.numpy.2", 10**9), "rng.numpy[2]"),
    "auto-not-measured": (_set("auto", {**AUTO, "note": "x"}), "auto"),
    "auto-before-refit": (_set("auto", {"policy": "zoo:full", "note": "x"}), "auto"),
    "auto-control": (_set("auto", {**AUTO, "note": "\x1b[2J"}), "auto.note"),
    "auto-surrogate": (_set("auto", {**AUTO, "note": "\ud800"}), "auto.note"),
    "auto-lr-factor": (_set("auto", {**AUTO, "lr_factor": -1}), "auto.lr_factor"),
    "auto-epochs": (_set("auto", {**AUTO, "epochs": 0}), "auto.epochs"),
    "written": (_set("written", ["x"]), "written"),
    "not-an-object": (lambda s: s.clear(), "version"),
}


@pytest.mark.parametrize("change, field", HOSTILE_STATES.values(), ids=HOSTILE_STATES.keys())
def test_a_hostile_state_json_is_refused_naming_its_field(data, ckpt, change, field):
    state = state_of(ckpt)
    change(state)
    write_state(ckpt, state)
    before = snapshot(ckpt)
    refused(data, field)
    assert snapshot(ckpt) == before  # a refused checkpoint is kept as it was


@pytest.mark.parametrize(
    "text, problem",
    [
        ("[1, 2]", "state.json: must be a JSON object"),
        ('{"version": NaN}', "not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("\udcff", "not UTF-8"),
        ("", "not valid JSON"),
    ],
    ids=["list", "nan", "deep", "not-utf8", "empty"],
)
def test_a_state_json_that_is_not_a_json_object_is_refused(data, ckpt, text, problem):
    (ckpt / "state.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(CheckpointError, match=problem) as info:
        adapt(data, resume=True)
    assert "without --resume" in str(info.value)


def test_other_settings_are_named_and_nested_values_never_crash(data, ckpt):
    state = state_of(ckpt)
    _nest(state)
    write_state(ckpt, state)
    with pytest.raises(CheckpointError, match=r"other settings — classes: \[\[\[") as info:
        adapt(data, resume=True)
    assert len(str(info.value)) < 2000


def test_an_oversize_state_json_is_refused_before_it_is_read(data, ckpt):
    with open(ckpt / "state.json", "r+b") as f:  # sparse: costs no disk
        f.truncate(MAX_CHECKPOINT_STATE_BYTES + 1)
    with pytest.raises(CheckpointError, match=r"over the 16777216-byte limit"):
        adapt(data, resume=True)
    with open(ckpt / "state.json", "r+b") as f:
        f.truncate(2**30)  # 1 GiB: refused as fast, never read whole
    with pytest.raises(CheckpointError, match="limit"):
        adapt(data, resume=True)
    # zoo gc applies the same limit: the checkpoint is unreadable, and removed
    result = store.gc()
    assert "unreadable" in result.checkpoints[0][1] and not ckpt.exists()


def test_fifos_and_links_in_a_checkpoint_never_hang_and_are_refused(
    data, base, ckpt, users_weights
):
    os.unlink(ckpt / "optimizer-1.safetensors")
    os.mkfifo(ckpt / "optimizer-1.safetensors")
    os.unlink(ckpt / "model-1.safetensors")
    os.symlink(users_weights / "precious.safetensors", ckpt / "model-1.safetensors")

    def resume() -> None:
        adapt(data, resume=True)

    def resume_fifo_state() -> None:
        os.rename(ckpt / "state.json", ckpt / "saved.json")
        os.mkfifo(ckpt / "state.json")
        try:
            adapt(data, resume=True)
        finally:
            os.unlink(ckpt / "state.json")
            os.rename(ckpt / "saved.json", ckpt / "state.json")

    outcomes = run_bounded({"link": resume, "fifo-state": resume_fifo_state})
    assert outcomes["link"].raised("CheckpointError"), outcomes["link"]
    assert "files.model" in outcomes["link"].message
    assert "symbolic link" in outcomes["link"].message
    assert outcomes["fifo-state"].raised("CheckpointError"), outcomes["fifo-state"]
    assert "a FIFO" in outcomes["fifo-state"].message
    os.unlink(ckpt / "model-1.safetensors")
    shutil.copy(base / "model-1.safetensors", ckpt / "model-1.safetensors")
    outcome = run_bounded({"fifo": resume})["fifo"]
    assert outcome.raised("CheckpointError"), outcome
    assert "files.optimizer" in outcome.message and "a FIFO" in outcome.message


# ---------------------------------------------------------------- hostile tensor files


def _nan_moment(tensors: dict[str, torch.Tensor]) -> None:
    name = next(n for n in tensors if n.endswith(".exp_avg"))
    tensors[name] = torch.full_like(tensors[name], math.nan)


def _huge_step(tensors: dict[str, torch.Tensor]) -> None:
    name = next(n for n in tensors if n.endswith(".step"))
    tensors[name] = torch.tensor(1e30)


def _wrong_shape(tensors: dict[str, torch.Tensor]) -> None:
    name = next(n for n in tensors if n.endswith(".exp_avg_sq"))
    tensors[name] = torch.zeros(4000, 1)


def _extra_state(tensors: dict[str, torch.Tensor]) -> None:
    tensors["state.0.pickle"] = torch.zeros(1)


def _short_rng(tensors: dict[str, torch.Tensor]) -> None:
    tensors["rng.torch"] = tensors["rng.torch"][:100]


def _garbage_rng(tensors: dict[str, torch.Tensor]) -> None:
    tensors["rng.torch"] = torch.full_like(tensors["rng.torch"], 255)


def _no_loader_rng(tensors: dict[str, torch.Tensor]) -> None:
    for name in [n for n in tensors if n.startswith("rng.loader.")]:
        del tensors[name]


def _inflated(tensors: dict[str, torch.Tensor]) -> None:
    tensors["fc.weight"] = torch.zeros(2000, 1000)  # 8 MB: more than the whole model


def _head_resized(tensors: dict[str, torch.Tensor]) -> None:
    tensors["fc.weight"] = torch.zeros(4000000, 0)


def _unknown_weight(tensors: dict[str, torch.Tensor]) -> None:
    tensors["injected"] = torch.zeros(1)


def _non_finite(value: float) -> Callable[[dict[str, torch.Tensor]], None]:
    """A weight of the file set to ``value``, resealed: a diverged run or a changed file."""

    def change(tensors: dict[str, torch.Tensor]) -> None:
        name = next(n for n, t in tensors.items() if t.is_floating_point() and t.ndim > 1)
        tensors[name] = torch.full_like(tensors[name], value)

    return change


HOSTILE_TENSORS = {
    "nan-moment": ("optimizer-1.safetensors", _nan_moment, "state."),
    "huge-step": ("optimizer-1.safetensors", _huge_step, "state."),
    "moment-shape": ("optimizer-1.safetensors", _wrong_shape, "state."),
    "extra-state": ("optimizer-1.safetensors", _extra_state, "files.optimizer"),
    "short-rng": ("optimizer-1.safetensors", _short_rng, "rng.torch"),
    "garbage-rng": ("optimizer-1.safetensors", _garbage_rng, "rng.torch"),
    "no-loader-rng": ("optimizer-1.safetensors", _no_loader_rng, "files.optimizer"),
    "head-resized": ("model-1.safetensors", _head_resized, "files.model"),
    "unknown-weight": ("model-1.safetensors", _unknown_weight, "files.model"),
    "best-resized": ("best-1.safetensors", _head_resized, "files.best"),
    "inflated": ("model-1.safetensors", _inflated, "files.model"),
    "inflated-optimizer": ("optimizer-1.safetensors", _inflated, "files.optimizer"),
    "nan-weight": ("model-1.safetensors", _non_finite(math.nan), "files.model"),
    "inf-frozen": ("frozen-1.safetensors", _non_finite(math.inf), "files.frozen"),
    "nan-best": ("best-1.safetensors", _non_finite(-math.nan), "files.best"),
}


@pytest.mark.parametrize(
    "name, change, field", HOSTILE_TENSORS.values(), ids=HOSTILE_TENSORS.keys()
)
def test_a_hostile_tensor_file_is_refused_naming_its_field(data, ckpt, name, change, field):
    reseal(ckpt, name, change)
    refused(data, field)


def test_a_changed_unsealed_or_foreign_tensor_file_is_refused(data, ckpt):
    model = ckpt / "model-1.safetensors"
    raw = bytearray(model.read_bytes())
    raw[-1] ^= 0xFF
    model.write_bytes(bytes(raw))
    assert "tensor data changed" in refused(data, "files.model")
    from safetensors.torch import save_file

    save_file(dict(read_file(ckpt / "best-1.safetensors").tensors), str(model))  # no seal
    assert "not sealed by zoo" in refused(data, "files.model")
    os.unlink(model)
    refused(data, "files.model")  # missing


# ---------------------------------------------------------------- the run it belongs to


def test_a_class_folder_added_is_named_not_a_size_mismatch(tmp_path):
    make_color_folder(tmp_path / "train", per_class=6, seed=0)
    make_color_folder(tmp_path / "val", per_class=2, seed=1)
    with pytest.raises(AdaptInterrupted):
        adapt(tmp_path, callback=StopAfter(1))
    for split in ("train", "val"):
        shutil.copytree(tmp_path / split / "red", tmp_path / split / "yellow")
    with pytest.raises(CheckpointError) as info:
        adapt(tmp_path, resume=True)
    message = str(info.value)
    assert "classes: ['blue', 'green', 'red'] there, ['blue', 'green', 'red', 'yellow'] here" in (
        message
    )
    assert "size mismatch" not in message and "without --resume" in message


def test_images_added_to_a_class_are_named_not_an_lr(tmp_path):
    make_color_folder(tmp_path / "train", per_class=6, seed=0)
    make_color_folder(tmp_path / "val", per_class=2, seed=1)
    with pytest.raises(AdaptInterrupted):
        adapt(tmp_path, callback=StopAfter(1))
    red = tmp_path / "train" / "red"
    for i in range(9):  # one batch more an epoch: the schedule's position would move
        shutil.copy(red / "red_0.png", red / f"more_{i}.png")
    with pytest.raises(CheckpointError) as info:
        adapt(tmp_path, resume=True)
    message = str(info.value)
    assert "images: {'train': 18, 'val': 6} there, {'train': 27, 'val': 6} here" in message
    assert "optimizer.param_groups" not in message


def test_resuming_over_the_limits_of_this_run_is_refused(data, ckpt):
    # the saved epoch must be one of this run's: a run of 1 epoch cannot resume epoch 1 of 2
    with pytest.raises(CheckpointError, match="epochs: 2 there, 1 here"):
        adapt(data, resume=True, epochs=1)
    # an overwrite flag is not a setting of the training: resuming with it is allowed
    _model, history = adapt(data, resume=True, overwrite=True)
    assert history.resumed_from == 1 and len(history) == 2


# ---------------------------------------------------------------- a full disk


class ArmAt(AdaptCallback):
    """Injects ``action`` (ENOSPC, SIGKILL) at the ``at``-th I/O event of epoch ``epoch``'s
    checkpoint."""

    def __init__(self, epoch: int, at: int | None, action: Any = enospc) -> None:
        self.epoch, self.injector = epoch, Injector(at, action)
        self._stack = contextlib.ExitStack()

    def on_epoch_start(self, epoch: int, epochs: int, batches: int) -> None:
        if epoch == self.epoch:  # training itself does no I/O: the checkpoint's is next
            self._stack.enter_context(self.injector.armed())

    def on_epoch_end(self, record: Any) -> None:
        self._stack.close()


def _whole(folder: Path, epoch: int) -> None:
    """The checkpoint in ``folder`` is whole at ``epoch``: every file it names is there."""
    state = state_of(folder)
    assert state["epoch"] == epoch
    names = sorted(["state.json", *(n for n in state["files"].values() if n)])
    assert sorted(p.name for p in folder.iterdir()) == names, "a partial or stale file is left"


def test_the_frozen_tensors_are_written_once(data):
    with pytest.raises(AdaptInterrupted):
        adapt(data, epochs=3, callback=StopAfter(2))
    folder = checkpoint_folder(NAME)
    files = state_of(folder)["files"]
    assert files["frozen"] == "frozen-1.safetensors" and files["model"] == "model-2.safetensors"
    frozen = (folder / files["frozen"]).stat().st_size
    trained = sum((folder / files[k]).stat().st_size for k in ("model", "optimizer", "best"))
    assert trained < frozen / 10  # a new epoch needs room for the head, not the backbone


def test_a_full_disk_keeps_the_last_good_checkpoint(data, tmp_path):
    with pytest.raises(AdaptInterrupted):
        adapt(data, epochs=3, callback=StopAfter(1))
    folder = checkpoint_folder(NAME)
    good = shutil.copytree(folder, tmp_path / "epoch-1")
    counting = ArmAt(2, None)
    with pytest.raises(AdaptInterrupted):  # epoch 2 of 3, stopped after its checkpoint
        adapt(data, resume=True, epochs=3, callback=_Both(counting, StopAfter(2)))
    events = [i + 1 for i, e in enumerate(counting.injector.events) if e.startswith("before ")]
    assert len(events) >= 8, counting.injector.events
    seen = counting.injector.events
    for at in events:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(good, folder)
        try:
            adapt(data, resume=True, epochs=3, callback=_Both(ArmAt(2, at), StopAfter(2)))
        except CheckpointError as exc:
            message = str(exc)
            assert "No space left on device" in message, message
            if seen[at - 1] != "before open":  # a write, not zoo's read-back of a written file
                assert "it needs " in message and "bytes are free there" in message, message
            assert "last good checkpoint (epoch 1) is kept" in message
            assert "--resume" in message
            _whole(folder, 1)
        except AdaptInterrupted:
            # only a failure to flush the folder after a file was renamed into it is ignored
            # (zoo's fsync of a directory is best effort): the checkpoint of epoch 2 is whole
            assert "after replace" in (seen[at - 2], seen[at - 4]), seen[at - 4 : at]
            _whole(folder, 2)
    # the kept checkpoint resumes
    _model, history = adapt(data, resume=True, epochs=3)
    assert history.resumed_from in (1, 2) and len(history) == 3


class _Both(AdaptCallback):
    def __init__(self, *callbacks: AdaptCallback) -> None:
        self.callbacks = callbacks

    def on_epoch_start(self, *args: Any) -> None:
        for c in self.callbacks:
            c.on_epoch_start(*args)

    def on_epoch_end(self, record: Any) -> None:
        for c in self.callbacks:
            c.on_epoch_end(record)


def _killed_while_checkpointing(data: Path, at: int) -> None:
    child_init()
    adapt(data, resume=True, epochs=3, overwrite=True, callback=ArmAt(2, at, sigkill))
    os._exit(0)  # the event was never reached


def test_a_run_killed_while_checkpointing_resumes_from_a_whole_checkpoint(data, tmp_path):
    with pytest.raises(AdaptInterrupted):
        adapt(data, epochs=3, callback=StopAfter(1))
    folder = checkpoint_folder(NAME)
    good = shutil.copytree(folder, tmp_path / "epoch-1")
    counting = ArmAt(2, None)
    with pytest.raises(AdaptInterrupted):
        adapt(data, resume=True, epochs=3, callback=_Both(counting, StopAfter(2)))
    seen = counting.injector.events
    # killed right after an operation is killed before the next one: the "before" events
    # and the last one cover every state the folder goes through
    events = [i + 1 for i, e in enumerate(seen) if e.startswith("before ")] + [len(seen)]
    kept = Counter()
    for at in events:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(good, folder)
        child = FORK.Process(target=_killed_while_checkpointing, args=(data, at))
        child.start()
        child.join(60)
        assert child.exitcode == -signal.SIGKILL, f"event {at}: exit {child.exitcode}"
        state = state_of(folder)  # whole: state.json names files that are all there
        kept[state["epoch"]] += 1
        for name in filter(None, state["files"].values()):
            read_file(folder / name)
        if at in (events[0], events[len(events) // 2], events[-1]):  # resumes, cleans up
            _model, history = adapt(data, resume=True, epochs=3, overwrite=True)
            assert history.resumed_from == state["epoch"] and len(history) == 3
            assert not folder.exists()
    assert kept[1] and kept[2], kept  # killed before and after state.json was replaced


def _resume_with_file_limit(data: Path, limit: int, conn: Any) -> None:
    child_init()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        adapt(data, resume=True, policy="full", epochs=3)
        conn.send(("done", ""))
    except BaseException as exc:
        conn.send((type(exc).__name__, str(exc)))


def test_a_file_too_large_for_the_disk_fails_in_the_library_and_keeps_the_checkpoint(data):
    with pytest.raises(AdaptInterrupted):
        adapt(data, policy="full", epochs=3, callback=StopAfter(1))
    folder = checkpoint_folder(NAME)
    size = (folder / "model-1.safetensors").stat().st_size
    parent, child = FORK.Pipe()
    process = FORK.Process(target=_resume_with_file_limit, args=(data, size // 2, child))
    process.start()
    process.join(60)
    assert process.exitcode == 0, "the child hung or died"
    kind, message = parent.recv()
    assert kind == "CheckpointError", (kind, message)
    assert "File too large" in message and "last good checkpoint (epoch 1) is kept" in message
    _whole(folder, 1)


# ---------------------------------------------------------------- auto, locks, the end


def test_a_measured_auto_resumes_without_measuring_again(data, tmp_path, monkeypatch):
    weights = zoo.save(zoo.create(BACKBONE, num_classes=3), tmp_path / "base.safetensors")
    options = {"policy": "auto", "weights": weights, "scratch": False, "early_stop": None}
    _whole_model, whole = adapt(data, name="whole", **options)
    with pytest.raises(AdaptInterrupted):
        adapt(data, callback=StopAfter(1), **options)
    assert state_of(checkpoint_folder(NAME))["auto"]["policy"] == _whole_model.zoo.plan.spec_text
    from zoo.adaptation import job

    def measure_again(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("auto measured again on resume")

    monkeypatch.setattr(job, "measure_auto", measure_again)
    # a winner that is not one of auto's candidates is refused by name
    folder = checkpoint_folder(NAME)
    kept = (folder / "state.json").read_bytes()
    state = state_of(folder)
    state["auto"]["policy"] = "zoo:lora:rank=4096"
    write_state(folder, state)
    with pytest.raises(CheckpointError, match=r"auto\.policy: 'zoo:lora:rank=4096' is not one"):
        adapt(data, resume=True, **options)
    (folder / "state.json").write_bytes(kept)
    _model, history = adapt(data, resume=True, **options)
    assert history.policy == whole.policy and history.resumed_from == 1
    assert any("resumed without measuring again" in n for n in history.notes)
    assert [e.train_loss for e in history] == [e.train_loss for e in whole]


def test_a_second_run_under_the_same_name_is_refused_at_once(data):
    folder = checkpoint_folder(NAME)
    with store.locked(str(folder.absolute())):  # what a running `zoo adapt --name ck` holds
        status, _out, err = cli(
            "adapt", BACKBONE, "--data", "/no/such/folder", "--name", NAME, "--scratch"
        )
    assert status == 1
    text = " ".join(err.split())
    assert "another zoo adapt run is saving as 'ck' right now" in text, err
    assert "choose another name" in text
    # refused before the data was looked at: the folder given does not exist
    assert "no/such/folder" not in text


def test_a_save_that_fails_at_the_end_says_the_run_is_kept(data):
    class SavedMeanwhile(AdaptCallback):
        def on_epoch_end(self, record: Any) -> None:
            if record.epoch == 2:  # another process saved under the name meanwhile
                zoo.save(zoo.create(BACKBONE, num_classes=3), NAME)

    with pytest.raises(CheckpointError) as info:
        adapt(data, callback=SavedMeanwhile())
    message = str(info.value)
    assert f"a model is already saved at {NAME!r}" in message
    assert f"kept in {checkpoint_folder(NAME)} (epoch 2 of 2)" in message
    assert "--resume" in message and "--overwrite" in message
    trained = Trained()
    _model, history = adapt(data, resume=True, overwrite=True, callback=trained)
    assert trained.epochs == [] and history.resumed_from == 2  # saved without training again
    metadata = read_file(store.model_file(NAME)).metadata
    assert json.loads(metadata["zoo.training"])["resumed_from"] == 2
    assert not checkpoint_folder(NAME).exists()
