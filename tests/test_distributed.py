"""Distributed adaptation: two real CPU processes under torchrun (gloo on 127.0.0.1).

The run uses the gradual schedule, so DDP must be re-wrapped when layers unfreeze mid-training.
Checked: rank 0 saved the model; trained parameters agree exactly across ranks; parameters and
statistics that stay frozen never changed; the parameters unfrozen later did train.
"""

from __future__ import annotations

import json
import os
import textwrap

import pytest
import torch
from torchrun_helpers import run_worker

import zoo
from zoo.adaptation.distributed import DistContext, Replica, ShardSampler, launched_by_torchrun

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    torch.set_num_threads(1)
    import zoo

    out, data = sys.argv[1], sys.argv[2]
    rank = int(os.environ["RANK"])
    torch.manual_seed(0)
    model = zoo.create("timm:test_resnet", num_classes=3)
    if rank == 0:
        torch.save(model.state_dict(), os.path.join(out, "init.pt"))
    model, history = zoo.adapt(
        model, os.path.join(data, "train"), os.path.join(data, "val"),
        policy="gradual", epochs=3, image_size=32, batch_size=8, lr=5e-3,
        name="ddp-gradual", seed=1,
    )
    torch.save(model.state_dict(), os.path.join(out, f"rank{rank}.pt"))
    with open(os.path.join(out, f"history{rank}.json"), "w") as f:
        json.dump(history.to_dict(), f)
    """
)


@pytest.mark.slow
def test_gradual_under_torchrun_two_processes(colours, tmp_path, _isolated_zoo):
    out = tmp_path / "out"
    out.mkdir()
    proc = run_worker(tmp_path, WORKER, out, colours, zoo_home=_isolated_zoo)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    init = torch.load(out / "init.pt")
    rank0 = torch.load(out / "rank0.pt")
    rank1 = torch.load(out / "rank1.pt")
    # replicas agree exactly: parameters and (averaged) norm statistics
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    # what never unfroze (stem, layer1, layer2) never changed, statistics included
    frozen = [k for k in init if k.startswith(("conv1.", "bn1.", "layer1.", "layer2."))]
    assert any(k.endswith("running_mean") for k in frozen)
    assert frozen
    for key in frozen:
        assert torch.equal(init[key], rank0[key]), key
    # the head from epoch 1, layer4 from epoch 2 and layer3 from epoch 3 did train
    for key in ("fc.weight", "layer4.0.conv2.weight", "layer3.0.conv1.weight"):
        assert not torch.equal(init[key], rank0[key]), key

    history = json.loads((out / "history0.json").read_text())
    assert history["world_size"] == 2
    assert history["ddp_wraps"] == 3  # the first wrap, then one per unfreeze boundary
    tensors = [e["trainable_tensors"] for e in history["epochs"]]
    assert tensors[0] < tensors[1] < tensors[2]
    assert history["train_images"] == 24
    # only rank 0 saved; the store has the model with the last plan and the class names
    saved = zoo.load("ddp-gradual")
    assert saved.zoo.classes == ["blue", "green", "red"]
    assert saved.zoo.plan.policy == "zoo:gradual"
    assert "layer3.0.conv1.weight" in saved.zoo.plan.trainable
    assert "layer2.0.conv1.weight" not in saved.zoo.plan.trainable
    for key, value in saved.state_dict().items():
        assert torch.equal(value, rank0[key]), key
    assert sorted(p.name for p in (_isolated_zoo / "models").iterdir()) == ["ddp-gradual"]


def test_single_process_context_is_a_no_op():
    ctx = DistContext()
    assert not ctx.enabled and ctx.is_main
    assert ctx.sum([1, 2.5]) == [1.0, 2.5]
    assert ctx.broadcast({"a": 1}) == {"a": 1}
    module = torch.nn.Linear(2, 2)
    replica = Replica(module, ctx)
    assert replica.wrapped is module and replica.wraps == 0
    assert not replica.sync()


def test_shard_sampler_covers_every_index_once():
    shards = [list(ShardSampler(10, r, 3)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(10))
    assert [len(s) for s in shards] == [4, 3, 3]


def test_torchrun_detection(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not launched_by_torchrun()
    monkeypatch.setenv("RANK", "1")
    assert launched_by_torchrun()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not launched_by_torchrun()


def test_distributed_true_without_launcher_is_a_clear_error(monkeypatch):
    from zoo.adaptation.distributed import setup

    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(zoo.ZooError, match="torchrun"):
        setup(True)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads /proc/self/task")
def test_settle_threads_waits_for_a_running_thread_and_returns_once_it_parks():
    """What zoo does at the exit of a distributed run, before the interpreter finalizes: wait
    until no other thread is runnable (gloo's workers letting go of finished collectives).
    A thread compressing without the GIL for the whole look is never quiet; a parked one is."""
    import threading
    import zlib

    from zoo.adaptation.distributed import settle_threads

    stop, started = threading.Event(), threading.Event()
    data = os.urandom(1 << 22)

    def compress() -> None:
        started.set()
        while not stop.is_set():
            zlib.compress(data, 9)  # releases the GIL: runnable all along

    worker = threading.Thread(target=compress)
    worker.start()
    started.wait()
    try:
        assert settle_threads(timeout_s=0.3) is False
    finally:
        stop.set()
        worker.join()
    parked = threading.Event()
    idle = threading.Thread(target=parked.wait)  # blocked: not runnable
    idle.start()
    try:
        assert settle_threads() is True
    finally:
        parked.set()
        idle.join()


def test_thread_state_reads_past_a_name_with_spaces_and_parentheses():
    from zoo.adaptation.distributed import thread_state

    assert thread_state("4242 (python) S 1 4242 4242 0 -1") == "S"
    assert thread_state("4243 (a) b) (c ) R 1 4242 4242 0 -1") == "R"
