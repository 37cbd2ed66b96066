"""The policy update: K PPO losses, and how each method turns them into one step (GAPO and baselines).

For one PPO minibatch (SPEC.md sections 3-5):
  1. one forward pass of the policy gives the ratio rho_t = pi_theta(y_t) / pi_old(y_t);
  2. the method's advantages (`method_advantages`): K whitened per-objective advantages for the
     gradient-weighted methods, or one combined advantage for the scalarising baselines;
  3. one clipped PPO loss per advantage channel (Eqs. 15-16, `ppo_losses`);
  4. the loss weights w (`loss_weights`): for MGDA / GAPO / P-GAPO the gradients g_i of each loss
     with respect to the "last layer" parameters (torch.autograd.grad, graph kept), their Gram
     matrix, and mgda.gapo_weights (Eq. 6, Problem 7, w_i = alpha_i / n_i^p);
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
from rollout import whiten

METHODS = ("ppo-h", "ppo-s", "morlhf", "safe-rlhf", "fast-rl", "mgda", "gapo", "pgapo", "gapo-eq17")
GRADIENT_METHODS = ("mgda", "gapo", "pgapo", "gapo-eq17")  # methods that need the K gradients g_i


@dataclass
class MethodState:
    """What a method carries from one iteration to the next (saved in checkpoints)."""
    log_lambda: float = 0.0  # safe-rlhf: log of the Lagrange multiplier lambda
    recent_costs: list = field(default_factory=list)  # safe-rlhf: costs of the last `window` episodes
    fastrl_weights: list = field(default_factory=list)  # fast-rl: reward weights w (K,)
    fastrl_mean: list = field(default_factory=list)  # fast-rl: first rollout's mean score per objective
    fastrl_std: list = field(default_factory=list)  # fast-rl: first rollout's score std per objective


def method_advantages(method, advantages, response_mask, preference, state):
    """Advantages per loss channel: (B, R, M), M = K for per-objective methods, 1 for scalarising ones.

    advantages (B, R, K) are the raw GAE advantages of rollout.gae; response_mask (B, R).
    """
    if method == "morlhf":  # linear scalarisation of RAW advantages, whitened once (SPEC section 4)
        combined = (advantages * torch.tensor(preference, dtype=advantages.dtype)).sum(-1, keepdim=True)
        return whiten(combined, response_mask)
    per_objective = whiten(advantages, response_mask)  # SPEC section 2: whitened per objective
    if method == "safe-rlhf":  # PPO-Lagrangian: (A_h + lambda A_s) / (1 + lambda), A_s = -cost adv.
        lam = math.exp(state.log_lambda)
        return ((per_objective[..., 0] + lam * per_objective[..., 1]) / (1 + lam)).unsqueeze(-1)
    if method == "fast-rl":  # sum_i w_i A_i with the adaptive reward weights
        weights = torch.tensor(state.fastrl_weights, dtype=advantages.dtype)
        return (per_objective * weights).sum(-1, keepdim=True)
    return per_objective  # ppo-h, ppo-s, mgda, gapo, pgapo, gapo-eq17: one loss per objective


def ppo_losses(logprobs, old_logprobs, advantages, response_mask, clip_eps):
    """Clipped PPO surrogate per channel (Eqs. 15-16): L_m = -mean_t min(rho A, clip(rho) A).

    logprobs / old_logprobs / response_mask (B, R), advantages (B, R, M) -> losses (M,), and the
    clip fraction (share of tokens whose ratio left [1 - eps, 1 + eps]) and approx KL for logging.
    """
    assert logprobs.shape == old_logprobs.shape == response_mask.shape == advantages.shape[:2]
    ratio = torch.exp(logprobs - old_logprobs).unsqueeze(-1)  # (B, R, 1)
    surrogate = torch.min(ratio * advantages, ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages)
    mask = response_mask.unsqueeze(-1)
    losses = -(surrogate * mask).sum(dim=(0, 1)) / mask.sum()  # (M,)
    with torch.no_grad():
        tokens = response_mask.sum()
        clip_fraction = (((ratio.squeeze(-1) - 1).abs() > clip_eps).float() * response_mask).sum() / tokens
        log_ratio = logprobs - old_logprobs
        approx_kl = (((log_ratio.exp() - 1) - log_ratio) * response_mask).sum() / tokens  # k3 estimator
    return losses, {"clip_fraction": clip_fraction.item(), "approx_kl": approx_kl.item()}


def mgda_parameters(policy, which):
    """The parameters the objective gradients g_i are taken with respect to (SPEC section 5, step 1).

    last_block: the trainable parameters of the last decoder block (the default, the paper's
    "last layer"); lm_head: the output head; all: every trainable parameter (exact, for small models).
    """
    trainable = [(n, p) for n, p in policy.named_parameters() if p.requires_grad]
    if which == "all":
        chosen = trainable
    elif which == "last_block":
        last = policy.config.num_hidden_layers - 1
        chosen = [(n, p) for n, p in trainable if f"layers.{last}." in n]
    elif which == "lm_head":
        chosen = [(n, p) for n, p in trainable if "lm_head" in n]
    else:
        raise ValueError(f"unknown mgda_params {which!r}; choose last_block, lm_head or all")
    if not chosen:
        raise ValueError(f"mgda_params={which!r} selects no trainable parameter (with LoRA the output "
                         f"head is frozen); use --mgda_params last_block or all")
    return [p for _, p in chosen]


def loss_weights(method, losses, params, p, preference, reduce_grads=None):
    """The weights w (M,) of the single weighted backward, plus diagnostics for the log.

    For the gradient methods: g_i = dL_i / d(params) with the graph kept for the backward that
    follows, n_i = ||g_i||, G_ij = g_i . g_j, then (SPEC section 4 table, section 5):
      mgda:      w = alpha from Problem 7 on G                    (GAPO with p = 0)
      gapo:      w_i = alpha_i / n_i^p, alpha from Problem 7 on G^N (Eq. 6)
      gapo-eq17: w_i = alpha_i on the raw losses (the paper's Eq. 17 as printed; ablation)
      pgapo:     w_i = lambda_i / n_i                              (Eq. 8, no MGDA)
    reduce_grads: under data parallelism, distributed.global_gradients (the mean of each g_i over ranks),
    so every rank builds the same Gram matrix and solves Problem 7 to the same alpha.
    """
    M = losses.shape[0]
    info = {}
    if method == "ppo-h":
        return torch.tensor([1.0] + [0.0] * (M - 1)), info
    if method == "ppo-s":
        return torch.tensor([0.0, 1.0] + [0.0] * (M - 2)), info
    if method not in GRADIENT_METHODS:  # morlhf, safe-rlhf, fast-rl: one combined loss
        return torch.ones(M), info
    grads = [torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True) for loss in losses]
    grads = [[torch.zeros_like(q) if g is None else g for g, q in zip(gs, params)] for gs in grads]
    if reduce_grads is not None:
        grads = reduce_grads(grads)
    gram = gram_matrix(grads)  # (K, K) float64
    if not torch.isfinite(gram).all():
        bad = [i for i in range(M) if not torch.isfinite(gram[i, i])]
        raise FloatingPointError(f"objective {bad[0] if bad else '?'} has a non-finite gradient")
    norms = gram.diagonal().clamp(min=0).sqrt()
    info["grad_norms"] = norms.tolist()
    info["grad_cosine"] = (gram / (norms[:, None] * norms[None, :]).clamp(min=1e-30)).tolist()
    if method == "pgapo":
        active = norms > 1e-20
        weights = torch.where(active, torch.tensor(preference, dtype=torch.float64) / norms.clamp(min=1e-20), 0.0)
        return weights.float(), info
    solved = gapo_weights(gram, p=0.0 if method == "mgda" else p, literal_eq17=method == "gapo-eq17")
    info["alpha"] = solved.alpha.tolist()
    info["skipped"] = not bool(solved.active.any())
    return solved.weights.float(), info


def value_loss(values, old_values, returns, response_mask, clip_value):
    """Clipped value loss per head, summed over the K heads (SPEC section 3).
    values / old_values / returns (B, R, K), response_mask (B, R) -> scalar."""
    assert values.shape == old_values.shape == returns.shape
    clipped = old_values + (values - old_values).clamp(-clip_value, clip_value)
    per_token = 0.5 * torch.max((values - returns) ** 2, (clipped - returns) ** 2)  # (B, R, K)
    mask = response_mask.unsqueeze(-1)
    return ((per_token * mask).sum(dim=(0, 1)) / mask.sum()).sum()


def update_lagrange_multiplier(state, costs, threshold, lr, lambda_max, window):
    """Safe RLHF's PPO-Lagrangian multiplier, after each rollout (SPEC section 4):
    log_lambda += lr * lambda * (mean cost over the last `window` episodes - threshold),
    then log_lambda <= log(lambda_max). lambda rises while the policy is unsafe on average."""
    state.recent_costs = (state.recent_costs + [float(c) for c in costs])[-window:]
    mean_cost = sum(state.recent_costs) / len(state.recent_costs)
    state.log_lambda += lr * math.exp(state.log_lambda) * (mean_cost - threshold)
    state.log_lambda = min(state.log_lambda, math.log(lambda_max))
    return math.exp(state.log_lambda)


def update_fastrl_weights(state, scores, eta):
    """Fast RL's reward weights, after each rollout (SPEC section 4): standardise each objective's
    batch mean with the first rollout's statistics, then w_i <- w_i exp(-eta rbar_i) / Z, so the
    lagging objective gains weight. scores (B, K)."""
    K = scores.shape[1]
    scores = scores.double()
    if not state.fastrl_weights:
        state.fastrl_weights = [1.0 / K] * K
        state.fastrl_mean = scores.mean(0).tolist()
        state.fastrl_std = scores.std(0).clamp(min=1e-6).tolist() if scores.shape[0] > 1 else [1.0] * K
    standardised = (scores.mean(0) - torch.tensor(state.fastrl_mean, dtype=torch.float64)) / torch.tensor(
        state.fastrl_std, dtype=torch.float64)
    weights = torch.tensor(state.fastrl_weights, dtype=torch.float64) * torch.exp(-eta * standardised)
    state.fastrl_weights = (weights / weights.sum()).tolist()
    return state.fastrl_weights
