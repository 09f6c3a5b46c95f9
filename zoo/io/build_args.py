"""The architecture arguments of a saved file (``zoo.build.kwargs``), checked before any build.

A saved file records how to rebuild its backbone: ``create(name, num_classes=..., **kwargs)``.
Those kwargs are untrusted input (anyone can edit metadata and re-seal a file), so before they
reach a plugin they must pass :func:`check_saved_kwargs`: no name of ``zoo.create``'s own
parameters, no name the backbone's plugin declares unsafe (``BackboneSpec.unsafe_kwargs``:
arguments that make ``create`` read files, unpickle or use the network), only identifier
names, and plain JSON values of bounded size.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Any

from zoo.core import checks
from zoo.core.specs import BackboneSpec
from zoo.errors import CorruptFileError, ZooError

#: ``zoo.create``'s own parameters (and ``BackboneSpec.create``'s positional ones): never
#: architecture arguments.
RESERVED_KWARGS = ("name", "num_classes", "pretrained", "weights")


def unsafe_reason(spec: BackboneSpec, key: str) -> str | None:
    """Why ``key`` may not come from a saved file for ``spec`` (None: it may)."""
    if key in RESERVED_KWARGS:
        return "is a parameter of zoo.create itself, not an architecture argument"
    if not key.isidentifier():
        return "is not a Python identifier"
    lowered = key.lower()
    for pattern in spec.unsafe_kwargs:
        if fnmatch.fnmatchcase(lowered, pattern.lower()):
            return (
                f"is declared unsafe by plugin {spec.plugin!r} (pattern {pattern!r}: it can make "
                "the build read files, unpickle or use the network)"
            )
    return None


def check_saved_kwargs(
    spec: BackboneSpec, kwargs: Any, *, source: str, key: str = "zoo.build"
) -> dict[str, Any]:
    """``kwargs`` from a saved file, refused with :class:`CorruptFileError` unless safe to pass.

    ``source`` names the file in the message; ``key`` the metadata key the kwargs came from.
    Returns a fresh dict the caller may hand to ``create``.
    """
    if kwargs is None:
        return {}
    if not isinstance(kwargs, Mapping):
        raise CorruptFileError(f"{source}: metadata {key!r}: kwargs must be an object")
    for name, value in kwargs.items():
        reason = unsafe_reason(spec, str(name)) if isinstance(name, str) else "is not a string"
        if reason is not None:
            raise CorruptFileError(
                f"{source}: metadata {key!r} passes architecture argument {name!r} to "
                f"{spec.qualified_name}, which {reason}; zoo refuses it from a saved file. "
                "Remove it from the file, or build the model yourself with zoo.create(...) "
                "if you trust where the file came from"
            )
        try:
            checks.json_value(value, f"architecture argument {name!r}")
        except checks.Invalid as exc:
            raise CorruptFileError(f"{source}: metadata {key!r}: {exc}") from None
    return dict(kwargs)


def check_save_kwargs(spec: BackboneSpec, kwargs: Mapping[str, Any]) -> None:
    """Refuse to save arguments that loading would refuse (a file must load back)."""
    for name in kwargs:
        reason = unsafe_reason(spec, str(name))
        if reason is not None:
            raise ZooError(
                f"cannot save a {spec.qualified_name} model built with argument {name!r}: it "
                f"{reason}, so zoo would refuse to read it back from the file. The weights are "
                "in the model already: build it without that argument (to start from a local "
                "file, use zoo.create(name, weights='file.safetensors'))"
            )
