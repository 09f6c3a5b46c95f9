"""``zoo demo``: transfer learning case by case, measured on real handwritten digits, offline.

The data ships with scikit-learn (``sklearn.datasets.load_digits``: 1,797 scanned 8x8 digits),
so the demo runs offline. It writes the digits as PNG image folders, then:

1. **source task** — trains a small timm backbone (ResNet-10-T at 24x24 px) from scratch on
   digits 0-4 and saves it into the store (``demo-digits-source``);
2. **target task** — digits 5-9 with five labelled images per class (and five more per class
   to validate on): one :func:`zoo.compare` of a small ladder of policies (``linear-probe``,
   ``train-last:n=1``, ``train-last:n=2``, ``full``) starting from the saved source model by
   name (its head is replaced: the classes differ). It ranks them on the validation images,
   trains the winner to the end and saves it as ``demo-digits``; for contrast, the same
   network also learns the target from random weights;
3. scores the winner on the held-out test digits, loads it back by name and predicts a few.

Everything goes through the public API (:func:`zoo.adapt`, :func:`zoo.compare`,
:func:`zoo.load`, :func:`zoo.predict`), exactly as a user would call it.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zoo.cli.output import percent

SOURCE_NAME = "demo-digits-source"
BEST_NAME = "demo-digits"
SOURCE_DIGITS = (0, 1, 2, 3, 4)
#: hflip would turn digits into other shapes; crops stay mild (the digits fill the image)
AUGMENT = {"hflip": False, "scale": (0.75, 1.0), "color_jitter": 0.0}
#: the candidates of the target task's comparison, least to most trained
LADDER = ("linear-probe", "train-last:n=1", "train-last:n=2", "full")


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of one demo run (``FULL`` for people, ``FAST`` for tests)."""

    backbone: str = "timm:resnet10t"
    image_size: int = 24
    source_per_class: int | None = None  # None: all (~180 per digit)
    source_epochs: int = 2
    source_lr: float = 2e-3
    shots: int = 5  # labelled training images per target digit
    val_per_class: int = 5  # labelled validation images per target digit (compare ranks on them)
    epochs: int = 15  # a candidate's full run (successive halving cuts the weak ones early)
    lr: float = 3e-3  # the target task, every candidate
    test_per_class: int | None = None  # None: all the rest (~170 per digit)
    batch_size: int = 32
    predictions: int = 5
    #: torch threads while the demo runs (None: torch's default). Its models are tiny (24 px):
    #: one thread is as fast, and more threads spin on a busy machine (measured: 17 s against
    #: 112 s for the whole demo on 2 shared cores)
    threads: int | None = 1


FULL = DemoSettings()
FAST = DemoSettings(
    source_per_class=24,
    source_epochs=1,
    shots=4,
    val_per_class=2,
    epochs=2,
    test_per_class=6,
    batch_size=16,
    predictions=3,
)


@dataclass
class DemoRow:
    """One candidate of the comparison (a row of its leaderboard)."""

    policy: str
    val_accuracy: float
    trainable_percent: float
    epochs: int
    seconds: float
    stopped_early: bool
    trained_on: str


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
    rows: list[DemoRow] = field(default_factory=list)  # the leaderboard, best first
    winner: str = ""
    why: str = ""
    best: str = ""  # the name the winner is saved under
    test_accuracy: float = 0.0  # the winner on the held-out test digits
    scratch_accuracy: float = 0.0  # the same network trained from random weights
    compare_seconds: float = 0.0
    predictions: list[DemoPrediction] = field(default_factory=list)
    seconds: float = 0.0
    train_images: int = 0
    val_images: int = 0
    test_images: int = 0
    leaderboard: Any = field(default=None, repr=False)  # zoo.compare's Leaderboard

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["leaderboard"]  # its rows are ``rows``
        return data


@dataclass(frozen=True)
class DigitFolders:
    source_train: Path
    source_val: Path
    target_train: Path
    target_val: Path
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


def digit_pixels(image: Any, domain: str = "similar") -> Any:
    """One 8x8 digit (values 0..16) as 8-bit grey pixels, in a ``domain``: ``"similar"`` as
    scanned, ``"inverted"`` (dark strokes on white) or ``"rotated"`` (turned 90 degrees)."""
    import numpy as np

    pixels = (image * (255.0 / 16.0)).clip(0, 255).astype("uint8")
    if domain == "inverted":
        return 255 - pixels
    if domain == "rotated":
        return np.ascontiguousarray(np.rot90(pixels))
    if domain != "similar":
        raise ValueError(f"domain must be similar, inverted or rotated, got {domain!r}")
    return pixels


def write_digit_images(
    folder: Path, images: Any, indices: list[int], *, label: str, domain: str = "similar"
) -> None:
    """Write the digits ``images[i]`` for ``i`` in ``indices`` as PNGs into ``folder/label``
    (file names are the dataset indices, so splits can be checked for overlap)."""
    from PIL import Image

    out = folder / label
    out.mkdir(parents=True, exist_ok=True)
    for i in indices:
        Image.fromarray(digit_pixels(images[i], domain)).save(out / f"{i:04d}.png")


def digits_by_class(labels: Any, *, seed: int = 0) -> dict[int, list[int]]:
    """The dataset indices of each digit, shuffled with ``seed``."""
    rng = random.Random(seed)
    by_digit: dict[int, list[int]] = {}
    for index, target in enumerate(labels):
        by_digit.setdefault(int(target), []).append(index)
    for indices in by_digit.values():
        rng.shuffle(indices)
    return dict(sorted(by_digit.items()))


def write_digits(root: Path, settings: DemoSettings, *, seed: int = 0) -> DigitFolders:
    """Write sklearn's digits as PNG class folders: source (0-4) train/val, target (5-9)
    few-shot train and validation, and test (the rest)."""
    images, labels = load_digits()
    folders = DigitFolders(
        root / "source" / "train",
        root / "source" / "val",
        root / "target" / "train",
        root / "target" / "val",
        root / "target" / "test",
    )
    for digit, indices in digits_by_class(labels, seed=seed).items():
        label = str(digit)
        if digit in SOURCE_DIGITS:
            if settings.source_per_class is not None:
                indices = indices[: settings.source_per_class]
            cut = max(1, len(indices) // 5)
            write_digit_images(folders.source_val, images, indices[:cut], label=label)
            write_digit_images(folders.source_train, images, indices[cut:], label=label)
        else:
            shots, val = settings.shots, settings.val_per_class
            rest = indices[shots + val :]
            if settings.test_per_class is not None:
                rest = rest[: settings.test_per_class]
            write_digit_images(folders.target_train, images, indices[:shots], label=label)
            validation = indices[shots : shots + val]
            write_digit_images(folders.target_val, images, validation, label=label)
            write_digit_images(folders.target_test, images, rest, label=label)
    return folders


def accuracy(model: Any, paths: list[Path]) -> float:
    """Top-1 accuracy on image files whose folder names are their classes (``zoo.predict``)."""
    import zoo

    predictions = zoo.predict(model, paths, topk=1, batch_size=256)
    hits = sum(p.label == path.parent.name for p, path in zip(predictions, paths, strict=True))
    return hits / max(1, len(paths))


def run_demo(
    *,
    fast: bool = False,
    settings: DemoSettings | None = None,
    workdir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
    callback: Any = None,
    compare_callback: Any = None,
) -> DemoResult:
    """Run the demo (see the module docstring); returns what it found.

    ``fast`` uses tiny sizes (for tests). ``workdir`` keeps the PNG folders there (a temporary
    folder otherwise). ``log`` receives one line per stage; ``callback`` sees the source
    task's and the scratch run's progress (an ``AdaptCallback``), ``compare_callback`` the
    comparison's. Saves ``demo-digits-source`` and ``demo-digits`` into the store, replacing
    earlier demo runs.
    """
    import torch

    settings = settings or (FAST if fast else FULL)
    threads = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    try:
        return _run(settings, workdir, log, callback, compare_callback)
    finally:
        torch.set_num_threads(threads)


def _run(
    settings: DemoSettings,
    workdir: str | Path | None,
    log: Callable[[str], None] | None,
    callback: Any,
    compare_callback: Any,
) -> DemoResult:
    import zoo

    say = log or (lambda _line: None)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="zoo-demo-") as tmp:
        root = Path(workdir) if workdir is not None else Path(tmp)
        folders = write_digits(root, settings)
        common = {
            "image_size": settings.image_size,
            "input_config": {"crop_pct": 1.0},
            "batch_size": settings.batch_size,
        }
        say(
            f"1/3  source task: {settings.backbone} from scratch on digits 0-4 "
            f"({settings.source_epochs} epochs)"
        )
        _source, source_history = zoo.adapt(
            settings.backbone,
            folders.source_train,
            folders.source_val,
            policy="full",
            scratch=True,  # the source task is what gives the backbone its features
            epochs=settings.source_epochs,
            lr=settings.source_lr,
            **AUGMENT,
            name=SOURCE_NAME,
            overwrite=True,
            callback=callback,
            **common,
        )
        result = DemoResult(
            backbone=settings.backbone, source_accuracy=source_history.final_accuracy or 0.0
        )
        say(f"     saved {SOURCE_NAME!r}: {percent(result.source_accuracy)} on held-out 0-4")
        say(
            f"2/3  target task: digits 5-9 from {settings.shots} labelled images per class "
            f"(+{settings.val_per_class} per class to validate): zoo.compare from {SOURCE_NAME!r}"
        )
        t0 = time.perf_counter()
        _winner, history, board = zoo.compare(
            SOURCE_NAME,
            folders.target_train,
            folders.target_val,
            policies=list(LADDER),
            epochs=settings.epochs,
            lr=settings.lr,
            name=BEST_NAME,
            overwrite=True,
            callback=compare_callback,
            **common,
        )
        result.compare_seconds = time.perf_counter() - t0
        result.rows = [
            DemoRow(
                policy=row.policy.removeprefix("zoo:"),
                val_accuracy=row.val_acc,
                trainable_percent=row.trainable_percent,
                epochs=row.epochs,
                seconds=row.seconds,
                stopped_early=row.stopped_early,
                trained_on=row.trained_on,
            )
            for row in board.rows
        ]
        result.leaderboard, result.winner, result.why = board, result.rows[0].policy, board.why()
        result.best = BEST_NAME
        result.train_images, result.val_images = history.train_images, history.val_images
        say(f"     {result.why}; saved as {BEST_NAME!r}")
        say("     for contrast: the same network learns the target from random weights (full)")
        scratch, _ = zoo.adapt(
            settings.backbone,
            folders.target_train,
            policy="full",
            scratch=True,
            epochs=settings.epochs,
            lr=settings.lr,
            augment=False,
            callback=callback,
            **common,
        )
        tests = sorted(folders.target_test.rglob("*.png"))
        result.test_images = len(tests)
        say(f"3/3  loading {BEST_NAME!r} back by name: test accuracy and a few predictions")
        loaded = zoo.load(BEST_NAME)
        result.test_accuracy = accuracy(loaded, tests)
        result.scratch_accuracy = accuracy(scratch, tests)
        picks = random.Random(1).sample(tests, min(settings.predictions, len(tests)))
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
