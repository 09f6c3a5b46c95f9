"""``model.zoo``, the one record zoo keeps on a model, and ``zoo.unwrap``.

The record after create, load, adapt and compare; the plugin hints ``zoo_classes`` and
``zoo_input_config`` read into it; and the public functions that take a model working the same
on the model inside ``torch.compile``, DistributedDataParallel (gloo, one process, in process)
and FSDP2 ``fully_shard`` (two real gloo processes on the CPU).
"""

from __future__ import annotations

import textwrap

import pytest
import torch
from test_data import make_color_folder
from torch import nn
from torchrun_helpers import run_worker

import zoo
from zoo.core.record import BuildArgs, record_of
from zoo.io.fileformat import read_file

BACKBONE = "timm:test_resnet"  # a tiny timm ResNet: stem, 4 stages, fc
#: The names the record replaced: none of them stays on a model zoo built, loaded or adapted.
OLD_NAMES = (
    "zoo_build",
    "zoo_input_config",
    "zoo_classes",
    "zoo_plan",
    "zoo_metadata",
    "zoo_training",
    "zoo_compare",
    "zoo_history",
)


def _no_old_attributes(model: nn.Module) -> bool:
    return not any(hasattr(model, name) for name in OLD_NAMES)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("colours")
    make_color_folder(root / "train", per_class=4, size=32, seed=0)
    make_color_folder(root / "val", per_class=2, size=32, seed=1)
    return root


# ---------------------------------------------------------------- the record


def test_create_gives_the_model_one_record():
    model = zoo.create(BACKBONE, num_classes=3, drop_rate=0.1)
    record = model.zoo
    assert isinstance(record, zoo.ModelRecord) and record_of(model) is record
    assert record.build == BuildArgs(BACKBONE, num_classes=3, kwargs={"drop_rate": 0.1})
    assert record.input_config == zoo.get_backbone(BACKBONE).input_config
    assert (record.classes, record.plan, record.base) == (None, None, None)
    assert (record.training, record.compare, record.metadata) == (None, None, {})
    assert _no_old_attributes(model)
    plan = zoo.freeze(model, "linear-probe")
    assert model.zoo.plan is plan


def test_load_puts_the_saved_record_back(tmp_path):
    model = zoo.create(BACKBONE, num_classes=2)
    model.zoo.classes = ["cat", "dog"]
    zoo.freeze(model, "linear-probe")
    path = zoo.save(model, tmp_path / "m.safetensors")
    loaded = zoo.load(path)
    record = loaded.zoo
    assert record.build == model.zoo.build
    assert record.input_config == model.zoo.input_config
    assert record.classes == ["cat", "dog"]
    assert record.plan.trainable == model.zoo.plan.trainable
    assert record.base == {
        "kind": "file",
        "ref": str(path.resolve()),
        "sha256": record.base["sha256"],
    }
    assert record.metadata == read_file(path).metadata
    assert record.training is None and record.compare is None
    assert _no_old_attributes(loaded)


def test_adapt_records_its_run_on_the_model(data):
    model, history = zoo.adapt(
        BACKBONE,
        data / "train",
        data / "val",
        policy="linear-probe",
        epochs=1,
        image_size=32,
        batch_size=4,
        scratch=True,
    )
    record = model.zoo
    assert record.build.backbone == BACKBONE and record.build.num_classes == 3
    assert record.classes == history.classes == ["blue", "green", "red"]
    assert record.input_config.input_size == (3, 32, 32)
    assert record.plan.policy == "zoo:linear-probe"
    assert record.training == history.training_record(1)
    assert record.compare is None
    assert _no_old_attributes(model)  # the history is the result's, not the model's


def test_compare_records_the_leaderboard_on_the_winner(data, tmp_path):
    result = zoo.compare(
        BACKBONE,
        data / "train",
        data / "val",
        policies=["linear-probe", "norm-only"],
        epochs=1,
        image_size=32,
        batch_size=4,
        scratch=True,
        name="best",
    )
    record = result.model.zoo
    assert record.compare == result.leaderboard.to_dict()
    assert record.compare["winner"] == result.leaderboard.winner.policy
    assert record.plan.spec_text == result.leaderboard.winner.policy
    assert record.classes == ["blue", "green", "red"]
    assert record.training is not None
    assert _no_old_attributes(result.model)
    saved = zoo.load("best").zoo
    assert saved.plan.spec_text == record.plan.spec_text and saved.classes == record.classes


# ---------------------------------------------------------------- plugin hints


class Hints:
    """A third-party plugin whose ``create`` sets the two hints on the model it returns."""

    @staticmethod
    @zoo.hookimpl
    def zoo_register_backbones(register):
        def create(num_classes=None, pretrained=False, classes=("a", "b"), size=48):
            model = nn.Sequential(
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, num_classes or 2)
            )
            model.zoo_classes = list(classes) if classes is not None else "not a list"
            model.zoo_input_config = zoo.InputConfig(input_size=(3, size, size))
            return model

        register(zoo.BackboneSpec(name="hinted", create=create))


def test_a_plugins_hints_go_into_the_record_and_off_the_model(zoo_register_plugin, tmp_path):
    zoo_register_plugin(Hints(), name="hints")
    model = zoo.create("hints:hinted")
    assert model.zoo.classes == ["a", "b"]
    assert model.zoo.input_config.input_size == (3, 48, 48)
    assert not hasattr(model, "zoo_classes") and not hasattr(model, "zoo_input_config")
    loaded = zoo.load(zoo.save(model, tmp_path / "m.safetensors"))
    assert loaded.zoo.classes == ["a", "b"]
    assert loaded.zoo.input_config.input_size == (3, 48, 48)
    odd = zoo.create("hints:hinted", classes=None)  # a hint of the wrong type is ignored
    assert odd.zoo.classes is None and not hasattr(odd, "zoo_classes")


# ---------------------------------------------------------------- unwrap


def _saved(path):
    """A saved file's tensors and its metadata less the creation time (and the seal over it)."""
    saved = read_file(path)
    skip = {"zoo.created", "zoo.content_sha256"}
    return saved.tensors, {k: v for k, v in saved.metadata.items() if k not in skip}


def _same_file(left, right) -> bool:
    (tensors_a, meta_a), (tensors_b, meta_b) = _saved(left), _saved(right)
    return (
        meta_a == meta_b
        and tensors_a.keys() == tensors_b.keys()
        and all(torch.equal(tensors_a[k], tensors_b[k]) for k in tensors_a)
    )


def test_unwrap_sees_through_nested_wrappers():
    model = nn.Linear(2, 2)
    assert zoo.unwrap(model) is model
    wrapped = torch.compile(nn.DataParallel(torch.compile(model, backend="eager")), backend="eager")
    assert zoo.unwrap(wrapped) is model


def test_a_compiled_model_runs_and_saves_as_the_model(tmp_path):
    torch.manual_seed(0)
    model = zoo.create(BACKBONE, num_classes=3).eval()
    model.zoo.classes = ["a", "b", "c"]
    compiled = torch.compile(model, backend="eager")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(compiled(x), model(x))
    assert zoo.unwrap(compiled) is model and record_of(compiled) is model.zoo
    assert zoo.params(compiled).to_dict() == zoo.params(model).to_dict()
    plain = zoo.save(model, tmp_path / "plain.safetensors")
    assert _same_file(zoo.save(compiled, tmp_path / "compiled.safetensors"), plain)
    predicted = zoo.predict(compiled, x, topk=3)  # the class names come from the record
    assert predicted == zoo.predict(model, x, topk=3) and {p.label for p in predicted} <= {
        "a",
        "b",
        "c",
    }


def test_freeze_and_the_freeze_check_through_torch_compile():
    model = zoo.create(BACKBONE, num_classes=3)
    compiled = torch.compile(model, backend="eager")
    plan = zoo.freeze(compiled, "linear-probe")
    assert model.zoo.plan is plan and not hasattr(compiled, "zoo_plan")
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    reference = zoo.snapshot(compiled)
    with torch.no_grad():
        model.fc.weight.add_(1.0)  # trainable: allowed
    assert zoo.check_frozen(compiled, reference).ok
    name, frozen = next((n, p) for n, p in model.named_parameters() if not p.requires_grad)
    with torch.no_grad():
        frozen.add_(1.0)
    report = zoo.check_frozen(compiled, reference)
    assert [c.name for c in report.changed] == [name]  # the model's own names


def test_adapters_and_merging_through_torch_compile():
    model = zoo.create(BACKBONE, num_classes=3)
    compiled = torch.compile(model, backend="eager")
    zoo.freeze(compiled, "lora:rank=2")
    added = zoo.adapters(model)
    assert added and zoo.adapters(compiled) == added
    assert zoo.merge_adapters(compiled) is compiled
    assert zoo.adapters(model) == [] and not model.zoo.plan.additions


def test_ddp_in_one_gloo_process(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    assert not dist.is_initialized()
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        model = zoo.create(BACKBONE, num_classes=3)
        zoo.freeze(model, "linear-probe")
        ddp = DistributedDataParallel(model)
        assert zoo.unwrap(ddp) is model and record_of(ddp) is model.zoo
        assert zoo.params(ddp).to_dict() == zoo.params(model).to_dict()
        reference = zoo.snapshot(ddp)
        ddp(torch.randn(2, 3, 32, 32)).sum().backward()
        torch.optim.SGD([p for p in ddp.parameters() if p.requires_grad], lr=0.1).step()
        report = zoo.check_frozen(ddp, reference)
        assert report.ok and report.checked_params > 0 and not report.not_moved
        plain = zoo.save(model, tmp_path / "plain.safetensors")
        assert _same_file(zoo.save(ddp, tmp_path / "ddp.safetensors"), plain)
    finally:
        dist.destroy_process_group()


FSDP_WORKER = textwrap.dedent(
    """
    import os, sys
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    torch.set_num_threads(1)
    import zoo

    out = sys.argv[1]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)  # the same initial weights on both ranks
    model = zoo.create("timm:test_resnet", num_classes=3).eval()
    model.zoo.classes = ["a", "b", "c"]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(x)
    if rank == 0:
        torch.save({"x": x, "y": reference}, os.path.join(out, "reference.pt"))
        zoo.save(model, os.path.join(out, "plain.safetensors"))
    fully_shard(model)
    assert zoo.unwrap(model) is model and model.zoo.classes == ["a", "b", "c"]
    assert type(next(model.parameters())).__name__ == "DTensor"
    with torch.no_grad():
        assert torch.allclose(model(x), reference, atol=1e-6)
    path = zoo.save(model, os.path.join(out, "sharded.safetensors"))
    with open(os.path.join(out, f"path{rank}.txt"), "w") as f:
        f.write(str(path))
    try:  # process 0 refuses a delta without a base: every rank raises
        zoo.save(model, os.path.join(out, "delta.safetensors"), delta=True)
    except zoo.ZooError as exc:
        with open(os.path.join(out, f"refused{rank}.txt"), "w") as f:
            f.write(type(exc).__name__ + ": " + str(exc))
    del model  # its DTensors go before their process group, on both ranks together
    dist.barrier()
    dist.destroy_process_group()
    """
)


@pytest.mark.slow
def test_save_of_a_fully_sharded_model_in_two_processes(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc = run_worker(tmp_path, FSDP_WORKER, out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sharded = out / "sharded.safetensors"
    assert [(out / f"path{r}.txt").read_text() for r in (0, 1)] == [str(sharded)] * 2
    assert (out / "refused0.txt").read_text().startswith("MissingBaseError: a delta stores")
    assert (
        (out / "refused1.txt")
        .read_text()
        .startswith(
            "ZooError: process 0 could not save the model: MissingBaseError: a delta stores"
        )
    )
    assert not (out / "delta.safetensors").exists()
    assert _same_file(sharded, out / "plain.safetensors")
    reference = torch.load(out / "reference.pt")
    model = zoo.load(sharded)
    assert model.zoo.classes == ["a", "b", "c"]
    with torch.no_grad():
        assert torch.equal(model(reference["x"]), reference["y"])
