"""``zoo demo``: transfer learning case by case, on real handwritten digits, in about a minute.

The data ships with scikit-learn (``sklearn.datasets.load_digits``: 1,797 scanned 8x8 digits),
so the demo runs offline. It writes the digits as PNG image folders, then:

1. **source task** — trains a small timm backbone (ResNet-10-T at 24x24 px) from scratch on
   digits 0-4 and saves it into the store (``demo-digits-source``);
2. **target task** — digits 5-9 with five labelled images per class, adapted four ways:
   ``scratch`` (same architecture, random weights, policy ``full``), ``linear-probe``,
   ``partial`` (``train-last:n=1``) and ``full`` fine-tuning, each starting from the saved
   source model by name (its head is replaced: the classes differ);
3. compares them on the held-out test digits (accuracy, share of parameters trained, time),
   saves the best as ``demo-digits``, loads it back by name and predicts a few test images.

Everything goes through the public API (:func:`zoo.adapt`, :func:`zoo.save`, :func:`zoo.load`,
:func:`zoo.predict`), exactly as a user would call it.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zoo.adaptation.job import AdaptCallback, evaluate
from zoo.api import adapt

SOURCE_NAME = "demo-digits-source"
BEST_NAME = "demo-digits"
SOURCE_DIGITS = (0, 1, 2, 3, 4)
#: hflip would turn digits into other shapes; crops stay mild (the digits fill the image)
AUGMENT = {"hflip": 0.0, "scale": (0.75, 1.0), "ratio": (0.9, 1.1), "color_jitter": 0.0}


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of one demo run (``FULL`` for people, ``FAST`` for tests)."""

    backbone: str = "timm:resnet10t"
    image_size: int = 24
    source_per_class: int | None = None  # None: all (~180 per digit)
    source_epochs: int = 2
    shots: int = 5
    target_epochs: int = 15
    probe_epochs: int = 40  # cheap: the linear probe trains on cached features
    test_per_class: int | None = None  # None: all the rest (~175 per digit)
    batch_size: int = 32
    lr: float = 2e-3  # the source task
    predictions: int = 5


FULL = DemoSettings()
FAST = DemoSettings(
    source_per_class=24,
    source_epochs=1,
    shots=4,
    target_epochs=2,
    probe_epochs=3,
    test_per_class=6,
    batch_size=16,
    predictions=3,
)


@dataclass(frozen=True)
class Strategy:
    """One way to learn the target task, with a learning rate typical for it: the more of a
    pretrained network trains, the gentler the steps."""

    name: str
    policy: str
    from_source: bool
    lr: float

    def epochs(self, settings: DemoSettings) -> int:
        return settings.probe_epochs if self.policy == "linear-probe" else settings.target_epochs


STRATEGIES: tuple[Strategy, ...] = (
    Strategy("scratch", "full", from_source=False, lr=2e-3),
    Strategy("linear-probe", "linear-probe", from_source=True, lr=2e-2),
    Strategy("partial", "train-last:n=1", from_source=True, lr=3e-3),
    Strategy("full", "full", from_source=True, lr=1e-3),
)


@dataclass
class DemoRow:
    """One strategy's result on the target task."""

    strategy: str
    policy: str
    start: str
    accuracy: float
    trainable_fraction: float
    seconds: float
    feature_cache: bool


@dataclass
class DemoPrediction:
    image: str
    truth: str
    predicted: str
    probability: float


@dataclass
class DemoResult:
    """What the demo found; ``to_dict`` for ``--json``."""

    backbone: str
    source_accuracy: float
    rows: list[DemoRow] = field(default_factory=list)
    best: str = ""
    best_strategy: str = ""
    predictions: list[DemoPrediction] = field(default_factory=list)
    seconds: float = 0.0
    train_images: int = 0
    test_images: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DigitFolders:
    source_train: Path
    source_val: Path
    target_train: Path
    target_test: Path


def load_digits() -> tuple[Any, Any]:
    """``(images (1797, 8, 8) in 0..16, labels)`` of scikit-learn's digits.

    Read straight from the CSV file inside the installed scikit-learn package (the same data
    ``sklearn.datasets.load_digits`` returns), which spares importing scikit-learn and SciPy
    (seconds); falls back to ``load_digits`` if the file has moved.
    """
    import importlib.util
    import os

    import numpy as np

    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            data = np.loadtxt(path, delimiter=",")
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    return digits.images, digits.target


def write_digits(root: Path, settings: DemoSettings, *, seed: int = 0) -> DigitFolders:
    """Write sklearn's digits as PNG class folders: source (0-4) train/val, target (5-9)
    few-shot train and test."""
    from PIL import Image

    images, labels = load_digits()
    rng = random.Random(seed)
    by_digit: dict[int, list[int]] = {}
    for index, target in enumerate(labels):
        by_digit.setdefault(int(target), []).append(index)
    folders = DigitFolders(
        root / "source" / "train",
        root / "source" / "val",
        root / "target" / "train",
        root / "target" / "test",
    )

    def write(folder: Path, digit: int, indices: list[int]) -> None:
        out = folder / str(digit)
        out.mkdir(parents=True, exist_ok=True)
        for i in indices:
            pixels = (images[i] * (255.0 / 16.0)).clip(0, 255).astype("uint8")
            Image.fromarray(pixels).save(out / f"{i:04d}.png")

    for digit, indices in sorted(by_digit.items()):
        indices = list(indices)
        rng.shuffle(indices)
        if digit in SOURCE_DIGITS:
            if settings.source_per_class is not None:
                indices = indices[: settings.source_per_class]
            cut = max(1, len(indices) // 5)
            write(folders.source_val, digit, indices[:cut])
            write(folders.source_train, digit, indices[cut:])
        else:
            rest = indices[settings.shots :]
            if settings.test_per_class is not None:
                rest = rest[: settings.test_per_class]
            write(folders.target_train, digit, indices[: settings.shots])
            write(folders.target_test, digit, rest)
    return folders


def run_demo(
    *,
    fast: bool = False,
    settings: DemoSettings | None = None,
    workdir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
    callback: AdaptCallback | None = None,
) -> DemoResult:
    """Run the demo (see the module docstring); returns the comparison.

    ``fast`` uses tiny sizes (for tests). ``workdir`` keeps the PNG folders there (a temporary
    folder otherwise). ``log`` receives one line per stage; ``callback`` sees every
    adaptation's progress. Saves ``demo-digits-source`` and ``demo-digits`` into the store,
    replacing earlier demo runs.
    """
    import zoo

    settings = settings or (FAST if fast else FULL)
    say = log or (lambda _line: None)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="zoo-demo-") as tmp:
        root = Path(workdir) if workdir is not None else Path(tmp)
        folders = write_digits(root, settings)
        common = {
            "image_size": settings.image_size,
            "input_config": {"crop_pct": 1.0},
            "batch_size": settings.batch_size,
            "callback": callback,
        }
        say(
            f"1/3  source task: {settings.backbone} from scratch on digits 0-4 "
            f"({settings.source_epochs} epochs)"
        )
        _source, source_history = adapt(
            settings.backbone,
            folders.source_train,
            folders.source_val,
            policy="full",
            scratch=True,  # the source task is what gives the backbone its features
            epochs=settings.source_epochs,
            lr=settings.lr,
            augment=AUGMENT,
            name=SOURCE_NAME,
            overwrite=True,
            **common,
        )
        result = DemoResult(
            backbone=settings.backbone, source_accuracy=source_history.final_accuracy or 0.0
        )
        say(f"     saved {SOURCE_NAME!r}: {100 * result.source_accuracy:.1f}% on held-out 0-4")
        say(f"2/3  target task: digits 5-9 with {settings.shots} labelled images per class")
        best_model = None
        for strategy in STRATEGIES:
            start = "source model" if strategy.from_source else "random init"
            epochs = strategy.epochs(settings)
            say(
                f"     {strategy.name}: {strategy.policy} from "
                f"{SOURCE_NAME if strategy.from_source else 'random init'} ({epochs} epochs)"
            )
            t0 = time.perf_counter()
            model, history = adapt(
                SOURCE_NAME if strategy.from_source else settings.backbone,
                folders.target_train,
                policy=strategy.policy,
                scratch=not strategy.from_source,
                epochs=epochs,
                lr=strategy.lr,
                augment=None if strategy.policy == "linear-probe" else AUGMENT,
                **common,
            )
            score = evaluate(model, folders.target_test, batch_size=128)
            result.rows.append(
                DemoRow(
                    strategy=strategy.name,
                    policy=strategy.policy,
                    start=start,
                    accuracy=score.accuracy,
                    trainable_fraction=history.trainable_fraction,
                    seconds=time.perf_counter() - t0,
                    feature_cache=history.feature_cache,
                )
            )
            result.train_images, result.test_images = history.train_images, score.images
            row = result.rows[-1]
            say(
                f"       -> {100 * row.accuracy:.1f}% test accuracy, "
                f"{100 * row.trainable_fraction:.1f}% of parameters trained, {row.seconds:.1f}s"
                + (" (features cached)" if row.feature_cache else "")
            )
            if best_model is None or score.accuracy > max(r.accuracy for r in result.rows[:-1]):
                best_model, result.best_strategy = model, strategy.name
        assert best_model is not None
        zoo.save(best_model, BEST_NAME, overwrite=True)
        result.best = BEST_NAME
        say(
            f"3/3  saved the best ({result.best_strategy}) as {BEST_NAME!r}; loading it back "
            "by name to predict held-out digits"
        )
        loaded = zoo.load(BEST_NAME)
        samples = sorted(folders.target_test.rglob("*.png"))
        picks = random.Random(1).sample(samples, min(settings.predictions, len(samples)))
        for pred, path in zip(zoo.predict(loaded, picks, topk=1), picks, strict=True):
            result.predictions.append(
                DemoPrediction(
                    image=path.name,
                    truth=path.parent.name,
                    predicted=pred.label,
                    probability=pred.probability,
                )
            )
    result.seconds = time.perf_counter() - started
    return result
