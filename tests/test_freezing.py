"""Applying plans to real timm models: the freeze holds through real AdamW steps.

For every built-in policy on five architectures: a few AdamW steps with weight decay in train
mode leave every frozen parameter and every fixed norm statistic bit-identical, move every
trained parameter, and ``model.train()`` keeps the norm modes.
"""

from __future__ import annotations

import copy
import functools
import io
import pickle

import pytest
import torch
from torch import nn

import zoo
from zoo.api import freeze, plan
from zoo.plans.freeze import (
    PinnedTrain,
    apply_plan,
    check_frozen,
    norm_mode,
    set_norm_mode,
    snapshot,
)
from zoo.plans.plan import NormMode, ParamPlan, Plan

# (backbone, create kwargs, input size): small inputs where the model allows. LeViT's last
# stage needs >= 2x2 tokens for its attention biases to get a gradient, hence 96 px.
MODELS = {
    "resnet18": ("timm:resnet18", {}, 32),
    "vit_tiny": ("timm:vit_tiny_patch16_224", {"img_size": 32}, 32),
    "convnext_atto": ("timm:convnext_atto", {}, 32),
    "levit_128s": ("timm:levit_128s", {"img_size": 96}, 96),
    "efficientnet_b0": ("timm:efficientnet_b0", {}, 32),
}

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)

# every built-in policy, with arguments valid for all five models
POLICIES = {
    "full": "full",
    "linear-probe": "linear-probe",
    "freeze-to": "freeze-to:depth=2",
    "train-last": "train-last:n=1",
    "bitfit": "bitfit",
    "norm-only": "norm-only",
    "pattern": "pattern:exclude=*.bias",
    "layer-decay": "layer-decay:decay=0.5",
    "gradual": "gradual:every=1",
    "auto": "auto:samples_per_class=300",
}


@functools.cache
def pristine(key: str) -> nn.Module:
    """The model with "pretrained-like" norms: timm zero-initializes the last norm of each
    residual branch, which would starve BitFit of gradients; real checkpoints never have that.
    Running statistics get random values too, so a leaked update would show."""
    name, kwargs, _size = MODELS[key]
    torch.manual_seed(0)
    model = zoo.create(name, num_classes=3, **kwargs)
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if isinstance(module, NORM_TYPES) and isinstance(weight, nn.Parameter):
                weight.uniform_(0.5, 1.5)
            if getattr(module, "running_var", None) is not None:
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model


def batch(key: str) -> torch.Tensor:
    size = MODELS[key][2]
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def train_steps(
    model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, steps: int = 2
) -> None:
    model.train()
    for _ in range(steps):
        out = model(x)
        out = out[0] if isinstance(out, tuple) else out
        loss = out.float().logsumexp(-1).mean() + out.float().pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("model_key", list(MODELS))
def test_policy_freeze_holds_through_adamw_steps(model_key: str, policy: str) -> None:
    model = copy.deepcopy(pristine(model_key))
    keys = set(model.state_dict())
    kwargs = {"epoch": 1} if policy == "gradual" else {}
    result = freeze(model, POLICIES[policy], **kwargs)
    assert model.zoo.plan is result
    assert set(model.state_dict()) == keys, "freezing must not add state-dict entries"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(result.trainable)

    model.eval()
    model.train()  # the norm modes survive model.train()
    modules = dict(model.named_modules())
    for path, mode in result.norms.items():
        assert norm_mode(modules[path]) is mode
        assert modules[path].training is (mode is NormMode.TRAIN), path

    running_before = {
        path: modules[path].num_batches_tracked.clone()
        for path, mode in result.norms.items()
        if mode is NormMode.TRAIN
        and getattr(modules[path], "num_batches_tracked", None) is not None
    }
    reference = snapshot(model)
    if result.trainable:
        opt = torch.optim.AdamW(result.param_groups(model, lr=1e-2, weight_decay=0.1), lr=1e-2)
        train_steps(model, opt, batch(model_key))
    report = check_frozen(model, reference)
    assert report.ok, report.summary()
    assert not report.unchecked
    frozen = set(result.frozen)
    assert report.checked_params == len(frozen)
    assert not report.not_moved, f"trained parameters did not move: {report.not_moved[:5]}"
    fixed = [p for p, m in result.norms.items() if m is not NormMode.TRAIN]
    expected_stats = sum(
        1 for p in fixed for b in modules[p].buffers(recurse=False) if b is not None
    )
    assert report.checked_stats == expected_stats
    for path, before in running_before.items():  # norms in train mode did update
        assert int(modules[path].num_batches_tracked) == int(before) + 2, path


@pytest.mark.parametrize("model_key", ["resnet18", "levit_128s"])
def test_frozen_and_trained_share_match_the_policy(model_key: str) -> None:
    model = copy.deepcopy(pristine(model_key))
    result = freeze(model, "linear-probe")
    head = {r.name for r in zoo.params(model).rows if r.role == "head"}
    assert set(result.trainable) == head
    if model_key == "levit_128s":  # head.bn: a norm inside the head keeps fixed statistics
        assert result.norms["head.bn"] is NormMode.FROZEN_STATS
        assert result.params["head.bn.weight"].trainable


# ---------------------------------------------------------------- norm layers of every kind


class Norms(nn.Module):
    """One of each: BatchNorm1d/2d/3d, SyncBatchNorm, timm's BatchNormAct2d, GroupNorm."""

    def __init__(self) -> None:
        from timm.layers import BatchNormAct2d

        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn2 = nn.BatchNorm2d(4)
        self.act = BatchNormAct2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.bn1 = nn.BatchNorm1d(4)
        self.bn3 = nn.BatchNorm3d(4)
        self.sync = nn.SyncBatchNorm(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gn(self.act(self.bn2(self.conv(x))))
        x = self.bn3(x.unsqueeze(2)).squeeze(2)
        x = self.sync(x)  # SyncBatchNorm runs on CPU only in eval mode
        return self.fc(self.bn1(x.mean((2, 3))))

    def get_classifier(self) -> nn.Module:
        return self.fc


def test_every_norm_kind_keeps_its_mode_and_statistics() -> None:
    model = Norms()
    result = freeze(model, "linear-probe")
    assert set(result.norms) == {"bn2", "act", "gn", "bn1", "bn3", "sync"}
    assert set(result.norms.values()) == {NormMode.FROZEN}
    model.train()
    assert all(not m.training for n, m in model.named_modules() if n in result.norms)
    assert model.training and model.fc.training and model.conv.training
    reference = snapshot(model)
    opt = torch.optim.AdamW(result.param_groups(model, lr=0.1, weight_decay=0.5))
    train_steps(model, opt, torch.randn(4, 3, 6, 6))  # SyncBatchNorm would fail in train mode
    report = check_frozen(model, reference)
    assert report.ok and report.checked_stats == 5 * 3  # 5 layers with mean, var, count


def test_frozen_stats_trains_affine_with_fixed_statistics() -> None:
    model = Norms()
    table = zoo.params(model)
    names = [n for n in table.names if n.startswith(("bn2.", "fc."))]
    custom = Plan.from_table(table, names, norm_modes={"bn2": "frozen-stats"})
    apply_plan(model, custom)
    stats = model.bn2.running_mean.clone(), model.bn2.num_batches_tracked.clone()
    weight = model.bn2.weight.detach().clone()
    opt = torch.optim.SGD(custom.param_groups(model, lr=0.5), lr=0.5)
    model.eval()
    train_steps(model, opt, torch.randn(4, 3, 6, 6))
    assert torch.equal(model.bn2.running_mean, stats[0])
    assert torch.equal(model.bn2.num_batches_tracked, stats[1])
    assert not torch.equal(model.bn2.weight, weight)


def test_unfreezing_restores_train_mode() -> None:
    model = Norms()
    freeze(model, "linear-probe")
    model.train()
    assert not model.bn2.training
    freeze(model, "full")
    assert model.bn2.training  # follows the model's mode at once
    assert "train" not in model.bn2.__dict__
    model.eval()
    model.train()
    assert all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


def test_deepcopy_pickle_and_state_dict_survive_pinning() -> None:
    model = Norms()
    keys = list(model.state_dict())
    freeze(model, "linear-probe")
    assert list(model.state_dict()) == keys
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        clone.train()
        assert not clone.bn2.training and clone.fc.training
        pinned = clone.bn2.__dict__["train"]
        assert isinstance(pinned, PinnedTrain) and pinned.module is clone.bn2
        assert clone.zoo.plan.trainable == model.zoo.plan.trainable
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    assert buffer.tell() > 0


def test_set_norm_mode_rejects_unknown_modes_and_non_bool_train() -> None:
    bn = nn.BatchNorm2d(2)
    with pytest.raises(zoo.PlanError, match="valid modes"):
        set_norm_mode(bn, "sleepy")
    set_norm_mode(bn, "frozen")
    with pytest.raises(ValueError):
        bn.train("yes")  # type: ignore[arg-type]


# ---------------------------------------------------------------- applying and checking


def test_apply_plan_rejects_names_the_model_lacks() -> None:
    model = Norms()
    other = Plan.from_table(zoo.params(model), ["fc.weight"])
    bad = Plan(
        params={**other.params, "fc.wieght": ParamPlan("fc.wieght", True)}, norms=other.norms
    )
    before = [p.requires_grad for p in model.parameters()]
    with pytest.raises(zoo.PlanError, match=r"fc\.wieght.*did you mean 'fc\.weight'"):
        apply_plan(model, bad)
    assert [p.requires_grad for p in model.parameters()] == before  # nothing changed
    with pytest.raises(zoo.PlanError, match="normalization layer"):
        apply_plan(model, Plan(params={}, norms={"bn9": "frozen"}))
    with pytest.raises(zoo.PlanError, match=r"expects a zoo\.Plan"):
        apply_plan(model, ["fc.weight"])  # type: ignore[arg-type]


def test_parameters_a_plan_omits_are_frozen_and_grads_cleared() -> None:
    model = Norms()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    apply_plan(model, Plan(params=[ParamPlan("fc.bias", True)]))
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.bias"]
    assert all(p.grad is None for n, p in model.named_parameters() if n != "fc.bias")


def test_check_frozen_reports_a_broken_freeze() -> None:
    model = Norms()
    freeze(model, "linear-probe")
    reference = snapshot(model)
    with torch.no_grad():
        model.conv.weight.add_(1e-3)
    nn.Module.train(model.bn2, True)  # bypass the pin, as a careless loop could
    model.bn2(torch.randn(4, 4, 2, 2))
    report = check_frozen(model, reference)
    assert not report.ok
    names = {c.name: c for c in report.changed}
    assert set(names) == {
        "conv.weight",
        "bn2.running_mean",
        "bn2.running_var",
        "bn2.num_batches_tracked",
    }
    assert names["conv.weight"].kind == "parameter"
    assert names["conv.weight"].max_abs_diff == pytest.approx(1e-3, rel=1e-2)
    assert names["bn2.running_mean"].kind == "statistic"
    with pytest.raises(zoo.FreezeViolationError, match=r"conv\.weight"):
        report.raise_if_changed()
    assert "freeze broken" in report.summary()


def test_check_frozen_against_a_state_dict_and_unchecked_tensors() -> None:
    model = Norms()
    freeze(model, "linear-probe")
    state = copy.deepcopy(model.state_dict())
    assert check_frozen(model, state).ok
    before_freeze = snapshot(Norms())  # nothing frozen yet: nothing to compare
    report = check_frozen(model, before_freeze)
    assert report.ok and "conv.weight" in report.unchecked
    with pytest.raises(zoo.PlanError, match="snapshot or a state dict"):
        check_frozen(model, 42)  # type: ignore[arg-type]


def test_snapshot_as_context_manager() -> None:
    model = Norms()
    freeze(model, "linear-probe")
    with snapshot(model) as snap:
        opt = torch.optim.AdamW(model.zoo.plan.param_groups(model, lr=0.1, weight_decay=0.1))
        train_steps(model, opt, torch.randn(4, 3, 6, 6), steps=1)
    assert snap.report is not None and snap.report.ok
    with pytest.raises(zoo.FreezeViolationError), snapshot(model), torch.no_grad():
        model.conv.bias.mul_(2.0).add_(1.0)


def test_trained_parameters_missing_from_the_optimizer_are_reported() -> None:
    model = Norms()
    result = freeze(model, "bitfit")
    reference = snapshot(model)
    groups = result.param_groups(model, lr=0.1, names=["fc.weight", "fc.bias"])
    train_steps(model, torch.optim.SGD(groups, lr=0.1), torch.randn(4, 3, 6, 6), steps=1)
    report = check_frozen(model, reference)
    assert report.ok
    assert "conv.bias" in report.not_moved and "fc.bias" not in report.not_moved
    assert "did not move" in report.summary()


def test_freeze_takes_a_plan_or_a_policy_with_arguments() -> None:
    model = Norms()
    computed = plan(model, "pattern", include=["fc.*"])
    assert freeze(model, computed) is computed
    with pytest.raises(zoo.PlanError, match="applied as is"):
        freeze(model, computed, depth=1)
    result = freeze(model, "freeze-to", depth=zoo.params(model).max_depth)
    assert result.args == {"depth": zoo.params(model).max_depth}


def test_optimizer_groups_schedules_and_the_head_through_torch_compile():
    """Plans, schedules and tables take a wrapped model and name the parameters of the model
    inside (``torch.compile`` prefixes them with ``_orig_mod.``)."""
    model = zoo.create("timm:resnet10t", num_classes=3)
    compiled = torch.compile(model, backend="eager")
    assert zoo.classifier_param_names(compiled) == ["fc.weight", "fc.bias"]
    plan = freeze(compiled, "linear-probe")
    groups = plan.param_groups(compiled, lr=0.1)
    assert [n for g in groups for n in g["param_names"]] == ["fc.weight", "fc.bias"]
    driver = zoo.ScheduleDriver(compiled, "gradual", every=1)
    optimizer = driver.optimizer(torch.optim.SGD, lr=0.1)
    step = driver.step(1)
    assert step.unfrozen and step.added_groups
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in model.parameters() if p.requires_grad} == held
    x = torch.randn(2, 3, 32, 32)
    compiled(x).sum().backward()
    optimizer.step()
