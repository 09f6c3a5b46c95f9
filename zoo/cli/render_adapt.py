"""Rich output of ``zoo adapt`` and ``zoo demo``.

:class:`AdaptProgress` is the live view (epoch and batch bars with loss, accuracy and
images/s); the other functions return renderables (tested on ``Console(file=StringIO())``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console, Group
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from zoo.adaptation.config import describe_augment
from zoo.adaptation.job import AdaptCallback, EpochRecord, History
from zoo.cli.columns import Col, Columns
from zoo.cli.output import Fields, Wrapped, bar, human_count, percent, plural, printable


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _seconds(value: float) -> str:
    return f"{value:.1f}s" if value < 120 else f"{value / 60:.1f}min"


def policy_text(policy: str, args: Mapping[str, Any] | None) -> str:
    """``zoo:freeze-to:depth=4``: a policy with the arguments it ran with."""
    return policy + (":" + ",".join(f"{k}={v}" for k, v in args.items()) if args else "")


def cache_text(used: bool, note: str) -> str:
    """The feature-cache decision in words: what the run does, and why."""
    if used:
        return f"used — {note}"
    reason = note.removeprefix("plain loop: ").strip()
    reason = {
        "the plan trains more than one head module": "the plan trains layers below the head",
        "feature cache turned off": "the feature cache is turned off",
    }.get(reason, reason)
    return f"images go through the whole model every epoch ({reason})" if reason else note


def augment_text(augment: Any, ema: Any) -> str:
    """``off`` or what the augmentation does, and the EMA of the weights when there is one
    (values of a saved file's metadata are untrusted: shown as text)."""
    text = describe_augment(augment)
    if ema:
        text += f"; EMA of the weights, decay {ema}"
    return printable(text)


def start_text(info: Mapping[str, Any]) -> Group:
    """What is about to happen: model and weights, policy (what auto chose), data, device,
    cache decision (the policy's spec and the notes wrap between words, never inside one)."""
    head = Text()
    head.append("adapting ", style="bold")
    head.append(str(info.get("start", "")), style="bold cyan")
    policy = policy_text(str(info.get("policy", "")), info.get("policy_args"))
    lines: list[Any] = [head, Wrapped(printable(f"policy {policy}"))]
    lines += [
        Wrapped(printable(f"  {note}"), style="dim", indent=4) for note in info.get("notes") or ()
    ]
    text = Text()
    classes = list(info.get("classes", []))
    shown = ", ".join(classes[:8]) + (f", … (+{len(classes) - 8})" if len(classes) > 8 else "")
    train, val = int(info.get("train_images", 0)), int(info.get("val_images", 0))
    text.append(
        f"data: {train} training / {plural(val, 'validation image')}, "
        f"{plural(len(classes), 'class')} ({shown})\n"
    )
    if info.get("skipped"):
        text.append(f"skipped {plural(int(info['skipped']), 'unreadable image')}\n", style="yellow")
    size = info.get("input_size") or []
    where = f"{info.get('device', 'cpu')}"
    if int(info.get("world_size", 1)) > 1:
        where += f" x {info['world_size']} processes (DDP)"
    text.append(
        f"input {'x'.join(str(v) for v in size[1:])}, augmentation "
        f"{augment_text(info.get('augment'), info.get('ema'))}, {where}\n"
    )
    cache = bool(info.get("feature_cache"))
    text.append(
        "feature cache: " + cache_text(cache, str(info.get("note", ""))),
        style="green" if cache else "dim",
    )
    return Group(*lines, text)


def epoch_line(record: EpochRecord, epochs: int) -> Text:
    """One finished epoch, as printed above the progress bars."""
    text = Text(f"epoch {record.epoch}/{epochs}  ", style="bold")
    text.append(f"loss {record.train_loss:.4f}  acc {percent(record.train_accuracy)}")
    if record.val_accuracy is not None:
        text.append(f"  val loss {_num(record.val_loss)}  ")
        text.append(f"val acc {percent(record.val_accuracy)}", style="bold green")
    text.append(f"  {_seconds(record.seconds)}, {record.images_per_second:,.0f} img/s", style="dim")
    note = record.loader_note
    if note:
        text.append(f"  {note}", style="yellow")
    return text


class AdaptProgress(AdaptCallback):
    """Live progress of :func:`zoo.adapt` on a rich console: an epoch bar and a batch bar."""

    def __init__(
        self, console: Console, *, show_start: bool = True, epoch_lines: bool = True
    ) -> None:
        self.console = console
        self.show_start = show_start
        self.epoch_lines = epoch_lines
        self.progress = Progress(
            TextColumn("{task.description:<12}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,  # piped output keeps only the epoch lines
        )
        self.epochs = 0
        self._epoch: TaskID | None = None
        self._batch: TaskID | None = None
        self._started = False

    def _start(self) -> None:
        if not self._started:
            self.progress.start()
            self._started = True

    def close(self) -> None:
        if self._started:
            self.progress.stop()
            self._started = False

    def on_start(self, info: Mapping[str, Any]) -> None:
        self.epochs = int(info.get("epochs", 0))
        for task in (self._epoch, self._batch):  # a callback may serve several runs
            if task is not None:
                self.progress.remove_task(task)
        self._epoch = self._batch = None
        if self.show_start:
            self.console.print(start_text(info))
        self._start()

    def on_features_start(self, split: str, batches: int) -> None:
        if self._batch is None:
            self._batch = self.progress.add_task(f"features {split}", total=batches, stats="")
        else:
            self.progress.reset(
                self._batch, total=batches, description=f"features {split}", stats=""
            )

    def on_features_batch(self, split: str, done: int, batches: int) -> None:
        if self._batch is not None:
            self.progress.update(self._batch, completed=done)

    def on_epoch_start(self, epoch: int, epochs: int, batches: int) -> None:
        if self._epoch is None:
            self._epoch = self.progress.add_task("epochs", total=epochs, stats="")
        if self._batch is None:
            self._batch = self.progress.add_task(f"epoch {epoch}", total=batches, stats="")
        else:
            self.progress.reset(self._batch, total=batches, description=f"epoch {epoch}", stats="")

    def on_batch_end(
        self,
        epoch: int,
        batch: int,
        batches: int,
        loss: float,
        accuracy: float,
        images_per_second: float,
    ) -> None:
        if self._batch is not None:
            self.progress.update(
                self._batch,
                completed=batch,
                stats=f"loss {loss:.4f}  acc {percent(accuracy)}  {images_per_second:,.0f} img/s",
            )

    def on_epoch_end(self, record: EpochRecord) -> None:
        if self.epoch_lines:
            self.progress.console.print(epoch_line(record, self.epochs))
        if self._epoch is not None:
            last = percent(
                record.val_accuracy if record.val_accuracy is not None else record.train_accuracy
            )
            self.progress.update(self._epoch, completed=record.epoch, stats=f"acc {last}")

    def on_plan_change(self, epoch: int, plan: Any) -> None:
        if not self.epoch_lines:
            return
        self.progress.console.print(
            Text(
                f"epoch {epoch}: the schedule unfroze more, "
                f"{plural(len(plan.trainable), 'parameter tensor')} train now",
                style="cyan",
            )
        )

    def on_end(self, history: History) -> None:
        self.close()


def history_table(history: History) -> Columns:
    """One row per epoch: losses, accuracies, time and throughput (at narrow widths the
    throughput, the trainable count, the time and the training loss are left out, in that
    order; the accuracies stay)."""
    rows = [
        (
            str(e.epoch),
            _num(e.train_loss),
            percent(e.train_accuracy),
            _num(e.val_loss),
            percent(e.val_accuracy),
            human_count(e.trainable_params),
            _seconds(e.seconds),
            f"{e.images_per_second:,.0f}",
        )
        for e in history.epochs
    ]
    columns = (
        Col("epoch", right=True),
        Col("train loss", right=True, drop=1),
        Col("train acc", right=True),
        Col("val loss", right=True, drop=2),
        Col("val acc", right=True),
        Col("trainable", right=True, drop=3),
        Col("time", right=True, drop=4),
        Col("img/s", right=True, drop=5),
    )
    return Columns(columns, rows, title="training history")


def summary_table(history: History) -> Fields:
    """The final summary: where it was saved, what trained, how well, how long (each value
    wrapped between words at the width it is printed at)."""
    rows: list[tuple[str, str]] = []
    if history.name:
        rows.append(("saved as", f"{history.name}  ({history.path})"))
    else:
        rows.append(("saved as", "not saved (no name)"))
    rows.append(("started from", history.start))
    rows.append(("policy", policy_text(history.policy, history.policy_args)))
    share = history.trainable_fraction
    rows.append(
        (
            "trainable",
            f"{human_count(history.trainable_params)} of "
            f"{human_count(history.total_params)} ({percent(share)}) {bar(share, 12)}",
        )
    )
    rows.append(
        (
            "classes",
            f"{len(history.classes)}: "
            + ", ".join(history.classes[:10])
            + (" …" if len(history.classes) > 10 else ""),
        )
    )
    rows.append(
        (
            "images",
            f"{history.train_images} train, {history.val_images} validation"
            + (f", {len(history.skipped)} skipped (unreadable)" if history.skipped else ""),
        )
    )
    if history.epochs:
        last = history.epochs[-1]
        rows.append(
            (
                "final",
                f"train acc {percent(last.train_accuracy)}, val acc "
                f"{percent(last.val_accuracy)}, best {percent(history.best_accuracy)}",
            )
        )
    rows.append(("augmentation", augment_text(history.augment, history.ema)))
    rows.append(
        (
            "feature cache",
            cache_text(history.feature_cache, history.feature_cache_note)
            + (
                f" ({_seconds(history.feature_seconds)} to compute)"
                if history.feature_cache
                else ""
            ),
        )
    )
    rows.append(
        (
            "time",
            f"{_seconds(history.total_seconds)} on {history.device}"
            + (f" x {history.world_size}" if history.world_size > 1 else ""),
        )
    )
    rows += [("note", note) for note in history.notes]
    return Fields(rows, title="summary")


def skipped_text(history: History, limit: int = 10) -> Text:
    """The files that were left out, one per line (names escaped: a file name is untrusted)."""
    text = Text()
    for item in history.skipped[:limit]:
        text.append(
            f"skipped {printable(item['path'])}: {printable(item['reason'])}\n", style="yellow"
        )
    if len(history.skipped) > limit:
        text.append(f"… and {len(history.skipped) - limit} more\n", style="yellow")
    return text
