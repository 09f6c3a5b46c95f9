"""torchvision pretrained weights: tags, input configs, and a fast offline check.

torchvision downloads weights from ``download.pytorch.org`` into the torch hub cache
(``$TORCH_HOME/hub/checkpoints``). Without network, torch retries for a long time before a
cryptic ``URLError``; :func:`ensure_weights_available` answers within seconds instead.
"""

from __future__ import annotations

import os
import socket
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from zoo import InputConfig
from zoo.errors import UnknownNameError, WeightsUnavailableError

OFFLINE_ENV = ("ZOO_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
REACH_TIMEOUT_S = 3.0


def weights_enum(model_name: str) -> type[Enum] | None:
    """The weights enum of a torchvision model (``ResNet50_Weights``), or None."""
    import torchvision.models as tvm

    try:
        return tvm.get_model_weights(model_name)
    except (ValueError, KeyError):
        return None


def tags(model_name: str) -> tuple[str, ...]:
    """The pretrained tags of a model: its weights enum members, the default one first."""
    enum = weights_enum(model_name)
    if enum is None:
        return ()
    default = getattr(enum, "DEFAULT", None)
    names = [member.name for member in enum]
    if default is not None:
        names.remove(default.name)
        names.insert(0, default.name)
    return tuple(names)


def resolve(model_name: str, pretrained: bool | str) -> Any:
    """The weights enum member ``pretrained`` asks for: None, ``DEFAULT`` or the named tag."""
    if not pretrained:
        return None
    enum = weights_enum(model_name)
    if enum is None:
        raise WeightsUnavailableError(f"torchvision has no pretrained weights for {model_name!r}")
    if pretrained is True:
        return enum.DEFAULT
    try:
        return enum[str(pretrained)]
    except KeyError:
        raise UnknownNameError(
            f"pretrained tag of torchvision:{model_name}",
            str(pretrained),
            [member.name for member in enum],
        ) from None


def input_config(weights: Any) -> InputConfig:
    """The :class:`zoo.InputConfig` of a weights entry, read from its ``transforms``."""
    transform = weights.transforms()
    crop = _first(getattr(transform, "crop_size", None), 224)
    resize = _first(getattr(transform, "resize_size", None), crop)
    interpolation = getattr(transform, "interpolation", None)
    return InputConfig(
        input_size=(3, crop, crop),
        mean=tuple(float(v) for v in getattr(transform, "mean", InputConfig().mean)),
        std=tuple(float(v) for v in getattr(transform, "std", InputConfig().std)),
        interpolation=str(getattr(interpolation, "value", interpolation or "bilinear")),
        crop_pct=round(crop / resize, 4) if resize else 1.0,
        crop_mode="center",
    )


def _first(value: Any, default: int) -> int:
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return int(value) if value else int(default)


def cache_path(weights: Any) -> Path:
    """Where torch hub keeps the file of ``weights`` (``$TORCH_HOME/hub/checkpoints/...``)."""
    from torch.hub import get_dir

    return Path(get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def _offline() -> str | None:
    for name in OFFLINE_ENV:
        if os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}:
            return name
    return None


def _reachable(host: str, timeout: float = REACH_TIMEOUT_S) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def ensure_weights_available(model_name: str, weights: Any) -> None:
    """Raise :class:`~zoo.WeightsUnavailableError` at once if ``weights`` cannot be had.

    Cached weights pass. Otherwise the download host must be reachable within
    ``REACH_TIMEOUT_S`` seconds, and no offline variable (``ZOO_OFFLINE``, ``HF_HUB_OFFLINE``,
    ``TRANSFORMERS_OFFLINE``) may be set.
    """
    path = cache_path(weights)
    if path.is_file():
        return
    host = urlparse(weights.url).hostname or ""
    offline = _offline()
    if offline is None and _reachable(host):
        return
    reason = f"offline mode is set ({offline}=1)" if offline else f"{host} is unreachable"
    raise WeightsUnavailableError(
        f"pretrained weights {weights!r} for torchvision:{model_name} are not in the torch hub "
        f"cache ({path}) and {reason}. Ways out: download {weights.url} on a machine with "
        f"network and copy it to {path} (or point TORCH_HOME at a cache that has it); pass "
        "weights='path/to/file.safetensors' (zoo.create / --weights); or use pretrained=False."
    )
