"""The cached listing behind `zoo list` / `zoo plugins`, and those two commands."""

from __future__ import annotations

import json
import textwrap
from io import StringIO
from pathlib import Path

import pytest
from rich.console import Console

from zoo import api
from zoo.cli.listing import cache_dir, get_listing, listing_key
from zoo.cli.main import main
from zoo.cli.render_listing import backbones_table, plugins_table, policies_table


def make_dist(site: Path, name: str, version: str, module_source: str) -> Path:
    """A real installed distribution: a dist-info folder with an entry point, and its module."""
    module = f"{name}_zooplug"
    (site / f"{module}.py").write_text(textwrap.dedent(module_source))
    dist_info = site / f"{name}-{version}.dist-info"
    dist_info.mkdir(exist_ok=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    )
    (dist_info / "entry_points.txt").write_text(f"[zoo.plugins]\n{name} = {module}\n")
    return dist_info


PLUGIN_SOURCE = """
    import torch
    import zoo

    @zoo.hookimpl
    def zoo_register_backbones(register):
        register(zoo.BackboneSpec(
            name="tinyline",
            create=lambda num_classes, pretrained, **kw: torch.nn.Linear(4, num_classes or 2),
            summary="a linear layer",
        ))
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    api.reset_catalog()


def test_second_listing_comes_from_the_cache_and_equals_the_first():
    first = get_listing()
    second = get_listing()
    assert not first.from_cache
    assert second.from_cache
    assert second.backbones == first.backbones
    assert second.policies == first.policies
    assert "timm:resnet18" in {b.qualified_name for b in second.backbones}
    assert list(cache_dir().glob("listing-*.json"))


def test_installing_upgrading_and_removing_a_plugin_changes_the_key(site):
    before = listing_key()
    dist_info = make_dist(site, "fakeplug", "1.0", PLUGIN_SOURCE)
    installed = listing_key()
    assert installed != before
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 1.1\n")
    upgraded = listing_key()
    assert upgraded not in (before, installed)
    for path in dist_info.iterdir():
        path.unlink()
    dist_info.rmdir()
    assert listing_key() == before


def test_cache_is_never_stale_after_a_plugin_is_installed(site):
    get_listing()  # warm cache without the plugin
    make_dist(site, "fakeplug", "1.0", PLUGIN_SOURCE)
    listing = get_listing()
    assert not listing.from_cache
    assert "fakeplug:tinyline" in {b.qualified_name for b in listing.backbones}
    assert get_listing().from_cache


def test_a_damaged_cache_file_is_ignored_and_rewritten():
    get_listing()
    (path,) = cache_dir().glob("listing-*.json")
    path.write_text("{ not json")
    listing = get_listing()
    assert not listing.from_cache and listing.backbones
    assert json.loads(path.read_text())["key"] == listing.key


def test_zoo_list_json_is_parseable_and_filtered(capsys):
    assert main(["list", "backbones", "resnet1*", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    names = [b["qualified_name"] for b in data["backbones"]]
    assert "timm:resnet18" in names
    assert all(n.split(":")[1].startswith("resnet1") for n in names)
    assert "policies" not in data


def test_zoo_list_pretrained_lists_tags(capsys):
    assert main(["list", "backbones", "resnet18", "--pretrained", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    names = {b["qualified_name"] for b in data["backbones"]}
    assert "timm:resnet18.a1_in1k" in names
    assert all(b["tag"] for b in data["backbones"])


def test_zoo_list_plain_text_has_no_colour_codes_when_piped(capsys):
    assert main(["list", "backbones", "convnext_atto*"]) == 0
    out = capsys.readouterr().out
    assert "timm:convnext_atto" in out
    assert "\x1b[" not in out


def test_broken_plugin_warns_on_list_and_fails_in_strict_mode(site, capsys):
    make_dist(site, "brokenplug", "0.3", "import does_not_exist_anywhere\n")
    assert main(["list", "policies"]) == 0
    err = capsys.readouterr().err
    assert "brokenplug" in err and "does_not_exist_anywhere" in err
    assert main(["--strict", "list", "policies"]) == 3
    capsys.readouterr()
    assert main(["plugins", "--json"]) == 0
    records = {r["name"]: r for r in json.loads(capsys.readouterr().out)["plugins"]}
    assert records["brokenplug"]["distribution"] == "brokenplug"
    assert records["brokenplug"]["version"] == "0.3"
    assert "ModuleNotFoundError" in records["brokenplug"]["errors"][0]
    assert records["timm"]["errors"] == []


def test_render_functions_on_a_string_console():
    listing = get_listing()
    console = Console(file=StringIO(), width=120)
    resnets = listing.find_backbones("resnet18*")
    console.print(backbones_table(resnets), soft_wrap=True)
    console.print(policies_table(listing.policies))
    console.print(plugins_table(listing.plugins))
    text = console.file.getvalue()
    assert f"Backbones ({len(resnets)})" in text
    assert "timm:resnet18d" in text
    assert "Plugins" in text and "built-in" in text


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(KeyError) as info:
        api.get_backbone("resnet18x")
    assert "did you mean" in str(info.value) and "timm:resnet18" in str(info.value)


@pytest.mark.slow
def test_a_mistyped_name_is_refused_from_the_cache_without_importing_plugins():
    import subprocess
    import sys

    get_listing()  # warm the cache for this ZOO_CACHE_DIR
    script = (
        "import sys; from zoo.cli.main import main; "
        "codes = [main(['show', 'resnt18']), main(['plan', 'timm:resnet18', '--policy', 'frez'])]; "
        "print(codes, 'timm' in sys.modules, 'torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["[1,", "1]", "False", "False"]
    assert "did you mean" in result.stderr and "timm:resnet18" in result.stderr
    assert "zoo:freeze-to" in result.stderr


@pytest.mark.slow
def test_python_dash_m_zoo_is_the_zoo_command():
    """``python -m zoo`` (the form torchrun runs: ``torchrun -m zoo adapt ...``)."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "zoo", "--version"], capture_output=True, text=True, check=True
    )
    from zoo import __version__

    assert __version__ in result.stdout


@pytest.mark.slow
def test_pretrained_listing_shows_each_tags_own_input_config(tmp_path):
    """Issue 13 item 8: a tag whose config differs from its architecture's (timm's
    convnext_base.fb_in22k_ft_in1k_384: 384 px, crop 1.0; the architecture: 224 px, 0.875)
    is listed with its own, and the cache stores only such differing configs."""
    import subprocess
    import sys

    from zoo.cli.listing import LISTING_FORMAT, Listing

    listing = get_listing(use_cache=False)
    cached = Listing.from_dict(json.loads(json.dumps(listing.to_dict())))  # the cache's round trip
    entry = next(b for b in cached.backbones if b.qualified_name == "timm:convnext_base")
    assert entry.input["input_size"] == [3, 224, 224] and entry.input["crop_pct"] == 0.875
    assert entry.input_for("fb_in22k_ft_in1k_384")["input_size"] == [3, 384, 384]
    assert entry.input_for("fb_in22k_ft_in1k_384")["crop_pct"] == 1.0
    assert entry.input_for("fb_in1k") is entry.input  # the same config: not stored again
    assert "fb_in1k" not in entry.tag_inputs
    assert cached.backbones == listing.backbones  # the cache keeps every tag's config
    # compact: most backbones have no differing tag, and configs are shared by index
    raw = listing.to_dict()
    assert raw["format"] == LISTING_FORMAT >= 3
    assert sum(1 for row in raw["backbones"] if row[7]) < len(raw["backbones"]) / 2
    assert len(raw["inputs"]) < len(raw["backbones"]) / 2
    with pytest.raises(ValueError, match="format"):  # an old cache is rebuilt, not misread
        Listing.from_dict({**raw, "format": 2})

    run = subprocess.run(
        [sys.executable, "-m", "zoo.cli.main", "list", "convnext_base.fb_in22k*", "--pretrained"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = {line.split()[0]: line.split()[1:] for line in run.stdout.splitlines()[3:]}
    assert rows["timm:convnext_base.fb_in22k_ft_in1k_384"] == ["384x384", "bicubic", "1"]
    assert rows["timm:convnext_base.fb_in22k_ft_in1k"] == ["224x224", "bicubic", "0.875"]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "zoo.cli.main",
            "list",
            "convnext_base.fb_in22k_ft_in1k_384",
            "--pretrained",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    (row,) = json.loads(run.stdout)["backbones"]
    assert row["input"]["input_size"] == [3, 384, 384] and row["tag"] == "fb_in22k_ft_in1k_384"
