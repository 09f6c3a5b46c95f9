"""Successive halving, the engine of :func:`zoo.compare`: candidates trained in rungs.

Each candidate (:class:`Candidate`) has its own copy of the base model with its plan applied,
its own optimizer, and an lr schedule over the full ``epochs``, so a candidate continued at a
later rung trains exactly as if it had run straight through. It trains on the work every
candidate shares, done once (:class:`SharedData`): the activations at its freeze boundary
(:mod:`zoo.adaptation.cache`: every distinct boundary extracted in one pass of the base
model), or the images decoded once.

Successive halving (Jamieson & Talwalkar, 2016): rungs of ``E/2^R, …, E/2, E`` epochs (whole
epochs, at least 1); after each rung but the last only the best ``1/eta`` of the candidates
(by validation accuracy, then lower validation loss, then fewer trained parameters) continue
from where they are. ``eta`` is 2 when the epochs allow ``ceil(log2 n)`` rungs, else
``ceil(n ** (1/R))`` so that one candidate is left for the last rung. No candidate is cut
before :data:`MIN_RUNG_STEPS` optimizer steps: shorter rungs merge into the next (none left
before the last: no halving, every candidate trains to the end). Cost-aware: fewer are
kept when the projected cost of the remaining rungs (measured seconds per epoch) would take the
comparison past :data:`COST_TARGET_RUNS` full runs of the slowest candidate, or past
``budget`` (seconds) when one is given; the budget also stops promoting once the next epoch
(estimated from the candidate's measured epochs) would exceed it. Every candidate always gets
its first epoch.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from zoo.adaptation.cache import (
    INFERENCE_BATCH,
    Boundary,
    CachedFeatures,
    CacheUnsupported,
    augmentation_rule,
    decode,
    extract,
    find_boundary,
    max_cache_bytes,
    on_every_rank,
)
from zoo.adaptation.history import AdaptCallback, EpochRecord
from zoo.adaptation.inputs import loaders_for_folders, reshuffled
from zoo.adaptation.speed import Speed
from zoo.adaptation.training import Trainee, augmentation_of
from zoo.errors import DataError
from zoo.io.leaderboard import (
    Leaderboard,
    LeaderboardRow,
    rank_key,
    small_validation_note,
)
from zoo.plans.freeze import apply_plan

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from zoo.adaptation.candidates import PlannedCandidate
    from zoo.adaptation.config import Augment, TrainConfig
    from zoo.adaptation.distributed import DistContext
    from zoo.adaptation.inputs import AdaptData
    from zoo.core.specs import InputConfig
    from zoo.plans.plan import Plan

#: Successive halving keeps fewer candidates when the projected total would exceed this many
#: full runs (``epochs`` epochs) of the slowest candidate.
COST_TARGET_RUNS = 2.0

#: Fewest optimizer steps every candidate trains before successive halving may cut one. Early
#: in the lr schedule a ranking says which candidate *starts* fast (few parameters moving:
#: ``bitfit``, adapters, heads), not which one ends best: whole-model candidates (``full``)
#: first lose accuracy at the top of the schedule and win later. Measured on the digits of
#: ``benchmarks/transfer_quality.py``: with 8, first cuts after 10-15 steps dropped ``full``
#: (val acc 0.30-0.35 then; 0.95, the best on validation, trained to the end) and
#: compare lost 1.2-8.0 points in three cells; with 64 it was within 0.4 points of the best
#: in four of six cells, 1.2 and 4.8 in the two cells with 5 validation images. Shorter rungs
#: are merged into the next one; when no rung before the last has this many steps there is no
#: halving: every candidate trains to the end (cheap: that little data). 64 steps are one
#: epoch of 2,048 images at batch 32: from there on, halving and its 2x cost bound are as usual.
MIN_RUNG_STEPS = 64


# ---------------------------------------------------------------- one candidate


#: A candidate's top on cached activations with at most this many trainable parameters
#: trains on one CPU thread: waking a thread pool costs more than the arithmetic.
ONE_THREAD_PARAMS = 1_000_000


@dataclass
class Candidate:
    """One policy being compared: its own model copy with its plan applied, trained by its own
    :class:`~zoo.adaptation.training.Trainee` (optimizer, schedule and batches)."""

    spec: str
    plan: Plan
    model: nn.Module
    trainable_params: int
    total_params: int
    cut: Boundary | None = None
    records: list[EpochRecord] = field(default_factory=list)
    seconds: float = 0.0
    alive: bool = True
    trainee: Trainee | None = None

    @property
    def epochs_run(self) -> int:
        return len(self.records)

    @property
    def score(self) -> tuple:
        last = self.records[-1]
        return rank_key(last.val_accuracy or 0.0, last.val_loss, self.trainable_params)

    @property
    def seconds_per_epoch(self) -> float:
        return self.seconds / self.epochs_run if self.epochs_run else 0.0

    @property
    def boundary(self) -> str | None:
        """The module whose input this candidate trains on (None: the whole model)."""
        return self.cut.path if self.cut is not None else None

    @property
    def trained_on(self) -> str:
        return f"activations at {self.boundary!r}" if self.boundary else "images"

    def start(
        self, shared: SharedData, settings: TrainConfig, num_classes: int, ctx: DistContext
    ) -> None:
        """Its trainee, on the activations at its boundary or on the shared images (augmented
        as ``shared.augment`` says)."""
        torch.manual_seed(settings.seed)  # a head reset or dropout draws the same for each
        source: tuple[Any, Any] = (shared.train, shared.val)
        if self.cut is not None:
            source = shared.activations[self.cut.path]
        elif not isinstance(shared.train, CachedFeatures):  # streamed: shuffled, in batches
            source = (reshuffled(shared.train, ctx, settings.seed, settings.batch_size), shared.val)
        self.trainee = Trainee(
            self.model,
            self.plan,
            *source,
            settings,
            ctx=ctx,
            callback=AdaptCallback(),
            num_classes=num_classes,
            cut=self.cut,
            augment=shared.augment,
            one_thread=self.cut is not None and self.trainable_params <= ONE_THREAD_PARAMS,
        )

    def train_epoch(self) -> EpochRecord:
        """One more epoch (timed, validation included)."""
        assert self.trainee is not None
        start = time.perf_counter()
        record = self.trainee.epoch(self.epochs_run + 1)
        self.records.append(record)
        self.seconds += time.perf_counter() - start
        return record


def make_candidate(base: nn.Module, planned: PlannedCandidate) -> Candidate:
    model = copy.deepcopy(base)
    apply_plan(model, planned.plan)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return Candidate(planned.spec, planned.plan, model, trainable, total)


def rung_epochs(epochs: int, candidates: int, steps_per_epoch: int | None = None) -> list[int]:
    """Epoch budgets of the rungs: ``E/2^R, …, E/2, E`` (whole epochs, at least 1, distinct),
    ``R = min(ceil(log2 n), floor(log2 E))``. With ``steps_per_epoch``, rungs before the last
    with fewer than :data:`MIN_RUNG_STEPS` optimizer steps are merged into the next one (only
    ``[E]`` left: no halving)."""
    if candidates <= 1 or epochs <= 1:
        return [epochs]
    rungs = min(math.ceil(math.log2(candidates)), math.floor(math.log2(epochs)))
    budgets = sorted({max(1, epochs // 2 ** (rungs - k)) for k in range(rungs + 1)})
    if steps_per_epoch is None:
        return budgets
    return [b for b in budgets[:-1] if b * steps_per_epoch >= MIN_RUNG_STEPS] + [budgets[-1]]


def rung_note(epochs: int, candidates: int, steps_per_epoch: int) -> str | None:
    """What :data:`MIN_RUNG_STEPS` changed in the rungs, for the leaderboard (None: nothing)."""
    plain = rung_epochs(epochs, candidates)
    merged = rung_epochs(epochs, candidates, steps_per_epoch)
    if merged == plain:
        return None
    steps = f"{steps_per_epoch} optimizer step(s) per epoch"
    if len(merged) == 1:
        return (
            f"no successive halving: with {steps}, no rung before the last reaches "
            f"{MIN_RUNG_STEPS} steps, and a cut after fewer ranks how fast a candidate starts, "
            f"not how well it ends; every candidate trained all {epochs} epochs "
            f"({epochs * steps_per_epoch} steps) — cheap with this little data"
        )
    return (
        f"with {steps}, rungs shorter than {MIN_RUNG_STEPS} steps were merged: the first cut "
        f"came after {merged[0]} epoch(s) ({merged[0] * steps_per_epoch} steps), rungs "
        f"{', '.join(map(str, merged))} instead of {', '.join(map(str, plain))}"
    )


def keep_ratio(candidates: int, rungs: int) -> int:
    """``eta``: 2 when ``rungs`` halvings bring ``candidates`` down to one, else the smallest
    integer ratio that does."""
    halvings = rungs - 1
    if halvings <= 0 or candidates <= 1:
        return max(2, candidates)
    if 2**halvings >= candidates:
        return 2
    return math.ceil(candidates ** (1 / halvings) - 1e-9)


class CompareCallback(AdaptCallback):
    """Progress of :func:`zoo.compare` (the CLI renders it). Any :class:`AdaptCallback` may
    be passed; these extra hooks are called when it has them."""

    def on_candidate_epoch(self, policy: str, record: EpochRecord, rung: int) -> None:
        """A candidate finished an epoch (at rung ``rung``, 0-based)."""

    def on_rung_end(self, rung: int, epochs: int, kept: list[str], dropped: list[str]) -> None:
        """Rung ``rung`` (``epochs`` epochs) ended: ``kept`` continue, ``dropped`` stop."""


@dataclass
class Outcome:
    """What :func:`run_halving` found: the winner (its model trained as far as it got), every
    candidate, and the leaderboard."""

    winner: Candidate
    candidates: list[Candidate]
    leaderboard: Leaderboard


def run_halving(
    candidates: list[Candidate],
    settings: TrainConfig,
    *,
    ctx: DistContext,
    budget: float | None,
    t_start: float,
    callback: AdaptCallback,
    finish: bool = True,
    relative_budget: float | None = None,
    cost_target: float | None = COST_TARGET_RUNS,
    notes: Sequence[str] = (),
) -> Outcome:
    """Successive halving over ``candidates`` (prepared: see :func:`compare_candidates`).

    ``finish=False`` stops as soon as one candidate is left (what ``auto`` needs: a ranking,
    not a trained model). ``relative_budget`` sets the budget, once every candidate's first
    epoch is measured, to the time spent so far before training plus that many full runs
    (``epochs`` epochs) of the slowest candidate. Without a budget, ``cost_target`` (full runs
    of the slowest candidate; None: plain halving) keeps fewer candidates at a rung when the
    projected cost of the remaining rungs would exceed it (see :func:`keep_within`); with a
    budget, the budget does."""
    per_epoch = [c.trainee.steps_per_epoch for c in candidates if c.trainee is not None]
    steps = ctx.broadcast(min(per_epoch))  # the same rungs on every rank
    rungs = rung_epochs(settings.epochs, len(candidates), steps)
    note = rung_note(settings.epochs, len(candidates), steps)
    notes = [*notes, note] if note else list(notes)
    before_training = time.perf_counter() - t_start
    eta = keep_ratio(len(candidates), len(rungs))
    alive = list(candidates)
    budget_cut = False
    for k, target in enumerate(rungs):
        for cand in alive:
            while cand.epochs_run < target:
                if cand.epochs_run and budget is not None:
                    elapsed = time.perf_counter() - t_start
                    if ctx.any(elapsed + cand.seconds_per_epoch > budget):
                        budget_cut = True
                        break
                record = cand.train_epoch()
                hook = getattr(callback, "on_candidate_epoch", None)
                if hook is not None:
                    hook(cand.spec, record, k)
            # no break on a budget cut: the others still get their first epoch (a rung can be
            # several epochs long, see MIN_RUNG_STEPS), then the budget stops each of them
        if k == 0 and relative_budget is not None:
            slowest = max(c.seconds_per_epoch for c in alive)
            budget = before_training + relative_budget * slowest * settings.epochs
        if budget_cut or k == len(rungs) - 1:
            break
        alive.sort(key=lambda c: c.score)
        keep = max(1, math.ceil(len(alive) / eta))
        last = len(rungs) - 1 if finish else len(rungs) - 2
        limit = budget  # a budget replaces the cost target: the caller chose the time
        if limit is None and cost_target is not None:
            slowest = max(c.seconds_per_epoch for c in candidates)
            limit = cost_target * slowest * settings.epochs
        if limit is not None:
            left = limit - (time.perf_counter() - t_start)
            keep = keep_within(alive, keep, rungs, k, last, eta, left)
        keep = ctx.broadcast(keep)  # every rank keeps the same candidates
        kept, dropped = alive[:keep], alive[keep:]
        for cand in dropped:
            cand.alive = False
            _release(cand)
        hook = getattr(callback, "on_rung_end", None)
        if hook is not None:
            hook(k, target, [c.spec for c in kept], [c.spec for c in dropped])
        alive = kept
        if not finish and len(alive) == 1:
            break
    alive.sort(key=lambda c: c.score)
    winner = alive[0]
    board = _leaderboard(candidates, winner, settings, rungs, budget, budget_cut, t_start, notes)
    return Outcome(winner, candidates, board)


def projected_seconds(
    ranked: Sequence[Candidate], rungs: Sequence[int], k: int, last: int, eta: int
) -> float:
    """Seconds the rungs after ``k`` (up to ``last``) would take if ``ranked`` continue and each
    later rung keeps the best ``1/eta`` (the ranking as it is now), at each one's measured
    seconds per epoch."""
    survivors = list(ranked)
    total = 0.0
    for j in range(k + 1, last + 1):
        total += sum(c.seconds_per_epoch for c in survivors) * (rungs[j] - rungs[j - 1])
        if j < last:
            survivors = survivors[: max(1, math.ceil(len(survivors) / eta))]
    return total


def keep_within(
    ranked: Sequence[Candidate],
    keep: int,
    rungs: Sequence[int],
    k: int,
    last: int,
    eta: int,
    left: float,
) -> int:
    """``keep``, lowered (to 1 at least) while the projected cost of the remaining rungs is
    more than the ``left`` seconds: the cost-aware part of zoo's halving."""
    while keep > 1 and projected_seconds(ranked[:keep], rungs, k, last, eta) > left:
        keep -= 1
    return keep


def _release(cand: Candidate) -> None:
    """A dropped candidate's model copy, optimizer state and batches are no longer needed."""
    cand.trainee = None
    cand.model = None  # type: ignore[assignment]


def _leaderboard(
    candidates: list[Candidate],
    winner: Candidate,
    settings: TrainConfig,
    rungs: list[int],
    budget: float | None,
    budget_cut: bool,
    t_start: float,
    notes: Sequence[str],
) -> Leaderboard:
    ranked = sorted(
        candidates,
        key=lambda c: (c is not winner, -c.epochs_run, c.score),
    )
    rows = tuple(
        LeaderboardRow(
            policy=c.spec,
            val_acc=float(c.records[-1].val_accuracy or 0.0),
            val_loss=_finite(c.records[-1].val_loss),
            trainable_params=c.trainable_params,
            trainable_percent=100.0 * c.trainable_params / c.total_params if c.total_params else 0,
            epochs=c.epochs_run,
            seconds=round(c.seconds, 4),
            stopped_early=c.epochs_run < settings.epochs,
            trained_on=c.trained_on,
        )
        for c in ranked
    )
    all_notes = list(notes)
    if budget_cut:
        all_notes.append(
            f"the budget of {budget:g} s cut the comparison: {winner.spec} is the best so far "
            f"({winner.epochs_run} of {settings.epochs} epochs)"
        )
    return Leaderboard(
        rows=rows,
        epochs=settings.epochs,
        rungs=tuple(rungs),
        budget=budget,
        budget_cut=budget_cut,
        seconds=round(time.perf_counter() - t_start, 4),
        notes=tuple(all_notes),
    )


def _finite(value: float | None) -> float | None:
    """A loss as the leaderboard keeps it: None when it diverged (not finite, or past 1e12)."""
    return value if value is not None and math.isfinite(value) and value <= 1e12 else None


# ---------------------------------------------------------------- the shared work


@dataclass
class SharedData:
    """The inputs every candidate shares, computed once: the decoded images (or, over the
    memory budget or with random augmentation, the loaders to stream them from each epoch),
    and the activations at each candidate's freeze boundary (:mod:`zoo.adaptation.cache`).
    ``augment``: the augmentation every candidate trains with (None: none)."""

    train: CachedFeatures | DataLoader
    val: CachedFeatures | DataLoader
    augment: Augment | None = None
    activations: dict[str, tuple[CachedFeatures, CachedFeatures]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        pairs = [(self.train, self.val), *self.activations.values()]
        return sum(c.nbytes for pair in pairs for c in pair if isinstance(c, CachedFeatures))

    def loaders(self) -> list[tuple[str, DataLoader]]:
        """``(split, loader)`` of the images in order: decoded, or streamed from the folders."""
        splits = {"train": self.train, "val": self.val}
        return [
            (name, s.loader(INFERENCE_BATCH) if isinstance(s, CachedFeatures) else s)
            for name, s in splits.items()
        ]


def prepare_shared(
    data: AdaptData, config: InputConfig, settings: TrainConfig, ctx: DistContext
) -> SharedData:
    """Decode train and validation images once (with the evaluation transform of
    ``config``), within the memory budget of :func:`~zoo.adaptation.cache.max_cache_bytes`;
    beyond it they are streamed from the folders each epoch. With augmentation
    (``settings``: off unless asked for) the training images are augmented anew each epoch:
    streamed, and only the validation images are decoded."""
    augment = augmentation_of(settings, data, default=False)
    if data.from_folders:
        train_loader, val_loader = loaders_for_folders(
            data,
            config,
            augment=augment,
            batch_size=INFERENCE_BATCH,
            num_workers=settings.num_workers,
            seed=settings.seed,
            ctx=ctx,
            shuffle_train=False,
        )
    else:
        train_loader, val_loader = data.train, data.val
    if val_loader is None:
        raise DataError("compare needs validation images: pass val (--val) or val_split")
    limit = max_cache_bytes()
    augmented = augmentation_rule(augment)
    if augmented is not None:
        val = decode(val_loader, ctx.device, limit)
        note = f"every candidate trained on images: {augmented}"
        return SharedData(
            train_loader, val if val is not None else val_loader, augment, notes=[note]
        )
    train = decode(train_loader, ctx.device, limit)
    val = decode(val_loader, ctx.device, limit - train.nbytes) if train is not None else None
    if ctx.any(train is None or val is None):
        note = (
            f"the decoded images would exceed the cache budget ({limit:,} bytes, "
            "ZOO_FEATURE_CACHE_MAX_BYTES): streamed from the folders every epoch"
        )
        return SharedData(train_loader, val_loader, augment, notes=[note])
    assert train is not None and val is not None
    return SharedData(train, val, augment)


def cache_boundaries(
    model: nn.Module,
    candidates: list[Candidate],
    shared: SharedData,
    settings: TrainConfig,
    *,
    ctx: DistContext,
    callback: AdaptCallback,
) -> None:
    """Find each candidate's freeze boundary (on a few training images) and extract every
    distinct boundary's activations in one pass of the base model over train and one over
    val; a candidate without one (or when they do not fit, or with random augmentation)
    trains on the images."""
    if augmentation_rule(shared.augment) is not None:
        return
    loaders = shared.loaders()
    sample = next(iter(loaders[0][1]))[0][:8].to(ctx.device)
    found: dict[int, Boundary] = {}
    for i, cand in enumerate(candidates):
        if cand.trainable_params == cand.total_params:
            continue  # trains everything: nothing frozen to cache
        with contextlib.suppress(CacheUnsupported):
            found[i] = on_every_rank(ctx, functools.partial(find_boundary, cand.model, sample))
    if not found:
        return
    paths = sorted({b.path for b in found.values()})
    speed = Speed.of(settings, ctx.device)
    speed.prepare(model)
    try:
        with speed.autocast():  # the frozen prefix runs in the training precision
            out = extract(
                model,
                paths,
                loaders,
                ctx=ctx,
                callback=callback,
                max_bytes=max_cache_bytes() - shared.nbytes,
                precision=speed.dtype,
            )
    except CacheUnsupported as exc:
        shared.notes.append(f"boundary cache not used, every candidate trained on images: {exc}")
        return
    shared.activations = {path: (out[path][0], out[path][1]) for path in paths}
    for i, boundary in found.items():
        candidates[i].cut = boundary


def compare_candidates(
    model: nn.Module,
    data: AdaptData,
    config: InputConfig,
    planned: list[PlannedCandidate],
    settings: TrainConfig,
    *,
    ctx: DistContext,
    budget: float | None,
    callback: AdaptCallback,
    t_start: float,
    finish: bool = True,
    relative_budget: float | None = None,
    notes: Sequence[str] = (),
) -> Outcome:
    """Compare ``planned`` on ``model`` (built, on its device, input config set): the shared
    work, then successive halving."""
    shared = prepare_shared(data, config, settings, ctx)
    small = small_validation_note(data.images("val"))
    notes = [*notes, small] if small else notes
    candidates = [make_candidate(model, p) for p in planned]
    cache_boundaries(model, candidates, shared, settings, ctx=ctx, callback=callback)
    for cand in candidates:
        cand.start(shared, settings, len(data.classes), ctx)
    return run_halving(
        candidates,
        settings,
        ctx=ctx,
        budget=budget,
        t_start=t_start,
        callback=callback,
        finish=finish,
        relative_budget=relative_budget,
        notes=[*notes, *shared.notes],
    )
