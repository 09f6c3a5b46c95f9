"""Rendering of ``zoo compare``: progress lines, the leaderboard and why the winner won.

The leaderboard uses the listings' table style (:mod:`zoo.cli.columns`); ``zoo inspect``
shows the same table from a saved winner's ``zoo.compare`` metadata (untrusted text: every
cell goes through :func:`~zoo.cli.output.printable`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rich.text import Text

from zoo.adaptation.history import AdaptCallback
from zoo.cli.columns import Col, Columns
from zoo.cli.output import human_count, percent, plural, printable
from zoo.io.leaderboard import Leaderboard, short_policy

if TYPE_CHECKING:
    from rich.console import Console

    from zoo.adaptation.history import EpochRecord, History


def leaderboard_table(board: Leaderboard, *, title: str | None = None) -> Columns:
    """One row per candidate, the winner first (marked ``*``)."""
    rows = []
    for i, row in enumerate(board.rows):
        mark = "*" if i == 0 else ""
        rows.append(
            (
                Text(printable(mark + short_policy(row.policy)), style="bold" if i == 0 else ""),
                f"{row.val_acc:.3f}",
                f"{row.val_loss:.4f}" if row.val_loss is not None else "-",
                human_count(row.trainable_params),
                percent(row.trainable_percent, 100),
                str(row.epochs),
                f"{row.seconds:.1f}s",
                "yes" if row.stopped_early else "",
                printable(row.trained_on),
            )
        )
    columns = (
        Col("policy", style="cyan"),
        Col("val acc", right=True),
        Col("val loss", right=True, drop=2),
        Col("trained", right=True),
        Col("%", right=True, drop=3),
        Col("epochs", right=True),
        Col("time", right=True, drop=1),
        Col("cut early", drop=4),
        Col("trained on", shrink=True, drop=5, min_width=10),
    )
    if title is None:
        rungs = ", ".join(str(r) for r in board.rungs) or str(board.epochs)
        candidates = plural(len(board.rows), "policy", "policies")
        title = f"compare: {candidates}, successive halving at epochs {rungs}"
    return Columns(columns, rows, title=title)


def why_text(board: Leaderboard) -> Text:
    return Text(printable(board.why()), style="bold")


def notes_text(board: Leaderboard) -> Text:
    return Text("\n".join(printable(f"note: {n}") for n in board.notes), style="yellow")


def board_from_metadata(value: Mapping[str, Any]) -> Leaderboard:
    """The leaderboard of a saved file's (checked) ``zoo.compare`` metadata."""
    return Leaderboard.from_dict(value)


class CompareProgress(AdaptCallback):
    """One line per candidate epoch and per rung, on ``console``."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def on_start(self, info: Mapping[str, Any]) -> None:
        policies = ", ".join(short_policy(p) for p in info.get("policies", []))
        self.console.print(
            Text(
                printable(
                    f"comparing {plural(len(info.get('policies', [])), 'policy', 'policies')} on "
                    f"{info.get('train_images')} training / {info.get('val_images')} validation "
                    f"images, {info.get('epochs')} epochs each at most: {policies}"
                )
            )
        )
        for note in info.get("notes", []):
            self.console.print(Text(printable(f"note: {note}"), style="yellow"))

    def on_features_start(self, split: str, batches: int) -> None:
        self.console.print(
            Text(
                f"caching activations at the freeze boundaries ({split}, {batches} batches)",
                style="dim",
            )
        )

    def on_candidate_epoch(self, policy: str, record: EpochRecord, rung: int) -> None:
        acc = record.val_accuracy if record.val_accuracy is not None else 0.0
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
        pass
