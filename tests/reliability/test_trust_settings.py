"""Settings typed by a user are checked, never silently replaced (issue 19, item 6).

``ZOO_FEATURE_CACHE_MAX_BYTES`` takes a whole number of bytes with an optional K/M/G/T suffix;
anything else is a ``ZooError`` naming the variable, before any work — it used to become the
4 GiB default (``1e3``, ``2G``, ``nan``) or be taken as given (``-5``). ``zoo compare
--policies`` reads ``lora:rank=4,alpha=8`` as one spec (the form its own hint suggests), and
takes ``;`` and repeated flags for specs whose arguments are lists.
"""

from __future__ import annotations

import json

import pytest
from test_data import make_color_folder

import zoo
from zoo.adaptation.cache import DEFAULT_MAX_BYTES, MAX_BYTES_ENV, max_cache_bytes
from zoo.adaptation.config import split_policies
from zoo.cli.main import main

NOWHERE = {"backbone_or_model": "nowhere:no-such-backbone", "train": "/no/such/folder"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", DEFAULT_MAX_BYTES),
        ("1000", 1000),
        (" 1000 ", 1000),
        ("0", 0),
        ("2G", 2 << 30),
        ("512m", 512 << 20),
        ("64K", 64 << 10),
        ("1T", 1 << 40),
    ],
)
def test_the_cache_budget_accepts_bytes_with_an_optional_suffix(monkeypatch, value, expected):
    monkeypatch.setenv(MAX_BYTES_ENV, value)
    assert max_cache_bytes() == expected


BAD_SIZES = [
    *("1e3", "nan", "-5", "inf", "2 GB", "2GB", "1.5G", "0x10", "G", "5X"),
    pytest.param("9" * 5000, id="5000-digits"),
]


@pytest.mark.parametrize("value", BAD_SIZES)
def test_a_bad_cache_budget_is_refused_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv(MAX_BYTES_ENV, value)
    with pytest.raises(zoo.ZooError) as info:
        max_cache_bytes()
    message = str(info.value)
    assert MAX_BYTES_ENV in message and "K, M, G or T" in message and len(message) < 400


@pytest.mark.parametrize("value", ["1e3", "-5"])
def test_a_bad_cache_budget_stops_adapt_and_compare_before_any_work(monkeypatch, value):
    monkeypatch.setenv(MAX_BYTES_ENV, value)
    for call in (zoo.adapt, zoo.compare):
        with pytest.raises(zoo.ZooError, match=MAX_BYTES_ENV):
            call(**NOWHERE, val_split=0.2)  # neither the backbone nor the folder is looked at
    with pytest.raises(zoo.AdaptArgumentError):  # feature_cache=False never reads it
        zoo.adapt(**NOWHERE, feature_cache=False, epochs=0)


@pytest.mark.parametrize(
    ("text", "specs"),
    [
        ("lora:rank=4,alpha=8", ["lora:rank=4,alpha=8"]),
        ("linear-probe,lora:rank=4,alpha=8,full", ["linear-probe", "lora:rank=4,alpha=8", "full"]),
        ("linear-probe,train-last:n=1,full", ["linear-probe", "train-last:n=1", "full"]),
        ("a:x=[1,2],b , c", ["a:x=[1,2]", "b", "c"]),
        ("layers:names=a,b;full", ["layers:names=a,b", "full"]),  # ';': lists keep commas
        (" linear-probe ; lora:rank=4,alpha=8 ;", ["linear-probe", "lora:rank=4,alpha=8"]),
    ],
)
def test_policy_lists_keep_each_specs_arguments(text, specs):
    assert split_policies(text) == specs


def test_zoo_compare_takes_the_form_its_hint_suggests(tmp_path, capsys):
    data = make_color_folder(tmp_path / "data", classes=("red", "blue"), per_class=4, size=16)
    base = ["compare", "timm:test_resnet", "--data", str(data), "--val-split", "0.25"]
    fast = ["--scratch", "--image-size", "32", "--batch-size", "8", "--epochs", "1", "--json"]
    # a spec that cannot be read: the hint shows NAME:key=value,key=value ...
    assert main([*base, *fast, "--name", "bad", "--policies", "full;alpha=8"]) == 1
    err = capsys.readouterr().err
    assert "NAME:key=value,key=value" in err
    # ... and that form works, in one flag or repeated flags
    argv = [*base, *fast, "--name", "pl", "--policies", "lora:rank=4,alpha=8"]
    assert main([*argv, "--policies", "linear-probe"]) == 0
    doc = json.loads(capsys.readouterr().out)
    policies = sorted(c["policy"] for c in doc["candidates"])
    assert policies[0] == "zoo:linear-probe"
    assert policies[1].startswith("zoo:lora:rank=4,alpha=8.0,")
