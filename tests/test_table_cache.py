"""`zoo show` serves parameter tables of names from a disk cache keyed like the listing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from zoo.api import params
from zoo.cli.listing import cache_dir, table_for_name
from zoo.cli.main import main
from zoo.core import catalog as process_catalog
from zoo.tables.table import ParamTable


def _without_process_catalog(monkeypatch):
    monkeypatch.setattr(process_catalog, "_catalog", None)


def test_cached_table_equals_a_fresh_build(monkeypatch):
    _without_process_catalog(monkeypatch)
    first = table_for_name("timm:resnet18", num_classes=3)
    files = list((cache_dir() / "tables").glob("*.json"))
    assert len(files) == 1
    again = table_for_name("timm:resnet18", num_classes=3)
    table_for_name("timm:resnet18")  # other build arguments: another entry
    assert len(list((cache_dir() / "tables").glob("*.json"))) == 2
    assert again == first == params("timm:resnet18", num_classes=3)


def test_a_damaged_cached_table_is_rebuilt(monkeypatch):
    _without_process_catalog(monkeypatch)
    table_for_name("timm:resnet18")
    (path,) = (cache_dir() / "tables").glob("*.json")
    path.write_text("{")
    assert table_for_name("timm:resnet18") == params("timm:resnet18")
    assert ParamTable.from_json(path.read_text()).total_numel > 0


@pytest.mark.slow
def test_warm_zoo_show_imports_neither_torch_nor_timm(monkeypatch, capsys):
    _without_process_catalog(monkeypatch)
    assert main(["show", "timm:resnet18", "--json"]) == 0  # builds and caches
    expected = json.loads(capsys.readouterr().out)
    script = (
        "import sys, json; from zoo.cli.main import main; "
        "main(['show', 'timm:resnet18', '--json']); "
        "print(json.dumps(['torch' in sys.modules, 'timm' in sys.modules]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    *document, flags = result.stdout.strip().splitlines()
    assert json.loads(flags) == [False, False]
    assert json.loads("\n".join(document)) == expected


def test_a_catalog_set_up_by_the_process_is_never_served_from_the_cache(monkeypatch):
    _without_process_catalog(monkeypatch)
    table_for_name("timm:resnet18")
    from zoo.core.catalog import build_catalog

    # e.g. a notebook's own plugins
    monkeypatch.setattr(process_catalog, "_catalog", build_catalog())
    for path in (cache_dir() / "tables").glob("*.json"):
        path.write_text(ParamTable(rows=()).to_json())  # a cache that would be wrong
    assert len(table_for_name("timm:resnet18")) == len(params("timm:resnet18"))
