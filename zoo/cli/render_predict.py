"""Rich output of ``zoo predict``: one line per image (its most probable class), or each
image's top-k classes with probability bars (``--topk K``). Returns renderables, tested on
``Console(file=StringIO())``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Table
from rich.text import Text

from zoo.cli.output import bar, percent, printable

#: Width of the probability bar.
BAR = 20


def predictions_table(predictions: Sequence[Any]) -> Table:
    """The predictions of the images that could be read: one line per image (file, class,
    probability) when each has one class, else each image's classes ranked, one line per
    class. File and class names are escaped where not printable (a file name can hold a
    newline or a terminal escape) and never read as markup; a path is never cut, it folds
    onto more lines."""
    table = Table(show_edge=False)
    table.add_column("image", overflow="fold")
    ranked = any(len(pred.top) > 1 for pred in predictions)
    if ranked:
        table.add_column("#", justify="right")
    table.add_column("class", overflow="fold")
    table.add_column("probability", justify="right")
    table.add_column("")
    for pred in predictions:
        for rank, (name, prob) in enumerate(pred.top, start=1):
            cells = [Text(printable(pred.source)) if rank == 1 else ""]
            cells += [str(rank)] if ranked else []
            cells += [Text(printable(name)), percent(prob), bar(prob, BAR)]
            table.add_row(*cells, style="bold" if ranked and rank == 1 else None)
        if ranked:
            table.add_section()
    return table
