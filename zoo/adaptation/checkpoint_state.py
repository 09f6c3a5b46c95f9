"""The state of an adapt checkpoint is untrusted input: every value a resume uses is checked.

A checkpoint folder (:mod:`zoo.adaptation.checkpoint`) is read by the trust rule
(:mod:`zoo.io.trust`); what it holds is then checked here before any of it reaches the run:

* :func:`check_state` — ``state.json``: its fields and their types, ranges and sizes (the
  same checks as a saved model's metadata, :mod:`zoo.core.checks`); the settings the
  interrupted run was made with, compared with this run's (class names included); the file
  names (plain names of the expected pattern and epoch); the history, whose validation losses
  also give the early-stopping counters (they are derived, never read); the RNG states, tried
  on a scratch generator first.
* :func:`check_groups` — the optimizer's parameter groups: as many as this run's, each with
  the same parameters and hyperparameters (the lr: this run's initial lr at the saved step of
  its schedule). None of them is loaded: this run's own groups are kept.
* :func:`check_model_tensors`, :func:`check_finite` and :func:`check_optimizer_tensors` — the
  tensor files: the names, shapes and dtypes of the model's state, its values finite (a NaN
  weight would train on as NaN and be saved); the optimizer's state for each parameter
  (the keys its optimizer keeps, finite values of the parameter's shape, a step count no
  larger than the run's) and the RNG states of torch and of the data loaders.

The lr schedule's position is derived too (``epoch`` times the batches per epoch), so no saved value
can move it. Each refusal is a :class:`~zoo.CheckpointError` naming the field (``epoch``,
``history[2].val_loss``, ``files.model``, ``state.3.exp_avg``...) and how to start over.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.adaptation.early_stop import EarlyStop
from zoo.adaptation.history import EpochRecord
from zoo.core import checks
from zoo.errors import CheckpointError, short_repr
from zoo.io.store import CHECKPOINT_KINDS, checkpoint_file, parse_checkpoint_file

if TYPE_CHECKING:
    import torch

#: The layout of ``state.json`` and its files this zoo writes and resumes.
VERSION = 2
#: The fields of ``state.json`` (all required; ``auto`` may be null).
FIELDS = ("auto", "config", "epoch", "files", "history", "optimizer", "rng", "version", "written")
#: What each optimizer keeps per parameter once it has stepped (``step``: a scalar count).
OPTIMIZER_STATE = {"AdamW": ("exp_avg", "exp_avg_sq", "step"), "SGD": ("momentum_buffer",)}
#: Largest RNG state tensor zoo accepts (a CUDA generator's is 16 bytes, a CPU one's 5056).
MAX_RNG_BYTES = 1 << 16
#: Largest word of a Mersenne Twister state (python's and numpy's RNG).
WORD = 2**32 - 1

START_OVER = (
    "run without --resume (resume=False) to start over — the checkpoint is then replaced — "
    "or `zoo gc` to remove it"
)


class BadState(checks.Invalid):
    """A value of the checkpoint refused by one of its rules, ``"field: problem"`` (becomes a
    :class:`~zoo.CheckpointError`, as an :class:`~zoo.core.checks.Invalid` of a check does)."""

    def __init__(self, message: str) -> None:
        field, _, problem = message.partition(": ")
        super().__init__(field, "", None, problem)


def refusal(folder: Path, field: str, problem: str) -> CheckpointError:
    """The error for a checkpoint refused because of ``field``: what is wrong, and the way out."""
    return CheckpointError(
        f"the checkpoint in {folder} cannot be resumed: {field}: {problem}; {START_OVER}"
    )


@dataclass(frozen=True)
class SavedState:
    """What a checked ``state.json`` tells a resume."""

    epoch: int
    files: dict[str, str | None]
    history: list[EpochRecord]
    param_groups: list[dict[str, Any]]
    rng: dict[str, Any]
    auto: dict[str, Any] | None
    #: The early-stopping counters the history gives (None: this run does not stop early).
    early: EarlyStop | None


def differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``key: saved value there, current value here`` for each setting that differs."""
    return [
        f"{key if key in current else short_repr(key, 40)}: "
        f"{short_repr(saved.get(key), 80)} there, {short_repr(current.get(key), 80)} here"
        for key in sorted(set(saved) | set(current), key=str)
        if saved.get(key) != current.get(key)
    ]


# ---------------------------------------------------------------- state.json


def check_state(
    raw: Any, *, folder: Path, config: Mapping[str, Any], patience: int | None
) -> SavedState:
    """The checked content of ``state.json`` (``raw``, parsed by the trust rule) for a run
    with settings ``config`` and early-stopping ``patience``; raises
    :class:`~zoo.CheckpointError` naming the first field refused."""
    if not isinstance(raw, dict):
        raise refusal(folder, "state.json", f"must be a JSON object, got {type(raw).__name__}")
    if raw.get("version") != VERSION:
        raise refusal(
            folder,
            "version",
            f"{short_repr(raw.get('version'))}: written by another version of zoo (this one "
            f"resumes version {VERSION})",
        )
    unknown = sorted(set(raw) - set(FIELDS), key=str)
    missing = [name for name in FIELDS if name not in raw]
    if unknown or missing:
        field = (unknown or missing)[0]
        problem = "is not a field of a checkpoint" if unknown else "is missing"
        raise refusal(folder, short_repr(field, 40) if unknown else field, problem)
    saved_config = raw["config"]
    if not isinstance(saved_config, dict):
        raise refusal(folder, "config", "must be a JSON object of the run's settings")
    diff = differences(saved_config, config)
    if diff:
        raise CheckpointError(
            f"the checkpoint in {folder} was made by a run with other settings — "
            + "; ".join(diff[:12])
            + (f"; and {len(diff) - 12} more" if len(diff) > 12 else "")
            + ". Resume with the interrupted run's settings and data, or "
            + START_OVER
        )
    try:
        return _checked(raw, config, patience)
    except checks.Invalid as exc:
        raise refusal(folder, exc.what, exc.problem) from None


def _checked(raw: dict[str, Any], config: Mapping[str, Any], patience: int | None) -> SavedState:
    checks.text(raw["written"], "written")
    epoch = checks.integer(raw["epoch"], "epoch", 1, config["epochs"])
    history = _history(raw["history"], epoch)
    early = _early(history, patience)
    return SavedState(
        epoch=epoch,
        files=_files(raw["files"], epoch, early),
        history=history,
        param_groups=_groups(raw["optimizer"]),
        rng=_rng(raw["rng"]),
        auto=_auto(raw["auto"]),
        early=early,
    )


#: The range of each field of an epoch's record (None allowed where the value may be absent).
_RECORD: dict[str, tuple[float, float, bool, bool]] = {
    # field: (low, high, integer, may be null)
    "train_loss": (0, math.inf, False, True),
    "train_accuracy": (0, 1, False, False),
    "val_loss": (0, math.inf, False, True),
    "val_accuracy": (0, 1, False, True),
    "seconds": (0, math.inf, False, False),
    "images": (0, checks.MAX_INT, True, False),
    "images_per_second": (0, math.inf, False, False),
    "lr": (0, math.inf, False, False),
    "trainable_params": (0, checks.MAX_INT, True, False),
    "trainable_tensors": (0, checks.MAX_INT, True, False),
    "loader_seconds": (0, math.inf, False, False),
}


def _history(value: Any, epoch: int) -> list[EpochRecord]:
    """One record per completed epoch, numbered 1..epoch, every number in its range."""
    records = checks.sequence(value, "history", epoch)
    names = [f.name for f in fields(EpochRecord)]
    checked = []
    for index, record in enumerate(records):
        where = f"history[{index}]"
        checks.json_object(record, where, names)
        if record["epoch"] != index + 1 or type(record["epoch"]) is not int:
            raise BadState(f"{where}.epoch: must be {index + 1}, got {short_repr(record['epoch'])}")
        for name, (low, high, integer, nullable) in _RECORD.items():
            if not (nullable and record[name] is None):
                check = checks.integer if integer else checks.real
                check(record[name], f"{where}.{name}", low, high)
        checked.append(EpochRecord(**record))
    return checked


def _early(history: list[EpochRecord], patience: int | None) -> EarlyStop | None:
    """The early-stopping counters of ``history`` (the rule of :class:`EarlyStop`); refused
    when early stopping would have ended the run before its last epoch."""
    if patience is None:
        return None
    early = EarlyStop(patience)
    for record in history:
        if early.should_stop:
            raise BadState(
                f"history[{record.epoch - 1}]: early stopping (patience {patience}) ends the "
                f"run after epoch {record.epoch - 1}, but the history goes on"
            )
        early.count(record.epoch, record.val_loss)
    return early


def _files(value: Any, epoch: int, early: EarlyStop | None) -> dict[str, str | None]:
    """The tensor files: plain names of the expected pattern, written by the right epochs."""
    files = checks.json_object(value, "files", CHECKPOINT_KINDS)
    for kind in ("model", "optimizer"):
        if files[kind] != checkpoint_file(kind, epoch):
            raise BadState(
                f"files.{kind}: must be {checkpoint_file(kind, epoch)!r}, got "
                f"{short_repr(files[kind])}"
            )
    best_epoch = early.best_epoch if early is not None else None
    if best_epoch is None and files["best"] is not None:
        raise BadState(
            f"files.best: must be null (no early stopping, or no best epoch in the history), "
            f"got {short_repr(files['best'])}"
        )
    for kind, low, required in (("frozen", 1, False), ("best", best_epoch, True)):
        name = files[kind]
        if low is None or (name is None and not required):
            continue
        parsed = parse_checkpoint_file(name)
        if parsed is None or parsed[0] != kind or not low <= parsed[1] <= epoch:
            rule = f"'{kind}-N.safetensors' with N from {low} to {epoch}"
            raise BadState(
                f"files.{kind}: must be {rule if required else 'null or ' + rule}, got "
                f"{short_repr(name)}"
            )
    return dict(files)


def _groups(value: Any) -> list[dict[str, Any]]:
    """The optimizer's parameter groups as saved (compared with this run's in
    :func:`check_groups`)."""
    optimizer = checks.json_object(value, "optimizer", ("param_groups",))
    groups = checks.sequence(optimizer["param_groups"], "optimizer.param_groups", (1, 100_000))
    for index, group in enumerate(groups):
        if not isinstance(group, dict):
            raise BadState(f"optimizer.param_groups[{index}]: must be a JSON object")
    return groups


def _rng(value: Any) -> dict[str, Any]:
    """Python's and numpy's RNG states, each tried on a scratch generator first."""
    keys = ("numpy", "python") if isinstance(value, dict) and "numpy" in value else ("python",)
    rng = checks.json_object(value, "rng", keys)
    version, internal, gauss = checks.sequence(rng["python"], "rng.python", 3)
    checks.int_list(internal, "rng.python[1]", size=625, high=WORD)
    if gauss is not None:
        checks.real(gauss, "rng.python[2]")
    try:
        random.Random().setstate((version, tuple(internal), gauss))
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadState(f"rng.python: not a state of python's random module ({exc})") from None
    if "numpy" in rng:
        kind, keys_, pos, has_gauss, cached = checks.sequence(rng["numpy"], "rng.numpy", 5)
        checks.int_list(keys_, "rng.numpy[1]", size=624, high=WORD)
        checks.integer(pos, "rng.numpy[2]", 0, 624)
        checks.integer(has_gauss, "rng.numpy[3]", 0, 1)
        checks.real(cached, "rng.numpy[4]")
        if kind != "MT19937":
            raise BadState(f"rng.numpy[0]: must be 'MT19937', got {short_repr(kind)}")
        try:
            import numpy as np
        except ImportError:  # pragma: no cover - numpy comes with torch
            return rng
        try:
            state = (kind, np.asarray(keys_, dtype=np.uint32), pos, has_gauss, cached)
            np.random.RandomState().set_state(state)
        except (ValueError, TypeError) as exc:
            raise BadState(f"rng.numpy: not a state of numpy's random module ({exc})") from None
    return rng


def _auto(value: Any) -> dict[str, Any] | None:
    """The measured ``auto``'s winner whose refit the checkpoint holds: its policy spec, note,
    learning-rate factor (of the rate sweep) and epochs (or null)."""
    if value is None:
        return None
    auto = checks.json_object(value, "auto", ("epochs", "lr_factor", "note", "policy"))
    return {
        "note": checks.text(auto["note"], "auto.note"),
        "policy": checks.text(auto["policy"], "auto.policy"),
        "lr_factor": checks.real(auto["lr_factor"], "auto.lr_factor", 0, 1000, open_low=True),
        "epochs": checks.integer(auto["epochs"], "auto.epochs", 1, 1_000_000),
    }


# ---------------------------------------------------------------- against this run


def check_groups(saved: list[dict[str, Any]], current: list[dict[str, Any]], factor: float) -> None:
    """Refuse saved parameter groups that differ from this run's ``current`` ones (JSON form,
    before any step), the lr being this run's initial lr times the schedule's ``factor``."""
    if len(saved) != len(current):
        raise BadState(
            f"optimizer.param_groups: {len(saved)} groups, but this run's plan makes {len(current)}"
        )
    for index, (old, new) in enumerate(zip(saved, current, strict=True)):
        initial = new.get("initial_lr", new["lr"])
        expected = {**new, "initial_lr": initial, "lr": initial * factor}
        for key in sorted(set(old) | set(expected), key=str):
            if old.get(key) != expected.get(key):
                shown = key if key in expected else short_repr(key, 40)
                raise BadState(
                    f"optimizer.param_groups[{index}].{shown}: "
                    f"{short_repr(old.get(key))} in the checkpoint, but this run has "
                    f"{short_repr(expected.get(key))}"
                )


def check_model_tensors(
    tensors: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], field: str
) -> None:
    """The checkpoint's model state has this model's names, shapes and dtypes."""
    missing = [name for name in expected if name not in tensors]
    extra = [name for name in tensors if name not in expected]
    if missing or extra:
        what = (
            f"lacks {short_repr(missing[0], 80)}"
            if missing
            else f"holds the unknown tensor {short_repr(extra[0], 80)}"
        )
        raise BadState(
            f"{field}: {what} ({len(missing)} missing, {len(extra)} unknown): not a state of "
            "this run's model"
        )
    for name, tensor in tensors.items():
        want = expected[name]
        if tensor.shape != want.shape or tensor.dtype != want.dtype:
            raise BadState(
                f"{field}: tensor {short_repr(name, 80)} is {tensor.dtype} "
                f"{tuple(tensor.shape)}, this run's model has {want.dtype} {tuple(want.shape)}"
            )


def check_finite(tensors: Mapping[str, torch.Tensor], field: str) -> None:
    """Every floating-point tensor of a checkpoint's model file (model, frozen, best) holds
    finite values: a run that diverged, or a changed file, is not resumed into a NaN model."""
    import torch

    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise BadState(
                f"{field}: tensor {short_repr(name, 80)} holds NaN or infinite values (the run "
                "diverged, or the file was changed)"
            )


def check_optimizer_tensors(
    tensors: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    steps: int,
    generators: Sequence[torch.Generator],
) -> tuple[dict[int, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """``(optimizer state by parameter index, RNG tensors)`` of the optimizer file, checked:
    each name known, each parameter's state complete, of its shape and dtype, finite, no more steps
    than the run's ``steps``; the RNG states of torch's generators accepted by a scratch one."""

    params = [p for group in optimizer.param_groups for p in group["params"]]
    keys = OPTIMIZER_STATE.get(type(optimizer).__name__)
    if keys is None:  # pragma: no cover - zoo builds AdamW or SGD
        raise BadState(f"optimizer: zoo cannot resume the state of {type(optimizer).__name__}")
    state: dict[int, dict[str, torch.Tensor]] = {}
    rng: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        parts = name.split(".")
        if len(parts) == 3 and parts[0] == "state" and parts[1].isdigit() and parts[2] in keys:
            index = int(parts[1])
            if index >= len(params):
                raise BadState(f"{name}: this run's optimizer has {len(params)} parameters")
            _check_moment(name, tensor, params[index], steps)
            state.setdefault(index, {})[parts[2]] = tensor
        elif name == "rng.torch" or _indexed(name, "rng.loader.", len(generators)):
            rng[name] = _rng_tensor(name, tensor)
        elif _indexed(name, "rng.cuda.", 1024):
            rng[name] = _rng_tensor(name, tensor, trial=False)
        else:
            raise BadState(f"files.optimizer: holds the unknown tensor {short_repr(name, 80)}")
    for index, values in state.items():
        if set(values) != set(keys):
            raise BadState(
                f"state.{index}: holds {', '.join(sorted(values))}; {type(optimizer).__name__} "
                f"keeps {', '.join(keys)}"
            )
    for name in ["rng.torch", *(f"rng.loader.{i}" for i in range(len(generators)))]:
        if name not in rng:
            raise BadState(f"files.optimizer: lacks the tensor {name!r}")
    return state, rng


def _indexed(name: str, prefix: str, count: int) -> bool:
    rest = name.removeprefix(prefix)
    return rest != name and rest.isdigit() and len(rest) <= 4 and int(rest) < count


def _check_moment(name: str, tensor: torch.Tensor, param: torch.Tensor, steps: int) -> None:
    import torch

    if name.endswith(".step"):
        if tensor.ndim != 0 or not tensor.is_floating_point():
            raise BadState(
                f"{name}: must be a scalar float, got {tensor.dtype} {tuple(tensor.shape)}"
            )
        value = float(tensor)
        if not (math.isfinite(value) and 0 <= value <= steps and value == int(value)):
            raise BadState(f"{name}: must be a whole count from 0 to {steps}, got {value!r}")
        return
    if tensor.shape != param.shape or tensor.dtype != param.dtype:
        raise BadState(
            f"{name}: is {tensor.dtype} {tuple(tensor.shape)}, its parameter "
            f"{param.dtype} {tuple(param.shape)}"
        )
    if not bool(torch.isfinite(tensor).all()):
        raise BadState(f"{name}: holds NaN or infinite values")


def _rng_tensor(name: str, tensor: torch.Tensor, *, trial: bool = True) -> torch.Tensor:
    """An RNG state: bytes, of a bounded size; torch's CPU generator states are tried on a
    scratch generator (which checks them) before the run's generators are touched."""
    import torch

    if tensor.dtype != torch.uint8 or tensor.ndim != 1 or tensor.numel() > MAX_RNG_BYTES:
        raise BadState(
            f"{name}: must be a byte tensor of at most {MAX_RNG_BYTES} bytes, got "
            f"{tensor.dtype} {tuple(tensor.shape)}"
        )
    if trial:
        try:
            torch.Generator().set_state(tensor)
        except (RuntimeError, ValueError, TypeError) as exc:
            first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise BadState(f"{name}: not a state of torch's generator ({first})") from None
    return tensor
