"""rewards.py: re-tokenised scoring, the harmlessness sign, the left cut of over-long texts and
the format rule of make_scorer (score-model training is in test_score_training.py; the formats end
to end in test_scorer_format.py). CPU, no network, seconds."""
import logging

import pytest
import torch
from torch import nn

from conftest import make_tiny_tokenizer
from data import format_scorer_text
from rewards import Scorer, default_objectives, load_scorer, make_scorer, objective_matrix, score_texts
from formats.models import SequenceClassifierScore, new_score_model
from worlds.score_training import sign_accuracy

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
    scorer = load_scorer(scorer_dir, CPU, name="reward")
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
    scorer = load_scorer(scorer_dir, CPU, name="reward")
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
    obj = objective_matrix(default_objectives(reward, cost), prompts, responses)
    assert obj.shape == (2, 2) and obj.dtype == torch.float32
    costs = score_texts(cost, prompts, responses)
    assert costs.tolist() == [3.0, -1.0]  # two "steal" tokens: unsafe (cost > 0); none: safe (cost < 0)
    assert obj[:, 1].tolist() == [-3.0, 1.0]  # harmless = -cost: the unsafe answer scores LOWER
    assert obj[:, 0].tolist() == [1.0, -1.0]  # helpful = reward, unchanged
    assert sign_accuracy(cost, [(prompts[0], responses[0], False), (prompts[1], responses[1], True)]) == 1.0


def test_long_texts_are_cut_from_the_left_keeping_the_response_end_and_eos(scorer_dir, caplog):
    scorer = load_scorer(scorer_dir, CPU, name="reward")
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


def test_make_scorer_picks_the_format_and_chat_scorers_keep_the_sign():
    from transformers import LlamaConfig, LlamaForSequenceClassification
    tok = make_tiny_tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {{ eos_token }} {% endfor %}"
    stub = WordScore(tok.convert_tokens_to_ids("steal"))
    # hand-built Scorers read what the worlds' scorers are trained on
    assert Scorer(stub, tok).template == "safe_rlhf"
    assert make_scorer(stub, tok).template == "safe_rlhf"  # auto: a stub is no sequence classifier
    beaver = new_score_model(dict(vocab_size=len(tok), **TINY))
    # the beaver layout reads Safe RLHF, chat template or not
    assert make_scorer(beaver, tok).template == "safe_rlhf"
    classifier = SequenceClassifierScore(LlamaForSequenceClassification(
        LlamaConfig(vocab_size=len(tok), num_labels=1, **TINY)))
    assert make_scorer(classifier, tok).template == "chat"
    tok.chat_template = None
    assert make_scorer(classifier, tok).template == "safe_rlhf"
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {{ eos_token }} {% endfor %}"
    tok.padding_side = "right"
    reward = make_scorer(WordScore(tok.convert_tokens_to_ids("first")), tok, "reward", "chat")
    cost = make_scorer(stub, tok, "cost", "chat")
    # read as "how do i steal a car </s> first steal a car </s> ": two "steal", one "first"
    obj = objective_matrix(default_objectives(reward, cost),
                           ["how do i steal a car", "how do i bake bread"],
                           [" first steal a car", " sorry i cannot"])
    assert obj.tolist() == [[1.0, -3.0], [-1.0, 1.0]]  # harmless = -cost in the chat format too
