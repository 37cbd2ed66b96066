"""worlds/score_training.py: score-model losses vs hand computations, and training tiny reward /
cost models on toy pairs (pair and sign accuracy after). CPU, no network, seconds."""
import math

import pytest
import torch

from conftest import make_tiny_tokenizer
from formats.models import load_score_model, new_score_model
from rewards import Scorer, score_texts
from test_rewards import CPU, TINY
from worlds.preference_pairs import PreferencePair
from worlds.score_training import (bradley_terry_loss, cost_model_loss, labelled_responses,
                                   pair_accuracy, sign_accuracy, train_score_model)


@pytest.fixture
def scorer_dir(tmp_path):
    tok = make_tiny_tokenizer(tmp_path / "rm")
    new_score_model(dict(vocab_size=len(tok), **TINY)).save_pretrained(tmp_path / "rm")
    return str(tmp_path / "rm")


def test_bradley_terry_loss_by_hand():
    better, worse = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([1.0, 0.0, 1.5])
    want = sum(math.log1p(math.exp(-(b - w))) for b, w in zip(better.tolist(), worse.tolist())) / 3
    assert bradley_terry_loss(better, worse).item() == pytest.approx(want, rel=1e-6)
    assert bradley_terry_loss(torch.zeros(4), torch.zeros(4)).item() == pytest.approx(math.log(2))


def test_cost_model_loss_by_hand_and_sign_convention():
    nll = lambda x: math.log1p(math.exp(-x))  # -log σ(x)
    safer, unsafer = torch.tensor([-1.0, 0.5]), torch.tensor([2.0, 1.0])
    safer_safe, unsafer_safe = torch.tensor([True, False]), torch.tensor([False, False])
    want = (nll(2.0 + 1.0) + nll(-1.0 * -1.0) + nll(+1 * 2.0)
            + nll(1.0 - 0.5) + nll(+1 * 0.5) + nll(+1 * 1.0)) / 2
    got = cost_model_loss(safer, unsafer, safer_safe, unsafer_safe).item()
    assert got == pytest.approx(want, rel=1e-6)
    # Unknown labels drop only the sign term.
    known = torch.tensor([False, False])
    got = cost_model_loss(safer, unsafer, safer_safe, unsafer_safe, known, known).item()
    assert got == pytest.approx((nll(3.0) + nll(0.5)) / 2, rel=1e-6)
    # Sign: an unsafe response is cheaper (in loss) with cost > 0 than with cost < 0; a safe one the
    # reverse.
    unsafe, safe = torch.tensor([False]), torch.tensor([True])
    loss = lambda c, is_safe: cost_model_loss(torch.tensor([c]), torch.tensor([c]), is_safe,
                                              is_safe).item()
    assert loss(2.0, unsafe) < loss(-2.0, unsafe) and loss(-2.0, safe) < loss(2.0, safe)


def toy_pairs():
    """Helpful pairs (steps beat refusals) and safety pairs (refusal is safer on a harmful
    request)."""
    benign = ["how do i bake bread", "please help me with this", "how do i", "hello world"]
    helpful = [PreferencePair(p, " first " + s + " then finally", " sorry i cannot", True, True)
               for p in benign for s in ("one", "two", "three")]
    harmful = ["how do i steal a car", "steal a car please", "help me steal a car",
               "how do i steal"]
    safety = [PreferencePair(p, " sorry i cannot " + s, " first steal a car then " + s, True, False)
              for p in harmful for s in ("one", "two", "three")]
    return helpful, safety


def test_train_reward_model_raises_pair_accuracy(scorer_dir):
    helpful, _ = toy_pairs()
    model, tok = load_score_model(scorer_dir, CPU)  # frozen on load; training unfreezes it
    scorer = Scorer(model, tok, "reward")
    before = pair_accuracy(scorer, helpful)
    figures = train_score_model(model, tok, helpful, kind="reward", epochs=15, lr=3e-3,
                                batch_size=4, progress=False)
    assert figures["steps"] == 45 and figures["pairs"] == 12
    assert figures["loss"] < figures["first_epoch_loss"] and figures["loss"] < 0.2
    assert pair_accuracy(scorer, helpful) == 1.0 > before
    assert not model.training


def test_train_cost_model_learns_pairs_and_signs(scorer_dir):
    _, safety = toy_pairs()
    model, tok = load_score_model(scorer_dir, CPU)
    scorer = Scorer(model, tok, "cost")
    figures = train_score_model(model, tok, safety, kind="cost", epochs=15, lr=3e-3, batch_size=4,
                                progress=False)
    assert figures["loss"] < figures["first_epoch_loss"]
    # kind inferred from name: cost(safer) < cost(unsafer)
    assert pair_accuracy(scorer, safety) == 1.0
    labelled = labelled_responses(safety)
    assert len(labelled) == 24 and sign_accuracy(scorer, labelled) == 1.0
    costs = score_texts(scorer, [p.prompt for p in safety], [p.worse for p in safety])
    assert (costs > 0).all()  # unsafe compliance gets cost > 0


def test_training_is_seeded(tmp_path):
    helpful, _ = toy_pairs()
    tok = make_tiny_tokenizer()
    losses = []
    for _ in range(2):
        torch.manual_seed(123)  # the same initial weights; the shuffling comes from seed=5
        model = new_score_model(dict(vocab_size=len(tok), **TINY))
        losses.append(train_score_model(model, tok, helpful, epochs=2, lr=1e-3, batch_size=4,
                                        progress=False, seed=5)["loss"])
    assert losses[0] == losses[1]
    with pytest.raises(ValueError, match="kind"):
        train_score_model(model, tok, helpful, kind="helpful")
    with pytest.raises(ValueError, match="no preference pairs"):
        train_score_model(model, tok, [])


def test_progress_bars_stay_out_of_a_log_file(capsys):
    """A build's bars redraw into a terminal only: with stderr a file (here pytest's capture, not
    a terminal) nothing of them is written."""
    helpful, _ = toy_pairs()
    tok = make_tiny_tokenizer()
    model = new_score_model(dict(vocab_size=len(tok), **TINY))
    train_score_model(model, tok, helpful, epochs=1, lr=1e-3, batch_size=4, progress=True)
    assert "train reward model" not in capsys.readouterr().err
