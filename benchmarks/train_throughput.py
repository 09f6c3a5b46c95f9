"""Training throughput of ``zoo adapt`` against a loop written the way timm's ``train.py`` trains.

Same model (random weights: this measures speed, not accuracy), same generated image folder
(PNG, noisy shapes, as ``partial_bench.py`` makes it), same image size, batch, epochs and
number of loader workers, side by side in one run, each in its own process (peak memory is its
own), in ``--repeat`` rounds (the table shows each row's median):

* **reference** — timm's recipe: ``timm.create_model``, ``timm.data.create_dataset`` and
  ``create_loader`` (timm's training transforms, persistent workers; on a GPU pinned memory and
  timm's prefetcher, which normalizes on the device), ``create_optimizer_v2`` (AdamW), on a GPU
  channels_last and bf16 autocast (fp16 with a scaler where bf16 is missing), and the plain
  ``zero_grad / backward / step`` loop;
* **zoo full**, **zoo train-last** (``train-last:n=1``), **zoo lora** — ``zoo.adapt`` with
  every speed option at its default (augmented images, as the reference).

Images per second count training images over the epochs' time (zoo: the epochs its history
records; the reference: its epoch loop); ``wall`` is the whole process (imports aside: model,
data, caching, saving nothing). ``--channels-last`` adds a row of each of zoo full and the
reference with channels_last forced on (what decided zoo's CPU default).

    python benchmarks/train_throughput.py                        # CPU: resnet18, 128 px
    python benchmarks/train_throughput.py --images 128 --epochs 1
    python benchmarks/train_throughput.py --device cuda --images 2048 --size 224
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from partial_bench import CLASSES, make_folder

LR = 1e-3
ZOO_POLICIES = {"zoo full": "full", "zoo train-last": "train-last:n=1", "zoo lora": "lora"}


def _peak_memory(device: str) -> dict:
    import resource

    import torch

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"rss_mb": kb / 1024 if sys.platform != "darwin" else kb / 2**20, "cuda_mb": None}
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        out["cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _workers(images: int, batch: int) -> int:
    from zoo.adaptation.speed import loader_workers

    return loader_workers(None, images, batch)


def child_reference(args: argparse.Namespace, channels_last: bool | None) -> dict:
    """timm's train.py recipe, reduced to its training loop."""
    import timm
    import torch
    from timm.data import create_dataset, create_loader, resolve_data_config
    from timm.optim import create_optimizer_v2

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False, num_classes=CLASSES).to(device)
    if channels_last if channels_last is not None else cuda:
        model.to(memory_format=torch.channels_last)
    config = resolve_data_config({"input_size": (3, args.size, args.size)}, model=model)
    dataset = create_dataset("", root=args.folder)
    loader = create_loader(
        dataset,
        input_size=config["input_size"],
        batch_size=args.batch,
        is_training=True,
        interpolation=config["interpolation"],
        mean=config["mean"],
        std=config["std"],
        num_workers=_workers(len(dataset), args.batch),
        pin_memory=cuda,
        device=device,
        use_prefetcher=cuda,
        persistent_workers=True,
    )
    optimizer = create_optimizer_v2(model, opt="adamw", lr=LR, weight_decay=0.01)
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if cuda and dtype is torch.float16 else None
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    _sync(device)
    start = time.perf_counter()
    images = 0
    for _ in range(args.epochs):
        for x, y in loader:
            x, y = x.to(device), y.to(device)  # the prefetcher's batches are there already
            if channels_last if channels_last is not None else cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=dtype, enabled=cuda):
                loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            images += int(y.shape[0])
    _sync(device)
    return {"train_s": time.perf_counter() - start, "images": images, **_peak_memory(args.device)}


def child_zoo(args: argparse.Namespace, policy: str, channels_last: bool | None) -> dict:
    import zoo

    zoo.get_catalog()  # plugin loading is not training
    extra = {} if channels_last is None else {"channels_last": channels_last}
    _, history = zoo.adapt(
        f"timm:{args.model}",
        args.folder,
        scratch=True,
        policy=policy,
        epochs=args.epochs,
        batch_size=args.batch,
        image_size=args.size,
        lr=LR,
        device=args.device,
        seed=0,
        **extra,
    )
    return {
        "train_s": sum(e.seconds for e in history),
        "images": sum(e.images for e in history),
        "loader_s": sum(e.loader_seconds for e in history),
        "cached": history.feature_cache,
        **_peak_memory(args.device),
    }


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _child(args: argparse.Namespace) -> int:
    layout = {"default": None, "on": True}[args.layout]
    if args.child == "reference":
        result = child_reference(args, layout)
    else:
        result = child_zoo(args, ZOO_POLICIES[args.child], layout)
    print("RESULT " + json.dumps(result))
    return 0


def _run_child(args: argparse.Namespace, kind: str, folder: Path, layout: str) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--folder", str(folder)]
    command += ["--layout", layout, "--device", args.device, "--model", args.model]
    command += ["--size", str(args.size), "--batch", str(args.batch), "--epochs", str(args.epochs)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{done.stderr[-3000:]}")
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return {**json.loads(line[len("RESULT ") :]), "wall_s": wall}


def _median(tries: list[dict]) -> dict:
    """The try of median training time."""
    return sorted(tries, key=lambda r: r["train_s"] / r["images"])[len(tries) // 2]


def _row(name: str, r: dict, reference: dict) -> str:
    rate = r["images"] / r["train_s"]
    ratio = rate / (reference["images"] / reference["train_s"])
    cuda = f"{r['cuda_mb']:,.0f}" if r.get("cuda_mb") is not None else "-"
    loader = f"{r['loader_s']:.1f}" if "loader_s" in r else "-"
    return (
        f"| {name} | {rate:,.1f} | {ratio:.2f}x | {r['train_s']:.1f} | {loader} | "
        f"{r['wall_s']:.1f} | {r['rss_mb']:,.0f} | {cuda} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--model", default="resnet18", help="a timm architecture")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--channels-last", action="store_true", help="also rows with channels_last forced on"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds of every row; the table shows the median"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--layout", default="default", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "train"
        make_folder(folder, args.images, max(args.size, 64), seed=0)
        os.environ["ZOO_HOME"] = str(Path(tmp) / "home")
        print(
            f"{args.model}, {args.images} images of {args.size} px, {args.epochs} epochs, batch "
            f"{args.batch}, {_workers(args.images, args.batch)} loader workers, device "
            f"{args.device}, {os.cpu_count()} CPUs visible",
            flush=True,
        )
        runs = [("reference (timm train.py)", "reference", "default")]
        runs += [(name, name, "default") for name in ZOO_POLICIES]
        if args.channels_last:
            runs += [
                ("reference, channels_last", "reference", "on"),
                ("zoo full, channels_last", "zoo full", "on"),
            ]
        tries: dict[str, list[dict]] = {name: [] for name, _, _ in runs}
        for round_ in range(args.repeat):  # in rounds: a load that drifts hits every row
            for name, kind, layout in runs:
                tries[name].append(_run_child(args, kind, folder, layout))
                print(f"  {round_ + 1}: {name}: {json.dumps(tries[name][-1])}", flush=True)
        results = {name: _median(found) for name, found in tries.items()}
    reference = results["reference (timm train.py)"]
    print()
    print("| run | img/s | vs reference | train s | waiting s | wall s | peak RSS MB | CUDA MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, result in results.items():
        print(_row(name, result, reference))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
