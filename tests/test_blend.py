"""Blends of compare's candidates: the greedy soup, WiSE-FT, and a saved blend."""

from __future__ import annotations

import json

import pytest
import torch

import zoo
from zoo.adaptation.blend import average, interpolate
from zoo.cli.main import main
from zoo.errors import AdaptArgumentError

BACKBONE = "timm:test_resnet"  # a tiny timm ResNet: stem, 4 stages, fc
FAST = {"image_size": 32, "batch_size": 8, "scratch": True}


def _run(colours, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = zoo.create(BACKBONE, num_classes=3)
    zoo.adapt(
        model, str(colours / "train"), str(colours / "val"), policy="full", epochs=1,
        augment=False, image_size=32, batch_size=8, lr=1e-2, seed=0,
    )  # fmt: skip
    return model


def test_a_soup_of_two_identical_runs_is_the_run(colours):
    one, two = _run(colours), _run(colours)
    soup = average([one.state_dict(), two.state_dict()])
    for key, tensor in one.state_dict().items():
        assert torch.equal(soup[key], tensor), key  # batch counters included
    assert soup.keys() == one.state_dict().keys()


def test_wise_ft_is_the_start_at_alpha_0_and_the_fine_tuned_weights_at_1(colours):
    torch.manual_seed(0)
    start = zoo.create(BACKBONE, num_classes=3).state_dict()
    tuned = _run(colours).state_dict()
    at0, at1, half = (interpolate(start, tuned, a) for a in (0.0, 1.0, 0.5))
    for key in tuned:
        assert torch.equal(at0[key], start[key]) or not tuned[key].is_floating_point(), key
        assert torch.equal(at1[key], tuned[key]), key
    weight = "layer1.0.conv1.weight"
    torch.testing.assert_close(half[weight], (start[weight] + tuned[weight]) / 2)


@pytest.fixture(scope="module")
def large_val(tmp_path_factory):
    """201 validation images (67 per class): at least NOISE_VALIDATION, so no candidate has an
    interval and a blend that ties the winner on validation ranks first."""
    from test_data import make_color_folder

    return make_color_folder(tmp_path_factory.mktemp("large_val"), per_class=67, seed=3)


def test_a_blend_that_ranks_first_is_saved_and_loads_like_any_model(colours, large_val, capsys):
    # at lr 1e-30 nothing moves: both candidates keep the starting weights, their soup scores
    # the same, and (without intervals: a large validation set) a tie goes to the blend, so
    # the soup is the model saved
    argv = ["compare", BACKBONE, "--data", str(colours / "train"), "--val", str(large_val),
            "--scratch", "--image-size", "32", "--batch-size", "8", "--lr", "1e-30",
            "--weight-decay", "0", "--epochs", "2", "--policies", "linear-probe,bitfit",
            "--blend", "--name", "soup", "--json"]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    # the soup adds the candidates best first (the two score alike: either may lead)
    ranked = [c["policy"] for c in doc["candidates"][1:]]
    assert sorted(ranked) == ["zoo:bitfit", "zoo:linear-probe"]
    label = f"soup({ranked[0][4:]} + {ranked[1][4:]})"
    assert doc["winner"]["policy"] == label

    model = zoo.load("soup")
    info = zoo.inspect("soup")
    record = info.metadata.training["blend"]
    assert record == {"kind": "soup", "ingredients": ranked, "alpha": None}
    plan = model.zoo.plan
    assert plan.policy == "blend"
    bitfit = zoo.plan(zoo.params(model), "bitfit")
    assert set(plan.trainable) == set(bitfit.trainable)  # what any ingredient trained
    assert info.metadata.compare["winner"] == label
    again = zoo.load(info.path)  # the file itself, as any saved model
    for key, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], tensor)


def test_blends_say_why_they_add_no_row(colours):
    _, _, board = zoo.compare(
        BACKBONE,
        str(colours / "train"),
        str(colours / "val"),
        policies=["linear-probe", "lora"],
        blend=True,
        epochs=1,
        lr=1e-2,
        **FAST,
    )
    assert len(board.rows) == 2  # no blend row
    notes = " | ".join(board.notes)
    assert "blends leave out candidates that add modules" in notes and "lora" in notes
    assert "soup: one candidate to average" in notes
    assert "WiSE-FT: no candidate trains more than the head" in notes


def test_adapt_takes_no_blend(colours):
    with pytest.raises(AdaptArgumentError, match=r"blends average the candidates of zoo\.compare"):
        zoo.adapt(BACKBONE, str(colours / "train"), blend=True)


def test_with_ema_blends_average_the_weights_that_were_scored(colours, monkeypatch):
    """Each candidate is scored on its weights' moving average (``ema``), so a blend must
    average those, not the raw weights, for every ingredient it is handed."""
    import zoo.adaptation.halving as halving

    seen: list[bool] = []
    blend_candidates = halving.blend_candidates

    def check_ingredients(base, ranked, val, ctx):
        for cand in ranked:
            if cand.model is not None and cand.trainee is not None and cand.trainee.ema:
                averaged = cand.trainee.ema.module.state_dict()
                seen.append(
                    all(torch.equal(v, averaged[k]) for k, v in cand.model.state_dict().items())
                )
        return blend_candidates(base, ranked, val, ctx)

    monkeypatch.setattr(halving, "blend_candidates", check_ingredients)
    zoo.compare(
        BACKBONE,
        str(colours / "train"),
        str(colours / "val"),
        policies="train-last:n=1,bitfit",
        epochs=2,
        lr=1e-2,
        ema=0.9,
        blend=True,
        **FAST,
    )
    assert seen and all(seen)


def test_a_blend_within_the_noise_does_not_replace_the_winner(colours):
    """On 9 validation images the soup of two unmoved candidates scores what the winner
    scores, not one standard error above it: the winner stays the model, the soup ranks
    second, and a note says why (a blend chosen on a handful of images mostly fits them)."""
    options = {"policies": "linear-probe,bitfit", "epochs": 2, "lr": 1e-30, "weight_decay": 0}
    train, val = str(colours / "train"), str(colours / "val")
    model, _, board = zoo.compare(BACKBONE, train, val, blend=True, **options, **FAST)
    assert not board.rows[0].policy.startswith("soup(")
    assert board.rows[1].policy.startswith("soup(")
    assert model.zoo.training.get("blend") is None
    assert any(
        "not more than one standard error" in n and "stays the model" in n for n in board.notes
    )


def _blend_rule_parts():
    from zoo.adaptation.blend import Blend
    from zoo.io.leaderboard import Leaderboard, LeaderboardRow

    model = zoo.create(BACKBONE, num_classes=3)
    plan = zoo.plan(zoo.params(model), "train-last:n=1")
    total = sum(p.numel() for p in model.parameters())

    def board(interval):
        row = LeaderboardRow(
            policy="zoo:full", val_acc=0.8, val_loss=0.5, trainable_params=total,
            trainable_percent=100.0, epochs=2, seconds=1.0, stopped_early=False,
            interval=interval,
        )  # fmt: skip
        return Leaderboard(rows=(row,), epochs=2)

    def blend(acc, kind="soup"):
        ingredients = ("zoo:full", "zoo:train-last:n=1") if kind == "soup" else ("zoo:full",)
        alpha = None if kind == "soup" else 0.5
        return Blend(kind, ingredients, alpha, {}, plan, acc, 0.4, 2, 0.1)

    return board, blend, total


def test_below_200_validation_images_a_blend_must_beat_the_winner_by_one_standard_error():
    """The margin is half the winner's interval (0.1 here), measured from the winner's own
    score on the images the blends were scored on (0.85, not the interval's centre 0.8): 0.9
    stays below, 0.96 replaces it; a row held back is still on the board, second."""
    from zoo.adaptation.blend import ranked_with_blends

    board, blend, total = _blend_rule_parts()
    ranked, won = ranked_with_blends(board((0.7, 0.9)), [blend(0.9)], total, (0.85, 0.5), (), 50)
    assert won is None and [r.policy for r in ranked.rows][:2] == ["zoo:full", blend(0).label]
    assert "not more than one standard error (0.100) above it" in ranked.notes[-1]
    ranked, won = ranked_with_blends(board((0.7, 0.9)), [blend(0.96)], total, (0.85, 0.5), (), 50)
    assert won is not None and ranked.rows[0].policy == won.label
    assert "more than one standard error (0.100) above it" in ranked.notes[-1]
    # one blend held back, one above the bar: the second wins, no note says the blends lost
    both = [blend(0.9), blend(0.99, "wise-ft")]
    ranked, won = ranked_with_blends(board((0.7, 0.9)), both, total, (0.85, 0.5), (), 50)
    assert won is both[1] and [r.policy for r in ranked.rows] == [
        both[1].label,
        "zoo:full",
        both[0].label,
    ]
    assert not any("stays the model" in note for note in ranked.notes)


def test_without_an_interval_the_margin_is_wilsons_and_with_200_images_a_tie_goes_to_the_blend():
    from zoo.adaptation.blend import noise_margin, ranked_with_blends
    from zoo.io.leaderboard import wilson

    board, blend, total = _blend_rule_parts()
    low, high = wilson(0.8, 20)
    assert noise_margin(board(None).rows[0], 0.8, 20) == pytest.approx((high - low) / 2)
    ranked, won = ranked_with_blends(board(None), [blend(0.85)], total, (0.8, 0.5), (), 20)
    assert won is None  # 0.05 above, inside Wilson's ±0.09 on 20 images
    ranked, won = ranked_with_blends(board(None), [blend(0.8)], total, (0.8, 0.5), (), 200)
    assert won is not None and "a tie goes to the blend" in ranked.notes[-1]


def test_the_greedy_soup_leaves_out_a_candidate_that_keeps_the_accuracy_but_raises_the_loss():
    """Accuracy, then loss: an average that ties on accuracy but fits worse is no better."""
    from types import SimpleNamespace

    from zoo.adaptation.blend import _soup

    model = zoo.create(BACKBONE, num_classes=3)
    plan = zoo.plan(zoo.params(model), "full")
    pool = [SimpleNamespace(spec=f"zoo:{name}", model=model, plan=plan, epochs_run=2)
            for name in ("full", "train-last:n=1", "train-last:n=2")]  # fmt: skip
    scores = iter([(0.9, 0.3), (0.9, 0.5), (0.9, 0.2)])  # alone, +second, +third
    made = _soup(pool, lambda state: next(scores))
    assert made.ingredients == ("zoo:full", "zoo:train-last:n=2")  # the second raised the loss
    assert (made.val_acc, made.val_loss) == (0.9, 0.2)


def test_a_blend_that_ranks_first_is_refit_ingredient_by_ingredient(
    colours, large_val, monkeypatch
):
    """compare refits its winner when asked (by default with a small validation set); a
    blend's refit is each ingredient retrained on the training and validation images, then
    blended as measured."""
    import zoo.adaptation.compare as compare

    refits: list[tuple[str, int, dict[str, torch.Tensor]]] = []
    refit = compare._refit

    def keep(job, model, cand):
        history = refit(job, model, cand)
        refits.append((cand.spec, history.train_images, dict(model.state_dict())))
        return history

    monkeypatch.setattr(compare, "_refit", keep)
    options = {"policies": "linear-probe,bitfit", "epochs": 2, "lr": 1e-30, "weight_decay": 0}
    train, val = str(colours / "train"), str(large_val)
    model, history, board = zoo.compare(
        BACKBONE, train, val, blend=True, refit=True, **options, **FAST
    )
    record = model.zoo.training["blend"]
    assert board.refit and board.winner.policy.startswith("soup(")  # the tie goes to the blend
    assert [spec for spec, _, _ in refits] == record["ingredients"]
    labelled = history.train_images
    assert labelled == len(list((colours / "train").rglob("*.png"))) + len(
        list(large_val.rglob("*.png"))
    )
    assert all(images == labelled for _, images, _ in refits)
    soup = average([state for _, _, state in refits])
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, soup[key]), key
    measured, _, unrefit = zoo.compare(
        BACKBONE, train, val, blend=True, refit=False, **options, **FAST
    )
    assert not unrefit.refit
    moved = [
        k for k, v in measured.state_dict().items() if not torch.equal(v, model.state_dict()[k])
    ]
    assert moved  # the batch-norm statistics of every labelled image, not the training ones'
