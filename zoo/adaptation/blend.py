"""Blends of compare's candidates: a greedy soup and WiSE-FT, scored on the validation set.

Every candidate of :func:`zoo.compare` starts from the same weights (same architecture, same
starting tensors, the same new head), and a parameter a candidate froze is still its starting
value, so any two candidates' weights can be averaged tensor by tensor. Two blends
(``compare(..., blend=True)``, ``--blend``) become rows of the leaderboard:

* **soup** — a greedy soup (Wortsman et al., *Model soups*, ICML 2022): the candidates in
  order of their validation score; each one joins the average when the average with it scores
  at least as well on validation — accuracy, then loss. (The paper asks accuracy alone; on the
  transfer evidence's 5 to 130 validation images that formed a soup in 14 of 18 digits
  comparisons, and 11 of the 14 were below compare's model on the test set (2 above, 1 equal):
  the loss is what tells a soup that still fits the few validation images from one that
  generalizes.)
  Averaging runs that share a start is what makes this work on CNNs (Ramé et al., *DiWA*,
  2022); candidates that add modules (adapters) are left out, since their tensors have no
  counterpart in the others.
* **WiSE-FT** (Wortsman et al., *Robust fine-tuning of zero-shot models*, CVPR 2022): the
  weights interpolated between the start and the best candidate that trains more than the
  head, ``(1 - alpha) * start + alpha * tuned``, with ``alpha`` chosen on validation from
  :data:`ALPHAS`. The start has no head for these classes (it is new and random), so the
  start's head is the tuned one: ``alpha = 0`` is the pretrained body under the tuned head.

A blend that ranks first is saved like any model: its plan trains what any ingredient trained
(policy ``blend``) and its training record (``zoo.training``) holds ``blend``: the kind, the
ingredients (policy specs) and ``alpha``. Where compare refits its winner (a small validation
set), a blend's refit is its recipe again on refit ingredients (:func:`blended`): each
ingredient retrained from the start on the training and validation images, then averaged or
interpolated at the ``alpha`` measured.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from zoo.io.leaderboard import (
    NOISE_VALIDATION,
    Leaderboard,
    LeaderboardRow,
    rank_key,
    short_policy,
    wilson,
)
from zoo.plans.plan import Plan

if TYPE_CHECKING:
    from zoo.adaptation.distributed import DistContext
    from zoo.adaptation.halving import Candidate

#: The ``alpha`` values WiSE-FT tries (0: the start's body, 1: the tuned weights).
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
#: The most candidates a soup considers (the best by validation score).
MAX_INGREDIENTS = 5
#: The policy name a blend's plan records.
BLEND_POLICY = "blend"

State = dict[str, torch.Tensor]


@dataclass
class Blend:
    """A blend of candidates' weights and its validation scores."""

    kind: str  # "soup" or "wise-ft"
    ingredients: tuple[str, ...]
    alpha: float | None
    state: State
    plan: Plan
    val_acc: float
    val_loss: float | None
    epochs: int
    seconds: float

    @property
    def label(self) -> str:
        """How the leaderboard names it: ``soup(full + train-last:n=2)``,
        ``wise-ft(full, alpha=0.5)``."""
        names = [short_policy(s) for s in self.ingredients]
        if self.kind == "soup":
            return f"soup({' + '.join(names)})"
        return f"wise-ft({names[0]}, alpha={self.alpha:g})"

    @property
    def record(self) -> dict[str, Any]:
        """What the saved model's training record keeps of it (``zoo.training`` ``blend``)."""
        return {"kind": self.kind, "ingredients": list(self.ingredients), "alpha": self.alpha}

    def row(self, total_params: int) -> LeaderboardRow:
        trained = self.plan.numel(trainable=True)
        what = (
            f"weights of {len(self.ingredients)} candidates averaged"
            if self.kind == "soup"
            else f"weights between the start and {short_policy(self.ingredients[0])}"
        )
        return LeaderboardRow(
            policy=self.label,
            val_acc=self.val_acc,
            val_loss=self.val_loss,
            trainable_params=trained,
            trainable_percent=100.0 * trained / total_params if total_params else 0.0,
            epochs=self.epochs,
            seconds=round(self.seconds, 4),
            stopped_early=False,
            trained_on=what,
        )


# ---------------------------------------------------------------- weights


def average(states: Sequence[Mapping[str, torch.Tensor]]) -> State:
    """The uniform average of ``states`` (same keys and shapes), tensor by tensor; a tensor
    that is not floating point (a batch counter) is the first state's."""
    first = states[0]
    out: State = {}
    for key, tensor in first.items():
        if tensor.is_floating_point():
            out[key] = torch.stack([s[key].detach() for s in states]).mean(0).to(tensor.dtype)
        else:
            out[key] = tensor.detach().clone()
    return out


def interpolate(
    start: Mapping[str, torch.Tensor], tuned: Mapping[str, torch.Tensor], alpha: float
) -> State:
    """``(1 - alpha) * start + alpha * tuned`` tensor by tensor (exactly ``start`` at 0 and
    ``tuned`` at 1); a tensor that is not floating point is ``tuned``'s."""
    return {
        key: torch.lerp(start[key].detach(), value.detach(), alpha)
        if value.is_floating_point()
        else value.detach().clone()
        for key, value in tuned.items()
    }


# ---------------------------------------------------------------- scoring


class Scorer:
    """Validation accuracy and loss of states loaded into one working copy of the model,
    summed over the ranks (the same decision on each)."""

    def __init__(self, base: nn.Module, val: Any, ctx: DistContext) -> None:
        self.model = copy.deepcopy(base)
        self.model.eval()
        self.val = val
        self.ctx = ctx
        self.loss_fn = nn.CrossEntropyLoss(reduction="sum")

    def __call__(self, state: Mapping[str, torch.Tensor]) -> tuple[float, float | None]:
        self.model.load_state_dict(state)
        return self.measure(self.model)

    def measure(self, model: nn.Module) -> tuple[float, float | None]:
        """``(accuracy, mean loss)`` of ``model`` (put in eval mode) on the batches."""
        model.eval()
        loss = correct = count = 0.0
        with torch.no_grad():
            for batch in self.val:
                self.ctx.check_peers()
                x, y = batch[0].to(self.ctx.device), batch[1].to(self.ctx.device)
                logits = model(x)
                loss += float(self.loss_fn(logits, y))
                correct += float((logits.argmax(1) == y).sum())
                count += y.shape[0]
        loss, correct, count = self.ctx.sum([loss, correct, count])
        if not count:
            return 0.0, None
        return correct / count, loss / count


def _better(a: tuple[float, float | None], b: tuple[float, float | None]) -> bool:
    """Whether score ``a`` ranks at least as well as ``b`` (accuracy, then loss)."""
    return rank_key(a[0], a[1], 0) <= rank_key(b[0], b[1], 0)


# ---------------------------------------------------------------- the blends


def blend_candidates(
    base: nn.Module, ranked: Sequence[Candidate], val: Any, ctx: DistContext
) -> tuple[list[Blend], list[str], tuple[float, float | None]]:
    """The soup and WiSE-FT blends of ``ranked`` (best first, the winner first; those whose
    model was released or that add modules are left out) on ``base`` (the start), scored on
    ``val`` batches. Returns ``(blends, notes, the winner's score)``, the winner measured the
    same way as the blends (the numbers to rank them by); a blend that would be one candidate
    alone is no row."""
    pool = [c for c in ranked if c.model is not None and not c.plan.additions]
    notes = []
    left = [c.spec for c in ranked if c.model is not None and c.plan.additions]
    if left:
        notes.append(
            "blends leave out candidates that add modules (their tensors have no counterpart "
            f"in the others): {', '.join(short_policy(s) for s in left)}"
        )
    scorer = Scorer(base, val, ctx)
    winner = scorer.measure(ranked[0].model)
    if not pool:
        return [], notes, winner
    blends = []
    for made in (_soup(pool[:MAX_INGREDIENTS], scorer), _wise_ft(base, pool, scorer)):
        if isinstance(made, Blend):
            blends.append(made)
        elif made:
            notes.append(made)
    return blends, notes, winner


def _state(cand: Candidate) -> State:
    return {k: v.detach() for k, v in cand.model.state_dict().items()}


def _soup(pool: Sequence[Candidate], scorer: Scorer) -> Blend | str:
    """The greedy soup of ``pool`` (best first), or why there is none."""
    started = time.perf_counter()
    chosen = [pool[0]]
    states = [_state(pool[0])]
    best = scorer(states[0])
    for cand in pool[1:]:
        trial = [*states, _state(cand)]
        score = scorer(average(trial))
        if _better(score, best):  # accuracy, then loss (see the module's docstring)
            chosen.append(cand)
            states, best = trial, score
    if len(chosen) < 2:
        return (
            f"soup: averaging {short_policy(pool[0].spec)} with any of the next "
            f"{len(pool) - 1} candidates lowered its validation score: no soup"
            if len(pool) > 1
            else "soup: one candidate to average (blends need two that share a start)"
        )
    trained = {name for c in chosen for name in c.plan.trainable}
    return Blend(
        "soup",
        tuple(c.spec for c in chosen),
        None,
        average(states),
        blend_plan(chosen[0].plan, trained),
        best[0],
        best[1],
        max(c.epochs_run for c in chosen),
        time.perf_counter() - started,
    )


def _wise_ft(base: nn.Module, pool: Sequence[Candidate], scorer: Scorer) -> Blend | str:
    """WiSE-FT of the best candidate that trains more than the head, or why there is none (no
    such candidate, or ``alpha = 1``, the candidate itself, is best)."""
    started = time.perf_counter()
    tuned = next((c for c in pool if not _head_only(c.plan)), None)
    if tuned is None:
        return "WiSE-FT: no candidate trains more than the head"
    end = _state(tuned)
    start = _start_under(base, end, tuned.plan)
    scored = [(alpha, scorer(interpolate(start, end, alpha))) for alpha in ALPHAS]
    alpha, best = scored[0]
    for candidate_alpha, score in scored[1:]:
        if _better(score, best):
            alpha, best = candidate_alpha, score
    if alpha == 1.0:
        return (
            f"WiSE-FT: alpha 1 ({short_policy(tuned.spec)} itself) scored best on validation "
            f"of alpha {', '.join(f'{a:g}' for a in ALPHAS)}"
        )
    return Blend(
        "wise-ft",
        (tuned.spec,),
        alpha,
        interpolate(start, end, alpha),
        blend_plan(tuned.plan, set(tuned.plan.trainable)),
        best[0],
        best[1],
        tuned.epochs_run,
        time.perf_counter() - started,
    )


def _start_under(base: nn.Module, tuned: Mapping[str, torch.Tensor], plan: Plan) -> State:
    """The start's weights under the tuned head: WiSE-FT's ``alpha = 0`` (the start has no
    head for these classes; its head is new and random)."""
    start = {k: v.detach() for k, v in base.state_dict().items()}
    for name in _head_names(plan):
        start[name] = tuned[name]
    return start


def blended(blend: Blend, base: nn.Module, states: Sequence[Mapping[str, torch.Tensor]]) -> State:
    """``blend``'s recipe applied to new weights of its ingredients (``states``, in the order
    of ``blend.ingredients``: their refits) on ``base`` (the start): the soup's average, or
    WiSE-FT's interpolation at the ``alpha`` measured."""
    if blend.kind == "soup":
        return average(states)
    assert blend.alpha is not None
    return interpolate(_start_under(base, states[0], blend.plan), states[0], blend.alpha)


def _head_names(plan: Plan) -> list[str]:
    table = plan.table
    return [row.name for row in table.rows if row.role == "head"] if table is not None else []


def _head_only(plan: Plan) -> bool:
    return set(plan.trainable) <= set(_head_names(plan))


def blend_plan(plan: Plan, trained: set[str]) -> Plan:
    """The saved plan of a blend: what any ingredient trained (``plan`` is the first
    ingredient's, on the same table), under the policy name ``blend``."""
    assert plan.table is not None
    made = Plan.from_table(plan.table, [n for n in plan.table.names if n in trained])
    return replace(made, policy=BLEND_POLICY, args={}, notes=())


def load_blend(base: nn.Module, blend: Blend) -> nn.Module:
    """A new model: ``base``'s copy holding the blend's weights."""
    model = copy.deepcopy(base)
    model.load_state_dict(blend.state)
    return model


def ranked_with_blends(
    board: Leaderboard,
    blends: Sequence[Blend],
    total_params: int,
    winner_score: tuple[float, float | None],
    notes: Sequence[str] = (),
    val_images: int = 0,
) -> tuple[Leaderboard, Blend | None]:
    """``board`` with a row per blend, ranked against its winner, whose ``winner_score`` was
    measured as the blends' (validation accuracy, then loss, on the same images), right after
    it or first; returns the board and the blend that now wins (None: the candidate still does).

    Below :data:`~zoo.io.leaderboard.NOISE_VALIDATION` validation images (``val_images``) a
    blend replaces the winner only with an accuracy more than one standard error above the
    winner's (:func:`noise_margin`): on 5 to 200 images a blend chosen on them mostly fits
    them. With more (or ``val_images`` 0: unknown) a tie goes to the blend, as averaging runs
    that share a start is expected to generalize at least as well."""
    winner = board.rows[0]
    rows = {id(winner): winner}
    of_row = {}
    for blend in blends:
        row = blend.row(total_params)
        rows[id(row)] = row
        of_row[id(row)] = blend
    margin = noise_margin(winner, winner_score[0], val_images)
    bar = winner_score[0] + margin if margin is not None else None
    held = {id(b) for b in blends if bar is not None and b.val_acc <= bar}

    def key(row: LeaderboardRow) -> tuple:
        acc, loss = (row.val_acc, row.val_loss) if row is not winner else winner_score
        blend = of_row.get(id(row))
        held_back = blend is not None and id(blend) in held
        return held_back, *rank_key(acc, loss, 0)[:2], row is winner, row.trainable_params

    top = sorted(rows.values(), key=key)
    won = of_row.get(id(top[0]))
    theirs = f", loss {winner_score[1]:.4g}" if winner_score[1] is not None else ""
    name = short_policy(winner.policy)
    would = [b for b in blends if id(b) in held and _better((b.val_acc, b.val_loss), winner_score)]
    if won is None and would and bar is not None:  # what would have ranked first on a tie rule
        best = max(would, key=lambda b: b.val_acc)
        notes = [
            *notes,
            f"{best.label} scored {best.val_acc:.3f} on validation against {name}'s "
            f"{winner_score[0]:.3f}{theirs}: not more than one standard error ({margin:.3f}) "
            f"above it, so {name} stays the model (below {NOISE_VALIDATION} validation images a "
            "blend must score above that to replace the winner)",
        ]
    if won is not None:
        loss = f", loss {won.val_loss:.4g}" if won.val_loss is not None else ""
        why = (
            f"more than one standard error ({margin:.3f}) above it"
            if margin is not None
            else "a tie goes to the blend"
        )
        notes = [
            *notes,
            f"{won.label} ranks first and is the model saved: validation accuracy "
            f"{won.val_acc:.3f}{loss}, against {name}'s {winner_score[0]:.3f}{theirs} "
            f"measured the same way ({why})",
        ]
    board = replace(board, rows=(*top, *board.rows[1:]), notes=(*board.notes, *notes))
    return board, won


def noise_margin(winner: LeaderboardRow, accuracy: float, val_images: int) -> float | None:
    """One standard error of the winner's validation accuracy, the margin a blend must clear
    to replace it below :data:`~zoo.io.leaderboard.NOISE_VALIDATION` validation images: half
    the width of the winner's interval (its repeated splits, when it has one), else of
    Wilson's interval of ``accuracy`` on ``val_images``. None with more images (no margin)."""
    if not 0 < val_images < NOISE_VALIDATION:
        return None
    low, high = winner.interval if winner.interval is not None else wilson(accuracy, val_images)
    return (high - low) / 2
