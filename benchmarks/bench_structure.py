"""Calibration of the default method's tests (issue 20): size on null data, power on planted structure.

Prints three tables:

1. **Structure test** (``analysis/structure.py``): rejection rate at the 5% level
   on data drawn from its null (Gaussian clouds with the covariance of a real
   model's features), on structureless heads (spectra of random Gaussian
   ``A B^T``, d_head x d_head), and its power on planted classes (Gaussian heads mixed with
   low-rank heads, two decay types), with the k the consensus then uses.
2. **Per-layer tests** (``analysis/layer_permutation_tests.py``): rejection rates of the
   permutation BDS, trend and depth-profile tests after Holm over 6 statistics
   x 3 tests, on i.i.d. series and on linear and hump-shaped profiles spanning
   2 noise standard deviations, with real permutations, beside the Monte Carlo
   approximation the report's power notes use.

Usage: ``python benchmarks/bench_structure.py [--reps 200] [--quick]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qk_spectra_ds.analysis import consensus_features, layer_permutation_tests, structure


def gaussian_heads(n, rng, d_head=32, d_model=256):
    a = rng.standard_normal((n, d_head, d_model))
    b = rng.standard_normal((n, d_head, d_model))
    return np.linalg.svd(a @ np.swapaxes(b, 1, 2), compute_uv=False) ** 2


def decay_heads(decay, rng, d_head=32, noise=0.1):
    s = np.arange(1, d_head + 1)[None, :] ** -np.asarray(decay)[:, None] * np.exp(
        noise * rng.standard_normal((len(decay), d_head))
    )
    return np.sort(s, axis=1)[:, ::-1] ** 2


def rate(pvalues, alpha=0.05):
    p = np.asarray(pvalues)
    k = (p <= alpha).sum()
    n = len(p)
    half = 1.96 * np.sqrt(max(k, 1) * (n - k) / n) / n
    return f"{k / n:6.1%} ({max(0, k / n - half):.1%}-{min(1, k / n + half):.1%})"


def structure_table(reps: int, draws: int, n: int) -> None:
    rng = np.random.default_rng(2026)
    template = consensus_features.head_features(gaussian_heads(n, rng))[0]  # a covariance with the features' shape
    cov_root = np.linalg.cholesky(np.cov(template, rowvar=False) + 1e-6 * np.eye(template.shape[1]))
    cases = {
        "null: Gaussian cloud, features' covariance": lambda: rng.standard_normal((n, cov_root.shape[0])) @ cov_root.T,
        "no classes: Gaussian heads (one shape)": lambda: consensus_features.head_features(gaussian_heads(n, rng))[0],
        "planted 2: Gaussian + low-rank heads (1:1)": lambda: consensus_features.head_features(
            np.vstack([gaussian_heads(n // 2, rng), decay_heads(rng.uniform(1.5, 2.0, n - n // 2), rng)])
        )[0],
        "planted 2: Gaussian + low-rank heads (5:1)": lambda: consensus_features.head_features(
            np.vstack([gaussian_heads(n - n // 6, rng), decay_heads(rng.uniform(1.5, 2.0, n // 6), rng)])
        )[0],
        "planted 2: decay 0.6 vs 1.0 (close)": lambda: consensus_features.head_features(
            decay_heads(np.r_[np.full(n // 2, 0.6), np.full(n - n // 2, 1.0)] + 0.1 * rng.standard_normal(n), rng)
        )[0],
        "planted 2: Gaussian heads, d_model 64 vs 1024": lambda: consensus_features.head_features(
            np.vstack([gaussian_heads(n // 2, rng, d_model=64), gaussian_heads(n - n // 2, rng, d_model=1024)])
        )[0],
    }
    print(f"\nstructure test: {reps} data sets of {n} heads each, {draws} Monte Carlo draws, level 5%")
    print(f"{'case':48s} {'rejects (95% CI)':>24s}  {'median p':>8s}  time")
    for name, make in cases.items():
        t0 = time.perf_counter()
        p = [structure.structure_test(make(), draws, seed=i).p_value for i in range(reps)]
        print(f"{name:48s} {rate(p):>24s}  {np.median(p):8.3f}  {time.perf_counter() - t0:.1f}s", flush=True)


def layer_table(reps: int, permutations: int, lengths) -> None:
    print(
        f"\nper-layer tests: {reps} series per cell, {permutations} permutations, Holm over 6 stats x 3 tests "
        "(the other 15 p-values uniform), level 5%; profiles span 2 noise sd"
    )
    print(
        f"{'n':>3s} {'shape':7s} {'BDS':>7s} {'trend':>7s} {'profile':>8s}   | Monte Carlo approximation (report's power notes)"
    )
    for n in lengths:
        rng = np.random.default_rng(n)
        approx = layer_permutation_tests.simulated_power(n)
        for shape, signal in {"null": np.zeros(n), **layer_permutation_tests.shapes(n)}.items():
            hits = np.zeros(3)
            for _ in range(reps):
                res = layer_permutation_tests.permutation_pvalues(signal + rng.standard_normal(n), permutations, rng)
                p = np.r_[res["p_bds"], res["p_trend_rho"], res["p_profile_r2"], rng.uniform(size=15)]
                hits += layer_permutation_tests.holm(p)[:3] < 0.05
            a = approx[shape]
            print(
                f"{n:3d} {shape:7s} {hits[0] / reps:7.1%} {hits[1] / reps:7.1%} {hits[2] / reps:8.1%}   | "
                f"{a['bds']:6.1%} {a['trend']:6.1%} {a['profile']:6.1%}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--draws", type=int, default=structure.N_DRAWS)
    parser.add_argument("--heads", type=int, default=72)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    args = parser.parse_args()
    reps = 40 if args.quick else args.reps
    structure_table(reps, args.draws, args.heads)
    layer_table(max(reps // 2, 20), layer_permutation_tests.N_PERMUTATIONS, (12, 28, 44))


if __name__ == "__main__":
    main()
