"""The plot of a comparison: validation accuracy against trained parameters (log scale).

One labelled point per policy, the winner marked. Written as a PNG with matplotlib, an optional
extra (``pip install -e ".[plot]"`` in the zoo checkout): :func:`check_plot_available` is
called before any training, so a missing matplotlib fails at once.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from zoo.errors import ZooError
from zoo.io.leaderboard import Leaderboard, short_policy

INSTALL_HINT = 'pip install -e ".[plot]" in the zoo checkout'


def check_plot_available(what: str = "plotting the comparison") -> None:
    """Raise :class:`~zoo.ZooError` (naming the install command) when matplotlib is missing;
    ``what`` names the plot asked for."""
    try:
        found = importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ZooError(
            f"{what} (plot= / --plot FILE) needs matplotlib, which is not "
            f"installed: {INSTALL_HINT} (or pip install matplotlib), or leave out the plot"
        )


def check_plot_path(path: str | os.PathLike[str]) -> Path:
    """The PNG path to write, refused (before any training) when its folder does not exist."""
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise ZooError(f"the plot is written as PNG: name a .png file, not {str(path)!r}")
    if not target.parent.is_dir():
        raise ZooError(
            f"cannot write the plot {str(path)!r}: folder {str(target.parent)!r} does not exist"
        )
    return target


#: Longest label line (characters); a longer spec wraps after a comma.
LABEL_WIDTH = 24


def plot_label(policy: str, width: int = LABEL_WIDTH) -> str:
    """A policy's label: the built-in prefix dropped, wrapped after commas (or ``:``) so no
    line is longer than ``width`` characters; a single longer argument is kept whole."""
    text = short_policy(policy)
    lines: list[str] = []
    line = ""
    for piece in _pieces(text):
        if line and len(line) + len(piece) > width:
            lines.append(line)
            line = piece
        else:
            line += piece
    return "\n".join([*lines, line])


def _pieces(text: str) -> list[str]:
    """``text`` cut after each ``:`` and ``,`` (the places a spec may wrap)."""
    pieces, start = [], 0
    for i, char in enumerate(text):
        if char in ":,":
            pieces.append(text[start : i + 1])
            start = i + 1
    return [*pieces, text[start:]] if start < len(text) else pieces


#: Font size of the labels, their gap from their point and the room a marker takes (points).
LABEL_SIZE = 7.5
GAP = 7.0
MARKER_RADIUS = 5.0
#: The winner's star is larger: its label starts this much further away.
WINNER_EXTRA = 3.0


def _label_places(ax: Any, points: list[tuple[float, float]], texts: list[str]) -> list:
    """Where each label goes, as ``(side, dy)``: right (1) or left (-1) of its point, moved
    ``dy`` points up or down from beside it. Greedy in the rows' order (the winner first): the
    first spot, nearest its point, where the label covers no point and no label placed before
    it, and stays inside the axes."""
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    radius = MARKER_RADIUS * ax.figure.dpi / 72
    taken: list[Any] = [
        Bbox.from_extents(x - radius, y - radius, x + radius, y + radius)
        for x, y in ax.transData.transform(points)
    ]
    places = []
    for i, (point, text) in enumerate(zip(points, texts, strict=True)):
        gap = GAP + (WINNER_EXTRA if i == 0 else 0)
        probe = ax.annotate(
            text, point, xytext=(gap, 0), textcoords="offset points", va="center",
            fontsize=LABEL_SIZE,
        )  # fmt: skip
        chosen = (1, 0.0)  # beside its point, if no free spot is found
        for tries in range(121):
            side = 1 if tries % 2 == 0 else -1
            dy = 3.0 * ((tries // 2 + 1) // 2) * (1 if (tries // 2) % 2 else -1)
            probe.set_horizontalalignment("left" if side > 0 else "right")
            probe.xyann = (gap * side, dy)
            box = probe.get_window_extent(renderer)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0
            if inside and box.y1 <= frame.y1 and not any(box.overlaps(t) for t in taken):
                chosen = (side, dy)
                break
        probe.set_horizontalalignment("left" if chosen[0] > 0 else "right")
        probe.xyann = (gap * chosen[0], chosen[1])
        taken.append(probe.get_window_extent(renderer))
        probe.remove()
        places.append(chosen)
    return places


def write_plot(board: Leaderboard, path: str | os.PathLike[str]) -> Path:
    """Write ``board`` as a scatter plot PNG at ``path`` (see :func:`draw`); returns the path."""
    check_plot_available()
    import matplotlib.pyplot as plt

    target = Path(path)
    fig = draw(board)
    try:
        fig.savefig(target, format="png")
    finally:
        plt.close(fig)
    return target


def draw(board: Leaderboard) -> Any:
    """The plot of ``board``, a matplotlib ``Figure`` (the caller closes it).

    One point per policy (validation accuracy against trained parameters, log scale), each
    with its label beside it (moved, with a line to its point, where labels would overlap);
    the winner is a red star, a policy cut early by halving or the budget a grey cross; the
    legend lists only the markers that appear; the axes span the data."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    rows = list(board.rows)
    xs = [max(1, row.trainable_params) for row in rows]
    ys = [row.val_acc for row in rows]
    styles = {
        "winner": {"marker": "*", "color": "tab:red", "s": 160},
        "trained": {"marker": "o", "color": "tab:blue", "s": 45},
        "cut": {"marker": "x", "color": "grey", "s": 45},
    }
    kinds = [
        "winner" if i == 0 else "cut" if r.stopped_early else "trained" for i, r in enumerate(rows)
    ]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for x, y, kind in zip(xs, ys, kinds, strict=True):
        ax.scatter([x], [y], zorder=3, **styles[kind])
    ax.set_xscale("log")
    ax.set_xlim(min(xs) / 3, max(xs) * 3)
    low, high = min(ys), max(ys)
    pad = max(0.05, (high - low) * 0.15)
    ax.set_ylim(max(0.0, low - pad), min(1.0, high + pad) + 0.02)
    ax.set_xlabel("trained parameters (log scale)", labelpad=2)
    ax.set_ylabel("validation accuracy")
    ax.set_title(
        f"{len(rows)} polic{'y' if len(rows) == 1 else 'ies'}, {board.epochs} "
        f"epoch{'' if board.epochs == 1 else 's'}",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    legend = {
        "winner": "winner",
        "trained": f"trained all {board.epochs} epochs",
        "cut": "cut early (halving or budget)",
    }
    handles = [
        Line2D([], [], linestyle="", marker=styles[k]["marker"], color=styles[k]["color"],
               markersize=10 if k == "winner" else 6, label=legend[k])
        for k in ("winner", "trained", "cut")
        if k in kinds
    ]  # fmt: skip
    ax.legend(  # below the axes: it never covers a point
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.13),
        ncol=len(handles),
        fontsize=8,
        frameon=False,
    )
    fig.tight_layout()
    points = list(zip(xs, ys, strict=True))
    texts = [plot_label(row.policy) for row in rows]
    places = _label_places(ax, points, texts)
    for i, (point, text, (side, dy)) in enumerate(zip(points, texts, places, strict=True)):
        moved = abs(dy) > LABEL_SIZE  # away from its point: a line leads back to it
        gap = GAP + (WINNER_EXTRA if i == 0 else 0)
        ax.annotate(
            text,
            point,
            xytext=(gap * side, dy),
            textcoords="offset points",
            va="center",
            ha="left" if side > 0 else "right",
            fontsize=LABEL_SIZE,
            arrowprops={"arrowstyle": "-", "color": "0.55", "lw": 0.6} if moved else None,
        )
    return fig
