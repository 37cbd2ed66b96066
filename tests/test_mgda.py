"""Property tests for mgda.py against independent references (SPEC.md section 5)."""
import itertools

import numpy as np
import pytest
import torch

from mgda import (gapo_weights, gram_matrix, rescale_gram, solve_min_norm)


def solved(gram):
    """alpha of Problem 7, the solver's answer."""
    return solve_min_norm(gram).alpha


def exact_min_norm(gram):
    """Reference: enumerate every support S, solve the equality-constrained QP on it, keep the best
    feasible one. Independent of the solver under test (numpy, least squares, no iterations)."""
    K = gram.shape[0]
    best_value, best_alpha = np.inf, None
    for size in range(1, K + 1):
        for support in itertools.combinations(range(K), size):
            s = list(support)
            kkt = np.zeros((size + 1, size + 1))
            kkt[:size, :size] = gram[np.ix_(s, s)]
            kkt[:size, size] = -1.0
            kkt[size, :size] = 1.0
            rhs = np.zeros(size + 1)
            rhs[size] = 1.0
            solution, *_ = np.linalg.lstsq(kkt, rhs, rcond=None)
            a = solution[:size]
            if np.abs(kkt @ solution - rhs).max() > 1e-8 or (a < -1e-12).any():
                continue
            alpha = np.zeros(K)
            alpha[s] = np.clip(a, 0, None) / np.clip(a, 0, None).sum()
            value = alpha @ gram @ alpha
            if value < best_value:
                best_value, best_alpha = value, alpha
    return best_value, best_alpha


def random_gradients(rng, K, dim, rank=None):
    if rank is None:
        return rng.standard_normal((K, dim))
    return rng.standard_normal((K, rank)) @ rng.standard_normal((rank, dim))


def check_simplex(alpha, K):
    assert alpha.shape == (K,) and alpha.dtype == torch.float64
    assert (alpha >= 0).all() and abs(alpha.sum().item() - 1) < 1e-12


# --- agreement with the exact reference ------------------------------------------------------------

@pytest.mark.parametrize("K", range(2, 9))
def test_matches_exact_reference_on_random_grams(rng, K):
    for trial in range(40):
        dim = int(rng.integers(1, 12))
        rank = int(rng.integers(1, K)) if trial % 3 == 0 and K > 2 else None  # rank-deficient third
        g = random_gradients(rng, K, dim, rank) * 10.0 ** rng.uniform(-3, 3, size=(K, 1))
        gram = g @ g.T
        alpha = solved(torch.tensor(gram))
        check_simplex(alpha, K)
        value = alpha.numpy() @ gram @ alpha.numpy()
        exact, _ = exact_min_norm(gram)
        scale = np.diag(gram).max()
        # alpha is not unique when the Gram matrix is singular; the minimum is.
        assert value - exact <= 1e-9 * scale, (K, trial, value, exact)


def test_k3_matches_a_fine_simplex_grid(rng):
    for _ in range(20):
        g = rng.standard_normal((3, 4))
        gram = g @ g.T
        steps = np.linspace(0, 1, 401)
        grid = np.array([(a, b, 1 - a - b) for a in steps for b in steps if a + b <= 1 + 1e-12])
        grid_best = np.einsum("ni,ij,nj->n", grid, gram, grid).min()
        alpha = solved(torch.tensor(gram)).numpy()
        assert alpha @ gram @ alpha <= grid_best + 1e-12


# --- optimality and the paper's theorems -------------------------------------------------------

@pytest.mark.parametrize("p", [0.0, 1.0, 2.0, 0.5])
@pytest.mark.parametrize("K", [2, 3, 5, 8])
def test_kkt_optimality_and_theorem_3_3(rng, K, p):
    for _ in range(30):
        g = rng.standard_normal((K, 20)) * 10.0 ** rng.uniform(-2, 2, size=(K, 1))
        norms = np.linalg.norm(g, axis=1)
        h = g / norms[:, None] ** p
        alpha = solved(rescale_gram(torch.tensor(g @ g.T), p)).numpy()
        d = alpha @ h
        dd = d @ d
        scale = (np.linalg.norm(h, axis=1) ** 2).max()
        gains_h = h @ d
        # optimality: h_i . d >= ||d||^2 for all i, equal on the support
        assert (gains_h >= dd - 1e-9 * scale).all()
        active = alpha > 1e-9
        assert np.allclose(gains_h[active], dd, atol=1e-9 * scale, rtol=1e-7)
        if dd > 1e-8 * scale and active.sum() >= 2:
            # Theorem 3.3: gain_i / gain_j = n_i^p / n_j^p on the raw gradients g
            gains_g = g @ d
            ratio = gains_g[active] / norms[active] ** p
            assert np.allclose(ratio, ratio[0], rtol=1e-6)


def test_theorem_3_1_equal_gains_for_plain_mgda(rng):
    for _ in range(50):
        g = rng.standard_normal((4, 6))
        alpha = solved(torch.tensor(g @ g.T)).numpy()
        d = alpha @ g
        active = alpha > 1e-9
        gains = g @ d
        if active.sum() >= 2:
            assert np.allclose(gains[active], gains[active][0], rtol=1e-7, atol=1e-10)


def test_k2_p1_gives_half_half_for_non_parallel_gradients(rng):
    for _ in range(100):
        g = rng.standard_normal((2, 5)) * 10.0 ** rng.uniform(-4, 4, size=(2, 1))
        alpha = solved(rescale_gram(torch.tensor(g @ g.T), 1))
        assert torch.allclose(alpha, torch.tensor([0.5, 0.5], dtype=torch.float64), atol=1e-12)


def test_p1_direction_invariant_to_loss_scale(rng):
    g = rng.standard_normal((3, 7))
    w = gapo_weights(torch.tensor(g @ g.T), p=1).weights.numpy()
    g2 = g.copy()
    g2[1] *= 1234.5  # multiplying loss 1 by c > 0 multiplies its gradient by c
    w2 = gapo_weights(torch.tensor(g2 @ g2.T), p=1).weights.numpy()
    d, d2 = w @ g, w2 @ g2
    assert np.allclose(d, d2, rtol=1e-8, atol=1e-12)


def test_p0_is_plain_mgda_and_eq6_exponent_is_p_not_2p(rng):
    g = rng.standard_normal((3, 4)) * np.array([[0.1], [1.0], [10.0]])
    gram = torch.tensor(g @ g.T)
    assert torch.equal(rescale_gram(gram, 0), gram)
    norms = np.linalg.norm(g, axis=1)
    h = g / norms[:, None] ** 2
    assert np.allclose(rescale_gram(gram, 2).numpy(), h @ h.T, rtol=1e-10)


# --- edge cases ------------------------------------------------------------------------------------

def test_single_objective():
    assert torch.equal(solved(torch.tensor([[4.0]])), torch.tensor([1.0], dtype=torch.float64))
    w = gapo_weights(torch.tensor([[4.0]]), p=2)
    assert torch.allclose(w.weights, torch.tensor([1 / 4.0], dtype=torch.float64))


def test_identical_gradients_give_half_half():
    g = np.array([[1.0, 2.0, 3.0]] * 2)
    assert torch.allclose(solved(torch.tensor(g @ g.T)), torch.tensor([0.5, 0.5], dtype=torch.float64))


def test_parallel_gradients_pick_the_shorter_one():
    g = np.array([[1.0, 2.0], [3.0, 6.0]])  # same direction, lengths 1:3
    alpha = solved(torch.tensor(g @ g.T))
    assert torch.allclose(alpha, torch.tensor([1.0, 0.0], dtype=torch.float64))


def test_anti_parallel_gradients_reach_zero_norm():
    g = np.array([[1.0, 2.0], [-2.0, -4.0]])
    solution = solve_min_norm(torch.tensor(g @ g.T))
    assert solution.objective <= 1e-12
    assert torch.allclose(solution.alpha, torch.tensor([2 / 3, 1 / 3], dtype=torch.float64))


def test_zero_gradient_is_dropped_by_gapo_weights_and_documented_in_solver():
    g = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    gram = torch.tensor(g @ g.T)
    # The solver on its own: the zero vector is in the hull, so the minimum is 0 at alpha = e_0.
    assert solve_min_norm(gram).objective == 0.0
    assert solved(gram)[0] == 1.0
    # GAPO drops it and solves over the rest (SPEC section 5, step 6).
    result = gapo_weights(gram, p=1)
    assert result.active.tolist() == [False, True, True]
    assert result.weights[0] == 0 and result.alpha[0] == 0
    assert torch.allclose(result.alpha[1:], torch.tensor([0.5, 0.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="zero norm"):
        rescale_gram(gram, 1)
    # All zero: no weights, the caller skips the step.
    assert gapo_weights(torch.zeros(2, 2), p=2).weights.abs().sum() == 0


@pytest.mark.parametrize("p", [0, 1, 2])
def test_extreme_norms_no_overflow(rng, p):
    for exponent in [-12, -6, 0, 6, 12]:
        g = rng.standard_normal((3, 5))
        g[0] *= 10.0 ** exponent
        g[1] *= 10.0 ** -exponent
        gram = torch.tensor(g @ g.T)
        result = gapo_weights(gram, p=p)
        assert torch.isfinite(result.weights).all() and torch.isfinite(result.alpha).all()
        check_simplex(result.alpha, 3)
        hn = rescale_gram(gram, p).numpy()
        exact, _ = exact_min_norm(hn / np.diag(hn).max())
        alpha = result.alpha.numpy()
        assert alpha @ (hn / np.diag(hn).max()) @ alpha - exact <= 1e-9


def test_nan_and_inf_are_refused():
    for bad in [float("nan"), float("inf")]:
        gram = torch.eye(3, dtype=torch.float64)
        gram[0, 1] = gram[1, 0] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            solved(gram)
        with pytest.raises(ValueError, match="NaN or inf"):
            gapo_weights(gram, p=2)


def test_negative_p_is_refused():
    with pytest.raises(ValueError, match="p must be >= 0"):
        rescale_gram(torch.eye(2), -1)


def test_iteration_cap_is_honoured_on_adversarial_inputs(rng):
    # Nearly parallel, badly scaled gradients (they made the earlier Frank-Wolfe solver zig-zag).
    base = rng.standard_normal(6)
    g = np.stack([base + 1e-7 * rng.standard_normal(6) for _ in range(6)]) * np.logspace(0, 3, 6)[:, None]
    for cap in [1, 3, 10]:
        solution = solve_min_norm(torch.tensor(g @ g.T), max_iter=cap, tol=0.0)
        assert solution.iterations <= cap
        check_simplex(solution.alpha, 6)


def test_converges_to_tight_gap_well_within_cap(rng):
    for K in [3, 5, 10]:
        g = rng.standard_normal((K, 50))
        solution = solve_min_norm(torch.tensor(g @ g.T), max_iter=1000, tol=1e-12)
        assert solution.gap <= 1e-9 and solution.iterations < 1000


def test_a_vertex_of_weight_zero_does_not_cycle_to_the_cap():
    """Two opposed gradients and a tiny third under p = 2: the third's optimal weight is 0, its
    affine weight rounds to -0.0, and it kept re-entering the support until max_iter (1000 rounds,
    a gap of 3e-12 against tol 1e-12). The method now stops when a round no longer helps."""
    g = np.array([[-1.66151683152260, 1.17926104681548], [5.85615429477066, -4.15640366257120],
                  [7.63454033e-06, -1.26392826e-07]])
    gram = rescale_gram(torch.tensor(g @ g.T), 2).numpy()
    solution = solve_min_norm(torch.from_numpy(gram))
    assert solution.iterations < 20 and solution.gap < 1e-10
    value, alpha = exact_min_norm(gram)
    assert abs(solution.objective - value) <= 1e-12 * gram.diagonal().max()
    # the two opposed h_i are nearly anti-parallel: alpha is ill-conditioned, the minimum is not
    np.testing.assert_allclose(solution.alpha.numpy(), alpha, atol=1e-5)
    assert solution.alpha[2] == 0


def test_inputs_of_any_dtype_are_solved_in_float64():
    g = torch.randn(3, 8, dtype=torch.bfloat16)
    gram = (g.float() @ g.float().T).to(torch.bfloat16)
    assert solved(gram).dtype == torch.float64


def test_gram_matrix_from_per_parameter_lists_matches_flat_products():
    shapes = [(3, 4), (5,), (2, 2, 2)]
    grads = [[torch.randn(s) for s in shapes] for _ in range(3)]
    flat = torch.stack([torch.cat([t.flatten() for t in g]) for g in grads]).double()
    assert torch.allclose(gram_matrix(grads), flat @ flat.T, rtol=1e-6)
    bf16 = [[t.bfloat16() for t in g] for g in grads]
    assert gram_matrix(bf16).dtype == torch.float64


def test_literal_eq17_ablation_uses_alpha_as_weights(rng):
    g = rng.standard_normal((2, 4)) * np.array([[1.0], [5.0]])
    gram = torch.tensor(g @ g.T)
    literal = gapo_weights(gram, p=2, literal_eq17=True)
    decided = gapo_weights(gram, p=2)
    assert torch.equal(literal.weights, literal.alpha)
    assert torch.allclose(decided.weights, decided.alpha / decided.norms ** 2)


def test_k2_p2_alpha_is_p0_alpha_swapped(rng):
    """For K = 2: alpha_1(p=2) = 1 - alpha_1(p=0), clipping included (the README's by-product)."""
    for _ in range(200):
        g = rng.standard_normal((2, 4)) * 10.0 ** rng.uniform(-2, 2, size=(2, 1))
        gram = torch.tensor(g @ g.T)
        a0 = solved(rescale_gram(gram, 0))
        a2 = solved(rescale_gram(gram, 2))
        assert torch.allclose(a2, a0.flip(0), atol=1e-9)
