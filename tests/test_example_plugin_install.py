"""Acceptance: a package made from docs/writing-plugins.md alone installs and works.

The files shown whole in the tutorial (``**File `path`:**`` blocks) are written to a fresh
folder, renamed the way the tutorial says (distribution ``zoo-fresh``, package ``zoo_fresh``,
plugin ``fresh``, so it cannot collide with the installed template), installed with a real
``pip install --target`` (no network, no dependencies) and used from new processes whose
``PYTHONPATH`` holds the target: ``zoo list`` shows its backbones and policy, and the
tutorial's example script builds, plans, trains, saves and loads a model.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "writing-plugins.md"
FILE_BLOCK = re.compile(r"^\*\*File `([^`]+)`:\*\*\n\n```\w+\n(.*?)^```", re.S | re.M)


def tutorial_files() -> dict[str, str]:
    return dict(FILE_BLOCK.findall(TUTORIAL.read_text(encoding="utf-8")))


def renamed(text: str) -> str:
    """The tutorial's renaming: distribution, package and plugin name."""
    text = text.replace("zoo_example", "zoo_fresh").replace("zoo-example", "zoo-fresh")
    text = re.sub(r"^example = ", "fresh = ", text, flags=re.M)  # the entry point
    return text.replace('"example', '"fresh')  # PLUGIN_NAME and "example:..." names


def start(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd
    )


def finish(process: subprocess.Popen[str]) -> str:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, f"{process.args} failed:\n{out}\n{err}"
    return out


def run(args: list[str], env: dict[str, str], cwd: Path) -> str:
    return finish(start(args, env, cwd))


@pytest.mark.slow
def test_package_from_the_tutorial_installs_lists_and_works(tmp_path):
    package = tmp_path / "zoo-fresh"
    files = tutorial_files()
    assert {"pyproject.toml", "src/zoo_example/plugin.py", "examples/train_tiny.py"} <= set(files)
    for path, text in files.items():
        target = package / renamed(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(renamed(text), encoding="utf-8")
        assert not re.search(r"zoo[_-]example|\"example|^example =", target.read_text(), re.M)

    site = tmp_path / "site"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "--target",
            str(site),
            str(package),
        ],
        dict(os.environ),
        tmp_path,
    )
    assert any(site.glob("zoo_fresh-0.1.0.dist-info/entry_points.txt"))

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
        "ZOO_HOME": str(tmp_path / "home"),
        "ZOO_CACHE_DIR": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
    }
    zoo_list = [sys.executable, "-m", "zoo.cli.main", "list", "--plugin", "fresh", "--json"]
    use_it = [
        sys.executable,
        "-c",
        (
            "import runpy, zoo, zoo_fresh\n"
            "record = zoo.get_catalog().host.records['fresh']\n"
            "print('FROM', zoo_fresh.__file__)\n"
            "print('PLUGIN', record.distribution, record.version, record.ok)\n"
            "runpy.run_path('examples/train_tiny.py', run_name='__main__')\n"
        ),
    ]
    listing, usage = start(zoo_list, env, tmp_path), start(use_it, env, package)  # in parallel

    listed = json.loads(finish(listing))
    backbones = {f"{b['plugin']}:{b['name']}" for b in listed["backbones"]}
    policies = {f"{p['plugin']}:{p['name']}" for p in listed["policies"]}
    assert backbones == {"fresh:tinynet-s", "fresh:tinynet-m"}
    assert policies == {"fresh:top-half"}

    out = finish(usage)
    assert f"FROM {site}" in out
    assert "PLUGIN zoo-fresh 0.1.0 True" in out
    assert "plan fresh:top-half" in out
    assert "classes ['cat', 'dog']; policy fresh:top-half" in out
    assert (tmp_path / "home" / "models" / "tiny-demo" / "model.safetensors").is_file()
