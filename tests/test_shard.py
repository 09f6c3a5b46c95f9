"""``shard=True`` (``--shard``): FSDP2 over two real gloo processes (torchrun) trains, saves
from rank 0 a full model with zoo's metadata, and resumes an interrupted run."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from test_data import make_color_folder
from torchrun_helpers import run_worker, torchrun

import zoo
from zoo.errors import AdaptArgumentError, ZooError

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    torch.set_num_threads(1)
    import zoo
    from zoo.adaptation.history import AdaptCallback

    mode, data, out = sys.argv[1], sys.argv[2], sys.argv[3]
    rank = int(os.environ["RANK"])

    class StopAfterOne(AdaptCallback):
        def on_epoch_end(self, record):
            raise KeyboardInterrupt

    options = dict(
        epochs=2, policy=sys.argv[4], shard=True, scratch=True, image_size=32, batch_size=4,
        lr=1e-2, seed=3, augment=False, name=mode if mode != "resume" else "cut",
    )
    if mode == "cut":
        options["callback"] = StopAfterOne()
    if mode == "resume":
        options["resume"] = True
    try:
        model, history = zoo.adapt("timm:test_resnet", data + "/train", data + "/val", **options)
    except BaseException as exc:
        import torch.distributed as dist
        with open(os.path.join(out, f"{mode}-error{rank}.txt"), "w") as f:
            f.write(type(exc).__name__ + ": " + str(exc))
        with open(os.path.join(out, f"{mode}-group{rank}.txt"), "w") as f:
            f.write(str(dist.is_initialized()))  # a failed run leaves the group it opened
        sys.exit(3)
    shards = type(next(model.parameters())).__name__
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        logits = model.eval()(x)  # a sharded forward: every rank runs it
    import torch.distributed as dist
    assert dist.is_initialized()  # the sharded model's group outlives zoo.adapt
    dist.barrier()  # no rank leaves while another's last collective is in flight
    dist.destroy_process_group()  # the caller's to end, as the run's note says
    if rank == 0:
        torch.save({"x": x, "y": logits}, os.path.join(out, f"{mode}-outputs.pt"))
        with open(os.path.join(out, f"{mode}.json"), "w") as f:
            json.dump({"path": history.path, "notes": history.notes, "shards": shards,
                       "resumed_from": history.resumed_from, "loss": history.loss}, f)
    """
)


def _run(tmp_path, mode, data, policy):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    proc = run_worker(tmp_path, WORKER, mode, data, out, policy, zoo_home=tmp_path / "home")
    return proc, out


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["train-last:n=2", "lora:rank=2"])
def test_two_sharded_processes_train_save_and_resume(tmp_path, policy):
    data = tmp_path / "data"
    make_color_folder(data / "train", per_class=4, seed=0)
    make_color_folder(data / "val", per_class=1, seed=1)  # 3 images: shards of 2 and 1

    proc, out = _run(tmp_path, "whole", data, policy)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    whole = json.loads((out / "whole.json").read_text())
    assert whole["shards"] == "DTensor"
    assert any(n.startswith("sharded with FSDP2 over 2 processes") for n in whole["notes"])
    assert any("destroy_process_group()" in n for n in whole["notes"])
    reference = torch.load(out / "whole-outputs.pt")
    saved = zoo.load(whole["path"])  # one full file with zoo's metadata, written by rank 0
    assert saved.zoo.classes == ["blue", "green", "red"]
    with torch.no_grad():
        assert torch.allclose(saved.eval()(reference["x"]), reference["y"], atol=1e-5)

    proc, out = _run(tmp_path, "cut", data, policy)
    assert proc.returncode != 0
    assert (out / "cut-error0.txt").read_text().startswith("AdaptInterrupted: interrupted after")
    assert (out / "cut-group0.txt").read_text() == "False"
    proc, out = _run(tmp_path, "resume", data, policy)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    resumed = json.loads((out / "resume.json").read_text())
    assert resumed["resumed_from"] == 1
    assert resumed["loss"] == pytest.approx(whole["loss"], rel=1e-4)
    final = torch.load(out / "resume-outputs.pt")
    assert torch.allclose(final["y"], reference["y"], atol=1e-4)


@pytest.mark.slow
def test_zoo_adapt_shard_on_the_command_line_saves_and_ends_its_group(tmp_path, _isolated_zoo):
    """``torchrun --nproc_per_node 2 -m zoo adapt ... --shard``: the command ends the process
    group its sharded model kept open (barrier, then destroy), so both ranks exit 0."""
    data = tmp_path / "data"
    make_color_folder(data / "train", per_class=4, seed=0)
    make_color_folder(data / "val", per_class=1, seed=1)
    proc = torchrun(
        "-m", "zoo", "adapt", "timm:test_resnet", "--data", data / "train", "--val",
        data / "val", "--shard", "--scratch", "--policy", "train-last:n=2", "--epochs", "1",
        "--image-size", "32", "--batch-size", "4", "--augment", "off", "--name", "sharded",
        "--json", zoo_home=_isolated_zoo,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(proc.stdout)  # one document, from rank 0
    assert any("the zoo command does" in n for n in doc["notes"])
    assert zoo.load("sharded").zoo.classes == ["blue", "green", "red"]


def test_shard_is_refused_outside_a_distributed_run_and_with_what_it_cannot_do(colours):
    with pytest.raises(ZooError, match="launch with torchrun"):
        zoo.adapt("timm:test_resnet", colours / "train", shard=True, scratch=True)
    with pytest.raises(AdaptArgumentError, match="shard"):
        zoo.adapt("timm:test_resnet", colours / "train", shard=True, early_stop=2)
    with pytest.raises(AdaptArgumentError, match="shard"):
        zoo.compare("timm:test_resnet", colours / "train", colours / "val", shard=True)
