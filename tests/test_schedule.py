"""ScheduleDriver: gradual unfreezing from a plain training loop, optimizer kept in step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import zoo
from zoo.api import ScheduleDriver
from zoo.errors import PlanError, PolicyArgumentError
from zoo.plans.freeze import check_frozen, snapshot


class Net(nn.Module):
    """stem, three blocks with BatchNorm, a head: depths 0..4."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
            for _ in range(3)
        )
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.fc(x.mean((2, 3)))

    def get_classifier(self) -> nn.Module:
        return self.fc


def fit(model: nn.Module, opt: torch.optim.Optimizer, size: int = 8) -> None:
    model.train()
    x = torch.randn(2, 3, size, size)
    out = model(x)
    loss = out.logsumexp(-1).mean() + out.pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_gradual_on_resnet18_adds_groups_at_the_right_epochs():
    torch.manual_seed(0)
    model = zoo.create("timm:resnet18", num_classes=3)
    with torch.no_grad():  # like a checkpoint: no zero-initialized last norm per block
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
    driver = ScheduleDriver(model, "gradual:every=2")
    table = driver.table
    stages = {d.group: d.depth for d in table.depth_summary()}
    milestones = driver.milestones(12)
    assert sorted(milestones) == [2, 4, 6, 8, 10]
    assert {table[n].group for n in milestones[2]} == {"stage.4"}
    assert {table[n].group for n in milestones[10]} == {"stem"}

    opt = driver.optimizer(torch.optim.AdamW, lr=1e-2, weight_decay=0.05)
    assert driver.epoch == 0 and model.zoo.plan is driver.plan
    assert [g["param_names"] for g in opt.param_groups] == [["fc.weight"], ["fc.bias"]]
    groups_at: dict[int, int] = {}
    for epoch in range(5):
        step = driver.step(epoch)
        reference = snapshot(model)
        fit(model, opt, size=32)
        report = check_frozen(model, reference)
        assert report.ok and not report.not_moved, report.summary()
        groups_at[epoch] = len(opt.param_groups)
        if epoch in (2, 4):
            assert step.unfrozen == tuple(milestones[epoch]) and step.added_groups == 2
            assert {table[n].depth for n in step.unfrozen} == {
                stages["stage.4"] if epoch == 2 else stages["stage.3"]
            }
        else:
            assert not step.changed and step.added_groups == 0
    assert groups_at == {0: 2, 1: 2, 2: 4, 3: 4, 4: 6}
    # Adam state of the head was kept across the additions (5 steps), new ones started later
    state = opt.state[model.fc.weight]
    assert int(state["step"]) == 5
    assert int(opt.state[model.layer4[0].conv1.weight]["step"]) == 3
    assert int(opt.state[model.layer3[0].conv1.weight]["step"]) == 1
    assert not model.layer2[0].bn1.training and model.layer3[0].bn1.training


def test_look_ahead_without_touching_the_model():
    model = Net()
    driver = ScheduleDriver(model, "gradual", every=3)
    assert driver.is_schedule
    assert driver.trainable_at(0) == ["fc.weight", "fc.bias"]
    assert driver.unfrozen_at(0) == ["fc.weight", "fc.bias"]
    assert driver.unfrozen_at(1) == []
    assert driver.unfrozen_at(3) == [
        "blocks.2.0.weight",
        "blocks.2.0.bias",
        "blocks.2.1.weight",
        "blocks.2.1.bias",
    ]
    assert sorted(driver.milestones(100)) == [3, 6, 9, 12]
    assert all(p.requires_grad for p in model.parameters())  # nothing applied yet
    assert not hasattr(model, "zoo")  # no record: nothing applied
    with pytest.raises(PolicyArgumentError, match="epoch must be an int >= 0"):
        driver.plan_at(-1)


def test_step_switches_norm_modes_even_after_model_train():
    model = Net()
    driver = ScheduleDriver(model, "gradual")
    driver.step(0)
    model.train()
    assert not model.blocks[2][1].training
    step = driver.step(1)  # called after model.train(): the unfrozen BN trains at once
    assert "blocks.2.1.weight" in step.unfrozen
    assert model.blocks[2][1].training and not model.blocks[1][1].training
    assert model.blocks[2][0].weight.requires_grad and not model.blocks[1][0].weight.requires_grad


def test_attach_to_a_user_optimizer_and_scheduler():
    torch.manual_seed(0)
    model = Net()
    driver = ScheduleDriver(model, "gradual")
    driver.step(0)
    opt = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9, weight_decay=1e-3
    )
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    driver.attach(opt, scheduler=sched)
    fit(model, opt)
    sched.step()  # lr is now 0.05 = half the initial lr
    step = driver.step(1)
    assert step.added_groups == 2  # weights with decay, biases and norms without
    new = opt.param_groups[1:]
    assert all("param_names" not in g for g in opt.param_groups)  # like the user's group
    assert [g["lr"] for g in new] == [pytest.approx(0.05)] * 2  # joins at the current factor
    assert [g["initial_lr"] for g in new] == [0.1, 0.1]
    assert sorted(g["weight_decay"] for g in new) == [0.0, 1e-3]
    assert sched.base_lrs == [0.1, 0.1, 0.1]
    fit(model, opt)
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.025)] * 3


def test_parameters_already_in_the_optimizer_are_not_added_twice():
    model = Net()
    driver = ScheduleDriver(model, "gradual")
    driver.step(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)  # every parameter, frozen or not
    driver.attach(opt)
    for epoch in range(5):
        assert driver.step(epoch).added_groups == 0
    assert len(opt.param_groups) == 1
    assert all(p.requires_grad for p in model.parameters())


def test_a_non_schedule_policy_gives_the_same_plan_every_epoch():
    model = Net()
    driver = ScheduleDriver(model, "freeze-to:depth=2")
    assert not driver.is_schedule
    opt = driver.optimizer(torch.optim.SGD, lr=0.1)
    first = driver.plan
    for epoch in range(1, 4):
        step = driver.step(epoch)
        assert step.plan is first and not step.changed and step.added_groups == 0
    assert driver.milestones(10) == {}
    assert len(opt.param_groups) == 1


def test_refreezing_clears_gradients_and_keeps_them_out_of_updates():
    model = Net()
    driver = ScheduleDriver(model, "gradual")
    opt = driver.optimizer(torch.optim.SGD, lr=0.1)
    driver.step(1)
    fit(model, opt)
    step = driver.step(0)  # going back freezes the block again
    assert "blocks.2.0.weight" in step.frozen
    assert model.blocks[2][0].weight.grad is None
    reference = snapshot(model)
    fit(model, opt)
    assert check_frozen(model, reference).ok


def test_optimizer_with_nothing_to_train_is_an_error():
    model = nn.Sequential(nn.Conv2d(3, 4, 1))  # no classifier: linear-probe trains nothing
    driver = ScheduleDriver(model, "linear-probe")
    with pytest.raises(PlanError, match="nothing trains at epoch 0"):
        driver.optimizer(torch.optim.SGD, lr=0.1)


def test_layer_decay_scales_reach_the_new_groups():
    model = Net()
    driver = ScheduleDriver(model, "layer-decay:decay=0.5")
    opt = driver.optimizer(torch.optim.SGD, lr=1.0)
    scales = sorted({g["lr"] for g in opt.param_groups})
    assert scales == [0.0625, 0.125, 0.25, 0.5, 1.0]
