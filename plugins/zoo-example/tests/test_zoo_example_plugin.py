"""The plugin as zoo sees it: discovered, checked, and used end to end."""

import runpy
from pathlib import Path

import torch
import zoo
from zoo.testing import check_plugin

import zoo_example.plugin


def test_installed_plugin_passes_zoo_checks(zoo_catalog):
    report = check_plugin("example", zoo_catalog)  # raises with the report if a check fails
    assert report.ok


def test_plugin_object_registered_for_one_test(zoo_register_plugin):
    catalog = zoo_register_plugin(zoo_example.plugin)  # works without installing, too
    assert catalog.list_backbones("tinynet-*") == ["example:tinynet-m", "example:tinynet-s"]
    assert catalog.list_policies("top-half") == ["example:top-half"]


def test_create_freeze_train_save_load(zoo_home):
    model = zoo.create("example:tinynet-s", num_classes=2)
    plan = zoo.freeze(model, "top-half")
    optimizer = torch.optim.SGD(plan.param_groups(model, lr=0.1), lr=0.1)
    model.train()
    logits = model(torch.randn(4, 3, 32, 32))
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 0, 1]))
    loss.backward()
    optimizer.step()

    zoo.save(model, "tiny-cats", classes=["cat", "dog"])
    loaded = zoo.load("tiny-cats")
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(loaded(x), model.eval()(x))
    assert loaded.zoo.classes == ["cat", "dog"]
    assert loaded.zoo.plan.policy == "example:top-half"
    assert loaded.zoo.metadata["example.widths"] == "8,16,32"


def test_the_usage_example_runs(zoo_home, capsys):
    script = Path(__file__).parents[1] / "examples" / "train_tiny.py"
    runpy.run_path(str(script), run_name="__main__")
    assert "classes ['cat', 'dog']; policy example:top-half" in capsys.readouterr().out
    assert (zoo_home / "models" / "tiny-demo" / "model.safetensors").is_file()
