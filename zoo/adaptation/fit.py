"""Training one policy as a run: what ``zoo.adapt`` does once its policy is decided, and what a
refit does (``zoo.compare``'s winner, or the measured ``auto``'s, retrained on the training and
validation images together).

:func:`fit` plans the policy on the model, trains it with the engine
(:func:`~zoo.adaptation.training.run_training`, checkpointing each epoch when given a
:class:`~zoo.adaptation.checkpoint.Checkpointer`) and returns the run's history.
:func:`refit_data` and :func:`refit_config` are what a refit changes: every labelled image
trains, at the winner's measured rate and for its epochs.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from zoo.adaptation.inputs import AdaptData, is_loader
from zoo.adaptation.prepare import check_random_start
from zoo.adaptation.probe import with_probe
from zoo.adaptation.training import run_training
from zoo.plans.binding import bind
from zoo.plans.schedule import ScheduleDriver
from zoo.tables.build import table_for

if TYPE_CHECKING:
    from torch import nn

    from zoo.adaptation.checkpoint import Checkpointer
    from zoo.adaptation.config import TrainConfig
    from zoo.adaptation.history import History
    from zoo.adaptation.prepare import Run
    from zoo.core.specs import PolicySpec


def fit(
    job: Run,
    model: nn.Module,
    policy: str | PolicySpec,
    kwargs: dict[str, Any],
    notes: list[str],
    *,
    keeper: Checkpointer | None = None,
    data: AdaptData | None = None,
    config: TrainConfig | None = None,
    augment_default: bool | None = None,
) -> History:
    """Train ``policy`` (with ``kwargs``) on ``model`` as ``config`` says (default: the run's),
    on ``data`` (default: the run's), and return the run's history. A ``keeper`` checkpoints
    each epoch (and keeps them on Ctrl-C). ``augment_default``: the augmentation when
    ``config.augment`` is None (None: on unless only the head trains; False for a refit,
    whose candidates were measured un-augmented unless asked otherwise)."""
    data = data if data is not None else job.data
    config = config if config is not None else job.config
    planner = ScheduleDriver(
        model, bind(policy, kwargs, job.catalog), table=table_for(model, catalog=job.catalog)
    )
    plan = planner.step(0).plan
    if config.probe_start and not planner.is_schedule:
        plan = planner.plan = with_probe(plan, config.probe_start)
    frozen = len(set(plan.trainable)) < len(list(model.parameters()))
    check_random_start(
        job.start, f"policy {plan.policy!r} freezes part of the backbone" if frozen else None
    )
    history = job.history(model, plan, [*notes, *plan.notes])
    try:
        trained_notes = run_training(
            model,
            data,
            planner,
            history,
            config,
            ctx=job.ctx,
            input_config=job.input_config,
            callback=job.callback,
            keeper=keeper,
            augment_default=augment_default,
        )
    except KeyboardInterrupt as exc:
        kept = keeper.interrupted(config.epochs) if keeper is not None and job.ctx.is_main else None
        if kept is not None:
            raise kept from exc
        raise
    history.lr = config.lr
    history.total_params = sum(p.numel() for p in model.parameters())
    final = planner.plan
    assert final is not None
    history.trainable_params = sum(
        p.numel() for n, p in model.named_parameters() if n in set(final.trainable)
    )
    history.policy, history.policy_args = final.policy, dict(final.args)
    history.notes = [*notes, *final.notes, *trained_notes]
    return history


def refit_data(data: AdaptData) -> AdaptData:
    """``data`` with the validation images joined to the training images, and no validation
    set (what a refit trains on)."""
    if data.val is None:
        return data
    if data.from_folders:
        train = dataclasses.replace(data.train, samples=(*data.train.samples, *data.val.samples))
    else:
        assert is_loader(data.train)
        train = _joined_loader(data.train, data.val)
    return dataclasses.replace(data, train=train, val=None)


def _joined_loader(train: Any, val: Any) -> Any:
    """A loader like ``train`` over ``train``'s dataset followed by ``val``'s, shuffled."""
    from torch.utils.data import ConcatDataset, DataLoader

    return DataLoader(
        ConcatDataset([train.dataset, val.dataset]),
        batch_size=train.batch_size or 1,
        shuffle=True,
        num_workers=train.num_workers,
        collate_fn=train.collate_fn,
        drop_last=train.drop_last,
    )


def refit_config(config: TrainConfig, lr_factor: float, epochs: int, images: int) -> TrainConfig:
    """``config`` for a refit on ``images`` labelled images: the winner's rate (``lr`` times
    its sweep's ``lr_factor``) and its epochs (its augmentation is the candidates': the
    caller trains it with ``augment_default=False``), without early stopping (there is no validation
    set to watch). The batch size grows by one while the last batch would hold a single
    image (a batch-norm layer in training cannot normalize one: joining the validation
    images to the training ones must not make a run fail that ran)."""
    batch = config.batch_size
    while images > batch and images % batch == 1:
        batch += 1
    return dataclasses.replace(
        config,
        lr=config.lr * lr_factor,
        epochs=epochs,
        batch_size=batch,
        warmup_epochs=min(config.warmup_epochs, epochs),
        early_stop=None,
    )
