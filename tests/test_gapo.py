"""gapo.py: PPO clipping, each method's weights on hand-made gradients, multiplier and fast-rl
updates, and the common-ascent property of one GAPO step on a real (tiny) policy."""
import math

import numpy as np
import pytest
import torch

import gapo
from formats.models import mgda_parameters
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

    def weights(method, p=2.0):  # the formulas' raw weights; sum_one is tested separately
        losses, params = linear_losses(g)
        return gapo.loss_weights(method, losses, params, p, pref, weight_scale="raw")

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
    half, _ = gapo.loss_weights("pgapo", losses, params, 1.0, [0.5, 0.5], weight_scale="raw")
    assert torch.allclose(w1, half)
    # gapo p = 2 weights are alpha / n^2; eq17 ablation uses alpha as is
    w2, info2 = weights("gapo", p=2.0)
    assert torch.allclose(w2, torch.tensor(info2["alpha"]).float() / n ** 2)
    w17, info17 = weights("gapo-eq17", p=2.0)
    assert torch.allclose(w17, torch.tensor(info17["alpha"]).float())
    assert np.isclose(info2["grad_cosine"][0][1], (g[0] @ g[1] / (n[0] * n[1])).item())


def test_scalarising_methods_build_one_combined_advantage():
    """Default: every method combines the RAW advantages; whitening is the ablation flag."""
    A = torch.randn(2, 3, 2) * torch.tensor([5.0, 0.1]) + 3.0  # two objectives on different scales
    mask = torch.ones(2, 3)
    state = gapo.MethodState(log_lambda=math.log(3.0), fastrl_weights=[0.25, 0.75])
    morlhf = gapo.method_advantages("morlhf", A, mask, [0.4, 0.6], state)
    assert morlhf.shape == (2, 3, 1)
    raw = 0.4 * A[..., 0] + 0.6 * A[..., 1]
    torch.testing.assert_close(morlhf[..., 0], raw)
    safe = gapo.method_advantages("safe-rlhf", A, mask, None, state)
    torch.testing.assert_close(safe[..., 0], (A[..., 0] + 3.0 * A[..., 1]) / 4.0)
    fast = gapo.method_advantages("fast-rl", A, mask, None, state)
    torch.testing.assert_close(fast[..., 0], 0.25 * A[..., 0] + 0.75 * A[..., 1])
    for method in ("gapo", "mgda", "pgapo", "ppo-h"):
        assert torch.equal(gapo.method_advantages(method, A, mask, None, state), A)
    # The ablation: whitened per objective, and morlhf's combination whitened once.
    white = (A - A.mean((0, 1))) / A.std((0, 1), unbiased=False)
    morlhf_w = gapo.method_advantages("morlhf", A, mask, [0.4, 0.6], state, whiten_advantages=True)
    assert torch.allclose(morlhf_w[..., 0], (raw - raw.mean()) / raw.std(unbiased=False), atol=1e-4)
    safe_w = gapo.method_advantages("safe-rlhf", A, mask, None, state, whiten_advantages=True)
    assert torch.allclose(safe_w[..., 0], (white[..., 0] + 3.0 * white[..., 1]) / 4.0, atol=1e-4)
    gapo_w = gapo.method_advantages("gapo", A, mask, None, state, whiten_advantages=True)
    assert torch.allclose(gapo_w, white, atol=1e-4)


def test_losses_average_each_response_first_then_the_batch():
    """Eq. 15: mean over a response's tokens, then over responses, vs a plain Python loop."""
    g = torch.Generator().manual_seed(3)
    B, R, M = 5, 7, 2
    lengths = [1, 7, 3, 5, 2]
    mask = torch.tensor([[1.0] * n + [0.0] * (R - n) for n in lengths])
    logp = torch.randn(B, R, generator=g) * 0.2
    old = torch.randn(B, R, generator=g) * 0.2
    adv = torch.randn(B, R, M, generator=g)
    losses, _ = gapo.ppo_losses(logp, old, adv, mask, clip_eps=0.1)
    want = []
    for m in range(M):
        per_sequence = []
        for b in range(B):
            terms = []
            for t in range(lengths[b]):
                rho = math.exp(logp[b, t] - old[b, t])
                a = adv[b, t, m].item()
                terms.append(-min(rho * a, min(max(rho, 0.9), 1.1) * a))
            per_sequence.append(sum(terms) / len(terms))
        want.append(sum(per_sequence) / B)
    torch.testing.assert_close(losses, torch.tensor(want), atol=1e-6, rtol=0)
    # A token-mean over the batch would weight the long responses more: not what we compute.
    token_mean = -(torch.min(torch.exp(logp - old)[..., None] * adv,
                             torch.exp(logp - old).clamp(0.9, 1.1)[..., None] * adv)
                   * mask[..., None]).sum((0, 1)) / mask.sum()
    assert not torch.allclose(losses, token_mean, atol=1e-3)
    # The value loss is averaged the same way: per response first.
    values, old_values, returns = (torch.randn(B, R, M, generator=g) for _ in range(3))
    got = gapo.value_loss(values, old_values, returns, mask, clip_value=0.5)
    want_v = 0.0
    for m in range(M):
        for b in range(B):
            n = lengths[b]
            v, o, r = values[b, :n, m], old_values[b, :n, m], returns[b, :n, m]
            c = o + (v - o).clamp(-0.5, 0.5)
            want_v += (0.5 * torch.max((v - r) ** 2, (c - r) ** 2)).mean().item() / B
    assert got.item() == pytest.approx(want_v, rel=1e-5)


def test_sum_one_weight_scale_keeps_the_direction_and_makes_a_convex_combination():
    g = torch.tensor([[3e-3, 0.0, 0.0], [1e-3, 2e-3, 0.0]])  # small gradients: raw p = 2 weights ~1e5
    for method, p in [("gapo", 2.0), ("gapo", 1.0), ("pgapo", 1.0), ("mgda", 0.0)]:
        losses, params = linear_losses(g)
        raw, info = gapo.loss_weights(method, losses, params, p, [0.3, 0.7], weight_scale="raw")
        losses, params = linear_losses(g)
        scaled, _ = gapo.loss_weights(method, losses, params, p, [0.3, 0.7])  # default sum_one
        assert scaled.sum().item() == pytest.approx(1.0, rel=1e-6) and (scaled >= 0).all()
        torch.testing.assert_close(scaled, raw / raw.sum(), rtol=1e-5, atol=0)
        assert info["raw_weight_sum"] == pytest.approx(raw.sum().item(), rel=1e-5)
    assert raw.sum() == pytest.approx(1.0)  # mgda's alpha already sums to 1
    losses, params = linear_losses(g)
    big, _ = gapo.loss_weights("gapo", losses, params, 2.0, [0.5, 0.5], weight_scale="raw")
    assert big.sum() > 1e4  # why sum_one exists: raw p = 2 weights dwarf every baseline's
    with pytest.raises(ValueError, match="unknown weight_scale"):
        gapo.loss_weights("gapo", *linear_losses(g), 2.0, [0.5, 0.5], weight_scale="huge")


def test_mean_returns_and_shifting_the_value_heads():
    """The value-head start: mean Monte Carlo return per objective, vs a loop; the shift moves
    every value of the critic by exactly that amount."""
    g = torch.Generator().manual_seed(1)
    B, R, K = 3, 4, 2
    lengths = [4, 2, 1]
    mask = torch.tensor([[1.0] * n + [0.0] * (R - n) for n in lengths])
    rewards = torch.randn(B, R, K, generator=g) * mask[..., None]
    gamma = 0.9
    want = torch.zeros(K)
    for k in range(K):
        for b in range(B):
            n = lengths[b]
            rtg = [sum(gamma ** (u - t) * rewards[b, u, k].item() for u in range(t, n)) for t in range(n)]
            want[k] += sum(rtg) / n / B
    torch.testing.assert_close(gapo.mean_returns(rewards, mask, gamma), want, atol=1e-6, rtol=0)

    per_response = gapo.mean_returns(rewards, mask, gamma, per_response=True)  # (B, K)
    assert per_response.shape == (B, K)
    torch.testing.assert_close(per_response.mean(0), want, atol=1e-6, rtol=0)

    from model import Critic
    critic = Critic.__new__(Critic)  # only the value head matters here
    torch.nn.Module.__init__(critic)
    critic.value_head = torch.nn.Linear(3, K)
    h = torch.randn(5, 3)
    before = critic.value_head(h).detach()
    critic.shift_values(torch.tensor([2.0, -7.0]))
    torch.testing.assert_close(critic.value_head(h).detach(), before + torch.tensor([2.0, -7.0]))


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


def test_lagrange_multiplier_steps_without_new_costs_use_the_window():
    """Later PPO epochs update lambda from the window without adding the episodes again."""
    state = gapo.MethodState(log_lambda=0.0)
    gapo.update_lagrange_multiplier(state, [1.0, 3.0], 0.0, 0.1, 10, window=128)
    lam = gapo.update_lagrange_multiplier(state, [], 0.0, 0.1, 10, window=128)
    assert len(state.recent_costs) == 2
    want = 0.1 * 2.0 + 0.1 * math.exp(0.2) * 2.0  # two steps with mean cost 2
    assert math.isclose(math.log(lam), want, rel_tol=1e-12)
    with pytest.raises(ValueError, match="at least one episode"):
        gapo.update_lagrange_multiplier(gapo.MethodState(), [], 0.0, 0.1, 10, 128)


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

    params = mgda_parameters(policy, "all")
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
    every = mgda_parameters(policy, "all")
    last = mgda_parameters(policy, "last_block")
    head = mgda_parameters(policy, "lm_head")
    assert 0 < len(head) < len(last) < len(every)
    names = {id(p): n for n, p in policy.named_parameters()}
    assert all("layers.1." in names[id(p)] for p in last)
    with pytest.raises(ValueError, match="unknown mgda_params"):
        mgda_parameters(policy, "middle")


def tiny_causal_lm(kind, tie=False):
    """A 3-block causal LM of the given family, built locally from its config."""
    import transformers
    torch.manual_seed(0)
    if kind == "gpt2":
        config = transformers.GPT2Config(vocab_size=40, n_embd=16, n_layer=3, n_head=2, n_positions=32,
                                         tie_word_embeddings=tie)
        return transformers.GPT2LMHeadModel(config)
    cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
           "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[kind]
    config = cls[0](vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                    num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                    tie_word_embeddings=tie)
    return cls[1](config)


def names_of(model, params):
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for p in params]


@pytest.mark.parametrize("kind,block", [("gpt2", "transformer.h.2."), ("llama", "model.layers.2."),
                                        ("qwen2", "model.layers.2.")])
def test_last_block_is_found_in_each_family_and_under_peft(kind, block):
    model = tiny_causal_lm(kind)
    last = names_of(model, mgda_parameters(model, "last_block"))
    assert last and all(n.startswith(block) for n in last)
    assert len(last) == sum(n.startswith(block) for n, _ in model.named_parameters())
    head = names_of(model, mgda_parameters(model, "lm_head"))
    assert head == ["lm_head.weight"]
    from peft import LoraConfig, get_peft_model
    targets = ["c_attn"] if kind == "gpt2" else ["q_proj", "v_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=targets, fan_in_fan_out=kind == "gpt2"))
    last = names_of(peft_model, mgda_parameters(peft_model, "last_block"))
    assert last and all(n.startswith("base_model.model." + block) and "lora_" in n for n in last)
    with pytest.raises(ValueError, match="with LoRA the output head is frozen") as err:
        mgda_parameters(peft_model, "lm_head")
    assert "last_block" in str(err.value)


def test_tied_output_head_is_the_embedding_and_a_frozen_one_is_not_blamed_on_lora():
    model = tiny_causal_lm("gpt2", tie=True)  # GPT-2 ties lm_head to wte: no "lm_head" parameter name
    head = mgda_parameters(model, "lm_head")
    assert names_of(model, head) == ["transformer.wte.weight"]
    model.transformer.wte.weight.requires_grad_(False)
    with pytest.raises(ValueError, match=r"\(the output head is frozen\)") as err:
        mgda_parameters(model, "lm_head")
    assert "LoRA" not in str(err.value)


def test_last_block_depth_from_text_config_and_a_clear_error():
    import transformers
    model = tiny_causal_lm("llama")
    text = model.config
    # A multimodal-style config: the decoder depth sits under text_config only.
    outer = transformers.PretrainedConfig()
    outer.text_config = text
    model.config = outer
    assert not hasattr(outer, "num_hidden_layers") or outer.num_hidden_layers != 3
    last = names_of(model, mgda_parameters(model, "last_block"))
    assert last and all(n.startswith("model.layers.2.") for n in last)
    model.config = text
    for p in model.model.layers[2].parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="decoder block 2 has no trainable parameter") as err:
        mgda_parameters(model, "last_block")
    assert "--mgda_params all" in str(err.value) and "use --mgda_params last_block" not in str(err.value)


def test_raw_weights_that_overflow_float32_stop_with_one_sentence():
    """Raw GAPO p = 2 weights alpha_i / n_i^2 pass float32's 3.4e38 when the gradient norms are
    near 3e-20 (here both, so alpha = (1/2, 1/2)): the step stops with a sentence instead of a
    backward through infinite weights; the default sum-one scale keeps the same direction
    finite."""
    g = torch.tensor([[3e-20, 0.0], [0.0, 3e-20]])
    with pytest.raises(FloatingPointError, match="overflow float32.*--weight_scale sum_one"):
        gapo.loss_weights("gapo", *linear_losses(g), 2.0, [0.5, 0.5], weight_scale="raw")
    weights, info = gapo.loss_weights("gapo", *linear_losses(g), 2.0, [0.5, 0.5])
    assert torch.isfinite(weights).all() and weights.sum().item() == pytest.approx(1.0)
    assert info["raw_weight_sum"] > 3.4e38  # the raw sum itself is past float32's range


def test_ppo_trains_the_one_objective_its_index_names():
    g = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    for index in range(3):
        losses, params = linear_losses(g)
        w, info = gapo.loss_weights("ppo", losses, params, 2.0, [1 / 3] * 3, objective_index=index)
        assert w.tolist() == [float(i == index) for i in range(3)] and info == {}
    losses, params = linear_losses(g)  # the paper's names: the first and the second objective
    assert gapo.loss_weights("ppo-s", losses, params, 2.0, [1 / 3] * 3,
                             objective_index=2)[0].tolist() == [0.0, 1.0, 0.0]


@pytest.mark.parametrize("method,p", [("mgda", 0.0), ("gapo", 1.0), ("gapo", 2.0), ("gapo", 0.5)])
def test_logged_gains_follow_theorems_3_1_and_3_3(method, p):
    """gains = g_i . d for the step's d = sum_j w_j g_j, checked against the flat gradients; where
    alpha_i > 0, gain_i / n_i^p is one number (theorem_gap ~ 0), and an objective with alpha_i = 0
    gains at least as much per n^p."""
    rng = torch.Generator().manual_seed(7)
    for trial in range(20):
        K = 2 + trial % 4
        g = torch.randn(K, 8, generator=rng, dtype=torch.float64) * torch.rand(K, 1, generator=rng,
                                                                              dtype=torch.float64)
        losses, params = linear_losses(g.float())
        w, info = gapo.loss_weights(method, losses, params, p, [1 / K] * K)
        gains = g @ (w.double() @ g)  # independent: the flat gradients
        assert np.allclose(info["gains"], gains.numpy(), rtol=1e-4, atol=1e-7)
        per_norm = gains / g.norm(dim=1) ** (0.0 if method == "mgda" else p)
        support = torch.tensor(info["alpha"]) > 1e-12
        assert info["theorem_gap"] < 1e-5
        assert np.allclose(per_norm[support], per_norm[support][0], rtol=1e-4)
        assert torch.all(per_norm[~support] >= per_norm[support][0] * (1 - 1e-4))


def test_theorem_gap_is_not_logged_where_no_theorem_applies():
    g = torch.tensor([[3.0, 0.0], [1.0, 2.0]])
    for method in ("pgapo", "gapo-eq17"):
        losses, params = linear_losses(g)
        _, info = gapo.loss_weights(method, losses, params, 2.0, [0.5, 0.5])
        assert "theorem_gap" not in info and len(info["gains"]) == 2
    # Pareto-stationary: opposed gradients, d = 0, the gains are rounding noise with no ratio
    for method, p in (("mgda", 0.0), ("gapo", 2.0)):
        losses, params = linear_losses(torch.tensor([[1.0, 0.0], [-2.0, 0.0]]))
        _, info = gapo.loss_weights(method, losses, params, p, [0.5, 0.5])
        assert "theorem_gap" not in info and max(map(abs, info["gains"])) < 1e-6
