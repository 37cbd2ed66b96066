"""Benchmark of mgda.py: min-norm solver time and iterations per K, and Gram-matrix build time.

Run: python -m benchmarks.bench_mgda   (a few seconds on a 2-core CPU; figures go in the README)
Not a test: timings on shared machines are noisy, so they are measured here and reported, never
asserted.
"""
import time

import numpy as np
import torch

from mgda import gram_matrix, solve_min_norm


def time_call(fn, repeats):
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("solver: K, mean time per call, mean / max iterations, worst relative duality gap "
          "(100 random Gram matrices)")
    for K in [2, 3, 5, 10]:
        grams = []
        for _ in range(100):
            g = rng.standard_normal((K, 64)) * 10.0 ** rng.uniform(-3, 3, size=(K, 1))
            grams.append(torch.tensor(g @ g.T))
        solutions = [solve_min_norm(gram) for gram in grams]
        seconds = time_call(lambda: [solve_min_norm(gram) for gram in grams], 3) / len(grams)
        iterations = [s.iterations for s in solutions]
        print(f"  K={K:2d}: {seconds * 1e6:8.1f} us/call, iterations {np.mean(iterations):5.1f} / "
              f"{max(iterations):3d}, gap {max(s.gap for s in solutions):.1e}")
    print("Gram matrix from K float32 gradients (split into 4 parameter tensors each)")
    for n in [1_000_000, 10_000_000]:
        for K in [2, 5]:
            grads = [[torch.randn(n // 4) for _ in range(4)] for _ in range(K)]
            seconds = time_call(lambda: gram_matrix(grads), 3)
            print(f"  K={K}, {n:.0e} entries each: {seconds * 1e3:7.1f} ms")


if __name__ == "__main__":
    main()
