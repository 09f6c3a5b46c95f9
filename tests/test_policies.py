"""The built-in policies on hand-built tables, policy arguments, and a third-party policy."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from torch import nn

import zoo
from zoo.api import get_catalog, plan, set_catalog
from zoo.builtin import standard_policies
from zoo.cli.main import main
from zoo.core.catalog import Catalog
from zoo.core.plugins import PluginHost, PluginRecord
from zoo.core.policy_args import (
    bind_policy_args,
    describe_args,
    format_policy_spec,
    parse_policy_spec,
)
from zoo.core.specs import BackboneSpec, PolicySpec
from zoo.errors import PlanError, PolicyArgumentError, UnknownNameError
from zoo.plans.freeze import check_frozen, snapshot
from zoo.plans.plan import NormMode, Plan
from zoo.tables.table import NormInfo, ParamInfo, ParamTable

BUILTIN = [
    "auto",
    "bitfit",
    "freeze-to",
    "full",
    "gradual",
    "layer-decay",
    "lp-ft",
    "linear-probe",
    "norm-only",
    "pattern",
    "surgical",
    "train-last",
]
ADAPTER_POLICIES = ["lora", "ssf", "vpt"]  # tested in test_adapter_policies.py


def make_table(
    stages: int = 3, *, neck: bool = True, head: bool = True, head_norm: bool = False
) -> ParamTable:
    """stem (conv + bn), ``stages`` stages (conv with bias + bn), a neck LayerNorm, a head."""
    rows: list[ParamInfo] = []
    norms: list[NormInfo] = []

    def add(name: str, role: str, shape: tuple[int, ...], group: str, depth: int) -> None:
        module = name.rpartition(".")[0]
        numel = 1
        for s in shape:
            numel *= s
        rows.append(ParamInfo(name, module, "X", role, shape, numel, "float32", group, depth))

    def bn(path: str, group: str, depth: int, role: str = "norm") -> None:
        add(f"{path}.weight", role, (8,), group, depth)
        add(f"{path}.bias", role, (8,), group, depth)
        norms.append(
            NormInfo(path, "BatchNorm2d", depth, group, True, (f"{path}.weight", f"{path}.bias"))
        )

    add("stem.conv.weight", "weight", (8, 3, 3, 3), "stem", 0)
    bn("stem.bn", "stem", 0)
    for i in range(1, stages + 1):
        group = f"stage.{i}"
        add(f"stages.{i}.conv.weight", "weight", (8, 8, 3, 3), group, i)
        add(f"stages.{i}.conv.bias", "bias", (8,), group, i)
        bn(f"stages.{i}.bn", group, i)
    depth = stages + 1
    if neck:
        add("norm.weight", "norm", (8,), "neck", depth)
        add("norm.bias", "norm", (8,), "neck", depth)
        norms.append(
            NormInfo("norm", "LayerNorm", depth, "neck", False, ("norm.weight", "norm.bias"))
        )
        depth += 1
    if head:
        if head_norm:
            bn("head.bn", "head", depth, role="head")
        add("head.fc.weight", "head", (4, 8), "head", depth)
        add("head.fc.bias", "head", (4,), "head", depth)
    return ParamTable(rows=tuple(rows), norms=tuple(norms), backbone="test:tiny")


@pytest.fixture
def table() -> ParamTable:
    return make_table()


def at_or_above(table: ParamTable, depth: int) -> list[str]:
    return [r.name for r in table.rows if r.depth >= depth]


# ---------------------------------------------------------------- registration


def test_builtin_plugin_registers_every_policy():
    names = zoo.list_policies("zoo:*")
    assert sorted(n.split(":")[1] for n in names) == sorted(BUILTIN + ADAPTER_POLICIES)
    record = get_catalog().host.records["zoo"]
    assert record.builtin and record.policies == len(BUILTIN) + 3 and record.ok
    for name in BUILTIN:
        spec = zoo.get_policy(name)
        assert spec.plugin == "zoo" and spec.summary
    assert zoo.get_policy("gradual").schedule
    assert not any(zoo.get_policy(n).schedule for n in BUILTIN if n != "gradual")
    assert "scratch" not in BUILTIN


# ---------------------------------------------------------------- each policy


def test_full(table):
    result = plan(table, "full")
    assert result.trainable == table.names
    assert set(result.norms.values()) == {NormMode.TRAIN}
    assert {p.lr_scale for p in result.params.values()} == {1.0}
    assert result.policy == "zoo:full" and result.args == {}


def test_linear_probe_trains_the_head_and_freezes_every_norm(table):
    result = plan(table, "linear-probe")
    assert result.trainable == ["head.fc.weight", "head.fc.bias"]
    assert set(result.norms.values()) == {NormMode.FROZEN}
    with_head_norm = plan(make_table(head_norm=True), "linear-probe")
    assert "head.bn.weight" in with_head_norm.trainable
    assert with_head_norm.norms["head.bn"] is NormMode.FROZEN_STATS
    assert with_head_norm.norms["stem.bn"] is NormMode.FROZEN


def test_linear_probe_without_a_head_trains_nothing_and_says_so():
    result = plan(make_table(head=False), "linear-probe")
    assert result.trainable == []
    assert "no classifier head" in result.notes[0]


@pytest.mark.parametrize("depth", [0, 1, 2, 3, 4, 5])
def test_freeze_to(table, depth):
    result = plan(table, f"freeze-to:depth={depth}")
    assert result.trainable == at_or_above(table, depth)
    for norm in table.norms:
        expected = NormMode.TRAIN if norm.depth >= depth else NormMode.FROZEN
        assert result.norms[norm.path] is expected


@pytest.mark.parametrize("depth", [-1, 6, 99])
def test_freeze_to_rejects_depths_out_of_range_and_lists_them(table, depth):
    with pytest.raises(PolicyArgumentError) as info:
        plan(table, "freeze-to", depth=depth)
    message = str(info.value)
    assert "policy 'zoo:freeze-to'" in message and "between 0 and 5" in message
    assert "0=stem" in message and "5=head" in message


@pytest.mark.parametrize(("n", "first_depth"), [(0, 4), (1, 3), (2, 2), (3, 1), (4, 0)])
def test_train_last(table, n, first_depth):
    # stages counting the stem: depths 0..3; the neck (4) and head (5) always train
    assert plan(table, "train-last", n=n).trainable == at_or_above(table, first_depth)


def test_train_last_range(table):
    with pytest.raises(PolicyArgumentError, match="between 0 and 4"):
        plan(table, "train-last:n=5")


def test_bitfit_trains_biases_and_head(table):
    result = plan(table, "bitfit")
    assert all(n.endswith(".bias") or n.startswith("head.") for n in result.trainable)
    assert "stages.1.conv.bias" in result.trainable and "stem.bn.bias" in result.trainable
    assert "head.fc.weight" in result.trainable and "stem.conv.weight" not in result.trainable
    assert result.norms["stem.bn"] is NormMode.FROZEN_STATS  # bias trains, weight frozen


def test_norm_only(table):
    result = plan(table, "norm-only")
    norm_params = {p for n in table.norms for p in n.params}
    assert set(result.trainable) == norm_params | {"head.fc.weight", "head.fc.bias"}
    assert set(result.norms.values()) == {NormMode.TRAIN}
    fixed = plan(table, "norm-only:update_stats=false")
    assert fixed.trainable == result.trainable
    assert set(fixed.norms.values()) == {NormMode.FROZEN_STATS}


def test_pattern_include_exclude(table):
    result = plan(table, "pattern:include=stages.3.*,head.*,exclude=*.bias")
    assert result.trainable == ["stages.3.conv.weight", "stages.3.bn.weight", "head.fc.weight"]
    assert result.args == {"include": ["stages.3.*", "head.*"], "exclude": ["*.bias"]}
    only_exclude = plan(table, "pattern", exclude=["stem.*"])
    assert only_exclude.trainable == [n for n in table.names if not n.startswith("stem.")]


def test_pattern_errors(table):
    with pytest.raises(PolicyArgumentError, match="include= and/or exclude="):
        plan(table, "pattern")
    with pytest.raises(PolicyArgumentError, match=r"glob 'layer4\.\*' matches no parameter"):
        plan(table, "pattern:include=layer4.*")


def test_layer_decay(table):
    result = plan(table, "layer-decay:decay=0.5")
    assert result.trainable == table.names
    for row in table.rows:
        assert result.params[row.name].lr_scale == pytest.approx(0.5 ** (5 - row.depth))
    for bad in (0, 1.5, -0.1):
        with pytest.raises(PolicyArgumentError, match=r"'decay' must be in \(0, 1\]"):
            plan(table, "layer-decay", decay=bad)


def test_gradual_unfreezes_one_stage_every_k_epochs(table):
    expected = {0: 4, 1: 4, 2: 3, 3: 3, 4: 2, 5: 2, 6: 1, 7: 1, 8: 0, 20: 0}
    for epoch, first in expected.items():
        result = plan(table, "gradual:every=2", epoch=epoch)
        assert result.trainable == at_or_above(table, first), epoch
        assert result.epoch == epoch and result.args == {"every": 2}
    assert "next one at epoch 2" in plan(table, "gradual:every=2").notes[0]
    assert (
        "all 4 stages unfrozen (since epoch 8)" in plan(table, "gradual:every=2", epoch=9).notes[0]
    )
    with pytest.raises(PolicyArgumentError, match="'every' must be >= 1"):
        plan(table, "gradual:every=0")
    with pytest.raises(PolicyArgumentError, match="epoch must be an int >= 0"):
        plan(table, "gradual", epoch=-1)


# ---------------------------------------------------------------- auto: the decision table


@pytest.mark.parametrize(
    ("samples", "similarity", "equivalent", "first_depth"),
    [
        (10, "high", "zoo:linear-probe", 5),
        (99, "high", "zoo:linear-probe", 5),
        (10, "low", "zoo:train-last:n=1", 3),
        (100, "high", "zoo:train-last:n=2", 2),
        (999, "high", "zoo:train-last:n=2", 2),
        (100, "low", "zoo:full", 0),
        (1000, "high", "zoo:full", 0),
        (5000, "low", "zoo:full", 0),
    ],
)
def test_auto_decision_table(table, samples, similarity, equivalent, first_depth):
    result = plan(table, f"auto:samples_per_class={samples},similarity={similarity}")
    if equivalent == "zoo:linear-probe":
        assert result.trainable == ["head.fc.weight", "head.fc.bias"]
    else:
        assert result.trainable == at_or_above(table, first_depth)
    reason = result.notes[0]
    assert reason.startswith(f"auto chose {equivalent}:")
    assert f"{samples} labelled samples per class" in reason and similarity in reason
    assert result.policy == "zoo:auto"
    assert result.args == {
        "samples_per_class": samples,
        "similarity": similarity,
        "small": 100,
        "large": 1000,
    }


def test_auto_linear_probe_matches_linear_probe_norms(table):
    assert plan(table, "auto", samples_per_class=5).norms == plan(table, "linear-probe").norms


def test_auto_arguments(table):
    with pytest.raises(PolicyArgumentError, match="needs argument 'samples_per_class'"):
        plan(table, "auto")
    with pytest.raises(PolicyArgumentError, match="one of 'high', 'low'"):
        plan(table, "auto:samples_per_class=5,similarity=medium")
    with pytest.raises(PolicyArgumentError, match="'samples_per_class' must be >= 1"):
        plan(table, "auto", samples_per_class=0)
    with pytest.raises(PolicyArgumentError, match="small < large"):
        plan(table, "auto", samples_per_class=5, small=50, large=50)
    assert plan(table, "auto:samples_per_class=5,similarity=LOW").args["similarity"] == "low"


# ---------------------------------------------------------------- arguments and names


def test_unknown_policy_suggests_close_names(table):
    with pytest.raises(UnknownNameError) as info:
        plan(table, "freez-to:depth=2")
    assert "zoo:freeze-to" in info.value.suggestions
    assert "did you mean" in str(info.value)


def test_unknown_argument_lists_the_valid_ones(table):
    with pytest.raises(PolicyArgumentError) as info:
        plan(table, "freeze-to:dept=2")
    assert str(info.value) == (
        "policy 'zoo:freeze-to' has no argument 'dept' (did you mean 'depth'?); "
        "valid arguments: depth: int (required)"
    )
    with pytest.raises(
        PolicyArgumentError,
        match=r"has no argument 'decay'.*valid arguments: "
        r"every: int = 1",
    ):
        plan(table, "gradual", decay=0.5)
    with pytest.raises(PolicyArgumentError, match="valid arguments: none"):
        plan(table, "full", depth=1)


@pytest.mark.parametrize(
    ("spec", "kwargs", "message"),
    [
        ("freeze-to:depth=three", {}, "argument 'depth' expects int, got 'three'"),
        ("freeze-to:depth=1.5", {}, "expects int, got '1.5'"),
        ("freeze-to", {"depth": 1.5}, "expects int, got 1.5"),
        ("freeze-to", {"depth": True}, "expects int, got True"),
        ("freeze-to", {"depth": [1]}, "expects int, got [1]"),
        ("freeze-to:depth=1,2", {}, "takes one value (int), got '1,2'"),
        ("freeze-to", {}, "needs argument 'depth' (int), e.g. 'freeze-to:depth=...'"),
        ("layer-decay:decay=fast", {}, "expects float, got 'fast'"),
        ("layer-decay:decay=nan", {}, "expects float, got 'nan'"),
        ("norm-only:update_stats=maybe", {}, "expects bool, got 'maybe'"),
        ("norm-only", {"update_stats": 1}, "expects bool, got 1"),
        ("pattern", {"include": "head.*"}, None),  # a single glob is accepted as a list
        ("pattern", {"include": [1]}, "expects list of str"),
        ("freeze-to:depth=2", {"depth": 2}, "given both in the policy text and as a keyword"),
        ("freeze-to:depth=1,depth=2", {}, "argument 'depth' of policy 'freeze-to' is given twice"),
        ("gradual:2", {}, "argument '2' of policy 'zoo:gradual' is not key=value"),
        ("freeze-to:=3", {}, "has no name"),
        ("full", {"epoch": 2}, "not a schedule, so it takes no epoch"),
        ("gradual:epoch=2", {}, "no argument 'epoch' (give the epoch on its own: epoch=N"),
        ("full:epoch=2", {}, "no argument 'epoch' (only schedule policies take an epoch)"),
    ],
)
def test_bad_arguments_are_rejected_with_clear_messages(table, spec, kwargs, message):
    if message is None:
        assert plan(table, spec, **kwargs).args["include"] == ["head.*"]
        return
    with pytest.raises(PolicyArgumentError) as info:
        plan(table, spec, **kwargs)
    assert message in str(info.value)
    assert isinstance(info.value, zoo.ZooError) and isinstance(info.value, ValueError)


def test_string_values_from_config_files_are_coerced(table):
    assert plan(table, "freeze-to", depth="3").args == {"depth": 3}
    assert plan(table, "layer-decay", decay=1).args == {"decay": 1.0}
    assert plan(table, "norm-only:update_stats=no").args == {"update_stats": False}
    assert plan(table, "zoo:freeze-to:depth=2").policy == "zoo:freeze-to"


def test_parse_and_format_policy_specs():
    assert parse_policy_spec("freeze-to:depth=3") == ("freeze-to", {"depth": ["3"]})
    assert parse_policy_spec("zoo:freeze-to:depth=3") == ("zoo:freeze-to", {"depth": ["3"]})
    assert parse_policy_spec("zoo:full") == ("zoo:full", {})
    assert parse_policy_spec(" linear-probe: ") == ("linear-probe", {})
    assert parse_policy_spec("pattern:include=a.*,b.*,exclude=") == (
        "pattern",
        {"include": ["a.*", "b.*"], "exclude": []},
    )
    assert format_policy_spec("zoo:pattern", {"include": ["a.*", "b.*"], "exclude": None}) == (
        "zoo:pattern:include=a.*,b.*"
    )
    assert format_policy_spec("zoo:norm-only", {"update_stats": False}) == (
        "zoo:norm-only:update_stats=false"
    )
    with pytest.raises(PolicyArgumentError, match="write NAME:key=value"):
        parse_policy_spec("depth=3")


def test_formatted_spec_round_trips(table):
    for spec in (
        "pattern:include=stages.*,exclude=*.bias",
        "auto:samples_per_class=7",
        "layer-decay:decay=0.25",
        "norm-only:update_stats=false",
    ):
        first = plan(table, spec)
        again = plan(table, first.spec_text)
        assert again == first


def test_policy_args_read_types_from_annotations():
    described = describe_args(zoo.get_policy("auto"))
    assert described == (
        "samples_per_class: int (required); similarity: one of 'high', 'low' "
        "= 'high'; small: int = 100; large: int = 1000"
    )
    kinds = {a.name: a.type.kind for a in zoo.get_policy("pattern").args}
    assert kinds == {"include": "list", "exclude": "list"}

    def untyped(table, k=3, name=None, *, flag=None, what=(), mode="a"):
        return []

    # annotations that cannot be evaluated: read from their text
    untyped.__annotations__ = {
        "flag": "Optional[bool]",
        "what": "Sequence[str]",
        "mode": "Literal['a', 'b']",
    }
    spec = PolicySpec("untyped", untyped)
    raw = {"k": ["4"], "flag": ["none"], "what": ["a", "b"], "mode": ["b"]}
    assert bind_policy_args(spec, raw) == {
        "k": 4,
        "name": None,
        "flag": None,
        "what": ["a", "b"],
        "mode": "b",
    }
    assert bind_policy_args(spec, {"flag": ["yes"]})["flag"] is True
    with pytest.raises(PolicyArgumentError, match="one of 'a', 'b'"):
        bind_policy_args(spec, {"mode": ["c"]})


# ---------------------------------------------------------------- a third-party plugin


class AcmeNet(nn.Module):
    """A small CNN a third-party plugin offers as backbone ``acme:acmenet``."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block2(self.block1(self.stem(x))).mean((2, 3)))

    def get_classifier(self) -> nn.Module:
        return self.fc


def top_convs(table: ParamTable, k: int = 1) -> list[str]:
    """Third-party policy returning names: conv weights of the top ``k`` body depths + head."""
    top = table.max_depth
    return [
        r.name
        for r in table.rows
        if r.role == "head" or (r.depth >= top - k and r.name.endswith("0.weight"))
    ]


def warmup(table: ParamTable, epoch: int, head_epochs: int = 1) -> Plan:
    """Third-party schedule: head only for ``head_epochs``, then everything."""
    names = [r.name for r in table.rows if r.role == "head" or epoch >= head_epochs]
    return Plan.from_table(table, names, notes=[f"warmup epoch {epoch}"])


class AcmePlugin:
    @zoo.hookimpl
    def zoo_register_backbones(self, register):
        register(
            BackboneSpec(
                "acmenet",
                lambda num_classes, pretrained, **kw: AcmeNet(num_classes or 4),
                summary="Acme's CNN",
            )
        )

    @zoo.hookimpl
    def zoo_register_policies(self, register):
        register(PolicySpec("top-convs", top_convs, "Conv weights of the top stages."))
        register(PolicySpec("warmup", warmup, "Head first, then all.", schedule=True))
        register(PolicySpec("garbage", lambda table: 42, "Returns nonsense."))
        register(PolicySpec("typo", lambda table: ["fc.wieght"], "Returns unknown names."))


@pytest.fixture
def acme_catalog():
    host = PluginHost()
    host.add_module("zoo", "zoo.builtin.standard_policies", builtin=True)
    host.add(
        AcmePlugin(),
        PluginRecord(name="acme", module="acme_zoo", distribution="acme-zoo", version="1.2"),
    )
    catalog = Catalog(host)
    previous = set_catalog(catalog)
    try:
        yield catalog
    finally:
        set_catalog(previous)


def test_third_party_policy_end_to_end(acme_catalog, capsys):
    assert "acme:top-convs" in zoo.list_policies()
    assert "zoo:full" in zoo.list_policies()
    torch.manual_seed(0)
    model = zoo.create("acmenet", num_classes=3)
    result = zoo.freeze(model, "top-convs:k=1")
    assert result.policy == "acme:top-convs" and result.args == {"k": 1}
    assert result.trainable == ["block2.0.weight", "fc.weight", "fc.bias"]
    assert result.norms == {
        "stem.1": NormMode.FROZEN,
        "block1.1": NormMode.FROZEN,
        "block2.1": NormMode.FROZEN,
    }
    reference = snapshot(model)
    opt = torch.optim.AdamW(result.param_groups(model, lr=0.05, weight_decay=0.1))
    model.train()
    for _ in range(2):
        loss = model(torch.randn(2, 3, 8, 8)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    report = check_frozen(model, reference)
    assert report.ok and not report.not_moved and report.checked_stats == 9

    assert main(["plan", "acmenet", "--policy", "acme:top-convs:k=2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["policy"] == "acme:top-convs" and data["backbone"] == "acme:acmenet"
    assert data["plan"]["trainable"] == [
        "block1.0.weight",
        "block2.0.weight",
        "fc.weight",
        "fc.bias",
    ]


def test_third_party_schedule_policy(acme_catalog):
    model = zoo.create("acmenet")
    driver = zoo.ScheduleDriver(model, "warmup", head_epochs=2)
    assert driver.trainable_at(0) == ["fc.weight", "fc.bias"]
    assert set(driver.milestones(5)) == {2}
    assert zoo.plan(model, "warmup", epoch=3).notes == ("warmup epoch 3",)


def test_third_party_garbage_is_a_plan_error_naming_policy_and_plugin(acme_catalog):
    model = zoo.create("acmenet")
    with pytest.raises(PlanError) as info:
        zoo.plan(model, "garbage")
    assert str(info.value).startswith(
        "policy 'acme:garbage' (plugin acme (acme-zoo 1.2)): returned int 42;"
    )
    with pytest.raises(
        PlanError,
        match=r"policy 'acme:typo' \(plugin acme .*unknown parameter "
        r"name.*'fc\.wieght'.*did you mean 'fc\.weight'",
    ):
        zoo.plan(model, "typo")
    assert main(["plan", "acmenet", "--policy", "garbage"]) == 1


def test_unregistered_spec_can_be_planned_directly(table):
    spec = PolicySpec("mine", lambda table, top=True: [table.names[-1]] if top else [])
    result = plan(table, spec, top=True)
    assert result.trainable == ["head.fc.bias"] and result.policy == "mine"
    broken = replace(spec, plugin="nowhere")
    assert plan(table, broken).policy == "nowhere:mine"


def test_policies_are_pure_functions_of_the_table(table):
    before = table.to_dict()
    for name in BUILTIN:
        spec = zoo.get_policy(name)
        args = {"depth": 2} if name in ("freeze-to", "surgical") else {}
        args = {"samples_per_class": 10} if name == "auto" else args
        args = {"include": ["head.*"]} if name == "pattern" else args
        kwargs = {"epoch": 0} if spec.schedule else {}
        assert isinstance(spec.plan(table, **args, **kwargs), Plan)
    assert table.to_dict() == before
    assert standard_policies.stage_depths(table) == [0, 1, 2, 3]
