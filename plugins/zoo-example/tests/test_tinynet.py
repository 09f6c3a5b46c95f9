"""The TinyNet backbones: they build, run and fit zoo's parameter table."""

import pytest
import torch
import zoo


@pytest.mark.parametrize("name", ["example:tinynet-s", "example:tinynet-m"])
def test_backbone_builds_and_runs(name):
    model = zoo.create(name, num_classes=3)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    assert model.zoo.build.backbone == name


def test_num_classes_zero_returns_pooled_features():
    model = zoo.create("example:tinynet-s", num_classes=0)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 32)


def test_there_are_no_pretrained_weights():
    with pytest.raises(zoo.WeightsUnavailableError, match="no pretrained weights"):
        zoo.create("example:tinynet-s", pretrained=True)


def test_param_groups_put_each_stage_at_its_own_depth():
    table = zoo.params("example:tinynet-m")
    assert table.groups == ["stem", "stage.1", "stage.2", "stage.3", "head"]
    assert table.grouped_by == "example"
    assert [row.name for row in table.head()] == ["head.weight", "head.bias"]
