"""The plot of a comparison: each label beside its own point, nothing cut or covered, axes and
legend from the data (``zoo compare --plot``)."""

from __future__ import annotations

import itertools

import pytest
from matplotlib.text import Text

from zoo.adaptation.compare_plot import LABEL_WIDTH, draw, plot_label
from zoo.io.leaderboard import Leaderboard, LeaderboardRow

plt = pytest.importorskip("matplotlib.pyplot")


def row(policy: str, acc: float, params: int, cut: bool = False) -> LeaderboardRow:
    return LeaderboardRow(
        policy, acc, 0.5, params, 100 * params / 4.9e6, 1 if cut else 15, 1.0, cut
    )


CROWDED = Leaderboard(
    (
        row("zoo:train-last:n=2", 0.88, 2_400_000),
        row("zoo:full", 0.876, 4_900_000),
        row("zoo:lora:rank=8,alpha=16,dropout=0.0,targets=qkv,fc1,fc2,min_depth=2", 0.872, 120_000),
        row("zoo:train-last:n=1", 0.86, 1_200_000),
        row("zoo:layer-decay:decay=0.75", 0.86, 4_900_000),
        row("zoo:norm-only:update_stats=true", 0.80, 9_000, cut=True),
        row("zoo:bitfit", 0.80, 12_000, cut=True),
        row("zoo:ssf", 0.79, 15_000, cut=True),
        row("zoo:linear-probe", 0.75, 2_570, cut=True),
        row("zoo:train-last:n=3", 0.87, 3_600_000, cut=True),
    ),
    epochs=15,
)


@pytest.fixture
def crowded():
    fig = draw(CROWDED)
    fig.canvas.draw()  # lays the labels out, as saving does
    yield fig
    plt.close(fig)


def test_a_long_spec_wraps_after_commas_and_keeps_every_argument():
    spec = "zoo:lora:rank=8,alpha=16,dropout=0.0,targets=qkv,fc1,fc2,min_depth=2"
    label = plot_label(spec)
    assert label.replace("\n", "") == spec.removeprefix("zoo:")  # nothing cut off
    assert all(len(line) <= LABEL_WIDTH for line in label.splitlines())
    assert all(line.endswith((",", ":")) for line in label.splitlines()[:-1])
    assert plot_label("zoo:norm-only:update_stats=true") == "norm-only:\nupdate_stats=true"


def test_every_label_is_beside_its_own_point_and_covers_no_other(crowded):
    ax = crowded.axes[0]
    renderer = crowded.canvas.get_renderer()
    labels = ax.texts
    assert [t.get_text() for t in labels] == [plot_label(r.policy) for r in CROWDED.rows]
    frame = ax.get_window_extent(renderer)
    boxes = [Text.get_window_extent(t, renderer) for t in labels]  # the text, not its line
    for a, b in itertools.combinations(range(len(boxes)), 2):
        assert not boxes[a].overlaps(boxes[b]), (labels[a].get_text(), labels[b].get_text())
    points = ax.transData.transform([t.xy for t in labels])
    for text, box, (x, y) in zip(labels, boxes, points, strict=True):
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1, text.get_text()  # not cut
        assert frame.y0 <= box.y0 and box.y1 <= frame.y1, text.get_text()
        others = [p for p in points if (p != (x, y)).any()]
        assert not any(box.contains(px, py) for px, py in others), text.get_text()
        near = box.y0 - 1 <= y <= box.y1 + 1  # beside its point, or linked to it by a line
        assert near or text.arrow_patch is not None, text.get_text()
    for (x, y), r in zip((t.xy for t in labels), CROWDED.rows, strict=True):
        assert (x, y) == (r.trainable_params, r.val_acc)  # anchored at its own point


def test_the_axes_span_the_data_and_the_legend_shows_what_is_drawn(crowded):
    ax = crowded.axes[0]
    low, high = ax.get_xlim()
    assert 2_570 / 4 < low < 2_570 and 4_900_000 < high < 4_900_000 * 4
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["winner", "trained all 15 epochs", "cut early (halving or budget)"]
    fig = draw(Leaderboard((row("zoo:linear-probe", 0.95, 5_130),), epochs=3))
    try:
        assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["winner"]
        assert fig.axes[0].get_ylim()[1] <= 1.02
    finally:
        plt.close(fig)
