"""Multiple-gradient descent on a K x K Gram matrix: the min-norm solver behind GAPO and MGDA.

GAPO (Li et al., ACL 2025, arXiv:2507.01915, section 3.2) takes one gradient g_i per objective
(i = 1..K), rescales it by its own length (Eq. 6)

    h_i = g_i / ||g_i||^p          (p = 0: plain MGDA; p = 1: unit length; p = 2: length 1/||g_i||)

and moves along the min-norm point d = sum_i alpha_i h_i of their convex hull (Problem 7):

    alpha = argmin_{alpha >= 0, sum(alpha) = 1}  alpha^T G^N alpha,    G^N_ij = h_i . h_j

Everything here works on the K x K Gram matrix alone, never on a model: the caller (gapo.py)
reduces its K gradients to G_ij = g_i . g_j with `gram_matrix`, and this file does the rest in
float64 on the CPU. Facts the solution satisfies (paper Sec. 3.2, Theorems 3.1-3.3; tested in
tests/test_mgda.py):
  - optimality (KKT of Problem 7): h_i . d >= ||d||^2 for every i, with equality where alpha_i > 0,
    so d is a common ascent direction for every objective unless d = 0 (Pareto-stationary);
  - Theorem 3.1 (p = 0): every active objective gets the same first-order gain g_i . d;
  - Theorem 3.3: gain_i / gain_j = n_i^p / n_j^p for active i, j, where n_i = ||g_i||.

The update direction GAPO applies is sum_i alpha_i g_i / n_i^p (docs/decisions.md, "Loss
weights"), i.e. the weighted loss sum_i w_i L_i with w_i = alpha_i / n_i^p: `gapo_weights` returns
those w.

Run `python -m benchmarks.bench_mgda` for solver and Gram timings. Left out on purpose: anything
that touches parameters or optimisers (gapo.py), and constrained or preference-conditioned MGDA
variants.
"""
from dataclasses import dataclass

import numpy as np
import torch


def gram_matrix(grads):
    """G_ij = g_i . g_j from K gradients, each a list of per-parameter tensors (same shapes
    across i).

    Never concatenates a giant flat vector: for each parameter we stack its K slices, (K, n),
    multiply in float32 (bf16 gradients are upcast first) and accumulate the K x K product in
    float64. Returns a (K, K) float64 tensor on the CPU.
    """
    K = len(grads)
    assert K >= 1 and all(len(g) == len(grads[0])
                          for g in grads), "every objective needs one tensor per parameter"
    gram = torch.zeros(K, K, dtype=torch.float64)
    for tensors in zip(*grads):
        stacked = torch.stack([t.reshape(-1).float() for t in tensors])  # (K, n) float32
        gram += (stacked @ stacked.T).double().cpu()
    return gram


def _check_gram(gram):
    """Validate and convert to a symmetric float64 numpy matrix; refuse NaN/inf with a clear
    error."""
    if isinstance(gram, torch.Tensor):
        gram = gram.detach().to("cpu", torch.float64).numpy()
    gram = np.asarray(gram, dtype=np.float64)
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] == 0:
        raise ValueError("the Gram matrix must be square K x K with K >= 1, "
                         f"got shape {gram.shape}")
    if not np.isfinite(gram).all():
        raise ValueError("the Gram matrix contains NaN or inf: an objective's loss or gradient "
                         "is not finite")
    return (gram + gram.T) / 2  # remove round-off asymmetry


def rescale_gram(gram, p):
    """Eq. 6 on the Gram matrix alone: G^N_ij = G_ij / (n_i^p n_j^p), with n_i = sqrt(G_ii).

    The exponent is p, not 2p (docs/decisions.md, "The exponent p"). For p > 0 every norm must be
    positive: drop zero gradients first (docs/decisions.md, "Zero gradients"; `gapo_weights`
    does).
    """
    if p < 0:
        raise ValueError(f"p must be >= 0, got {p}")
    return torch.from_numpy(_rescale(_check_gram(gram), p))


def _rescale(gram, p):
    if p == 0:
        return gram
    norms = np.sqrt(np.clip(gram.diagonal(), 0, None))
    if (norms == 0).any():
        raise ValueError("a gradient has zero norm, so g / ||g||^p is undefined: "
                         "drop it before rescaling")
    # Divide in log space so that norms from 1e-12 to 1e12 with p = 2 neither overflow nor
    # underflow.
    log_scale = p * np.log(norms)  # (K,)
    return gram * np.exp(-(log_scale[:, None] + log_scale[None, :]))


@dataclass
class MinNormSolution:
    alpha: torch.Tensor  # (K,) float64, alpha >= 0, sum 1
    iterations: int  # rounds of Wolfe's method used (0 for the closed forms)
    # duality gap alpha^T G alpha - min_i (G alpha)_i, relative to max_i G_ii
    gap: float
    objective: float  # alpha^T G alpha in the units of the input


def _two_objective_closed_form(G):
    """K = 2 exactly: minimise over gamma in [0, 1] of ||gamma h_1 + (1 - gamma) h_2||^2.

    gamma* = (G_22 - G_12) / (G_11 + G_22 - 2 G_12) = (h_2 - h_1) . h_2 / ||h_1 - h_2||^2, clipped.
    The denominator is ||h_1 - h_2||^2; when it is zero the two vectors are equal and every gamma is
    optimal: we return (1/2, 1/2), the symmetric choice. G is already scaled to max diagonal 1.
    """
    denominator = G[0, 0] + G[1, 1] - 2 * G[0, 1]
    gamma = 0.5 if denominator <= 1e-15 else float(np.clip((G[1, 1] - G[0, 1]) / denominator,
                                                           0.0, 1.0))
    return np.array([gamma, 1.0 - gamma])


def _affine_minimiser(G, support):
    """Minimiser of a^T G a over {a : a_i = 0 off the support, sum a = 1} (KKT: G_SS a = mu 1).

    Least squares, so that a rank-deficient support (affinely dependent h_i) still gets one
    minimiser: the objective value is unique even when a is not.
    """
    index = np.flatnonzero(support)
    s = len(index)
    kkt = np.zeros((s + 1, s + 1))
    kkt[:s, :s] = G[np.ix_(index, index)]
    kkt[:s, s] = -1.0
    kkt[s, :s] = 1.0
    rhs = np.zeros(s + 1)
    rhs[s] = 1.0
    solution = np.linalg.lstsq(kkt, rhs, rcond=None)[0]
    a = np.zeros(len(support))
    a[index] = solution[:s]
    return a


def _active_set(G, alpha, tol, budget):
    """Wolfe's min-norm-point method (1976) on the simplex, from a starting alpha.

    Jump to the affine minimiser on the current support; if that leaves the simplex, stop at the
    boundary and drop the vertex that hit zero (minor cycle); when the support is optimal, add the
    most violated vertex, the Frank-Wolfe vertex argmin_i (G alpha)_i (major cycle), and repeat
    until the duality gap is below tol. Each round is one small linear solve, the number of rounds
    is finite in exact arithmetic, and the answer is exact, also on ill-conditioned or
    rank-deficient Gram matrices (where Frank-Wolfe's rate collapses). In floating point a vertex
    whose optimal weight is 0 can keep a gap just above tol and be dropped and added again for
    ever, so a major cycle that does not lower the objective also stops the method (the gap is
    then rounding noise; the caller gets it). Returns (alpha, rounds used); at most `budget` rounds.
    """
    support = alpha > 0
    best = np.inf  # the objective at the last major cycle
    for rounds in range(1, budget + 1):
        a = _affine_minimiser(G, support)
        if (a[support] >= -1e-15).all():  # -1e-15: a weight of 0 computed as -0.0 or -1e-17
            # alpha lies in the same affine set, so a is at least as good: take it.
            alpha = np.clip(a, 0, None)
            alpha /= alpha.sum()
            G_alpha = G @ alpha
            objective = alpha @ G_alpha
            toward = int(G_alpha.argmin())
            if objective - G_alpha[toward] <= tol or support[toward] or objective >= best:
                return alpha, rounds
            best = objective
            support = alpha > 0
            support[toward] = True  # major cycle: bring in the Frank-Wolfe vertex
        else:
            # minor cycle: move from alpha toward a until the first coordinate reaches zero
            leaving = support & (a < 0)
            theta = np.min(alpha[leaving] / (alpha[leaving] - a[leaving]))
            alpha = alpha + theta * (a - alpha)
            alpha[leaving & (alpha <= 1e-15)] = 0.0
            alpha = np.clip(alpha, 0, None)
            alpha /= alpha.sum()
            support = alpha > 0
    return alpha, budget


def solve_min_norm(gram, max_iter=1000, tol=1e-12):
    """Problem 7: argmin over the simplex of alpha^T G alpha, with solver diagnostics.

    K = 1 and K = 2 use closed forms; K >= 3 uses Wolfe's min-norm-point method (`_active_set`),
    which stops when the duality gap is below tol (or, when rounding keeps it just above, when a
    round no longer lowers the objective), within max_iter rounds; `gap` says where it stopped.

    The matrix is first divided by its largest diagonal entry: the argmin is unchanged, and all
    tolerances become relative, so gradient norms from 1e-12 to 1e12 behave the same. The
    arithmetic is numpy float64 on the CPU: K is tiny, and numpy's per-call overhead is far
    below torch's, which is what makes K = 10 take well under a millisecond.

    Singular Gram matrices are well defined: if some convex combination of the h_i is zero (e.g.
    a zero gradient, or two anti-parallel ones), the minimum is 0 and alpha is one such combination
    (not unique). Callers that want to ignore zero gradients drop them first (gapo_weights does).
    """
    gram = _check_gram(gram)
    K = gram.shape[0]
    G = gram
    scale = G.diagonal().max()
    if K == 1 or scale <= 0:  # one objective, or all gradients zero: any alpha is optimal
        alpha = np.full(K, 1.0 / K)
        return MinNormSolution(torch.from_numpy(alpha), 0, 0.0, float(alpha @ G @ alpha))
    G = G / scale
    iterations = 0
    if K == 2:
        alpha = _two_objective_closed_form(G)
    else:
        # Wolfe's min-norm-point method from the shortest h_i, the best vertex: exact and finite.
        alpha = np.zeros(K)
        alpha[G.diagonal().argmin()] = 1.0
        alpha, iterations = _active_set(G, alpha, tol, max_iter)
    G_alpha = G @ alpha
    gap = float(alpha @ G_alpha - G_alpha.min())
    return MinNormSolution(torch.from_numpy(alpha), iterations, gap, float(alpha @ gram @ alpha))


@dataclass
class GapoWeights:
    weights: torch.Tensor  # (K,) w_i multiplying each loss L_i in the single weighted backward
    # (K,) the solution of Problem 7 on the rescaled Gram matrix (0 for dropped)
    alpha: torch.Tensor
    norms: torch.Tensor  # (K,) n_i = ||g_i||
    # (K,) bool, False for objectives with a zero gradient (docs/decisions.md, "Zero gradients")
    active: torch.Tensor
    iterations: int
    gap: float


def gapo_weights(gram, p, literal_eq17=False, max_iter=1000, tol=1e-12, zero_norm=1e-20):
    """Eq. 6 and Problem 7: loss weights w from the raw Gram matrix G_ij = g_i . g_j.

    Objectives with n_i <= zero_norm carry no signal: weight 0, solved over the rest. If every
    gradient is zero the weights are all 0 and the caller skips the step.
    Decision (docs/decisions.md, "Loss weights"): w_i = alpha_i / n_i^p, so that
    sum_i w_i g_i = sum_i alpha_i h_i is the min-norm point GAPO's theorems are about.
    literal_eq17=True gives the paper's Eq. 17 as printed (w_i = alpha_i on the raw losses),
    offered only as an ablation.
    """
    if p < 0:
        raise ValueError(f"p must be >= 0, got {p}")
    gram = _check_gram(gram)
    K = gram.shape[0]
    norms = np.sqrt(np.clip(gram.diagonal(), 0, None))  # (K,)
    active = norms > zero_norm
    alpha = np.zeros(K)
    weights = np.zeros(K)
    iterations, gap = 0, 0.0
    if active.any():  # else: every gradient is zero, all weights 0, the caller skips the step
        index = np.flatnonzero(active)
        solution = solve_min_norm(_rescale(gram[np.ix_(index, index)], p), max_iter=max_iter,
                                  tol=tol)
        alpha[index] = solution.alpha.numpy()
        weights[index] = alpha[index] if literal_eq17 else alpha[index] / norms[index] ** p
        iterations, gap = solution.iterations, solution.gap
    return GapoWeights(torch.from_numpy(weights), torch.from_numpy(alpha), torch.from_numpy(norms),
                       torch.from_numpy(active), iterations, gap)
