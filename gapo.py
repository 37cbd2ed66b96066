"""The policy update: K PPO losses, and how each method turns them into one step (GAPO and
baselines).

For one PPO minibatch (paper Sec. 3, Eqs. 6-8 and 15-17; choices in docs/decisions.md):
  1. one forward pass of the policy gives the ratio rho_t = pi_theta(y_t) / pi_old(y_t);
  2. the method's advantages (`method_advantages`): K raw per-objective GAE advantages for the
     gradient-weighted methods, or one combined advantage of the raw ones for the scalarising
     baselines (whitening is an ablation flag; docs/decisions.md says why);
  3. one clipped PPO loss per advantage channel (Eqs. 15-16, `ppo_losses`);
  4. the loss weights w (`loss_weights`): for MGDA / GAPO / P-GAPO the gradients g_i of each loss
     with respect to the "last layer" parameters (formats/models.mgda_parameters picks them;
     torch.autograd.grad, graph kept), their Gram matrix, and mgda.gapo_weights (Eq. 6, Problem 7,
     w_i = alpha_i / n_i^p), by default scaled to sum 1 so every method's loss is a convex
     combination of its PPO losses;
  5. ONE weighted backward of sum_i w_i L_i (w detached): no full-size gradient copies.
The critic's clipped value loss, the Lagrange multiplier (safe-rlhf) and the fast-rl reward
weights also live here. K is general everywhere except safe-rlhf, which is defined for a
reward (objective 0) and a cost (objective 1, harmlessness = -cost).

The method choice is the two small `if` chains in `method_advantages` and `loss_weights`: read
them side by side to see how each baseline differs from GAPO.

Left out on purpose: KL control schedules, entropy bonuses, and per-token (rather than
per-minibatch) MGDA.
"""
import math
from dataclasses import dataclass, field

import torch

from mgda import gapo_weights, gram_matrix
from rollout import gae, whiten

METHODS = ("ppo", "ppo-h", "ppo-s", "morlhf", "safe-rlhf", "fast-rl", "mgda", "gapo", "pgapo",
           "gapo-eq17")
GRADIENT_METHODS = ("mgda", "gapo", "pgapo", "gapo-eq17")  # methods that need the K gradients g_i
# PPO on one objective: `ppo` trains objective --objective_index; ppo-h and ppo-s are its paper
# names for the first (helpfulness) and the second (harmlessness).
PPO_OBJECTIVE = {"ppo-h": 0, "ppo-s": 1}


@dataclass
class MethodState:
    """What a method carries from one iteration to the next (saved in checkpoints)."""
    value_heads_started: bool = False  # the critic's head biases were set from the first rollout
    log_lambda: float = 0.0  # safe-rlhf: log of the Lagrange multiplier lambda
    # safe-rlhf: costs of the last `window` episodes
    recent_costs: list = field(default_factory=list)
    fastrl_weights: list = field(default_factory=list)  # fast-rl: reward weights w (K,)
    # fast-rl: first rollout's mean score per objective
    fastrl_mean: list = field(default_factory=list)
    # fast-rl: first rollout's score std per objective
    fastrl_std: list = field(default_factory=list)


def method_advantages(method, advantages, response_mask, preference, state,
                      whiten_advantages=False):
    """Advantages per loss channel: (B, R, M), M = K for per-objective methods, 1 for scalarising
    ones.

    advantages (B, R, K) are the raw GAE advantages of rollout.gae; response_mask (B, R).
    By default every method sees RAW advantages (as Safe RLHF does): whitening each objective
    equalises the gradient norms that GAPO's rescaling exists to balance (docs/decisions.md).
    whiten_advantages=True is the ablation: per objective, and for morlhf the combination once.
    """
    B, R, K = advantages.shape
    assert response_mask.shape == (B, R), (response_mask.shape, advantages.shape)
    if method == "morlhf":  # linear scalarisation of the raw advantages
        weights = torch.tensor(preference, dtype=advantages.dtype)
        combined = (advantages * weights).sum(-1, keepdim=True)  # (B, R, 1)
        return whiten(combined, response_mask) if whiten_advantages else combined
    per_objective = whiten(advantages, response_mask) if whiten_advantages else advantages
    if method == "safe-rlhf":  # PPO-Lagrangian: (A_h + lambda A_s) / (1 + lambda), A_s = -cost adv.
        lam = math.exp(state.log_lambda)
        return ((per_objective[..., 0] + lam * per_objective[..., 1]) / (1 + lam)).unsqueeze(-1)
    if method == "fast-rl":  # sum_i w_i A_i with the adaptive reward weights
        weights = torch.tensor(state.fastrl_weights, dtype=advantages.dtype)
        return (per_objective * weights).sum(-1, keepdim=True)
    return per_objective  # ppo-h, ppo-s, mgda, gapo, pgapo, gapo-eq17: one loss per objective


def masked_sequence_mean(x, response_mask):
    """Mean over each response's tokens, then over responses (Eq. 15; Safe RLHF's masked mean).

    x (B, R, M), response_mask (B, R) -> (M,). A long response counts as much as a short one
    (a token mean over the whole batch would weight responses by their length).
    """
    assert x.shape[:2] == response_mask.shape, (x.shape, response_mask.shape)
    mask = response_mask.unsqueeze(-1).to(x.dtype)  # (B, R, 1)
    per_sequence = (x * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, M)
    return per_sequence.mean(0)


def ppo_losses(logprobs, old_logprobs, advantages, response_mask, clip_eps):
    """Clipped PPO surrogate per channel (Eqs. 15-16): L_m = -mean_x mean_t min(rho A, clip(rho) A),
    the token mean within each response first, then the mean over responses.

    logprobs / old_logprobs / response_mask (B, R), advantages (B, R, M) -> losses (M,), and the
    clip fraction (share of tokens whose ratio left [1 - eps, 1 + eps]) and approx KL for logging.
    """
    assert logprobs.shape == old_logprobs.shape == response_mask.shape == advantages.shape[:2]
    ratio = torch.exp(logprobs - old_logprobs).unsqueeze(-1)  # (B, R, 1)
    surrogate = torch.min(ratio * advantages, ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages)
    losses = -masked_sequence_mean(surrogate, response_mask)  # (M,)
    with torch.no_grad():
        tokens = response_mask.sum()
        clip_fraction = ((((ratio.squeeze(-1) - 1).abs() > clip_eps).float() * response_mask).sum()
                         / tokens)
        log_ratio = logprobs - old_logprobs
        # k3 estimator
        approx_kl = (((log_ratio.exp() - 1) - log_ratio) * response_mask).sum() / tokens
    return losses, {"clip_fraction": clip_fraction.item(), "approx_kl": approx_kl.item()}


def objective_gradients(losses, params):
    """g_i = dL_i / d(params) for each of the M losses, the graph kept for the weighted backward
    that follows: M lists of tensors shaped like params (zeros where a loss does not reach)."""
    grads = [torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
             for loss in losses]
    return [[torch.zeros_like(q) if g is None else g for g, q in zip(gs, params)] for gs in grads]


def loss_weights(method, losses, params, p, preference, weight_scale="sum_one", grads=None,
                 objective_index=0):
    """The weights w (M,) of the single weighted backward, plus diagnostics for the log.

    For the gradient methods: g_i = dL_i / d(params) with the graph kept for the backward that
    follows, n_i = ||g_i||, G_ij = g_i . g_j, then (docs/decisions.md, "Baselines" and
    "Loss weights"):
      mgda:      w = alpha from Problem 7 on G                    (GAPO with p = 0)
      gapo:      w_i = alpha_i / n_i^p, alpha from Problem 7 on G^N (Eq. 6)
      gapo-eq17: w_i = alpha_i on the raw losses (the paper's Eq. 17 as printed; ablation)
      pgapo:     w_i = lambda_i / n_i                              (Eq. 8, no MGDA)
    Under torchrun the g_i arrive as means over ranks (scale/distributed.average_whole_gradients),
    so every rank builds the same Gram matrix and solves Problem 7 to the same alpha.
    grads: the g_i when the caller has them already (train.py: an optimizer step's gradients,
    summed over its micro-batches, so that the step has one Gram matrix); else taken of losses.
    weight_scale: "sum_one" (default) divides w by sum(w), which keeps the direction and makes
    the actor loss a convex combination of the K PPO losses, like every baseline's, so one learning
    rate and one gradient clip serve all methods (raw GAPO p = 2 weights alpha_i / n_i^2 reach 1e5
    and every step would be clipped; docs/decisions.md). "raw" keeps w as the formulas give it.
    """
    if weight_scale not in ("sum_one", "raw"):
        raise ValueError(f"unknown weight_scale {weight_scale!r}; choose sum_one or raw")
    M = losses.shape[0]
    info = {}
    if method in ("ppo", "ppo-h", "ppo-s"):  # one objective's loss: a one-hot weight
        return torch.eye(M)[PPO_OBJECTIVE.get(method, objective_index)], info
    if method not in GRADIENT_METHODS:  # morlhf, safe-rlhf, fast-rl: one combined loss
        return torch.ones(M), info
    if grads is None:
        grads = objective_gradients(losses, params)
    gram = gram_matrix(grads)  # (K, K) float64
    if not torch.isfinite(gram).all():
        bad = [i for i in range(M) if not torch.isfinite(gram[i, i])]
        raise FloatingPointError(f"objective {bad[0] if bad else '?'} has a non-finite gradient")
    norms = gram.diagonal().clamp(min=0).sqrt()
    info["grad_norms"] = norms.tolist()
    info["grad_cosine"] = (gram / (norms[:, None] * norms[None, :]).clamp(min=1e-30)).tolist()
    if method == "pgapo":
        active = norms > 1e-20
        pref = torch.tensor(preference, dtype=torch.float64)
        weights = torch.where(active, pref / norms.clamp(min=1e-20), 0.0)  # (K,) float64
    else:
        solved = gapo_weights(gram, p=0.0 if method == "mgda" else p,
                              literal_eq17=method == "gapo-eq17")
        info["alpha"] = solved.alpha.tolist()
        info["skipped"] = not bool(solved.active.any())
        weights = solved.weights.to(torch.float64)  # (K,)
    info["raw_weight_sum"] = float(weights.sum())
    if weight_scale == "sum_one" and weights.sum() > 0:
        weights = weights / weights.sum()  # same direction; mgda and gapo-eq17 already sum to 1
    # Each loss's first-order decrease along the step, g_i . d with d = sum_j w_j g_j (K,).
    # Theorems 3.1 and 3.3: for mgda (p = 0) and gapo, gain_i / n_i^p is one number for every
    # objective with alpha_i > 0; theorem_gap is its relative spread (0 up to the solver's
    # tolerance).
    gains = gram @ weights
    info["gains"] = gains.tolist()
    # Compared only where the step moves: at a Pareto-stationary point (d about 0, say two opposed
    # gradients) every gain is rounding noise and has no ratio.
    scale = float(gram.diagonal().max()) * float(weights.sum()) ** 2
    moves = float(weights @ gains) > 1e-12 * scale  # ||d||^2 against the largest ||g_i||^2
    support = solved.alpha > 1e-12 if method in ("mgda", "gapo") and moves else []
    if len(support) and support.any():
        per_norm = gains[support] / norms[support] ** (0.0 if method == "mgda" else p)
        spread = per_norm.max() - per_norm.min()
        info["theorem_gap"] = float(spread / per_norm.abs().max().clamp(min=1e-300))
    out = weights.float()
    if not torch.isfinite(out).all():  # raw p = 2 weights alpha_i / n_i^2 pass 3e38 for n ~ 3e-20
        raise FloatingPointError(f"the raw loss weights {[f'{w:.3g}' for w in weights.tolist()]} "
                                 f"overflow float32 (gradient norms "
                                 f"{[f'{n:.3g}' for n in info['grad_norms']]}); "
                                 f"--weight_scale sum_one keeps them finite")
    return out, info


def value_loss(values, old_values, returns, response_mask, clip_value):
    """Clipped value loss per head, averaged like the actor loss (token mean within a response,
    then over responses), summed over the K heads (Eq. 15's averaging).
    values / old_values / returns (B, R, K), response_mask (B, R) -> scalar."""
    assert values.shape == old_values.shape == returns.shape
    assert values.shape[:2] == response_mask.shape, (values.shape, response_mask.shape)
    clipped = old_values + (values - old_values).clamp(-clip_value, clip_value)
    per_token = 0.5 * torch.max((values - returns) ** 2, (clipped - returns) ** 2)  # (B, R, K)
    return masked_sequence_mean(per_token, response_mask).sum()


def mean_returns(rewards, response_mask, gamma, per_response=False):
    """Mean Monte Carlo return per objective: (B, R, K) rewards, (B, R) mask -> (K,), or (B, K)
    with per_response (the mean over each response's tokens, before the mean over responses).

    The discounted reward-to-go of every response token (GAE with lambda = 1 and V = 0), averaged
    per response then over responses: the constant that best predicts the return from any state;
    the loop starts the critic's value heads there (docs/decisions.md, "The update").
    """
    assert rewards.shape[:2] == response_mask.shape, (rewards.shape, response_mask.shape)
    returns, _ = gae(rewards, torch.zeros_like(rewards), response_mask, gamma, 1.0)  # (B, R, K)
    mask = response_mask.unsqueeze(-1).to(returns.dtype)  # (B, R, 1)
    per_sequence = (returns * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, K)
    return per_sequence if per_response else per_sequence.mean(0)


def update_lagrange_multiplier(state, costs, threshold, lr, lambda_max, window):
    """Safe RLHF's PPO-Lagrangian multiplier, at every RL (micro-batch) step as Safe RLHF does:
    costs (the step's new episodes, possibly none) join the window, then
    log_lambda += lr * lambda * (mean cost over the last `window` episodes - threshold),
    then log_lambda <= log(lambda_max). lambda rises while the policy is unsafe on average."""
    if not state.recent_costs and not costs:
        raise ValueError("the Lagrange multiplier needs at least one episode's cost")
    state.recent_costs = (state.recent_costs + [float(c) for c in costs])[-window:]
    mean_cost = sum(state.recent_costs) / len(state.recent_costs)
    state.log_lambda += lr * math.exp(state.log_lambda) * (mean_cost - threshold)
    state.log_lambda = min(state.log_lambda, math.log(lambda_max))
    return math.exp(state.log_lambda)


def update_fastrl_weights(state, scores, eta):
    """Fast RL's reward weights, after each rollout (docs/decisions.md, "Baselines"): standardise
    each objective's batch mean with the first rollout's statistics, then
    w_i <- w_i exp(-eta rbar_i) / Z, so the lagging objective gains weight. scores (B, K)."""
    K = scores.shape[1]
    scores = scores.double()
    if not state.fastrl_weights:
        state.fastrl_weights = [1.0 / K] * K
        state.fastrl_mean = scores.mean(0).tolist()
        state.fastrl_std = (scores.std(0).clamp(min=1e-6).tolist() if scores.shape[0] > 1
                            else [1.0] * K)
    standardised = ((scores.mean(0) - torch.tensor(state.fastrl_mean, dtype=torch.float64))
                    / torch.tensor(state.fastrl_std, dtype=torch.float64))
    weights = (torch.tensor(state.fastrl_weights, dtype=torch.float64)
               * torch.exp(-eta * standardised))
    state.fastrl_weights = (weights / weights.sum()).tolist()
    return state.fastrl_weights


# ------------------------------------------------------------------ each method's own state

def rollout_update(method, state, scores, cfg):
    """After each rollout, before the update: the state a method moves once per rollout. fast-rl:
    its reward weights from the rollout's scores (N, K), every rank's rows. Others: nothing."""
    if method == "fast-rl":
        update_fastrl_weights(state, scores, cfg.fastrl_eta)


def step_update(method, state, new_costs, cfg):
    """At each RL (micro-batch) step, before its losses: the state a method moves every step.
    safe-rlhf: the step's new episode costs (every rank's; none after the first PPO epoch) join
    the window and lambda moves, as Safe RLHF does. Returns True when the method's advantages must
    be derived again (lambda moved)."""
    if method == "safe-rlhf":
        update_lagrange_multiplier(state, new_costs.tolist(), cfg.cost_threshold, cfg.lambda_lr,
                                   cfg.lambda_max, cfg.lambda_window)
        return True
    return False


def method_log(method, state):
    """The method's own state for the log line: lambda (safe-rlhf) and the fast-rl weights."""
    return {"lambda": math.exp(state.log_lambda) if method == "safe-rlhf" else None,
            "fastrl_weights": state.fastrl_weights or None}
