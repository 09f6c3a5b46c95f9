"""LoRA adapters in PEFT's folder format: export a zoo model's LoRA, import a PEFT LoRA folder.

A PEFT LoRA folder holds two files (what ``PeftModel.save_pretrained`` writes):

- ``adapter_config.json``: ``peft_type: "LORA"``, ``r``, ``lora_alpha``, ``lora_dropout``,
  ``target_modules`` (zoo writes full module paths), ``bias: "none"``, ``modules_to_save`` (the
  head and any other module whose own parameters trained), ``base_model_name_or_path`` and
  PEFT's other options at their defaults;
- ``adapter_model.safetensors``: for each target ``base_model.model.<target>.lora_A.weight``
  and ``.lora_B.weight``, and each module to save under ``base_model.model.<module>.<name>``
  (its whole state dict, no ``modules_to_save`` infix).

The key names follow PEFT's ``get_peft_model_state_dict`` (huggingface/peft,
``src/peft/utils/save_and_load.py``: the adapter name is removed from every key;
``ModulesToSaveWrapper.adapter_state_dict`` in ``src/peft/utils/other.py`` saves a module to
save under its own name), the shapes its LoRA layers (``src/peft/tuners/lora/layer.py``):
``nn.Linear`` ``lora_A (r, in)``, ``lora_B (out, r)``; ``nn.Conv2d`` ``lora_A (r, in, kh, kw)``
(same stride and padding as the target), ``lora_B (out, r, 1, 1)``; the update is
``lora_B @ lora_A * lora_alpha / r``, the same as zoo's ``lora`` kind. PEFT's conv LoRA passes
no ``dilation`` and cannot merge ``groups > 1``: such targets are refused on export.

Importing refuses, naming the option, anything zoo's LoRA does not compute the same way:
DoRA, rsLoRA, rank or alpha patterns, LoRA biases, ``fan_in_fan_out``, layer selection or
replication, initialisations that change the base weights (PiSSA, OLoRA, LoftQ, …), and any
unknown option that is not at an "off" value.

The folder is untrusted input, read through :mod:`zoo.io.trust` (a real folder, regular files
opened without following links, a bounded config, zoo's own safetensors reader;
``adapter_model.bin`` is never unpickled). Nothing in it chooses a file: its
``base_model_name_or_path`` is only ever a backbone name (:func:`named_base`) or, in a folder
zoo exported, a hub id read through the Hub cache; a ``base/`` folder beside it (zoo's export)
is read by the same rule. Every key must be a LoRA tensor of a target or belong to a module to
save, and every dtype and shape is checked from the header -- against the rank, then against
the base built on the ``meta`` device -- before a tensor is read or the base built; values must
be finite. A base whose hash is not the one zoo's export recorded (``zoo.base``) is refused
(:func:`check_base`). :func:`peft_contents` makes the two files of an export;
:mod:`zoo.io.sharing` writes them, with the card and the base, all or none.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.core import checks
from zoo.core.build import build
from zoo.core.record import BuildArgs, backbone_of, record_of, unwrap
from zoo.errors import (
    AmbiguousNameError,
    BaseMismatchError,
    CorruptFileError,
    UnknownNameError,
    WeightsMismatchError,
    WeightsUnavailableError,
    ZooError,
    short_repr,
)
from zoo.io import hub, store
from zoo.io.build_args import check_saved_kwargs
from zoo.io.create import create_model, read_timm_folder
from zoo.io.fileformat import (
    Header,
    TensorEntry,
    read_header,
    seal,
)
from zoo.io.metadata import MAX_CLASSES, ZooMetadata, class_names, is_zoo_metadata
from zoo.io.persistence import resolve_base, resolve_target
from zoo.io.rebuild import check_pretrained_size
from zoo.io.trust import (
    check_folder,
    file_in,
    read_header_in,
    read_json_in,
    read_tensors_in,
)
from zoo.plans.adapters import adapters
from zoo.plans.binding import bind
from zoo.plans.freeze import apply_plan
from zoo.tables.build import table_for

if TYPE_CHECKING:
    import torch
    from torch import nn

    from zoo.core.catalog import Catalog
    from zoo.core.specs import BackboneSpec
    from zoo.plans.plan import Addition

CONFIG_FILE = "adapter_config.json"
#: The folder an export writes the base into, beside the adapter, when no hub id or timm name
#: names exactly the base's weights (a timm folder: ``model.safetensors`` + ``config.json``).
BASE_FOLDER = "base"
WEIGHTS_FILE = "adapter_model.safetensors"
#: PEFT's prefix of every key of a ``PeftModel`` around a plain ``nn.Module``.
PREFIX = "base_model.model."
LORA_KIND = "zoo:lora"
#: The largest ``adapter_config.json`` read, and the largest rank accepted.
MAX_CONFIG_BYTES = 1 << 20
MAX_RANK = 4096
#: The longest tensor name read from a PEFT folder (real ones are under 200 characters).
MAX_KEY_LENGTH = 1024

#: PEFT LoRA options zoo reads (checked one by one below).
_USED = frozenset(
    {
        "peft_type",
        "r",
        "lora_alpha",
        "lora_dropout",
        "target_modules",
        "modules_to_save",
        "bias",
        "init_lora_weights",
        "base_model_name_or_path",
    }
)
#: Options that only describe (any value is accepted).
_INFORMATIONAL = frozenset(
    {
        "task_type",
        "peft_version",
        "auto_mapping",
        "revision",
        "inference_mode",
        "megatron_core",
        "qalora_group_size",
        "ensure_weight_tying",
    }
)
#: Values of ``init_lora_weights`` that only initialise the adapter (weights come from the file).
_PLAIN_INIT = (True, False, "gaussian")
_UNSUPPORTED_HINT = (
    "zoo imports plain LoRA only (the update lora_B @ lora_A * lora_alpha / r on nn.Linear and "
    "nn.Conv2d modules); merge or convert the adapter with PEFT first"
)


# ---------------------------------------------------------------- the config


def _off(value: Any) -> bool:
    """Whether an option's value means "not used" (PEFT's defaults: None, False, {}, [], "")."""
    return value is None or value is False or value in ({}, [], "")


def read_config(folder: Path) -> dict[str, Any]:
    """``adapter_config.json`` of a PEFT folder, checked: a LoRA config zoo computes exactly.

    The file is read by the trust rule (:func:`zoo.io.trust.read_json_in`: a regular file, no
    link, at most :data:`MAX_CONFIG_BYTES`). Raises :class:`~zoo.CorruptFileError` for a file
    that is not a bounded JSON object and :class:`~zoo.ZooError` naming each option zoo does not
    support.
    """
    path = folder / CONFIG_FILE
    if not os.path.lexists(path):
        raise ZooError(
            f"{folder} is not a PEFT adapter folder: it has no {CONFIG_FILE} (PEFT's "
            "save_pretrained writes it next to adapter_model.safetensors)"
        )
    config = read_json_in(folder, CONFIG_FILE, max_bytes=MAX_CONFIG_BYTES, what="a PEFT config")
    if not isinstance(config, dict):
        raise CorruptFileError(f"{path}: expected a JSON object, got {type(config).__name__}")
    source = str(path)
    if config.get("peft_type") != "LORA":
        raise ZooError(
            f"{source}: peft_type is {short_repr(config.get('peft_type'))}; zoo imports LoRA "
            'adapters only (peft_type "LORA")'
        )
    problems = [
        f"{_option(key)}={short_repr(value, 60)}"
        for key, value in config.items()
        if key not in _USED and key not in _INFORMATIONAL and not _off(value)
    ]
    if config.get("bias", "none") != "none":
        problems.append(f"bias={short_repr(config['bias'])}")
    init = config.get("init_lora_weights", True)
    if not any(init is v or (isinstance(v, str) and init == v) for v in _PLAIN_INIT):
        problems.append(f"init_lora_weights={short_repr(init)} (it changes the base weights)")
    if problems:
        more = f" and {len(problems) - 10} more" if len(problems) > 10 else ""
        shown = ", ".join(problems[:10]) + more
        raise ZooError(f"{source}: unsupported PEFT option(s) {shown}; {_UNSUPPORTED_HINT}")
    try:
        checks.integer(config.get("r"), "r", 1, MAX_RANK)
        checks.real(config.get("lora_alpha", 8), "lora_alpha", 0, 1e6, open_low=True)
        checks.real(config.get("lora_dropout", 0.0), "lora_dropout", 0, 1, open_high=True)
        for key in ("target_modules", "modules_to_save"):  # a string: a regular expression
            if not isinstance(config.get(key), (str, type(None))):
                checks.str_list(config[key], key)
    except checks.Invalid as exc:
        raise CorruptFileError(f"{source}: {exc}") from None
    base = config.get("base_model_name_or_path")
    if base is not None and not isinstance(base, str):
        raise CorruptFileError(f"{source}: base_model_name_or_path must be a string or null")
    return config


def _option(key: str) -> str:
    """An option's name as a message shows it (an odd or long one quoted and cut short)."""
    return key if key.isidentifier() and len(key) <= 60 else short_repr(key, 60)


def _matches(name: str, patterns: str | frozenset[str]) -> bool:
    """PEFT's rule for a list of module names: the name, or a suffix after a dot. A regular
    expression (a string) is not evaluated -- an untrusted pattern can take exponential time --
    and matches every name: the tensors name the targets. ``patterns`` is a set, so a long
    list costs nothing per name (:func:`_suffixes`)."""
    if isinstance(patterns, str):
        return True
    return not patterns.isdisjoint(_suffixes(name))


def _suffixes(name: str) -> list[str]:
    """``a.b.c`` -> ``a.b.c``, ``b.c``, ``c``: the names PEFT's list rule matches it by."""
    parts = name.split(".")
    return [".".join(parts[i:]) for i in range(len(parts))]


def _prefixes(name: str) -> list[str]:
    """``a.b.c`` -> ``a``, ``a.b``: the modules a tensor ``a.b.c`` lies inside."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


# ---------------------------------------------------------------- shapes


def peft_shapes(module: nn.Module, rank: int, *, source: str) -> tuple[tuple[int, ...], ...]:
    """``(lora_A, lora_B)`` shapes PEFT builds for ``module`` at rank ``rank``."""
    from torch import nn

    if isinstance(module, nn.Linear):
        return (rank, module.in_features), (module.out_features, rank)
    if isinstance(module, nn.Conv2d):
        if module.groups != 1 or tuple(module.dilation) != (1, 1) or module.padding_mode != "zeros":
            raise ZooError(
                f"{source}: PEFT's LoRA cannot express a convolution with groups="
                f"{module.groups}, dilation={tuple(module.dilation)}, padding_mode="
                f"{module.padding_mode!r} (its lora_A is a plain convolution with the target's "
                "stride and padding only, and it does not merge groups > 1)"
            )
        kh, kw = module.kernel_size
        return (rank, module.in_channels, kh, kw), (module.out_channels, rank, 1, 1)
    raise ZooError(
        f"{source}: PEFT LoRA targets nn.Linear and nn.Conv2d here; this module is "
        f"{type(module).__name__}"
    )


# ---------------------------------------------------------------- export


def lora_additions(model: nn.Module) -> list[Addition]:
    """The LoRA adapters of ``model``; :class:`~zoo.ZooError` when it has none or has others
    (PEFT's LoRA format holds LoRA only)."""
    additions = _adapters_of(unwrap(model))
    if not additions:
        raise ZooError(
            "this model has no adapters to export; inject LoRA with zoo.freeze(model, "
            "'lora:rank=8') and train it, or load a saved LoRA model"
        )
    other = sorted({a.kind for a in additions if a.kind != LORA_KIND})
    if other:
        raise ZooError(
            f"PEFT export covers LoRA only; this model has {', '.join(other)} adapters, "
            "which PEFT's LoRA format cannot hold (save it with zoo.save instead)"
        )
    return additions


def peft_contents(
    model: nn.Module, *, base_name: str | None, base: Mapping[str, Any] | None
) -> tuple[dict[str, torch.Tensor], dict[str, str], bytes]:
    """The two files of a PEFT LoRA folder for ``model`` (``adapter_config.json`` +
    ``adapter_model.safetensors``, loadable with PEFT's ``PeftModel.from_pretrained(timm_model,
    folder)``): the tensors, their sealed metadata and the config's bytes.

    ``model`` must carry only ``zoo:lora`` adapters with one rank, alpha and dropout, on
    ``nn.Linear`` or undilated, ungrouped ``nn.Conv2d`` targets. ``base_name`` is the config's
    ``base_model_name_or_path`` (a hub id or timm name only when the base is exactly those
    weights: :mod:`zoo.io.sharing` decides); ``base`` (its ``zoo.base`` reference: hash and
    places) goes into the weights' metadata, so zoo's import refuses other weights.
    """
    model = unwrap(model)
    additions = lora_additions(model)
    args = {json.dumps(dict(a.args), sort_keys=True) for a in additions}
    if len(args) != 1:
        raise ZooError(
            "PEFT export needs one rank, alpha and dropout for every target; this model's LoRA "
            f"adapters use {len(args)} different settings"
        )
    first = dict(additions[0].args)
    rank, alpha, dropout = first.get("rank"), first.get("alpha"), first.get("dropout", 0.0)
    extra = {k: v for k, v in first.items() if k not in ("rank", "alpha", "dropout")}
    if not checks.is_int(rank) or not checks.is_real(alpha) or extra:
        raise ZooError(
            f"PEFT export: LoRA arguments {short_repr(first)} have no PEFT equivalent "
            "(expected rank, alpha and dropout only)"
        )
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    tensors: dict[str, torch.Tensor] = {}
    for addition in additions:
        a_shape, b_shape = peft_shapes(modules[addition.target], rank, source=addition.target)
        a_name, b_name = _lora_names(addition)
        tensors[f"{PREFIX}{addition.target}.lora_A.weight"] = (
            params[a_name].detach().reshape(a_shape).contiguous().cpu()
        )
        tensors[f"{PREFIX}{addition.target}.lora_B.weight"] = (
            params[b_name].detach().reshape(b_shape).contiguous().cpu()
        )
    to_save = _modules_to_save(model, additions)
    for module_name in to_save:
        for key, value in modules[module_name].state_dict().items():
            if key.split(".", 1)[0] in _adapter_children(additions, module_name):
                continue
            tensors[f"{PREFIX}{module_name}.{key}"] = value.detach().contiguous().cpu()
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_name,
        "revision": None,
        "inference_mode": True,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": sorted(a.target for a in additions),
        "exclude_modules": None,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": to_save or None,
        "init_lora_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    text = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode("utf-8")
    return tensors, seal(tensors, _weights_metadata(model, base)), text


def _lora_names(addition: Addition) -> tuple[str, str]:
    """The model names of a LoRA addition's A and B matrices."""
    names = sorted(addition.params)
    child = addition.child
    if names != [f"{child}.A", f"{child}.B"]:
        raise ZooError(
            f"{addition.target}: a {addition.kind} adapter with parameters {names}, expected "
            f"'{child}.A' and '{child}.B'"
        )
    return f"{addition.target}.{child}.A", f"{addition.target}.{child}.B"


def _adapter_children(additions: list[Addition], module: str) -> set[str]:
    return {a.child for a in additions if a.target == module}


def _modules_to_save(model: nn.Module, additions: list[Addition]) -> list[str]:
    """Modules whose own parameters trained (the head first of all), as PEFT's
    ``modules_to_save``: every trained parameter that is not an adapter's, by its module."""
    added = {n for a in additions for n in a.names}
    record = record_of(model)
    plan = record.plan if record is not None else None
    if plan is not None:
        trained = list(plan.trainable)
    else:  # loaded from a file saved without a plan: what it trained
        metadata = record.metadata if record is not None else {}
        try:
            trained = ZooMetadata.parse(metadata, source="the model").trained
        except ZooError:
            trained = []
        if not trained:
            trained = [n for n, p in model.named_parameters() if p.requires_grad]
    owners = {name.rpartition(".")[0] for name in trained if name not in added}
    owners.discard("")
    # a module inside another one to save is saved with it
    return sorted(m for m in owners if not any(m.startswith(f"{o}.") for o in owners))


def _weights_metadata(model: nn.Module, base: Mapping[str, Any] | None) -> dict[str, str]:
    """``format: pt`` (as PEFT writes) and what zoo needs to build the base again and to know
    it (``zoo.base``: its hash and places); zoo seals the file, as every file it writes; PEFT
    ignores the extra metadata."""
    record = record_of(model)
    metadata = {"format": "pt"}
    if base is not None:
        metadata["zoo.base"] = json.dumps(dict(base), ensure_ascii=False)
    if record is not None and record.build is not None:
        metadata["zoo.backbone"] = record.build.backbone
        metadata["zoo.build_kwargs"] = json.dumps(dict(record.build.kwargs))
    classes = record.classes if record is not None else None
    if classes:
        metadata["zoo.classes"] = json.dumps(list(classes), ensure_ascii=False)
    return metadata


# ---------------------------------------------------------------- import: the folder's files

#: dtypes a LoRA weight or a head may have: PEFT saves them in the model's floating-point type.
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
#: dtypes no tensor of a PEFT folder may have (loading would drop their imaginary part, or
#: turn them into 0 and 1).
_NEVER = ("C64", "BOOL")
_WHAT = "a PEFT adapter folder"


@dataclass(frozen=True)
class Layout:
    """What ``adapter_model.safetensors`` holds, read from its header alone (no tensor data):
    per LoRA target its ``lora_A`` and ``lora_B`` entries, and each module-to-save tensor's
    entry by its name in the model. Every name, dtype and shape is checked against the config's
    rank before the base is built."""

    lora: dict[str, tuple[TensorEntry, TensorEntry]]
    saved: dict[str, TensorEntry]
    header: Header
    source: str


def read_layout(folder: Path, config: Mapping[str, Any]) -> Layout:
    """The :class:`Layout` of a PEFT folder's weights (read by
    :func:`zoo.io.trust.read_header_in`: no link, zoo's header checks, no tensor data). Every key
    must be a LoRA tensor of a target or belong to a module to save, every LoRA tensor a
    floating-point one of the shape PEFT builds at rank ``r``; anything else raises
    :class:`~zoo.CorruptFileError` naming the tensor."""
    path = folder / WEIGHTS_FILE
    if not os.path.lexists(path):
        pickled = folder / "adapter_model.bin"
        hint = (
            f"; {pickled.name} is a pickle, which zoo never loads: save the adapter with PEFT's "
            "save_pretrained(..., safe_serialization=True)"
            if os.path.lexists(pickled)
            else ""
        )
        raise ZooError(f"{folder} has no {WEIGHTS_FILE}{hint}")
    header = read_header_in(folder, WEIGHTS_FILE, what=_WHAT)
    source = str(path)
    rank = int(config["r"])
    pairs: dict[str, dict[str, TensorEntry]] = {}
    saved: dict[str, TensorEntry] = {}
    to_save = _name_set(config.get("modules_to_save"))
    for entry in header.entries:
        key = entry.name
        if len(key) > MAX_KEY_LENGTH:
            raise CorruptFileError(
                f"{source}: key {short_repr(key, 80)} is longer than {MAX_KEY_LENGTH} "
                "characters, which no module path is"
            )
        if entry.dtype in _NEVER:
            raise CorruptFileError(
                f"{source}: tensor {key!r} is {entry.dtype}, which no PEFT weight is (loading it "
                "would change its values)"
            )
        if not key.startswith(PREFIX):
            raise CorruptFileError(f"{source}: key {key!r} does not start with {PREFIX!r}")
        name = key[len(PREFIX) :]
        match = re.fullmatch(r"(.+)\.lora_([AB])\.weight", name)
        if match:
            _check_lora_entry(entry, match.group(2), rank, source)
            pairs.setdefault(match.group(1), {})[match.group(2)] = entry
        elif re.search(r"\.lora_|lora_magnitude_vector|lora_embedding", name):
            raise ZooError(
                f"{source}: key {key!r} is a LoRA variant zoo does not import ({_UNSUPPORTED_HINT})"
            )
        elif not to_save.isdisjoint(_suffixes(name.rpartition(".")[0])) or not (
            to_save.isdisjoint(_prefixes(name))
        ):
            saved[name] = entry
        else:
            raise CorruptFileError(
                f"{source}: key {key!r} is neither a LoRA tensor nor in modules_to_save"
            )
    lora: dict[str, tuple[TensorEntry, TensorEntry]] = {}
    named = config.get("target_modules")
    targets = named if isinstance(named, str) else _name_set(named)
    for target, found in sorted(pairs.items()):
        if set(found) != {"A", "B"}:
            raise CorruptFileError(f"{source}: target {target!r} lacks lora_A or lora_B")
        if named is not None and not _matches(target, targets):
            raise CorruptFileError(
                f"{source}: LoRA tensors for {target!r}, which target_modules does not name"
            )
        lora[target] = (found["A"], found["B"])
    if not lora:
        raise CorruptFileError(f"{source}: holds no LoRA tensors (…lora_A.weight)")
    return Layout(lora, saved, header, source)


def _name_set(names: Any) -> frozenset[str]:
    """A config's list of module names as a set (a string -- a pattern -- or null: none)."""
    return frozenset(names) if isinstance(names, list) else frozenset()


def _check_lora_entry(entry: TensorEntry, which: str, rank: int, source: str) -> None:
    """A ``lora_A`` is ``(r, in)`` or ``(r, in, kh, kw)``, a ``lora_B`` ``(out, r)`` or
    ``(out, r, 1, 1)``: floating point, no empty dimension."""
    if entry.dtype not in FLOAT_DTYPES:
        raise CorruptFileError(
            f"{source}: tensor {entry.name!r} is {entry.dtype}, not a floating-point tensor "
            f"({', '.join(FLOAT_DTYPES)}); PEFT saves LoRA weights in the model's type"
        )
    shape = entry.shape
    if which == "A":
        fits = len(shape) in (2, 4) and shape[0] == rank
        want = f"(r, in) or (r, in, kh, kw) with r={rank}"
    else:
        fits = len(shape) in (2, 4) and shape[1] == rank and shape[2:] in ((), (1, 1))
        want = f"(out, r) or (out, r, 1, 1) with r={rank}"
    if not fits or min(shape) < 1:
        raise CorruptFileError(
            f"{source}: tensor {entry.name!r} has shape {shape}; PEFT's lora_{which} is {want}"
        )


def head_rows(layout: Layout, head: str | None) -> int | None:
    """The number of classes the folder's head has (its weight's first dimension), checked: a
    floating-point ``[num_classes, in_features, ...]`` weight without an empty dimension,
    ``1 <= num_classes <=`` :data:`~zoo.io.metadata.MAX_CLASSES`. None when no head is saved."""
    for prefix in (h.strip() for h in (head or "").split(",") if h.strip()):
        entry = layout.saved.get(f"{prefix}.weight")
        if entry is None:
            continue
        if entry.dtype not in FLOAT_DTYPES:
            raise CorruptFileError(
                f"{layout.source}: tensor {entry.name!r} (the head) is {entry.dtype}, not a "
                f"floating-point tensor ({', '.join(FLOAT_DTYPES)})"
            )
        if len(entry.shape) < 2 or min(entry.shape) < 1 or entry.shape[0] > MAX_CLASSES:
            raise CorruptFileError(
                f"{layout.source}: tensor {entry.name!r} (the head) has shape {entry.shape}; "
                f"a head's weight is [num_classes, in_features] with 1 <= num_classes <= "
                f"{MAX_CLASSES} and in_features >= 1"
            )
        return entry.shape[0]
    return None


def check_fits(model: nn.Module, layout: Layout, rank: int) -> None:
    """The folder's tensors fit ``model`` (a real model or one built on ``meta``): each LoRA
    pair has the shapes PEFT builds for its target at rank ``rank``, each module-to-save tensor
    the model's shape and kind (floating point or integer)."""
    source = layout.source
    modules = dict(model.named_modules())
    for target, (a, b) in layout.lora.items():
        module = modules.get(target)
        if module is None:
            raise ZooError(
                f"{source}: targets module {target!r}, which this {_backbone(model)} model does "
                "not have (is it the base the adapter was trained on?)"
            )
        want = peft_shapes(module, rank, source=f"{source}: {target}")
        if (a.shape, b.shape) != want:
            raise CorruptFileError(
                f"{source}: LoRA of {target!r} has shapes {a.shape}, {b.shape}; "
                f"PEFT builds {want[0]}, {want[1]} at r={rank} for this module"
            )
    own = model.state_dict()
    for name, entry in layout.saved.items():
        tensor = own.get(name)
        if tensor is None or tuple(tensor.shape) != entry.shape:
            found = tuple(tensor.shape) if tensor is not None else "no such tensor"
            raise WeightsMismatchError(
                f"{source}: module-to-save tensor {name!r} {entry.shape} does not fit the model "
                f"({found}); build the base with the adapter's number of classes"
            )
        if tensor.is_floating_point() != (entry.dtype in FLOAT_DTYPES):
            raise CorruptFileError(
                f"{source}: tensor {entry.name!r} is {entry.dtype}, but the model's {name!r} is "
                f"{str(tensor.dtype).removeprefix('torch.')}; loading it would change its values"
            )


def read_tensors(folder: Path, layout: Layout) -> dict[str, torch.Tensor]:
    """The folder's tensors (zoo's reader, no link), as the header read first described them,
    every floating-point value finite (:class:`~zoo.CorruptFileError` naming the tensor)."""
    import torch

    saved = read_tensors_in(folder, WEIGHTS_FILE, what=_WHAT)
    if saved.header != layout.header:
        raise CorruptFileError(
            f"{layout.source}: the file changed while it was read; import it again once nothing "
            "writes to it"
        )
    for key, tensor in saved.tensors.items():
        if tensor.is_floating_point():
            bad = tensor.numel() - int(torch.isfinite(tensor).sum())
            if bad:
                raise CorruptFileError(
                    f"{layout.source}: tensor {key!r} holds {bad} NaN or infinite value(s); "
                    "the adapter diverged or the file is damaged — zoo does not import it"
                )
    return saved.tensors


# ---------------------------------------------------------------- import: the base

#: One part of a Hugging Face Hub repository id (``org/name``): the hub's allowed characters.
_HUB_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_HUB_NAME = re.compile(rf"(?:({_HUB_PART})/)?({_HUB_PART})")
#: The longest repository id the hub allows.
MAX_HUB_ID = 96
_PASS_BASE = (
    "pass the base the adapter was trained on explicitly: base=NAME|FILE|BACKBONE (CLI: --base)"
)


def named_base(named: Any, *, source: str, catalog: Catalog) -> str:
    """The pretrained backbone a folder's ``base_model_name_or_path`` names, never a path.

    Accepted: ``timm/ARCH[.TAG]`` (a timm hub id; without a tag, timm's default weights) and
    ``ARCH.TAG`` found in ``catalog``. Anything else -- a path (``/``, ``..``, ``\\``), a store
    name, another hub's model, an architecture without its weights -- raises
    :class:`~zoo.ZooError` saying to pass the base explicitly. The value is never looked up in
    the store or on disk.
    """
    shown = short_repr(named, 80)
    if not isinstance(named, str) or not named:
        raise ZooError(f"{source}: base_model_name_or_path is {shown}; {_PASS_BASE}")
    short = len(named) <= MAX_HUB_ID  # first: the pattern backtracks on long text
    match = _HUB_NAME.fullmatch(named) if short and ".." not in named else None
    if match is None or "--" in named:
        raise ZooError(
            f"{source}: base_model_name_or_path {shown} is neither a backbone name (ARCH.TAG) "
            "nor a hub id (timm/ARCH.TAG); zoo never reads a path or a store entry a PEFT folder "
            f"names; {_PASS_BASE}"
        )
    org, name = match.groups()
    if org not in (None, "timm"):
        raise ZooError(
            f"{source}: base_model_name_or_path {shown} is a hub model zoo does not build (zoo "
            f"builds timm/ARCH.TAG and catalog names ARCH.TAG); {_PASS_BASE}"
        )
    try:
        spec, tag = catalog.backbone(f"timm:{name}" if org else name)
    except (UnknownNameError, AmbiguousNameError) as exc:
        raise ZooError(
            f"{source}: base_model_name_or_path {shown} is no backbone zoo knows ({exc}); "
            f"{_PASS_BASE}"
        ) from None
    if tag is None and (org is None or not spec.pretrained_tags):
        raise ZooError(
            f"{source}: base_model_name_or_path {shown} names the architecture "
            f"{spec.qualified_name} but not which weights (ARCH.TAG); {_PASS_BASE}"
        )
    return spec.qualified_name + (f".{tag}" if tag else "")


@dataclass(frozen=True)
class BaseRecipe:
    """How to build the base an adapter goes on: ``backbone`` (a catalog name) with
    ``kwargs`` and ``num_classes``, its pretrained weights or a saved model's (``weights``)."""

    backbone: str
    kwargs: dict[str, Any]
    num_classes: int | None
    weights: Path | None = None
    store_name: str | None = None
    hub_repo: str | None = None  # the Hub repository the weights came from (``org/name``)

    def build(self, catalog: Catalog) -> nn.Module:
        if self.weights is None:
            return create_model(
                catalog,
                self.backbone,
                num_classes=self.num_classes,
                pretrained=True,
                **self.kwargs,
            )
        model = create_model(
            catalog,
            self.backbone,
            num_classes=self.num_classes,
            weights=self.weights,
            **self.kwargs,
        )
        if self.store_name is not None:  # a delta of it then refers to the entry by name
            model.zoo.base = {
                **model.zoo.base,
                "kind": "store",
                "ref": self.store_name,
            }
        if self.hub_repo is not None:  # and an export names it by its hub id
            model.zoo.base = {
                **model.zoo.base,
                "locations": [{"kind": "hub", "ref": self.hub_repo}],
            }
        return model


def base_recipe(
    base: str | os.PathLike[str] | None,
    config: Mapping[str, Any],
    layout: Layout,
    catalog: Catalog,
) -> tuple[BaseRecipe, nn.Module]:
    """The recipe of the base (``base``, or the folder's ``base_model_name_or_path``) and that
    base built on the ``meta`` device with the folder's number of classes (no weights
    allocated), to check the folder against before anything is built."""
    if base is None:
        base = named_base(
            config.get("base_model_name_or_path"),
            source=str(Path(layout.source).with_name(CONFIG_FILE)),
            catalog=catalog,
        )
    repo = None
    if isinstance(base, str) and hub.is_hub_id(base):  # the user's word, or a recorded base
        repo = hub.parse(base).repo
        folder = check_folder(hub.snapshot(hub.parse(base)), what=f"the base {base}")
        header = read_header_in(folder, store.MODEL_FILE, what=f"the base {base}")
        if not is_zoo_metadata(header.metadata):  # a timm folder
            found = read_timm_folder(folder, catalog=catalog)
            recipe = BaseRecipe(
                found.spec.qualified_name,
                found.kwargs,
                head_rows(layout, found.spec.head) or found.num_classes,
                weights=found.weights,
                hub_repo=repo,
            )
            return recipe, _meta_base(found.spec, recipe, bounded=False, source=layout.source)
        base = file_in(folder, store.MODEL_FILE, what=f"the base {base}")
    if isinstance(base, str) and ":" in base and not store.is_path_target(base):
        spec, _tag = catalog.backbone(base)
        kwargs = _saved_kwargs(spec, layout)
        recipe = BaseRecipe(base, kwargs, head_rows(layout, spec.head))
        return recipe, _meta_base(spec, recipe, bounded=bool(kwargs), source=layout.source)
    target = resolve_target(base)
    if target.kind == "store":  # never read through a link that leaves the store
        store.check_inside(target.model_path, store.models_dir())
    if not target.model_path.is_file():
        raise ZooError(f"base {base!r}: no saved model at {target.model_path}")
    header = read_header(target.model_path)
    meta = ZooMetadata.parse(header.metadata, source=str(target.model_path))
    spec, _tag = catalog.backbone(meta.backbone)
    kwargs = check_saved_kwargs(spec, meta.build.get("kwargs"), source=str(target.model_path))
    recipe = BaseRecipe(
        meta.backbone,
        kwargs,
        head_rows(layout, spec.head) or meta.num_classes,
        weights=target.model_path,
        store_name=target.name if target.kind == "store" else None,
        hub_repo=repo,
    )
    return recipe, _meta_base(spec, recipe, bounded=False, source=layout.source)


def _meta_base(spec: BackboneSpec, recipe: BaseRecipe, *, bounded: bool, source: str) -> nn.Module:
    """The base built on ``meta``. ``bounded``: its arguments came from the folder, so they
    may not make the pretrained backbone much larger than with its defaults
    (:func:`~zoo.io.rebuild.check_pretrained_size`: ``embed_dim=100000`` costs no memory on
    ``meta``, and gigabytes once built)."""
    if bounded:
        check_pretrained_size(spec, recipe.kwargs, source=source, key="zoo.build_kwargs")
    return build(
        spec, BuildArgs(spec.qualified_name, recipe.num_classes, recipe.kwargs), device="meta"
    )


def _saved_kwargs(spec: BackboneSpec, layout: Layout) -> dict[str, Any]:
    """Architecture arguments zoo wrote into an exported folder (checked: untrusted)."""
    metadata = layout.header.metadata
    text = metadata.get("zoo.build_kwargs")
    if not text or metadata.get("zoo.backbone", "").partition(".")[0] != spec.qualified_name:
        return {}
    try:
        kwargs = checks.loads(text, "zoo.build_kwargs")
    except checks.Invalid as exc:
        raise CorruptFileError(f"{layout.source}: {exc}") from None
    return check_saved_kwargs(spec, kwargs, source=layout.source, key="zoo.build_kwargs")


# ---------------------------------------------------------------- import


def import_peft(
    folder: str | os.PathLike[str],
    *,
    base: nn.Module | str | os.PathLike[str] | None = None,
    catalog: Catalog,
) -> nn.Module:
    """A zoo model from a PEFT LoRA folder: the base, the LoRA adapters injected
    (``zoo:lora`` on each target, with PEFT's rank, alpha and dropout), the modules to save
    (the head) loaded, the rest frozen; ready for ``zoo.save`` (a delta of its base),
    ``zoo.merge_adapters`` or more training.

    ``base`` is what the adapter was trained on: a model built by ``zoo.create``/``zoo.load``
    (injected in place), a saved model (store name or path), or a backbone name whose
    pretrained weights are used (``"timm:vit_base_patch16_224.augreg2_in21k_ft_in1k"``). By
    default the folder's ``base_model_name_or_path`` names it: a timm hub id
    ``timm/ARCH[.TAG]`` or a catalog name ``ARCH.TAG`` (:func:`named_base`; never a path). The
    head is rebuilt with the number of classes the folder's head has.

    The folder is untrusted (:mod:`zoo.io.trust`): its two files are regular files read
    without following links, the config bounded JSON, the weights read by zoo's reader. Names,
    dtypes and shapes are checked from the header, against the rank and against the base built
    on the ``meta`` device, before any tensor is read or the base is built; the values must be
    finite. Unsupported PEFT options are refused, naming them (see the module docstring).
    """
    from torch import nn

    folder = check_folder(folder, what="PEFT folder")
    config = read_config(folder)
    layout = read_layout(folder, config)
    rank = int(config["r"])
    recorded = recorded_base(layout)
    if isinstance(base, nn.Module):
        check_fits(base, layout, rank)
        check_base(base, recorded, layout, catalog)
        return _apply(base, config, layout, read_tensors(folder, layout), catalog)
    if base is not None and not isinstance(base, (str, os.PathLike)):
        raise ZooError(
            "base must be a model, a saved model's name or path, or a backbone name, got "
            f"{type(base).__name__}"
        )
    if base is None and os.path.lexists(folder / BASE_FOLDER):  # the base exported beside it
        beside = check_folder(folder / BASE_FOLDER, what="the base folder of a PEFT folder")
        base = file_in(beside, store.MODEL_FILE, what="the base of a PEFT folder")
    elif base is None and recorded is not None:  # zoo's export: a hub id, checked by hash below
        named = config.get("base_model_name_or_path")
        if isinstance(named, str) and not named.startswith("timm/") and hub.is_repo_id(named):
            base = hub.PREFIX + named
    try:
        recipe, meta = base_recipe(base, config, layout, catalog)
    except WeightsUnavailableError as exc:  # the hub id the folder names is not at hand
        raise WeightsUnavailableError(f"{exc}; or {_PASS_BASE}") from None
    check_fits(meta, layout, rank)
    tensors = read_tensors(folder, layout)
    model = recipe.build(catalog)
    check_base(model, recorded, layout, catalog)
    return _apply(model, config, layout, tensors, catalog)


def recorded_base(layout: Layout) -> dict[str, Any] | None:
    """The ``zoo.base`` reference zoo wrote into an exported folder's weights (checked:
    untrusted), or None for a folder PEFT wrote."""
    text = layout.header.metadata.get("zoo.base")
    if not text:
        return None
    try:
        reference = checks.json_object(checks.loads(text, "zoo.base"), "zoo.base")
        checks.sha256_hex(reference.get("sha256"), "zoo.base sha256")
    except checks.Invalid as exc:
        raise CorruptFileError(f"{layout.source}: {exc}") from None
    return reference


def check_base(
    model: nn.Module, recorded: Mapping[str, Any] | None, layout: Layout, catalog: Catalog
) -> None:
    """Refuse a base whose weights are not the ones the adapter was trained on
    (:class:`~zoo.BaseMismatchError` naming both hashes and the base it needs), when the folder
    records them (zoo's export does)."""
    if recorded is None:
        return
    record = record_of(model)
    base = record.base if record is not None else None
    digest = base.get("sha256") if base else None
    if base and digest is None and record is not None and record.build is not None:
        digest = resolve_base(base, record.build.to_dict(), catalog=catalog).sha256
    if digest == recorded["sha256"]:
        return
    given = f"{base.get('kind')} {base.get('ref')!r}" if base else "a model with random weights"
    raise BaseMismatchError(
        f"{layout.source}: the adapter was trained on the base with sha256 "
        f"{recorded['sha256']} ({describe_base(recorded)}); the base given, {given}, has "
        f"sha256 {digest}; a LoRA adapter only computes its model on the exact weights it was "
        "trained on: pass that base (--base NAME|FILE|BACKBONE, or keep the base/ folder the "
        "export wrote beside the adapter)"
    )


def describe_base(reference: Mapping[str, Any]) -> str:
    """Where a base reference says its base is: its place and its other locations."""
    places = [(reference.get("kind"), reference.get("ref"))]
    places += [(loc.get("kind"), loc.get("ref")) for loc in reference.get("locations") or []]
    return ", ".join(f"{kind} {short_repr(ref, 120)}" for kind, ref in places)


def _apply(
    model: nn.Module,
    config: Mapping[str, Any],
    layout: Layout,
    tensors: Mapping[str, torch.Tensor],
    catalog: Catalog,
) -> nn.Module:
    """Inject the folder's LoRA into ``model`` and load its tensors (checked to fit first)."""
    import torch

    rank = int(config["r"])
    check_fits(model, layout, rank)
    _inject_lora(
        model,
        sorted(layout.lora),
        rank=rank,
        alpha=config.get("lora_alpha", 8),
        dropout=config.get("lora_dropout", 0.0),
        catalog=catalog,
    )
    params = dict(model.named_parameters())
    by_target = {a.target: a for a in _adapters_of(model) if a.kind == LORA_KIND}
    with torch.no_grad():
        for target, (a, b) in layout.lora.items():
            a_name, b_name = _lora_names(by_target[target])
            params[a_name].copy_(tensors[a.name].reshape(params[a_name].shape))
            params[b_name].copy_(tensors[b.name].reshape(params[b_name].shape))
        state = model.state_dict()
        for name, entry in layout.saved.items():
            state[name].copy_(tensors[entry.name])
    classes = _classes(layout.header.metadata, model)
    if classes is not None:
        model.zoo.classes = classes
    return model


def _backbone(model: nn.Module) -> str:
    return backbone_of(model) or type(model).__name__


def _classes(metadata: Mapping[str, str], model: nn.Module) -> list[str] | None:
    """Class names zoo wrote into the weights' metadata, if they fit the model's head."""
    text = metadata.get("zoo.classes")
    if not text:
        return None
    try:  # the class names a saved model may hold
        classes = class_names(checks.loads(text))
    except checks.Invalid:
        return None
    outputs = getattr(model, "num_classes", None)
    return classes if outputs is None or outputs == len(classes) else None


# ---------------------------------------------------------------- zoo's adapters (zoo.plans)


def _adapters_of(model: nn.Module) -> list[Addition]:
    return list(adapters(model))


def _inject_lora(
    model: nn.Module,
    targets: list[str],
    *,
    rank: int,
    alpha: float,
    dropout: float,
    catalog: Catalog,
) -> None:
    """``zoo.freeze(model, "lora", targets=..., ...)``: the exact targets (module paths are
    fnmatch patterns matching only themselves), the head trains, the rest is frozen."""
    args = {"rank": rank, "alpha": float(alpha), "dropout": float(dropout), "targets": targets}
    plan = bind("zoo:lora", args, catalog).run(table_for(model, catalog=catalog))
    apply_plan(model, plan, catalog=catalog)
