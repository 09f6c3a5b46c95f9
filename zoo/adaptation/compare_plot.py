"""The plot of a comparison: validation accuracy against trained parameters (log scale).

One labelled point per policy, the winner marked. Written as a PNG with matplotlib, an optional
extra (``pip install "zoo-transfer[plot]"``): :func:`check_plot_available` is called before
any training, so a missing matplotlib fails at once.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from zoo.errors import ZooError
from zoo.io.leaderboard import Leaderboard, short_policy

INSTALL_HINT = 'pip install "zoo-transfer[plot]"'


def check_plot_available() -> None:
    """Raise :class:`~zoo.ZooError` (naming the install command) when matplotlib is missing."""
    try:
        found = importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ZooError(
            "plotting the comparison (plot= / --plot FILE) needs matplotlib, which is not "
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


def _label(policy: str, limit: int = 26) -> str:
    text = short_policy(policy)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def write_plot(board: Leaderboard, path: str | os.PathLike[str]) -> Path:
    """Write ``board`` as a scatter plot PNG at ``path``; returns the path."""
    check_plot_available()
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    target = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    try:
        placed: list[tuple[float, float]] = []
        for i, row in enumerate(board.rows):
            x = max(1, row.trainable_params)
            # labels of points close together are stacked instead of drawn over each other
            near = sum(1 for px, py in placed if 0.5 < x / px < 2 and abs(py - row.val_acc) < 0.04)
            placed.append((x, row.val_acc))
            winner = i == 0
            ax.scatter(
                [x],
                [row.val_acc],
                s=140 if winner else 45,
                marker="*" if winner else ("o" if not row.stopped_early else "x"),
                color="tab:red" if winner else ("tab:blue" if not row.stopped_early else "grey"),
                zorder=3,
            )
            label = _label(row.policy) + (" (winner)" if winner else "")
            ax.annotate(
                label,
                (x, row.val_acc),
                textcoords="offset points",
                xytext=(6, 4 - 11 * near),
                fontsize=8,
            )
        ax.set_xscale("log")
        xs = [max(1, row.trainable_params) for row in board.rows]
        ax.set_xlim(min(xs) / 2, max(xs) * 12)  # room on the right for the labels
        ax.set_xlabel("trained parameters (log scale)")
        ax.set_ylabel("validation accuracy")
        ax.set_title(
            f"{len(board.rows)} policies, {board.epochs} epochs (x: cut early by halving)",
            fontsize=10,
        )
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(target, format="png")
    finally:
        plt.close(fig)
    return target
