"""Built-in plugin ``zoo``: the standard freeze policies.

Registered through the same hook as any third-party plugin. Every policy is a pure function of
a :class:`~zoo.ParamTable` and typed keyword arguments that returns a :class:`~zoo.Plan`; none
touches a model, so each is testable on a hand-built table. Depths come from the table:
0 is the stem, ``table.max_depth`` the head; "stages" are the depths between (a ``neck``, such
as a final norm, goes with the head).

See ``docs/policies.md`` for the catalogue and the decision table of ``auto``.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import replace
from typing import Literal

from zoo import NormMode, ParamTable, Plan, PolicySpec
from zoo.errors import PolicyArgumentError
from zoo.hookspecs import RegisterPolicy, hookimpl

PLUGIN_NAME = "zoo"
HEAD_GROUPS = frozenset({"head", "neck"})


# ---------------------------------------------------------------- table helpers


def head_names(table: ParamTable) -> list[str]:
    """The classifier's parameters (role ``head``)."""
    return [row.name for row in table.rows if row.role == "head"]


def stage_depths(table: ParamTable) -> list[int]:
    """Depths of the body, stem included, head and neck excluded, ascending."""
    return [s.depth for s in table.depth_summary() if s.group not in HEAD_GROUPS]


def _depth_map(table: ParamTable) -> str:
    return ", ".join(f"{s.depth}={s.group}" for s in table.depth_summary())


def trainable_from_depth(table: ParamTable, depth: int) -> list[str]:
    return [row.name for row in table.rows if row.depth >= depth]


def last_stages_threshold(table: ParamTable, n: int) -> int:
    """The lowest depth that trains when the last ``n`` stages (and the head) train."""
    stages = stage_depths(table)
    if n <= 0 or not stages:
        return (stages[-1] + 1) if stages else 0
    return stages[-min(n, len(stages))]


def _check_range(name: str, value: float, low: float, high: float, hint: str = "") -> None:
    if not (low <= value <= high):
        raise PolicyArgumentError(
            f"argument {name!r} must be between {low} and {high} for this model, got {value}"
            + (f"; {hint}" if hint else "")
        )


# ---------------------------------------------------------------- the policies


def full(table: ParamTable) -> Plan:
    """Everything trains; every norm layer in train mode."""
    return Plan.from_table(table, table.names)


def linear_probe(table: ParamTable) -> Plan:
    """Only the classifier trains; every norm layer has fixed statistics."""
    head = set(head_names(table))
    modes = {
        norm.path: NormMode.FROZEN_STATS if head.intersection(norm.params) else NormMode.FROZEN
        for norm in table.norms
    }
    notes = [] if head else ["the model has no classifier head: nothing trains"]
    return Plan.from_table(
        table, [n for n in table.names if n in head], norm_modes=modes, notes=notes
    )


def freeze_to(table: ParamTable, depth: int) -> Plan:
    """Freeze everything below ``depth``; depths ``depth`` .. head train (0 = full)."""
    _check_range("depth", depth, 0, table.max_depth, f"depths are {_depth_map(table)}")
    return Plan.from_table(table, trainable_from_depth(table, depth))


def train_last(table: ParamTable, n: int = 1) -> Plan:
    """Train the last ``n`` stages and the head (``n=0``: the head only, norms as planned)."""
    stages = stage_depths(table)
    _check_range("n", n, 0, len(stages), f"this model has {len(stages)} stages counting the stem")
    return Plan.from_table(table, trainable_from_depth(table, last_stages_threshold(table, n)))


def bitfit(table: ParamTable) -> Plan:
    """BitFit: every bias (norm biases included) and the head train."""
    head = set(head_names(table))
    names = [
        row.name
        for row in table.rows
        if row.name in head or row.role == "bias" or row.name.rpartition(".")[2] == "bias"
    ]
    return Plan.from_table(table, names)


def norm_only(table: ParamTable, update_stats: bool = True) -> Plan:
    """The affine parameters of every norm layer and the head train.

    ``update_stats=False`` keeps the running statistics fixed (``frozen-stats``).
    """
    wanted = set(head_names(table))
    for norm in table.norms:
        wanted.update(norm.params)
    wanted.update(row.name for row in table.rows if row.role == "norm")
    modes = (
        {}
        if update_stats
        else {norm.path: NormMode.FROZEN_STATS for norm in table.norms if norm.params}
    )
    return Plan.from_table(table, [n for n in table.names if n in wanted], norm_modes=modes)


def pattern(
    table: ParamTable, include: list[str] | None = None, exclude: list[str] | None = None
) -> Plan:
    """Exact control: parameters matching an ``include`` glob and no ``exclude`` glob train.

    Globs are fnmatch patterns over parameter names (``layer4.*``, ``*.bias``); ``include``
    defaults to every parameter. A glob that matches nothing is an error (a typo, usually).
    """
    if not include and not exclude:
        raise PolicyArgumentError(
            "give include= and/or exclude= globs over parameter names, e.g. "
            "pattern:include=layer4.*,fc.*"
        )
    names = table.names
    for kind, globs in (("include", include or []), ("exclude", exclude or [])):
        for glob in globs:
            if not any(fnmatch.fnmatchcase(n, glob) for n in names):
                sample = ", ".join(names[:3] + names[-2:])
                raise PolicyArgumentError(
                    f"{kind} glob {glob!r} matches no parameter; names look like {sample} "
                    "(see `zoo show NAME --full`)"
                )

    def matches(name: str, globs: list[str]) -> bool:
        return any(fnmatch.fnmatchcase(name, g) for g in globs)

    trained = [
        n for n in names if (not include or matches(n, include)) and not matches(n, exclude or [])
    ]
    return Plan.from_table(table, trained)


def layer_decay(table: ParamTable, decay: float = 0.75) -> Plan:
    """Everything trains; depth d gets lr scale ``decay ** (max_depth - d)`` (head: 1)."""
    if not (0.0 < decay <= 1.0):
        raise PolicyArgumentError(f"argument 'decay' must be in (0, 1], got {decay}")
    top = table.max_depth
    scales = {row.name: decay ** (top - row.depth) for row in table.rows}
    return Plan.from_table(table, table.names, lr_scales=scales)


def lp_ft(table: ParamTable, n: int | None = None, probe: float = 0.5) -> Plan:
    """LP-FT (Kumar et al., ICLR 2022): the head alone first, for the ``probe`` share of the
    epochs (on features cached at its input), then the last ``n`` stages and the head train
    from that head (``n`` left out: every parameter, as ``full``)."""
    if not (0.0 < probe < 1.0):
        raise PolicyArgumentError(
            f"argument 'probe' must be a share of the epochs between 0 and 1 (both excluded), "
            f"got {probe}; e.g. probe=0.5 fits the head for half the epochs"
        )
    if n == 0:
        raise PolicyArgumentError(
            "argument 'n' must be >= 1 (n=0 trains the head only: that is linear-probe)"
        )
    part = full(table) if n is None else train_last(table, n)
    note = (
        f"LP-FT: the classifier head trains alone first ({probe:.0%} of the epochs, on features "
        "cached at its input), then the plan's parameters train from that head"
    )
    return replace(part, probe=probe, notes=(*part.notes, note))


def surgical(table: ParamTable, depth: int) -> Plan:
    """Surgical fine-tuning (Lee et al., ICLR 2023): one block of the body, at ``depth``, and
    the head train; everything else stays as pretrained."""
    stages = stage_depths(table)
    if depth not in stages:
        raise PolicyArgumentError(
            f"argument 'depth' must be a depth of the body ({', '.join(map(str, stages))}: "
            f"{_depth_map(table)}), got {depth}"
        )
    names = [row.name for row in table.rows if row.depth == depth or row.group in HEAD_GROUPS]
    return Plan.from_table(table, names)


def gradual(table: ParamTable, epoch: int, every: int = 1) -> Plan:
    """Gradual unfreezing: the head first, then one more stage (top down) every ``every`` epochs."""
    if every < 1:
        raise PolicyArgumentError(f"argument 'every' must be >= 1, got {every}")
    stages = stage_depths(table)
    unfrozen = min(epoch // every, len(stages))
    names = trainable_from_depth(table, last_stages_threshold(table, unfrozen))
    if unfrozen < len(stages):
        note = (
            f"epoch {epoch}: {unfrozen} of {len(stages)} stages unfrozen; the next one at "
            f"epoch {(unfrozen + 1) * every}"
        )
    else:
        note = (
            f"epoch {epoch}: all {len(stages)} stages unfrozen (since epoch {len(stages) * every})"
        )
    return Plan.from_table(table, names, notes=[note])


def auto(
    table: ParamTable,
    samples_per_class: int,
    similarity: Literal["high", "low"] = "high",
    small: int = 100,
    large: int = 1000,
) -> Plan:
    """Choose linear-probe, partial or full fine-tuning from data size and task similarity.

    ``samples_per_class``: labelled training samples per class. ``similarity``: how close the
    task is to the pretraining data. ``small``/``large``: the data-size thresholds. The reason
    for the choice is the plan's first note.
    """
    if samples_per_class < 1:
        raise PolicyArgumentError(
            f"argument 'samples_per_class' must be >= 1, got {samples_per_class}"
        )
    if not (1 <= small < large):
        raise PolicyArgumentError(
            f"arguments need 1 <= small < large, got small={small}, large={large}"
        )
    n = samples_per_class
    size = "small" if n < small else "large" if n >= large else "medium"
    bounds = {"small": f"< {small}", "medium": f"{small}-{large - 1}", "large": f">= {large}"}
    stages = stage_depths(table)
    data = (
        f"{n} labelled samples per class is a {size} dataset ({bounds[size]}) and the task's "
        f"similarity to the pretraining data is {similarity}"
    )
    if size == "small" and similarity == "high":
        chosen, equivalent = linear_probe(table), "zoo:linear-probe"
        why = (
            "the pretrained features already fit the task and too few samples would "
            "overfit a fine-tuned backbone: train the classifier only"
        )
    elif size == "small":
        chosen, equivalent = train_last(table, 1), "zoo:train-last:n=1"
        why = (
            "the top features are specific to the pretraining task, but too few samples to "
            "adapt more than the last stage: train the last stage and the head"
        )
    elif size == "medium" and similarity == "high":
        half = max(1, math.ceil(len(stages) / 2))
        chosen, equivalent = train_last(table, half), f"zoo:train-last:n={half}"
        why = (
            f"enough data to adapt the upper stages, and the generic lower stages fit: "
            f"partial fine-tuning of the last {half} of {len(stages)} stages"
        )
    else:
        chosen, equivalent = full(table), "zoo:full"
        why = (
            "enough data to adapt every layer"
            if size == "large"
            else "the task differs, and there is enough data to adapt every layer"
        )
        why += ": full fine-tuning"
    reason = f"auto chose {equivalent}: {data}; {why}"
    return Plan.from_table(table, chosen.trainable, norm_modes=chosen.norms, notes=[reason])


# ---------------------------------------------------------------- registration

#: The rate a policy training a few parameters declares (one fact: ``PolicySpec.HEAD_RATE``).
HEAD_RATE = PolicySpec.HEAD_RATE

POLICIES: tuple[PolicySpec, ...] = (
    PolicySpec("full", full, "Train everything (norms in train mode)."),
    PolicySpec(
        "linear-probe",
        linear_probe,
        "Train the classifier head only; every norm layer keeps fixed statistics.",
        lr_scale=HEAD_RATE,
    ),
    PolicySpec("freeze-to", freeze_to, "Freeze below depth k; train depth >= k and the head."),
    PolicySpec("train-last", train_last, "Train the last n stages and the head."),
    PolicySpec("bitfit", bitfit, "BitFit: train every bias term and the head.", lr_scale=HEAD_RATE),
    PolicySpec(
        "norm-only",
        norm_only,
        "Train the norm layers' affine parameters and the head.",
        lr_scale=HEAD_RATE,
    ),
    PolicySpec(
        "pattern",
        pattern,
        "Train parameters matching include globs and no exclude glob (exact control).",
    ),
    PolicySpec(
        "layer-decay", layer_decay, "Train everything with lr scale decay^(max_depth - depth)."
    ),
    PolicySpec(
        "lp-ft",
        lp_ft,
        "LP-FT: fit the head alone first (probe= share of the epochs), then train the last n "
        "stages (default: everything) from it.",
    ),
    PolicySpec(
        "surgical",
        surgical,
        "Surgical fine-tuning: train one block (depth=K) and the head.",
    ),
    PolicySpec(
        "gradual",
        gradual,
        "Gradual unfreezing: head first, one more stage every k epochs (schedule).",
        schedule=True,
    ),
    PolicySpec(
        "auto",
        auto,
        "Pick linear-probe, partial or full fine-tuning from samples per class and "
        "task similarity, and say why.",
    ),
)


@hookimpl
def zoo_register_policies(register: RegisterPolicy) -> None:
    from zoo.builtin.adapter_policies import SPECS  # lora, ssf, vpt and their adapter kinds

    for spec in (*POLICIES, *SPECS):
        register(spec)
