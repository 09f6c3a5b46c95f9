"""Plans as data: building, checking, optimizer groups, summaries, JSON round trips."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import zoo
from zoo.api import plan
from zoo.core.specs import PolicySpec
from zoo.errors import PlanError
from zoo.plans.binding import run_policy
from zoo.plans.plan import (
    NormMode,
    ParamPlan,
    Plan,
    default_weight_decay,
)
from zoo.tables.table import NormInfo, ParamTable


class Small(nn.Module):
    """conv (weight, bias) -> bn -> block (conv, LayerNorm without affine) -> pos token -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 1, bias=False), nn.GroupNorm(1, 4, affine=False))
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 1, 1))
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(self.bn(self.conv(x))) + self.pos_embed
        return self.fc(x.mean((2, 3)))

    def get_classifier(self) -> nn.Module:
        return self.fc


@pytest.fixture(scope="module")
def small_table() -> ParamTable:
    return zoo.params(Small())


@pytest.fixture
def model() -> Small:
    torch.manual_seed(0)
    return Small()


# ---------------------------------------------------------------- building


def test_from_table_defaults(small_table):
    result = Plan.from_table(small_table, ["fc.weight", "fc.bias", "bn.weight"])
    assert result.trainable == ["bn.weight", "fc.weight", "fc.bias"]  # table order
    assert result.frozen == [n for n in small_table.names if n not in result.trainable]
    assert list(result.params) == small_table.names
    decay = {n: p.weight_decay for n, p in result.params.items()}
    assert decay == {
        "conv.weight": True,
        "conv.bias": False,
        "bn.weight": False,
        "bn.bias": False,
        "block.0.weight": True,
        "pos_embed": False,
        "fc.weight": True,
        "fc.bias": False,
    }
    assert result.norms["bn"] is NormMode.FROZEN_STATS  # weight trains, bias frozen
    assert result.norms["block.1"] is NormMode.FROZEN  # no affine: follows its depth
    assert result.table is small_table


def test_norm_modes_derive_from_parameters(small_table):
    everything = Plan.from_table(small_table, small_table.names)
    assert set(everything.norms.values()) == {NormMode.TRAIN}
    nothing = Plan.from_table(small_table, [])
    assert set(nothing.norms.values()) == {NormMode.FROZEN}
    explicit = Plan.from_table(
        small_table, ["bn.weight", "bn.bias"], norm_modes={"bn": "frozen-stats"}
    )
    assert explicit.norms["bn"] is NormMode.FROZEN_STATS


def test_from_table_rejects_unknown_names_and_contradictions(small_table):
    with pytest.raises(PlanError, match=r"'fc\.wieght'.*did you mean 'fc\.weight'"):
        Plan.from_table(small_table, ["fc.wieght"])
    with pytest.raises(PlanError, match="unknown normalization layer"):
        Plan.from_table(small_table, [], norm_modes={"bn2": "frozen"})
    with pytest.raises(PlanError, match=r"planned 'frozen' but its parameter 'bn\.weight' trains"):
        Plan.from_table(small_table, ["bn.weight"], norm_modes={"bn": NormMode.FROZEN})
    with pytest.raises(PlanError, match="valid modes: 'train', 'frozen-stats', 'frozen'"):
        Plan.from_table(small_table, [], norm_modes={"bn": "eval"})
    with pytest.raises(PlanError, match="iterable of parameter names"):
        Plan.from_table(small_table, "fc.weight")
    with pytest.raises(PlanError, match=r"lr scale of 'fc\.weight' must be a finite number"):
        Plan.from_table(small_table, ["fc.weight"], lr_scales={"fc.weight": math.nan})


@pytest.mark.parametrize("scale", [-1.0, math.inf, "2", True])
def test_param_plan_validates_lr_scale(scale):
    with pytest.raises(PlanError, match="lr scale"):
        ParamPlan("w", True, scale)


def test_plan_validates_its_fields():
    with pytest.raises(PlanError, match="planned twice"):
        Plan(params=[ParamPlan("a", True), ParamPlan("a", False)])
    with pytest.raises(PlanError, match="holds the plan of 'b'"):
        Plan(params={"a": ParamPlan("b", True)})
    with pytest.raises(PlanError, match="expected zoo ParamPlan"):
        Plan(params=["a"])
    with pytest.raises(PlanError, match=r"Plan\.params must map"):
        Plan(params=3)  # type: ignore[arg-type]


def test_complete_fills_in_a_partial_plan(small_table):
    partial = Plan(params=[ParamPlan("fc.weight", True, 2.0)], norms={"bn": "frozen-stats"})
    full = partial.complete(small_table)
    assert list(full.params) == small_table.names
    assert full.trainable == ["fc.weight"] and full["fc.weight"].lr_scale == 2.0
    assert not full["conv.bias"].weight_decay  # defaults for what the plan left out
    assert full.norms == {"bn": NormMode.FROZEN_STATS, "block.1": NormMode.FROZEN}
    with pytest.raises(PlanError, match="unknown normalization layer"):
        Plan(params={}, norms={"nope": "frozen"}).complete(small_table)


def test_default_weight_decay_rules(small_table):
    rows = {r.name: r for r in small_table.rows}
    assert default_weight_decay(rows["conv.weight"])
    assert not default_weight_decay(rows["pos_embed"])  # embedding role
    assert not default_weight_decay(rows["fc.bias"])  # 1-D
    assert not default_weight_decay(replace(rows["conv.weight"], role="norm"))


# ---------------------------------------------------------------- reading


def test_reading_a_plan(small_table):
    result = plan(small_table, "layer-decay:decay=0.5")
    assert "fc.weight" in result and "nope" not in result
    depth = small_table["conv.weight"].depth
    assert result["conv.weight"].lr_scale == pytest.approx(0.5 ** (small_table.max_depth - depth))
    with pytest.raises(zoo.UnknownNameError, match="did you mean"):
        result["fc.wieght"]
    assert result.norm_mode("bn") is NormMode.TRAIN
    assert result.norm_mode("not-a-norm") is NormMode.TRAIN
    assert result.numel() == small_table.total_numel
    assert result.numel(trainable=True) == small_table.total_numel
    assert result.spec_text == "zoo:layer-decay:decay=0.5"


def test_depth_summary_and_text_summary(small_table):
    result = plan(small_table, "linear-probe")
    depths = small_table.depth_summary(result)
    assert [d.depth for d in depths] == [d.depth for d in small_table.depth_summary()]
    head = depths[-1]
    assert head.group == "head" and head.trainable_tensors == head.tensors == 2
    assert head.lr_scales == (10.0, 10.0)  # linear-probe's declared rate
    assert all(d.trainable_numel == 0 and d.lr_scales is None for d in depths[:-1])
    assert sum(sum(d.norm_modes.values()) for d in depths) == len(small_table.norms)
    text = result.summary()
    assert text.splitlines()[0] == "plan zoo:linear-probe"
    assert "trains 10 of" in text and "tensors" in text
    assert "norms: 2 frozen" in text
    bare = Plan(params=[ParamPlan("a", True), ParamPlan("b", False)])
    assert "trains 1 of 2 tensors" in bare.summary()
    with pytest.raises(PlanError, match="carries no parameter table"):
        bare.numel()


def test_one_depth_summary_for_a_table_and_for_a_plan_on_it(small_table):
    result = plan(small_table, "linear-probe")
    marked = small_table.with_trainable(result.trainable)  # the table's own trainable column
    fields = ("depth", "group", "tensors", "numel", "trainable_tensors", "trainable_numel", "norms")
    for own, planned in zip(marked.depth_summary(), small_table.depth_summary(result), strict=True):
        assert [getattr(own, f) for f in fields] == [getattr(planned, f) for f in fields]
        assert own.lr_scales is None and own.norm_modes == {}  # only a plan says these
    data = small_table.depth_summary(result)[-1].to_dict()
    assert data["lr_scale"] == [10.0, 10.0] and data["added_numel"] == 0 and data["norms"] == 0


def test_summary_shows_notes_and_epochs(small_table):
    result = plan(small_table, "gradual", epoch=1)
    assert "at epoch 1" in result.summary().splitlines()[0]
    assert "note: epoch 1:" in result.summary()


# ---------------------------------------------------------------- optimizer groups


def test_param_groups_only_trainable_with_scales_and_decay(model, small_table):
    result = Plan.from_table(
        small_table,
        ["conv.weight", "conv.bias", "bn.weight", "fc.weight", "fc.bias"],
        lr_scales={"conv.weight": 0.1, "conv.bias": 0.1},
    )
    groups = result.param_groups(model, lr=1.0, weight_decay=0.05)
    summary = [(g["lr"], g["weight_decay"], g["param_names"]) for g in groups]
    assert summary == [
        (0.1, 0.05, ["conv.weight"]),
        (0.1, 0.0, ["conv.bias"]),
        (1.0, 0.0, ["bn.weight", "fc.bias"]),
        (1.0, 0.05, ["fc.weight"]),
    ]
    named = dict(model.named_parameters())
    for group in groups:
        assert [id(p) for p in group["params"]] == [id(named[n]) for n in group["param_names"]]
        assert group["lr_scale"] in (0.1, 1.0)
    opt = torch.optim.AdamW(groups, lr=1.0)
    assert len(opt.param_groups) == 4


def test_param_groups_options(model, small_table):
    result = Plan.from_table(small_table, ["bn.weight", "fc.weight", "fc.bias"])
    all_decay = result.param_groups(model, lr=0.1, weight_decay=0.5, decay_norm_and_bias=True)
    assert len(all_decay) == 1 and all_decay[0]["weight_decay"] == 0.5
    no_decay = result.param_groups(model, lr=0.1)  # weight_decay=0: one group
    assert len(no_decay) == 1 and no_decay[0]["weight_decay"] == 0.0
    subset = result.param_groups(model, lr=0.1, names=["fc.bias"], with_names=False)
    assert len(subset) == 1 and "param_names" not in subset[0]
    assert subset[0]["params"] == [model.fc.bias]
    assert Plan.from_table(small_table, []).param_groups(model, lr=1.0) == []


def test_param_groups_reject_a_model_that_does_not_fit(small_table):
    result = Plan.from_table(small_table, ["fc.weight"])
    with pytest.raises(PlanError, match="not in the model"):
        result.param_groups(nn.Linear(2, 2), lr=0.1)


# ---------------------------------------------------------------- serialization


@pytest.mark.parametrize(
    "policy",
    [
        "full",
        "linear-probe",
        "bitfit",
        "layer-decay:decay=0.3",
        "gradual:every=3",
        "auto:samples_per_class=20",
    ],
)
def test_json_round_trip(small_table, policy):
    epoch = {"epoch": 4} if policy.startswith("gradual") else {}
    original = plan(small_table, policy, **epoch)
    text = original.to_json()
    again = Plan.from_json(text)
    assert again == original
    assert again.trainable == original.trainable and again.notes == original.notes
    assert again.table is None
    assert json.loads(again.to_json()) == json.loads(text)


def test_to_dict_is_compact(small_table):
    data = plan(small_table, "linear-probe").to_dict()
    assert data["format"] == 1
    assert data["policy"] == "zoo:linear-probe" and data["args"] == {}
    assert data["trainable"] == ["fc.weight", "fc.bias"]
    assert data["lr_scale"] == {"fc.weight": 10.0, "fc.bias": 10.0}  # the declared rate
    assert plan(small_table, "full").to_dict()["lr_scale"] == {}  # only non-default scales
    assert data["norms"] == {"frozen": ["bn", "block.1"]}
    assert set(data) == {
        "format",
        "policy",
        "args",
        "epoch",
        "backbone",
        "notes",
        "trainable",
        "frozen",
        "lr_scale",
        "no_weight_decay",
        "norms",
    }


def test_a_large_plan_stays_small_enough_for_file_metadata():
    table = zoo.params("timm:vit_base_patch16_224")
    text = plan(table, "layer-decay").to_json(separators=(",", ":"))
    assert len(text) < 24_000  # 152 tensors, 25 norms, per-tensor lr scales
    assert Plan.from_json(text) == plan(table, "layer-decay")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"format": 99}, "newer than this zoo understands"),
        ({"trainable": "abc", "lr_scale": 3}, "malformed plan data"),
        ({"trainable": ["a"], "lr_scale": {"a": "x"}}, "malformed plan data"),
        ({"norms": {"sleepy": ["bn"]}}, "unknown norm mode 'sleepy'"),
        ({"trainable": ["a"], "lr_scale": {"a": -1}}, "lr scale of 'a'"),
        ({"trainable": ["a\x1b[2J"]}, "control character"),
        ({"trainable": [""]}, "a parameter name must be a non-empty text"),
        ({"policy": "zoo:full\n"}, "policy holds a control character"),
        ({"epoch": True}, "epoch must be an int >= 0"),
        ({"norms": {"frozen": ["bn"], "train": ["bn"]}}, "'bn' has two modes"),
    ],
)
def test_from_dict_rejects_malformed_data(data, message):
    with pytest.raises(PlanError, match=message):
        Plan.from_dict(data)


def test_from_json_rejects_non_json():
    with pytest.raises(PlanError, match="malformed plan JSON"):
        Plan.from_json("{nope")
    with pytest.raises(PlanError, match="expected an object"):
        Plan.from_json("[1, 2]")


@settings(max_examples=25, deadline=None)
@given(
    flags=st.lists(
        st.tuples(st.booleans(), st.sampled_from([1.0, 0.5, 0.125, 2.0]), st.booleans()),
        min_size=8,
        max_size=8,
    ),
    modes=st.lists(st.sampled_from(list(NormMode)), min_size=2, max_size=2),
    epoch=st.none() | st.integers(0, 1000),
    notes=st.lists(st.text(max_size=20), max_size=3),
)
def test_round_trip_property(small_table, flags, modes, epoch, notes):
    names = small_table.names
    original = Plan(
        params=[ParamPlan(n, t, s, d) for n, (t, s, d) in zip(names, flags, strict=True)],
        norms=dict(zip([n.path for n in small_table.norms], modes, strict=True)),
        policy="x:y",
        args={"a": [1, "b"], "c": None},
        epoch=epoch,
        notes=tuple(notes),
    )
    assert Plan.from_json(original.to_json()) == original


# ---------------------------------------------------------------- running policies


def _spec(fn, name: str = "custom") -> PolicySpec:
    return PolicySpec(name, fn, plugin="thirdparty")


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        (None, "returned NoneType None; a policy returns a zoo.Plan or an iterable"),
        (42, "returned int 42"),
        ("fc.weight", "returned str 'fc.weight'"),
        ([1, 2], "must hold parameter names (str), got 1"),
        (
            ["fc.weight", "nope.weight"],
            "1 unknown parameter name(s) not in the table: 'nope.weight'",
        ),
        (Plan(params=[ParamPlan("ghost", True)]), "unknown parameter name(s)"),
    ],
)
def test_garbage_from_a_policy_is_a_plan_error_naming_it(small_table, returned, message):
    with pytest.raises(PlanError) as info:
        run_policy(_spec(lambda table: returned), small_table, {})
    text = str(info.value)
    assert text.startswith("policy 'thirdparty:custom' (plugin thirdparty)")
    assert message in text


def test_a_policy_that_raises_is_a_plan_error(small_table):
    def boom(table):
        raise RuntimeError("kaput")

    with pytest.raises(
        PlanError,
        match=r"policy 'thirdparty:custom' \(plugin thirdparty\) "
        r"failed: RuntimeError: kaput",
    ) as info:
        run_policy(_spec(boom), small_table, {})
    assert isinstance(info.value.__cause__, RuntimeError)


def test_a_policy_returning_names_or_a_partial_plan(small_table):
    names = run_policy(_spec(lambda table: iter(["fc.bias"])), small_table, {})
    assert names.trainable == ["fc.bias"] and names.policy == "thirdparty:custom"
    assert list(names.params) == small_table.names
    partial = run_policy(
        _spec(lambda table: Plan(params=[ParamPlan("fc.weight", True, 3.0)], notes=["hi"])),
        small_table,
        {},
    )
    assert partial.trainable == ["fc.weight"] and partial["fc.weight"].lr_scale == 3.0
    assert partial.notes == ("hi",) and partial.table is small_table


def test_plan_accepts_a_model_and_does_not_touch_it(model):
    before = {n: (p.requires_grad, p.detach().clone()) for n, p in model.named_parameters()}
    result = plan(model, "linear-probe")
    assert result.trainable == ["fc.weight", "fc.bias"]
    for name, param in model.named_parameters():
        assert param.requires_grad == before[name][0]
        assert torch.equal(param, before[name][1])
    assert not hasattr(model, "zoo")  # no record: nothing applied
    assert all(m.training for m in model.modules())


def test_plan_from_a_backbone_name_builds_on_meta():
    result = plan("timm:resnet18", "freeze-to:depth=4")
    assert result.backbone == "timm:resnet18"
    assert result.trainable[0].startswith("layer4.")
    assert result.table is not None and result.table.backbone == "timm:resnet18"


def test_norm_info_without_params_follows_its_depth():
    table = ParamTable(
        rows=(
            zoo.ParamInfo("a.weight", "a", "Conv2d", "weight", (2, 2), 4, "float32", "stem", 0),
            zoo.ParamInfo("b.weight", "b", "Linear", "head", (2, 2), 4, "float32", "head", 1),
        ),
        norms=(
            NormInfo("n0", "BatchNorm2d", 0, "stem", True),
            NormInfo("n1", "BatchNorm2d", 1, "head", True),
        ),
    )
    result = Plan.from_table(table, ["b.weight"])
    assert result.norms == {"n0": NormMode.FROZEN, "n1": NormMode.TRAIN}
