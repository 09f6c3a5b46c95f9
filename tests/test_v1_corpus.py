"""Files written by zoo's format-1 writer keep loading, as the same models (``tests/data/v1``).

The corpus was written once by ``tests/data/v1/make.py`` with the format-1 writer and is never
rewritten: each later reader must give the same classes, plan, trained names, adapters,
training record and outputs that ``expected.json`` recorded when the files were written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import zoo

CORPUS = Path(__file__).parent / "data" / "v1"
EXPECTED = json.loads((CORPUS / "expected.json").read_text(encoding="utf-8"))
BACKBONE = "timm:test_efficientnet"


@pytest.fixture
def v1_store(_isolated_zoo: Path) -> Path:
    """The corpus's store entry (the base of the deltas) in this test's ZOO_HOME."""
    shutil.copytree(CORPUS / "store" / "models", _isolated_zoo / "models", dirs_exist_ok=True)
    return _isolated_zoo


def probe(model: torch.nn.Module) -> list[float]:
    torch.manual_seed(1234)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        return model.eval()(x).flatten().tolist()


@pytest.mark.parametrize("name", ["full", "delta", "lora", "planless", "compare"])
def test_a_v1_file_loads_as_the_model_it_was(v1_store, name):
    want = EXPECTED[name]
    path = CORPUS / f"{name}.safetensors"
    model = zoo.load(path)
    assert probe(model) == pytest.approx(want["output"], abs=1e-5)
    assert model.zoo.classes == want["classes"]
    plan = model.zoo.plan
    assert (plan.policy if plan is not None else "") == want["policy"]
    assert [a.target for a in zoo.adapters(model)] == want["adapters"]

    info = zoo.inspect(path)
    assert info.metadata.kind == want["kind"]
    assert sorted(info.metadata.trained) == want["trained"]
    assert info.metadata.training == want["training"]
    assert (info.metadata.compare or {}).get("winner") == want["compare_winner"]
    assert info.metadata.num_params == want["num_params"]
    assert info.metadata.num_trained_params == want["num_trained_params"]


def test_a_v1_lora_delta_merges_into_the_same_outputs(v1_store):
    merged = zoo.load(CORPUS / "lora.safetensors", merge=True)
    assert zoo.adapters(merged) == []
    assert probe(merged) == pytest.approx(EXPECTED["lora"]["output"], abs=1e-5)


def test_plain_safetensors_weights_still_start_a_model():
    model = zoo.create(BACKBONE, num_classes=3, weights=CORPUS / "plain.safetensors")
    assert probe(model) == pytest.approx(EXPECTED["plain"]["output"], abs=1e-5)


def test_the_corpus_files_are_format_1():
    for name in ("full", "delta", "lora", "planless", "compare"):
        info = zoo.inspect(CORPUS / f"{name}.safetensors")
        assert info.metadata.format_version == 1, name
