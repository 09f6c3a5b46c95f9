"""Training step time and peak memory of adapter policies vs full fine-tuning, side by side.

Each variant (``full``, ``lora:rank=8``, ``ssf``, ``vpt``; ``--variants`` to choose) runs in a
fresh subprocess of this script, one after the other in one invocation, so that each one's peak
memory is its own: the model (``timm:vit_small_patch16_224`` by default, random weights,
``num_classes=10``) is built, ``zoo.freeze(model, policy)`` applied, and AdamW (lr 1e-4, the
plan's ``param_groups``) trains on a fixed random batch (``--batch 32``, 224 px): ``--warmup``
steps, then the median of ``--steps`` timed steps (forward, cross-entropy, backward, optimizer
step, zero_grad).

Also per variant: process CPU time per step (steadier than wall time on a shared machine), the
exact bytes autograd saves for the backward of one forward pass (activations: hooked with
``torch.autograd.graph.saved_tensors_hooks``), and the float32 bytes of gradients and AdamW
moments of what trains.

Memory: on CPU the peak resident set size of the process (``resource.getrusage``
``ru_maxrss``), and its growth over the model-only baseline taken before the first step (that
growth is activations, gradients and optimizer state); on CUDA ``torch.cuda.max_memory_allocated``
over the training steps, and its growth over the memory allocated before the first step.

Usage::

    nice python benchmarks/adapter_speed.py                       # CPU, threads = 2
    python benchmarks/adapter_speed.py --device cuda --steps 20 --warmup 5
    python benchmarks/adapter_speed.py --variants full,lora:rank=8 --batch 8
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
VARIANTS = ("full", "lora:rank=8", "ssf", "vpt")


def rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child_env() -> dict[str, str]:
    """The environment of a variant's subprocess: it imports the zoo this process would."""
    spec = importlib.util.find_spec("zoo")
    root = Path(spec.origin).parents[1] if spec and spec.origin else Path(__file__).parents[1]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
    return env


def worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    import zoo

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = zoo.create(f"timm:{args.model}", num_classes=10)
    plan = zoo.freeze(model, args.variant)
    model.to(device).train()
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    added = sum(
        int(torch.Size(shape).numel())
        for a in getattr(plan, "additions", ())
        for shape in a.params.values()
    )
    optimizer = torch.optim.AdamW(plan.param_groups(model, lr=1e-4, weight_decay=0.05))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 3, args.img, args.img, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=g).to(device)
    loss_fn = torch.nn.CrossEntropyLoss()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    cpu: list[float] = []

    def step() -> float:
        sync()
        started, started_cpu = time.perf_counter(), time.process_time()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        cpu.append(time.process_time() - started_cpu)
        return time.perf_counter() - started

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated() / 2**20
    else:
        baseline = current_rss_mib()
    for _ in range(args.warmup):
        step()
    times = [step() for _ in range(args.steps)]
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else rss_mib()
    # what autograd keeps from one forward pass for the backward (activations), exactly
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn(model(x), y)
    del loss
    return {
        "variant": args.variant,
        "params": total,
        "trained": trained,
        "added": added,
        "step_s": statistics.median(times),
        "cpu_s": statistics.median(cpu[args.warmup :]),
        "saved_mib": sum(storages.values()) / 2**20,
        "state_mib": trained * 4 * 3 / 2**20,  # gradient + AdamW's two moments, float32
        "steps": [round(t, 4) for t in times],
        "baseline_mib": baseline,
        "peak_mib": peak,
        "growth_mib": peak - baseline,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_small_patch16_224", help="timm name")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="policies, comma-separated")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--img", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (CPU)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # set in the subprocesses
    args = parser.parse_args(argv)

    if args.variant:
        print(json.dumps(worker(args)))
        return 0

    variants: list[str] = []
    for v in args.variants.split(","):  # "lora:rank=8,alpha=16": keep continuations together
        if variants and "=" in v and ":" not in v:
            variants[-1] += "," + v
        elif v:
            variants.append(v)
    rows = []
    for variant in variants:
        command = [sys.executable, __file__, "--variant", variant, *(argv or sys.argv[1:])]
        done = subprocess.run(command, capture_output=True, text=True, env=child_env())
        if done.returncode != 0:
            print(f"{variant}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{variant}: {row['step_s']:.3f}s/step, peak {row['peak_mib']:.0f} MiB", flush=True)
    if not rows:
        return 1

    import torch

    memory = "cuda max_memory_allocated" if args.device.startswith("cuda") else "peak RSS"
    print(
        f"\n{args.model}, batch {args.batch}, {args.img} px, {args.device}"
        + (f" ({args.threads} threads)" if args.device == "cpu" else "")
        + f", torch {torch.__version__}: median of {args.steps} steps after {args.warmup} warm-up"
    )
    print(
        f"memory: {memory}; growth = peak - before the first step (model only); saved = what "
        "autograd keeps for the backward of one forward pass (activations, exact); grad+opt = "
        "gradients and AdamW moments of the trained parameters (float32); cpu s = process CPU "
        "time per step (all threads; less sensitive than wall time to a busy machine)\n"
    )
    ref = next((r for r in rows if r["variant"] == "full"), rows[0])
    header = (
        f"{'policy':<14} {'trained':>9} {'%':>7} {'added':>8} {'step s':>8} {'x full':>7} "
        f"{'cpu s':>7} {'x full':>7} {'peak MiB':>9} {'x full':>7} {'growth MiB':>11} "
        f"{'x full':>7} {'saved MiB':>10} {'x full':>7} {'grad+opt MiB':>12}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['variant']:<14} {r['trained'] / 1e6:>8.3f}M "
            f"{100 * r['trained'] / r['params']:>6.2f}% "
            f"{r['added'] / 1e3:>7.1f}K {r['step_s']:>8.3f} {r['step_s'] / ref['step_s']:>7.2f} "
            f"{r['cpu_s']:>7.2f} {r['cpu_s'] / ref['cpu_s']:>7.2f} "
            f"{r['peak_mib']:>9.0f} {r['peak_mib'] / ref['peak_mib']:>7.2f} "
            f"{r['growth_mib']:>11.0f} {r['growth_mib'] / max(ref['growth_mib'], 1e-9):>7.2f} "
            f"{r['saved_mib']:>10.0f} {r['saved_mib'] / max(ref['saved_mib'], 1e-9):>7.2f} "
            f"{r['state_mib']:>12.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
