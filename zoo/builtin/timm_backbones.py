"""Built-in plugin ``timm``: every timm architecture, its pretrained tags and input configs.

Registered through the same hooks as any third-party plugin. Listing reads timm's registry of
pretrained configs and builds no model. Building with ``pretrained=True`` first checks that the
weights are cached locally or reachable, and fails within seconds otherwise (timm alone retries
for most of a minute before a cryptic error).
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from zoo import BackboneSpec, InputConfig, ParamGroup
from zoo.builtin.timm_groups import timm_param_groups
from zoo.errors import WeightsUnavailableError
from zoo.hookspecs import RegisterBackbone, hookimpl

if TYPE_CHECKING:
    from torch import nn

PLUGIN_NAME = "timm"
_HF_HOST = "huggingface.co"

#: ``timm.create_model`` arguments that read a checkpoint (``checkpoint_path``, unpickled with
#: ``torch.load``), fetch or locate weights (``pretrained*``, ``pretrained_cfg`` with its
#: ``file``/``url``/``hf_hub_id``, ``cache_dir``), or place the model on a device: zoo never
#: takes them from a saved file. File, URL, directory and hub-like names are refused too, so a
#: future timm argument of that kind is covered.
UNSAFE_KWARGS = (
    "checkpoint*",
    "*_checkpoint",
    "pretrained*",
    "cache*",
    "*cache_dir",
    "*_dir",
    "file",
    "*_file",
    "filename",
    "*_filename",
    "url",
    "*_url",
    "hf_hub*",
    "*hub_id",
    "kwargs_filter",
    "feature_cfg",
    "device",
)


def _input_config(cfg: Any) -> InputConfig:
    return InputConfig(
        input_size=tuple(int(v) for v in cfg.input_size),
        mean=tuple(float(v) for v in cfg.mean),
        std=tuple(float(v) for v in cfg.std),
        interpolation=str(cfg.interpolation or "bicubic"),
        crop_pct=float(cfg.crop_pct or 0.875),
        crop_mode=str(cfg.crop_mode or "center"),
    )


def _head_locator(cfg: Any) -> str | None:
    classifier = getattr(cfg, "classifier", None)
    if not classifier:
        return None
    if isinstance(classifier, (tuple, list)):
        return ",".join(classifier)
    return str(classifier)


@hookimpl
def zoo_register_backbones(register: RegisterBackbone) -> None:
    import timm

    get_pretrained_cfg = _pretrained_cfg_reader()
    module_of = {
        arch: module for module in timm.list_modules() for arch in timm.list_models(module=module)
    }
    tagged: dict[str, list[str]] = {}
    for full in timm.list_models(pretrained=True):
        arch, _, tag = full.partition(".")
        if tag:
            tagged.setdefault(arch, []).append(tag)
    for arch in timm.list_models():
        cfg = get_pretrained_cfg(arch)
        tags = tuple(tagged.get(arch, ()))
        tag_configs: dict[str, InputConfig] = {}
        for tag in tags:
            tag_cfg = get_pretrained_cfg(f"{arch}.{tag}")
            if tag_cfg is not None:
                tag_configs[tag] = _input_config(tag_cfg)
        if cfg is not None:
            input_config = _input_config(cfg)
            head = _head_locator(cfg)
            num_classes = int(cfg.num_classes) if cfg.num_classes else None
            paper = cfg.paper_name or cfg.description or ""
        else:
            input_config, head, num_classes, paper = InputConfig(), None, None, ""
        family = module_of.get(arch, "")
        summary = " — ".join(filter(None, (family.replace("_", " "), paper))) or arch
        register(
            BackboneSpec(
                name=arch,
                create=functools.partial(create_timm_model, arch),
                summary=summary,
                pretrained_tags=tags,
                input_config=input_config,
                tag_input_configs=tag_configs,
                head=head,
                num_classes=num_classes,
                family=family,
                unsafe_kwargs=UNSAFE_KWARGS,
                config_json=timm_config_json,
            )
        )


def _pretrained_cfg_reader() -> Callable[[str], Any]:
    """Read pretrained configs without copying them.

    timm's public ``get_pretrained_cfg`` deep-copies each config: 3,000-odd copies cost about
    half a second per catalog build. Listing only reads them, so the registry's own objects
    are read directly where this timm exposes them, and the public function is the fallback.
    """
    from timm.models import _registry, get_pretrained_cfg

    configs = getattr(_registry, "_model_pretrained_cfgs", None)
    default_cfgs = getattr(_registry, "_model_default_cfgs", None)
    if not isinstance(configs, dict) or not isinstance(default_cfgs, dict):
        return get_pretrained_cfg

    def read(name: str) -> Any:
        if "." in name:
            return configs.get(name)
        default = default_cfgs.get(name)
        return default.default if default is not None else None

    return read


def timm_config_json(
    model: nn.Module, label_names: list[str] | None, data_config: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The ``config.json`` timm's ``push_to_hf_hub`` would write for ``model`` (None for a model
    timm did not build), so a saved folder loads with ``timm.create_model("local-dir:...")``."""
    if not isinstance(getattr(model, "pretrained_cfg", None), dict):
        return None
    import json
    import tempfile

    from timm.models._hub import save_config_for_hf

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        save_config_for_hf(
            model,
            str(path),
            model_config={"label_names": list(label_names)} if label_names else None,
            data_config=dict(data_config),
        )
        return json.loads(path.read_text(encoding="utf-8"))


def create_timm_model(
    arch: str, num_classes: int | None = None, pretrained: bool | str = False, **kwargs: Any
) -> nn.Module:
    """Build ``arch`` with timm; a tag string for ``pretrained`` picks those weights."""
    import timm

    name = arch
    if isinstance(pretrained, str):
        name = f"{arch}.{pretrained}"
    if pretrained:
        ensure_weights_available(name)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    model = timm.create_model(name, pretrained=bool(pretrained), **kwargs)
    size = _fixed_image_size(model)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    default = tuple(cfg.get("input_size") or ())
    if size is not None and len(default) == 3 and size != default[1:]:
        # built with img_size=...: the pretrained config's size is not what it accepts; the
        # hint becomes the model's model.zoo.input_config
        fields = ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")
        config = _input_config(SimpleNamespace(**{k: cfg.get(k) for k in fields}))
        model.zoo_input_config = replace(config, input_size=(default[0], *size))
    return model


def _fixed_image_size(model: Any) -> tuple[int, int] | None:
    """The one image size a timm model accepts when its patch embedding is strict about it (a
    ViT built with ``img_size=``), else ``None``."""
    embed = getattr(model, "patch_embed", None)
    size = getattr(embed, "img_size", None)
    if not getattr(embed, "strict_img_size", False) or getattr(embed, "dynamic_img_size", False):
        return None
    if isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(v, int) for v in size):
        return int(size[0]), int(size[1])
    return None


# ---------------------------------------------------------------- pretrained weights, offline


def _hf_cached(hub_id: str, filename: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    names = (
        [filename]
        if filename
        else ["model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"]
    )
    return any(isinstance(try_to_load_from_cache(hub_id, n), str) for n in names)


def _url_cached(url: str) -> bool:
    from torch.hub import get_dir

    return (Path(get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)).is_file()


def _reachable(host: str, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def ensure_weights_available(name: str) -> None:
    """Raise :class:`~zoo.WeightsUnavailableError` quickly if ``name``'s weights can't be had."""
    from timm.models import get_pretrained_cfg
    from timm.models._builder import _resolve_pretrained_source

    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError as exc:  # timm: "Invalid pretrained tag (...) for ..."
        message = f"timm has no pretrained weights for {name!r}: {exc}"
        raise WeightsUnavailableError(message) from None
    if cfg is None:
        raise WeightsUnavailableError(f"timm has no pretrained weights for {name!r}")
    load_from, location = _resolve_pretrained_source(cfg.to_dict())
    if load_from in ("file", "local-dir", "state_dict"):
        return
    if load_from == "hf-hub":
        hub_id, filename = location if isinstance(location, tuple) else (location, None)
        if _hf_cached(hub_id, filename):
            return
        where, host = f"Hugging Face Hub repo {hub_id!r}", _HF_HOST
    elif load_from == "url":
        if _url_cached(location):
            return
        where, host = f"URL {location}", urlparse(location).hostname or ""
    else:
        raise WeightsUnavailableError(f"timm names no weight source for {name!r}")
    offline = any(
        os.environ.get(v, "").lower() in {"1", "true", "yes", "on"}
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "ZOO_OFFLINE")
    )
    if not offline and _reachable(host):
        return
    reason = "offline mode is set (HF_HUB_OFFLINE)" if offline else f"{host} is unreachable"
    raise WeightsUnavailableError(
        f"pretrained weights for timm {name!r} are not cached locally and {reason}; "
        f"they would come from the {where}. Ways out: pass weights='path/to/file.safetensors' "
        "(zoo.create / --weights), populate the Hugging Face cache on a machine with network "
        "(HF_HOME), or use pretrained=False."
    )


# ---------------------------------------------------------------- parameter groups


@hookimpl(trylast=True)
def zoo_param_groups(
    model: nn.Module, backbone: BackboneSpec | None
) -> Sequence[ParamGroup] | None:
    """Groups from timm's ``group_matcher(coarse=True)``: stem, blocks/stages, head."""

    return timm_param_groups(model)


@hookimpl
def zoo_identify_model(model: nn.Module) -> str | None:
    """``timm:<architecture>`` for a model timm built (its ``pretrained_cfg`` says which)."""
    cfg = getattr(model, "pretrained_cfg", None)
    arch = cfg.get("architecture") if isinstance(cfg, Mapping) else None
    return f"{PLUGIN_NAME}:{arch}" if isinstance(arch, str) and arch else None


@hookimpl
def zoo_extra_metadata(model: nn.Module, backbone: BackboneSpec | None) -> Mapping[str, str] | None:
    if backbone is None or backbone.plugin != PLUGIN_NAME:
        return None
    import timm

    return {"timm.version": timm.__version__}
