"""Compare freeze policies on your own data: ``zoo.compare`` and ``zoo compare``.

::

    result = zoo.compare("timm:resnet18", "data/train", "data/val", epochs=8, name="flowers")
    result.leaderboard.winner.policy     # e.g. "zoo:train-last:n=1"
    model, history = result.model, result.history

Every candidate policy starts from the same weights, split, seed and input config and trains on
un-augmented images (the comparison is fair, and cacheable). The frozen computation is shared:
images are decoded once, prefix-frozen plans train on activations cached at their freeze
boundary, and successive halving drops weak candidates early (:mod:`zoo.adaptation.halving`).
The winner, trained to the end, is saved under ``name`` with the leaderboard in its metadata.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, NamedTuple

from zoo.adaptation.candidates import check_policy, plan_candidates, split_policies
from zoo.adaptation.compare_plot import check_plot_available, check_plot_path, write_plot
from zoo.adaptation.history import AdaptCallback, History
from zoo.adaptation.inputs import prepare_data
from zoo.adaptation.job import AdaptConfig, config_signature
from zoo.adaptation.starting_point import check_start, check_target, choose_weights, prepare_model
from zoo.core.record import attach_record, backbone_of
from zoo.errors import AdaptArgumentError, ZooError, suggest
from zoo.io.leaderboard import Leaderboard
from zoo.io.persistence import save
from zoo.tables.build import table_for

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.data import DataLoader

    from zoo.core.catalog import Catalog

#: Most candidates one comparison takes (each holds a copy of the model).
MAX_CANDIDATES = 64
#: Largest budget in seconds (about 31 years: what the saved leaderboard accepts).
MAX_BUDGET = 1e9


class CompareResult(NamedTuple):
    """``(model, history, leaderboard)``: the winner, its training history, every candidate."""

    model: nn.Module
    history: History
    leaderboard: Leaderboard


@dataclass(frozen=True)
class CompareConfig:
    """One field per keyword argument of :func:`zoo.compare`, with the same defaults."""

    policies: Sequence[str] | str | None = None
    epochs: int = 5
    budget: float | None = None
    name: str | None = None
    overwrite: bool = False
    plot: str | os.PathLike[str] | None = None
    seed: int = 0
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    optimizer: str = "adamw"
    momentum: float = 0.9
    lr_schedule: str = "cosine"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    pretrained: bool | str | None = None
    weights: str | os.PathLike[str] | None = None
    scratch: bool = False
    model_kwargs: Mapping[str, Any] | None = None
    classes: Sequence[str] | None = None
    val_split: float | None = None
    image_size: int | Sequence[int] | None = None
    input_config: Mapping[str, Any] | None = None
    on_corrupt: str = "skip"
    device: str | None = None
    distributed: bool | None = None
    num_workers: int = 0
    callback: AdaptCallback | None = None

    def adapt_config(self) -> AdaptConfig:
        """The same settings as an :class:`AdaptConfig` (its checks and its names)."""
        own = {"policies", "budget", "plot"}
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in own}
        return AdaptConfig(policy="full", augment=False, **values)

    def policy_list(self) -> list[str] | None:

        if self.policies is None:
            return None
        if isinstance(self.policies, str):
            return split_policies(self.policies)
        return list(self.policies)

    def check(self, val: Any) -> None:
        """Raise :class:`~zoo.AdaptArgumentError` naming the first refused argument."""
        self.adapt_config().check()
        policies = self.policies
        if policies is not None:
            items = [policies] if isinstance(policies, str) else policies
            if (
                isinstance(items, (str, bytes))
                or not isinstance(items, Sequence)
                or not all(isinstance(p, str) and p.strip() for p in items)
            ):
                raise AdaptArgumentError(
                    "policies", policies, "a list of policy specs, 'spec,spec,...' or 'spec;spec'"
                )
            count = len(self.policy_list() or [])
            if not 1 <= count <= MAX_CANDIDATES:
                raise AdaptArgumentError(
                    "policies", policies, f"1 to {MAX_CANDIDATES} policy specs"
                )
        budget = self.budget
        if budget is not None and not (
            isinstance(budget, (int, float))
            and not isinstance(budget, bool)
            and budget == budget
            and 0 < budget <= MAX_BUDGET
        ):
            raise AdaptArgumentError(
                "budget", budget, f"None or a number of seconds > 0 (at most {MAX_BUDGET:g})"
            )
        if self.plot is not None and not isinstance(self.plot, (str, os.PathLike)):
            raise AdaptArgumentError("plot", self.plot, "None or the path of a .png file")
        if val is None and self.val_split is None:
            raise AdaptArgumentError(
                "val",
                None,
                "validation data to compare on: pass val (--val DIR) or val_split (--val-split F)",
            )


def compare(
    backbone_or_model: str | os.PathLike[str] | nn.Module,
    train: str | os.PathLike[str] | DataLoader,
    val: str | os.PathLike[str] | DataLoader | None = None,
    *,
    catalog: Catalog,
    **options: Any,
) -> CompareResult:
    """Train several freeze policies on the same data and keep the best; returns
    ``(model, history, leaderboard)``.

    ``policies``: specs (a list, or one text ``"spec,spec"`` / ``"spec;spec"`` read by
    :func:`~zoo.adaptation.candidates.split_policies`: ``"linear-probe,lora:rank=4,alpha=8"``
    is two specs; default: a ladder from ``linear-probe`` through ``train-last:n=1..3`` to
    ``bitfit``, ``norm-only``, ``layer-decay`` and ``full``).
    Validation data is required (``val`` or ``val_split``): the candidates are ranked by
    validation accuracy (then loss, then fewer trained parameters). ``epochs`` is the full run
    of a candidate; successive halving stops weak ones early, and ``budget`` (seconds) caps the
    whole comparison. ``name`` saves the winner with the leaderboard in its metadata; ``plot``
    writes a PNG of accuracy against trained parameters (needs matplotlib). The other keyword
    arguments are those of :func:`zoo.adapt`, applied to every candidate (no augmentation).
    """
    return run(backbone_or_model, train, val, compare_config(options), catalog=catalog)


#: Keywords of :func:`zoo.adapt` that ``compare`` refuses, and why (``AdaptArgumentError``
#: reads "ARG must be RULE, not VALUE").
_ADAPT_ONLY = {
    "augment": "left out: zoo.compare always trains on un-augmented images (the same, "
    "cacheable inputs for every candidate make the comparison fair); to train the winner with "
    "augmentation, pass its policy to zoo.adapt",
    "policy": "left out: zoo.compare takes policies=[SPEC, ...] (the candidates to compare)",
}


def compare_config(options: Mapping[str, Any]) -> CompareConfig:
    """:class:`CompareConfig` of ``compare``'s keyword arguments; an unknown one is an
    :class:`~zoo.AdaptArgumentError` naming it (not a ``TypeError``)."""
    known = [f.name for f in fields(CompareConfig)]
    for key in options:
        if key not in known:
            close = suggest(str(key), known, n=3)
            why = _ADAPT_ONLY.get(key) or (
                "left out: it is not an argument of zoo.compare"
                + (f" (did you mean {', '.join(close)}?)" if close else "")
            )
            raise AdaptArgumentError(str(key), options[key], why)
    return CompareConfig(**options)


compare.__signature__ = config_signature(compare, CompareConfig, "CompareResult")  # type: ignore[attr-defined]


def run(
    backbone_or_model: str | os.PathLike[str] | nn.Module,
    train: str | os.PathLike[str] | DataLoader,
    val: str | os.PathLike[str] | DataLoader | None,
    options: CompareConfig,
    *,
    catalog: Catalog,
) -> CompareResult:
    """The comparison job: :func:`compare` with its keyword arguments in ``options``."""

    from zoo.adaptation.distributed import setup
    from zoo.adaptation.halving import TrainSettings, compare_candidates

    t_start = time.perf_counter()
    options.check(val)
    if options.plot is not None:
        check_plot_available()
        check_plot_path(options.plot)
    ctx = setup(options.distributed, options.device)
    try:
        with ctx.guard():
            check_target(options.name, options.overwrite)
            start_desc = check_start(backbone_or_model, catalog)
            start = choose_weights(
                backbone_or_model,
                start_desc,
                pretrained=options.pretrained,
                weights=options.weights,
                scratch=options.scratch,
                catalog=catalog,
            )
            for spec in options.policy_list() or []:
                check_policy(spec, catalog)  # unknown names and schedules: before any data
            if start.random and not start.explicit:
                raise ZooError(
                    f"compare starts from {start.description}: frozen random layers only add "
                    "noise, so only full fine-tuning makes sense; start from trained weights "
                    "(weights=FILE|NAME, --weights) or pass scratch=True (--scratch) to compare "
                    "policies on random weights anyway"
                )
            data = prepare_data(
                train,
                val,
                classes=options.classes,
                val_split=options.val_split,
                seed=options.seed,
                on_corrupt=options.on_corrupt,
            )
            callback = options.callback
            if callback is None or not ctx.is_main:
                callback = AdaptCallback()
            model, config = prepare_model(
                backbone_or_model,
                data.classes,
                start,
                seed=options.seed,
                model_kwargs=options.model_kwargs,
                image_size=options.image_size,
                input_config=options.input_config,
                name=options.name,
                delta=None,
                device=ctx.device,
                catalog=catalog,
            )
            table = table_for(model, catalog=catalog)
            planned, notes = plan_candidates(
                options.policy_list(),
                table,
                catalog,
                context={"num_classes": len(data.classes), "epochs": options.epochs},
            )
            settings = TrainSettings.from_options(options, len(data.classes))
            callback.on_start(
                {
                    "start": start.description,
                    "backbone": backbone_of(model),
                    "policies": [p.spec for p in planned],
                    "notes": notes,
                    "classes": list(data.classes),
                    "train_images": len(data.train.dataset)
                    if hasattr(data.train, "dataset")
                    else len(data.train),
                    "val_images": len(data.val.dataset)
                    if hasattr(data.val, "dataset")
                    else len(data.val),
                    "device": str(ctx.device),
                    "world_size": ctx.world_size,
                    "epochs": options.epochs,
                    "augment": False,
                    "feature_cache": True,
                    "note": "compare: un-augmented images, decoded once",
                    "input_size": list(config.input_size),
                }
            )
            outcome = compare_candidates(
                model,
                data,
                config,
                planned,
                settings,
                ctx=ctx,
                budget=options.budget,
                callback=callback,
                num_workers=options.num_workers,
                t_start=t_start,
                notes=notes,
            )
            board = outcome.leaderboard
            winner = outcome.winner
            best = winner.model
            history = History(
                epochs=list(winner.records),
                backbone=backbone_of(best),
                start=start.description,
                policy=winner.plan.policy,
                policy_args=dict(winner.plan.args),
                classes=list(data.classes),
                skipped=data.skipped,
                input_size=list(config.input_size),
                augment=False,
                feature_cache=winner.cut is not None,
                feature_cache_note=f"trained on {winner.trained_on}",
                optimizer=options.optimizer,
                lr=options.lr,
                batch_size=options.batch_size,
                device=str(ctx.device),
                world_size=ctx.world_size,
                name=options.name,
                notes=[f"compare: {board.why()}", *board.notes, *winner.plan.notes],
                trainable_params=winner.trainable_params,
                total_params=winner.total_params,
                stopped_early=winner.epochs_run < options.epochs,
            )
            history.train_images = len(getattr(data.train, "dataset", data.train))
            history.val_images = len(getattr(data.val, "dataset", data.val))
            record = attach_record(best)
            record.input_config = config
            record.classes = list(data.classes)
            record.training = history.training_record(options.epochs)
            record.compare = board.to_dict()
            best.eval()
            if options.name is not None:
                if ctx.is_main:
                    history.path = str(
                        save(
                            best,
                            options.name,
                            classes=list(data.classes),
                            overwrite=options.overwrite,
                            catalog=catalog,
                        )
                    )
                ctx.barrier()
                history.path = ctx.broadcast(history.path)
            if options.plot is not None and ctx.is_main:
                write_plot(board, options.plot)
            history.total_seconds = time.perf_counter() - t_start
            callback.on_end(history)
            return CompareResult(best, history, board)
    finally:
        ctx.close()
