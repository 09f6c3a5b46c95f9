"""``zoo inspect`` text shows the plugins' metadata and what ``auto`` chose and why."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_data import make_color_folder

import zoo


def _zoo(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "zoo.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_inspect_text_shows_plugin_metadata_and_the_auto_choice(tmp_path):
    make_color_folder(tmp_path / "train", per_class=4, seed=0)
    zoo.save(zoo.create("timm:test_resnet", num_classes=3), "start")
    zoo.adapt(
        "timm:test_resnet", tmp_path / "train", policy="auto", epochs=1, image_size=32,
        batch_size=8, weights="start", name="auto-probe",
    )  # fmt: skip
    shown = _zoo("inspect", "auto-probe")
    assert shown.returncode == 0, shown.stderr
    lines = [" ".join(line.split()) for line in shown.stdout.splitlines()]
    doc = json.loads(_zoo("inspect", "auto-probe", "--json").stdout)
    (note,) = doc["plan"]["notes"]
    assert doc["policy"] == "zoo:auto" and note.startswith("auto chose zoo:linear-probe: ")
    text = " ".join(lines)
    assert "auto chose zoo:linear-probe: 4 labelled samples per class is a small dataset" in (
        "auto " + text.split(" auto ", 1)[1]
    )
    assert "train the classifier only" in text
    # every zoo_extra_metadata entry (here the timm plugin's) is shown as key = value
    assert doc["extra"] and all(f"{k} = {v}" in text for k, v in doc["extra"].items())
    assert any(line.startswith(f"metadata timm.version = {doc['extra']['timm.version']}")
               for line in lines)  # fmt: skip
    plain = _zoo("inspect", "start")
    assert plain.returncode == 0 and " auto " not in " ".join(plain.stdout.split())
