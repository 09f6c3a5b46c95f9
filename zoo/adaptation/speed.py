"""How fast a run trains on its hardware: precision, memory layout, kernels, compile, workers.

The switches of :class:`~zoo.adaptation.config.TrainConfig` that change the speed of a run but
not what it computes (beyond rounding) are decided here, once per run, by :meth:`Speed.of`;
the engine (:class:`~zoo.adaptation.training.Trainee`), the activation cache's extraction and
the loader builders call a few hook points:

* :meth:`Speed.prepare` — the model once: channels_last memory format for a convolutional
  model (on a GPU by default), timm's gradient checkpointing when asked, cuDNN autotuning and
  TF32 matmuls on a GPU;
* :meth:`Speed.autocast` — around every forward pass: bf16 or fp16 autocast (the parameters,
  their gradients and the optimizer state stay fp32; the saved model is fp32);
* :meth:`Speed.inputs` — each batch onto the device (``non_blocking``: from pinned memory on
  a GPU), in fp32 and in the model's memory format;
* :meth:`Speed.backward` and :meth:`Speed.step` — fp16's gradient scaler;
* :class:`Compiled` — ``torch.compile`` of the module that runs, with a clear error (or, when
  asked, eager) where it cannot compile;
* :func:`loader_workers` and :func:`pin_memory` — the loaders' worker processes and pinned
  memory.

The branches that only run on a CUDA GPU (bf16/fp16 autocast there, the scaler on CUDA, cuDNN
and TF32 settings, pinned memory) follow torch's documented API; they were not run on a GPU
when written (no GPU was available) — docs/adapt.md says so.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from zoo.core.record import unwrap
from zoo.errors import ZooError

if TYPE_CHECKING:
    from zoo.adaptation.config import TrainConfig

__all__ = ["Compiled", "Speed", "loader_workers", "pin_memory"]

#: Most loader worker processes ``num_workers=None`` starts.
MAX_AUTO_WORKERS = 8
#: ``num_workers=None`` starts workers only for a split of at least this many batches: on
#: fewer, starting the processes costs about as much as they save.
MIN_BATCHES_FOR_WORKERS = 8
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_HALF = (torch.bfloat16, torch.float16)


def loader_workers(asked: int | None, images: int, batch_size: int) -> int:
    """The loader's worker processes: ``asked``, or for ``None`` about the cores this process
    may use (at most :data:`MAX_AUTO_WORKERS`), and 0 for a split of fewer than
    :data:`MIN_BATCHES_FOR_WORKERS` batches."""
    if asked is not None:
        return asked
    if images < MIN_BATCHES_FOR_WORKERS * batch_size:
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_AUTO_WORKERS, cores))


def pin_memory(device: torch.device) -> bool:
    """Whether loaders pin their batches: on a GPU (the copy then overlaps the compute)."""
    return device.type == "cuda"


def resolve_precision(asked: str, device: torch.device) -> str:
    """``fp32``, ``bf16`` or ``fp16`` for ``asked`` on ``device``; ``auto`` is bf16 on a GPU that
    supports it, fp16 on an older GPU, fp32 elsewhere. A low precision the device cannot run
    is a :class:`~zoo.ZooError`."""
    if asked == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if asked == "fp32":
        return asked
    if not torch.amp.is_autocast_available(device.type):
        raise ZooError(
            f"precision {asked!r} asked for, but torch has no autocast on {device.type!r}: "
            "use precision='fp32' (--precision fp32) there"
        )
    if asked == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ZooError(
            "precision 'bf16' asked for, but this GPU has no bf16 support: use 'fp16' (with a "
            "gradient scaler) or 'auto'"
        )
    return asked


def has_convolutions(model: nn.Module) -> bool:
    """Whether ``model`` runs 2-d convolutions (channels_last speeds those up)."""
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


class Speed:
    """The speed settings of one run on ``device`` (see the module docstring)."""

    def __init__(
        self,
        device: torch.device,
        *,
        precision: str = "fp32",
        channels_last: bool | str = "auto",
        grad_checkpointing: bool = False,
        exact_fp32: bool = False,
    ) -> None:
        self.device = device
        self.precision = precision
        self.channels_last_asked = channels_last
        self.grad_checkpointing = grad_checkpointing
        #: fp32 asked for by name: no TF32 matmuls on a GPU either
        self.exact_fp32 = exact_fp32
        #: whether :meth:`prepare` put the model in channels_last (inputs follow it)
        self.channels_last = False
        self.scaler: Any = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    @classmethod
    def of(cls, config: TrainConfig, device: torch.device) -> Speed:
        """The settings ``config`` asks for, resolved on ``device``."""
        return cls(
            device,
            precision=resolve_precision(config.precision, device),
            channels_last=config.channels_last,
            grad_checkpointing=config.grad_checkpointing,
            exact_fp32=config.precision == "fp32",
        )

    @staticmethod
    def check(config: TrainConfig, device: torch.device, *, distributed: bool) -> None:
        """Refuse, before any work, what ``device`` cannot run (the precision, the compile
        backend) and sharding outside a distributed run."""
        resolve_precision(config.precision, device)
        if config.shard and not distributed:
            raise ZooError(
                "shard=True (--shard) shards the model over the processes of a distributed "
                "run: launch with torchrun --nproc_per_node N (or inside a process group)"
            )
        if config.compile is not False:
            _check_backend(_backend(config.compile))

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype (None: fp32)."""
        return _DTYPES.get(self.precision)

    def wants_channels_last(self, model: nn.Module) -> bool:
        """channels_last for ``model``: asked for, or ``auto`` on a GPU, and convolutions in it.

        ``auto`` stays off on a CPU: ``benchmarks/train_throughput.py`` measured resnet18
        training faster with it in 5 of 6 comparisons on this project's shared 2-core CPU, but
        on one model only and under a heavy, varying load (docs/adapt.md, Speed, gives the
        figures); ``True`` turns it on there."""
        asked = self.channels_last_asked
        wanted = asked is True or (asked == "auto" and self.device.type == "cuda")
        return wanted and has_convolutions(model)

    def prepare(self, model: nn.Module) -> None:
        """Set ``model`` (on its device) up for the run: memory format, gradient checkpointing,
        the GPU's kernel settings. Idempotent."""
        self.channels_last = self.wants_channels_last(model)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.grad_checkpointing:
            set_grad_checkpointing(model)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            tf32 = not self.exact_fp32
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast to the run's low precision (nothing for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def inputs(self, batch: torch.Tensor) -> torch.Tensor:
        """A batch of images or cached activations on the device, as the model takes it: fp32
        (the cache may keep activations in 16 bits), channels_last when the model is."""
        x = batch.to(self.device, non_blocking=True)
        if x.dtype in _HALF:
            x = x.float()
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, scaled for fp16."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()``; with fp16's scaler, skipped when a gradient overflowed."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()


def set_grad_checkpointing(model: nn.Module) -> None:
    """timm's ``set_grad_checkpointing(True)`` on ``model``; a model without it is refused."""
    inner = unwrap(model)
    setter = getattr(inner, "set_grad_checkpointing", None)
    if not callable(setter):
        raise ZooError(
            f"grad_checkpointing asked for, but {type(inner).__name__} has no "
            "set_grad_checkpointing() (timm's models have it): train without it "
            "(--grad-checkpointing off), with a smaller batch, or with a policy that trains less"
        )
    try:
        setter(True)
    except (NotImplementedError, AssertionError) as exc:  # timm: "not supported" for some
        raise ZooError(
            f"grad_checkpointing asked for, but {type(inner).__name__} does not support it "
            f"({exc or type(exc).__name__}): train without --grad-checkpointing"
        ) from None


# ---------------------------------------------------------------- torch.compile


class Compiled:
    """``torch.compile`` of the module a :class:`~zoo.adaptation.distributed.Replica` runs
    (compiled again when the replica is wrapped again), called like it; run each forward
    (and backward) pass inside :meth:`failures`.

    ``backend`` is a ``torch.compile`` backend (``True``: ``inductor``, the default). Where
    the module cannot compile (dynamo or the backend fails on the first call), the call raises
    a :class:`~zoo.ZooError` saying so — or, with ``fallback``, the module runs eagerly from
    then on and :attr:`note` says why.
    """

    def __init__(self, replica: Any, backend: bool | str, *, fallback: bool) -> None:
        self.replica = replica
        self.backend = _backend(backend)
        self.fallback = fallback
        self.note = ""
        self._eager = False
        self._for: nn.Module | None = None
        self._compiled: Callable[..., Any] | None = None
        _check_backend(self.backend)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._eager:
            return self.replica(x)
        module = self.replica.wrapped
        if self._compiled is None or self._for is not module:
            self._compiled = torch.compile(module, backend=self.backend)
            self._for = module
        return self._compiled(x)

    @contextlib.contextmanager
    def failures(self) -> Iterator[None]:
        """Turn dynamo's and the backend's errors in the body (a forward pass through this, or
        its backward pass: the backend may compile that on its first call) into the refusal or
        the fallback; after a fallback the body is left and calls run eagerly."""
        from torch._dynamo.exc import TorchDynamoException

        try:
            yield
        except TorchDynamoException as exc:
            reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            what = f"{type(exc).__name__}{': ' + reason if reason else ''}"
            module = type(unwrap(self.replica.module)).__name__
            if not self.fallback:
                raise ZooError(
                    f"torch.compile (backend {self.backend!r}) cannot compile {module}: {what}; "
                    "train without compile, or pass compile_fallback=True (--compile-fallback) "
                    "to train eagerly where it fails"
                ) from exc
            self._eager = True
            self.note = f"compile failed ({what}): trained without compile"

    @property
    def eager(self) -> bool:
        """Whether it fell back to eager."""
        return self._eager


def _backend(asked: bool | str) -> str:
    """The ``torch.compile`` backend of ``compile=asked`` (True: inductor)."""
    return "inductor" if asked is True else str(asked)


def _check_backend(backend: str) -> None:
    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        raise ZooError(
            f"unknown torch.compile backend {backend!r}: use one of {', '.join(sorted(known))} "
            "(compile=True: inductor)"
        )
