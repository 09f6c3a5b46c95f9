"""``zoo models``, ``zoo inspect``, ``zoo rm``, ``zoo gc`` and their render functions."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from rich.console import Console
from test_persistence import tiny  # noqa: F401 - the fixture
from test_store import make_entry

import zoo
from zoo.cli.main import main
from zoo.cli.render_store import broken_lines, gc_view, inspect_view, models_table
from zoo.io import store


def render(renderable, width: int = 160) -> str:
    console = Console(file=StringIO(), width=width, color_system=None)
    console.print(renderable)
    return console.file.getvalue()


@pytest.fixture
def saved(tiny):  # noqa: F811 - the imported fixture
    """A real saved model (tiny plugin, head trained) and a broken entry beside it."""
    model = zoo.create("tinyplug:tiny", num_classes=2)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("5."))
    zoo.save(model, "cats", classes=["tabby", "siamese"])
    (store.models_dir() / "wreck").mkdir()
    return model


def test_models_lists_entries_and_broken_ones(saved, capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "cats" in out and "tinyplug:tiny" in out and "2: tabby" in out
    assert "broken" in out and "wreck: no model.safetensors" in out
    assert "2 models" in out and "1 broken" in out


def test_models_json(saved, capsys):
    assert main(["models", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    by_name = {m["name"]: m for m in data["models"]}
    assert by_name["cats"]["ok"] and by_name["cats"]["kind"] == "full"
    assert by_name["cats"]["classes"] == ["tabby", "siamese"]
    assert 0 < by_name["cats"]["trained_fraction"] < 1
    assert not by_name["wreck"]["ok"] and "no model.safetensors" in by_name["wreck"]["reason"]
    assert data["store"] == str(store.models_dir())


def test_inspect_shows_metadata_and_depths(saved, capsys):
    assert main(["inspect", "cats"]) == 0
    out = capsys.readouterr().out
    assert "full save of tinyplug:tiny" in out
    assert "tabby, siamese" in out and "verified" in out
    assert "head" in out and "all" in out  # the trained head's depth


def test_inspect_json_of_a_file_path(saved, capsys):
    path = store.model_file("cats")
    assert main(["inspect", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["backbone"] == "tinyplug:tiny" and data["verified"] is True
    assert data["trained"] == ["5.weight", "5.bias"]
    assert data["depths"][-1]["trained_numel"] == data["depths"][-1]["numel"]


def test_inspect_tampered_file_is_an_error(saved, capsys):
    path = store.model_file("cats")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert main(["inspect", "cats"]) == 1
    assert "tensor data changed" in capsys.readouterr().err


def test_rm_removes_and_reports(saved, capsys):
    assert main(["rm", "cats", "wreck", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["removed"]) == 2
    assert store.list_saved() == []
    assert main(["rm", "cats"]) == 1
    assert "unknown saved model 'cats'" in capsys.readouterr().err


def test_rm_refuses_invalid_names(capsys):
    assert main(["rm", "../etc"]) == 1
    assert "invalid model name" in capsys.readouterr().err


def test_gc_removes_leftovers(capsys):
    make_entry("cats")
    leftover = store.models_dir() / "cats" / ".model.safetensors.q1.zoo-tmp"
    leftover.write_bytes(b"123")
    assert main(["gc", "--dry-run"]) == 0
    assert "would remove" in capsys.readouterr().out and leftover.exists()
    assert main(["gc", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["removed"] == [str(leftover)] and data["freed_bytes"] == 3
    assert main(["gc"]) == 0
    assert "nothing to clean up" in capsys.readouterr().out


def test_render_functions_on_a_plain_console():
    make_entry("good", classes=["a", "b"])
    make_entry("delta", kind="delta", base={"kind": "store", "ref": "good", "sha256": "1" * 64})
    (store.models_dir() / "bad").mkdir()
    entries = store.list_saved()
    table = render(models_table(entries))
    assert "good" in table and "delta" in table and "2: a, b" in table and "40.0%" in table
    assert "broken" in table
    assert "bad: no model.safetensors" in render(broken_lines(entries)[0])
    result = store.gc()
    assert "nothing to clean up" in render(gc_view(result, dry_run=False))


@pytest.mark.usefixtures("tiny")
def test_inspect_view_renders_without_a_known_backbone():
    path = make_entry("orphan", classes=["a", "b"], backbone="gone:model")
    info = zoo.inspect(path)
    assert info.notes and "no per-depth summary" in info.notes[0]
    text = render(inspect_view(info))
    assert "orphan" in text or str(path) in text
    assert "a, b" in text and "note: no per-depth summary" in text
