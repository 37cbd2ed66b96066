"""rewards.py: re-tokenised scoring, the harmlessness sign, score-model losses vs hand computations, and
training tiny reward / cost models on toy pairs. CPU, no network, seconds."""
import logging
import math

import pytest
import torch
from torch import nn

from conftest import make_tiny_tokenizer
from data import PreferencePair, format_scorer_text
from model import load_score_model, new_score_model
from rewards import (Scorer, bradley_terry_loss, cost_model_loss, labelled_responses, load_scorer,
                     objective_matrix, pair_accuracy, score_texts, sign_accuracy, train_score_model)

CPU = torch.device("cpu")
TINY = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=64, pad_token_id=0)
PROMPTS = ["how do i bake bread", "hello", "how do i steal a car please help me"]
RESPONSES = [" first then finally", " hello world", " sorry i cannot help you with this"]


@pytest.fixture
def scorer_dir(tmp_path):
    tok = make_tiny_tokenizer(tmp_path / "rm")
    new_score_model(dict(vocab_size=len(tok), **TINY)).save_pretrained(tmp_path / "rm")
    return str(tmp_path / "rm")


def test_score_texts_retokenises_in_scorer_template(scorer_dir):
    scorer = load_scorer(scorer_dir, "reward", device=CPU)
    scorer.tokenizer.padding_side = "left"  # score_texts must not trust the caller's padding side
    scores = score_texts(scorer, PROMPTS, RESPONSES)
    assert scores.shape == (3,) and scores.dtype == torch.float32 and scores.device.type == "cpu"
    alone = []
    for p, r in zip(PROMPTS, RESPONSES):
        text = f"BEGINNING OF CONVERSATION: USER: {p} ASSISTANT:{r}</s>"
        assert format_scorer_text(p, r, "</s>") == text
        with torch.no_grad():
            alone.append(scorer.model(**scorer.tokenizer(text, return_tensors="pt"))[0])
    torch.testing.assert_close(scores, torch.stack(alone), atol=1e-5, rtol=0)
    torch.testing.assert_close(score_texts(scorer, PROMPTS, RESPONSES, batch_size=1), scores, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="one response per prompt"):
        score_texts(scorer, PROMPTS, RESPONSES[:2])


def test_truncation_is_counted(scorer_dir, caplog):
    scorer = load_scorer(scorer_dir, "reward", device=CPU)
    with caplog.at_level(logging.WARNING, logger="rewards"):
        scores = score_texts(scorer, PROMPTS, RESPONSES, max_length=10)
    assert scores.shape == (3,) and "2 of 3 scorer texts are longer than 10 tokens" in caplog.text


class WordScore(nn.Module):
    """Stub score model: +2 per occurrence of one token id minus 1 (so the score sign is known)."""

    def __init__(self, token_id):
        super().__init__()
        self.token_id = token_id

    def forward(self, input_ids, attention_mask):
        return ((input_ids == self.token_id) & attention_mask.bool()).sum(1).float() * 2 - 1


def test_objective_matrix_harmlessness_is_minus_cost():
    tok = make_tiny_tokenizer()
    tok.padding_side = "right"
    reward = Scorer(WordScore(tok.convert_tokens_to_ids("first")), tok, "reward")
    cost = Scorer(WordScore(tok.convert_tokens_to_ids("steal")), tok, "cost")
    prompts = ["how do i steal a car", "how do i bake bread"]
    responses = [" first steal a car", " sorry i cannot"]
    obj = objective_matrix(reward, cost, prompts, responses)
    assert obj.shape == (2, 2) and obj.dtype == torch.float32
    costs = score_texts(cost, prompts, responses)
    assert costs.tolist() == [3.0, -1.0]  # two "steal" tokens: unsafe (cost > 0); none: safe (cost < 0)
    assert obj[:, 1].tolist() == [-3.0, 1.0]  # harmless = -cost: the unsafe answer scores LOWER
    assert obj[:, 0].tolist() == [1.0, -1.0]  # helpful = reward, unchanged
    assert sign_accuracy(cost, [(prompts[0], responses[0], False), (prompts[1], responses[1], True)]) == 1.0


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
    assert cost_model_loss(safer, unsafer, safer_safe, unsafer_safe).item() == pytest.approx(want, rel=1e-6)
    # Unknown labels drop only the sign term.
    known = torch.tensor([False, False])
    got = cost_model_loss(safer, unsafer, safer_safe, unsafer_safe, known, known).item()
    assert got == pytest.approx((nll(3.0) + nll(0.5)) / 2, rel=1e-6)
    # Sign: an unsafe response is cheaper (in loss) with cost > 0 than with cost < 0; a safe one the reverse.
    unsafe, safe = torch.tensor([False]), torch.tensor([True])
    loss = lambda c, is_safe: cost_model_loss(torch.tensor([c]), torch.tensor([c]), is_safe, is_safe).item()
    assert loss(2.0, unsafe) < loss(-2.0, unsafe) and loss(-2.0, safe) < loss(2.0, safe)


def toy_pairs():
    """Helpful pairs (steps beat refusals) and safety pairs (refusal is safer on a harmful request)."""
    benign = ["how do i bake bread", "please help me with this", "how do i", "hello world"]
    helpful = [PreferencePair(p, " first " + s + " then finally", " sorry i cannot", True, True)
               for p in benign for s in ("one", "two", "three")]
    harmful = ["how do i steal a car", "steal a car please", "help me steal a car", "how do i steal"]
    safety = [PreferencePair(p, " sorry i cannot " + s, " first steal a car then " + s, True, False)
              for p in harmful for s in ("one", "two", "three")]
    return helpful, safety


def test_train_reward_model_raises_pair_accuracy(scorer_dir):
    helpful, _ = toy_pairs()
    model, tok = load_score_model(scorer_dir, CPU)  # frozen on load; training unfreezes it
    scorer = Scorer(model, tok, "reward")
    before = pair_accuracy(scorer, helpful)
    figures = train_score_model(model, tok, helpful, kind="reward", epochs=15, lr=3e-3, batch_size=4,
                                progress=False)
    assert figures["steps"] == 45 and figures["pairs"] == 12
    assert figures["loss"] < figures["first_epoch_loss"] and figures["loss"] < 0.2
    assert pair_accuracy(scorer, helpful) == 1.0 > before
    assert not model.training


def test_train_cost_model_learns_pairs_and_signs(scorer_dir):
    _, safety = toy_pairs()
    model, tok = load_score_model(scorer_dir, CPU)
    scorer = Scorer(model, tok, "cost")
    figures = train_score_model(model, tok, safety, kind="cost", epochs=15, lr=3e-3, batch_size=4, progress=False)
    assert figures["loss"] < figures["first_epoch_loss"]
    assert pair_accuracy(scorer, safety) == 1.0  # kind inferred from name: cost(safer) < cost(unsafer)
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
        losses.append(train_score_model(model, tok, helpful, epochs=2, lr=1e-3, batch_size=4, progress=False,
                                        seed=5)["loss"])
    assert losses[0] == losses[1]
    with pytest.raises(ValueError, match="kind"):
        train_score_model(model, tok, helpful, kind="helpful")
    with pytest.raises(ValueError, match="no preference pairs"):
        train_score_model(model, tok, [])


def test_long_texts_are_cut_from_the_left_keeping_the_response_end_and_eos(scorer_dir, caplog):
    scorer = load_scorer(scorer_dir, "reward", device=CPU)
    prompt = "how do i bake bread " * 5
    with caplog.at_level(logging.WARNING, logger="rewards"):
        scores = score_texts(scorer, [prompt, "hello"], [" first then finally", " world"], max_length=12)
    assert "1 of 2 scorer texts are longer than 12 tokens and were cut at the start" in caplog.text
    full = format_scorer_text(prompt, " first then finally", "</s>")
    ids = scorer.tokenizer(full)["input_ids"]
    assert ids[-1] == scorer.tokenizer.eos_token_id and len(ids) > 12
    with torch.no_grad():
        want = scorer.model(input_ids=torch.tensor([ids[-12:]]), attention_mask=torch.ones(1, 12, dtype=torch.long))
    torch.testing.assert_close(scores[0], want[0], atol=1e-5, rtol=0)
