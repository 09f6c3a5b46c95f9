"""Write the version-1 corpus: files saved by zoo's format-1 writer, kept so every later format
is tested against them (``tests/test_v1_corpus.py``).

Run once, with the zoo that writes format 1 (this was run at the commit that added it)::

    ZOO_HOME=$(mktemp -d) HF_HUB_OFFLINE=1 python tests/data/v1/make.py

It writes, next to itself: ``store/models/v1-base/`` (a store entry other files are deltas of),
``full.safetensors`` (a linear-probed model with class names and a plan), ``delta.safetensors``
(a fine-tuned head saved as a delta of the store entry), ``lora.safetensors`` (LoRA adapters
saved as a delta), ``compare.safetensors`` (a ``zoo.compare`` winner with its leaderboard and
training record), ``planless.safetensors`` (a model saved straight from ``zoo.create``),
``plain.safetensors`` (safetensors weights with no zoo metadata) and ``expected.json``: for each
file, what loading must give (class names, the policy, the trained names, the adapters, and
the model's output on a fixed input).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
BACKBONE = "timm:test_efficientnet"  # 100k parameters: about 400 KB a full file


def probe(model: torch.nn.Module) -> list[float]:
    """The model's output on a fixed input (what a later reader must reproduce)."""
    torch.manual_seed(1234)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        return [round(v, 6) for v in model.eval()(x).flatten().tolist()]


def colours(root: Path) -> Path:
    for name, rgb in (("red", (220, 30, 30)), ("green", (30, 200, 40)), ("blue", (30, 40, 220))):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(6):
            shade = tuple(max(0, min(255, c + 6 * i - 15)) for c in rgb)
            Image.new("RGB", (32, 32), shade).save(folder / f"{i}.png")
    return root


def main() -> None:
    import zoo

    home = Path(os.environ["ZOO_HOME"])
    expected: dict[str, dict] = {}
    torch.manual_seed(0)

    base = zoo.create(BACKBONE, num_classes=3)
    zoo.save(base, "v1-base", classes=["red", "green", "blue"])

    full = zoo.create(BACKBONE, num_classes=3)
    zoo.freeze(full, "linear-probe")
    with torch.no_grad():
        full.get_classifier().weight.mul_(2.0)
    zoo.save(full, HERE / "full.safetensors", classes=["cat", "dog", "bird"], delta=False)

    tuned = zoo.load("v1-base")
    zoo.freeze(tuned, "train-last:n=1")
    with torch.no_grad():
        for param in tuned.parameters():
            if param.requires_grad:
                param.mul_(1.5)
    zoo.save(tuned, HERE / "delta.safetensors", delta=True)

    lora = zoo.load("v1-base")
    zoo.freeze(lora, "lora:rank=2")
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if param.requires_grad:
                param.add_(0.01 * (1 + len(name) % 3))
    zoo.save(lora, HERE / "lora.safetensors")

    planless = zoo.create(BACKBONE, num_classes=2)
    zoo.save(planless, HERE / "planless.safetensors")

    data = colours(home / "data")
    result = zoo.compare(
        BACKBONE, data, val_split=0.5, policies="linear-probe,full", epochs=1,
        image_size=32, batch_size=6, scratch=True, name="v1-compare",
    )  # fmt: skip
    del result
    shutil.copyfile(zoo.inspect("v1-compare").path, HERE / "compare.safetensors")

    plain = {k: v.contiguous() for k, v in zoo.create(BACKBONE, num_classes=3).state_dict().items()}
    save_file(plain, HERE / "plain.safetensors", metadata={"format": "pt"})

    store = HERE / "store" / "models"
    shutil.rmtree(HERE / "store", ignore_errors=True)
    store.mkdir(parents=True)
    shutil.copytree(home / "models" / "v1-base", store / "v1-base")

    for name in ("full", "delta", "lora", "planless", "compare"):
        path = HERE / f"{name}.safetensors"
        model = zoo.load(path)
        meta = zoo.inspect(path).metadata
        expected[name] = {
            "kind": meta.kind,
            "classes": model.zoo.classes,
            "policy": meta.policy,
            "trained": sorted(meta.trained),
            "num_trained_params": meta.num_trained_params,
            "num_params": meta.num_params,
            "adapters": [a["target"] for a in meta.adapters],
            "training": meta.training,
            "compare_winner": (meta.compare or {}).get("winner"),
            "output": probe(model),
        }
    plain_model = zoo.create(BACKBONE, num_classes=3, weights=HERE / "plain.safetensors")
    expected["plain"] = {"output": probe(plain_model)}
    text = json.dumps(expected, indent=1, sort_keys=True)
    (HERE / "expected.json").write_text(text + "\n", encoding="utf-8")
    print(f"wrote {len(expected)} files to {HERE}", file=sys.stderr)


if __name__ == "__main__":
    main()
