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
unknown option that is not at an "off" value. The folder is untrusted: the config is bounded
JSON, the weights are read by zoo's own safetensors reader (``adapter_model.bin`` is never
unpickled), every key must be a LoRA tensor of a target or belong to a module to save, and
every shape must be the one PEFT builds for that target.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.errors import CorruptFileError, ModelExistsError, ZooError, short_repr
from zoo.io import store
from zoo.io.build_args import check_saved_kwargs
from zoo.io.create import create_model
from zoo.io.fileformat import (
    atomic_write_bytes,
    open_regular,
    read_file,
    read_header,
    seal,
    write_tensors,
)
from zoo.io.metadata import ZooMetadata, loads
from zoo.io.persistence import load, resolve_target
from zoo.plans.adapters import adapters
from zoo.plans.binding import bind
from zoo.plans.freeze import apply_plan
from zoo.tables.build import table_for

if TYPE_CHECKING:
    import torch
    from torch import nn

    from zoo.core.catalog import Catalog
    from zoo.plans.plan import Addition

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
#: PEFT's prefix of every key of a ``PeftModel`` around a plain ``nn.Module``.
PREFIX = "base_model.model."
LORA_KIND = "zoo:lora"
#: The largest ``adapter_config.json`` read, and the largest rank accepted.
MAX_CONFIG_BYTES = 1 << 20
MAX_RANK = 4096

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

    Raises :class:`~zoo.CorruptFileError` for a file that is not a bounded JSON object and
    :class:`~zoo.ZooError` naming each option zoo does not support.
    """
    path = folder / CONFIG_FILE
    if not path.exists():
        raise ZooError(
            f"{folder} is not a PEFT adapter folder: it has no {CONFIG_FILE} (PEFT's "
            "save_pretrained writes it next to adapter_model.safetensors)"
        )
    with open_regular(path) as f:
        raw = f.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise CorruptFileError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes; not a PEFT config")
    try:
        config = loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CorruptFileError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise CorruptFileError(f"{path}: expected a JSON object, got {type(config).__name__}")
    source = str(path)
    if config.get("peft_type") != "LORA":
        raise ZooError(
            f"{source}: peft_type is {short_repr(config.get('peft_type'))}; zoo imports LoRA "
            'adapters only (peft_type "LORA")'
        )
    problems = [
        f"{key}={short_repr(value, 60)}"
        for key, value in config.items()
        if key not in _USED and key not in _INFORMATIONAL and not _off(value)
    ]
    if config.get("bias", "none") != "none":
        problems.append(f"bias={short_repr(config['bias'])}")
    init = config.get("init_lora_weights", True)
    if not any(init is v or (isinstance(v, str) and init == v) for v in _PLAIN_INIT):
        problems.append(f"init_lora_weights={short_repr(init)} (it changes the base weights)")
    if problems:
        raise ZooError(
            f"{source}: unsupported PEFT option(s) {', '.join(problems)}; {_UNSUPPORTED_HINT}"
        )
    rank = config.get("r")
    if not _is_int(rank) or not 1 <= rank <= MAX_RANK:
        raise CorruptFileError(f"{source}: r must be an integer from 1 to {MAX_RANK}")
    alpha = config.get("lora_alpha", 8)
    if not _is_number(alpha) or not 0 < alpha <= 1e6:
        raise CorruptFileError(f"{source}: lora_alpha must be a number in (0, 1e6]")
    dropout = config.get("lora_dropout", 0.0)
    if not _is_number(dropout) or not 0 <= dropout < 1:
        raise CorruptFileError(f"{source}: lora_dropout must be a number in [0, 1)")
    for key in ("target_modules", "modules_to_save"):
        value = config.get(key)
        if not (
            value is None
            or isinstance(value, str)
            or (isinstance(value, list) and all(isinstance(v, str) for v in value))
        ):
            raise CorruptFileError(f"{source}: {key} must be a list of module names")
    base = config.get("base_model_name_or_path")
    if base is not None and not isinstance(base, str):
        raise CorruptFileError(f"{source}: base_model_name_or_path must be a string or null")
    return config


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _matches(name: str, patterns: Any) -> bool:
    """PEFT's rule for a list of module names: the name, or a suffix after a dot. A regular
    expression (a string) is not evaluated -- an untrusted pattern can take exponential time --
    and matches every name: the tensors name the targets."""
    if isinstance(patterns, str):
        return True
    return any(name == p or name.endswith(f".{p}") for p in patterns or ())


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


def export_peft(
    model: nn.Module | str | os.PathLike[str],
    folder: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    catalog: Catalog,
) -> Path:
    """Write a model's LoRA adapters, head and other trained modules as a PEFT LoRA folder
    (``adapter_config.json`` + ``adapter_model.safetensors``, loadable with PEFT's
    ``PeftModel.from_pretrained(timm_model, folder)``); returns the folder.

    ``model`` is a model with injected adapters or a saved one (store name or path, loaded
    first). It must carry only ``zoo:lora`` adapters with one rank, alpha and dropout, on
    ``nn.Linear`` or undilated, ungrouped ``nn.Conv2d`` targets. Existing PEFT files in the
    folder are replaced only with ``overwrite=True`` (:class:`~zoo.ModelExistsError`).
    """
    from torch import nn

    if isinstance(model, (str, os.PathLike)):
        model = load(model, catalog=catalog)
    if not isinstance(model, nn.Module):
        raise ZooError(
            f"export_peft expects a model or a saved model's name or path, got "
            f"{type(model).__name__}"
        )
    folder = Path(folder)
    additions = _adapters_of(model)
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
    args = {json.dumps(dict(a.args), sort_keys=True) for a in additions}
    if len(args) != 1:
        raise ZooError(
            "PEFT export needs one rank, alpha and dropout for every target; this model's LoRA "
            f"adapters use {len(args)} different settings"
        )
    first = dict(additions[0].args)
    rank, alpha, dropout = first.get("rank"), first.get("alpha"), first.get("dropout", 0.0)
    extra = {k: v for k, v in first.items() if k not in ("rank", "alpha", "dropout")}
    if not _is_int(rank) or not _is_number(alpha) or extra:
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
        "base_model_name_or_path": _base_name(model),
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
    folder.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if (folder / name).exists() and not overwrite:
            raise ModelExistsError(
                f"{folder / name} exists; pass overwrite=True (CLI: --overwrite) to replace it, "
                "or export to another folder"
            )
    write_tensors(folder / WEIGHTS_FILE, tensors, seal(tensors, _weights_metadata(model)))
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(folder / CONFIG_FILE, [text.encode("utf-8")])
    return folder


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
    plan = getattr(model, "zoo_plan", None)
    if plan is not None:
        trained = list(plan.trainable)
    else:
        meta = getattr(model, "zoo_metadata", None) or {}
        try:
            trained = json.loads(meta.get("zoo.trained", "[]"))
        except ValueError:
            trained = []
        if not trained:
            trained = [n for n, p in model.named_parameters() if p.requires_grad]
    owners = {name.rpartition(".")[0] for name in trained if name not in added}
    owners.discard("")
    # a module inside another one to save is saved with it
    return sorted(m for m in owners if not any(m.startswith(f"{o}.") for o in owners))


def _base_name(model: nn.Module) -> str | None:
    """``base_model_name_or_path``: the hub id of a timm pretrained base, else the bare name."""
    build = getattr(model, "zoo_build", None) or {}
    backbone = str(build.get("backbone", ""))
    plugin, _, arch = backbone.partition(":")
    base = build.get("base") or {}
    if base.get("kind") == "pretrained" and plugin == "timm":
        ref = str(base.get("ref", "")).partition(":")[2]
        if "." in ref:
            return f"timm/{ref}"
    return arch or None


def _weights_metadata(model: nn.Module) -> dict[str, str]:
    """``format: pt`` (as PEFT writes) and what zoo needs to build the base again (zoo
    seals the file, as every file it writes; PEFT ignores the extra metadata)."""
    build = getattr(model, "zoo_build", None) or {}
    metadata = {"format": "pt"}
    if build.get("backbone"):
        metadata["zoo.backbone"] = str(build["backbone"])
        metadata["zoo.build_kwargs"] = json.dumps(dict(build.get("kwargs") or {}))
    classes = getattr(model, "zoo_classes", None)
    if classes:
        metadata["zoo.classes"] = json.dumps(list(classes), ensure_ascii=False)
    return metadata


# ---------------------------------------------------------------- import


def read_weights(
    folder: Path, config: Mapping[str, Any]
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, torch.Tensor], dict[str, str]]:
    """``(lora, saved, metadata)`` of ``adapter_model.safetensors``: per target the
    ``(lora_A, lora_B)`` pair, the tensors of the modules to save by model name, and the file's
    metadata. Every key must be one of these (:class:`~zoo.CorruptFileError` otherwise)."""
    path = folder / WEIGHTS_FILE
    if not path.exists():
        pickled = folder / "adapter_model.bin"
        hint = (
            f"; {pickled.name} is a pickle, which zoo never loads: save the adapter with PEFT's "
            "save_pretrained(..., safe_serialization=True)"
            if pickled.exists()
            else ""
        )
        raise ZooError(f"{folder} has no {WEIGHTS_FILE}{hint}")
    saved = read_file(path)  # a file zoo exported is sealed, and checked
    source = str(path)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    others: dict[str, torch.Tensor] = {}
    to_save = config.get("modules_to_save") or []
    for key, tensor in saved.tensors.items():
        if not key.startswith(PREFIX):
            raise CorruptFileError(f"{source}: key {key!r} does not start with {PREFIX!r}")
        name = key[len(PREFIX) :]
        match = re.fullmatch(r"(.+)\.lora_([AB])\.weight", name)
        if match:
            pairs.setdefault(match.group(1), {})[match.group(2)] = tensor
        elif re.search(r"\.lora_|lora_magnitude_vector|lora_embedding", name):
            raise ZooError(
                f"{source}: key {key!r} is a LoRA variant zoo does not import ({_UNSUPPORTED_HINT})"
            )
        elif isinstance(to_save, list) and any(
            _matches(name.rpartition(".")[0], [m]) or name.startswith(f"{m}.") for m in to_save
        ):
            others[name] = tensor
        else:
            raise CorruptFileError(
                f"{source}: key {key!r} is neither a LoRA tensor nor in modules_to_save"
            )
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    targets = config.get("target_modules")
    for target, found in sorted(pairs.items()):
        if set(found) != {"A", "B"}:
            raise CorruptFileError(f"{source}: target {target!r} lacks lora_A or lora_B")
        if targets is not None and not _matches(target, targets):
            raise CorruptFileError(
                f"{source}: LoRA tensors for {target!r}, which target_modules does not name"
            )
        lora[target] = (found["A"], found["B"])
    if not lora:
        raise CorruptFileError(f"{source}: holds no LoRA tensors (…lora_A.weight)")
    return lora, others, saved.metadata


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
    default the folder's ``base_model_name_or_path`` names it (a timm hub id
    ``timm/<arch>.<tag>``). The head is rebuilt with the number of classes the folder's head
    has. Unsupported PEFT options are refused, naming them (see the module docstring).
    """
    from torch import nn

    folder = Path(folder)
    config = read_config(folder)
    lora, others, metadata = read_weights(folder, config)
    if isinstance(base, nn.Module):
        model = base
    elif base is None or isinstance(base, (str, os.PathLike)):
        model = _base_model(base, config, metadata, others, folder, catalog)
    else:
        raise ZooError(
            "base must be a model, a saved model's name or path, or a backbone name, got "
            f"{type(base).__name__}"
        )
    return _apply(model, folder, config, lora, others, metadata, catalog)


def _base_model(
    base: str | os.PathLike[str] | None,
    config: Mapping[str, Any],
    metadata: Mapping[str, str],
    others: Mapping[str, torch.Tensor],
    folder: Path,
    catalog: Catalog,
) -> nn.Module:
    if base is None:
        named = config.get("base_model_name_or_path") or ""
        if not named.startswith("timm/") or not named[5:]:
            raise ZooError(
                f"{folder}: its base_model_name_or_path {named!r} is not a pretrained timm "
                "model (timm/<arch>.<tag>); pass the base the adapter was trained on: "
                "base=NAME|FILE|BACKBONE (CLI: --base)"
            )
        base = "timm:" + named[5:]
    if isinstance(base, str) and ":" in base and not store.is_path_target(base):
        spec, _tag = catalog.backbone(base)
        kwargs = _saved_kwargs(spec, metadata, folder)
        outputs = head_classes(others, spec.head)
        return create_model(catalog, base, num_classes=outputs, pretrained=True, **kwargs)
    target = resolve_target(base)
    if not target.model_path.is_file():
        raise ZooError(f"base {base!r}: no saved model at {target.model_path}")
    header = read_header(target.model_path)
    meta = ZooMetadata.parse(header.metadata, source=str(target.model_path))
    spec, _tag = catalog.backbone(meta.backbone)
    kwargs = check_saved_kwargs(spec, meta.build.get("kwargs"), source=str(target.model_path))
    outputs = head_classes(others, spec.head) or meta.num_classes
    model = create_model(
        catalog, meta.backbone, num_classes=outputs, weights=target.model_path, **kwargs
    )
    if target.kind == "store":  # a delta of it then refers to the entry by name
        model.zoo_build["base"] = {**model.zoo_build["base"], "kind": "store", "ref": target.name}
    return model


def _saved_kwargs(spec: Any, metadata: Mapping[str, str], folder: Path) -> dict[str, Any]:
    """Architecture arguments zoo wrote into an exported folder (checked: untrusted)."""
    text = metadata.get("zoo.build_kwargs")
    if not text or metadata.get("zoo.backbone", "").partition(".")[0] != spec.qualified_name:
        return {}
    try:
        kwargs = loads(text)
    except (ValueError, RecursionError):
        raise CorruptFileError(f"{folder / WEIGHTS_FILE}: zoo.build_kwargs is not JSON") from None
    return check_saved_kwargs(
        spec, kwargs, source=str(folder / WEIGHTS_FILE), key="zoo.build_kwargs"
    )


def _apply(
    model: nn.Module,
    folder: Path,
    config: Mapping[str, Any],
    lora: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    others: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str],
    catalog: Catalog,
) -> nn.Module:
    """Inject the folder's LoRA into ``model`` and load its tensors."""
    import torch

    source = str(folder / WEIGHTS_FILE)
    rank = int(config["r"])
    modules = dict(model.named_modules())
    for target, (a, b) in lora.items():
        module = modules.get(target)
        if module is None:
            raise ZooError(
                f"{source}: targets module {target!r}, which this {_backbone(model)} model does "
                "not have (is it the base the adapter was trained on?)"
            )
        want = peft_shapes(module, rank, source=f"{source}: {target}")
        if (tuple(a.shape), tuple(b.shape)) != want:
            raise CorruptFileError(
                f"{source}: LoRA of {target!r} has shapes {tuple(a.shape)}, {tuple(b.shape)}; "
                f"PEFT builds {want[0]}, {want[1]} at r={rank} for this module"
            )
    own = model.state_dict()
    for name, tensor in others.items():
        if name not in own or tuple(own[name].shape) != tuple(tensor.shape):
            found = tuple(own[name].shape) if name in own else "no such tensor"
            raise ZooError(
                f"{source}: module-to-save tensor {name!r} {tuple(tensor.shape)} does not fit "
                f"the model ({found}); build the base with the adapter's number of classes"
            )
    _inject_lora(
        model,
        sorted(lora),
        rank=rank,
        alpha=config.get("lora_alpha", 8),
        dropout=config.get("lora_dropout", 0.0),
        catalog=catalog,
    )
    params = dict(model.named_parameters())
    by_target = {a.target: a for a in _adapters_of(model) if a.kind == LORA_KIND}
    with torch.no_grad():
        for target, (a, b) in lora.items():
            a_name, b_name = _lora_names(by_target[target])
            params[a_name].copy_(a.reshape(params[a_name].shape))
            params[b_name].copy_(b.reshape(params[b_name].shape))
        state = model.state_dict()
        for name, tensor in others.items():
            state[name].copy_(tensor)
    classes = _classes(metadata, model)
    if classes is not None:
        model.zoo_classes = classes  # type: ignore[assignment]
    return model


def _backbone(model: nn.Module) -> str:
    build = getattr(model, "zoo_build", None) or {}
    return str(build.get("backbone", type(model).__name__))


def _classes(metadata: Mapping[str, str], model: nn.Module) -> list[str] | None:
    """Class names zoo wrote into the weights' metadata, if they fit the model's head."""
    text = metadata.get("zoo.classes")
    if not text:
        return None
    try:
        classes = loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(classes, list) or not all(
        isinstance(c, str) and c.isprintable() and len(c) <= 1000 for c in classes
    ):
        return None
    outputs = getattr(model, "num_classes", None)
    return classes if outputs is None or outputs == len(classes) else None


def head_classes(others: Mapping[str, torch.Tensor], head: str | None) -> int | None:
    """The number of outputs of the head among the modules to save (None if not saved)."""
    if not head:
        return None
    for prefix in (h.strip() for h in head.split(",") if h.strip()):
        weight = others.get(f"{prefix}.weight")
        if weight is not None and weight.dim() >= 1:
            return int(weight.shape[0])
    return None


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
