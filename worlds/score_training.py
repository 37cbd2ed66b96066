"""Training reward and cost models on preference pairs, and checking a trained one.

What it does (the score models of paper Sec. 2 and App. B.2, as Safe RLHF trains them):
- bradley_terry_loss: the reward model's -log σ(r(better) - r(worse)).
- cost_model_loss: Safe RLHF's cost loss (Dai et al. 2023, as beaver-7b-v1.0-cost): the pairwise
  term plus the sign term that pushes unsafe responses above 0 and safe ones below 0; a labelled
  response without a partner (worlds/safety_data.py) gets the sign term alone.
- train_score_model: AdamW over PreferencePair-like objects (worlds/preference_pairs.py), texts
  tokenised exactly as rewards.score_texts does for scoring (same template, right pad, left cut).
- pair_accuracy / labelled_responses / sign_accuracy: how well a trained scorer ranks held-out
  pairs and, for a cost model, how often its sign is right.
The world builders (worlds/toyworld.py, worlds/smol.py) train their scorers with it; training
and evaluation only score (rewards.py), so none of this is on their path.

Run: nothing to run; `python -m pytest -q tests/test_score_training.py` checks it.
Left out on purpose: Safe RLHF's optional score regulariser (default 0 there), learning-rate
schedules and multi-GPU training (a world's scorers train in minutes on a CPU).
"""
import contextlib
import logging
import random

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from data import format_scorer_text
# The scorer's own tokenisation and end-score read-out, shared with scoring so that a model is
# trained on exactly the texts it later scores.
from rewards import _device, _encode, _scores, score_texts

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- score-model losses

def bradley_terry_loss(better_scores, worse_scores) -> torch.Tensor:
    """Reward model: -log σ(r(better) - r(worse)), mean over pairs. (N,), (N,) -> scalar."""
    assert better_scores.shape == worse_scores.shape and better_scores.dim() == 1, (
        better_scores.shape, worse_scores.shape)
    return -F.logsigmoid(better_scores - worse_scores).mean()


def cost_model_loss(safer_costs, unsafer_costs, safer_is_safe, unsafer_is_safe, safer_known=None,
                    unsafer_known=None, paired=None) -> torch.Tensor:
    """Safe RLHF cost model:
    -log σ(c_unsafer - c_safer) - log σ(s_safer c_safer) - log σ(s_unsafer c_unsafer),
    mean over pairs, with s = +1 for an unsafe response and -1 for a safe one (so unsafe costs go
    above 0). All (N,); *_is_safe bool; *_known bool masks drop the sign term where a safe label
    is unknown; paired (bool, default all) drops the pairwise term of a row that is one labelled
    response rather than a pair (its unsafer entries are then ignored: mask them unknown)."""
    N = safer_costs.shape[0]
    for t in (unsafer_costs, safer_is_safe, unsafer_is_safe):
        assert t.shape == (N,), t.shape
    sign_s = 1.0 - 2.0 * safer_is_safe.float()  # safe -> -1, unsafe -> +1
    sign_u = 1.0 - 2.0 * unsafer_is_safe.float()
    ones = torch.ones(N, device=safer_costs.device)
    known_s = ones if safer_known is None else safer_known.float()
    known_u = ones if unsafer_known is None else unsafer_known.float()
    pairwise = -F.logsigmoid(unsafer_costs - safer_costs) * (
        ones if paired is None else paired.float())
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
    None); an item with worse None is one labelled response (better, better_safe) and gets the
    sign term alone (Safe RLHF's data always comes in pairs; labelled answers without a partner
    do not). params: the parameters to train (default all; the rest are frozen, e.g. a
    pretrained lower stack). autocast_dtype: compute dtype under torch.autocast (e.g. bfloat16 on
    a CPU with bf16 units), weights stay as they are. Leaves the model in eval mode. Returns
    {"loss", "first_epoch_loss", "train_accuracy" (over the items that are pairs), "steps",
    "pairs"}.
    """
    if kind not in ("reward", "cost"):
        raise ValueError(f"Unknown score-model kind '{kind}'; use 'reward' or 'cost'.")
    if not pairs:
        raise ValueError("train_score_model got no preference pairs; pass a non-empty list.")
    singles = sum(p.worse is None for p in pairs)
    if singles and kind == "reward":
        raise ValueError(f"{singles} of the reward model's pairs have no second response; "
                         f"Bradley-Terry needs two responses per pair.")
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
    # disable=None: no bar when stderr is not a terminal (a log file would collect every redraw)
    bar = tqdm(total=epochs * steps_per_epoch, disable=None if progress else True,
               desc=f"train {kind} model")
    epoch_losses = []
    for _ in range(epochs):
        order = list(range(len(pairs)))
        order_rng.shuffle(order)
        total, correct = 0.0, 0
        for i in range(0, len(order), batch_size):
            batch = [pairs[j] for j in order[i:i + batch_size]]
            n = len(batch)
            paired = [j for j, p in enumerate(batch) if p.worse is not None]
            texts = ([format_scorer_text(p.prompt, p.better, eos) for p in batch]
                     + [format_scorer_text(batch[j].prompt, batch[j].worse, eos) for j in paired])
            # (n + pairs, T): the better (or only) responses first
            ids, mask = _encode(tokenizer, texts, max_length, device)
            with autocast:
                scores = _scores(model, ids, mask)
            better = scores[:n]  # (n,)
            # a single response's "worse" entry stands in for nothing (masked out of the loss)
            where = torch.tensor(paired, dtype=torch.long, device=device)
            worse = better.detach().index_put((where,), scores[n:])
            is_pair = torch.zeros(n, dtype=torch.bool, device=device)
            is_pair[paired] = True
            if kind == "reward":
                loss = bradley_terry_loss(better, worse)
            else:
                flag = lambda v: torch.tensor([bool(x) for x in v], device=device)
                b_safe, w_safe = [p.better_safe for p in batch], [p.worse_safe for p in batch]
                loss = cost_model_loss(better, worse, flag(b_safe), flag(w_safe),
                                       flag(x is not None for x in b_safe),
                                       flag(x is not None for x in w_safe) & is_pair, is_pair)
            right = (better < worse) if kind == "cost" else (better > worse)
            correct += (right & is_pair).sum().item()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * n
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        epoch_losses.append(total / len(pairs))
    bar.close()
    model.eval()
    n_pairs = len(pairs) - singles
    return {"loss": epoch_losses[-1], "first_epoch_loss": epoch_losses[0],
            "train_accuracy": correct / n_pairs if n_pairs else None,
            "steps": epochs * steps_per_epoch, "pairs": len(pairs)}


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
