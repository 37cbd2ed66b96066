"""Scoring responses with reward and cost models, and the objective matrix.

What it does (paper Sec. 2 objectives, App. B.2 scoring; docs/decisions.md):
- score_texts: decoded (prompt, response) pairs are re-tokenised with each scorer's OWN tokenizer
  in the Safe RLHF template (the policy's and the scorer's tokenizers differ: Mistral vs LLaMA),
  right padded, and scored at the last real token -> (B,) float32 on the CPU.
- objective_matrix: (B, K=2) with column 0 helpfulness = reward and column 1 harmlessness = -cost.

Run: nothing to run; `python -m pytest -q tests/test_rewards.py` checks it.
Left out on purpose: training the score models (worlds/score_training.py: the worlds train their
scorers, a GAPO run only scores) and clever truncation (over-long texts lose their START, so the
response end and eos that the score is read at survive; they are counted).
"""
import logging
from dataclasses import dataclass

import torch
from torch import nn

from data import format_scorer_text
from model import load_score_model

log = logging.getLogger(__name__)


@dataclass
class Scorer:
    model: nn.Module  # called as model(input_ids=..., attention_mask=...) -> (B,) end scores
    tokenizer: object  # the scorer's own tokenizer (right padding)
    name: str = "reward"  # "reward" or "cost"; pair_accuracy (worlds/score_training.py) reads it


def load_scorer(name_or_path, name, device=None, dtype=None) -> Scorer:
    model, tokenizer = load_score_model(name_or_path, device=device, dtype=dtype)
    return Scorer(model, tokenizer, name)


def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _encode(tokenizer, texts, max_length, device):
    """texts -> right-padded (N, T) ids and mask on device; warns with a count when texts get
    cut. Over-long texts are cut from the LEFT: the score is read at the last token (the
    response's eos), so cutting the end would score a response without its ending (a multi-turn
    prompt is long)."""
    # beaver's convention (our LlamaModelForScore handles either side)
    tokenizer.padding_side = "right"
    tokenizer.truncation_side = "left"
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt")
    # Only rows that fill max_length can have been cut: re-tokenise just those to count (this is
    # the hot path of every rollout, so the whole batch is not tokenised twice).
    full = [t for t, n in zip(texts, batch["attention_mask"].sum(1).tolist()) if n >= max_length]
    too_long = sum(len(ids) > max_length for ids in tokenizer(full)["input_ids"]) if full else 0
    if too_long:
        log.warning("%d of %d scorer texts are longer than %d tokens and were cut at the start "
                    "(the response end and eos are kept); raise max_length",
                    too_long, len(texts), max_length)
    return batch["input_ids"].to(device), batch["attention_mask"].to(device)


def _scores(model, ids, mask):
    scores = model(input_ids=ids, attention_mask=mask)
    assert scores.shape == ids.shape[:1], ("a score model must return (B,) end scores, "
                                           f"got {tuple(scores.shape)}")
    return scores.float()


def _score_formatted(scorer, texts, batch_size, max_length):
    """(N,) scores. Batches are formed over the texts sorted by length (characters, a cheap
    proxy for tokens), so each batch pads to a similar length instead of to the longest text of a
    random group."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.zeros(len(texts))
    device = _device(scorer.model)
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            rows = order[i:i + batch_size]
            ids, mask = _encode(scorer.tokenizer, [texts[j] for j in rows], max_length, device)
            out[rows] = _scores(scorer.model, ids, mask).cpu()
    return out


def score_texts(scorer, prompts, responses, batch_size=16, max_length=512) -> torch.Tensor:
    """Plain-text prompts and decoded responses (no special tokens) -> (B,) float32 CPU scores."""
    if len(prompts) != len(responses):
        raise ValueError(f"score_texts got {len(prompts)} prompts but {len(responses)} responses; "
                         "pass one response per prompt.")
    eos = scorer.tokenizer.eos_token or ""  # beaver was trained on texts ending in </s>
    texts = [format_scorer_text(p, r, eos) for p, r in zip(prompts, responses)]
    scores = _score_formatted(scorer, texts, batch_size, max_length)
    assert scores.shape == (len(prompts),) and scores.dtype == torch.float32
    return scores


def objective_matrix(reward_scorer, cost_scorer, prompts, responses, batch_size=16,
                     max_length=512) -> torch.Tensor:
    """(B, K=2) objectives to MAXIMISE: column 0 helpfulness, column 1 harmlessness
    (docs/decisions.md, "Objectives")."""
    reward = score_texts(reward_scorer, prompts, responses, batch_size, max_length)  # (B,)
    cost = score_texts(cost_scorer, prompts, responses, batch_size, max_length)  # (B,)
    # !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
    # SIGN: the cost model says cost > 0 = UNSAFE, cost <= 0 = safe. Every objective here is
    # maximised, so HARMLESSNESS = -COST. Feeding +cost would train the policy to be harmful.
    # (tests/test_rewards.py pins it)
    # !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
    harmless = -cost
    objectives = torch.stack([reward, harmless], dim=1)  # (B, 2)
    assert objectives.shape == (len(prompts), 2)
    return objectives

