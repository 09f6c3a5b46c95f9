"""Adapter files, measured side by side in one run (prints sizes and ratios).

For each backbone (10-class head) and adapter policy: the base is the backbone's random
initialisation, every parameter nudged by N(0, 0.02) (so that zero-initialised layers, such as
the last norm of each ResNet block, do not hide what the adapters do), saved once as a full
store entry (the hub is unreachable here, so it stands in for pretrained weights); the model
loaded from it gets the adapters (``zoo.freeze``), its trainable tensors are perturbed (as
training would) and it is saved with the default ``delta=None``: a delta of the base holding
the adapters, the head and whatever else changed.

Printed per row: the full base file, the adapter file and their ratio (target: <= 2 % for
``lora:rank=8`` on resnet50 and vit_base_patch16_224), the time of ``zoo.load`` of the adapter
file (rebuild, inject the adapters, read the base and the delta) beside ``zoo.load`` of the full
base, the largest output difference of ``zoo.load(merge=True)`` against the adapted model and
the largest output (target: differences <= 1e-5 of the outputs' scale) and what a merge of a
VPT file says.

    python benchmarks/adapter_sizes.py [--models timm:resnet50,timm:vit_base_patch16_224]

Measured (2 shared CPU cores, zoo of issue 15):

    see the report of the run in docs/adapters.md
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        default="timm:resnet50,timm:vit_base_patch16_224",
        help="comma-separated backbones (default: %(default)s)",
    )
    parser.add_argument("--policies", default="lora:rank=8,ssf,vpt", help="adapter policies")
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as home:
        os.environ["ZOO_HOME"] = home
        run(args.models.split(","), split_policies(args.policies), args.image_size)


def split_policies(text: str) -> list[str]:
    """``lora:rank=8,ssf,vpt`` -> the policy specs (a ``key=value`` part stays with its policy)."""
    out: list[str] = []
    for part in text.split(","):
        if "=" in part and ":" not in part and out:
            out[-1] += "," + part
        else:
            out.append(part)
    return out


def run(models: list[str], policies: list[str], image_size: int) -> None:
    import torch

    import zoo

    torch.manual_seed(0)
    x = torch.randn(2, 3, image_size, image_size)
    header = (
        f"{'backbone':<30} {'policy':<12} {'base file':>11} {'adapter file':>13} {'ratio':>7} "
        f"{'load s':>7} {'(base)':>7} {'merge max|diff|':>16} {'max|y|':>7}"
    )
    print(header)
    print("-" * len(header))
    for backbone in models:
        base_name = "base-" + backbone.replace(":", "-")
        base = zoo.create(backbone, num_classes=10)
        with torch.no_grad():
            for param in base.parameters():
                param.add_(torch.randn_like(param) * 0.02)
        base_path = zoo.save(base, base_name)
        base_size = base_path.stat().st_size
        del base
        start = time.perf_counter()
        zoo.load(base_name)
        base_seconds = time.perf_counter() - start
        for policy in policies:
            model = zoo.load(base_name)
            try:
                zoo.freeze(model, policy)
            except zoo.ZooError as exc:
                print(f"{backbone:<30} {policy:<12} refused: {exc}")
                continue
            with torch.no_grad():
                for param in model.parameters():
                    if param.requires_grad:
                        param.add_(torch.randn_like(param) * 0.02)
            model.eval()
            with torch.no_grad():
                expected = model(x)
            name = f"{base_name}-{policy.split(':')[0]}"
            path = zoo.save(model, name)
            size = path.stat().st_size
            start = time.perf_counter()
            loaded = zoo.load(name)
            seconds = time.perf_counter() - start
            with torch.no_grad():
                assert torch.equal(loaded(x), expected), "load is not bit-identical"
            try:
                merged = zoo.load(name, merge=True)
                with torch.no_grad():
                    diff = (merged(x) - expected).abs().max().item()
                merge = f"{diff:.2e}"
            except zoo.AdapterMergeError as exc:
                merge = "refused"
                refusal = str(exc)
            print(
                f"{backbone:<30} {policy:<12} {base_size / 2**20:>8.1f} MiB "
                f"{size / 2**20:>9.2f} MiB {100 * size / base_size:>6.2f}% {seconds:>7.2f} "
                f"{base_seconds:>7.2f} {merge:>16} {expected.abs().max().item():>7.3g}"
            )
            if merge == "refused":
                print(f"    merge=True: {refusal}")
            del model, loaded
    print(f"outputs: batch of 2 at {image_size}x{image_size}; load = zoo.load of the adapter file")


if __name__ == "__main__":
    main()
