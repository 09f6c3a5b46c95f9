"""Rendering of ``zoo compare``: progress lines, the leaderboard and why the winner won.

The leaderboard uses the listings' table style (:mod:`zoo.cli.columns`); ``zoo inspect``
shows the same table from a saved winner's ``zoo.compare`` metadata (untrusted text: every
cell goes through :func:`~zoo.cli.output.printable`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from zoo.adaptation.history import AdaptCallback
from zoo.cli.columns import Col, Columns
from zoo.cli.output import Wrapped, human_count, percent, plural, printable
from zoo.io.leaderboard import Leaderboard, short_policy

if TYPE_CHECKING:
    from rich.console import Console

    from zoo.adaptation.history import EpochRecord, History


def leaderboard_table(board: Leaderboard, *, title: str | None = None) -> Columns:
    """One row per candidate, the winner first (marked ``*``). Ranked within the noise, a
    ``mean ± sd`` column (over the splits a candidate was scored on) and a ``tied`` column."""
    noisy = any(row.interval is not None for row in board.rows)
    rows = []
    for i, row in enumerate(board.rows):
        mark = "*" if i == 0 else ""
        cells = [
            Text(printable(mark + short_policy(row.policy)), style="bold" if i == 0 else ""),
            f"{row.val_acc:.3f}",
        ]
        if noisy:
            cells.append(_mean_sd(row.val_acc_mean, row.val_acc_std, row.splits))
        cells += [
            f"{row.val_loss:.4f}" if row.val_loss is not None else "-",
            human_count(row.trainable_params),
            percent(row.trainable_percent, 100),
            f"{row.lr:.3g}" if row.lr is not None else "-",
            str(row.epochs),
            f"{row.seconds:.1f}s",
            "yes" if row.stopped_early else "",
        ]
        if noisy:
            cells.append("tied" if row.tied else "")
        rows.append((*cells, printable(row.trained_on)))
    # the policy wraps at its commas; accuracy and trained share always stay (the highest
    # drop goes first at narrow widths)
    columns = [
        Col("policy", style="cyan", shrink=True, fold=True, min_width=14),
        Col("val acc", right=True),
    ]
    if noisy:
        columns.append(Col("mean ± sd", right=True, drop=3))
    columns += [
        Col("val loss", right=True, drop=4),
        Col("trained", right=True, drop=2),
        Col("%", right=True),
        Col("lr", right=True, drop=5),
        Col("epochs", right=True, drop=1),
        Col("time", right=True, drop=6),
        Col("cut early", drop=7),
    ]
    if noisy:
        columns.append(Col("tied", drop=3))
    columns.append(Col("trained on", shrink=True, drop=8, min_width=10))
    return Columns(tuple(columns), rows, title=title if title is not None else board_title(board))


def board_title(board: Leaderboard) -> str:
    """What the comparison did, as its notes say it: the rungs of successive halving, or that
    every candidate trained to the end (one rung: no halving)."""
    count = f"compare: {plural(len(board.rows), 'policy', 'policies')}"
    if len(board.rungs) > 1:
        rungs = ", ".join(str(r) for r in board.rungs)
        return f"{count}, successive halving: cuts after epochs {rungs.rpartition(', ')[0]}"
    epochs = plural(board.epochs, "epoch", "epochs")
    return f"{count}, each trained {epochs} at most (no successive halving)"


def _mean_sd(mean: float | None, sd: float | None, splits: int) -> str:
    """``0.812 ± 0.031 (5)``: the mean and spread over ``splits`` splits (``-``: one)."""
    if mean is None or sd is None:
        return "-"
    return f"{mean:.3f} ± {sd:.3f} ({splits})"


def why_text(board: Leaderboard) -> Text:
    return Text(printable(board.why()), style="bold")


def notes_text(board: Leaderboard) -> Text:
    return Text("\n".join(printable(f"note: {n}") for n in board.notes), style="yellow")


def board_from_metadata(value: Mapping[str, Any]) -> Leaderboard:
    """The leaderboard of a saved file's (checked) ``zoo.compare`` metadata."""
    return Leaderboard.from_dict(value)


class CompareProgress(AdaptCallback):
    """Progress of ``zoo compare`` on ``console``: a progress bar of the candidates' epochs on
    a terminal, one line per candidate epoch when piped; one line per rung either way."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress: Progress | None = None
        self._task: TaskID | None = None

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def on_start(self, info: Mapping[str, Any]) -> None:
        if "policies" not in info:  # the winner's refit: a run of its own, after the ranking
            self.close()
            self.console.print(
                Text(
                    printable(
                        f"refit: {short_policy(str(info.get('policy', '')))} retrains on "
                        f"{info.get('train_images')} images (training and validation "
                        f"together), {info.get('epochs')} epochs"
                    ),
                    style="dim",
                )
            )
            return
        policies = ", ".join(short_policy(p) for p in info.get("policies", []))
        if self.console.is_terminal:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(bar_width=20),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            # an estimate: halving drops candidates, but a rate sweep and repeated splits add
            # epochs (on_candidate_epoch counts on past it without a total)
            total = len(info.get("policies", [])) * int(info.get("epochs", 1))
            self._task = self.progress.add_task("candidate epochs", total=total)
            self.progress.start()
        self.console.print(  # the specs wrap between their arguments, never inside one
            Wrapped(
                printable(
                    f"comparing {plural(len(info.get('policies', [])), 'policy', 'policies')} on "
                    f"{info.get('train_images')} training / {info.get('val_images')} validation "
                    f"images, {info.get('epochs')} epochs each at most: {policies}"
                )
            )
        )
        for note in info.get("notes", []):
            self.console.print(Wrapped(printable(f"note: {note}"), style="yellow"))

    def on_features_start(self, split: str, batches: int) -> None:
        self.console.print(
            Text(
                f"caching activations at the freeze boundaries ({split}, {batches} batches)",
                style="dim",
            )
        )

    def on_candidate_epoch(self, policy: str, record: EpochRecord, rung: int) -> None:
        acc = record.val_accuracy if record.val_accuracy is not None else 0.0
        if self.progress is not None and self._task is not None:
            task = next(t for t in self.progress.tasks if t.id == self._task)
            if task.total is not None and task.completed >= task.total:
                task.total = None  # past the estimate: "13/?", never a bar past its end
            self.progress.update(
                self._task,
                advance=1,
                description=printable(f"{short_policy(policy)[:24]} val acc {acc:.3f}"),
            )
            return
        self.console.print(
            Text(
                printable(
                    f"  {short_policy(policy):<28} epoch {record.epoch:>3}  "
                    f"train loss {record.train_loss:.4f}  val acc {acc:.3f}  val loss "
                    + (f"{record.val_loss:.4f}" if record.val_loss is not None else "-")
                    + f"  {record.seconds:.2f}s"
                )
            )
        )

    def on_epoch_end(self, record: EpochRecord) -> None:
        """An epoch of the winner's refit (the candidates report through on_candidate_epoch)."""
        self.console.print(
            Text(
                f"  refit epoch {record.epoch:>3}  train loss {record.train_loss:.4f}  "
                f"{record.seconds:.2f}s",
                style="dim",
            )
        )

    def on_rung_end(self, rung: int, epochs: int, kept: list[str], dropped: list[str]) -> None:
        self.console.print(
            Text(
                printable(
                    f"rung {rung + 1} ({epochs} epochs): keep "
                    + ", ".join(short_policy(p) for p in kept)
                    + (f"; drop {', '.join(short_policy(p) for p in dropped)}" if dropped else "")
                ),
                style="bold",
            )
        )

    def on_end(self, history: History) -> None:
        self.close()
