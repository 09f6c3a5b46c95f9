"""A ParamTable prints as ``zoo show`` prints it: plain text, rich, and HTML in a notebook."""

from __future__ import annotations

import subprocess
import sys
from io import StringIO

import pytest
from rich.console import Console

import zoo
from zoo.cli.main import main


def test_str_is_the_table_zoo_show_prints(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    assert main(["show", "timm:resnet18"]) == 0
    shown = [line.rstrip() for line in capsys.readouterr().out.strip("\n").splitlines()]
    printed = [line.rstrip() for line in str(zoo.params("timm:resnet18")).splitlines()]
    assert printed == shown
    assert any(line.lstrip().startswith("3  stage.3") for line in printed)
    assert printed[-1].split()[:2] == ["total", "62"]


def test_rich_and_html_show_the_same_rows(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    table = zoo.params("timm:resnet18")
    console = Console(file=StringIO(), width=100, color_system=None)
    console.print(table)  # rich renders it through __rich__
    text = console.file.getvalue()
    assert "11.69M parameters in 62 tensors" in text
    assert [line.rstrip() for line in text.strip("\n").splitlines()] == [
        line.rstrip() for line in str(table).splitlines()
    ]
    html = table._repr_html_()
    assert html.startswith("<pre>") and "stage.4" in html and "8.39M" in html


def test_a_model_in_training_shows_what_trains():
    model = zoo.create("timm:resnet18", num_classes=2)
    zoo.freeze(model, "linear-probe")
    text = str(zoo.params(model))
    assert "frozen" in text and "none" in text  # the frozen depths say so


@pytest.mark.slow
def test_import_zoo_and_a_table_load_no_rich_until_it_is_shown():
    code = (
        "import sys, zoo; t = zoo.params('timm:resnet18'); assert 'rich' not in sys.modules; "
        "str(t); assert 'rich' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
