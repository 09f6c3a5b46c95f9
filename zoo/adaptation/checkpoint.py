"""Resumable checkpoints of an adaptation run: the last completed epoch, kept until it succeeds.

A run that saves under a name (``zoo adapt`` always does) keeps, after each epoch, everything
needed to continue in ``<ZOO_HOME>/tmp/adapt-<name>/`` (:func:`zoo.io.store.checkpoint_folder`):

* ``model-<epoch>.safetensors`` — the model's state dict;
* ``optimizer-<epoch>.safetensors`` — the optimizer's tensors (``state.<index>.<key>``), the torch
  RNG states (``rng.torch``, ``rng.cuda.<i>``) and those of the training loader's generators
  (``rng.loader.<i>``);
* ``best-<epoch>.safetensors`` — with early stopping, the best validation epoch's state;
* ``state.json`` — the run's configuration, the epoch, the lr schedule's step, the history, the
  optimizer's parameter groups, the python and numpy RNG states, the early-stopping counters.

Tensors are written with safetensors and the rest as JSON (nothing is pickled). Each file is
written atomically and ``state.json``, written last, names the files of its epoch, so a run
killed while writing leaves the previous epoch's checkpoint whole. Under ``torchrun`` rank 0
writes it (every rank reads it to resume). The folder is removed when the run has saved its
model; ``zoo gc`` removes the ones left by runs that were never resumed.

``resume=True`` (``--resume``) continues from it: the same plan steps are replayed, the states are
loaded, and on one process with a fixed seed the run ends bit-identical to one never interrupted.
It is refused when the checkpoint was made with another configuration (the differences are named).
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.adaptation.early_stop import EarlyStop
from zoo.adaptation.history import EpochRecord
from zoo.errors import ZooError
from zoo.io.fileformat import atomic_write_bytes
from zoo.io.store import locked

if TYPE_CHECKING:
    import torch
    from torch import nn

    from zoo.adaptation.history import History

STATE_FILE = "state.json"
VERSION = 1


class CheckpointError(ZooError):
    """A checkpoint cannot be used to resume (missing, unreadable, or another run's)."""


class AdaptInterrupted(KeyboardInterrupt):
    """An interrupted run (Ctrl-C) whose last completed epoch is kept; the message says how
    to continue it. A ``KeyboardInterrupt``, so code that stops on one still does."""


def interrupted(folder: Path, epoch: int, epochs: int) -> AdaptInterrupted:
    return AdaptInterrupted(
        f"interrupted after epoch {epoch} of {epochs}; the run is kept in {folder}: run the "
        "same command with --resume (zoo.adapt(..., resume=True)) to continue it, or "
        "`zoo gc` to remove it"
    )


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=repr, sort_keys=True))


def _describe_input(value: Any) -> Any:
    """A data folder or starting point as its absolute path; a loader or module by type."""
    import os

    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        return os.path.abspath(text) if os.path.exists(text) else text
    dataset = getattr(value, "dataset", None)
    size = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None
    return f"<{type(value).__name__}{f' of {size} items' if size is not None else ''}>"


def run_config(
    start: Any, train: Any, val: Any, options: Mapping[str, Any], *, world_size: int
) -> dict[str, Any]:
    """The settings a resumed run must share with the interrupted one, as JSON values."""
    skip = {"callback", "resume"}
    config = {k: v for k, v in options.items() if k not in skip}
    config.update(
        start=_describe_input(start),
        train=_describe_input(train),
        val=_describe_input(val),
        world_size=world_size,
    )
    return _jsonable(config)


# ---------------------------------------------------------------- RNG states


def loader_generators(loader: Any) -> list[torch.Generator]:
    """The ``torch.Generator`` objects a data loader draws its order from (its own, its
    sampler's, its batch sampler's sampler's), each once."""
    import torch

    batch_sampler = getattr(loader, "batch_sampler", None)
    sampler = getattr(loader, "sampler", None)
    found: list[torch.Generator] = []
    for holder in (
        loader,
        sampler,
        getattr(sampler, "sampler", None),
        batch_sampler,
        getattr(batch_sampler, "sampler", None),
    ):
        generator = getattr(holder, "generator", None)
        if isinstance(generator, torch.Generator) and all(generator is not g for g in found):
            found.append(generator)
    return found


def _rng_tensors(generators: list[torch.Generator]) -> dict[str, torch.Tensor]:
    import torch

    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    for i, generator in enumerate(generators):
        tensors[f"rng.loader.{i}"] = generator.get_state()
    return tensors


def seed_python_rngs(seed: int) -> None:
    """Seed python's ``random`` (timm's augmentations draw from it) and numpy's global RNG,
    so that a run with a fixed seed is repeatable, as ``torch.manual_seed`` does for torch."""
    random.seed(seed)
    with contextlib.suppress(ImportError):
        import numpy as np

        np.random.seed(seed % 2**32)


def _rng_json() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    data: dict[str, Any] = {"python": [version, list(internal), gauss]}
    with contextlib.suppress(ImportError):
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
        data["numpy"] = [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]
    return data


def _restore_rng(tensors: Mapping[str, torch.Tensor], data: Mapping[str, Any], gens: list) -> None:
    import torch

    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    for i, generator in enumerate(gens):
        state = tensors.get(f"rng.loader.{i}")
        if state is not None:
            generator.set_state(state)
    version, internal, gauss = data["python"]
    random.setstate((version, tuple(internal), gauss))
    if "numpy" in data:
        with contextlib.suppress(ImportError):
            import numpy as np

            kind, keys, pos, has_gauss, cached = data["numpy"]
            np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


# ---------------------------------------------------------------- tensors <-> files


def _unshared(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, none sharing memory (safetensors refuses shared storage)."""
    seen: set[tuple[int, str]] = set()
    out = {}
    for key, value in state.items():
        tensor = value.detach().to("cpu").contiguous()
        ident = (tensor.untyped_storage().data_ptr(), str(tensor.device))
        if tensor.numel() and ident in seen:
            tensor = tensor.clone()
        seen.add(ident)
        out[key] = tensor
    return out


def _write_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    atomic_write_bytes(path, [save(_unshared(tensors), metadata={"format": "pt"})])


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # a truncated or foreign file
        raise CheckpointError(
            f"cannot read the checkpoint file {path}: {exc}; start the run over without --resume"
        ) from None


def _optimizer_parts(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    import torch

    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    other: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value
            else:
                other.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "other": other}


def _load_optimizer(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, Any], data: Mapping[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, values in data["other"].items():
        state.setdefault(int(index), {}).update(values)
    groups = [
        {k: tuple(v) if k == "betas" else v for k, v in group.items()}
        for group in data["param_groups"]
    ]
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(
            f"the checkpoint's optimizer state does not fit this run ({exc}); start the run "
            "over without --resume"
        ) from None


# ---------------------------------------------------------------- the checkpoint


def differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``key: saved value there, current value here`` for each setting that differs."""
    return [
        f"{key}: {saved.get(key)!r} there, {current.get(key)!r} here"
        for key in sorted(set(saved) | set(current))
        if saved.get(key) != current.get(key)
    ]


@dataclass
class Checkpointer:
    """Writes the run's checkpoint after each epoch (on the main process) and restores it.

    ``folder`` is None when the run has no name (nothing is kept); ``config`` is the JSON of
    the run's settings a resume must match; ``resume`` asks to continue from the checkpoint.
    """

    folder: Path | None
    config: dict[str, Any]
    write: bool = True
    resume: bool = False
    early: EarlyStop | None = None
    resumed_from: int | None = None
    #: The epoch of the checkpoint on disk that this run wrote or resumed (None: none yet).
    kept_epoch: int | None = None
    _state: dict[str, Any] | None = field(default=None, repr=False)

    # -------------------------------------------------- before training

    def check(self) -> None:
        """With ``resume``: read ``state.json`` and refuse another run's checkpoint."""
        if not self.resume:
            return
        if self.folder is None:
            raise CheckpointError(
                "resume=True continues the checkpoint of a run that saves under a name; "
                "pass the same name= as the interrupted run"
            )
        path = self.folder / STATE_FILE
        if not path.is_file():
            raise CheckpointError(
                f"no checkpoint to resume in {self.folder} (no interrupted run saving as "
                f"{self.config.get('name')!r}, or `zoo gc` removed it); run without --resume "
                "to start over"
            )
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            saved = state["config"]
            int(state["epoch"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(
                f"the checkpoint {path} is unreadable ({exc}); run without --resume to start over"
            ) from None
        if state.get("version") != VERSION:
            raise CheckpointError(
                f"the checkpoint {path} was written by another version of zoo; run without "
                "--resume to start over"
            )
        diff = differences(saved, self.config)
        if diff:
            raise CheckpointError(
                f"the checkpoint in {self.folder} was made by a run with other settings — "
                + "; ".join(diff)
                + ". Resume with the interrupted run's settings, or run without --resume to "
                "start over (the checkpoint is then replaced)"
            )
        self._state = state

    @property
    def saved_epoch(self) -> int:
        """The last completed epoch of the checkpoint to resume (0: not resuming)."""
        return int(self._state["epoch"]) if self._state is not None else 0

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Hold the checkpoint's lock while training, so ``zoo gc`` leaves it alone."""
        if self.folder is None or not self.write:
            yield
            return

        with locked(str(self.folder.absolute())):
            yield

    def restore(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loop: Any,
        history: History,
        generators: list[torch.Generator],
    ) -> int:
        """Load the checkpoint into the run; returns the last completed epoch (0: none).

        Call after the plan steps of the completed epochs were replayed (the optimizer then
        has the same parameter groups) and right before the next epoch starts (the RNG states
        are set last).
        """
        if self._state is None or self.folder is None:
            return 0

        state = self._state
        files = state["files"]
        model.load_state_dict(_read_tensors(self.folder / files["model"]))
        opt_tensors = _read_tensors(self.folder / files["optimizer"])
        _load_optimizer(optimizer, opt_tensors, state["optimizer"])
        loop.step = int(state["step"])
        history.epochs = [EpochRecord(**e) for e in state["history"]["epochs"]]
        if self.early is not None and state.get("early") is not None:
            self.early = EarlyStop.from_json(state["early"])
            if files.get("best"):
                self.early.best_state = _read_tensors(self.folder / files["best"])
        epoch = int(state["epoch"])
        self.resumed_from = self.kept_epoch = epoch
        history.resumed_from = epoch
        _restore_rng(opt_tensors, state["rng"], generators)
        return epoch

    # -------------------------------------------------- after each epoch

    def save(
        self,
        epoch: int,
        epochs: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loop: Any,
        history: History,
        generators: list[torch.Generator],
        *,
        new_best: bool,
    ) -> None:
        """Write the checkpoint of completed epoch ``epoch`` (main process only)."""
        if self.folder is None or not self.write:
            return
        folder = self.folder
        folder.mkdir(parents=True, exist_ok=True)
        previous = self._files_on_disk()
        files = {
            "model": f"model-{epoch}.safetensors",
            "optimizer": f"optimizer-{epoch}.safetensors",
        }
        _write_tensors(folder / files["model"], model.state_dict())
        opt_tensors, opt_data = _optimizer_parts(optimizer)
        _write_tensors(folder / files["optimizer"], {**opt_tensors, **_rng_tensors(generators)})
        best = None
        if self.early is not None and self.early.best_epoch is not None:
            best = f"best-{self.early.best_epoch}.safetensors"
            if new_best or not (folder / best).is_file():
                assert self.early.best_state is not None
                _write_tensors(folder / best, self.early.best_state)
        files["best"] = best  # type: ignore[assignment]
        state = {
            "version": VERSION,
            "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "epoch": epoch,
            "epochs": epochs,
            "step": loop.step,
            "config": self.config,
            "files": files,
            "history": {"epochs": [e.to_dict() for e in history.epochs]},
            "optimizer": opt_data,
            "rng": _rng_json(),
            "early": self.early.to_json() if self.early is not None else None,
        }

        text = json.dumps(state, allow_nan=True)
        atomic_write_bytes(folder / STATE_FILE, [text.encode("utf-8")])
        self.kept_epoch = epoch
        keep = {v for v in files.values() if v} | {STATE_FILE}
        for name in previous - keep:
            with contextlib.suppress(OSError):
                (folder / name).unlink()

    def _files_on_disk(self) -> set[str]:
        assert self.folder is not None
        try:
            return {p.name for p in self.folder.iterdir() if p.suffix == ".safetensors"}
        except OSError:
            return set()

    def remove(self) -> None:
        """Delete the checkpoint (the run succeeded)."""
        if self.folder is not None and self.write:
            shutil.rmtree(self.folder, ignore_errors=True)

    def exists(self) -> bool:
        return self.folder is not None and (self.folder / STATE_FILE).is_file()

    def interrupted(self, epochs: int) -> AdaptInterrupted | None:
        """The interrupt to raise when this run kept an epoch (None: nothing was kept)."""
        if self.folder is None or self.kept_epoch is None:
            return None
        try:  # the file is the truth: an interrupt may land between writing it and noting it
            epoch = int(json.loads((self.folder / STATE_FILE).read_text("utf-8"))["epoch"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return interrupted(self.folder, epoch, epochs)
