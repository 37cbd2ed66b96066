"""Scoring responses with the reward and cost models, and the objective matrix.

What it does (paper Sec. 2 objectives, App. B.2 scoring; docs/decisions.md):
- the score models themselves (beaver's `LlamaModelForScore` layout, or a one-label sequence
  classifier) are read by formats/models.py; here they score.
- score_texts: decoded (prompt, response) pairs are re-tokenised with each scorer's OWN tokenizer
  (the policy's and the scorer's tokenizers differ: Mistral vs LLaMA) in the format that scorer
  was trained on, right padded, and scored at the last real token -> (B,) float32 on the CPU.
- scorer formats (docs/decisions.md, "Scorer input"): a Scorer reads either the Safe RLHF
  template ("safe_rlhf") or its tokenizer's chat template ("chat"); scorer_template picks one for
  "auto": the beaver layout reads Safe RLHF, a one-label sequence classifier whose tokenizer has a
  chat template reads that template, anything else Safe RLHF. load_scorer / make_scorer build a
  Scorer with the choice made; describe_scorers is the start-up line that says it.
- objective_matrix: (B, K), one column per Objective (a scorer or a Python function, times its
  sign); by default column 0 helpfulness = reward and column 1 harmlessness = -cost.

Run: nothing to run; `python -m pytest -q tests/test_rewards.py` checks it.
Left out on purpose: training the score models (worlds/score_training.py: the worlds train their
scorers, a GAPO run only scores) and clever truncation (over-long texts lose their START, so the
response end and eos that the score is read at survive; they are counted).
"""
import logging
from dataclasses import dataclass

import torch
from torch import nn

from data import format_scorer_chat, format_scorer_text
from formats.models import TEMPLATES, load_score_model, scorer_template

log = logging.getLogger(__name__)


# --------------------------------------------------------------------- scoring

@dataclass
class Scorer:
    model: nn.Module  # called as model(input_ids=..., attention_mask=...) -> (B,) end scores
    tokenizer: object  # the scorer's own tokenizer (right padding)
    name: str = "reward"  # "reward" or "cost"; pair_accuracy (worlds/score_training.py) reads it
    # The text it reads: "safe_rlhf" (beaver's template, what the worlds' scorers are trained on)
    # or "chat" (its tokenizer's chat template); load_scorer / make_scorer pick it.
    template: str = "safe_rlhf"

    def __post_init__(self):
        if self.template not in TEMPLATES:
            raise ValueError(f"a Scorer reads 'safe_rlhf' or 'chat', not {self.template!r}; "
                             "resolve 'auto' with make_scorer.")


def make_scorer(model, tokenizer, name="reward", scorer_format="auto") -> Scorer:
    """A Scorer of a loaded (model, tokenizer), reading the format scorer_template picks."""
    return Scorer(model, tokenizer, name, scorer_template(model, tokenizer, scorer_format, name))


def load_scorer(name_or_path, device=None, dtype=None, name="reward",
                scorer_format="auto") -> Scorer:
    """load_score_model, then make_scorer: a frozen Scorer in the format it was trained on
    (scorer_format "chat" or "safe_rlhf" forces one)."""
    return make_scorer(*load_score_model(name_or_path, device, dtype), name, scorer_format)


def describe_scorers(scorers) -> str:
    """The start-up line: which text each scorer reads."""
    return "scorers: " + "; ".join(f"{s.name} reads {TEMPLATES[s.template]}" for s in scorers)


def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _encode(tokenizer, texts, max_length, device, add_special_tokens=True):
    """texts -> right-padded (N, T) ids and mask on device; warns with a count when texts get
    cut. Over-long texts are cut from the LEFT: the score is read at the last token (the
    response's eos), so cutting the end would score a response without its ending (a multi-turn
    prompt is long). add_special_tokens=False for chat-template texts, which hold their own."""
    # beaver's convention (our LlamaModelForScore handles either side)
    tokenizer.padding_side = "right"
    tokenizer.truncation_side = "left"
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt", add_special_tokens=add_special_tokens)
    # Only rows that fill max_length can have been cut: re-tokenise just those to count (this is
    # the hot path of every rollout, so the whole batch is not tokenised twice).
    full = [t for t, n in zip(texts, batch["attention_mask"].sum(1).tolist()) if n >= max_length]
    lengths = [len(ids) for ids in
               tokenizer(full, add_special_tokens=add_special_tokens)["input_ids"]] if full else []
    too_long = sum(n > max_length for n in lengths)
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


def _score_formatted(scorer, texts, batch_size, max_length, add_special_tokens=True):
    """(N,) scores. Batches are formed over the texts sorted by length (characters, a cheap
    proxy for tokens), so each batch pads to a similar length instead of to the longest text of a
    random group."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.zeros(len(texts))
    device = _device(scorer.model)
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            rows = order[i:i + batch_size]
            ids, mask = _encode(scorer.tokenizer, [texts[j] for j in rows], max_length, device,
                                add_special_tokens)
            out[rows] = _scores(scorer.model, ids, mask).cpu()
    return out


def score_texts(scorer, prompts, responses, batch_size=16, max_length=512) -> torch.Tensor:
    """Plain-text prompts and decoded responses (no special tokens) -> (B,) float32 CPU scores,
    each pair written in the scorer's template."""
    if len(prompts) != len(responses):
        raise ValueError(f"score_texts got {len(prompts)} prompts but {len(responses)} responses; "
                         "pass one response per prompt.")
    if scorer.template == "chat":
        texts = [format_scorer_chat(scorer.tokenizer, p, r) for p, r in zip(prompts, responses)]
    else:
        eos = scorer.tokenizer.eos_token or ""  # beaver was trained on texts ending in </s>
        texts = [format_scorer_text(p, r, eos) for p, r in zip(prompts, responses)]
    # A chat template writes its own bos / end-of-turn tokens: the tokenizer must not add more.
    scores = _score_formatted(scorer, texts, batch_size, max_length,
                              add_special_tokens=scorer.template != "chat")
    assert scores.shape == (len(prompts),) and scores.dtype == torch.float32
    return scores


@dataclass
class Objective:
    """One objective of a run, maximised: `sign` times its scorer's score. The scorer is a Scorer
    (a reward or cost model) or a Python function fn(prompts, responses) -> list of floats (a
    rule: length, format, keywords)."""
    name: str
    scorer: object
    sign: float = 1.0  # -1: a score to minimise (a cost: harmlessness = -cost)


def objective_scores(objective, prompts, responses, batch_size=16, max_length=512):
    """The objective's column: sign * score of each (prompt, response), (B,) float32."""
    if isinstance(objective.scorer, Scorer):
        score = score_texts(objective.scorer, prompts, responses, batch_size, max_length)
    else:
        values = list(objective.scorer(list(prompts), list(responses)))
        if len(values) != len(prompts):
            raise ValueError(f"objective {objective.name}: its function returned {len(values)} "
                             f"scores for {len(prompts)} responses; return one float each.")
        score = torch.tensor([float(v) for v in values], dtype=torch.float32)
        if not torch.isfinite(score).all():
            raise ValueError(f"objective {objective.name}: its function returned a score that "
                             f"is not finite; return finite floats.")
    return score if objective.sign > 0 else -score


def objective_matrix(objectives, prompts, responses, batch_size=16,
                     max_length=512) -> torch.Tensor:
    """(B, K) objectives to MAXIMISE, one column per Objective, in order (docs/decisions.md,
    "Objectives"). The default two are helpfulness = reward and harmlessness = -cost."""
    # !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
    # SIGN: the cost model says cost > 0 = UNSAFE, cost <= 0 = safe. Every objective here is
    # maximised, so HARMLESSNESS = -COST (its Objective has sign -1). Feeding +cost would train
    # the policy to be harmful. (tests/test_rewards.py pins it)
    # !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
    columns = [objective_scores(o, prompts, responses, batch_size, max_length) for o in objectives]
    matrix = torch.stack(columns, dim=1)  # (B, K)
    assert matrix.shape == (len(prompts), len(objectives))
    return matrix


def default_objectives(reward_scorer, cost_scorer):
    """The paper's two: helpful = reward, harmless = -cost."""
    return [Objective("helpful", reward_scorer, 1.0), Objective("harmless", cost_scorer, -1.0)]
