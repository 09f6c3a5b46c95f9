"""Parameter groups of a timm model from its own ``group_matcher(coarse=True)``.

timm describes, for every architecture, how its parameters fall into layer groups (the matcher
behind layer-wise learning-rate decay). :func:`timm_param_groups` turns that description into
zoo's ordered :class:`~zoo.ParamGroup` list: ``stem``, ``stage.1`` … ``stage.K``, then ``neck``
(parameters timm leaves unmatched that are not the classifier, such as a final norm) and
``head`` (exactly the parameters of ``model.get_classifier()``). It reads names and modules
only, so it works on a model living on the ``meta`` device.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import zoo
from zoo import ParamGroup

if TYPE_CHECKING:
    from torch import nn

Ordinal = tuple[float, ...]


def timm_param_groups(model: nn.Module) -> list[ParamGroup] | None:
    """Ordered groups for a timm model; ``None`` when it has no (working) ``group_matcher``.

    ``None`` lets zoo fall back to its generic grouping (MetaFormer, PiT, RDNet, … have no
    coarse matcher in timm 1.0).
    """
    matcher_fn = getattr(model, "group_matcher", None)
    if not callable(matcher_fn):
        return None
    try:
        matcher = matcher_fn(coarse=True)
    except Exception:  # e.g. RDNet: "coarse grouping is not implemented" (an AssertionError)
        return None
    if not matcher:
        return None

    from timm.models._manipulate import group_parameters

    names = [name for name, _ in model.named_parameters()]
    if not names:
        return None
    name_to_lid: dict[str, int] = group_parameters(model, matcher, reverse=True)
    ordinal = _ordinal_function(matcher)
    head = set(zoo.classifier_param_names(model))

    by_lid: dict[int, list[str]] = {}
    for name in names:  # module order inside each group
        by_lid.setdefault(name_to_lid[name], []).append(name)

    groups: list[ParamGroup] = []
    neck: list[str] = []
    stage = 0
    for position, lid in enumerate(sorted(by_lid)):
        members = [n for n in by_lid[lid] if n not in head]
        if not members:
            continue
        if all(math.isinf(ordinal(n)[0]) for n in members):
            neck.extend(members)  # what timm leaves unmatched: final norms, pre-logits
        elif position == 0 and _is_stem(matcher, [ordinal(n) for n in members]):
            groups.append(ParamGroup("stem", members))
        else:
            stage += 1
            groups.append(ParamGroup(f"stage.{stage}", members))
    if neck:
        groups.append(ParamGroup("neck", neck))
    head_names = [n for n in names if n in head]
    if head_names:
        groups.append(ParamGroup("head", head_names))
    return groups


def _is_stem(matcher: Any, ordinals: Iterable[Ordinal]) -> bool:
    """Whether the first group timm forms is a stem (its first rule), not already a block."""
    if isinstance(matcher, dict):
        keys = [k for k, v in matcher.items() if v is not None]
        first = str(keys[0]) if keys else ""
        return first.startswith("stem") and all(o[0] == 0 for o in ordinals)
    return all(o[0] == 0 for o in ordinals)


def _ordinal_function(matcher: Any) -> Callable[[str], Ordinal]:
    """The sort key timm's ``group_with_matcher`` gives a parameter name (same rules)."""
    if isinstance(matcher, dict):
        compiled: list[tuple[re.Pattern[str], tuple[int, ...], Any]] = []
        for ordinal, (_group, mspec) in enumerate(matcher.items()):
            if mspec is None:
                continue
            if isinstance(mspec, (tuple, list)):
                compiled.extend((re.compile(s[0]), (ordinal,), s[1]) for s in mspec)
            else:
                compiled.append((re.compile(mspec), (ordinal,), None))

        def by_rules(name: str) -> Ordinal:
            for pattern, prefix, suffix in compiled:
                match = pattern.match(name)
                if match:
                    parts = (prefix, match.groups(), suffix)
                    return tuple(float(v) for part in parts if part for v in part)
            return (math.inf,)

        return by_rules

    def by_callable(name: str) -> Ordinal:
        value = matcher(name)
        if isinstance(value, (tuple, list)):
            return tuple(float(v) for v in value) or (math.inf,)
        return (float(value),)

    return by_callable
