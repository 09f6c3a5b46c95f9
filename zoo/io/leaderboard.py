"""The answer of :func:`zoo.compare`: one row per candidate policy, ranked, and why one won.

Pure data (no torch): :class:`Leaderboard` is what ``zoo.compare`` returns next to the model,
what ``--json`` prints (:meth:`Leaderboard.cli_document`) and what the winner's file keeps in
its ``zoo.compare`` metadata (:meth:`Leaderboard.to_dict`). :meth:`Leaderboard.from_dict` is the
one schema of that metadata: a file is untrusted, so every field is checked for type and range
(:mod:`zoo.core.checks`) when it is read back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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
    #: the largest learning rate among its trained parameters (None: a file from before)
    lr: float | None = None
    #: the rates it tried on cached activations, the best kept (empty: only ``lr``)
    lr_tried: tuple[float, ...] = ()
    #: on how many splits of the labelled images it was scored (see
    #: :data:`NOISE_VALIDATION`): ``val_acc`` is its own model's score on the run's split,
    #: ``val_acc_mean`` and ``val_acc_std`` the mean and spread over all of them (None: one
    #: split), ``interval`` the mean plus and minus one standard error (:func:`interval`)
    splits: int = 1
    val_acc_mean: float | None = None
    val_acc_std: float | None = None
    interval: tuple[float, float] | None = None
    #: its mean lies within one standard error of the best candidate's (inside the best one's
    #: interval): the leaderboard cannot tell them apart
    tied: bool = False

    @property
    def score(self) -> float:
        """What ranks it: the mean over its splits, or its validation accuracy."""
        return self.val_acc if self.val_acc_mean is None else self.val_acc_mean

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["lr_tried"] = list(self.lr_tried)
        data["interval"] = list(self.interval) if self.interval is not None else None
        return data

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
                lr=_optional_real(data.get("lr"), f"{where} lr", _MAX_LR),
                lr_tried=tuple(
                    checks.real(v, f"{where} lr_tried", 0, _MAX_LR)
                    for v in checks.sequence(data.get("lr_tried", []), f"{where} lr_tried", (0, 16))
                ),
                splits=checks.integer(data.get("splits", 1), f"{where} splits", 1, 1000),
                val_acc_mean=_optional_real(data.get("val_acc_mean"), f"{where} val_acc_mean", 1),
                val_acc_std=_optional_real(data.get("val_acc_std"), f"{where} val_acc_std", 1),
                interval=_interval(data.get("interval"), f"{where} interval"),
                tied=checks.flag(data.get("tied", False), f"{where} tied"),
            )
        except KeyError as exc:
            raise ValueError(f"{where} has no {exc.args[0]!r}") from None


_MAX_LR = 1e6


def _optional_real(value: Any, what: str, high: float) -> float | None:
    return None if value is None else checks.real(value, what, 0, high)


def _interval(value: Any, what: str) -> tuple[float, float] | None:
    if value is None:
        return None
    low, high = (checks.real(v, what, 0, 1) for v in checks.sequence(value, what, (2, 2)))
    if low > high:
        raise ValueError(f"{what} runs from {low} down to {high}")
    return low, high


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
        "accuracy, so differences below that are noise (ranked within the noise: see the "
        "intervals); "
        f"pass more validation data (at least {SMALL_VALIDATION} images) to rank reliably"
    )


#: Below this many validation images :func:`zoo.compare` ranks within the noise. The standard
#: error of an accuracy measured on ``v`` images is ``sqrt(p(1-p)/v)``: at ``p = 0.8``, 2.8
#: points on 200 images, 5.7 on 50, 13 on 10 — as large as the differences between policies it
#: decides on (0.4 to 5 points on the digits of docs/compare.md). Below it, candidates on
#: cached activations whose epochs are cheap are scored on :data:`SPLITS` stratified splits of
#: the labelled images, every candidate trained to the end gets an interval, and those whose
#: mean lies inside the best one's interval are marked tied (the best mean still wins).
NOISE_VALIDATION = 200
#: Stratified splits of the labelled images a cached candidate is scored on (the run's own
#: split and this many minus one others, each with as many validation images per class).
SPLITS = 5


def spread(scores: Sequence[float]) -> float:
    """The sample standard deviation of ``scores`` (0 for one)."""
    if len(scores) < 2:
        return 0.0
    mean = sum(scores) / len(scores)
    return math.sqrt(sum((x - mean) ** 2 for x in scores) / (len(scores) - 1))


def interval(scores: Sequence[float], val_images: int, train_images: int) -> tuple[float, float]:
    """The mean of ``scores`` (one accuracy per split) plus and minus one standard error: a
    candidate whose mean lies inside the best one's interval is within one standard error of
    it, and so tied with it (:func:`choose_within_noise`: a tie is marked, not a new choice).

    One split: Wilson's score interval (z = 1) for ``val_images`` Bernoulli trials. Several
    splits of the same images (each ``val_images`` validation, ``train_images`` training): the
    standard error of their mean with Nadeau and Bengio's correction for overlapping training
    sets (variance times ``1/R + val/train`` instead of ``1/R``; *Inference for the
    Generalization Error*, Machine Learning 2003) — without it, far too narrow."""
    mean = sum(scores) / len(scores)
    if len(scores) < 2:
        return wilson(mean, val_images)
    error = spread(scores) * math.sqrt(1 / len(scores) + val_images / max(1, train_images))
    return max(0.0, mean - error), min(1.0, mean + error)


def wilson(p: float, n: int, z: float = 1.0) -> tuple[float, float]:
    """Wilson's score interval of a proportion ``p`` observed on ``n`` trials (``z``
    standard errors wide on each side)."""
    if n <= 0:
        return 0.0, 1.0
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def choose_within_noise(rows: Sequence[LeaderboardRow]) -> tuple[int, list[int]]:
    """``(winner, tied)``, indices into ``rows``: the winner is the leader, the best by
    :func:`rank_key` (mean accuracy over its splits, then validation loss, then fewer trained
    parameters) among the rows with an interval; the rows whose mean lies inside the leader's
    interval — within one standard error of it — are tied with it: the leaderboard says so, and
    ``--blend`` averages candidates like them, but a tie does not move the choice.

    Not the one-standard-error rule's "the simplest tied model wins": on the cells of two real
    data sets (docs/compare.md, "Evidence") it chose ``linear-probe`` in the small cells, far
    below the leader on the test digits: a frozen backbone is not the safer choice when the
    target differs from the source. Nor "intervals overlap": that ties candidates up to two
    standard errors apart."""
    eligible = [i for i, r in enumerate(rows) if r.interval is not None]
    if not eligible:
        return 0, []
    leader = min(
        eligible,
        key=lambda i: rank_key(rows[i].score, rows[i].val_loss, rows[i].trainable_params),
    )
    low = rows[leader].interval[0]  # type: ignore[index]
    tied = [i for i in eligible if rows[i].score >= low]
    return leader, tied if len(tied) > 1 else []


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
    #: the winner was retrained on the training and validation images together (its rate
    #: and epochs as measured): the saved model is that refit
    refit: bool = False

    @property
    def winner(self) -> LeaderboardRow:
        return self.rows[0]

    def why(self) -> str:
        """One sentence: why the winner won (against the runner-up)."""
        best = self.winner
        text = (
            f"{short_policy(best.policy)} won with validation accuracy {best.val_acc:.3f}"
            + (f" ({best.score:.3f} mean of {best.splits} splits)" if best.splits > 1 else "")
            + f" after {best.epochs} epoch(s), training {best.trainable_percent:.3g}% of the "
            "parameters"
        )
        tied = [short_policy(r.policy) for r in self.rows[1:] if r.tied]
        if best.tied and tied:
            text += (
                f"; tied within the noise with {', '.join(tied)} (within one standard error "
                "of the winner's mean: this validation set cannot tell them apart; more "
                "validation images, or --blend, would)"
            )
        elif len(self.rows) > 1:
            second = self.rows[1]
            if second.score < best.score:
                text += f"; next best {short_policy(second.policy)} {second.score:.3f}"
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
        if self.refit:
            text += "; then retrained on the training and validation images together (refit)"
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
            "refit": self.refit,
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
            refit=checks.flag(data.get("refit", False), "refit"),
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
                    "lr": row.lr,
                    "tied": bool(row.tied),
                }
                for row in self.rows
            ],
        }
