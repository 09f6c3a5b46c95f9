"""The built-in adapter policies lora, ssf and vpt: plans on the meta device (added parameters per
depth, the 2 % size bound), injection into real timm models, merging, errors, the CLI, zoo.adapt
and two DDP processes."""

from __future__ import annotations

import json
import math
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchrun_helpers import run_worker

import zoo
from zoo.cli.main import main

MODELS = ["timm:resnet18", "timm:vit_tiny_patch16_224", "timm:convnext_atto"]


def image(name, batch=2, seed=0):
    side = 224 if "vit" in name else 32
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(seed))


def _unzero(model):
    """Random init zeroes the last norm of each residual block (timm's zero_init_last), which
    hides whatever comes before it; trained weights do not."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)


def _perturb(model):
    """Make every adapter do something (B = 0, scale = 1, shift = 0 at first)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(f".{child}." in name for child in ("lora", "ssf")):
                param.add_(torch.randn_like(param) * 0.05)


# ---------------------------------------------------------------- plans on the meta device


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("policy", ["lora:rank=8", "ssf"])
def test_plan_shows_added_parameters_per_depth(name, policy):
    table = zoo.params(name, num_classes=10)
    plan = zoo.plan(table, policy)
    depths = table.depth_summary(plan)
    added = {d.depth: d.added_numel for d in depths}
    assert sum(added.values()) == plan.added_numel() == sum(a.numel for a in plan.additions) > 0
    assert added[table.max_depth] == 0  # never in the head
    if policy.startswith("lora"):
        assert added[0] == 0  # never in the stem
    assert all(
        added[d] > 0 for d in range(1, table.max_depth) if table.at_depth(d)[0].group != "neck"
    )
    base = sum(r.numel for r in table)
    head = sum(r.numel for r in table if r.role == "head")
    assert plan.numel() == base + plan.added_numel()
    assert plan.numel(trainable=True) == head + plan.added_numel()
    for d in depths:  # the per-depth counts include what is added
        assert d.numel == sum(r.numel for r in table.at_depth(d.depth)) + d.added_numel
    assert "adds " in plan.summary()


def test_vpt_plans_prompts_per_block_of_a_vit():
    plan = zoo.plan("timm:vit_tiny_patch16_224", "vpt:tokens=5,min_depth=3")
    table = plan.table
    targets = [a.target for a in plan.additions]
    blocks = [a for a in plan.additions]
    assert targets == [
        f"blocks.{i}" for i in range(12) if table[f"blocks.{i}.norm1.weight"].depth >= 3
    ]
    assert all(a.params == {"vpt.prompts": (5, 192)} for a in blocks)
    assert all(a.args == {"tokens": 5, "prefix_tokens": 1} for a in blocks)


@pytest.mark.parametrize(
    ("name", "bound"), [("timm:resnet50", 0.02), ("timm:vit_base_patch16_224", 0.02)]
)
def test_lora_rank_8_saves_within_2_percent_of_the_full_model(name, bound):
    """What an adapted model saves (adapters + the 10-class head), from the meta plan."""
    table = zoo.params(name, num_classes=10)
    plan = zoo.plan(table, "lora:rank=8")
    full = sum(r.numel for r in table)
    saved = plan.numel(trainable=True)
    assert saved == plan.added_numel() + sum(r.numel for r in table if r.role == "head")
    assert saved / full <= bound, f"{saved / full:.2%}"


def test_lora_default_targets_are_body_linears_and_spatial_convs():
    vit = zoo.plan("timm:vit_tiny_patch16_224", "lora")
    assert {a.target.split(".", 2)[2] for a in vit.additions} == {
        "attn.qkv",
        "attn.proj",
        "mlp.fc1",
        "mlp.fc2",
    }
    qkv = next(a for a in vit.additions if a.target == "blocks.0.attn.qkv")
    assert qkv.params == {"lora.A": (8, 192), "lora.B": (576, 8)}  # fused qkv: one update
    resnet = zoo.plan("timm:resnet50", "lora")
    assert all(a.target.endswith("conv2") for a in resnet.additions)  # 3x3 only
    assert len(resnet.additions) == 16
    conv = resnet.additions[0]
    assert conv.params == {"lora.A": (8, 64, 3, 3), "lora.B": (64, 8, 1, 1)}  # PEFT's layout
    picked = zoo.plan("timm:resnet18", "lora:targets=layer4.*.conv1,layer4.0.downsample.0")
    assert [a.target for a in picked.additions] == [
        "layer4.0.conv1",
        "layer4.0.downsample.0",
        "layer4.1.conv1",
    ]


@pytest.mark.parametrize(
    ("policy", "error", "message"),
    [
        ("lora:rank=0", zoo.PolicyArgumentError, "rank"),
        ("lora:dropout=1.5", zoo.PolicyArgumentError, "dropout"),
        ("lora:targets=layer9.*", zoo.PolicyArgumentError, "matches no module"),
        ("lora:targets=bn1", zoo.PolicyArgumentError, "only BatchNorm2d"),
        ("lora:min_depth=9", zoo.PolicyArgumentError, "min_depth"),
        ("lora:norms=warm", zoo.PolicyArgumentError, "norms"),
        ("vpt", zoo.PlanError, "token-based backbone.*use lora or ssf"),
        ("vpt:tokens=0", zoo.PolicyArgumentError, "tokens"),
    ],
)
def test_bad_arguments_and_backbones_are_clear_errors(policy, error, message):
    with pytest.raises(error, match=message):
        zoo.plan("timm:resnet18", policy)


# ---------------------------------------------------------------- real models


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("policy", ["lora:rank=4", "ssf"])
def test_freeze_injects_keeps_outputs_and_merges(name, policy):
    torch.manual_seed(0)
    model = zoo.create(name, num_classes=5).eval()
    _unzero(model)
    base_keys = set(model.state_dict())
    x = image(name)
    with torch.no_grad():
        before = model(x)
    plan = zoo.freeze(model, policy)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    heads = {r.name for r in plan.table if r.role == "head"}
    assert trainable == set(plan.added_names) | heads
    assert len(zoo.adapters(model)) == len(plan.additions)
    with torch.no_grad():
        assert torch.equal(model(x), before)  # B = 0, scale = 1, shift = 0
        _perturb(model)
        adapted = model(x)
        assert (adapted - before).abs().max() > 1e-3
        zoo.merge_adapters(model)
        merged = model(x)
    assert (merged - adapted).abs().max() <= 1e-5
    assert zoo.adapters(model) == [] and set(model.state_dict()) == base_keys
    assert not any(isinstance(m, zoo.Adapter) for m in model.modules())


def test_vpt_changes_outputs_not_shapes_and_refuses_to_merge():
    torch.manual_seed(0)
    model = zoo.create("timm:vit_tiny_patch16_224", num_classes=5).eval()
    x = image("vit")
    with torch.no_grad():
        before = model(x)
        tokens = model.forward_features(x).shape
    plan = zoo.freeze(model, "vpt:tokens=4")
    assert len(plan.additions) == 12
    with torch.no_grad():
        after = model(x)
        assert model.forward_features(x).shape == tokens  # prompts dropped after each block
    assert after.shape == before.shape and not torch.equal(after, before)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(zoo.AdapterMergeError, match=r"zoo:vpt.*Nothing was changed"):
        zoo.merge_adapters(model)
    assert len(zoo.adapters(model)) == 12
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    loss = model(x).sum()
    loss.backward()
    assert model.blocks[0].vpt.prompts.grad is not None


class Convs(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.full = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8)
        self.grouped = nn.Conv2d(8, 8, 1, groups=2)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = self.grouped(self.depthwise(self.full(self.stem(x))))
        return self.head(x.mean((2, 3)))

    def get_classifier(self):
        return self.head


def test_lora_on_conv2d_groups_1_depthwise_and_grouped_matches_the_delta_weight():
    torch.manual_seed(0)
    model = Convs().eval()
    plan = zoo.freeze(model, "lora:rank=2,alpha=3,targets=full,depthwise,grouped")
    shapes = {a.target: a.params for a in plan.additions}
    assert shapes["full"] == {"lora.A": (2, 6, 3, 3), "lora.B": (8, 2, 1, 1)}
    assert shapes["depthwise"] == {"lora.A": (2, 1, 3, 3), "lora.B": (8, 2, 1, 1)}
    x = torch.randn(2, 3, 16, 16)
    _perturb(model)
    with torch.no_grad():
        for conv in (model.full, model.depthwise, model.grouped):  # an independent reference
            lora = conv.lora
            delta = (lora.B.flatten(1) @ lora.A.flatten(1)).view_as(conv.weight) * 1.5
            h = torch.randn(2, conv.in_channels, 9, 9)
            expected = F.conv2d(
                h,
                conv.weight + delta,
                conv.bias,
                conv.stride,
                conv.padding,
                conv.dilation,
                conv.groups,
            )
            assert (conv(h) - expected).abs().max() < 1e-5
        adapted = model(x)
        zoo.merge_adapters(model)
        assert (model(x) - adapted).abs().max() < 1e-5


@pytest.mark.parametrize(("norms", "mode"), [("train", "train"), ("frozen-stats", "frozen-stats")])
def test_norms_argument_trains_norm_affines(norms, mode):
    plan = zoo.plan("timm:resnet18", f"ssf:norms={norms}")
    norm_params = {r.name for r in plan.table if r.role == "norm"}
    assert norm_params <= set(plan.trainable)
    assert set(plan.norms.values()) == {zoo.NormMode(mode)}
    default = zoo.plan("timm:resnet18", "ssf")
    assert not norm_params & set(default.trainable)
    assert set(default.norms.values()) == {zoo.NormMode.FROZEN}


# ---------------------------------------------------------------- command line


def test_cli_plan_shows_added_parameters(capsys):
    plan = zoo.plan("timm:resnet18", "lora:rank=8")
    added, base = plan.added_numel(), sum(r.numel for r in plan.table)
    trained = added + sum(r.numel for r in plan.table if r.role == "head")
    assert main(["plan", "timm:resnet18", "-p", "lora:rank=8"]) == 0
    text = capsys.readouterr().out
    assert f"adds {added / 1000:.2f}K parameters in 16 adapters (zoo:lora)" in text
    header = next(line for line in text.splitlines() if line.startswith("depth"))
    assert header.split()[:5] == ["depth", "group", "params", "added", "trained"]
    assert main(["plan", "timm:resnet18", "-p", "lora:rank=8", "--json", "--full"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["added_numel"] == added and len(data["additions"]) == 16
    assert data["plan"]["additions"] == data["additions"]
    assert sum(d["added_numel"] for d in data["depths"]) == added
    assert data["trainable_numel"] == trained and data["total_numel"] == base + added
    assert math.isclose(data["trainable_percent"], 100 * trained / (base + added), abs_tol=1e-3)
    rows = [p for p in data["params"] if p.get("added")]
    assert len(rows) == 32 and sum(p["numel"] for p in rows) == added
    assert main(["plan", "timm:resnet18", "-p", "vpt"]) == 1
    assert "use lora or ssf instead" in capsys.readouterr().err


# ---------------------------------------------------------------- zoo.adapt and DDP


def test_adapt_trains_only_adapters_and_head(colours):
    torch.manual_seed(0)
    start = zoo.create("timm:test_resnet", num_classes=3)
    _unzero(start)
    reference = {k: v.clone() for k, v in start.state_dict().items()}
    model, history = zoo.adapt(
        start,
        colours / "train",
        policy="lora:rank=2",
        epochs=1,
        image_size=32,
        batch_size=8,
        lr=1e-2,
    )
    plan = model.zoo.plan
    assert plan.policy == "zoo:lora" and plan.additions
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == set(plan.added_names) | {"fc.weight", "fc.bias"}
    report = zoo.check_frozen(model, reference)
    assert report.ok and report.checked_params > 0
    assert not history.feature_cache
    after = model.state_dict()
    assert not torch.equal(after["fc.weight"], reference["fc.weight"])
    assert any(
        not torch.equal(after[n], torch.zeros_like(after[n]))
        for n in plan.added_names
        if n.endswith(".B")
    )


def test_compare_accepts_adapter_policies(colours):
    torch.manual_seed(0)
    start = zoo.create("timm:test_resnet", num_classes=3)
    _unzero(start)
    reference = {k: v.clone() for k, v in start.state_dict().items()}
    result = zoo.compare(
        start,
        colours / "train",
        colours / "val",
        policies=["lora:rank=2", "ssf"],
        epochs=1,
        image_size=32,
        batch_size=8,
    )
    rows = {row.policy.split(":")[1]: row for row in result.leaderboard.rows}
    assert set(rows) == {"lora", "ssf"}
    assert rows["ssf"].trainable_params < rows["lora"].trainable_params
    winner = result.model
    assert zoo.adapters(winner) and winner.zoo.plan.additions
    assert zoo.check_frozen(winner, reference).ok


WORKER = textwrap.dedent(
    """
    import os, sys
    import torch
    torch.set_num_threads(1)
    import zoo

    out, data = sys.argv[1], sys.argv[2]
    rank = int(os.environ["RANK"])
    torch.manual_seed(0)
    model = zoo.create("timm:test_resnet", num_classes=3)
    with torch.no_grad():  # as trained weights: no zero-initialised last norm per block
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
    if rank == 0:
        torch.save(model.state_dict(), os.path.join(out, "init.pt"))
    model, history = zoo.adapt(
        model, data, policy="lora:rank=2", epochs=2, image_size=32, batch_size=4, lr=1e-2,
        seed=1,
    )
    assert history.world_size == 2
    torch.save(model.state_dict(), os.path.join(out, f"rank{rank}.pt"))
    """
)


@pytest.mark.slow
def test_lora_under_torchrun_two_processes(tmp_path, colours):
    out = tmp_path / "out"
    out.mkdir()
    proc = run_worker(tmp_path, WORKER, out, colours / "train")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    init = torch.load(out / "init.pt")
    rank0, rank1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert set(rank0) == set(rank1) and set(rank0) > set(init)
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key  # replicas agree, adapters included
    for key in init:  # the base never changed (norm statistics included), the head trained
        assert torch.equal(init[key], rank0[key]) == (not key.startswith("fc.")), key
    lora_b = [k for k in rank0 if k.endswith(".lora.B")]
    assert lora_b and any(rank0[k].abs().sum() > 0 for k in lora_b)


# ---------------------------------------------------------------- awkward targets


class QBiasBlock(nn.Module):
    """BEiT/EVA-style attention: qkv without bias, q/v biases of its own, F.linear on the weight."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(8))
        self.v_bias = nn.Parameter(torch.zeros(8))
        self.proj = nn.Linear(24, 8)

    def forward(self, x):
        bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        return x + self.proj(F.linear(x, self.qkv.weight, bias))


class QBiasNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 8)
        self.blocks = nn.Sequential(QBiasBlock(), QBiasBlock())
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))

    def get_classifier(self):
        return self.head


def test_lora_leaves_out_qkv_linears_their_attention_bypasses():
    model = QBiasNet()
    plan = zoo.freeze(model, "lora")
    assert [a.target for a in plan.additions] == ["blocks.0.proj", "blocks.1.proj"]
    assert any("2 fused qkv linears left out" in note for note in plan.notes)
    model(torch.randn(2, 4))  # every adapter runs: the dead-adapter check passes
    with pytest.raises(zoo.PolicyArgumentError, match="bypasses"):
        zoo.plan(QBiasNet(), "lora:targets=*.qkv")


def test_lora_on_timm_same_padded_and_standardized_convs():
    from timm.layers import Conv2dSame, StdConv2d

    torch.manual_seed(0)
    model = Convs()
    model.full = Conv2dSame(6, 8, 3, stride=2)
    model.depthwise = StdConv2d(8, 8, 3, padding=1)
    model.eval()
    plan = zoo.freeze(model, "lora:rank=2,targets=full,depthwise")
    assert any("before standardization" in note for note in plan.notes)
    _perturb(model)
    h = torch.randn(2, 6, 15, 15)
    with torch.no_grad():
        same = model.full
        delta = same.lora.delta_weight(same)
        reference = Conv2dSame(6, 8, 3, stride=2)
        reference.load_state_dict({"weight": same.weight + delta, "bias": same.bias})
        assert (same(h) - reference(h)).abs().max() < 1e-5
        std = model.depthwise
        h = torch.randn(2, 8, 9, 9)
        # the update joins the weight before standardization: merging is exact
        plain = StdConv2d(8, 8, 3, padding=1)
        plain.load_state_dict({"weight": std.weight + std.lora.delta_weight(std)})
        assert (std(h) - plain(h)).abs().max() < 1e-6
        x = torch.randn(2, 3, 15, 15)
        before = model(x)
    zoo.merge_adapters(model)
    assert zoo.adapters(model) == []
    with torch.no_grad():
        assert (model(x) - before).abs().max() < 1e-5
        assert (model.depthwise(h) - plain(h)).abs().max() < 1e-6


class NFBlock(nn.Module):
    """NFNet-like: scaled weight-standardized convs with a bias and a gain, no norm layers."""

    def __init__(self) -> None:
        super().__init__()
        from timm.layers import ScaledStdConv2d, ScaledStdConv2dSame

        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.conv1 = ScaledStdConv2d(6, 8, 3, padding=1)
        self.conv2 = ScaledStdConv2dSame(8, 8, 3, stride=2)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = self.conv2(F.relu(self.conv1(F.relu(self.stem(x)))))
        return self.head(x.mean((2, 3)))

    def get_classifier(self):
        return self.head


@pytest.mark.parametrize("policy", ["lora:rank=2", "ssf"])
def test_nfnet_scaled_std_convs_take_lora_and_ssf_and_merge_exactly(policy):
    torch.manual_seed(0)
    model = NFBlock().eval()
    with torch.no_grad():
        base = model(torch.zeros(1, 3, 9, 9))
    plan = zoo.freeze(model, policy)
    assert [a.target for a in plan.additions][-2:] == ["conv1", "conv2"]
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        assert (model(torch.zeros(1, 3, 9, 9)) - base).abs().max() == 0  # identity at init
    _perturb(model)
    model(x).sum().backward()
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0
        for p in model.conv1.parameters()
        if p.requires_grad
    )
    with torch.no_grad():
        adapted = model(x)
        zoo.merge_adapters(model)
        assert zoo.adapters(model) == []
        assert (model(x) - adapted).abs().max() < 1e-5
    assert {k for k in model.state_dict()} == set(NFBlock().state_dict())


def test_nfnet_plans_lora_and_ssf_on_its_convs():
    lora = zoo.plan("timm:nfnet_l0", "lora:rank=8")
    ssf = zoo.plan("timm:nfnet_l0", "ssf")
    assert len(lora.additions) > 10 and len(ssf.additions) > 10
    assert "stages.0.0.conv2" in {a.target for a in ssf.additions}


class FixedTokens(nn.Module):
    """A block whose attention is biased per token pair: it takes exactly 5 tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.pair_bias = nn.Parameter(torch.zeros(5, 5))

    def forward(self, x):
        attn = (x @ x.transpose(1, 2) + self.pair_bias).softmax(-1)
        return x + self.fc(attn @ x)


class TinyViT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Linear(4, 8)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 8))
        self.blocks = nn.Sequential(FixedTokens(), FixedTokens())
        self.head = nn.Linear(8, 2)

    def forward(self, x):  # x: [batch, 4 patches, 4]
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), self.patch(x)], 1) + self.pos_embed
        return self.head(self.blocks(x)[:, 0])

    def get_classifier(self):
        return self.head


def test_vpt_on_a_block_that_cannot_take_more_tokens_is_a_clear_error():
    model = TinyViT()
    plan = zoo.freeze(model, "vpt:tokens=3")
    assert [a.target for a in plan.additions] == ["blocks.0", "blocks.1"]
    assert plan.additions[0].args == {"tokens": 3, "prefix_tokens": 1}
    with pytest.raises(zoo.AdapterError, match=r"cannot take 3 extra tokens.*use lora or ssf"):
        model(torch.randn(2, 4, 4))


# ---------------------------------------------------------------- vpt across the ViT family


@pytest.mark.parametrize(
    ("name", "count", "width", "prefix"),
    [
        ("vit_srelpos_small_patch16_224", 12, 384, 0),  # no cls_token/pos_embed: width of norm1
        ("naflexvit_base_patch16_map", 12, 768, 1),  # nested embeds.reg_token
        ("convit_tiny", 2, 192, 1),  # GPSA blocks 0-9 left out
        ("vit_base_patch16_rope_224", 12, 768, 1),
    ],
)
def test_vpt_plans_on_vit_family_layouts(name, count, width, prefix):
    plan = zoo.plan(f"timm:{name}", "vpt:tokens=4")
    assert len(plan.additions) == count
    assert {a.params["vpt.prompts"] for a in plan.additions} == {(4, width)}
    assert {a.args["prefix_tokens"] for a in plan.additions} == {prefix}
    if name == "convit_tiny":
        assert [a.target for a in plan.additions] == ["blocks.10", "blocks.11"]
        assert any("GPSA" in note for note in plan.notes)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("hiera_tiny_224", "change width"),
        ("beit_base_patch16_224", "relative position bias"),
    ],
)
def test_vpt_refuses_blocks_that_cannot_take_tokens_at_plan_time(name, reason):
    with pytest.raises(zoo.PlanError, match=f"{reason}.*use lora or ssf"):
        zoo.plan(f"timm:{name}", "vpt")


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("vit_srelpos_small_patch16_224", {"depth": 2}),  # shared relative position bias
        ("convit_tiny", {"depth": 3, "local_up_to_layer": 2}),  # GPSA, then plain blocks
        ("eva02_tiny_patch14_224", {"depth": 2, "img_size": 28}),  # rotary embeddings
    ],
)
def test_vpt_runs_and_trains_on_small_vit_family_models(name, kwargs):
    torch.manual_seed(0)
    model = zoo.create(f"timm:{name}", num_classes=3, **{"img_size": 32, **kwargs}).eval()
    side = kwargs.get("img_size", 32)
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        base = model(x)
    plan = zoo.freeze(model, "vpt:tokens=3")
    out = model(x)
    assert out.shape == base.shape and (out - base).abs().max() > 0
    out.sum().backward()
    for addition in plan.additions:
        prompts = model.get_submodule(addition.target).vpt.prompts
        assert prompts.grad is not None and prompts.grad.abs().sum() > 0
    attn_prefix = [getattr(b.attn, "num_prefix_tokens", 0) for b in model.blocks]
    assert attn_prefix == [
        getattr(b.attn, "num_prefix_tokens", 0)
        for b in zoo.create(f"timm:{name}", num_classes=3, **{"img_size": 32, **kwargs}).blocks
    ]
    zoo.plans.adapters.remove_adapters(model)
    with torch.no_grad():
        assert (model(x) - base).abs().max() == 0


def test_vpt_on_xcit_skips_the_local_patch_interaction_and_trains_only_prompts():
    torch.manual_seed(0)
    model = zoo.create("timm:xcit_nano_12_p16_224", num_classes=3, depth=2, img_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        base = model(x)
    plan = zoo.freeze(model, "vpt:tokens=3")
    assert [a.target for a in plan.additions] == ["blocks.0", "blocks.1"]  # not cls_attn_blocks
    assert plan.additions[0].args == {"tokens": 3, "prefix_tokens": 0, "skip": "local_mp"}
    assert any("skip each block's 'local_mp'" in note for note in plan.notes)
    seen = []
    model.blocks[0].local_mp.conv1.register_forward_hook(lambda m, a, o: seen.append(o.shape))
    out = model(x)
    assert out.shape == base.shape and (out - base).abs().max() > 0
    assert seen[-1][2:] == (2, 2)  # the 2x2 patch grid, without the prompts
    out.sum().backward()
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {"blocks.0.vpt.prompts", "blocks.1.vpt.prompts", "head.weight", "head.bias"}
    for addition in plan.additions:
        prompts = model.get_submodule(addition.target).vpt.prompts
        assert prompts.grad is not None and prompts.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trained)
    branch = model.blocks[0].local_mp
    assert len(branch._forward_pre_hooks) == 1 and len(branch._forward_hooks) == 1
    model(x)  # hooks installed once, not per call
    assert len(branch._forward_pre_hooks) == 1
    with pytest.raises(zoo.AdapterMergeError, match="zoo:vpt"):
        zoo.merge_adapters(model)
    zoo.plans.adapters.remove_adapters(model)
    with torch.no_grad():
        assert (model(x) - base).abs().max() == 0  # the skip hooks removed themselves
    assert not branch._forward_pre_hooks and not branch._forward_hooks


class ConvInBlock(nn.Module):
    """A block whose MLP is a convolution over the patch grid: no room for prompts."""

    def __init__(self) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(8)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        grid = x.transpose(1, 2).reshape(len(x), 8, 2, 2)
        return x + self.conv(grid).flatten(2).transpose(1, 2)


def test_vpt_refuses_a_convolution_inside_a_block_outside_a_skippable_branch():
    model = TinyViT()
    model.blocks = nn.Sequential(ConvInBlock(), ConvInBlock())
    with pytest.raises(zoo.PlanError, match=r"reshape the tokens into the patch grid.*lora or ssf"):
        zoo.freeze(model, "vpt")


def test_lora_falls_back_to_1x1_convs_when_the_body_has_nothing_else():
    plan = zoo.plan("timm:levit_conv_128s", "lora:rank=4")  # attention and MLPs: 1x1 convs
    assert plan.additions and all(a.params["lora.A"][2:] == (1, 1) for a in plan.additions)
    assert any("1x1 convs" in note for note in plan.notes)
    resnet = zoo.plan("timm:resnet18", "lora:rank=4")  # k x k convs exist: no 1x1 ones
    assert all(a.params["lora.A"][2:] == (3, 3) for a in resnet.additions)
