"""Issue 13 item 9: one table style for ``zoo list``, ``zoo plugins`` and ``zoo models`` that
uses the real width and degrades well (key columns never cut, less important ones dropped
first), checked at 80 and 250 columns on real subprocesses and on consoles of those widths."""

from __future__ import annotations

import os
import subprocess
import sys
from io import StringIO

import pytest
from rich.console import Console
from test_store import make_entry

from zoo.cli.columns import Col, Columns
from zoo.cli.listing import get_listing
from zoo.cli.render_listing import backbones_table, plugins_table, policies_table
from zoo.cli.render_store import models_table
from zoo.io import store

LONG_SUMMARY = "a summary " * 20  # 200 characters


def render(renderable, width: int) -> str:
    console = Console(file=StringIO(), width=width, color_system=None)
    console.print(renderable)
    return console.file.getvalue()


def zoo_cli(*args: str, columns: int) -> str:
    env = {**os.environ, "COLUMNS": str(columns), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "zoo.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return run.stdout


def test_columns_cut_shrinkable_first_then_drop_by_priority():
    rows = [("very-long-model-name-kept", "x" * 5, "yy", LONG_SUMMARY, "12.5 MB")]
    table = Columns(
        (
            Col("name"),
            Col("minor", drop=2),
            Col("more", drop=1),
            Col("summary", shrink=True, min_width=20),
            Col("size", right=True),
        ),
        rows,
        title="T",
    )
    wide = table.plain(250).splitlines()
    assert wide[0] == "T" and LONG_SUMMARY.rstrip() in wide[3]  # all of it: nothing cut
    narrow = table.plain(80).splitlines()
    assert all(len(line) <= 80 for line in narrow)
    assert "very-long-model-name-kept" in narrow[3] and narrow[3].endswith("12.5 MB")
    assert "…" in narrow[3] and "minor" in narrow[1]  # the summary is cut before dropping
    tight = table.plain(64).splitlines()
    assert all(len(line) <= 64 for line in tight)
    assert "minor" not in tight[1] and "more" in tight[1]  # the highest drop goes first
    assert tight[3].endswith("12.5 MB") and "very-long-model-name-kept" in tight[3]
    # the rich rendering lays out for the console's width, the same way
    assert render(table, 80).splitlines() == narrow
    assert render(table, 250).splitlines() == wide


@pytest.mark.slow
def test_cli_listings_use_the_real_width(tmp_path):
    get_listing()  # fills this test's cache for the subprocesses (same ZOO_CACHE_DIR)
    for columns in (80, 250):
        out = zoo_cli("list", "backbones", "timm:*", columns=columns)
        lines = out.splitlines()
        assert all(len(line) <= columns for line in lines)
        expected = ["name", "pretrained", "input", "summary"]
        if columns == 80:  # timm's longest name is 44 wide: the pretrained count goes first
            expected.remove("pretrained")
        assert lines[1].split() == expected
        assert set(lines[2].replace(" ", "")) == {"─"}
        longest = max(len(line) for line in lines[3:])
        if columns == 80:
            assert longest == 80 and any(line.endswith("…") for line in lines)
        else:  # nothing cut at 250: no summary of timm's is that long (the old cut was at 60)
            assert not any(line.endswith("…") for line in lines) and longest > 80
        policies = zoo_cli("list", "policies", columns=columns).splitlines()
        plugins = zoo_cli("plugins", columns=columns).splitlines()
        for listing in (policies, plugins):
            assert all(len(line) <= columns for line in listing)
            assert not any(c in "".join(listing) for c in "┃│┏━┡")  # no boxes: one style
            assert set(listing[2].replace(" ", "")) == {"─"}
        assert plugins[1].split()[0] == "plugin" and "status" in plugins[1]


@pytest.mark.slow
def test_models_keep_name_size_and_date_whole_at_80_columns():
    long_name = "a-rather-long-model-name-for-the-store"
    make_entry(long_name, classes=[f"class{i}" for i in range(30)], backbone="timm:resnet18")
    make_entry("delta", kind="delta", base={"kind": "store", "ref": long_name, "sha256": "1" * 64})
    (store.models_dir() / "bad").mkdir()
    entries = store.list_saved()
    wide = render(models_table(entries), 250)
    assert wide.splitlines()[0].split() == [
        "name", "backbone", "classes", "kind", "policy", "trained", "size", "date",
    ]  # fmt: skip
    for width in (80, 72):
        text = render(models_table(entries), width)
        lines = text.splitlines()
        assert all(len(line) <= width for line in lines)
        row = next(line for line in lines if line.startswith(long_name))
        assert row.endswith("2026-01-02")  # the date whole, never "2…"
        size = next(e for e in entries if e.name == long_name).size
        from zoo.cli.output import human_bytes

        assert human_bytes(size) in row  # the size whole
        assert "kind" not in lines[0] and "name" in lines[0]  # dropped first
        assert "broken" in text
    out = zoo_cli("models", columns=80)
    assert long_name in out and "2026-01-02" in out and "s…" not in out


def test_render_functions_at_both_widths():
    listing = get_listing()
    for width in (80, 250):
        for table in (
            backbones_table(listing.backbones[:50]),
            policies_table(listing.policies),
            plugins_table(listing.plugins),
        ):
            lines = render(table, width).splitlines()
            assert all(len(line) <= width for line in lines)
    plain = backbones_table(listing.backbones[:50] * 120, width=80)  # > PLAIN_ROWS: text
    assert isinstance(plain, str) and all(len(line) <= 80 for line in plain.splitlines())
