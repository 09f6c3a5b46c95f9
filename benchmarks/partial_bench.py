"""Partial fine-tuning on the boundary cache against the loop a user writes, side by side.

``train-last:n=1`` on timm:resnet18 (layer4 and fc train, everything before is frozen), on the
same generated image folder (10 classes of noisy shapes, written as PNG at 224 px), with the
same eval transform every epoch (no augmentation), batch 32, AdamW:

* **user loop** — what a typical script does: ``requires_grad=False`` on the prefix,
  ``model.train()``, a ``DataLoader`` over a torchvision ``ImageFolder`` with timm's eval
  transform, decoding every image and running the whole network every epoch;
* **zoo** — ``zoo.adapt(..., policy="train-last:n=1", augment=False)``: the frozen prefix
  runs once, its output (the input of ``layer4``) is cached, and each epoch runs ``layer4``
  and the head on the cached activations.

Each side runs in its own process (so peak RSS is its own; CUDA peak memory too); the time is
that of the training (zoo: the whole ``adapt`` call — model creation, scanning the folder,
caching — included; the user loop: from its first batch). Weights are random (``scratch``):
this measures speed, not accuracy (the hub is offline here). Then zoo's cached and uncached
paths (``feature_cache=False``) run on a subset with the same seed and are compared tensor by
tensor: they must be bit-identical.

Target: zoo at least 2.5x faster than the user loop.

    python benchmarks/partial_bench.py                          # 512 images, 10 epochs, CPU
    python benchmarks/partial_bench.py --images 128 --epochs 4  # a quicker look
    python benchmarks/partial_bench.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BACKBONE = "resnet18"
CLASSES = 10
BATCH = 32
LR = 1e-3


def make_folder(root: Path, images: int, size: int, seed: int) -> None:
    """``images`` noisy PNGs in ``CLASSES`` folders: a coloured shape on a noisy background."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    for i in range(images):
        label = i % CLASSES
        folder = root / f"class{label:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = noise.integers(0, 256, (size, size, 3), dtype=np.uint8) // 2 + 64
        image = Image.fromarray(pixels, "RGB")
        draw = ImageDraw.Draw(image)
        r = rng.randint(size // 6, size // 3)
        x, y = rng.randint(r, size - r), rng.randint(r, size - r)
        colour = ((label * 70) % 256, (label * 130) % 256, (label * 200) % 256)
        box = (x - r, y - r, x + r, y + r)
        (draw.ellipse if label % 2 else draw.rectangle)(box, fill=colour)
        image.save(folder / f"{i:05d}.png")


def _peak_rss_mb() -> float:
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def _cuda_peak_mb(device: str) -> float | None:
    import torch

    if not device.startswith("cuda"):
        return None
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def child_user(folder: Path, epochs: int, device: str) -> dict:
    """The loop a user writes: frozen prefix, whole network every epoch."""
    import timm
    import torch
    from timm.data import create_transform, resolve_data_config
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    torch.manual_seed(0)
    model = timm.create_model(BACKBONE, pretrained=False, num_classes=CLASSES).to(device)
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith(("layer4.", "fc."))
    transform = create_transform(**resolve_data_config({}, model=model), is_training=False)
    dataset = ImageFolder(str(folder), transform=transform)
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, pin_memory=device != "cpu")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    _sync(device)
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            loss = loss_fn(model(images), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
    _sync(device)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rss_mb": _peak_rss_mb(), "cuda_mb": _cuda_peak_mb(device)}


def child_zoo(folder: Path, epochs: int, device: str, cache: bool) -> tuple[dict, dict]:
    import zoo

    zoo.get_catalog()  # plugin loading is not training
    _sync(device)
    start = time.perf_counter()
    trained, history = zoo.adapt(
        f"timm:{BACKBONE}",
        folder,
        scratch=True,
        policy="train-last:n=1",
        epochs=epochs,
        augment=False,
        feature_cache=cache,
        batch_size=BATCH,
        lr=LR,
        device=device,
        seed=0,
    )
    _sync(device)
    seconds = time.perf_counter() - start
    state = {k: v.detach().cpu() for k, v in trained.state_dict().items()}
    out = {
        "seconds": seconds,
        "feature_seconds": history.feature_seconds,
        "epoch_seconds": sum(e.seconds for e in history),
        "note": history.feature_cache_note,
        "cached": history.feature_cache,
        "rss_mb": _peak_rss_mb(),
        "cuda_mb": _cuda_peak_mb(device),
    }
    return out, state


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _child(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    if args.child == "user":
        result = child_user(folder, args.epochs, args.device)
    else:
        result, state = child_zoo(folder, args.epochs, args.device, args.child == "zoo")
        if args.state:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in state.items()}, args.state)
    print("RESULT " + json.dumps(result))
    return 0


def _run_child(kind: str, folder: Path, epochs: int, device: str, state: Path | None) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--folder",
        str(folder),
        "--epochs",
        str(epochs),
        "--device",
        device,
    ]
    if state is not None:
        command += ["--state", str(state)]
    # the children import this checkout's zoo, installed or not
    root = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"the {kind} run failed")
    return json.loads(lines[-1][len("RESULT ") :])


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} MB"


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="zoo-partial-bench-") as tmp:
        root = Path(tmp)
        make_folder(root / "train", args.images, args.image_size, seed=0)
        make_folder(root / "check", args.check_images, args.image_size, seed=1)
        print(
            f"timm:{BACKBONE} (random init: a speed benchmark), train-last:n=1, "
            f"{args.images} images of {args.image_size}px in {CLASSES} classes, "
            f"{args.epochs} epochs, batch {BATCH}, un-augmented, device {args.device}"
        )
        user = _run_child("user", root / "train", args.epochs, args.device, None)
        cached = _run_child("zoo", root / "train", args.epochs, args.device, None)
        print(f"  {'':24} {'seconds':>9} {'peak RSS':>10} {'CUDA peak':>10}")
        print(
            f"  {'user loop':24} {user['seconds']:9.1f} {_mb(user['rss_mb']):>10} "
            f"{_mb(user['cuda_mb']):>10}"
        )
        print(
            f"  {'zoo (boundary cache)':24} {cached['seconds']:9.1f} "
            f"{_mb(cached['rss_mb']):>10} {_mb(cached['cuda_mb']):>10}"
        )
        print(
            f"  zoo: caching {cached['feature_seconds']:.1f} s, epochs "
            f"{cached['epoch_seconds']:.1f} s; {cached['note']}"
        )
        ratio = user["seconds"] / cached["seconds"]
        verdict = "meets" if ratio >= 2.5 else "misses"
        print(f"  speed-up: {ratio:.2f}x ({verdict} the 2.5x target)")

        a, b = root / "cached.safetensors", root / "plain.safetensors"
        check_c = _run_child("zoo", root / "check", args.check_epochs, args.device, a)
        check_p = _run_child("plain", root / "check", args.check_epochs, args.device, b)
        from safetensors.torch import load_file

        sa, sb = load_file(str(a)), load_file(str(b))
        import torch

        different = [k for k in sa if not torch.equal(sa[k], sb[k])]
        same = not different and sa.keys() == sb.keys() and check_c["cached"]
        print(
            f"  bit-identity vs zoo's uncached path ({args.check_images} images, "
            f"{args.check_epochs} epochs, {len(sa)} tensors): "
            + (
                "identical"
                if same
                else f"DIFFERENT ({len(different)} tensors, e.g. {different[:3]})"
            )
            + f"; times {check_c['seconds']:.1f} s cached, {check_p['seconds']:.1f} s uncached"
        )
        return 0 if same else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--check-images", type=int, default=64)
    parser.add_argument("--check-epochs", type=int, default=2)
    parser.add_argument("--child", choices=("user", "zoo", "plain"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--state", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
