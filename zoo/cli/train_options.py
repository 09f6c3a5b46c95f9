"""The options of ``zoo adapt`` and ``zoo compare``, each defined once.

:data:`OPTIONS` gives the command-line form of each field of
:class:`~zoo.adaptation.config.TrainConfig` that has one; both commands add theirs with
:func:`add_options` (the options of the fields their job takes, with the starting point and the
data), make their job's config of what was typed with :func:`config_from_args` (an option left
out keeps the field's default), and name the option typed when a value is refused
(:func:`named_by_option`).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import MISSING, dataclass, fields
from typing import Any

from zoo.adaptation.config import (
    LR_SCHEDULES,
    OPTIMIZERS,
    PRECISIONS,
    SIMILARITIES,
    TrainConfig,
    job_fields,
    split_policies,
)
from zoo.errors import AdaptArgumentError

#: Argument groups of the help, by title ("": the command's own options).
TRAINING = "training"
IMAGES = "images"
SPEED = "speed"


@dataclass(frozen=True)
class Option:
    """The command-line form of a :class:`TrainConfig` field: its ``flags`` and the rest of
    its ``add_argument`` keywords (a ``help`` may say ``{default}``, the field's default), the
    ``group`` it shows in (``"start"``: the mutually exclusive choice of starting weights),
    ``to_value`` (what was typed to the field's value) and ``refused``: the arguments other than
    the field that an :class:`~zoo.AdaptArgumentError` about this option names."""

    flags: tuple[str, ...]
    kwargs: dict[str, Any]
    group: str = ""
    to_value: Callable[[Any], Any] | None = None
    refused: tuple[str, ...] = ()


def _option(
    *flags: str,
    group: str = "",
    to_value: Callable[[Any], Any] | None = None,
    refused: tuple[str, ...] = (),
    **kwargs: Any,
) -> Option:
    """The :class:`Option` of ``flags``, with ``add_argument``'s other ``kwargs``."""
    return Option(flags, kwargs, group, to_value, refused)


def _switch(value: str) -> bool | str:
    return {"auto": "auto", "on": True, "off": False}[value]


def _pair(typed: str) -> tuple[float, float] | str:
    """``"0.5,1"`` as ``(0.5, 1.0)``; anything else as typed (the config refuses it, naming the
    option)."""
    try:
        low, high = (float(v) for v in typed.split(","))
    except ValueError:
        return typed
    return low, high


def _policy_list(given: list[str]) -> list[str] | str:
    """The specs of every ``--policies`` (each split by
    :func:`~zoo.adaptation.config.split_policies`); one flag's text is passed as typed, so
    that an error shows what was typed."""
    if len(given) == 1:
        return given[0]
    return [spec for text in given for spec in split_policies(text)]


#: The option of each field that has one, in the order ``--help`` lists them.
OPTIONS: dict[str, Option] = {
    "val_split": _option(
        "--val-split",
        help="hold out this fraction of --data for validation (stratified)",
        metavar="F",
        type=float,
    ),
    "policy": _option(
        "--policy",
        "-p",
        help="freeze policy and arguments, e.g. linear-probe, freeze-to:depth=3, gradual:every=2 "
        "(default: {default}; with --val or --val-split it compares the policies on the "
        "validation set and trains the winner, else it guesses from samples per class and "
        "--similarity)",
        metavar="SPEC",
    ),
    "policies": _option(
        "--policies",
        help="candidate policies (default: linear-probe, train-last:n=1..3, bitfit, norm-only, "
        "lora and ssf when installed, layer-decay, lp-ft, full); a spec keeps its own arguments "
        "(lora:rank=4,alpha=8,full is two specs); separate specs with ';' when an argument is "
        "a list, or repeat --policies",
        metavar="SPEC,SPEC,...",
        action="append",
        to_value=_policy_list,
    ),
    "epochs": _option(
        "--epochs", "-e", help="epochs of a full run (default {default})", metavar="N", type=int
    ),
    "budget": _option(
        "--budget",
        help="stop promoting candidates when the comparison would take longer",
        metavar="SECONDS",
        type=float,
    ),
    "overwrite": _option(
        "--overwrite", help="replace a saved model of the same name", action="store_true"
    ),
    "delta": _option(
        "--delta",
        help="save only what differs from the starting weights (adapter policies such as lora save "
        "this way by default)",
        action="store_true",
    ),
    "plot": _option(
        "--plot",
        help="write validation accuracy vs trained parameters as a PNG (needs matplotlib: "
        'pip install -e ".[plot]" in the zoo checkout)',
        metavar="FILE",
    ),
    "refit": _option(
        "--refit",
        help="retrain the winner on the training and validation images together, at its "
        "measured rate and epochs (default: on when the validation set has fewer than 200 "
        "images; --no-refit saves the model compare measured)",
        action=argparse.BooleanOptionalAction,
    ),
    "weights": _option(
        "--weights",
        help="start BACKBONE from a .safetensors file or a saved model's weights (and its input "
        "config: image size, mean/std)",
        metavar="FILE|NAME",
        group="start",
    ),
    "pretrained": _option(
        "--pretrained",
        help="start from the backbone's pretrained weights (the default for a backbone name; cache "
        "or download)",
        action="store_true",
        group="start",
    ),
    "scratch": _option(
        "--scratch",
        help="start from random weights (needed to train a partial policy on them)",
        action="store_true",
        group="start",
    ),
    "lr": _option("--lr", help="learning rate (default {default:g})", group=TRAINING, type=float),
    "batch_size": _option(
        "--batch-size",
        "-b",
        help="batch size per process (default {default})",
        group=TRAINING,
        metavar="N",
        type=int,
    ),
    "weight_decay": _option(
        "--weight-decay",
        help="weight decay (not on biases and norms; default {default})",
        group=TRAINING,
        metavar="WD",
        type=float,
    ),
    "optimizer": _option(
        "--optimizer", help="optimizer (default {default})", group=TRAINING, choices=OPTIMIZERS
    ),
    "lr_schedule": _option(
        "--lr-schedule",
        help="learning-rate schedule (default {default})",
        group=TRAINING,
        choices=LR_SCHEDULES,
    ),
    "warmup_epochs": _option(
        "--warmup-epochs",
        help="epochs (a fraction counts its steps) of linear lr warm-up (default {default})",
        group=TRAINING,
        metavar="E",
        type=float,
    ),
    "label_smoothing": _option(
        "--label-smoothing",
        help="label smoothing of the loss (default {default})",
        group=TRAINING,
        metavar="S",
        type=float,
    ),
    "similarity": _option(
        "--similarity",
        help="for --policy auto: how close the task is to the pretraining data (default {default})",
        group=TRAINING,
        choices=SIMILARITIES,
    ),
    "samples_per_class": _option(
        "--samples-per-class",
        help="for --policy auto: override the count taken from the data",
        group=TRAINING,
        metavar="N",
        type=int,
    ),
    "seed": _option("--seed", help="random seed (default {default})", group=TRAINING, type=int),
    "early_stop": _option(
        "--early-stop",
        help="stop after N epochs without a lower validation loss and save the best epoch's model "
        "(needs --val or --val-split)",
        group=TRAINING,
        metavar="N",
        type=int,
    ),
    "resume": _option(
        "--resume",
        help="continue the interrupted run saving under the same name from its last completed "
        "epoch (same command and settings; Ctrl-C keeps each completed epoch)",
        group=TRAINING,
        action="store_true",
    ),
    "blend": _option(
        "--blend",
        help="add blends to the leaderboard: a greedy soup of the best candidates and WiSE-FT "
        "between the start and the best fine-tuned one (alpha chosen on validation); a blend "
        "that ranks first is the model saved",
        action="store_true",
    ),
    "probe_start": _option(
        "--probe-start",
        help="LP-FT for every policy that trains more than the head: fit the head alone first "
        "for this share of the epochs (on cached features; default share 0.5)",
        group=TRAINING,
        metavar="SHARE",
        nargs="?",
        const=0.5,
        type=float,
    ),
    "image_size": _option(
        "--image-size",
        help="train at PX x PX instead of the backbone's input size",
        group=IMAGES,
        metavar="PX",
        type=int,
    ),
    "input_config": _option(
        "--crop-pct",
        help="evaluation centre-crop fraction (1.0: no crop)",
        group=IMAGES,
        metavar="F",
        type=float,
        to_value=lambda crop: {"crop_pct": crop},
        refused=("input_config['crop_pct']",),
    ),
    "augment": _option(
        "--augment",
        help="training augmentation, timm's random resized crop, flip and colour jitter (auto: "
        "on when more than the head trains; off for compare and a measured auto policy); "
        "the options below shape it and turn it on",
        group=IMAGES,
        choices=("auto", "on", "off"),
        to_value=lambda typed: None if typed == "auto" else _switch(typed),
    ),
    "hflip": _option(
        "--hflip",
        help="random horizontal flips (default: on; --no-hflip for digits, text, many medical "
        "and satellite images)",
        group=IMAGES,
        action=argparse.BooleanOptionalAction,
    ),
    "scale": _option(
        "--scale",
        help="share of the image each random crop keeps, e.g. 0.5,1 (default 0.08,1)",
        group=IMAGES,
        metavar="MIN,MAX",
        to_value=_pair,
    ),
    "color_jitter": _option(
        "--color-jitter",
        help="colour jitter strength, 0 for none (default 0.4)",
        group=IMAGES,
        metavar="F",
        type=float,
    ),
    "auto_augment": _option(
        "--auto-augment",
        help="timm's auto-augment text: rand-m9-mstd0.5 (RandAugment), augmix-m5, original",
        group=IMAGES,
        metavar="TEXT",
    ),
    "mixup": _option(
        "--mixup",
        help="mix pairs of training images, alpha A (timm's Mixup, e.g. 0.2; soft targets)",
        group=IMAGES,
        metavar="A",
        type=float,
    ),
    "cutmix": _option(
        "--cutmix",
        help="paste patches between training images, alpha A (timm's Mixup, e.g. 1.0)",
        group=IMAGES,
        metavar="A",
        type=float,
    ),
    "ema": _option(
        "--ema",
        help="evaluate and save a moving average of the weights (timm's ModelEmaV3; DECAY "
        "default 0.9998, warmed up over the first steps)",
        group=TRAINING,
        metavar="DECAY",
        nargs="?",
        const=True,
        type=float,
    ),
    "feature_cache": _option(
        "--feature-cache",
        help="train a head-only plan on features computed once (default auto)",
        group=IMAGES,
        choices=("auto", "on", "off"),
        to_value=_switch,
    ),
    "on_corrupt": _option(
        "--strict-images",
        help="stop at the first unreadable image instead of skipping it",
        group=IMAGES,
        action="store_true",
        to_value=lambda _strict: "error",
    ),
    "num_workers": _option(
        "--workers",
        help="data-loading worker processes (default: about the cores, at most 8; 0 for a "
        "split of fewer than 8 batches)",
        group=IMAGES,
        metavar="N",
        type=int,
    ),
    "precision": _option(
        "--precision",
        help="auto (default): bf16 autocast on a GPU that has it, fp16 with a gradient scaler "
        "on an older GPU, fp32 on a CPU; the trained weights and the saved model stay fp32",
        group=SPEED,
        choices=PRECISIONS,
    ),
    "channels_last": _option(
        "--channels-last",
        help="channels_last memory format for convolutional models (auto: on a GPU)",
        group=SPEED,
        choices=("auto", "on", "off"),
        to_value=_switch,
    ),
    "compile": _option(
        "--compile",
        help="torch.compile the part that trains (inductor; compile='BACKEND' in Python picks "
        "another); a model that cannot compile is an error unless --compile-fallback",
        group=SPEED,
        action="store_true",
    ),
    "compile_fallback": _option(
        "--compile-fallback",
        help="with --compile: train eagerly, with a note, where the model cannot compile",
        group=SPEED,
        action="store_true",
    ),
    "grad_checkpointing": _option(
        "--grad-checkpointing",
        help="recompute activations in the backward pass (timm's set_grad_checkpointing): "
        "less memory, about a third more compute",
        group=SPEED,
        action="store_true",
    ),
    "accumulate": _option(
        "--accumulate",
        help="accumulate the gradients of N batches into one optimizer step (default {default})",
        group=SPEED,
        metavar="N",
        type=int,
    ),
    "shard": _option(
        "--shard",
        help="under torchrun: shard the model over the processes with FSDP2, one unit per depth "
        "of its parameter table (for models too large for one device)",
        group=SPEED,
        action="store_true",
    ),
    "device": _option("--device", help="cpu, cuda, cuda:1 (default: GPU if any)", metavar="DEV"),
}

#: Arguments of the job functions that are not config fields, and their options.
_DATA_OPTIONS = {"val": "--val"}


def add_options(parser: argparse.ArgumentParser, job: str) -> None:
    """Add to ``parser`` the starting point (``BACKBONE``), the data (``--data``, ``--val``)
    and the option of each field ``job`` takes (``"adapt"`` or ``"compare"``)."""
    parser.add_argument(
        "backbone",
        metavar="BACKBONE",
        help="backbone name (timm:resnet18, timm:vit_tiny_patch16_224), a saved model's name, "
        "or a .safetensors file to start from",
    )
    parser.add_argument(
        "--data",
        "-d",
        required=True,
        metavar="DIR|FILE",
        help="training images: a folder with one sub-folder per class, or a CSV/JSONL manifest "
        "of path,label rows (paths relative to it)",
    )
    val = parser.add_mutually_exclusive_group()
    val.add_argument(
        "--val",
        metavar="DIR|FILE",
        help="validation images: a folder of the same class folders, or a manifest",
    )
    groups: dict[str, Any] = {
        "": parser,
        "val_split": val,
        "start": parser.add_mutually_exclusive_group(),
    }
    for title in (TRAINING, IMAGES, SPEED):
        groups[title] = parser.add_argument_group(title)
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    for field, option in _options_of(job):
        kwargs = dict(option.kwargs, help=option.kwargs["help"].format(default=defaults.get(field)))
        where = groups.get(field, groups[option.group])
        where.add_argument(*option.flags, dest=field, default=None, **kwargs)


def config_from_args(args: argparse.Namespace, job: str, **fixed: Any) -> TrainConfig:
    """``job``'s config of the options typed in ``args`` (:func:`add_options`), and
    ``fixed`` (what the command decides itself: the name, the callback)."""
    values = dict(fixed)
    for field, option in _options_of(job):
        typed = getattr(args, field)
        if typed is not None:
            values[field] = option.to_value(typed) if option.to_value else typed
    return TrainConfig.of(job, values)


def _options_of(job: str) -> list[tuple[str, Option]]:
    """``(field, option)`` of each field ``job`` takes that has an option, in help order."""
    taken = {f.name for f in job_fields(job)}
    return [(field, option) for field, option in OPTIONS.items() if field in taken]


def option_of(argument: str) -> str | None:
    """The option that sets ``argument`` (a field of the config, or an argument an
    :class:`~zoo.AdaptArgumentError` names, such as ``input_config['crop_pct']``), if any."""
    if argument in _DATA_OPTIONS:
        return _DATA_OPTIONS[argument]
    for field, option in OPTIONS.items():
        if argument == field or argument in option.refused:
            return next(flag for flag in option.flags if flag.startswith("--"))
    return None


@contextlib.contextmanager
def named_by_option() -> Iterator[None]:
    """Raise an :class:`~zoo.AdaptArgumentError` about an argument that an option sets again
    naming the option (``--image-size`` for ``image_size``), so that the message speaks the
    command line's language."""
    try:
        yield
    except AdaptArgumentError as exc:
        flag = option_of(exc.argument)
        if flag is None:
            raise
        raise AdaptArgumentError(flag, exc.value, exc.rule) from None
