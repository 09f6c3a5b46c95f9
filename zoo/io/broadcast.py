"""Rank 0's small object on every process of a distributed run, through the store.

zoo hands small objects from process 0 to the others: a saved model's path or process 0's
error (:func:`~zoo.io.persistence.save` of a sharded model), a comparison's choices. It does
so through the default process group's key-value store, not a collective: gloo's worker
thread may release a finished broadcast's tensors (Python objects) just after the caller went
on, and when the process is already exiting then — a process whose last collective this was —
that thread aborts it ("terminate called without an active exception"; a core dump showed
gloo's ``runLoop`` taking the GIL during interpreter shutdown). Seen in about 1 of 20 runs of
``torchrun -m zoo adapt --shard`` before the change, none in 40 after. Without a store,
``broadcast_object_list``.
"""

from __future__ import annotations

import itertools
import pickle
from typing import Any

__all__ = ["broadcast_from_first"]

#: Broadcasts of this process: their store keys (every process broadcasts in the same order).
_BROADCASTS = itertools.count()


def broadcast_from_first(obj: Any, *, device: Any = None) -> Any:
    """Process 0's ``obj`` on every process of the default group (``obj`` itself when no
    group is initialized). ``device``: where ``broadcast_object_list`` stages its tensors
    when there is no store (a GPU for NCCL)."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return obj
    store = default_store()
    if store is None:
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=device)
        return box[0]
    key = f"zoo/broadcast/{next(_BROADCASTS)}"
    if dist.get_rank() == 0:
        store.set(key, pickle.dumps(obj))
        return obj
    return pickle.loads(store.get(key))  # written by this run's own process 0


def default_store() -> Any:
    """The default process group's key-value store (None: none reachable)."""
    from torch.distributed import distributed_c10d

    try:
        return distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError, ValueError):
        return None
