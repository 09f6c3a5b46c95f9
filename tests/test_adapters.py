"""Adapters as data and as modules: Addition/Plan round trips, injection (idempotent, conflicts,
dead adapters), merging, the parameter table of an injected model, check_frozen, plugin kinds."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zoo
from zoo.plans.adapters import inject, remove_adapters
from zoo.plans.freeze import apply_plan


def lora_addition(**overrides):
    data = {
        "target": "blocks.0.attn.qkv",
        "kind": "zoo:lora",
        "params": {"lora.A": (8, 192), "lora.B": (576, 8)},
        "args": {"rank": 8, "alpha": 16.0, "dropout": 0.0},
        "depth": 1,
        "group": "stage.1",
    }
    data.update(overrides)
    return zoo.Addition(**data)


# ---------------------------------------------------------------- data


def test_addition_names_numel_and_dict_round_trip():
    addition = lora_addition()
    assert addition.child == "lora"
    assert addition.names == ["blocks.0.attn.qkv.lora.A", "blocks.0.attn.qkv.lora.B"]
    assert addition.numel == 8 * 192 + 576 * 8
    data = addition.to_dict()
    assert data["params"] == {"lora.A": [8, 192], "lora.B": [576, 8]}
    assert zoo.Addition.from_dict(data) == addition


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"target": ""}, "module path"),
        ({"target": "a..b"}, "module path"),
        ({"kind": "lo ra"}, "kind"),
        ({"params": {}}, "params"),
        ({"params": {"A": [8, 4]}}, "<child>.<name>"),
        ({"params": {"lora.A": [8, -1]}}, "positive integers"),
        ({"params": {"lora.A": [8, True]}}, "positive integers"),
        ({"params": {"lora.A": "8x4"}}, "positive integers"),
        ({"params": {"lora.A": [1] * 9}}, "at most 8"),
        ({"params": {"lora.A": [8, 4], "other.B": [4, 8]}}, "same child"),
        ({"args": {"rank": object()}}, "JSON"),
        ({"args": {"rank": float("nan")}}, "JSON"),
        ({"depth": -1}, "depth"),
        ({"depth": "1"}, "depth"),
        ({"surprise": 1}, "unknown keys"),
        # the bounds of a file (Addition.from_dict is the one check of a saved adapter)
        ({"code": "import os"}, "unknown fields are refused"),
        ({"kind": "lora"}, '"plugin:name"'),
        ({"kind": "zoo:lo ra"}, '"plugin:name"'),
        ({"params": {f"lora.P{i}": [1] for i in range(17)}}, "1 to 16"),
        ({"args": {"x": [[[[[1]]]]]}}, "may not nest deeper"),
        ({"args": {"note": "x" * 2000}}, "string over 1000"),
        ({"depth": 10**7}, "depth"),
        ({"group": "a\x1b[2J"}, "control character"),
    ],
)
def test_addition_from_dict_refuses_malformed_data(change, message):
    data = {**lora_addition().to_dict(), **change}
    with pytest.raises(zoo.PlanError, match=message):
        zoo.Addition.from_dict(data)


def test_plan_with_additions_round_trips_and_lists_added_params():
    plan = zoo.plan("timm:vit_tiny_patch16_224", "lora:rank=4")
    assert plan.additions and all(a.kind == "zoo:lora" for a in plan.additions)
    added = plan.added_names
    assert set(added) <= set(plan.trainable)  # added parameters train
    data = plan.to_dict()
    assert data["format"] == 2 and len(data["additions"]) == len(plan.additions)
    again = zoo.Plan.from_dict(data)
    assert again == plan
    assert again.to_dict() == data
    # a plan without additions is still written in format 1
    assert zoo.plan("timm:vit_tiny_patch16_224", "linear-probe").to_dict()["format"] == 1


def _unlist_first_added(data):
    """The first added parameter left out of the plan's lists (lora's declared lr scale too)."""
    name = data["additions"][0]["target"] + ".lora.A"
    data["trainable"].remove(name)
    data["lr_scale"].pop(name, None)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(additions="lora"), "additions must be a list"),
        (lambda d: d.update(additions=[1]), "must be a mapping"),
        (_unlist_first_added, "not listed"),
        (lambda d: d["additions"].append(dict(d["additions"][0])), "two additions"),
        (lambda d: d["additions"][0]["params"].update({"lora.A": [4, 10**12]}), "positive"),
        (lambda d: d.update(additions=d["additions"] * 5001), "at most 10000"),
    ],
)
def test_plan_from_dict_refuses_malformed_additions(mutate, message):
    data = zoo.plan("timm:vit_tiny_patch16_224", "lora:rank=4").to_dict()
    mutate(data)
    with pytest.raises(zoo.PlanError, match=message):
        zoo.Plan.from_dict(data)


def test_a_plan_adds_one_adapter_of_a_kind_per_target():
    first = lora_addition()
    second = zoo.Addition(first.target, first.kind, {"lora2.A": (8, 192)}, first.args)
    with pytest.raises(zoo.PlanError, match="zoo:lora is listed twice on target"):
        zoo.Plan(params=[], additions=(first, second))


# ---------------------------------------------------------------- a tiny model


class Block(nn.Module):
    def __init__(self, bypass: bool = False) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 8)
        self.bypass = bypass

    def forward(self, x):
        if self.bypass:  # uses the weight directly: hooks on qkv never run
            return x + F.linear(x, self.qkv.weight, self.qkv.bias)
        return x + self.qkv(x)


class Net(nn.Module):
    def __init__(self, bypass: bool = False) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 8)
        self.blocks = nn.Sequential(Block(), Block(bypass))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))

    def get_classifier(self):
        return self.head


def test_dead_adapter_is_detected_on_the_first_forward():
    model = Net(bypass=True)
    zoo.freeze(model, "lora:targets=blocks.*.qkv")
    assert [a.target for a in zoo.adapters(model)] == ["blocks.0.qkv", "blocks.1.qkv"]
    with pytest.raises(zoo.AdapterError, match=r"did not run.*blocks\.1\.qkv"):
        model(torch.randn(2, 4))


def test_a_model_waiting_for_its_adapter_check_pickles():
    model = Net()
    zoo.freeze(model, "lora:targets=blocks.*.qkv")
    clone = pickle.loads(pickle.dumps(model))  # before the first forward: the check is on
    assert len(clone._forward_pre_hooks) == 1
    clone(torch.randn(2, 4))
    assert len(clone._forward_pre_hooks) == 0


def test_dead_adapter_is_detected_on_the_first_forward_of_a_compiled_model():
    model = Net(bypass=True)
    zoo.freeze(model, "lora:targets=blocks.*.qkv")
    compiled = torch.compile(model, backend="eager")
    with pytest.raises(zoo.AdapterError, match=r"did not run.*blocks\.1\.qkv"):
        compiled(torch.randn(2, 4))


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["lora:rank=4", "ssf", "vpt:tokens=2"])
def test_a_compiled_model_with_adapters_matches_eager_without_graph_breaks(policy):
    """The adapters' hooks keep no Python state: dynamo traces them without a graph break, and
    the compiled model computes what the eager one does."""
    torch.manual_seed(0)
    model = zoo.create("timm:vit_tiny_patch16_224", num_classes=3, depth=2, img_size=32)
    zoo.freeze(model, policy)
    with torch.no_grad():  # move the adapters off their identity start (LoRA's B is zero)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    adapters = [a for a in model.modules() if isinstance(a, zoo.Adapter)]
    zoo_state = [{k: v for k, v in vars(a).items() if k.startswith("zoo_")} for a in adapters]
    x = torch.randn(2, 3, 32, 32)
    # the first forward, traced: zoo's check (that every adapter runs) runs eagerly, once
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert not model._forward_pre_hooks
    eager = model(x)
    compiled = torch.compile(model, backend="aot_eager")
    for _ in range(2):
        torch.testing.assert_close(compiled(x), eager, rtol=0, atol=1e-5)
    assert [{k: v for k, v in vars(a).items() if k.startswith("zoo_")} for a in adapters] == (
        zoo_state
    )  # zoo's hooks wrote nothing on the adapters


def test_live_adapters_pass_the_check_which_then_removes_itself():
    model = Net()
    zoo.freeze(model, "lora:targets=blocks.*.qkv")
    assert len(model._forward_pre_hooks) == 1
    model(torch.randn(2, 4))
    assert len(model._forward_pre_hooks) == 0  # verified: the root hook is gone
    model(torch.randn(2, 4))


def test_inject_is_idempotent_and_refuses_a_conflicting_adapter():
    model = Net()
    zoo.freeze(model, "lora:rank=2,targets=blocks.*.qkv")
    params = dict(model.named_parameters())
    plan = zoo.freeze(model, "lora:rank=2,targets=blocks.*.qkv")  # same adapters: nothing new
    assert dict(model.named_parameters()).keys() == params.keys()
    assert all(params[n] is p for n, p in model.named_parameters())
    assert len(model.blocks[0].qkv._forward_hooks) == 1
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(zoo.AdapterError, match=r"already holds a zoo:lora adapter.*rank=2"):
        zoo.freeze(model, "lora:rank=4,targets=blocks.*.qkv")
    assert {n for n, _ in model.named_parameters()} == set(before)
    assert model.zoo.plan is plan


def test_inject_refuses_unknown_targets_and_wrong_shapes_before_changing_anything():
    model = Net()
    wrong = zoo.Addition("blocks.0.qkv", "zoo:lora", {"lora.A": (2, 5), "lora.B": (8, 2)})
    good = zoo.Addition("blocks.1.qkv", "zoo:lora", {"lora.A": (2, 8), "lora.B": (8, 2)})
    with pytest.raises(zoo.AdapterError, match="the plan lists"):
        inject(model, [good, wrong], catalog=zoo.get_catalog())
    with pytest.raises(zoo.AdapterError, match=r"no module 'blocks\.0\.qvk'.*did you mean"):
        inject(model, [replace_target(good, "blocks.0.qvk")], catalog=zoo.get_catalog())
    with pytest.raises(zoo.AdapterError, match="unknown adapter kind"):
        inject(model, [replace_kind(good, "zoo:nope")], catalog=zoo.get_catalog())
    assert zoo.adapters(model) == []


def replace_target(addition, target):
    return zoo.Addition(target, addition.kind, addition.params, addition.args)


def replace_kind(addition, kind):
    return zoo.Addition(addition.target, kind, addition.params, addition.args)


def test_a_plan_read_back_needs_the_catalog_for_its_kinds():
    model = Net()
    plan = zoo.plan(model, "lora:targets=blocks.*.qkv")
    read = zoo.Plan.from_dict(plan.to_dict())
    with pytest.raises(zoo.AdapterError, match="catalog="):
        apply_plan(Net(), read)
    fresh = Net()
    apply_plan(fresh, read, catalog=zoo.get_catalog())
    assert [a.target for a in zoo.adapters(fresh)] == ["blocks.0.qkv", "blocks.1.qkv"]
    fresh2 = Net()
    zoo.freeze(fresh2, read)  # zoo.freeze resolves kinds in the process catalog
    assert len(zoo.adapters(fresh2)) == 2


def test_injected_model_table_copy_pickle_and_removal():
    model = Net()
    zoo.freeze(model, "lora:targets=blocks.*.qkv")
    table = zoo.params(model)
    rows = {r.name: r for r in table}
    assert rows["blocks.1.qkv.lora.A"].role == "adapter"
    assert rows["blocks.1.qkv.lora.A"].depth == rows["blocks.1.qkv.weight"].depth
    assert rows["blocks.1.qkv.lora.A"].group == rows["blocks.1.qkv.weight"].group
    assert rows["head.weight"].role == "head"
    added = {d.depth: d.added_numel for d in table.depth_summary()}  # adapter rows count as added
    assert added[rows["blocks.1.qkv.weight"].depth] > 0
    assert sum(added.values()) == sum(a.numel for a in zoo.adapters(model))
    # adapters survive deepcopy and pickling, hooks included
    x = torch.randn(2, 4)
    with torch.no_grad():
        model.blocks[0].qkv.lora.B.normal_()
        expected = model(x)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert torch.equal(clone(x), expected)
        assert clone.blocks[0].qkv.lora.zoo_addition.target == "blocks.0.qkv"
    removed = remove_adapters(model)
    assert len(removed) == 2 and zoo.adapters(model) == []
    assert not any("lora" in n for n in model.state_dict())
    assert not model.blocks[0].qkv._forward_hooks
    assert not model.zoo.plan.additions


def test_check_frozen_covers_injected_models():
    model = Net()
    plan = zoo.freeze(model, "lora:targets=blocks.*.qkv")
    reference = zoo.snapshot(model)
    optimizer = torch.optim.SGD(plan.param_groups(model, lr=0.1), lr=0.1)
    held = {n for g in optimizer.param_groups for n in g["param_names"]}
    assert held == {*plan.added_names, "head.weight", "head.bias"}
    for _ in range(2):
        loss = model(torch.randn(4, 4)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    report = zoo.check_frozen(model, reference)
    assert report.ok and report.checked_params == 6  # stem + 2 qkv, weight and bias each
    assert "blocks.0.qkv.lora.B" not in report.not_moved
    with torch.no_grad():
        model.blocks[0].qkv.weight.add_(1.0)
    assert [c.name for c in zoo.check_frozen(model, reference).changed] == ["blocks.0.qkv.weight"]


# ---------------------------------------------------------------- a plugin's adapter kind


class ChannelBias(zoo.Adapter):
    mergeable = True

    def __init__(self, channels):
        super().__init__()
        self.delta = nn.Parameter(torch.zeros(channels))

    def post_forward(self, target, args, output):
        return output + self.delta

    def merge_into(self, target):
        target.bias.add_(self.delta)


def bias_policy(table: zoo.ParamTable) -> zoo.Plan:
    additions = [
        zoo.Addition(
            target=row.module,
            kind="acme:channel-bias",
            params={"cb.delta": (row.shape[0],)},
            depth=row.depth,
            group=row.group,
        )
        for row in table
        if row.module_type == "Linear" and row.role == "bias"
    ]
    head = [row.name for row in table if row.role == "head"]
    return zoo.Plan.from_table(table, head, additions=additions)


class AcmePlugin:
    @zoo.hookimpl
    def zoo_register_policies(self, register):
        register(
            zoo.AdapterSpec("channel-bias", lambda target, a: ChannelBias(a.params["cb.delta"][0]))
        )
        register(zoo.PolicySpec("bias-adapters", bias_policy, summary="a bias adapter per Linear"))


def test_plugin_adapter_kind_registered_through_the_policy_hook(zoo_register_plugin):
    catalog = zoo_register_plugin(AcmePlugin(), name="acme")
    assert catalog.adapter_kind("channel-bias").qualified_name == "acme:channel-bias"
    assert catalog.list_policies("bias-adapters") == ["acme:bias-adapters"]
    assert "acme" in catalog.host.records and not catalog.host.records["acme"].errors
    model = Net()
    plan = zoo.freeze(model, "acme:bias-adapters")
    assert len(plan.additions) == 3 and {a.kind for a in plan.additions} == {"acme:channel-bias"}
    x = torch.randn(3, 4)
    with torch.no_grad():
        for addition in zoo.adapters(model):
            model.get_submodule(f"{addition.target}.cb").delta.normal_()
        adapted = model(x)
        zoo.merge_adapters(model)
        assert torch.allclose(model(x), adapted, atol=1e-6)
    assert zoo.adapters(model) == []


def test_register_refuses_other_objects_and_duplicate_kinds(zoo_register_plugin):
    class Bad:
        @zoo.hookimpl
        def zoo_register_policies(self, register):
            register(zoo.AdapterSpec("k", lambda t, a: None))
            register(zoo.AdapterSpec("k", lambda t, a: None))
            register("not a spec")

    catalog = zoo_register_plugin(Bad(), name="bad")
    errors = catalog.host.records["bad"].errors
    assert any("registers adapter kind 'k' twice" in e for e in errors)
    assert any(
        "register() expects a zoo.PolicySpec, got str (or a zoo.AdapterSpec)" in e for e in errors
    )
    assert catalog.adapter_kind("bad:k").name == "k"


def test_a_kind_that_builds_something_else_is_refused(zoo_register_plugin):
    class Broken:
        @zoo.hookimpl
        def zoo_register_policies(self, register):
            register(zoo.AdapterSpec("nothing", lambda target, a: nn.Identity()))
            register(zoo.AdapterSpec("raises", lambda target, a: 1 / 0))

    zoo_register_plugin(Broken(), name="broken")
    for kind, message in (
        ("broken:nothing", "must return a zoo.Adapter"),
        ("broken:raises", "ZeroDivisionError"),
    ):
        addition = zoo.Addition("head", kind, {"x.y": (3,)})
        with pytest.raises(zoo.AdapterError, match=message):
            inject(Net(), [addition], catalog=zoo.get_catalog())


def test_an_implausibly_large_addition_is_refused_before_allocating():
    model = Net()
    huge = zoo.Addition("blocks.0.qkv", "zoo:vpt", {"vpt.prompts": (10**6, 8)})
    with pytest.raises(zoo.AdapterError, match="not plausible"):
        inject(model, [huge], catalog=zoo.get_catalog())
    rank = zoo.Addition(
        "blocks.0.qkv", "zoo:lora", {"lora.A": (2, 8), "lora.B": (8, 2)}, {"rank": 10**9}
    )
    with pytest.raises(zoo.AdapterError, match="at rank 1000000000"):
        inject(model, [rank], catalog=zoo.get_catalog())
    assert zoo.adapters(model) == []
