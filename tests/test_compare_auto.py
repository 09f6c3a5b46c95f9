"""``policy="auto"`` measures with validation data and guesses without; the ``zoo.compare``
leaderboard in a saved file round-trips and a hostile one is refused."""

from __future__ import annotations

import json

import pytest
from fileformat_helpers import write_file

import zoo
from zoo.io.fileformat import read_file
from zoo.io.leaderboard import short_policy

BACKBONE = "timm:test_resnet"
FAST = {"image_size": 32, "batch_size": 8, "lr": 1e-2}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Trained-looking starting weights (not random: auto may freeze part of them)."""
    path = tmp_path_factory.mktemp("weights") / "base.safetensors"
    return zoo.save(zoo.create(BACKBONE, num_classes=3), path)


def test_auto_with_validation_data_measures_and_trains_the_winner(colours, weights):
    model, history = zoo.adapt(
        BACKBONE,
        colours / "train",
        colours / "val",
        policy="auto",
        weights=weights,
        epochs=2,
        **FAST,
    )
    measured = [n for n in history.notes if n.startswith("auto measured")]
    assert measured, history.notes
    note = measured[0]
    assert "policies on the validation set" in note and " won (val acc " in note
    winner = note.split(": ", 1)[1].split(" won", 1)[0]
    assert history.policy != "zoo:auto"
    assert short_policy(model.zoo.plan.spec_text) == winner
    assert len(history.epochs) == 2  # the winner trained for the asked epochs
    assert not any("guessed" in n for n in history.notes)
    # the same ladder as zoo.compare's: the surgical candidate its gradient signal points to
    board = model.zoo.compare  # the leaderboard auto measured, recorded on the model
    assert any("surgical:depth=" in n and "joins the ladder" in n for n in board["notes"])
    assert any(c["policy"].startswith("zoo:surgical:depth=") for c in board["candidates"])


def test_measured_auto_gives_every_policy_the_minimum_steps(colours, weights):
    # 24 images at batch 8: 3 optimizer steps per epoch, 2 epochs = 6 < MIN_RUNG_STEPS: auto may
    # not cut any policy early (a ranking after 3 steps says who starts fast, not who ends best)
    _model, history = zoo.adapt(
        BACKBONE,
        colours / "train",
        colours / "val",
        policy="auto",
        weights=weights,
        epochs=2,
        **FAST,
    )
    note = next(n for n in history.notes if n.startswith("auto measured"))
    assert "every policy trained all 2 epochs (too few optimizer steps" in note
    assert "cut by its budget" not in note


def test_auto_without_validation_data_guesses_from_its_table(colours, weights):
    _model, history = zoo.adapt(
        BACKBONE, colours / "train", policy="auto", weights=weights, epochs=1, **FAST
    )
    assert any("auto guessed" in n and "no validation data" in n for n in history.notes)
    assert any(n.startswith("auto chose") for n in history.notes)  # the table's reason
    assert not any(n.startswith("auto measured") for n in history.notes)


def _saved_with_board(colours, tmp_path):
    result = zoo.compare(
        BACKBONE,
        colours / "train",
        colours / "val",
        policies="linear-probe,full",
        epochs=1,
        scratch=True,
        **FAST,
    )
    return zoo.save(result.model, tmp_path / "winner.safetensors"), result.leaderboard


def test_leaderboard_metadata_round_trips(colours, tmp_path):
    path, board = _saved_with_board(colours, tmp_path)
    md = read_file(path).metadata
    stored = json.loads(md["zoo.compare"])
    assert stored == json.loads(json.dumps(board.to_dict()))
    again = zoo.inspect(path).metadata.compare
    assert again["winner"] == board.winner.policy
    assert [r["policy"] for r in again["candidates"]] == [r.policy for r in board.rows]
    assert zoo.load(path).zoo.plan.spec_text == board.winner.policy


def _hostile(board: dict) -> list[dict]:
    row = board["candidates"][0]
    return [
        {**board, "candidates": [{**row, "val_acc": 1e999}]},
        {**board, "candidates": [{**row, "val_acc": 2.0}]},
        {**board, "candidates": [{**row, "trainable_params": -1}]},
        {**board, "candidates": [{**row, "trainable_params": 10**30}]},
        {**board, "candidates": [{**row, "stopped_early": "no"}]},
        {**board, "candidates": [{**row, "policy": "evil\x1b[2J"}]},
        {**board, "candidates": [{**row, "policy": "x" * 5000}]},
        {**board, "candidates": [{k: v for k, v in row.items() if k != "epochs"}]},
        {**board, "candidates": [row] * 300},
        {**board, "candidates": []},
        {**board, "winner": "zoo:not-a-candidate"},
        {**board, "epochs": "5"},
        {**board, "budget": -3},
        {**board, "notes": ["ok", 7]},
        {**board, "rungs": [0]},
        {**board, "candidates": "all of them"},
    ]


def test_a_hostile_leaderboard_in_a_resealed_file_is_refused(colours, tmp_path):
    path, _board = _saved_with_board(colours, tmp_path)
    saved = read_file(path)
    good = json.loads(saved.metadata["zoo.compare"])
    texts = [json.dumps(b) for b in _hostile(good)]
    texts += ['{"winner": NaN}', "[1, 2]", '"text"']
    for i, text in enumerate(texts):
        target = tmp_path / f"hostile{i}.safetensors"
        write_file(target, dict(saved.tensors), {**saved.metadata, "zoo.compare": text})
        with pytest.raises(zoo.CorruptFileError, match=r"zoo\.compare"):
            zoo.inspect(target)
        with pytest.raises(zoo.CorruptFileError, match=r"zoo\.compare"):
            zoo.load(target)
