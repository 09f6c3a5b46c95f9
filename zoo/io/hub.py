"""Hugging Face Hub ids (``hf-hub:org/name[@revision]``) and the Hub's local cache.

A hub id names a repository on the Hugging Face Hub; zoo reads it through ``huggingface_hub``
and its cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, read when called): :func:`snapshot`
returns the folder of the cached snapshot, downloading it first when the Hub can be reached.
With ``HF_HUB_OFFLINE`` set, or when the Hub cannot be reached, only the cache is read
(``local_files_only``), once: a repository that is not cached raises
:class:`~zoo.WeightsUnavailableError` at once, naming the id and the ways out.

Everything in the cache is untrusted input (anyone can publish a repository): its files are read
through :mod:`zoo.io.trust`, whose one exception for the cache's own layout (a snapshot's files
are links into the repository's ``blobs/``) is :func:`zoo.io.trust.hub_blob`.
:func:`cached_files` lists the cached snapshots' ``model.safetensors`` files, where a base
reference is looked for by its hash.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from zoo.errors import WeightsUnavailableError, ZooError, short_repr

#: How a hub id starts, as timm writes it (``timm.create_model("hf-hub:org/name")``).
PREFIX = "hf-hub:"
#: One part of a repository id: the Hub's allowed characters, at most 96 in all.
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_ID = re.compile(rf"({_PART})/({_PART})(?:@([A-Za-z0-9._/-]{{1,200}}))?")
MAX_ID = 96
#: The files of a repository zoo reads (a zoo file, a timm folder, a PEFT folder, a base beside
#: it, the card).
PATTERNS = ["*.safetensors", "*.json", "README.md", "base/*"]
#: The most snapshots :func:`cached_files` looks at (a base is looked for by hash).
MAX_CACHED = 10_000


@dataclass(frozen=True)
class HubId:
    """``org/name`` and an optional revision (a branch, a tag or a commit)."""

    repo: str
    revision: str | None = None

    def __str__(self) -> str:
        return PREFIX + self.repo + (f"@{self.revision}" if self.revision else "")


def is_hub_id(value: object) -> bool:
    """Whether ``value`` is a string that starts with ``hf-hub:``."""
    return isinstance(value, str) and value.startswith(PREFIX)


def parse(value: str) -> HubId:
    """The :class:`HubId` of ``hf-hub:org/name[@revision]``; :class:`~zoo.ZooError` otherwise."""
    text = value[len(PREFIX) :] if value.startswith(PREFIX) else value
    match = _ID.fullmatch(text) if len(text) <= MAX_ID + 201 else None
    if match is None or len(f"{match[1]}/{match[2]}") > MAX_ID or ".." in text or "--" in text:
        raise ZooError(
            f"{short_repr(value, 120)} is not a Hugging Face Hub id; write hf-hub:ORG/NAME "
            "(optionally @REVISION), as timm.create_model does"
        )
    return HubId(f"{match[1]}/{match[2]}", match[3])


def repo_id(value: str) -> str:
    """``org/name`` checked as a hub repository id (the form a base location records)."""
    hub = parse(value)
    if hub.revision:
        raise ZooError(f"{short_repr(value)}: a repository id has no @revision")
    return hub.repo


def is_repo_id(value: str) -> bool:
    """Whether ``value`` is a repository id ``org/name`` (no revision)."""
    try:
        repo_id(value)
    except ZooError:
        return False
    return True


def cache_dir() -> Path:
    """The Hub cache: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else huggingface_hub's default
    (read at each call, so a process can point it elsewhere)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set to a true value (read at each call)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def snapshot(hub: HubId) -> Path:
    """The folder of ``hub``'s snapshot in the cache, downloaded first unless offline.

    One attempt: with ``HF_HUB_OFFLINE`` set only the cache is read; otherwise
    ``huggingface_hub`` asks the Hub and falls back to the cache itself when the Hub cannot be
    reached. A repository neither reachable nor cached raises
    :class:`~zoo.WeightsUnavailableError` naming the id, the cache and the ways out.
    """
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - timm requires huggingface_hub
        raise ZooError(
            f"{hub}: loading by hub id needs huggingface_hub (pip install huggingface_hub)"
        ) from None
    cache = cache_dir()
    try:
        folder = snapshot_download(
            hub.repo,
            revision=hub.revision,
            cache_dir=str(cache),
            local_files_only=offline(),
            allow_patterns=PATTERNS,
        )
    except (LocalEntryNotFoundError, OSError) as exc:
        raise unavailable(hub, cache, exc) from None
    except HfHubHTTPError as exc:
        raise ZooError(f"{hub}: the Hugging Face Hub refused it ({exc})") from None
    return Path(folder)


def unavailable(hub: HubId, cache: Path, exc: BaseException | None = None) -> ZooError:
    """The error for a repository that is neither cached nor reachable."""
    why = (
        "HF_HUB_OFFLINE is set"
        if offline()
        else f"the Hub cannot be reached ({type(exc).__name__})"
        if exc is not None
        else "the Hub cannot be reached"
    )
    return WeightsUnavailableError(
        f"{hub}: not in the Hugging Face cache ({cache}) and {why}; ways out: download it once "
        f"with network (`huggingface-cli download {hub.repo}`, or unset HF_HUB_OFFLINE), point "
        "HF_HUB_CACHE at a cache that holds it, or load the exported folder by its path"
    )


def cached_files(name: str = "model.safetensors") -> Iterator[tuple[str, Path]]:
    """``(org/name, snapshot folder)`` for each cached model snapshot holding ``name`` (the
    newest first within a repository; at most :data:`MAX_CACHED`)."""
    root = cache_dir()
    try:
        repos = sorted(p for p in root.iterdir() if p.name.startswith("models--"))
    except OSError:
        return
    seen = 0
    for repo in repos:
        parts = repo.name.split("--")
        if len(parts) != 3:
            continue
        try:
            snapshots = sorted(
                (repo / "snapshots").iterdir(), key=lambda p: p.lstat().st_mtime, reverse=True
            )
        except OSError:
            continue
        for folder in snapshots:
            seen += 1
            if seen > MAX_CACHED:
                return
            if os.path.lexists(folder / name):
                yield f"{parts[1]}/{parts[2]}", folder
