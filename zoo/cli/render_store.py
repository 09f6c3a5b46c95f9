"""Rich renderables for ``zoo models``, ``zoo inspect``, ``zoo rm`` and ``zoo gc`` (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.text import Text

from zoo.adaptation.config import describe_augment
from zoo.cli.columns import Col, Columns
from zoo.cli.output import Fields, human_bytes, human_count, percent, printable
from zoo.cli.render_params import depth_table
from zoo.core import checks
from zoo.tables.table import DepthSummary

if TYPE_CHECKING:
    from zoo.io.persistence import Inspection
    from zoo.io.store import EntryInfo, GcResult

#: The per-depth columns of ``zoo inspect``: what trained at each depth, and a bar of it.
INSPECT_COLUMNS = ("tensors", "params", "trainable", "trained share")
#: how the ``auto`` policy's note (the first of its plan) begins
AUTO_NOTE = "auto chose "


def _classes_text(num_classes: int | None, classes: Sequence[str] | None, width: int = 28) -> str:
    if classes:
        shown = printable(", ".join(map(str, classes)))
        if len(shown) > width:
            shown = shown[: width - 1].rstrip(", ") + "…"
        return f"{len(classes)}: {shown}"
    return "-" if num_classes is None else str(num_classes)


def _date(created: str) -> str:
    return created.replace("T", " ")[:16] if created else "-"


def models_table(entries: Sequence[EntryInfo]) -> Columns:
    """One row per store entry, in the listings' style (:mod:`zoo.cli.columns`); a broken
    entry says ``broken`` (:func:`broken_lines` says why). Name, size and date are never cut;
    at narrow widths kind, trained, policy and then classes are dropped, in that order."""
    rows: list[tuple[Text | str, ...]] = []
    for entry in entries:
        name, meta = printable(entry.name), entry.meta
        if meta is None:
            size = human_bytes(entry.size) if entry.size else "-"
            broken = Text("broken", style="bold red")  # in a column that is never dropped
            rows.append((name, broken, "", "", "", "", size, ""))
            continue
        rows.append(
            (
                name,
                printable(meta.backbone),
                _classes_text(meta.num_classes, meta.classes),
                printable(meta.kind),
                printable((meta.policy or "-").removeprefix("zoo:")),
                percent(meta.trained_fraction if meta.num_params else None),
                human_bytes(entry.size),
                printable(_date(meta.created)[:10]),
            )
        )
    columns = (
        Col("name", style="cyan"),
        Col("backbone", shrink=True, min_width=16),
        Col("classes", shrink=True, drop=1, min_width=12),
        Col("kind", drop=4),
        Col("policy", shrink=True, drop=2, min_width=10),
        Col("trained", right=True, drop=3),
        Col("size", right=True),
        Col("date"),
    )
    return Columns(columns, rows)


def broken_lines(entries: Sequence[EntryInfo]) -> list[Text]:
    """One line per broken entry: its name and what is wrong with it."""
    return [
        Text.assemble((printable(e.name), "bold"), (f": {printable(e.reason)}", "red"))
        for e in entries
        if not e.ok
    ]


def models_summary(entries: Sequence[EntryInfo], home: str) -> Text:
    """The line under the table: how many models, how many broken, where the store is."""
    broken = sum(1 for e in entries if not e.ok)
    total = sum(e.size for e in entries)
    text = Text(f"{len(entries)} model(s), {human_bytes(total)} in {printable(home)}", style="dim")
    if broken:
        text.append(f"; {broken} broken (remove with zoo rm NAME)", style="red")
    return text


def inspect_view(info: Inspection) -> Group:
    """Metadata of a saved model, then what was trained at each depth.

    Every value from the file is shown as plain text (never parsed as rich markup) and
    escaped where not printable: a file's metadata is untrusted.
    """
    meta = info.metadata
    head = Text()
    head.append(printable(info.name or str(info.path)), style="bold cyan")
    head.append(printable(f"  {meta.kind} save of {meta.backbone}") + "\n")
    fields: list[tuple[str, str]] = []

    def row(label: str, value: str) -> None:
        fields.append((label, printable(value)))

    row("file", f"{info.path} ({human_bytes(info.size)}, {info.tensors} tensors)")
    for i, (label, text) in enumerate(adapter_lines(info)):
        row(label if i == 0 or label != "adapters" else "", text)
    row("classes", _classes_text(meta.num_classes, meta.classes, width=60))
    policy = meta.policy or "-"
    if meta.policy_args:
        policy += " (" + ", ".join(f"{k}={v}" for k, v in meta.policy_args.items()) + ")"
    row("policy", policy)
    for label, note in _plan_notes(meta.plan):
        row(label, note)
    row(
        "trained",
        f"{human_count(meta.num_trained_params)} of {human_count(meta.num_params)} parameters "
        f"({percent(meta.trained_fraction if meta.num_params else None)}), "
        f"{len(meta.trained)} tensors",
    )
    if meta.training:
        row("training", training_text(meta.training))
    if meta.build.get("kwargs"):
        row("arguments", ", ".join(f"{k}={v!r}" for k, v in meta.build["kwargs"].items()))
    config = meta.input_config
    if config:
        size = "x".join(str(v) for v in config.get("input_size", []))
        mean, std = _floats(config.get("mean")), _floats(config.get("std"))
        row("input", f"{size}, {config.get('interpolation', '?')}, mean {mean}, std {std}")
    if meta.base:
        digest = meta.base.get("sha256") or "?"
        row("base", f"{meta.base.get('kind')} {meta.base.get('ref')} (sha256 {digest[:16]}…)")
    row("created", f"{_date(meta.created)} UTC by zoo {meta.zoo_version or '?'}")
    if meta.plugins:
        row("plugins", ", ".join(f"{k} {v or '?'}" for k, v in meta.plugins.items()))
    for i, (key, value) in enumerate(sorted(meta.extra.items())):
        row("metadata" if i == 0 else "", f"{key} = {value}")
    row("seal", "verified" if info.verified else "not checked (--no-verify)")
    parts: list[Any] = [head, Fields(fields)]
    if info.depths:
        depths = [
            DepthSummary(
                depth=row["depth"],
                group=row["group"],
                tensors=row["tensors"],
                numel=row["numel"],
                trainable_numel=row["trained_numel"],
                norms=row["norms"],
            )
            for row in info.depths
        ]
        parts.extend([Text(""), depth_table(depths, INSPECT_COLUMNS)])
    if meta.compare:  # the leaderboard of the zoo compare that chose this model
        from zoo.cli.render_compare import board_from_metadata, leaderboard_table, why_text

        board = board_from_metadata(meta.compare)
        parts.extend([Text(""), leaderboard_table(board), why_text(board)])
    for note in info.notes:
        parts.append(Text(printable(f"note: {note}"), style="yellow"))
    return Group(*parts)


def adapter_lines(info: Inspection) -> list[tuple[str, str]]:
    """``(label, text)`` lines for a file with adapters: one per kind (its arguments, how many
    targets, the numbers it adds), then the file's size against a full file of the model."""
    lines = []
    for row in info.adapters:
        args = "; ".join(", ".join(f"{k}={v}" for k, v in a.items()) for a in row["args"])
        lines.append(
            (
                "adapters",
                f"{row['kind']} ({args or 'no arguments'}) on {row['targets']} target(s), "
                f"+{human_count(row['params'])} parameters",
            )
        )
    if lines and info.base_bytes:
        share = 100 * info.size / info.base_bytes
        lines.append(
            (
                "size",
                f"{human_bytes(info.size)}, {share:.2f}% of a full file of the model "
                f"({human_bytes(info.base_bytes)} of tensors)",
            )
        )
    return lines


def _plan_notes(plan: Any) -> list[tuple[str, str]]:
    """``(label, text)`` for each note of the saved plan: what ``auto`` chose and why is
    labelled ``auto`` (its note reads ``auto chose POLICY: data; reason``), others ``note``."""
    notes = plan.get("notes") if isinstance(plan, dict) else None
    if not isinstance(notes, list):
        return []
    out = []
    for note in notes:
        text = str(note)
        if text.startswith(AUTO_NOTE):
            out.append(("auto", "chose " + text.removeprefix(AUTO_NOTE)))
        else:
            out.append(("note", text))
    return out


def training_text(training: Mapping[str, Any]) -> str:
    """How the run trained (the ``zoo.training`` record, untrusted): epochs, the augmentation
    (``off`` when the record says none; files saved before zoo recorded it say nothing) and
    the EMA of the weights."""
    parts = []
    epochs, run = training.get("epochs"), training.get("epochs_run")
    if checks.is_int(epochs) and checks.is_int(run):
        parts.append(f"{run} of {epochs} epochs" if run != epochs else f"{epochs} epochs")
    if "augment" in training:
        parts.append(f"augmentation {describe_augment(training['augment'])}")
    ema = training.get("ema")
    if checks.is_real(ema):
        parts.append(f"EMA of the weights (decay {ema:g}) saved")
    return "; ".join(parts) or "-"


def _floats(values: Any) -> str:
    if not isinstance(values, (list, tuple)):
        return "?"
    return "(" + ", ".join(f"{float(v):.3g}" for v in values) + ")"


def gc_view(result: GcResult, *, dry_run: bool) -> Text:
    """What ``zoo gc`` removed (or would remove) and what it left alone."""
    text = Text()
    verb = "would remove" if dry_run else "removed"
    why = dict(result.checkpoints)  # an abandoned adapt checkpoint says what it held
    for path in result.removed:
        reason = f" ({printable(why[path])})" if path in why else ""
        text.append(f"{verb} {printable(path)}{reason}\n")
    for path, reason in result.skipped:
        text.append(f"skipped {printable(path)}: {printable(reason)}\n", style="yellow")
    for path in result.repaired:
        text.append(
            f"{'would rewrite' if dry_run else 'rewrote'} {printable(path)} (it "
            "described another version of the model)\n"
        )
    if result.locks:
        text.append(f"{verb} {len(result.locks)} stale lock file(s) of removed entries\n")
    if not (result.removed or result.skipped or result.repaired or result.locks):
        text.append("nothing to clean up\n", style="dim")
    else:
        text.append(
            f"{len(result.removed)} leftover(s), {human_bytes(result.freed)} "
            f"{'to free' if dry_run else 'freed'}\n",
            style="dim",
        )
    return text
