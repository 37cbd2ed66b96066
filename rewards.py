"""Scoring responses with reward and cost models, the objective matrix, and score-model training.

What it does (paper Sec. 2 objectives, App. B.2 scoring; docs/decisions.md):
- score_texts: decoded (prompt, response) pairs are re-tokenised with each scorer's OWN tokenizer
  in the Safe RLHF template (the policy's and the scorer's tokenizers differ: Mistral vs LLaMA),
  right padded, and scored at the last real token -> (B,) float32 on the CPU.
- objective_matrix: (B, K=2) with column 0 helpfulness = reward and column 1 harmlessness = -cost.
- score-model training used by the toy world and by anyone with their own preference data:
  Bradley-Terry for the reward model; for the cost model the pairwise term plus the sign term that
  pushes unsafe responses above 0 and safe ones below 0 (Safe RLHF, Dai et al. 2023, as
  beaver-7b-v1.0-cost).
- pair_accuracy / sign_accuracy to check a trained scorer.

Run: nothing to run; `python -m pytest -q tests/test_rewards.py` checks it.
Left out on purpose: Safe RLHF's optional score regulariser (default 0 there), learning-rate
schedules, multi-GPU training, and clever truncation (over-long texts lose their START, so the
response end and eos that the score is read at survive; they are counted).
"""
import contextlib
import logging
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

# PreferencePair: the pairs' type (hence the noqa: F401 below)
from data import PreferencePair, format_scorer_text  # noqa: F401
from model import load_score_model

log = logging.getLogger(__name__)


@dataclass
class Scorer:
    model: nn.Module  # called as model(input_ids=..., attention_mask=...) -> (B,) end scores
    tokenizer: object  # the scorer's own tokenizer (right padding)
    name: str = "reward"  # "reward" or "cost"; pair_accuracy reads it to know which way is better


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


# ----------------------------------------------------------------------------- score-model losses

def bradley_terry_loss(better_scores, worse_scores) -> torch.Tensor:
    """Reward model: -log σ(r(better) - r(worse)), mean over pairs. (N,), (N,) -> scalar."""
    assert better_scores.shape == worse_scores.shape and better_scores.dim() == 1, (
        better_scores.shape, worse_scores.shape)
    return -F.logsigmoid(better_scores - worse_scores).mean()


def cost_model_loss(safer_costs, unsafer_costs, safer_is_safe, unsafer_is_safe, safer_known=None,
                    unsafer_known=None) -> torch.Tensor:
    """Safe RLHF cost model:
    -log σ(c_unsafer - c_safer) - log σ(s_safer c_safer) - log σ(s_unsafer c_unsafer),
    mean over pairs, with s = +1 for an unsafe response and -1 for a safe one (so unsafe costs go
    above 0). All (N,); *_is_safe bool; *_known bool masks drop the sign term where a safe label
    is unknown."""
    N = safer_costs.shape[0]
    for t in (unsafer_costs, safer_is_safe, unsafer_is_safe):
        assert t.shape == (N,), t.shape
    sign_s = 1.0 - 2.0 * safer_is_safe.float()  # safe -> -1, unsafe -> +1
    sign_u = 1.0 - 2.0 * unsafer_is_safe.float()
    known_s = (torch.ones(N, device=safer_costs.device) if safer_known is None
               else safer_known.float())
    known_u = (torch.ones(N, device=safer_costs.device) if unsafer_known is None
               else unsafer_known.float())
    pairwise = -F.logsigmoid(unsafer_costs - safer_costs)
    signs = (-F.logsigmoid(sign_s * safer_costs) * known_s
             - F.logsigmoid(sign_u * unsafer_costs) * known_u)
    return (pairwise + signs).mean()


# ----------------------------------------------------------------------------- training and checks

def train_score_model(model, tokenizer, pairs, kind="reward", epochs=1, lr=1e-4, batch_size=8,
                      device=None, progress=True, seed=0, max_length=512,
                      weight_decay=0.0, params=None, autocast_dtype=None) -> dict:
    """Train a score model (e.g. new_score_model(...)) on PreferencePair-like objects with AdamW.

    kind="reward": Bradley-Terry on (better, worse). kind="cost": `better` is the SAFER response;
    the pairwise term plus the sign term from better_safe / worse_safe (skipped where a label is
    None). params: the parameters to train (default all; the rest are frozen, e.g. a pretrained
    lower stack). autocast_dtype: compute dtype under torch.autocast (e.g. bfloat16 on a CPU with
    bf16 units), weights stay as they are. Leaves the model in eval mode. Returns {"loss",
    "first_epoch_loss", "train_accuracy", "steps", "pairs"}.
    """
    if kind not in ("reward", "cost"):
        raise ValueError(f"Unknown score-model kind '{kind}'; use 'reward' or 'cost'.")
    if not pairs:
        raise ValueError("train_score_model got no preference pairs; pass a non-empty list.")
    if kind == "cost" and all(p.better_safe is None and p.worse_safe is None for p in pairs):
        log.warning("no safe/unsafe labels in the cost pairs: the sign term is off, "
                    "so cost 0 means nothing")
    device = torch.device(device) if device is not None else _device(model)
    torch.manual_seed(seed)
    order_rng = random.Random(seed)
    model.to(device).train()
    params = list(model.parameters()) if params is None else list(params)
    model.requires_grad_(False)
    for param in params:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    eos = tokenizer.eos_token or ""
    steps_per_epoch = (len(pairs) + batch_size - 1) // batch_size
    bar = tqdm(total=epochs * steps_per_epoch, disable=not progress, desc=f"train {kind} model")
    epoch_losses = []
    for _ in range(epochs):
        order = list(range(len(pairs)))
        order_rng.shuffle(order)
        total, correct = 0.0, 0
        for i in range(0, len(order), batch_size):
            batch = [pairs[j] for j in order[i:i + batch_size]]
            n = len(batch)
            texts = ([format_scorer_text(p.prompt, p.better, eos) for p in batch]
                     + [format_scorer_text(p.prompt, p.worse, eos) for p in batch])
            # (2n, T): better rows first
            ids, mask = _encode(tokenizer, texts, max_length, device)
            with autocast:
                scores = _scores(model, ids, mask)
            better, worse = scores[:n], scores[n:]  # (n,), (n,)
            if kind == "reward":
                loss = bradley_terry_loss(better, worse)
                correct += (better > worse).sum().item()
            else:
                flag = lambda v: torch.tensor([bool(x) for x in v], device=device)
                b_safe, w_safe = [p.better_safe for p in batch], [p.worse_safe for p in batch]
                loss = cost_model_loss(better, worse, flag(b_safe), flag(w_safe),
                                       flag(x is not None for x in b_safe),
                                       flag(x is not None for x in w_safe))
                correct += (better < worse).sum().item()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * n
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        epoch_losses.append(total / len(pairs))
    bar.close()
    model.eval()
    return {"loss": epoch_losses[-1], "first_epoch_loss": epoch_losses[0],
            "train_accuracy": correct / len(pairs), "steps": epochs * steps_per_epoch,
            "pairs": len(pairs)}


def pair_accuracy(scorer, pairs, kind=None, batch_size=16, max_length=512) -> float:
    """Share of pairs ranked right: reward(better) > reward(worse), or for a cost scorer (kind
    "cost", default when scorer.name == "cost") cost(safer) < cost(unsafer). Ties count as
    wrong."""
    if not pairs:
        raise ValueError("pair_accuracy got no pairs; pass a non-empty list.")
    kind = kind or ("cost" if scorer.name == "cost" else "reward")
    prompts = [p.prompt for p in pairs]
    better = score_texts(scorer, prompts, [p.better for p in pairs], batch_size, max_length)
    worse = score_texts(scorer, prompts, [p.worse for p in pairs], batch_size, max_length)
    right = (better < worse) if kind == "cost" else (better > worse)
    return right.float().mean().item()


def labelled_responses(pairs) -> list[tuple[str, str, bool]]:
    """(prompt, response, is_safe) for every response of the pairs whose safe label is known."""
    out = []
    for p in pairs:
        out += [(p.prompt, r, s) for r, s in ((p.better, p.better_safe), (p.worse, p.worse_safe))
                if s is not None]
    return out


def sign_accuracy(scorer, texts_with_labels, batch_size=16, max_length=512) -> float:
    """Share of (prompt, response, is_safe) triples where the cost sign is right:
    cost > 0 <=> unsafe."""
    if not texts_with_labels:
        raise ValueError("sign_accuracy got no labelled responses; "
                         "pass (prompt, response, is_safe) triples.")
    prompts, responses, safe = zip(*texts_with_labels)
    cost = score_texts(scorer, list(prompts), list(responses), batch_size, max_length)
    unsafe = torch.tensor([not s for s in safe])
    return ((cost > 0) == unsafe).float().mean().item()
