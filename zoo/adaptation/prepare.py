"""The start of a run, what ``zoo.adapt`` and ``zoo.compare`` both do before and after they train.

:func:`open_run` checks the process settings, joins the process group (or not), and checks the
target name and the starting point before any data is read: a backbone name, a saved model, a
file or a module (:func:`check_start`), and the weights it starts from (:func:`choose_weights`).
The :class:`Run` it yields reads the data and builds the model to adapt, a classifier for the
run's classes (:meth:`Run.prepare`: a fresh backbone, a saved model re-used or given a new
head, or the caller's module with its head reset), starts the history (:meth:`Run.history`),
saves the result on rank 0 (:meth:`Run.finish`) and reports the end (:meth:`Run.end`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from zoo.adaptation.cache import max_cache_bytes
from zoo.adaptation.checkpoint import seed_rngs
from zoo.adaptation.data import check_auto_augment, input_config_of, with_overrides
from zoo.adaptation.distributed import DistContext, is_sharded, setup
from zoo.adaptation.history import AdaptCallback, History
from zoo.adaptation.inputs import AdaptData, image_size_hint, prepare_data
from zoo.adaptation.speed import Speed
from zoo.core.build import attach_build_info
from zoo.core.record import attach_record, backbone_of, record_of, unwrap
from zoo.core.specs import InputConfig
from zoo.errors import (
    AdaptArgumentError,
    MissingBaseError,
    UnknownNameError,
    WeightsMismatchError,
    WeightsUnavailableError,
    ZooError,
)
from zoo.io import hub, store
from zoo.io.create import create_model
from zoo.io.fileformat import read_header
from zoo.io.metadata import ZooMetadata, is_zoo_metadata
from zoo.io.persistence import check_free, resolve_target, save
from zoo.io.sharing import load
from zoo.io.store import is_path_target, list_saved
from zoo.io.trust import file_in
from zoo.tables.build import classifier_param_names

if TYPE_CHECKING:
    from zoo.adaptation.checkpoint import Checkpointer
    from zoo.adaptation.config import TrainConfig
    from zoo.core.catalog import Catalog
    from zoo.core.specs import BackboneSpec
    from zoo.plans.plan import Plan


@contextlib.contextmanager
def open_run(point: Any, config: TrainConfig, *, catalog: Catalog) -> Iterator[Run]:
    """The :class:`Run` of ``config`` from the starting point ``point``, checked before any
    data is read: the feature cache's budget (``ZOO_FEATURE_CACHE_MAX_BYTES``, unless the
    cache is off), the device and what it can run (precision, compile backend), then the
    target name (free unless ``overwrite``), the
    starting point and its weights. Under ``torchrun`` a failure on any rank stops every rank,
    with its message; the process group this opened is left at the end, except after a
    sharded run (``shard=True``) that succeeded: the model it returns is still sharded, so
    every forward is a collective over that group, and the caller ends it
    (:func:`~zoo.adaptation.distributed.end_group`) when done with it."""
    started = time.perf_counter()
    if config.feature_cache is not False:
        max_cache_bytes()
    check_auto_augment(config.auto_augment)
    ctx = setup(config.distributed, config.device)
    try:
        with ctx.guard():
            Speed.check(config, ctx.device, distributed=ctx.enabled)
            check_target(config.name, config.overwrite)
            start = choose_weights(point, check_start(point, catalog), config, catalog)
            reports = config.callback is not None and ctx.is_main  # progress on rank 0 only
            callback = config.callback if reports else AdaptCallback()
            yield Run(point, config, ctx, catalog, start, started, callback)
    except BaseException:
        ctx.close()
        raise
    if not config.shard:
        ctx.close()


@dataclass
class Run:
    """A run of ``zoo.adapt`` or ``zoo.compare`` whose start is checked (:func:`open_run`).

    ``callback`` is the caller's on rank 0 (a silent one elsewhere); ``data``,
    ``input_config`` and ``hints`` (what the run could do better, said before training: an
    ``--image-size`` for small images) are set by :meth:`prepare`."""

    point: Any
    config: TrainConfig
    ctx: DistContext
    catalog: Catalog
    start: StartWeights
    started: float
    callback: AdaptCallback
    data: AdaptData = field(init=False)
    input_config: InputConfig = field(init=False)
    hints: list[str] = field(init=False, default_factory=list)

    def prepare(self, train: Any, val: Any) -> nn.Module:
        """The data (read and checked), then the model to train: the random generators seeded,
        the model built from the start with a classifier for the data's classes
        (:func:`build_model`), a save under the run's name checked (:func:`check_savable`),
        the input config with ``image_size`` and ``input_config`` applied, the record of the
        classes and input config attached, the model on the run's device."""
        config = self.config
        self.data = prepare_data(
            train,
            val,
            classes=config.classes,
            val_split=config.val_split,
            seed=config.seed,
            on_corrupt=config.on_corrupt,
        )
        seed_rngs(config.seed)
        model = build_model(
            self.point,
            self.data.classes,
            pretrained=self.start.pretrained,
            weights=self.start.weights,
            kwargs=config.model_kwargs or {},
            catalog=self.catalog,
        )
        check_savable(model, name=config.name, delta=config.delta)
        self.input_config = with_overrides(
            input_config_of(model), image_size=config.image_size, overrides=config.input_config
        )
        hint = image_size_hint(self.data, self.input_config, config.image_size is not None)
        self.hints = [hint] if hint else []
        record = attach_record(model)
        record.input_config = self.input_config
        record.classes = list(self.data.classes)
        model.to(self.ctx.device)
        return model

    def history(self, model: nn.Module, plan: Plan, notes: list[str], **more: Any) -> History:
        """The history of training ``model`` under ``plan``: the run's context, and ``more``."""
        config = self.config
        return History(
            backbone=backbone_of(model),
            start=self.start.description,
            policy=plan.policy,
            policy_args=dict(plan.args),
            classes=list(self.data.classes),
            skipped=self.data.skipped,
            input_size=list(self.input_config.input_size),
            optimizer=config.optimizer,
            lr=config.lr,
            batch_size=config.batch_size,
            device=str(self.ctx.device),
            world_size=self.ctx.world_size,
            name=config.name,
            notes=notes,
            **more,
        )

    def finish(
        self, model: nn.Module, history: History, *, keeper: Checkpointer | None = None
    ) -> None:
        """Record how ``model`` trained (``zoo.training``), put it in eval mode, and save it
        under the run's name on rank 0 (every rank gets the path); with a ``keeper``, the
        checkpoint goes once saved, and a save that fails says that the trained run is kept
        and how to save it without training again."""
        config = self.config
        attach_record(model).training = history.training_record(config.epochs)
        model.eval()
        if config.name is None:
            return
        sharded = is_sharded(model)  # saving gathers it: every rank calls save
        if self.ctx.is_main or sharded:
            try:
                path = save(
                    model,
                    config.name,
                    classes=list(self.data.classes),
                    delta=config.delta,
                    overwrite=config.overwrite,
                    catalog=self.catalog,
                )
            except ZooError as exc:
                kept = keeper.not_saved(exc, config.epochs) if keeper is not None else None
                if kept is None:
                    raise
                raise kept from exc
            history.path = str(path)
            if keeper is not None and self.ctx.is_main:
                keeper.remove()  # saved: the checkpoint is no longer needed
        self.ctx.barrier()
        history.path = self.ctx.broadcast(history.path)

    def end(self, history: History) -> History:
        """``history`` with the run's total time, reported to the callback."""
        history.total_seconds = time.perf_counter() - self.started
        self.callback.on_end(history)
        return history


def check_random_start(start: StartWeights, what: str | None) -> None:
    """Refuse training ``what`` (a plan that freezes part of the backbone; None: nothing is
    frozen) on random weights the caller did not ask for: frozen random layers are noise, not
    a starting point."""
    if what is None or not start.random or start.explicit:
        return
    raise ZooError(
        f"{what}, which starts from {start.description}: frozen random layers only add noise. "
        "Train every layer (policy='full', --policy full), start from trained weights "
        "(weights=FILE|NAME, --weights), or pass scratch=True (--scratch) to train on random "
        "weights anyway"
    )


def _store_path(name: str) -> Path | None:
    """The file of store entry ``name`` when it exists (None otherwise, or for invalid names)."""

    try:
        path = store.model_file(name)
    except ZooError:
        return None
    return path if path.is_file() else None


def check_target(name: str | os.PathLike[str] | None, overwrite: bool) -> None:
    """Fail before training when ``name`` is invalid or taken (and ``overwrite`` is False)."""
    if name is None:
        return

    check_free(resolve_target(name), overwrite)


def resolve_weights(weights: str | os.PathLike[str] | None) -> Path | None:
    if weights is None:
        return None
    if hub.is_hub_id(weights):  # the cached snapshot's model.safetensors (a zoo or timm file)
        folder = hub.snapshot(hub.parse(str(weights)))
        return file_in(folder, store.MODEL_FILE, what=f"the weights of {weights}")
    path = Path(weights).expanduser()
    if path.is_file():
        return path
    stored = _store_path(str(weights)) if isinstance(weights, str) else None
    if stored is not None:
        return stored
    raise ZooError(
        f"weights {str(weights)!r} are neither a file nor a model in the store (see `zoo models`)"
    )


def check_start(backbone_or_model: Any, catalog: Catalog) -> str:
    """Check (cheaply, before data is read) that a starting point resolves; describe it."""
    if isinstance(backbone_or_model, nn.Module):
        return f"module {type(backbone_or_model).__name__}"
    if not isinstance(backbone_or_model, (str, os.PathLike)):
        raise ZooError(
            "adapt() starts from a backbone name, a saved model's name, a .safetensors file or "
            f"an nn.Module, not {type(backbone_or_model).__name__}"
        )

    text = str(backbone_or_model)
    if hub.is_hub_id(text):  # resolved now: offline without a cached copy fails at once
        hub.snapshot(hub.parse(text))
        return f"hub model {text}"
    if is_path_target(backbone_or_model):
        if Path(text).expanduser().is_file():
            return f"file {text}"
        raise ZooError(f"model file {text!r} does not exist")
    if _store_path(text) is not None:
        return f"saved model {text!r}"

    try:
        spec, _ = catalog.backbone(text)
    except UnknownNameError as exc:
        raise UnknownNameError(
            "backbone or saved model",
            text,
            [*catalog.backbones.by_qualified, *_saved_names()],
        ) from exc
    return f"backbone {spec.qualified_name}"


@dataclass(frozen=True)
class StartWeights:
    """Where the starting weights of an adapt run come from.

    ``pretrained``/``weights`` are what the backbone is built with; ``random`` is True for
    random initialisation and ``explicit`` when the caller asked for it (``scratch=True`` or
    ``pretrained=False``); ``description`` is what the summary prints (the starting point, and
    for a backbone name the weights it starts from).
    """

    pretrained: bool | str = False
    weights: Path | None = None
    random: bool = False
    explicit: bool = False
    description: str = ""


def choose_weights(
    backbone_or_model: Any, start_desc: str, config: TrainConfig, catalog: Catalog
) -> StartWeights:
    """Decide (before any data is read) which weights a run starting from ``start_desc``
    (:func:`check_start`) starts from.

    A backbone name starts from its pretrained weights unless ``weights`` (a file or a saved
    model) or ``scratch=True`` / ``pretrained=False`` (random init) say otherwise; a backbone
    without pretrained weights starts from random weights. A saved model, a file or a module
    starts from its own weights, and the three options are refused there.
    """
    pretrained, weights, scratch = config.pretrained, config.weights, config.scratch
    if scratch and (weights is not None or pretrained):
        raise AdaptArgumentError(
            "scratch",
            scratch,
            "False when pretrained= or weights= is given (scratch starts from random weights; "
            "pass only one of scratch, pretrained and weights)",
        )
    if not start_desc.startswith("backbone"):
        if weights is not None or pretrained is not None or scratch:
            raise ZooError(
                f"pretrained=, weights= and scratch= (--pretrained, --weights, --scratch) apply "
                f"when starting from a backbone name; this run starts from the {start_desc}, "
                "whose weights are used as they are"
            )
        return StartWeights(description=start_desc)  # its own weights
    spec, tag = catalog.backbone(str(backbone_or_model))
    if weights is not None:
        path = resolve_weights(weights)
        shown = f"saved model {weights!r}" if path != Path(weights).expanduser() else str(path)
        return StartWeights(weights=path, description=f"{start_desc}, weights of {shown}")
    if scratch or pretrained is False:
        how = "scratch=True" if scratch else "pretrained=False"
        return StartWeights(
            random=True,
            explicit=True,
            description=f"{start_desc}, random weights (asked for: {how})",
        )
    if not spec.pretrained_tags:
        return StartWeights(
            random=True,
            description=f"{start_desc}, random weights ({spec.qualified_name} has no "
            "pretrained weights)",
        )
    chosen = pretrained if isinstance(pretrained, str) else True
    shown_tag = chosen if isinstance(chosen, str) else (tag or spec.pretrained_tags[0])
    return StartWeights(
        pretrained=chosen,
        description=f"{start_desc}, pretrained weights {spec.qualified_name}.{shown_tag}"
        + ("" if pretrained else " (default; scratch=True / --scratch for random init)"),
    )


def _saved_names() -> list[str]:
    try:
        return [getattr(e, "name", str(e)) for e in list_saved()]
    except Exception:  # listing is only for suggestions
        return []


def build_model(
    backbone_or_model: Any,
    classes: Sequence[str],
    *,
    pretrained: bool | str,
    weights: Path | None,
    kwargs: Mapping[str, Any],
    catalog: Catalog,
) -> nn.Module:
    """The model to adapt, with a classifier for ``classes``; a wrapped module
    (``torch.compile``, DDP) is adapted as the model it wraps."""
    if isinstance(backbone_or_model, nn.Module):
        model = unwrap(backbone_or_model)
        _ensure_build_info(model, catalog)
        _fit_head(model, len(classes))
        return model
    text = str(backbone_or_model)
    if hub.is_hub_id(text) or is_path_target(backbone_or_model) or _store_path(text) is not None:
        saved = load(backbone_or_model, trainable=True, catalog=catalog)
        old = saved.zoo.classes
        if (old is not None and list(old) == list(classes)) or (
            old is None and _num_outputs(saved) == len(classes)
        ):
            return saved
        return _with_new_head(saved, len(classes), catalog)
    try:
        model = create_model(
            catalog,
            text,
            num_classes=len(classes),
            pretrained=pretrained,
            weights=weights,
            **dict(kwargs),
        )
    except WeightsUnavailableError as exc:
        raise WeightsUnavailableError(
            f"{exc} To adapt without them: --weights FILE|NAME (weights=) starts from a file or "
            "a saved model, --scratch (scratch=True) from random weights."
        ) from None
    if weights is not None:
        saved = saved_input_config(weights)
        if saved is not None:  # the input config the weights were trained with
            model.zoo.input_config = saved
    return model


def check_savable(model: nn.Module, *, name: str | None, delta: bool | None) -> None:
    """Refuse, before training, a save under ``name`` that could not happen afterwards."""
    record = record_of(model)
    if delta and name is not None and not (record is not None and record.base):
        raise MissingBaseError(
            "delta=True saves only what differs from recorded starting weights, and this "
            "model has none (random weights); start from pretrained weights, weights=FILE "
            "or a saved model, or save in full (delta=False)"
        )
    if name is not None and (record is None or record.build is None):
        raise ZooError(
            f"cannot save this {type(model).__name__} as {str(name)!r}: zoo only saves models "
            "it can rebuild (built by zoo.create, loaded by zoo.load, or a timm model); "
            "start from a backbone name, or pass name=None and save the weights yourself"
        )


def saved_input_config(path: Path) -> InputConfig | None:
    """The input config a zoo-saved file records (an :class:`~zoo.InputConfig`), else None."""
    try:
        header = read_header(path)
        if not is_zoo_metadata(header.metadata):
            return None
        meta = ZooMetadata.parse(header.metadata, source=str(path))
        return InputConfig.from_dict(meta.input_config) if meta.input_config else None
    except ZooError:
        return None


def _with_new_head(saved: nn.Module, num_classes: int, catalog: Catalog) -> nn.Module:
    """A copy of a loaded model with a freshly initialised classifier of ``num_classes``.

    Everything but the classifier (found with ``get_classifier`` or as the last linear layer)
    is copied; a saved model trained for other classes keeps its features, not its head.
    """

    record = saved.zoo
    name = record.build.backbone  # no tag: a tag names weights, these come from the saved model
    # the kwargs were checked when the model was loaded (zoo.io.build_args.check_saved_kwargs)
    fresh = create_model(catalog, name, num_classes=num_classes, **dict(record.build.kwargs))
    state = saved.state_dict()
    own = fresh.state_dict()
    head = set(classifier_param_names(fresh))
    skip = {k for k in own if k in head or (k in state and state[k].shape != own[k].shape)}
    missing = [k for k in own if k not in state and k not in skip]
    if missing:
        raise WeightsMismatchError(
            f"the saved model does not fit a fresh {name}: missing {', '.join(missing[:5])}"
        )
    fresh.load_state_dict(
        {k: v for k, v in state.items() if k in own and k not in skip}, strict=False
    )
    fresh.zoo.input_config = record.input_config
    if record.base:  # provenance: the new model still comes from the saved one
        fresh.zoo.base = dict(record.base)
    return fresh


def _num_outputs(model: nn.Module) -> int | None:
    record = record_of(model)
    if record is not None and record.build is not None and record.build.num_classes:
        return int(record.build.num_classes)
    value = getattr(model, "num_classes", None)
    return int(value) if isinstance(value, int) else None


def _ensure_build_info(model: nn.Module, catalog: Catalog) -> None:
    """Give a model built outside zoo its record with build arguments (so it can be saved) when
    a plugin says which backbone it is (hook ``zoo_identify_model``); its input config is the
    one its own data config gives (timm's), unless it carries the hint ``zoo_input_config``."""
    record = record_of(model)
    if record is not None and record.build is not None:
        return
    spec = identify(model, catalog)
    if spec is None:
        return
    attach_build_info(
        model,
        spec,
        tag=None,
        num_classes=getattr(model, "num_classes", None),
        kwargs={},
        input_config=input_config_of(model),
    )


def identify(model: nn.Module, catalog: Catalog) -> BackboneSpec | None:
    """The spec of the first plugin answer to ``zoo_identify_model`` that the catalog knows."""
    for _plugin, name in catalog.host.call_each(
        "zoo_identify_model", lambda _plugin: {"model": model}
    ):
        if isinstance(name, str):
            try:
                return catalog.backbone(name)[0]
            except ZooError:
                continue
    return None


def _fit_head(model: nn.Module, num_classes: int) -> None:
    current = _num_outputs(model)
    if current == num_classes:
        return
    reset = getattr(model, "reset_classifier", None)
    if callable(reset):
        reset(num_classes)
        record = record_of(model)
        if record is not None and record.build is not None:
            record.build = replace(record.build, num_classes=num_classes)
    # otherwise checked on the first batch: the logits must have num_classes columns
