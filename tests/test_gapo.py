"""gapo.py: PPO clipping, each method's weights on hand-made gradients, multiplier and fast-rl
updates, and the common-ascent property of one GAPO step on a real (tiny) policy."""
import math

import numpy as np
import pytest
import torch

import gapo
from rollout import response_logprobs


def linear_losses(gradients):
    """Losses L_i(x) = g_i . x, whose gradients with respect to x are exactly the given g_i."""
    x = torch.zeros(gradients.shape[1], requires_grad=True)
    return torch.stack([(g * x).sum() for g in gradients]), [x]


def test_ppo_clip_stops_the_gradient_outside_the_trust_region():
    old = torch.zeros(1, 4)
    mask = torch.ones(1, 4)
    advantages = torch.tensor([[[1.0], [1.0], [-1.0], [-1.0]]])  # (1, 4, 1)
    # ratios 1.5 (A>0: clipped), 0.5 (A>0: not clipped), 1.5 (A<0: not clipped), 0.5 (A<0: clipped)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.5, 0.5]])).requires_grad_(True)
    losses, info = gapo.ppo_losses(new, old, advantages, mask, clip_eps=0.1)
    losses.sum().backward()
    grad = new.grad[0]
    assert grad[0] == 0 and grad[3] == 0  # clipped: no gradient
    assert grad[1] < 0 and grad[2] > 0  # unclipped: pushes the ratio toward the advantage
    assert math.isclose(losses.item(), -(1.1 + 0.5 - 1.5 - 0.9) / 4, rel_tol=1e-6)
    assert info["clip_fraction"] == 1.0


def test_weights_of_each_method_on_hand_made_gradients():
    g = torch.tensor([[3.0, 0.0, 0.0], [1.0, 2.0, 0.0]])
    n = g.norm(dim=1)
    pref = [0.3, 0.7]

    def weights(method, p=2.0):
        losses, params = linear_losses(g)
        return gapo.loss_weights(method, losses, params, p, pref)

    assert weights("ppo-h")[0].tolist() == [1.0, 0.0]
    assert weights("ppo-s")[0].tolist() == [0.0, 1.0]
    w, _ = weights("pgapo")
    assert torch.allclose(w, torch.tensor(pref) / n)
    mgda_w, info = weights("mgda")
    gapo0_w, _ = weights("gapo", p=0.0)
    assert torch.allclose(mgda_w, gapo0_w)
    # mgda: the min-norm point of the raw gradients; check KKT directly
    d = mgda_w @ g
    assert torch.all(g @ d >= d @ d - 1e-5)
    # gapo p = 1, K = 2: alpha = (1/2, 1/2), so the direction equals pgapo with lambda = (1/2, 1/2)
    w1, info1 = weights("gapo", p=1.0)
    assert np.allclose(info1["alpha"], [0.5, 0.5])
    losses, params = linear_losses(g)
    half, _ = gapo.loss_weights("pgapo", losses, params, 1.0, [0.5, 0.5])
    assert torch.allclose(w1, half)
    # gapo p = 2 weights are alpha / n^2; eq17 ablation uses alpha as is
    w2, info2 = weights("gapo", p=2.0)
    assert torch.allclose(w2, torch.tensor(info2["alpha"]).float() / n ** 2)
    w17, info17 = weights("gapo-eq17", p=2.0)
    assert torch.allclose(w17, torch.tensor(info17["alpha"]).float())
    assert np.isclose(info2["grad_cosine"][0][1], (g[0] @ g[1] / (n[0] * n[1])).item())


def test_scalarising_methods_build_one_combined_advantage():
    A = torch.randn(2, 3, 2)
    mask = torch.ones(2, 3)
    state = gapo.MethodState(log_lambda=math.log(3.0), fastrl_weights=[0.25, 0.75])
    morlhf = gapo.method_advantages("morlhf", A, mask, [0.4, 0.6], state)
    assert morlhf.shape == (2, 3, 1)
    raw = 0.4 * A[..., 0] + 0.6 * A[..., 1]
    assert torch.allclose(morlhf[..., 0], (raw - raw.mean()) / raw.std(unbiased=False), atol=1e-4)
    white = gapo.whiten(A, mask)
    safe = gapo.method_advantages("safe-rlhf", A, mask, None, state)
    assert torch.allclose(safe[..., 0], (white[..., 0] + 3.0 * white[..., 1]) / 4.0, atol=1e-6)
    fast = gapo.method_advantages("fast-rl", A, mask, None, state)
    assert torch.allclose(fast[..., 0], 0.25 * white[..., 0] + 0.75 * white[..., 1], atol=1e-6)
    assert gapo.method_advantages("gapo", A, mask, None, state).shape == (2, 3, 2)


def test_lagrange_multiplier_rises_when_unsafe_and_falls_when_safe():
    state = gapo.MethodState(log_lambda=0.0)
    lam1 = gapo.update_lagrange_multiplier(state, [2.0, 1.0], threshold=0.0, lr=0.1, lambda_max=10, window=128)
    assert lam1 > 1.0
    state = gapo.MethodState(log_lambda=0.0)
    lam2 = gapo.update_lagrange_multiplier(state, [-2.0, -1.0], threshold=0.0, lr=0.1, lambda_max=10, window=128)
    assert lam2 < 1.0
    state = gapo.MethodState(log_lambda=math.log(9.9))
    for _ in range(50):
        lam = gapo.update_lagrange_multiplier(state, [100.0], 0.0, 0.1, lambda_max=10, window=4)
    assert lam <= 10 + 1e-9 and len(state.recent_costs) == 4


def test_fastrl_shifts_weight_to_the_lagging_objective():
    state = gapo.MethodState()
    first = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    assert gapo.update_fastrl_weights(state, first, eta=0.5) == [0.5, 0.5]
    later = torch.tensor([[3.0, 0.0], [5.0, 2.0]])  # objective 0 improved, objective 1 lags
    w = gapo.update_fastrl_weights(state, later, eta=0.5)
    assert w[1] > w[0] and math.isclose(sum(w), 1.0)


def test_all_zero_gradients_skip_the_step():
    losses, params = linear_losses(torch.zeros(2, 3))
    w, info = gapo.loss_weights("gapo", losses, params, 2.0, [0.5, 0.5])
    assert info["skipped"] and w.abs().sum() == 0


@pytest.mark.parametrize("method,p", [("gapo", 2.0), ("gapo", 1.0), ("mgda", 0.0)])
def test_one_gapo_step_improves_every_objective_to_first_order(tiny_policy_dir, method, p):
    """SPEC section 5: with all parameters in the Gram matrix, the step -lr * sum_i w_i g_i is a
    common descent direction of every loss L_i (each surrogate improves to first order)."""
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(tiny_policy_dir)
    B, T, R = 6, 10, 5
    ids = torch.randint(4, policy.config.vocab_size, (B, T))
    mask, rmask = torch.ones(B, T, dtype=torch.long), torch.ones(B, R)
    with torch.no_grad():
        old = response_logprobs(policy, ids, mask, R)
    advantages = torch.randn(B, R, 2)  # two objectives that disagree token by token

    def losses_now():
        return gapo.ppo_losses(response_logprobs(policy, ids, mask, R), old, advantages, rmask, 0.2)[0]

    params = gapo.mgda_parameters(policy, "all")
    losses = losses_now()
    weights, info = gapo.loss_weights(method, losses, params, p, [0.5, 0.5])
    (weights * losses).sum().backward()
    lr = 1e-3 / max(p.grad.norm().item() for p in params)
    before = losses.detach()
    with torch.no_grad():
        for q in params:
            q -= lr * q.grad
    after = losses_now().detach()
    assert (after < before).all(), (before, after, info)


def test_mgda_parameter_choices(tiny_policy_dir):
    from transformers import AutoModelForCausalLM
    policy = AutoModelForCausalLM.from_pretrained(tiny_policy_dir)
    every = gapo.mgda_parameters(policy, "all")
    last = gapo.mgda_parameters(policy, "last_block")
    head = gapo.mgda_parameters(policy, "lm_head")
    assert 0 < len(head) < len(last) < len(every)
    names = {id(p): n for n, p in policy.named_parameters()}
    assert all("layers.1." in names[id(p)] for p in last)
    with pytest.raises(ValueError, match="unknown mgda_params"):
        gapo.mgda_parameters(policy, "middle")
