"""The answer of :func:`zoo.compare`: one row per candidate policy, ranked, and why one won.

Pure data (no torch): :class:`Leaderboard` is what ``zoo.compare`` returns next to the model,
what ``--json`` prints (:meth:`Leaderboard.cli_document`) and what the winner's file keeps in
its ``zoo.compare`` metadata (:meth:`Leaderboard.to_dict`). :meth:`Leaderboard.from_dict` is the
one schema of that metadata: a file is untrusted, so every field is checked for type and range
(:mod:`zoo.core.checks`) when it is read back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from zoo.core import checks
from zoo.errors import short_repr

#: Most candidates, notes and rungs a ``zoo.compare`` leaderboard may hold.
MAX_LEADERBOARD_ROWS = 256
_MAX_EPOCHS = 1_000_000
_MAX_SECONDS = 1e9


@dataclass(frozen=True)
class LeaderboardRow:
    """One candidate: its policy (CLI form with arguments), its last validation scores and
    what it cost. ``stopped_early``: cut before the full ``epochs`` (by successive halving or
    by the budget). ``trained_on`` says what its epochs ran on: ``"images"`` (the whole model)
    or ``"activations at 'layer4'"`` (the boundary cache)."""

    policy: str
    val_acc: float
    val_loss: float | None
    trainable_params: int
    trainable_percent: float
    epochs: int
    seconds: float
    stopped_early: bool
    trained_on: str = "images"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "candidate") -> LeaderboardRow:
        """The row of untrusted data, every field checked for type and range (unknown fields
        dropped); raises ``ValueError`` (:class:`~zoo.core.checks.Invalid`) naming ``where``."""
        checks.json_object(data, where)
        try:
            loss = data["val_loss"]
            return cls(
                policy=checks.text(data["policy"], f"{where} policy"),
                val_acc=checks.real(data["val_acc"], f"{where} val_acc", 0, 1),
                val_loss=None if loss is None else checks.real(loss, f"{where} val_loss", 0, 1e12),
                trainable_params=checks.integer(
                    data["trainable_params"], f"{where} trainable_params", 0, checks.MAX_INT
                ),
                trainable_percent=checks.real(
                    data["trainable_percent"], f"{where} trainable_percent", 0, 100
                ),
                epochs=checks.integer(data["epochs"], f"{where} epochs", 0, _MAX_EPOCHS),
                seconds=checks.real(data["seconds"], f"{where} seconds", 0, _MAX_SECONDS),
                stopped_early=checks.flag(data["stopped_early"], f"{where} stopped_early"),
                trained_on=checks.text(data.get("trained_on", "images"), f"{where} trained_on"),
            )
        except KeyError as exc:
            raise ValueError(f"{where} has no {exc.args[0]!r}") from None


def rank_key(val_acc: float, val_loss: float | None, trainable_params: int) -> tuple:
    """Sort key, best first: higher accuracy, then lower loss, then fewer trained parameters."""
    loss = val_loss if val_loss is not None and math.isfinite(val_loss) else math.inf
    return (-val_acc, loss, trainable_params)


#: Below this many validation images the leaderboard says that its accuracies are coarse.
SMALL_VALIDATION = 50


def small_validation_note(images: int) -> str | None:
    """The leaderboard's note on a small validation set (None: ``images`` is enough)."""
    if not 0 < images < SMALL_VALIDATION:
        return None
    return (
        f"the validation set has {images} image(s): one image is {100 / images:.3g} points of "
        "accuracy, so differences below that are noise (ties are broken by validation loss); "
        f"pass more validation data (at least {SMALL_VALIDATION} images) to rank reliably"
    )


def short_policy(spec: str) -> str:
    """``zoo:train-last:n=1`` -> ``train-last:n=1`` (the built-in plugin's prefix dropped)."""
    return spec[4:] if spec.startswith("zoo:") else spec


@dataclass(frozen=True)
class Leaderboard:
    """Every candidate, best first (``rows[0]`` is the winner), and how the comparison ran.

    ``rungs`` are the epoch budgets of successive halving; ``budget`` the time cap in seconds
    (None: none); ``budget_cut`` whether it stopped promoting because of it; ``seconds`` the
    whole comparison's wall time; ``notes`` what a person should know (duplicates collapsed,
    a cache that could not be used, the budget)."""

    rows: tuple[LeaderboardRow, ...]
    epochs: int
    rungs: tuple[int, ...] = ()
    budget: float | None = None
    budget_cut: bool = False
    seconds: float = 0.0
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def winner(self) -> LeaderboardRow:
        return self.rows[0]

    def why(self) -> str:
        """One sentence: why the winner won (against the runner-up)."""
        best = self.winner
        text = (
            f"{short_policy(best.policy)} won with validation accuracy {best.val_acc:.3f}"
            f" after {best.epochs} epoch(s), training {best.trainable_percent:.3g}% of the "
            "parameters"
        )
        if len(self.rows) > 1:
            second = self.rows[1]
            if second.val_acc < best.val_acc:
                text += f"; next best {short_policy(second.policy)} {second.val_acc:.3f}"
            elif (
                best.val_loss is not None
                and second.val_loss is not None
                and (second.val_loss > best.val_loss)
            ):
                text += (
                    f"; tied on accuracy with {short_policy(second.policy)}, lower validation "
                    f"loss ({best.val_loss:.3f} vs {second.val_loss:.3f})"
                )
            else:
                text += f"; tied with {short_policy(second.policy)}, fewer trained parameters win"
        if self.budget_cut:
            text += f" (the {self.budget:g} s budget cut the comparison short)"
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the ``zoo.compare`` metadata of the saved winner)."""
        return {
            "winner": self.winner.policy,
            "epochs": self.epochs,
            "rungs": list(self.rungs),
            "budget": self.budget,
            "budget_cut": self.budget_cut,
            "seconds": self.seconds,
            "candidates": [row.to_dict() for row in self.rows],
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Leaderboard:
        """The inverse of :meth:`to_dict`, for untrusted data (a file's ``zoo.compare``): every
        field checked for type and range (finite numbers, bounded sizes, texts without control
        characters, the winner the first candidate); unknown fields are dropped. Raises
        ``ValueError`` (:class:`~zoo.core.checks.Invalid`) saying what is wrong."""
        checks.json_object(data, "the leaderboard")
        rows = checks.sequence(data.get("candidates"), "candidates", (1, MAX_LEADERBOARD_ROWS))
        candidates = [LeaderboardRow.from_dict(row, f"candidate {i}") for i, row in enumerate(rows)]
        winner = checks.text(data.get("winner"), "winner")
        if winner != candidates[0].policy:
            raise ValueError(f"winner {short_repr(winner)} is not the first candidate")
        budget = data.get("budget")
        notes = checks.sequence(data.get("notes", []), "notes", (0, MAX_LEADERBOARD_ROWS))
        rungs = checks.int_list(
            data.get("rungs", []), "rungs", size=(0, 64), low=1, high=_MAX_EPOCHS
        )
        return cls(
            rows=tuple(candidates),
            epochs=checks.integer(data.get("epochs"), "epochs", 1, _MAX_EPOCHS),
            rungs=tuple(rungs),
            budget=None if budget is None else checks.real(budget, "budget", 0, _MAX_SECONDS),
            budget_cut=checks.flag(data.get("budget_cut", False), "budget_cut"),
            seconds=checks.real(data.get("seconds", 0.0), "seconds", 0, _MAX_SECONDS),
            notes=tuple(checks.text(n, "note") for n in notes),
        )

    def cli_document(self, saved: str | None) -> dict[str, Any]:
        """Exactly what ``zoo compare --json`` prints."""
        return {
            "saved": saved,
            "winner": {"policy": self.winner.policy, "val_acc": float(self.winner.val_acc)},
            "candidates": [
                {
                    "policy": row.policy,
                    "val_acc": float(row.val_acc),
                    "trainable_params": int(row.trainable_params),
                    "seconds": float(row.seconds),
                    "epochs": int(row.epochs),
                    "stopped_early": bool(row.stopped_early),
                }
                for row in self.rows
            ],
        }
