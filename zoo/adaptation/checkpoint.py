"""Resumable checkpoints of an adaptation run: the last completed epoch, kept until it succeeds.

A run that saves under a name (``zoo adapt`` always does) keeps, after each epoch, everything
needed to continue in ``<ZOO_HOME>/tmp/adapt-<name>/`` (:func:`zoo.io.store.checkpoint_folder`),
in files named ``<kind>-<E>.safetensors`` after the epoch ``E`` whose checkpoint wrote them:

* ``model-E`` — the model's state, but for the ``frozen`` tensors;
* ``frozen-E`` — the parameters that do not train, written again only when they (or which ones
  are frozen) change: a plan that freezes most of a backbone writes it once;
* ``optimizer-E`` — the optimizer's tensors (``state.<index>.<key>``), the torch RNG states
  (``rng.torch``, ``rng.cuda.<i>``) and those of the training loader's generators
  (``rng.loader.<i>``);
* ``best-E`` — with early stopping, the best validation epoch's state (without the frozen
  tensors when they are those of ``frozen``);
* ``state.json`` — the epoch, the run's configuration (class names and the images of each
  split included), the file names, the history, the optimizer's parameter groups, the python
  and numpy RNG states, the measured ``auto``'s winner.

Tensors are written by zoo's writer, sealed, and read back by zoo's reader (nothing is
pickled); each file is written atomically and ``state.json``, written last, names the files of
its epoch, so a run killed or out of disk space while writing keeps the previous checkpoint
whole. Only then are the previous epoch's files deleted, by name: a checkpoint needs room for
the previous one plus what changed (the trained part, not the frozen one). A full disk stops
the run with a :class:`~zoo.CheckpointError` saying how much room the checkpoint needed.

The folder is zoo's own (:meth:`Checkpointer.holding`): a link or a file where it should be is
refused before the run starts, and a second run saving under the same name is refused at
once. Under ``torchrun`` rank 0 writes it (every rank reads it to resume). Once the run has
saved its model its files are deleted; ``zoo gc`` deletes those of runs never resumed.

``resume=True`` (``--resume``) continues from it: the same plan steps are replayed, the
checkpoint is checked as the untrusted input it is (:mod:`zoo.adaptation.checkpoint_state`),
the states are loaded, and on one process with a fixed seed the run ends bit-identical to one
never interrupted. A checkpoint made with other settings or data is refused (the differences
are named), and so is any value a resume would use that this run does not have.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.adaptation.checkpoint_state import (
    START_OVER,
    VERSION,
    BadState,
    SavedState,
    check_finite,
    check_groups,
    check_model_tensors,
    check_optimizer_tensors,
    check_state,
    refusal,
)
from zoo.adaptation.distributed import is_sharded, load_full_state
from zoo.adaptation.early_stop import EarlyStop
from zoo.core import checks
from zoo.errors import CheckpointError, ModelNotFoundError, ZooError
from zoo.io.fileformat import (
    atomic_write_bytes,
    hash_tensors,
    seal,
    write_error,
    write_tensors,
    written_size,
)
from zoo.io.store import (
    CHECKPOINT_STATE,
    MAX_CHECKPOINT_STATE_BYTES,
    checkpoint_file,
    locked,
    remove_checkpoint,
)
from zoo.io.trust import (
    check_folder,
    own_folder,
    read_bytes_in,
    read_header_in,
    read_json_in,
    read_tensors_in,
    remove_written,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from zoo.adaptation.history import History

__all__ = ["AdaptInterrupted", "CheckpointError", "Checkpointer", "interrupted", "run_config"]

STATE_FILE = CHECKPOINT_STATE


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
    """``value`` as JSON data (tuples as lists, other objects as their repr, a NaN or an
    infinity as the string ``"NaN"``/``"Infinity"``: every number in ``state.json`` is finite)."""
    return json.loads(json.dumps(value, default=repr, sort_keys=True), parse_constant=str)


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


#: The options a resumed run may set otherwise than the interrupted one: how the model is
#: saved (``overwrite``), and how fast it trains without changing what it computes beyond
#: rounding (loader workers, memory layout, compile, gradient checkpointing). ``precision``
#: and ``accumulate`` change the arithmetic and the optimizer steps: they must be the same.
MAY_DIFFER = (
    "overwrite",
    "num_workers",
    "channels_last",
    "compile",
    "compile_fallback",
    "grad_checkpointing",
)


def run_config(
    start: Any,
    train: Any,
    val: Any,
    options: Mapping[str, Any],
    *,
    classes: list[str],
    images: dict[str, int] | None,
    world_size: int,
) -> dict[str, Any]:
    """The settings a resumed run must share with the interrupted one, as JSON values: the
    options that change how it trains (not ``overwrite``, which only says how it is saved),
    the inputs, the class names the data gave (a class folder added changes the head) and
    the images of each split of folders (an image added or removed changes the epochs).
    :data:`MAY_DIFFER` lists the options a resume may change."""
    skip = {"callback", "resume", *MAY_DIFFER}
    config = {k: v for k, v in options.items() if k not in skip}
    config.update(
        start=_describe_input(start),
        train=_describe_input(train),
        val=_describe_input(val),
        classes=list(classes),
        images=images,
        world_size=world_size,
    )
    return _jsonable(config)


def _optimizer_steps(epoch: int, loop: Any) -> int:
    """The optimizer steps of ``loop`` (a :class:`~zoo.adaptation.training.Trainee`) after
    ``epoch`` completed epochs: those of LP-FT's probe stage were another optimizer's."""
    return (epoch - loop.probe_epochs) * loop.steps_per_epoch


# ---------------------------------------------------------------- RNG states


def loader_generators(loader: Any) -> list[torch.Generator]:
    """The ``torch.Generator`` objects a data loader draws its order and its augmentation
    from — its sampler's, its sampler's sampler's, its batch sampler's sampler's (a loader made
    with ``shuffle=True, generator=g`` has ``g`` there) — each once. The loader's own generator
    is not one of them: it seeds the worker processes, whose persistent workers draw it once
    per loader, not once per epoch (zoo's loaders give it a generator of its own)."""
    import torch

    batch_sampler = getattr(loader, "batch_sampler", None)
    sampler = getattr(loader, "sampler", None)
    found: list[torch.Generator] = []
    for holder in (
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


def seed_rngs(seed: int) -> None:
    """Seed torch's generator, python's ``random`` (timm's augmentations draw from it) and
    numpy's global RNG, as at the start of a run, so that a run with a fixed seed is
    repeatable."""
    import torch

    torch.manual_seed(seed)
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
    """Set the RNG states (checked by :func:`check_optimizer_tensors` and :func:`check_state`)."""
    import torch

    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[f"rng.cuda.{i}"] for i in range(len(tensors)) if f"rng.cuda.{i}" in tensors]
    if cuda and torch.cuda.is_available():
        try:
            for i, state in enumerate(cuda[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(state, i)
        except RuntimeError as exc:
            raise BadState(f"rng.cuda: not a state of this GPU's generator ({exc})") from None
    for i, generator in enumerate(gens):
        generator.set_state(tensors[f"rng.loader.{i}"])
    version, internal, gauss = data["python"]
    random.setstate((version, tuple(internal), gauss))
    if "numpy" in data:
        with contextlib.suppress(ImportError):
            import numpy as np

            kind, keys, pos, has_gauss, cached = data["numpy"]
            np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


# ---------------------------------------------------------------- tensors <-> files


def _on_cpu(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors on the CPU (moved once, then hashed and written from there)."""
    return {key: value.detach().to("cpu") for key, value in state.items()}


def _optimizer_parts(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """The optimizer's tensors (``state.<index>.<key>``) and its parameter groups as JSON."""
    import torch

    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if not isinstance(value, torch.Tensor):  # not kept by AdamW and SGD today
                raise CheckpointError(
                    f"the optimizer keeps {key!r} as a {type(value).__name__}, which a "
                    "checkpoint cannot hold; run without a name, or report this with the "
                    "torch version"
                )
            tensors[f"state.{index}.{key}"] = value
    return tensors, _jsonable(state["param_groups"])


# ---------------------------------------------------------------- the checkpoint


@dataclass
class Checkpointer:
    """Writes the run's checkpoint after each epoch (on the main process) and restores it.

    ``folder`` is None when the run has no name (nothing is kept); ``config`` is the JSON of
    the run's settings a resume must match; ``resume`` asks to continue from the checkpoint;
    ``auto`` is the measured ``auto``'s winner being refit (``{"policy", "note", "lr_factor",
    "epochs"}``), kept with each epoch.
    """

    folder: Path | None
    config: dict[str, Any]
    write: bool = True
    resume: bool = False
    early: EarlyStop | None = None
    resumed_from: int | None = None
    #: The epoch of the checkpoint on disk that this run wrote or resumed (None: none yet).
    kept_epoch: int | None = None
    auto: dict[str, Any] | None = None
    _saved: SavedState | None = field(default=None, repr=False)
    #: The files of the checkpoint on disk (kind -> name) and the hash of the frozen one's.
    _files: dict[str, str | None] = field(default_factory=dict, repr=False)
    _frozen_hash: str | None = field(default=None, repr=False)

    # -------------------------------------------------- before training

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Own the checkpoint for the whole run (training and saving).

        The writing process takes the checkpoint's lock without waiting — another run saving
        under the same name holds it, and this one is refused at once (``zoo gc`` also leaves
        a held checkpoint alone) — and makes sure ``tmp/`` and ``tmp/adapt-<name>`` are real
        folders (a link or a file there is refused before any work: zoo writes through no
        link and deletes nothing it did not write). An empty folder is removed at the end.
        """
        if self.folder is None or not self.write:
            yield
            return
        with locked(str(self.folder.absolute()), blocking=False) as held:
            if held is None:
                raise CheckpointError(
                    f"another zoo adapt run is saving as {self.config.get('name')!r} right now "
                    f"(it holds the checkpoint {self.folder}); wait for it to finish, stop it, "
                    "or choose another name (--name, name=)"
                )
            self._own()
            try:
                yield
            finally:
                remove_written(self.folder, [])  # the folder only, when nothing is in it

    def _own(self, *, create: bool = True) -> Path:
        """The checkpoint folder, made (``create``) or checked to be a real folder, as is
        ``tmp/``: a link or a file there is refused, never written through or over."""
        assert self.folder is not None
        try:
            if create:
                return own_folder(self.folder, what="the checkpoint folder")
            for path in (self.folder.parent, self.folder):
                check_folder(path, what="the checkpoint folder")
            return self.folder
        except ZooError as exc:
            raise CheckpointError(f"cannot keep this run's checkpoint: {exc}") from None

    def check(self) -> None:
        """With ``resume``: read ``state.json`` (by the trust rule, at most
        :data:`~zoo.io.store.MAX_CHECKPOINT_STATE_BYTES`) and check it against this run."""
        if not self.resume:
            return
        if self.folder is None:
            raise CheckpointError(
                "resume=True continues the checkpoint of a run that saves under a name; "
                "pass the same name= as the interrupted run"
            )
        nothing = CheckpointError(
            f"no checkpoint to resume in {self.folder} (no interrupted run saving as "
            f"{self.config.get('name')!r}, or `zoo gc` removed it); run without --resume "
            "to start over"
        )
        try:
            check_folder(self.folder, what="the checkpoint folder")
            data = read_bytes_in(
                self.folder,
                STATE_FILE,
                max_bytes=MAX_CHECKPOINT_STATE_BYTES,
                what="the checkpoint's state.json",
            )
        except ModelNotFoundError:
            raise nothing from None
        except ZooError as exc:
            raise CheckpointError(f"{exc}; {START_OVER}") from None
        try:  # parsed here, so that a refusal names the field (auto.note), as check_state does
            raw = checks.loads(data.decode("utf-8"), STATE_FILE)
        except UnicodeDecodeError:
            raise self.refuse(STATE_FILE, "is not UTF-8 text") from None
        except checks.Invalid as exc:
            raise self.refuse(exc.what, exc.problem) from None
        patience = self.early.patience if self.early is not None else None
        self._saved = check_state(raw, folder=self.folder, config=self.config, patience=patience)

    @property
    def saved_epoch(self) -> int:
        """The last completed epoch of the checkpoint to resume (0: not resuming)."""
        return self._saved.epoch if self._saved is not None else 0

    def saved_auto(self, *, measures: bool) -> dict[str, Any] | None:
        """The measured ``auto``'s winner kept by the checkpoint being resumed (None when not
        resuming); refused when it disagrees with whether this run's ``auto`` measures."""
        if self._saved is None:
            return None
        auto = self._saved.auto
        if (auto is not None) != measures:
            problem = (
                "this run measures auto and refits its winner, but the checkpoint holds no "
                "measured winner"
                if measures
                else "the checkpoint holds a measured auto winner to refit, but this run does "
                "not refit one"
            )
            raise self.refuse("auto", problem)
        return auto

    def refuse(self, field: str, problem: str) -> CheckpointError:
        """The error for a checkpoint value refused by the run (see :func:`refusal`)."""
        return refusal(self.folder or Path("."), field, problem)

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
        are set last). Everything is checked before anything is loaded.
        """
        saved = self._saved
        if saved is None or self.folder is None:
            return 0
        try:
            loaded = self._checked_tensors(saved, model, optimizer, loop, generators)
            state, best, opt_state, rng, frozen_hash = loaded
            if is_sharded(model):
                load_full_state(model, optimizer, state, opt_state)
            else:
                model.load_state_dict(state)
                groups = optimizer.state_dict()["param_groups"]  # this run's (the saved equal)
                optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
            loop.step = _optimizer_steps(saved.epoch, loop)
            history.epochs = list(saved.history)
            if self.early is not None:
                assert saved.early is not None
                self.early = saved.early
                self.early.best_state = best
            _restore_rng(rng, saved.rng, generators)
        except BadState as exc:
            raise self.refuse(exc.what, exc.problem) from None
        self._files, self._frozen_hash = dict(saved.files), frozen_hash
        self.resumed_from = self.kept_epoch = saved.epoch
        history.resumed_from = saved.epoch
        return saved.epoch

    def _checked_tensors(
        self,
        saved: SavedState,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loop: Any,
        generators: list[torch.Generator],
    ) -> tuple[dict, dict | None, dict, dict, str | None]:
        """The checkpoint's tensors, read by zoo's reader and checked against this run:
        ``(model state, best state, optimizer state, RNG tensors, hash of the frozen file)``."""
        expected = model.state_dict()
        size = sum(t.numel() * t.element_size() for t in expected.values())
        limits = {"model": size, "frozen": size, "best": size, "optimizer": 3 * size + 2**20}
        for kind, name in saved.files.items():
            if name:  # no file is read whole before its header says it fits this run
                self._check_size(kind, name, limits[kind])
        frozen, frozen_hash = self._read(saved, "frozen") if saved.files["frozen"] else ({}, None)
        trained, _ = self._read(saved, "model")
        both = sorted(set(frozen) & set(trained))
        if both:
            raise BadState(f"files.model: holds {both[0]!r}, which the frozen file holds too")
        state = {**frozen, **trained}
        check_model_tensors(state, expected, "files.model")
        best = None
        if saved.files["best"]:
            best = {**frozen, **self._read(saved, "best")[0]}
            check_model_tensors(best, expected, "files.best")
        steps = _optimizer_steps(saved.epoch, loop)
        groups = _jsonable(optimizer.state_dict()["param_groups"])
        check_groups(saved.param_groups, groups, loop.lr_factor(steps - 1))
        opt_tensors, _ = self._read(saved, "optimizer")
        opt_state, rng = check_optimizer_tensors(opt_tensors, optimizer, steps, generators)
        return state, best, opt_state, rng, frozen_hash

    def _check_size(self, kind: str, name: str, limit: int) -> None:
        """Refuse a tensor file whose header gives more bytes of tensors than a checkpoint of
        this run's model has (``limit``), before its tensors are read."""
        assert self.folder is not None
        try:
            header = read_header_in(self.folder, name, what="the checkpoint")
        except ZooError as exc:
            raise BadState(f"files.{kind}: {exc}") from None
        if header.data_len > limit:
            raise BadState(
                f"files.{kind}: {name} holds {header.data_len:,} bytes of tensors, more than "
                f"a checkpoint of this run's model has ({limit:,}); not read"
            )

    def _read(self, saved: SavedState, kind: str) -> tuple[dict[str, Any], str | None]:
        """The tensors of the checkpoint file of ``kind`` and their hash: read by zoo's reader
        (a regular file in the folder, never a link; header limits, memory check) and sealed
        by zoo (the seal is verified: a changed or truncated file is refused); a model's
        tensors hold finite values."""
        assert self.folder is not None
        name = saved.files[kind]
        assert name is not None
        try:
            read = read_tensors_in(self.folder, name, what="the checkpoint")
        except ZooError as exc:
            raise BadState(f"files.{kind}: {exc}") from None
        if not read.verified:
            raise BadState(f"files.{kind}: {name} is not sealed by zoo (not a file zoo wrote)")
        if kind != "optimizer":  # its moments are checked with their parameters
            check_finite(read.tensors, f"files.{kind}")
        return read.tensors, read.tensors_sha256

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
        full: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None,
    ) -> None:
        """Write the checkpoint of completed epoch ``epoch`` (main process only): the new
        files, then ``state.json`` naming them, then the previous epoch's files go. ``full``:
        the model's state and the optimizer's tensors gathered from a sharded model
        (:func:`~zoo.adaptation.distributed.full_state`)."""
        if self.folder is None or not self.write:
            return
        folder = self._own(create=False)  # a link or file put there meanwhile is refused
        state = _on_cpu(full[0] if full is not None else model.state_dict())
        frozen_names = {
            n for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad
        }
        frozen = {n: t for n, t in state.items() if n in frozen_names}
        frozen_hash = hash_tensors(frozen) if frozen else None
        files = {
            "model": checkpoint_file("model", epoch),
            "optimizer": checkpoint_file("optimizer", epoch),
            "frozen": self._files.get("frozen") if frozen_hash == self._frozen_hash else None,
            "best": self._files.get("best"),
        }
        writes: dict[str, dict[str, torch.Tensor]] = {}
        if frozen and files["frozen"] is None:
            files["frozen"] = checkpoint_file("frozen", epoch)
            writes[files["frozen"]] = frozen
        writes[files["model"]] = {n: t for n, t in state.items() if n not in frozen}
        opt_tensors, groups = _optimizer_parts(optimizer)
        if full is not None:  # the sharded optimizer's tensors are its shards: the gathered
            opt_tensors = full[1]
        writes[files["optimizer"]] = _on_cpu({**opt_tensors, **_rng_tensors(generators)})
        early = self.early
        if early is None or early.best_state is None:
            files["best"] = None
        elif new_best or files["best"] is None or files["frozen"] != self._files.get("frozen"):
            files["best"] = checkpoint_file("best", epoch)
            writes[files["best"]] = self._best_part(early.best_state, frozen, frozen_hash)
        record = {
            "version": VERSION,
            "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "epoch": epoch,
            "config": self.config,
            "files": files,
            "history": [e.to_dict() for e in history.epochs],
            "optimizer": {"param_groups": groups},
            "rng": _rng_json(),
            "auto": self.auto,
        }
        text = json.dumps(record, allow_nan=False).encode("utf-8")
        self._write(folder, epoch, epochs, writes, text)
        self._files, self._frozen_hash, self.kept_epoch = files, frozen_hash, epoch
        keep = [STATE_FILE, *(name for name in files.values() if name)]
        remove_checkpoint(folder, keep)  # the previous epoch's files, by name

    @staticmethod
    def _best_part(
        best: Mapping[str, torch.Tensor], frozen: Mapping[str, torch.Tensor], frozen_hash: Any
    ) -> dict[str, torch.Tensor]:
        """The best epoch's state to write: without the frozen tensors when they are those of
        the frozen file (its restore takes them from there), else whole."""
        best = _on_cpu(best)
        if frozen and hash_tensors({n: best[n] for n in frozen if n in best}) == frozen_hash:
            return {n: t for n, t in best.items() if n not in frozen}
        return best

    def _write(
        self,
        folder: Path,
        epoch: int,
        epochs: int,
        writes: Mapping[str, Mapping[str, torch.Tensor]],
        text: bytes,
    ) -> None:
        """Write the tensor files (sealed), then ``state.json``. On any failure the files
        written so far are deleted and the previous checkpoint stays whole; a failed write (a
        full disk) raises :class:`~zoo.CheckpointError` saying what it needed."""
        sealed = {name: seal(tensors, {"format": "pt"}) for name, tensors in writes.items()}
        needed = len(text) + sum(written_size(writes[n], md) for n, md in sealed.items())
        written: list[str] = []
        try:
            for name, tensors in writes.items():
                written.append(name)
                write_tensors(folder / name, tensors, sealed[name])
            atomic_write_bytes(folder / STATE_FILE, [text])
        except BaseException as exc:
            if self._published_epoch() == epoch:  # interrupted after state.json was replaced
                raise
            remove_written(folder, written)
            if isinstance(exc, (OSError, ZooError)):
                raise self._not_written(exc, epoch, epochs, needed) from None
            raise

    def _not_written(
        self, exc: BaseException, epoch: int, epochs: int, needed: int
    ) -> CheckpointError:
        """What a failed write of epoch ``epoch``'s checkpoint says: why, what it needed and
        what is free (:func:`~zoo.io.fileformat.write_error`), and what is kept."""
        assert self.folder is not None
        what = f"the checkpoint of epoch {epoch} of {epochs}"
        kept = (
            f"the run stopped, and its last good checkpoint (epoch {self.kept_epoch}) is kept "
            "whole: run the same command with --resume to continue from it"
            if self.kept_epoch is not None
            else "the run stopped before any epoch was kept"
        )
        if isinstance(exc, OSError):
            error = write_error(exc, self.folder, what=what, needed=needed, kept=kept)
            return CheckpointError(str(error))
        return CheckpointError(f"cannot write {what} to {self.folder}: {exc}; {kept}")

    def _published_epoch(self) -> int | None:
        """The epoch ``state.json`` on disk names (None: none, or unreadable)."""
        if self.folder is None:
            return None
        try:
            raw = read_json_in(
                self.folder,
                STATE_FILE,
                max_bytes=MAX_CHECKPOINT_STATE_BYTES,
                what="the checkpoint's state.json",
            )
        except ZooError:
            return None
        epoch = raw.get("epoch") if isinstance(raw, dict) else None
        return epoch if type(epoch) is int else None

    def remove(self) -> None:
        """Delete the checkpoint (the run saved its model): the files zoo writes, by name."""
        if self.folder is not None and self.write:
            remove_checkpoint(self.folder)

    def interrupted(self, epochs: int) -> AdaptInterrupted | None:
        """The interrupt to raise when this run kept an epoch (None: nothing was kept)."""
        if self.folder is None or self.kept_epoch is None:
            return None
        # the file is the truth: an interrupt may land between writing it and noting it
        epoch = self._published_epoch()
        return interrupted(self.folder, epoch, epochs) if epoch is not None else None

    def not_saved(self, exc: ZooError, epochs: int) -> CheckpointError | None:
        """The error to raise when the trained model could not be saved but its checkpoint is
        kept (None: nothing kept): ``exc`` and how to save it without training again."""
        epoch = self._published_epoch() if self.kept_epoch is not None else None
        if epoch is None:
            return None
        return CheckpointError(
            f"{exc} — the trained run is kept in {self.folder} (epoch {epoch} of {epochs}): "
            "run the same command with --resume to save it without training again (add "
            "--overwrite to replace what is saved under that name now), or `zoo gc` to "
            "remove it"
        )
