"""Is there structure at all? A calibrated Monte Carlo test of "one Gaussian cloud" against "k >= 2 classes".

Clustering always returns classes, so "k = 2, stability 0.87" says nothing
until a test has ruled out a structureless population. This is a
SigClust-style test (Liu, Hayes, Nobel and Marron, "Statistical significance
of clustering for high-dimension, low-sample size data", JASA 103, 2008),
made exact:

- **Statistic**: the 2-means cluster index ``CI = W_2 / W_1``, the within-class
  sum of squares of the best 2-means split over the total sum of squares
  (small = the heads split well in two). 2-means here is deterministic: start
  from the split at the median of the first principal component, then Lloyd
  iterations (:func:`two_means_index`), the same algorithm for the data and
  every reference draw.
- **Null**: one Gaussian population with the features' mean and covariance.
  Each reference draw is standard normal noise whitened to sample covariance
  exactly ``I`` and mapped onto the data's own sample mean and covariance
  (in the data's principal subspace). For Gaussian data the standardised
  data are independent of the sample covariance and rotation invariant, so
  under the null the data and the draws are exchangeable given the sample
  covariance: the Monte Carlo p-value ``(1 + #{CI* <= CI}) / (1 + B)`` has
  exactly its nominal size, whatever the covariance (the benchmark
  ``benchmarks/bench_structure.py`` measures it, and the power on planted classes).
- **Effect size**: ``CI`` beside the null draws' median and 5% quantile.

What it cannot see: a *curved* continuum (a one-parameter family whose
histograms move across bins) is not a Gaussian cloud, so it can reject
without discrete classes; a rejection says "more clusterable than one
Gaussian population with these second moments", not "k discrete types".
The report therefore also gives the classes' profiles and separating
metrics (``class_profiles``) so a reader can judge how distinct they are.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd

N_DRAWS = 199
ALPHA = 0.05
LLOYD_ITERATIONS = 30
CHUNK_ELEMENTS = 4_000_000
"""Reference draws are processed in chunks of at most this many floats (n x r x draws)."""

STRUCTURE_COLUMNS = [
    "model",
    "n_heads",
    "n_dims",
    "statistic",
    "null_median",
    "null_q05",
    "p_value",
    "n_draws",
    "seed",
    "alpha",
    "tested",
    "structure",
    "conclusion",
]
"""``statistic``: 2-means cluster index of the heads' features; ``null_*``: of the Gaussian reference draws;
``structure``: p <= alpha (False when not ``tested``); ``conclusion``: the words the report uses."""
CONTINUUM = "no evidence of classes: a continuum"
CLASSES = "evidence of classes"


def principal_scores(X: np.ndarray, max_dims: int | None = None) -> np.ndarray:
    """Centred principal-component scores of ``X`` on the components with non-zero variance (at most ``max_dims``)."""
    X = np.asarray(X, dtype=np.float64)
    Xc = X - X.mean(axis=0)
    _, s, vt = np.linalg.svd(Xc, full_matrices=False)
    r = int((s > max(s[0], 1e-300) * 1e-7).sum()) if len(s) and s[0] > 0 else 0
    if max_dims is not None:
        r = min(r, int(max_dims))
    return Xc @ vt[:r].T


def two_means_index(Z: np.ndarray, iterations: int = LLOYD_ITERATIONS) -> np.ndarray:
    """``W_2 / W_1`` of each of ``Z``'s data sets ``(..., n, r)`` (centred), by deterministic 2-means.

    Start: split at the median score on the first principal axis; then Lloyd
    iterations. Vectorised over the leading axes.
    """
    Z = np.asarray(Z, dtype=np.float64)
    batch = Z.reshape((-1,) + Z.shape[-2:])
    Zc = batch - batch.mean(axis=1, keepdims=True)
    total = (Zc**2).sum(axis=(1, 2))
    gram = np.einsum("bni,bnj->bij", Zc, Zc)
    axis = np.linalg.eigh(gram)[1][:, :, -1]
    score = np.einsum("bni,bi->bn", Zc, axis)
    member = score > np.median(score, axis=1, keepdims=True)
    for _ in range(int(iterations)):
        n1 = member.sum(axis=1)
        n0 = member.shape[1] - n1
        ok = (n1 > 0) & (n0 > 0)
        m1 = np.einsum("bn,bni->bi", member, Zc) / np.maximum(n1, 1)[:, None]
        m0 = np.einsum("bn,bni->bi", ~member, Zc) / np.maximum(n0, 1)[:, None]
        d1 = ((Zc - m1[:, None, :]) ** 2).sum(axis=2)
        d0 = ((Zc - m0[:, None, :]) ** 2).sum(axis=2)
        new = np.where(ok[:, None], d1 < d0, member)
        if np.array_equal(new, member):
            break
        member = new
    n1 = member.sum(axis=1)
    n0 = member.shape[1] - n1
    m1 = np.einsum("bn,bni->bi", member, Zc) / np.maximum(n1, 1)[:, None]
    m0 = np.einsum("bn,bni->bi", ~member, Zc) / np.maximum(n0, 1)[:, None]
    within = np.where(member, ((Zc - m1[:, None, :]) ** 2).sum(axis=2), ((Zc - m0[:, None, :]) ** 2).sum(axis=2)).sum(
        axis=1
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(total > 0, within / np.where(total > 0, total, 1.0), np.nan)
    return out.reshape(Z.shape[:-2])


def gaussian_references(Z: np.ndarray, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_draws, n, r)`` Gaussian data sets with exactly ``Z``'s sample mean (0) and sample covariance."""
    n, r = Z.shape
    cov = Z.T @ Z / (n - 1)
    ev, vec = np.linalg.eigh(cov)
    root = (vec * np.sqrt(np.clip(ev, 0.0, None))) @ vec.T
    W = rng.standard_normal((int(n_draws), n, r))
    W -= W.mean(axis=1, keepdims=True)
    cw = np.einsum("bni,bnj->bij", W, W) / (n - 1)
    ew, vw = np.linalg.eigh(cw)
    inv_root = np.einsum("bij,bj,bkj->bik", vw, 1.0 / np.sqrt(ew), vw)
    return W @ inv_root @ root


@dataclass(frozen=True)
class StructureTest:
    """The structure test's result on one set of heads (one row of ``structure.csv`` without its model)."""

    n_heads: int
    n_dims: int
    """Principal components the test used (those with variance, at most n_heads - 2)."""
    statistic: float
    """The 2-means cluster index W_2 / W_1 of the heads (small: they split well in two)."""
    null_median: float
    """Median of the statistic over the Gaussian reference draws."""
    null_q05: float
    """5% quantile of the statistic over the reference draws."""
    p_value: float
    """Monte Carlo p-value ``(1 + #{draws <= statistic}) / (1 + n_draws)`` (NaN when not tested)."""
    n_draws: int
    seed: int
    alpha: float
    tested: bool
    """False for fewer than 4 heads or no variance."""
    structure: bool
    """p <= alpha: evidence of classes (False when not tested)."""
    conclusion: str
    """The words the report uses (:data:`CLASSES`, :data:`CONTINUUM` or why it was not tested)."""


def structure_test(X: np.ndarray, n_draws: int = N_DRAWS, seed: int = 0, alpha: float = ALPHA) -> StructureTest:
    """The test on features ``X`` (heads x features): statistic, null quantiles, p-value, decision.

    ``tested`` is False (and ``structure`` False) when there are too few heads
    for a covariance-matched reference (fewer than 4, or no variance).
    """
    X = np.asarray(X, dtype=np.float64)
    n = len(X)
    out = StructureTest(
        n_heads=int(n),
        n_dims=0,
        statistic=np.nan,
        null_median=np.nan,
        null_q05=np.nan,
        p_value=np.nan,
        n_draws=int(n_draws),
        seed=int(seed),
        alpha=float(alpha),
        tested=False,
        structure=False,
        conclusion="not tested: fewer than 4 heads or no variance",
    )
    if n < 4:
        return out
    Z = principal_scores(X, max_dims=n - 2)
    if Z.shape[1] == 0:
        return out
    rng = np.random.default_rng(seed)
    observed = float(two_means_index(Z))
    chunk = max(1, CHUNK_ELEMENTS // (Z.shape[0] * Z.shape[1]))
    null = np.concatenate(
        [two_means_index(gaussian_references(Z, min(chunk, n_draws - i), rng)) for i in range(0, int(n_draws), chunk)]
    )
    p = (1 + np.count_nonzero(null <= observed + 1e-12)) / (1 + len(null))
    structure = bool(p <= alpha)
    return replace(
        out,
        n_dims=int(Z.shape[1]),
        statistic=observed,
        null_median=float(np.median(null)),
        null_q05=float(np.quantile(null, 0.05)),
        p_value=float(p),
        tested=True,
        structure=structure,
        conclusion=CLASSES if structure else CONTINUUM,
    )


def structure_row(
    name: str, X: np.ndarray, n_draws: int = N_DRAWS, seed: int = 0, alpha: float = ALPHA
) -> pd.DataFrame:
    """One row of ``structure.csv`` for ``name`` (a model, or the joint taxonomy)."""
    return pd.DataFrame([{"model": name, **asdict(structure_test(X, n_draws, seed, alpha))}])[STRUCTURE_COLUMNS]
