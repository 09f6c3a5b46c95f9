"""Rich output of ``zoo evaluate``: the scores in a sentence, the per-class table and the
confusion matrix (or, when the matrix is wider than the terminal, the most frequent
confusions). Returns renderables, tested on ``Console(file=StringIO())``."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from zoo.cli.output import percent, plural, printable

#: How many of the most frequent confusions are listed when the matrix does not fit.
TOP_CONFUSIONS = 10


def scores_text(evaluation: Any) -> Text:
    """``accuracy 83.3% (5 of 6 images) · top-3 100.0% · loss 0.4121``."""
    return Text(
        f"accuracy {percent(evaluation.accuracy)} ({evaluation.correct:,} of "
        f"{plural(evaluation.images, 'image')}) · top-{evaluation.topk} "
        f"{percent(evaluation.topk_accuracy)} · loss {evaluation.loss:.4f}"
    )


def classes_table(evaluation: Any) -> Table:
    """One row per class: precision, recall, F1 and its images (support)."""
    table = Table(show_edge=False)
    table.add_column("class", overflow="fold")
    for header in ("precision", "recall", "F1", "images"):
        table.add_column(header, justify="right")
    for scores in evaluation.per_class:
        table.add_row(
            Text(printable(scores.name)),
            percent(scores.precision),
            percent(scores.recall),
            percent(scores.f1),
            f"{scores.support:,}",
        )
    return table


def confusion_view(evaluation: Any, width: int) -> Table | Text:
    """The confusion matrix when it fits in ``width`` columns, else the most frequent
    confusions (a sentence when there are none)."""
    if all(t == p for t, p, _ in evaluation.confusion):
        return Text("no confusions: every image is predicted as its class")
    names = [printable(name) for name in evaluation.classes]
    cell = max(len(f"{n:,}") for _, _, n in evaluation.confusion)
    needed = max(len(n) for n in [*names, "true \\ predicted"]) + 1
    needed += sum(max(len(name), cell) + 3 for name in names)
    if needed <= width:
        return confusion_table(evaluation)
    return confusions_table(evaluation)


def confusion_table(evaluation: Any) -> Table:
    """Rows: the true class; columns: the predicted class; correct counts in bold."""
    table = Table(show_edge=False, title="confusion matrix", title_justify="left")
    table.add_column("true \\ predicted", no_wrap=True)
    for name in evaluation.classes:
        table.add_column(Text(printable(name)), justify="right", no_wrap=True)
    for true, row in enumerate(evaluation.matrix()):
        cells = [
            Text(f"{n:,}" if n else "·", style="bold" if pred == true else "dim")
            for pred, n in enumerate(row)
        ]
        table.add_row(Text(printable(evaluation.classes[true])), *cells)
    return table


def confusions_table(evaluation: Any, limit: int = TOP_CONFUSIONS) -> Table:
    """The ``limit`` most frequent mistakes (true class, predicted class, images, share of the
    true class's images), for a matrix too wide to show."""
    support = [scores.support for scores in evaluation.per_class]
    wrong = sorted(
        ((n, t, p) for t, p, n in evaluation.confusion if t != p), key=lambda c: (-c[0], c[1])
    )
    shown = len(wrong[:limit])
    title = (
        f"the {plural(shown, 'most frequent confusion')} of {len(wrong)} (the matrix of "
        f"{plural(len(evaluation.classes), 'class')} is wider than the terminal: --json or "
        "--plot FILE has it whole)"
    )
    table = Table(show_edge=False, title=title, title_justify="left")
    table.add_column("true class", overflow="fold")
    table.add_column("predicted as", overflow="fold")
    table.add_column("images", justify="right")
    table.add_column("share", justify="right")
    for n, t, p in wrong[:limit]:
        table.add_row(
            Text(printable(evaluation.classes[t])),
            Text(printable(evaluation.classes[p])),
            f"{n:,}",
            percent(n, support[t]),
        )
    return table
