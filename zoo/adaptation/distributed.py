"""Distributed data-parallel adaptation: process group, sharding, DDP wrapping and re-wrapping.

``zoo adapt`` (and :func:`zoo.adapt`) run unchanged under ``torchrun --nproc_per_node N``:
torchrun sets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``; zoo then joins the process group
(``gloo`` on CPU, ``nccl`` on GPU), shards the training data with a ``DistributedSampler``,
averages gradients with :class:`~torch.nn.parallel.DistributedDataParallel`, sums the loss and
accuracy counts over ranks, and only rank 0 writes the saved model.

Frozen parameters and DDP. DDP decides once, when it is constructed, which parameters it
reduces: those with ``requires_grad=True`` at that moment (its ``Reducer`` is built from them
and registers autograd hooks on exactly those). So zoo applies the plan *before* wrapping:
frozen parameters are outside the reduction and cost nothing. A schedule that unfreezes more
parameters later (``gradual``) would leave the newly trainable parameters out of the reducer if
``requires_grad`` were just flipped on the wrapped model — each rank would then step them with
its own local gradient and the replicas would silently drift apart (the failure reported for
other tools, e.g. Lightning issue 20340). zoo instead **re-wraps** at each boundary where the
set of trainable parameters changes: the old DDP wrapper is dropped (its reducer and hooks go
with it), a new ``DistributedDataParallel`` is built around the *same* module, and the *same*
optimizer gets the new parameters as a new param group. Re-wrapping broadcasts rank 0's
parameters and buffers, so every replica restarts the phase identical; optimizer state of the
already-trained parameters is kept. :class:`Replica` does this.

A failing rank stops every rank. Ranks meet in collectives; one that raises (an unreadable
image, out of memory, a bug) never joins the next one, and the others would wait in it for the
process-group timeout (30 minutes) — or, when the failing process exits, stop with gloo's
"Connection closed by peer" instead of the error. Inside :meth:`DistContext.guard` (all of
``zoo.adapt`` after joining the group, data preparation included) the failing rank writes
``rank R failed: <error>`` into the group's key-value store — which, unlike a collective, works
while the others are blocked — leaves the process group and re-raises its error once the others
have read the message. A watchdog thread on every rank polls the store every 0.2 s; a rank
learns of the failure at its next batch, or in its collective when the failing process ends,
and raises a :class:`~zoo.ZooError` with the failing rank's message. A rank still inside the
run ``FAILURE_GRACE_S`` (5 s) later is blocked in a collective that can never complete (the
failing process lives on, or NCCL, whose collectives do not notice a lost peer): its watchdog
prints the message and ends the process with status 1, as torchrun would.

Norm statistics: DDP is built without per-forward buffer broadcasts and zoo averages floating-point
buffers (BatchNorm running mean/var) over the ranks at the end of every epoch, so the replicas
agree exactly and the saved statistics describe all the data, not rank 0's shard.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from zoo.errors import ZooError
from zoo.io.broadcast import broadcast_from_first, default_store

#: How often each rank looks for another rank's failure, and how long a failing rank waits for
#: the others to read its message before it raises.
FAILURE_POLL_S = 0.2
ACK_TIMEOUT_S = 3.0
#: How long a rank may stay inside a run after another rank failed before its process ends
#: (longer than ACK_TIMEOUT_S: a rank that failed too is never ended while it waits).
FAILURE_GRACE_S = 5.0
#: Guarded runs in this process: every rank counts its runs alike, so each run's keys are its own.
_RUNS = itertools.count()


def launched_by_torchrun() -> bool:
    """Whether this process was started by torchrun (or another launcher) with WORLD_SIZE > 1."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ
    except ValueError:
        return False


def resolve_device(device: str | torch.device | None, *, local_rank: int = 0) -> torch.device:
    """``None``/``"auto"``: the local GPU (``cuda:LOCAL_RANK``) when there is one, else CPU."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ZooError(
            f"unknown device {device!r}: use cpu, cuda, cuda:N (or None for the GPU "
            "when there is one)"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ZooError(f"device {str(device)!r} asked for, but no CUDA GPU is available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    return dev


@dataclass
class DistContext:
    """Where this process stands: rank, world size, device; helpers for collective sums."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    owns_group: bool = False
    #: ``rank R failed: ...`` once another rank reported a failure (set by the watchdog).
    peer_failure: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of ``values`` over all ranks (the values themselves when alone)."""
        if not self.enabled:
            return [float(v) for v in values]
        import torch.distributed as dist

        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return [float(v) for v in tensor.tolist()]

    def max(self, value: float) -> float:
        """The largest ``value`` over all ranks."""
        if not self.enabled:
            return float(value)
        import torch.distributed as dist

        tensor = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return float(tensor.item())

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank."""
        return self.sum([1.0 if flag else 0.0])[0] > 0

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (a small object: a path, a count, a list of names),
        through the process group's store (:mod:`zoo.io.broadcast` says why)."""
        if not self.enabled:
            return obj
        return broadcast_from_first(obj, device=self.device if self.backend == "nccl" else None)

    def average_buffers(self, module: nn.Module) -> None:
        """Average floating-point buffers (BatchNorm running statistics) over the ranks.

        DDP does not broadcast buffers before each forward, so each rank's norm layers in ``train``
        mode track statistics of its own shard; averaging them at the end of every epoch keeps
        the replicas identical (what rank 0 saves is the mean over all data).
        """
        if not self.enabled:
            return
        import torch.distributed as dist

        for buffer in module.buffers():
            if buffer.is_floating_point():
                dist.all_reduce(buffer.data, op=dist.ReduceOp.SUM)
                buffer.data.div_(self.world_size)

    def check_peers(self) -> None:
        """Raise the failing rank's error when another rank failed (called at every batch)."""
        if self.peer_failure is not None:
            raise ZooError(self.peer_failure)

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Run the body so that a failure on any rank stops every rank within seconds.

        This rank's own exception is published to the other ranks, the process group is
        left (ending their pending collective), and the exception is re-raised unchanged.
        A failure published by another rank raises a :class:`~zoo.ZooError` with its message.
        """
        if not self.enabled:
            yield
            return
        channel = FailureChannel.open(self)
        try:
            yield
        except BaseException as exc:
            self._stop(exc, channel)
        finally:
            if channel is not None:
                channel.stop()

    def _stop(self, exc: BaseException, channel: FailureChannel | None) -> None:
        """Raise after ``exc``: the failing rank's error if another rank failed first, else
        ``exc`` itself once the others were told."""
        if channel is None:  # no store to talk through: leaving the group still frees them
            self.leave()
            raise exc
        peer = self.peer_failure or channel.peer_failure(wait=isinstance(exc, RuntimeError))
        if peer is not None:
            channel.acknowledge()
            if isinstance(exc, ZooError) and str(exc) == peer:
                raise exc
            raise ZooError(peer) from exc
        channel.publish(f"rank {self.rank} failed: {type(exc).__name__}: {exc}")
        self.leave()
        channel.wait_for_acks(ACK_TIMEOUT_S)
        raise exc

    def leave(self) -> None:
        """Leave the process group now (even one this context did not create): after a
        failure it is unusable, and leaving ends the other ranks' pending collectives."""
        import torch.distributed as dist

        with contextlib.suppress(Exception):
            if dist.is_initialized():
                dist.destroy_process_group()
        self.owns_group = False

    def close(self) -> None:
        """Leave the process group if this context created it."""
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False


def setup(
    distributed: bool | None = None,
    device: str | torch.device | None = None,
    *,
    timeout_s: float = 1800.0,
) -> DistContext:
    """Join (or reuse) a process group when asked or launched by torchrun.

    ``distributed=None`` means: distributed when a process group is already initialized or the
    launcher set ``WORLD_SIZE > 1``. ``True`` requires one of those. The backend is ``nccl`` on
    GPU and ``gloo`` on CPU; the device is ``cuda:LOCAL_RANK`` when GPUs exist.
    """
    import torch.distributed as dist

    initialized = dist.is_available() and dist.is_initialized()
    wanted = distributed if distributed is not None else (initialized or launched_by_torchrun())
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if not wanted:
        return DistContext(device=resolve_device(device))
    if not dist.is_available():
        raise ZooError(
            "distributed training asked for, but this torch build has no torch.distributed"
        )
    owns = False
    if not initialized:
        if not launched_by_torchrun():
            raise ZooError(
                "distributed training asked for, but no process group exists and WORLD_SIZE is "
                "not set: launch with torchrun --nproc_per_node N (or call "
                "torch.distributed.init_process_group first)"
            )
        dev = resolve_device(device, local_rank=local_rank)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
        owns = True
    backend = dist.get_backend()
    if "gloo" in str(backend):
        settle_threads_at_exit()
    if device is None and backend == "gloo":
        dev = torch.device("cpu")
    else:
        dev = resolve_device(device, local_rank=local_rank)
    return DistContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        device=dev,
        backend=str(backend),
        owns_group=owns,
    )


class FailureChannel:
    """Failure messages between the ranks of one run, through the process group's store.

    Keys (prefixed per run): ``rankR`` holds rank R's message, ``failed`` counts them, ``acks``
    counts the ranks that read one. A watchdog thread polls ``failed`` and sets
    ``ctx.peer_failure``; on NCCL it also aborts the communicator, whose pending collectives
    would not notice a peer leaving.
    """

    def __init__(self, ctx: DistContext, store: Any, prefix: str) -> None:
        self.ctx = ctx
        self.store = store
        self.prefix = prefix
        self._done = threading.Event()
        self._acked = False
        self._thread = threading.Thread(
            target=self._watch, name="zoo-failure-watchdog", daemon=True
        )

    @classmethod
    def open(cls, ctx: DistContext) -> FailureChannel | None:
        """The channel of the next guarded run, its watchdog started; None without a store."""
        store = default_store()
        if store is None:
            return None
        channel = cls(ctx, store, f"zoo/run{next(_RUNS)}/")
        channel._thread.start()
        return channel

    def _key(self, name: str) -> str:
        return self.prefix + name

    def publish(self, message: str) -> None:
        with contextlib.suppress(Exception):
            self.store.set(self._key(f"rank{self.ctx.rank}"), message)
            self.store.add(self._key("failed"), 1)

    def peer_failure(self, *, wait: bool = False) -> str | None:
        """Another rank's message, if any (``wait``: up to 1 s for one to arrive — a broken
        collective is usually the sign of a peer's failure)."""
        deadline = time.monotonic() + (1.0 if wait else 0.0)
        while True:
            found = self._read()
            if found is not None or time.monotonic() >= deadline:
                return found
            time.sleep(0.05)

    def _read(self) -> str | None:
        try:
            if self.store.add(self._key("failed"), 0) == 0:
                return None
            for rank in range(self.ctx.world_size):
                key = self._key(f"rank{rank}")
                if rank != self.ctx.rank and self.store.check([key]):
                    return self.store.get(key).decode("utf-8", "replace")
        except Exception:  # the store is gone with the rank that hosted it
            return None
        return None

    def acknowledge(self) -> None:
        """Count this rank among those that read a failure (once)."""
        if self._acked:
            return
        self._acked = True
        with contextlib.suppress(Exception):
            self.store.add(self._key("acks"), 1)

    def wait_for_acks(self, timeout: float) -> None:
        """Wait until every rank that did not fail itself has read a failure (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        with contextlib.suppress(Exception):
            while time.monotonic() < deadline:
                failed = self.store.add(self._key("failed"), 0)
                if self.store.add(self._key("acks"), 0) >= self.ctx.world_size - failed:
                    return
                time.sleep(0.05)

    def _watch(self) -> None:
        while not self._done.wait(FAILURE_POLL_S):
            message = self._read()
            if message is not None:
                self._peer_failed(message)
                return

    def _peer_failed(self, message: str) -> None:
        """Tell the main thread (it raises at its next batch or collective), acknowledge, and
        end the process if the main thread is still inside the run ``FAILURE_GRACE_S`` later:
        it is then blocked in a collective that can no longer complete."""
        self.ctx.peer_failure = message
        self.acknowledge()
        if self.ctx.backend == "nccl":
            _abort_group()
        if not self._done.wait(FAILURE_GRACE_S):
            sys.stderr.write(
                f"zoo: rank {self.ctx.rank} stops: {message} (this rank was "
                "blocked in a collective with it)\n"
            )
            sys.stderr.flush()
            os._exit(1)

    def stop(self) -> None:
        self._done.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=2 * FAILURE_POLL_S + 1)


def _abort_group() -> None:
    """Abort this rank's NCCL communicators: its collectives blocked on a lost peer return."""
    from torch.distributed import distributed_c10d

    abort: Callable[[], None] | None = getattr(distributed_c10d, "_abort_process_group", None)
    if abort is not None:
        with contextlib.suppress(Exception):
            abort()


# ---------------------------------------------------------------- FSDP2 sharding (--shard)


def end_group() -> None:
    """Leave the default process group in step, as the caller of a sharded ``zoo.adapt``
    does when done with the model it returned (the ``zoo`` command does it): a barrier, so no
    rank leaves while another's last collective is in flight, then ``destroy_process_group``.
    Nothing when no group is initialized."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


#: How long :func:`settle_threads` waits at most, and how often it looks.
SETTLE_TIMEOUT_S = 2.0
SETTLE_POLL_S = 0.005
#: Quiet looks in a row that count as settled (20 ms: a woken thread gets a CPU in that time
#: even on a loaded machine).
SETTLE_LOOKS = 4
_SETTLE_REGISTERED = False


def settle_threads(timeout_s: float = SETTLE_TIMEOUT_S) -> bool:
    """Wait until no other thread of this process is runnable, as seen :data:`SETTLE_LOOKS`
    times in a row after sleeping (so with the GIL released), or ``timeout_s``; True when they
    settled.

    Why: a gloo worker thread may still hold a finished collective's work — and with it tensors
    whose Python objects only it keeps alive — for a moment after the caller's ``wait`` returned.
    If the process is already finalizing when the thread lets go, freeing those objects takes
    the GIL, Python 3.11 ends the thread with ``pthread_exit`` inside a C++ destructor, and the
    process aborts ("terminate called without an active exception"; pytorch issue 190489, open
    in torch 2.14). A sharded model keeps its process group alive past
    ``destroy_process_group``, so the threads outlive any ending zoo or the caller can do;
    letting them finish before finalization is what is left. It is a heuristic that makes the
    abort rare, not impossible: a thread waiting for the GIL sleeps (``S``) while this one
    holds it and becomes runnable when the sleep here hands it over, so quiet looks in a row
    mostly mean the workers are parked. Reads ``/proc/self/task``; elsewhere returns True at
    once."""
    tasks = "/proc/self/task"
    if not os.path.isdir(tasks):
        return True
    me = threading.get_native_id()
    quiet = 0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(SETTLE_POLL_S)  # releases the GIL: a thread waiting for it goes on
        quiet = quiet + 1 if not _runnable_threads(tasks, me) else 0
        if quiet == SETTLE_LOOKS:
            return True
    return False


def _runnable_threads(tasks: str, me: int) -> bool:
    """Whether a thread of this process other than ``me`` is running or waiting for a CPU."""
    try:
        tids = os.listdir(tasks)
    except OSError:
        return False
    for tid in tids:
        if int(tid) == me:
            continue
        try:
            with open(f"{tasks}/{tid}/stat") as f:
                stat = f.read()
        except OSError:  # the thread ended meanwhile
            continue
        if thread_state(stat) == "R":
            return True
    return False


def thread_state(stat: str) -> str:
    """The state letter of a ``/proc/PID/task/TID/stat`` line (``R`` running or runnable,
    ``S`` sleeping, ...): the field after the name, which is in parentheses and may itself
    hold spaces and parentheses, so the last ``)`` ends it."""
    return stat.rpartition(")")[2].split()[0]


def settle_threads_at_exit() -> None:
    """Run :func:`settle_threads` when the interpreter exits, before it finalizes (``atexit``);
    once per process. zoo's distributed runs on gloo register it, so a script that trains
    through ``zoo.adapt`` under torchrun and then simply ends rarely aborts in gloo's threads."""
    global _SETTLE_REGISTERED
    if not _SETTLE_REGISTERED:
        import atexit

        atexit.register(settle_threads)
        _SETTLE_REGISTERED = True


def shard_by_depth(model: nn.Module, depths: Sequence[tuple[int, str]]) -> int:
    """Shard ``model`` with FSDP2: one ``fully_shard`` unit per depth of its parameter table
    (``(depth, owning module path)`` of each parameter), frozen and trained parameters
    together, then the root (the parameters the model holds itself). Call after the plan is
    applied and before the optimizer is built; returns the number of units."""
    from torch.distributed.fsdp import fully_shard

    units: dict[int, list[str]] = {}
    placed: set[str] = set()
    for depth, module in depths:
        if module and module not in placed:
            placed.add(module)
            units.setdefault(depth, []).append(module)
    for _depth, paths in sorted(units.items()):
        fully_shard([model.get_submodule(path) for path in paths])
    fully_shard(model)
    return len(units) + 1


def is_sharded(model: nn.Module) -> bool:
    """Whether FSDP2 shards ``model`` or a part of it."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def _full_options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each parameter of ``optimizer``, in its index order."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A sharded model's full state dict and its optimizer's tensors (``state.<index>.<key>``,
    as a checkpoint keeps them), on the CPU of rank 0 (a collective: every rank calls it;
    the other ranks get empty dicts)."""
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    state = get_model_state_dict(model, options=_full_options())
    saved = get_optimizer_state_dict(model, optimizer, options=_full_options())
    index = {name: i for i, name in enumerate(_param_names(model, optimizer))}
    tensors = {
        f"state.{index[name]}.{key}": value
        for name, values in saved.get("state", {}).items()
        for key, value in values.items()
    }
    return state, tensors


def load_full_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, torch.Tensor],
    optimizer_state: dict[int, dict[str, torch.Tensor]],
) -> None:
    """Load a full (checked) state and optimizer state by parameter index into a sharded
    model and its optimizer, on every rank."""
    from torch.distributed.checkpoint.state_dict import (
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = _full_options()
    set_model_state_dict(model, state, options=options)
    names = _param_names(model, optimizer)
    groups = optimizer.state_dict()["param_groups"]
    by_name = {names[i]: values for i, values in optimizer_state.items()}
    named_groups = [{**g, "params": [names[i] for i in g["params"]]} for g in groups]
    set_optimizer_state_dict(
        model, optimizer, {"state": by_name, "param_groups": named_groups}, options=options
    )


def trainable_names(module: nn.Module) -> tuple[str, ...]:
    return tuple(n for n, p in module.named_parameters() if p.requires_grad)


class Replica:
    """A module as trained on this rank: itself alone, or wrapped in DDP when distributed.

    :meth:`sync` (re)builds the DDP wrapper whenever the set of trainable parameters changed
    since the last wrap — call it after every change of ``requires_grad`` (a schedule step).
    ``forward`` goes through the wrapper; ``module`` is always the plain module.
    """

    def __init__(self, module: nn.Module, ctx: DistContext) -> None:
        self.module = module
        self.ctx = ctx
        self.wrapped: nn.Module = module
        self.wraps = 0
        self._wrapped_for: tuple[str, ...] | None = None
        self.sync()

    def sync(self) -> bool:
        """Re-wrap if the trainable parameters changed; True when a new wrapper was built."""
        if not self.ctx.enabled or is_sharded(self.module):  # FSDP2 reduces the gradients
            return False
        names = trainable_names(self.module)
        if names == self._wrapped_for:
            return False
        from torch.nn.parallel import DistributedDataParallel as DDP

        # Drop the old wrapper first: its reducer holds autograd hooks on the parameters it
        # was built for, and must not see the next backward pass.
        self.wrapped = self.module
        self._wrapped_for = names
        if not names:
            return False
        device_ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
        self.wrapped = DDP(self.module, device_ids=device_ids, **_no_buffer_sync())
        self.wraps += 1
        return True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.wrapped(*args, **kwargs)


def _no_buffer_sync() -> dict[str, bool]:
    """DDP's option for not broadcasting buffers before every forward (zoo averages them per
    epoch instead): ``forward_sync_buffers=False`` on newer torch, ``broadcast_buffers``
    before. Both still sync once when the wrapper is built."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel as DDP

    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


class ShardSampler(torch.utils.data.Sampler):
    """Indices ``rank, rank + world, …``: every sample exactly once over all ranks (no padding).

    For evaluation, where DistributedSampler's padding would count some images twice.
    """

    def __init__(self, size: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, size, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
