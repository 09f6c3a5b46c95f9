"""``zoo.compare`` under torchrun: two real CPU processes (gloo on 127.0.0.1).

Candidates train in turn, each one data-parallel over both ranks. Checked: both ranks rank the
candidates the same (same policies, validation scores, epochs and early cuts), pick the same
winner and end with identical winner weights; only rank 0 saved it, with the leaderboard in its
metadata. And ``zoo compare`` itself under torchrun: one JSON document, from rank 0.
"""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from torchrun_helpers import run_worker, torchrun

import zoo

POLICIES = ["linear-probe", "train-last:n=1", "full"]

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    torch.set_num_threads(1)
    import zoo

    out, data, policies = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    rank = int(os.environ["RANK"])
    # the same start on every rank, as a file of weights (compare refuses random weights)
    start = os.path.join(out, f"start{rank}.safetensors")
    torch.manual_seed(0)
    zoo.save(zoo.create("timm:test_resnet", num_classes=3), start)
    winner, history, board = zoo.compare(
        "timm:test_resnet", os.path.join(data, "train"), os.path.join(data, "val"),
        weights=start, policies=policies, epochs=4, image_size=32, batch_size=8, lr=5e-3,
        name="ddp-compare", seed=1,
    )
    torch.save(winner.state_dict(), os.path.join(out, f"rank{rank}.pt"))
    with open(os.path.join(out, f"board{rank}.json"), "w") as f:
        json.dump({"board": board.to_dict(), "history": history.to_dict()}, f)
    """
)


@pytest.mark.slow
def test_compare_under_torchrun_two_processes(colours, tmp_path, _isolated_zoo):
    out = tmp_path / "out"
    out.mkdir()
    proc = run_worker(tmp_path, WORKER, out, colours, ",".join(POLICIES), zoo_home=_isolated_zoo)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    docs = [json.loads((out / f"board{r}.json").read_text()) for r in (0, 1)]
    boards = [d["board"] for d in docs]

    def ranking(board: dict) -> list[tuple]:
        return [
            (c["policy"], c["val_acc"], c["val_loss"], c["epochs"], c["stopped_early"])
            for c in board["candidates"]
        ]

    # both ranks saw the same comparison and picked the same winner
    assert ranking(boards[0]) == ranking(boards[1])
    assert boards[0]["winner"] == boards[1]["winner"] == boards[0]["candidates"][0]["policy"]
    assert boards[0]["rungs"] == boards[1]["rungs"]
    assert sorted(c["policy"].removeprefix("zoo:") for c in boards[0]["candidates"]) == sorted(
        POLICIES
    )
    # each candidate trained data-parallel, in a world of two
    for doc in docs:
        assert doc["history"]["world_size"] == 2
        # 9 validation images: the winner was refit on training and validation images
        assert doc["history"]["train_images"] == 24 + 9 and doc["board"]["refit"]
    # the winner's replicas agree exactly
    rank0 = torch.load(out / "rank0.pt")
    rank1 = torch.load(out / "rank1.pt")
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    # only rank 0 saved the winner, with its leaderboard
    assert sorted(p.name for p in (_isolated_zoo / "models").iterdir()) == ["ddp-compare"]
    saved = zoo.load("ddp-compare")
    assert saved.zoo.classes == ["blue", "green", "red"]
    assert boards[0]["winner"].startswith(saved.zoo.plan.policy)
    for key, value in saved.state_dict().items():
        assert torch.equal(value, rank0[key]), key
    metadata = zoo.inspect("ddp-compare").metadata.compare
    assert metadata["winner"] == boards[0]["winner"]
    assert ranking(metadata) == ranking(boards[0])


@pytest.mark.slow
def test_compare_cli_under_torchrun(colours, tmp_path, _isolated_zoo):
    """``torchrun --nproc_per_node 2 -m zoo compare ... --json``: one document, from rank 0."""
    torch.manual_seed(0)
    start = tmp_path / "start.safetensors"
    zoo.save(zoo.create("timm:test_resnet", num_classes=3), start)
    proc = torchrun(
        "-m",
        "zoo",
        "compare",
        "timm:test_resnet",
        "--weights",
        str(start),
        "--data",
        str(colours / "train"),
        "--val-split",
        "0.34",
        "--policies",
        "linear-probe,full",
        "--epochs",
        "2",
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--name",
        "cli-compare",
        "--json",
        zoo_home=_isolated_zoo,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # exactly one document on stdout: rank 0 answers, rank 1 stays quiet
    doc = json.loads(proc.stdout)
    assert doc["saved"] == "cli-compare"
    assert sorted(c["policy"] for c in doc["candidates"]) == ["zoo:full", "zoo:linear-probe"]
    assert doc["winner"]["policy"] == doc["candidates"][0]["policy"]
    saved = zoo.inspect("cli-compare").metadata
    assert saved.compare["winner"] == doc["winner"]["policy"]
    assert sorted(p.name for p in (_isolated_zoo / "models").iterdir()) == ["cli-compare"]
