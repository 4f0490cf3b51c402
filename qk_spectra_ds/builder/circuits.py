"""Per-head circuit metrics from the small factors, and their matched null: pure functions of arrays.

A head's circuit M (QK: W_Q^T W_K; OV: W_O W_V) is d_model x d_model of rank <= d_head,
M = A^T B with A, B (d_head x d_model). The kernel gives its singular values s and the
eigenvalues mu of the d_head x d_head cross C = B A^T (the non-zero eigenvalues of M).

- **symmetry** ||(M + M^T)/2||_F^2 / ||M||_F^2 = 1/2 + tr(M^2) / (2 ||M||_F^2), with
  ||M||_F^2 = sum s^2 and tr(M^2) = tr(C^2) = sum mu^2 (real): exact from the factors.
- **copying score** sum(Re mu) / sum(|mu|) (Elhage et al. 2021; the QK ``positivity``
  formula on the OV circuit) and **positive share** sum(|mu| : Re mu > 0) / sum(|mu|).
- **matched null**: M' = U diag(s) V^T with U, V independent Haar-random d_model x d_head
  orthonormal frames (the head's own singular values, random orientation). The non-zero
  eigenvalues of M' are those of diag(s) W, W = V^T U, distributed as the top d_head x d_head
  block of a Haar frame (drawn exactly in O(d_head^3), :func:`haar_block_draws`).

  Symmetry: analytic. E tr(M'^2) = sum s^2 / d and, with the Haar moments
  a = E O_11^4 = 3 / (d (d + 2)), b = E O_11^2 O_22^2 = E O_12^2 O_21^2 = (d + 1) / (d (d - 1) (d + 2)),
  E tr(M'^2)^2 = a sum s^4 + 3 b ((sum s^2)^2 - sum s^4): mean 1/2 + 1/(2d), sd from these.

  Positivity / copying score: mean exactly 0 (U -> -U is Haar-invariant and flips every mu);
  the variance E[P^2] by Monte Carlo with the control variate Y = (sum s_i W_ii)^2 / (sum s^2 / d)
  (E Y = 1 exactly; P^2 ~ Y / const, so the ratio estimator mean(P^2) / mean(Y) has a small
  error). Draws are doubled from :data:`MIN_DRAWS` until, for every head of the batch, a 90%
  upper confidence bound of the null sd's relative standard error (:func:`error_bound_factor`
  times its estimate) is at most :data:`SD_REL_ERROR`, or :data:`MAX_DRAWS`: the z-score's own
  Monte Carlo error, |z| times that, is below 0.1 for |z| <= 3 (the decision threshold) and
  below 3.3% of |z| beyond, where no decision changes.
"""

from __future__ import annotations

import numpy as np

from ..statistics import positivity_from_eigenvalues

MIN_DRAWS = 4
MAX_DRAWS = 4096
SD_REL_ERROR = 0.1 / 3
"""Target relative standard error of a Monte Carlo null sd: z's own error <= 0.1 up to |z| = 3."""

ERROR_CONFIDENCE_Z = 1.2815515655446004
"""Standard normal 0.9 quantile: the draws stop on a 90% upper bound of the estimated error, not the estimate."""


def error_bound_factor(dof: int) -> float:
    """sqrt(dof / chi2_dof(0.1)): a 90% upper confidence bound of a standard deviation over its estimate.

    Wilson-Hilferty's chi-square quantile (within 1.3% of the exact quantile for dof >= 3); the
    estimate from 3 degrees of freedom (:data:`MIN_DRAWS` draws) can be half the true error, so
    stopping on the estimate alone would often stop too early.
    """
    c = 2.0 / (9.0 * dof)
    quantile = dof * max(1.0 - c - ERROR_CONFIDENCE_Z * np.sqrt(c), 1e-3) ** 3
    return float(np.sqrt(dof / quantile))


def symmetry(singular_values: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """||(M + M^T)/2||_F^2 / ||M||_F^2 per head from s (..., n) and the cross's eigenvalues mu (..., n); NaN for M = 0."""
    total = np.square(np.asarray(singular_values, np.float64)).sum(axis=-1)
    trace_sq = np.real(np.square(np.asarray(mu)).sum(axis=-1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, 0.5 + 0.5 * trace_sq / np.where(total > 0, total, 1.0), np.nan)


def copying_score(mu: np.ndarray) -> np.ndarray:
    """sum(Re mu) / sum(|mu|) per head (1: every eigenvalue positive real); NaN when all mu are 0."""
    return positivity_from_eigenvalues(mu)


def positive_share(mu: np.ndarray) -> np.ndarray:
    """Share of eigenvalue mass with positive real part: sum(|mu| where Re mu > 0) / sum(|mu|); NaN when all mu are 0."""
    mu = np.asarray(mu)
    size = np.abs(mu)
    denom = size.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(
            denom > 0, np.where(mu.real > 0, size, 0.0).sum(axis=-1) / np.where(denom > 0, denom, 1.0), np.nan
        )


def symmetry_null_moments(singular_values: np.ndarray, d_model: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, sd) of the symmetry of U diag(s) V^T over Haar frames U, V in R^d_model (exact, per head)."""
    s2 = np.square(np.asarray(singular_values, np.float64))
    d = float(d_model)
    p2, p4 = s2.sum(axis=-1), np.square(s2).sum(axis=-1)
    a = 3.0 / (d * (d + 2.0))
    b = (d + 1.0) / (d * (d - 1.0) * (d + 2.0)) if d > 1 else 0.0
    second = a * p4 + 3.0 * b * (p2 * p2 - p4)
    var_t = np.maximum(second - (p2 / d) ** 2, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        sd = np.where(p2 > 0, np.sqrt(var_t) / (2.0 * np.where(p2 > 0, p2, 1.0)), np.nan)
    mean = np.where(p2 > 0, 0.5 + 0.5 / d, np.nan)
    return mean, sd


def haar_block_draws(rng: np.random.Generator, n: int, d_model: int, d_head: int) -> np.ndarray:
    """(n, d_head, d_head) draws of V^T U for independent Haar frames U, V (d_model x d_head), exactly.

    V^T U is distributed as the top block of one Haar frame U = X R^-1 (X Gaussian d_model x d_head,
    X = QR): with X = [T; Y], X^T X = T^T T + Y^T Y and Y^T Y Wishart(d_head, d_model - d_head), drawn
    by Bartlett's decomposition when d_model - d_head >= d_head (else Y itself). Top block = T L^-T.
    """
    m = d_model - d_head
    if m < 0:
        raise ValueError(f"d_model {d_model} < d_head {d_head}")
    top = rng.standard_normal((n, d_head, d_head))
    if m >= d_head:
        bart = np.tril(rng.standard_normal((n, d_head, d_head)), -1)
        diag = np.sqrt(rng.chisquare(m - np.arange(d_head), size=(n, d_head)))
        idx = np.arange(d_head)
        bart[:, idx, idx] = diag
        wishart = bart @ bart.transpose(0, 2, 1)
    else:
        y = rng.standard_normal((n, m, d_head))
        wishart = y.transpose(0, 2, 1) @ y
    gram = top.transpose(0, 2, 1) @ top + wishart
    lower = np.linalg.cholesky(gram)
    # T L^-T: solve L Z^T = T^T for Z
    return np.linalg.solve(lower, top.transpose(0, 2, 1)).transpose(0, 2, 1)


def positivity_null_moments(
    singular_values: np.ndarray,
    d_model: int,
    rng: np.random.Generator,
    eigvals=None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(mean 0, Monte Carlo sd, draws) of sum(Re mu)/sum(|mu|) of U diag(s) V^T per head (rows of s).

    Draws W are shared by the heads (common random numbers); each head's null sd carries the
    error described in the module docstring. ``eigvals`` maps a (..., n, n) float64 array to its
    eigenvalues (default numpy's); heads with s = 0 get NaN.
    """
    s = np.asarray(singular_values, np.float64)
    d_head = s.shape[1]
    eig = eigvals or np.linalg.eigvals
    p2 = np.square(s).sum(axis=-1)
    live = p2 > 0
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    n = MIN_DRAWS
    total = 0
    while True:
        w = haar_block_draws(rng, n - total, d_model, d_head)  # (k, dh, dh)
        sw = s[None, :, :, None] * w[:, None, :, :]  # (k, H, dh, dh): diag(s) W per head
        mu = eig(sw)
        denom = np.abs(mu).sum(axis=-1)
        num = np.real(mu).sum(axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            xs.append(np.where(denom > 0, (num / np.where(denom > 0, denom, 1.0)) ** 2, 0.0))
            ys.append(np.einsum("hi,kii->kh", s, w) ** 2 / np.where(live, p2 / d_model, 1.0))
        total = n
        x, y = np.concatenate(xs), np.concatenate(ys)
        ratio = x.mean(axis=0) / np.where(live, y.mean(axis=0), 1.0)
        resid = x - ratio * y
        se_var = resid.std(axis=0, ddof=1) / np.sqrt(total) / np.where(live, y.mean(axis=0), 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel_sd = np.where(live & (ratio > 0), se_var / (2.0 * np.where(ratio > 0, ratio, 1.0)), 0.0)
        if (rel_sd * error_bound_factor(total - 1) <= SD_REL_ERROR).all() or total >= MAX_DRAWS:
            break
        n = min(2 * total, MAX_DRAWS)
    sd = np.where(live, np.sqrt(np.maximum(ratio, 0.0)), np.nan)
    mean = np.where(live, 0.0, np.nan)
    return mean, sd, total


def z_scores(value: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """(value - mean) / sd, NaN where any is NaN or sd is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sd > 0, (value - mean) / np.where(sd > 0, sd, 1.0), np.nan)


def matched_null_rng(seed: int, model_key: int, layer: int, circuit: int, variant: int) -> np.random.Generator:
    """The matched null's generator: PCG64 from SeedSequence(seed, spawn_key=(model key, layer, circuit, variant, 2**32))."""
    return np.random.default_rng(
        np.random.SeedSequence(entropy=seed, spawn_key=(model_key, layer, circuit, variant, 2**32))
    )
