"""The top-half policy, on hand-built tables (a policy never needs a model) and through zoo."""

import pytest
import zoo

from zoo_example.policies import top_half


def table(depths):
    rows = [
        zoo.ParamInfo(
            name=f"block{d}.weight",
            module=f"block{d}",
            module_type="Conv2d",
            role="weight",
            shape=(4, 4),
            numel=16,
            dtype="float32",
            group=f"stage.{d}",
            depth=d,
        )
        for d in range(depths)
    ]
    return zoo.ParamTable(rows=tuple(rows))


def test_trains_the_upper_half_of_the_depths():
    assert top_half(table(4)) == ["block2.weight", "block3.weight"]
    assert top_half(table(5)) == ["block3.weight", "block4.weight"]


def test_min_depths_trains_more():
    assert top_half(table(4), min_depths=3) == ["block1.weight", "block2.weight", "block3.weight"]
    assert len(top_half(table(4), min_depths=10)) == 4


def test_rejects_min_depths_below_one():
    with pytest.raises(zoo.PolicyArgumentError, match="min_depths"):
        top_half(table(4), min_depths=0)


def test_plans_a_backbone_with_arguments_in_the_cli_form():
    plan = zoo.plan("example:tinynet-s", "example:top-half:min_depths=3")
    table = zoo.params("example:tinynet-s")
    assert plan.policy == "example:top-half"
    assert plan.args == {"min_depths": 3}
    assert plan.trainable == [row.name for row in table if row.depth >= 1]
