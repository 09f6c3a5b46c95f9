"""Words the CLI prints: counts agree with their nouns, help names the command the user typed."""

from __future__ import annotations

from io import StringIO

import pytest
from rich.console import Console

from zoo.cli.main import main
from zoo.cli.output import plural
from zoo.cli.render_listing import plugins_table
from zoo.core.plugins import PluginRecord


def test_plural_agrees_with_the_count():
    assert plural(1, "policy", "policies") == "1 policy"
    assert plural(2, "policy", "policies") == "2 policies"
    assert plural(0, "model") == "0 models"
    assert plural(1, "class") == "1 class" and plural(3, "class") == "3 classes"


def test_zoo_plugins_counts_one_policy_and_many_backbones():
    records = [
        PluginRecord("one", "one.mod", backbones=1, policies=1),
        PluginRecord("many", "many.mod", backbones=2, policies=13),
    ]
    out = StringIO()
    Console(file=out, width=160, color_system=None).print(plugins_table(records))
    text = out.getvalue()
    assert "1 backbone, 1 policy " in text and "2 backbones, 13 policies" in text
    assert "1 policies" not in text and "1 backbones" not in text


def test_adapt_help_names_the_zoo_command_not_the_module(capsys):
    with pytest.raises(SystemExit):
        main(["adapt", "--help"])
    text = capsys.readouterr().out
    assert "zoo.cli.main" not in text and "torchrun --nproc_per_node N -m zoo adapt" in text
