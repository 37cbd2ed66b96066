"""Held-out sampling and scoring, shared by evaluate.py and by train.py's --eval_every.

The paper's Sec. 4.2 measures a trained policy on prompts it never trained on. Both callers use the
functions below, so the learning curve a run logs at its last iteration is the row evaluate.py
prints for its final checkpoint (tests/test_curves.py checks that they agree):
  1. every prompt `samples` times, in batches of `batch_size`, each batch seeded with
     seed * 1_000_003 + batch index inside torch.random.fork_rng: every checkpoint sees the same
     sampling noise, and a training run's own random stream is left exactly where it was;
  2. the reward and cost of each response (rewards.score_texts; cost > 0 means unsafe), or, for
     a run trained on an --objective list, each objective's sign x score (score_objectives:
     rewards.objective_matrix, the columns training maximised);
  3. Table 1's numbers (evals/tables.response_metrics) and, on the toy world, the ground truth of
     its judge (evals/tables.toy_metrics).

Shapes: N = len(prompts) * samples responses. Nothing to run; evaluate.py and train.py call it.
Left out on purpose: the real prompt sets and the LLM judge (evals/prompt_sets.py, evals/judge.py).
"""
import os

import torch

from data import format_policy_prompt
from rewards import objective_matrix, score_texts
from rollout import decode_responses, generate


def toy_test_prompts(limit=None):
    """The toy world's held-out prompts, benign and harmful interleaved so that a --limit keeps
    both classes (seed 0: the split train.py trains on)."""
    from worlds import toyworld
    prompts = toyworld.test_texts()
    return prompts[:limit] if limit else prompts


@torch.no_grad()
def sample(policy, tokenizer, prompts, generation, samples=1, batch_size=32, seed=0,
           progress=None):
    """(raw prompts, responses), N = len(prompts) * samples of each, every prompt once before any
    twice. generation: the values of evals/tables.GEN_FIELDS, in order. progress(iterable) may
    wrap the batches."""
    raw = [p for _ in range(samples) for p in prompts]
    formatted = [format_policy_prompt(tokenizer, p) for p in raw]
    batches = range(0, len(raw), batch_size)
    responses = []
    for b, start in enumerate(progress(batches) if progress else batches):
        with torch.random.fork_rng():  # the same noise for every checkpoint; the caller's RNG kept
            torch.manual_seed(seed * 1_000_003 + b)
            ids, _, rmask, _ = generate(policy, tokenizer, formatted[start:start + batch_size],
                                        *generation)
        responses += decode_responses(tokenizer, ids, rmask)
    return raw, responses


def score(scorers, raw, responses, batch_size=32):
    """{"reward": [N], "cost": [N]} from the (reward, cost) Scorers."""
    reward = score_texts(scorers[0], raw, responses, batch_size)  # (N,)
    cost = score_texts(scorers[1], raw, responses, batch_size)  # (N,) cost > 0 = predicted unsafe
    return {"reward": reward.tolist(), "cost": cost.tolist()}


def score_objectives(objectives, raw, responses, batch_size=32):
    """{"objectives": {name: [N]}}: each rewards.Objective's sign x score, to maximise (the
    columns of rewards.objective_matrix, in the objectives' order)."""
    matrix = objective_matrix(objectives, raw, responses, batch_size)  # (N, K)
    return {"objectives": {o.name: matrix[:, k].tolist() for k, o in enumerate(objectives)}}


def metrics(raw, responses, reward, cost, toy):
    """Table 1's numbers, plus the toy world's ground truth when toy is True (no 'kinds')."""
    from evals.tables import response_metrics, toy_metrics
    out = response_metrics(reward, cost)
    if toy:
        out.update({k: v for k, v in toy_metrics(raw, responses, cost).items() if k != "kinds"})
    return out


def heldout_metrics(policy, tokenizer, scorers, prompts, generation, toy, samples=4,
                    batch_size=32, seed=0):
    """One point of a learning curve: the policy as it is now on the held-out prompts."""
    raw, responses = sample(policy, tokenizer, prompts, generation, samples, batch_size, seed)
    scored = score(scorers, raw, responses, batch_size)
    return metrics(raw, responses, scored["reward"], scored["cost"], toy)


def heldout_prompts(cfg, world=None):
    """The prompts train.py's --eval_every measures: the world's test prompts when the run trains
    on the world's own (cfg.prompts empty; world: the worlds.World loading.resolve_world gave),
    else the test split of cfg.prompts (one sentence when it has none)."""
    if world is not None and not cfg.prompts:
        if world.test_prompts is None:
            raise ValueError(f"--eval_every needs held-out prompts, and the {world.name} world has "
                             f"none; evaluate checkpoints with evaluate.py instead.")
        return list(world.test_prompts)
    if os.path.isfile(cfg.prompts):
        raise ValueError(f"--eval_every needs held-out prompts, and {cfg.prompts} is one file with "
                         f"no test split; evaluate checkpoints with evaluate.py --prompts instead.")
    from data import load_prompts
    try:
        prompts = load_prompts(cfg.prompts, split="test")
    except (ValueError, FileNotFoundError, KeyError) as err:
        raise ValueError(f"--eval_every needs held-out prompts, and the test split of "
                         f"{cfg.prompts} could not be read ({err}); evaluate checkpoints with "
                         f"evaluate.py instead.") from None
    if not prompts:
        raise ValueError(f"--eval_every needs held-out prompts, and {cfg.prompts} has no test "
                         f"split; evaluate checkpoints with evaluate.py instead.")
    return prompts
