"""Loading a state dict into a freshly built model, strictly, with named mismatches."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from zoo.errors import WeightsMismatchError

if TYPE_CHECKING:
    import torch
    from torch import nn


def describe_mismatch(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, skip: set[str] = frozenset()
) -> list[str]:
    """Human-readable problems between ``model``'s state dict and ``state`` (empty: they fit)."""
    own = model.state_dict()
    problems = []
    missing = sorted(k for k in own if k not in state and k not in skip)
    unexpected = sorted(k for k in state if k not in own and k not in skip)
    shapes = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and k not in skip and tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensor(s): {_few(unexpected)}")
    if shapes:
        problems.append(f"wrong shape for {len(shapes)} tensor(s): {_few(shapes)}")
    return problems


def _few(items: list[str], n: int = 6) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", … (+{len(items) - n} more)" if len(items) > n else "")


def head_tensor_names(state_keys: list[str], head: str | None) -> set[str]:
    """Names under the classifier module(s) that ``head`` ("fc" or "head,head_dist") locates."""
    if not head:
        return set()
    prefixes = tuple(f"{h.strip()}." for h in head.split(",") if h.strip())
    return {k for k in state_keys if k.startswith(prefixes)}


def load_state_strict(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: str,
    skip: set[str] = frozenset(),
) -> None:
    """``load_state_dict(strict=True)`` with a :class:`WeightsMismatchError` naming tensors."""
    problems = describe_mismatch(model, state, skip=skip)
    if problems:
        raise WeightsMismatchError(f"{source} does not fit the model: " + "; ".join(problems))
    kept = {k: v for k, v in state.items() if k not in skip}
    model.load_state_dict(kept, strict=not skip)


def load_weights(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, head: str | None, source: str
) -> None:
    """Load ``state`` into ``model``, strictly except for a classifier that changed shape.

    A classifier whose shape differs (a new ``num_classes``) keeps its fresh initialisation;
    every other tensor must be present with the right shape.
    """
    own = model.state_dict()
    skip = {
        k
        for k in head_tensor_names(list(own), head) | head_tensor_names(list(state), head)
        if k not in own or k not in state or tuple(own[k].shape) != tuple(state[k].shape)
    }
    load_state_strict(model, state, source=source, skip=skip)
