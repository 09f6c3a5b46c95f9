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

Each candidate trains at its own rate: its policy's declared one (in its plan), and on cached
activations with a small top also 0.3x and 3x that (:data:`LR_SWEEP`, one policy in the
rungs; the best rate is kept at the first cut). Below
:data:`~zoo.io.leaderboard.NOISE_VALIDATION` validation images the finished candidates are
ranked within the noise (:func:`rank_within_noise`: repeated stratified splits for the cheap
cached ones, an interval for each, ties marked; the best mean wins).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from zoo.adaptation.blend import Blend, blend_candidates, ranked_with_blends
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
from zoo.adaptation.candidates import PlannedCandidate
from zoo.adaptation.history import AdaptCallback, EpochRecord
from zoo.adaptation.inputs import loaders_for_folders, reshuffled
from zoo.adaptation.probe import head_plan, probe_epochs
from zoo.adaptation.speed import Speed
from zoo.adaptation.training import Trainee, augmentation_of, probe_trainee
from zoo.errors import AdaptArgumentError, DataError, ZooError
from zoo.io.leaderboard import (
    NOISE_VALIDATION,
    SPLITS,
    Leaderboard,
    LeaderboardRow,
    choose_within_noise,
    interval,
    rank_key,
    small_validation_note,
    spread,
)
from zoo.plans.freeze import apply_plan

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

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


#: The learning-rate factors a candidate on cached activations tries, around its policy's
#: declared rate (:attr:`~zoo.PolicySpec.lr_scale`), when what runs on the activations holds
#: at most :data:`SWEEP_TOP_SHARE` of the model's parameters (its epochs are cheap): ranking
#: every candidate at one rate ranks the rate. The best factor is kept at the first cut (or at
#: the end without halving); the leaderboard shows the rate each candidate used.
LR_SWEEP = (0.3, 1.0, 3.0)
#: Largest share of the model's parameters in a cached candidate's top that still gets the
#: rate sweep: a head, or the last block of a deep network (``bitfit``, cached at the stem,
#: runs nearly the whole model each epoch).
SWEEP_TOP_SHARE = 0.1


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
    #: LP-FT (:mod:`zoo.adaptation.probe`): epochs of the head alone first, on features at
    #: ``probe_cut``; ``then`` builds the plan's trainee when they are done
    probe_epochs: int = 0
    probe_cut: Boundary | None = None
    probe_features: tuple[CachedFeatures, CachedFeatures] | None = None
    then: Callable[[], Trainee] | None = None
    lr_factor: float = 1.0
    #: a rate of the sweep that lost to another rate of the same policy
    swept: bool = False
    #: validation accuracy on each split it was scored on (the first: the run's own split)
    split_scores: list[float] = field(default_factory=list)

    @property
    def epochs_run(self) -> int:
        return len(self.records)

    @property
    def score(self) -> tuple:
        last = self.records[-1]
        return rank_key(last.val_accuracy or 0.0, last.val_loss, self.trainable_params)

    def stopped_early(self, settings: TrainConfig) -> bool:
        return self.epochs_run < settings.epochs

    @property
    def seconds_per_epoch(self) -> float:
        return self.seconds / self.epochs_run if self.epochs_run else 0.0

    def lr(self, settings: TrainConfig) -> float:
        """The largest learning rate among its trained parameters (its head's, usually)."""
        scales = [p.lr_scale for p in self.plan.params.values() if p.trainable]
        return settings.lr * self.lr_factor * max(scales, default=1.0)

    @property
    def boundary(self) -> str | None:
        """The module whose input this candidate trains on (None: the whole model)."""
        return self.cut.path if self.cut is not None else None

    @property
    def trained_on(self) -> str:
        on = f"activations at {self.boundary!r}" if self.boundary else "images"
        if self.probe_cut is None:
            return on
        return f"head alone at {self.probe_cut.path!r} ({self.probe_epochs} epochs), then {on}"

    def start(
        self, shared: SharedData, settings: TrainConfig, num_classes: int, ctx: DistContext
    ) -> None:
        """Its trainee, on the activations at its boundary or on the shared images (augmented
        as ``shared.augment`` says), after its probe stage's trainee when it has one."""
        source: tuple[Any, Any] = (shared.train, shared.val)
        if self.cut is not None:
            source = shared.activations[self.cut.path]
        self.start_on(source, settings, num_classes, ctx, augment=shared.augment)

    def start_on(
        self,
        source: tuple[Any, Any],
        settings: TrainConfig,
        num_classes: int,
        ctx: DistContext,
        *,
        augment: Augment | None = None,
    ) -> None:
        """Its trainee on ``(train, val)``: cached tensors, or loaders of images; after the
        trainee of its probe stage (LP-FT) when it has one."""
        torch.manual_seed(settings.seed)  # a head reset or dropout draws the same for each
        if self.lr_factor != 1.0:
            settings = replace(settings, lr=settings.lr * self.lr_factor)
        plan_trainee = functools.partial(
            self._plan_trainee, source, settings, num_classes, ctx, augment
        )
        if not self.probe_epochs:
            self.trainee = plan_trainee()
            return
        assert self.probe_cut is not None and self.probe_features is not None
        self.trainee = probe_trainee(
            self.model,
            self.plan,
            self.probe_cut,
            self.probe_features,
            settings,
            epochs=self.probe_epochs,
            ctx=ctx,
            callback=AdaptCallback(),
            num_classes=num_classes,
        )
        self.then = plan_trainee

    def _plan_trainee(
        self,
        source: tuple[Any, Any],
        settings: TrainConfig,
        num_classes: int,
        ctx: DistContext,
        augment: Augment | None,
    ) -> Trainee:
        apply_plan(self.model, self.plan)  # after a probe stage: the plan again
        self.probe_features = None
        if not isinstance(source[0], CachedFeatures):  # streamed: shuffled, in batches
            batches = reshuffled(
                source[0], ctx, settings.seed, settings.batch_size, persistent=False
            )
            source = (batches, source[1])
        return Trainee(
            self.model,
            self.plan,
            *source,
            settings,
            ctx=ctx,
            callback=AdaptCallback(),
            num_classes=num_classes,
            cut=self.cut,
            augment=augment,
            one_thread=self.cut is not None and self.trainable_params <= ONE_THREAD_PARAMS,
            probe_epochs=self.probe_epochs,
        )

    def train_epoch(self) -> EpochRecord:
        """One more epoch (timed, validation included)."""
        start = time.perf_counter()
        if self.then is not None and self.epochs_run == self.probe_epochs:
            self.trainee, self.then = self.then(), None
        assert self.trainee is not None
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
    #: with ``blend=True``: the blend that ranks first (None: a candidate does)
    blend: Blend | None = None


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
    keep_models: bool = False,
) -> Outcome:
    """Successive halving over ``candidates`` (prepared: see :func:`compare_candidates`).

    ``finish=False`` stops as soon as one candidate is left (what ``auto`` needs: a ranking,
    not a trained model). ``relative_budget`` sets the budget, once every candidate's first
    epoch is measured, to the time spent so far before training plus that many full runs
    (``epochs`` epochs) of the slowest candidate. Without a budget, ``cost_target`` (full runs
    of the slowest candidate; None: plain halving) keeps fewer candidates at a rung when the
    projected cost of the remaining rungs would exceed it (see :func:`keep_within`); with a
    budget, the budget does. ``keep_models``: a dropped candidate keeps its model (for blends).
    """
    per_epoch = [c.trainee.steps_per_epoch for c in candidates if c.trainee is not None]
    steps = ctx.broadcast(min(per_epoch))  # the same rungs on every rank
    policies = len({c.spec for c in candidates})  # a policy's rate variants count once
    rungs = rung_epochs(settings.epochs, policies, steps)
    note = rung_note(settings.epochs, policies, steps)
    notes = [*notes, note] if note else list(notes)
    before_training = time.perf_counter() - t_start
    eta = keep_ratio(policies, len(rungs))
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
        alive = keep_best_rates(alive)
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
            release(cand, keep_model=keep_models)
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


def keep_best_rates(alive: list[Candidate]) -> list[Candidate]:
    """One candidate per policy: of the learning rates a policy tried (:data:`LR_SWEEP`),
    the one best on validation (a tie keeps the declared rate); the others are released."""
    best: dict[str, Candidate] = {}
    for cand in alive:
        held = best.get(cand.spec)
        if held is None or (cand.score, cand.lr_factor != 1.0) < (
            held.score,
            held.lr_factor != 1.0,
        ):
            best[cand.spec] = cand
    for cand in alive:
        if best[cand.spec] is not cand:
            cand.alive, cand.swept = False, True
            release(cand)
    return [c for c in alive if best[c.spec] is c]


def with_rate_sweep(base: nn.Module, candidates: list[Candidate]) -> list[Candidate]:
    """``candidates`` and, for each one on cached activations whose top is small
    (:data:`SWEEP_TOP_SHARE`), a copy at each other factor of :data:`LR_SWEEP`."""
    out = []
    for cand in candidates:
        out.append(cand)
        if cand.cut is None or cand.probe_epochs:
            continue  # (a probe stage's epochs would choose its rate)
        top = sum(p.numel() for p in cand.cut.suffix(cand.model).parameters())
        if top > SWEEP_TOP_SHARE * cand.total_params:
            continue
        for factor in LR_SWEEP:
            if factor != 1.0:
                out.append(twin_of(base, cand, lr_factor=factor))
    return out


def twin_of(base: nn.Module, cand: Candidate, *, lr_factor: float | None = None) -> Candidate:
    """A fresh copy of ``cand`` (its policy on ``base``, its boundary and rate), untrained."""
    twin = make_candidate(base, PlannedCandidate(cand.spec, cand.plan))
    twin.cut = cand.cut
    twin.lr_factor = cand.lr_factor if lr_factor is None else lr_factor
    twin.probe_epochs, twin.probe_cut = cand.probe_epochs, cand.probe_cut
    twin.probe_features = cand.probe_features
    return twin


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


def release(cand: Candidate, *, keep_model: bool = False) -> None:
    """A dropped candidate's model copy, optimizer state and batches are no longer needed
    (its model is, with ``keep_model``: a blend may average it)."""
    if keep_model and cand.trainee is not None:
        cand.trainee.finish()  # with ema: a blend averages the weights that were scored
    cand.trainee = cand.then = cand.probe_features = None
    if not keep_model:
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
        (c for c in candidates if not c.swept),
        key=lambda c: (c is not winner, -c.epochs_run, c.score),
    )
    all_notes = list(notes)
    if budget_cut:
        all_notes.append(
            f"the budget of {budget:g} s cut the comparison: {winner.spec} is the best so far "
            f"({winner.epochs_run} of {settings.epochs} epochs)"
        )
    return Leaderboard(
        rows=tuple(_row(c, settings, candidates) for c in ranked),
        epochs=settings.epochs,
        rungs=tuple(rungs),
        budget=budget,
        budget_cut=budget_cut,
        seconds=round(time.perf_counter() - t_start, 4),
        notes=tuple(all_notes),
    )


def _row(
    cand: Candidate,
    settings: TrainConfig,
    everyone: Sequence[Candidate],
    noise: tuple[int, int] | None = None,
) -> LeaderboardRow:
    """``cand``'s leaderboard row; with ``noise`` (validation and training images of a
    split), its mean over the splits it was scored on and a 95% interval."""
    tried = sorted(_rate(c.lr(settings)) for c in everyone if c.spec == cand.spec)
    last = cand.records[-1]
    scores = cand.split_scores or [float(last.val_accuracy or 0.0)]
    scored = noise is not None and not cand.stopped_early(settings)
    several = scored and len(scores) > 1
    return LeaderboardRow(
        policy=cand.spec,
        val_acc=float(last.val_accuracy or 0.0),
        val_loss=_finite(last.val_loss),
        trainable_params=cand.trainable_params,
        trainable_percent=(
            100.0 * cand.trainable_params / cand.total_params if cand.total_params else 0
        ),
        epochs=cand.epochs_run,
        seconds=round(cand.seconds, 4),
        stopped_early=cand.stopped_early(settings),
        trained_on=cand.trained_on,
        lr=_rate(cand.lr(settings)),
        lr_tried=tuple(tried) if len(tried) > 1 else (),
        splits=len(scores) if scored else 1,
        val_acc_mean=round(sum(scores) / len(scores), 6) if several else None,
        val_acc_std=round(spread(scores), 6) if several else None,
        interval=interval(scores, *noise) if scored and noise is not None else None,
    )


def _rate(lr: float) -> float:
    return float(f"{lr:.4g}")


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


def without_probes_when_augmented(
    candidates: list[Candidate], shared: SharedData, settings: TrainConfig, notes: list[str]
) -> tuple[list[Candidate], list[str]]:
    """With random augmentation nothing is cached, and LP-FT's probe stage trains the head on
    features cached from un-augmented images: an ``lp-ft`` candidate of the default ladder is
    left out (with a note), and ``probe_start`` asked for with augmentation is refused."""
    probing = [c for c in candidates if c.probe_epochs]
    if not probing or augmentation_rule(shared.augment) is None:
        return candidates, notes
    if settings.probe_start:
        raise AdaptArgumentError(
            "probe_start",
            settings.probe_start,
            "0 with augmentation: it fits the head on features cached from un-augmented "
            "images, and augmented candidates train on images (nothing is cached); leave out "
            "probe_start or the augmentation options",
        )
    kept = [c for c in candidates if not c.probe_epochs]
    if not kept:
        raise ZooError(
            "every candidate fits its head first (LP-FT) on un-augmented cached features, "
            "which compare cannot do with augmentation: leave out the augmentation options"
        )
    left = ", ".join(sorted({c.spec for c in probing}))
    note = f"{left} left out: LP-FT's probe stage needs un-augmented cached features"
    return kept, [*notes, note]


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
    probing = find_probe_boundaries(candidates, sample, ctx)
    if not found and not probing:
        return
    paths = sorted({b.path for b in found.values()} | {b.path for b in probing.values()})
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
        if probing:  # the probe stage trains on cached features only
            raise ZooError(
                f"LP-FT's probe stage needs features cached at the head: {exc}"
            ) from None
        shared.notes.append(f"boundary cache not used, every candidate trained on images: {exc}")
        return
    shared.activations = {path: (out[path][0], out[path][1]) for path in paths}
    for i, boundary in found.items():
        candidates[i].cut = boundary
    for i, boundary in probing.items():
        candidates[i].probe_cut = boundary
        candidates[i].probe_features = shared.activations[boundary.path]


def find_probe_boundaries(
    candidates: list[Candidate], sample: torch.Tensor, ctx: DistContext
) -> dict[int, Boundary]:
    """The head's input of each candidate with a probe stage (LP-FT), found on its own model
    with the head plan applied (its plan applied again after). Its features are the base
    model's there, so a candidate that adds modules (adapters) is refused: they could change
    them."""
    found: dict[int, Boundary] = {}
    for i, cand in enumerate(candidates):
        if not cand.probe_epochs:
            continue
        if cand.plan.additions:
            raise ZooError(
                f"{cand.spec} adds modules to the model, so the head's input is not the base "
                "model's: LP-FT's probe stage (probe_start=) cannot share the cached features; "
                "leave probe_start out for adapter policies"
            )
        apply_plan(cand.model, head_plan(cand.plan))
        try:
            found[i] = on_every_rank(ctx, functools.partial(find_boundary, cand.model, sample))
        except CacheUnsupported as exc:
            raise ZooError(
                f"{cand.spec} fits the head first (LP-FT), but the head's input cannot be "
                f"cached on this model: {exc}"
            ) from None
        finally:
            apply_plan(cand.model, cand.plan)
    return found


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
    blend: bool = False,
) -> Outcome:
    """Compare ``planned`` on ``model`` (built, on its device, input config set): the shared
    work, then successive halving; with ``blend``, the blends of the candidates become rows
    too (:mod:`zoo.adaptation.blend`)."""
    shared = prepare_shared(data, config, settings, ctx)
    small = small_validation_note(data.images("val"))
    notes = [*notes, small] if small else notes
    candidates = [make_candidate(model, p) for p in planned]
    for cand in candidates:
        cand.probe_epochs = probe_epochs(cand.plan, settings.epochs)
    candidates, notes = without_probes_when_augmented(candidates, shared, settings, notes)
    cache_boundaries(model, candidates, shared, settings, ctx=ctx, callback=callback)
    candidates = with_rate_sweep(model, candidates)
    for cand in candidates:
        cand.start(shared, settings, len(data.classes), ctx)
    outcome = run_halving(
        candidates,
        settings,
        ctx=ctx,
        budget=budget,
        t_start=t_start,
        callback=callback,
        finish=finish,
        relative_budget=relative_budget,
        notes=[*notes, *shared.notes],
        keep_models=blend,
    )
    images = (data.images("val"), data.images("train"))
    if finish and 0 < images[0] < NOISE_VALIDATION and not outcome.leaderboard.budget_cut:
        outcome = rank_within_noise(
            outcome, model, shared, settings, images, num_classes=len(data.classes), ctx=ctx
        )
    if blend:  # the soup and WiSE-FT rows (zoo.adaptation.blend)
        for cand in outcome.candidates:  # with ema: blends average the weights scored
            if cand.trainee is not None:
                cand.trainee.finish()
        winner = outcome.winner
        ranked = sorted(outcome.candidates, key=lambda c: (c is not winner, -c.epochs_run, c.score))
        blends, more, score = blend_candidates(model, ranked, shared.loaders()[1][1], ctx)
        outcome.leaderboard, outcome.blend = ranked_with_blends(
            outcome.leaderboard, blends, winner.total_params, score, more, images[0]
        )
    return outcome


# ---------------------------------------------------------------- ranking within the noise


def rank_within_noise(
    outcome: Outcome,
    base: nn.Module,
    shared: SharedData,
    settings: TrainConfig,
    images: tuple[int, int],
    *,
    num_classes: int,
    ctx: DistContext,
) -> Outcome:
    """With fewer than :data:`~zoo.io.leaderboard.NOISE_VALIDATION` validation images: score
    each finished candidate on cached activations whose extra splits cost at most one full
    run of the slowest candidate on :data:`~zoo.io.leaderboard.SPLITS` stratified splits of the
    labelled images (its own rate and epochs, a fresh copy each), give every finished candidate
    an interval of one standard error (one split: binomial,
    :func:`~zoo.io.leaderboard.interval`); the best mean wins, and the candidates whose mean
    lies inside its interval are marked tied (:func:`~zoo.io.leaderboard.choose_within_noise`).
    ``images``: (validation, training) images of a split."""
    finished = [c for c in outcome.candidates if not c.swept and not c.stopped_early(settings)]
    resampled = []
    slowest = max(c.seconds_per_epoch for c in finished)
    for cand in finished:
        cand.split_scores = [float(cand.records[-1].val_accuracy or 0.0)]
        cheap = cand.seconds_per_epoch * (SPLITS - 1) <= slowest
        if cand.cut is None or cand.probe_epochs or ctx.enabled or not cheap:
            continue  # (a probe stage's features are of the run's own split)
        train, val = shared.activations[cand.cut.path]
        for r in range(1, SPLITS):
            twin = twin_of(base, cand)
            twin.start_on(resplit(train, val, settings.seed + r), settings, num_classes, ctx)
            while twin.epochs_run < cand.epochs_run:
                twin.train_epoch()
            cand.split_scores.append(float(twin.records[-1].val_accuracy or 0.0))
            cand.seconds += twin.seconds
        resampled.append(cand.spec)
    listed = [c for c in outcome.candidates if not c.swept]
    rows = [_row(c, settings, outcome.candidates, images) for c in listed]
    win, tied = choose_within_noise(rows)
    rows = [replace(r, tied=i in tied) for i, r in enumerate(rows)]
    order = sorted(
        range(len(rows)),
        key=lambda i: (
            i != win,
            rows[i].stopped_early,
            rank_key(rows[i].score, rows[i].val_loss, rows[i].trainable_params),
        ),
    )
    board = outcome.leaderboard
    note = noise_note(images, resampled, len(finished), distributed=ctx.enabled)
    board = replace(board, rows=tuple(rows[i] for i in order), notes=(*board.notes, note))
    return Outcome(listed[win], outcome.candidates, board)


def noise_note(
    images: tuple[int, int], resampled: Sequence[str], finished: int, *, distributed: bool
) -> str:
    """What :func:`rank_within_noise` did, for the leaderboard."""
    val, train = images
    text = (
        f"ranked within the noise: the validation set has {val} image(s), fewer than "
        f"{NOISE_VALIDATION}, so every candidate trained to the end has an interval (one "
        "standard error each side), the best mean wins, and those whose mean lies inside its "
        "interval are marked tied; "
    )
    if resampled:
        text += (
            f"{len(resampled)} candidate(s) on cached activations were scored on {SPLITS} "
            f"stratified splits of the {val + train} labelled images (mean, spread, standard "
            "error with Nadeau and Bengio's correction)"
        )
    if len(resampled) < finished:
        why = (
            "under torchrun"
            if distributed
            else "on images, or whose extra splits would cost more than one full run"
        )
        text += (
            "; the others" if resampled else "the candidates"
        ) + f" ({why}) were scored on the run's split only (a binomial interval)"
    return text


def resplit(
    train: CachedFeatures, val: CachedFeatures, seed: int
) -> tuple[CachedFeatures, CachedFeatures]:
    """Another stratified split of ``train`` and ``val`` together: as many validation
    images of each class as ``val`` has, drawn with ``seed``."""
    features = torch.cat([train.features, val.features])
    labels = torch.cat([train.labels, val.labels])
    on_cpu, val_labels = labels.cpu(), val.labels.cpu()
    generator = torch.Generator().manual_seed(seed)
    is_val = torch.zeros(len(on_cpu), dtype=torch.bool)
    for label in torch.unique(val_labels).tolist():
        pool = torch.nonzero(on_cpu == label).flatten()
        count = int((val_labels == label).sum())
        is_val[pool[torch.randperm(len(pool), generator=generator)[:count]]] = True
    is_val = is_val.to(labels.device)
    return (
        CachedFeatures(features[~is_val], labels[~is_val]),
        CachedFeatures(features[is_val], labels[is_val]),
    )
