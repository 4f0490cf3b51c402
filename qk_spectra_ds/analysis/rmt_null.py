"""A random-matrix null for QK spectra, from the dataset alone.

A head whose W_Q and W_K blocks were independent Gaussian noise would have
``W_QK = A^T B`` with ``A, B`` ``d_head x d_model`` and i.i.d. entries. Its
non-zero eigenvalues ``l = s^2`` are those of ``(A A^T)(B B^T)``: a product of
two independent Wishart matrices. Everything below compares *mean-normalised*
spectra ``l / mean(l)`` (the features of classification A), so the entry
variances, and any rescaling of the factors, drop out.

(a) **Analytic limit.** As ``d_head, d_model -> inf`` with ``c = d_head /
d_model`` fixed, ``A A^T / d_model`` tends to the Marchenko-Pastur law with
ratio ``c`` (mean 1), whose S-transform is ``S(z) = 1 / (1 + c z)``
(A. M. Tulino and S. Verdu, *Random Matrix Theory and Wireless
Communications*, Found. Trends Commun. Inf. Theory 1(1), 2004, section 2.4).
Free independence multiplies S-transforms, so the normalised eigenvalues
follow ``MP(c) ⊠ MP(c)`` with ``S(z) = 1 / (1 + c z)^2`` (Voiculescu's
S-transform; the same law as the product of independent rectangular Gaussian
matrices in Z. Burda, R. A. Janik and B. Waclaw, "Spectrum of the product of
independent random Gaussian matrices", Phys. Rev. E 81, 041132, 2010). With
the moment generating function ``psi(z) = sum_k m_k z^k`` and
``chi = psi^{-1}``, ``S(z) = chi(z) (1 + z) / z`` gives the cubic

    w (1 + psi) (1 + c psi)^2 - psi = 0,   w = 1 / x,

solved numerically for each ``x``; the density is ``|Im psi(1/x)| / (pi x)``
(the Green's function is ``G(x) = (1 + psi(1/x)) / x``). The support's
edges are where ``x(psi) = (1 + psi)(1 + c psi)^2 / psi`` is stationary:
``2 c psi^2 + c psi - 1 = 0``. (c = 1: [0, 27/4], the square case.)

(b) **Monte Carlo.** Gaussian heads of the model's own shape: ``A A^T`` and
``B B^T`` drawn exactly as Wishart(d_model) matrices by Bartlett's
decomposition ``L L^T`` (so no ``d_model``-sized array is formed), the
spectrum the squared singular values of ``L_a^T L_b``. Each spectrum is then
rescaled so that its Frobenius norm ``sqrt(sum l)`` equals the real head's
``frobenius``: the dataset holds the norm of ``W_QK`` only, not of the two
factors, so that is what is matched (equivalently, the product of the two
factor norms up to the random ratio ``||A^T B||_F / (||A||_F ||B||_F)``).
The Monte-Carlo heads give the finite-size spread of the distances below.

(c) **The ``null`` variant rows** (folded factors paired through a Haar
rotation) where the dataset has them: the same distances, as an empirical
null that keeps each factor's learned spectrum.

Per head: the Kolmogorov-Smirnov distance between its normalised spectrum
and the analytic law, and the fraction of its normalised eigenvalues outside
the law's edges. Per class, as an effect size: the *excess distance*, the
class's median distance minus the Monte-Carlo heads' median distance, with a
95% bootstrap interval (over the class's heads and the Monte-Carlo heads);
the 99th percentile of the Monte-Carlo distances from :data:`N_MONTE_CARLO`
heads, with its own bootstrap interval (so the threshold's uncertainty is
visible); and the share of the class beyond it (1% expected under the null).
A class is *distinguishable from the null* when its median distance exceeds
the upper end of that threshold's interval. Gaussian heads stay a weak null
(real heads are far from it); the class metrics (``class_profiles``) compare
classes with each other and with the matched per-head null's z-scores where
the dataset has them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

N_MONTE_CARLO = 1000
N_BOOTSTRAP = 500
NULL_QUANTILE = 0.99
GRID_POINTS = 2000

KNOWN_D_MODEL = {
    "Qwen3-0.6B": 1024,
    "Qwen3-1.7B": 2048,
    "Qwen3-4B": 2560,
    "Qwen3-8B": 4096,
    "Qwen3-14B": 5120,
    "Llama-3.2-1B-Instruct": 2048,
    "Llama-3.2-3B-Instruct": 3072,
    "Llama-3.1-8B-Instruct": 4096,
    "Mistral-7B-Instruct-v0.1": 4096,
    "Mistral-7B-Instruct-v0.2": 4096,
    "Mistral-7B-Instruct-v0.3": 4096,
    "gemma-2-2b-it": 2304,
    "gemma-2-9b-it": 3584,
    "gemma-2-27b-it": 4608,
}
"""``hidden_size`` from the published config.json of each of the original study's 14 models.

Used only for legacy rows, whose pickles do not record ``d_model`` (the
tables say so in ``d_model_source``)."""


def edges(c: float) -> tuple[float, float]:
    """The support ``[x_-, x_+]`` of ``MP(c) ⊠ MP(c)`` (mean 1), ``0 < c <= 1``."""
    c = float(c)
    root = np.sqrt(c * c + 8 * c)
    psis = ((-c - root) / (4 * c), (-c + root) / (4 * c))
    xs = [(1 + p) * (1 + c * p) ** 2 / p for p in psis]
    return max(0.0, float(min(xs))), float(max(xs))


def density(x: np.ndarray, c: float) -> np.ndarray:
    """The density of ``MP(c) ⊠ MP(c)`` at ``x`` (0 outside the support), from the cubic in the module docstring."""
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    out = np.zeros_like(x)
    lo, hi = edges(c)
    inside = np.flatnonzero((x > lo) & (x < hi))
    if len(inside) == 0:
        return out
    w = 1.0 / x[inside]
    # w c^2 psi^3 + w (c^2 + 2c) psi^2 + (w (2c + 1) - 1) psi + w = 0, as monic companion matrices
    a3 = w * c * c
    coeffs = np.stack([w * (c * c + 2 * c) / a3, (w * (2 * c + 1) - 1) / a3, w / a3], axis=1)
    companion = np.zeros((len(w), 3, 3))
    companion[:, 0, :] = -coeffs
    companion[:, 1, 0] = companion[:, 2, 1] = 1.0
    roots = np.linalg.eigvals(companion)
    out[inside] = np.abs(roots.imag).max(axis=1) / (np.pi * x[inside])
    return out


def cdf_grid(c: float, n: int = GRID_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """``(x, F(x))`` on a grid over the support (trapezoid rule on the density, F normalised to end at 1).

    The grid is denser near the edges (cosine spacing), where the density has
    square-root behaviour.
    """
    lo, hi = edges(c)
    x = lo + (hi - lo) * (1 - np.cos(np.linspace(0, np.pi, int(n)))) / 2
    f = density(x, c)
    cum = np.concatenate([[0.0], np.cumsum((f[1:] + f[:-1]) / 2 * np.diff(x))])
    return x, cum / cum[-1]


def law_cdf(values: np.ndarray, c: float, grid: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """``F(values)`` of the analytic law (0 below the support, 1 above)."""
    gx, gf = grid if grid is not None else cdf_grid(c)
    return np.interp(values, gx, gf, left=0.0, right=1.0)


def ks_distances(normalized: np.ndarray, c: float, grid=None) -> np.ndarray:
    """Kolmogorov-Smirnov distance of each row (a normalised spectrum) to the analytic law."""
    x = np.sort(np.asarray(normalized, dtype=np.float64), axis=1)
    n = x.shape[1]
    f = law_cdf(x, c, grid)
    upper = np.arange(1, n + 1) / n - f
    lower = f - np.arange(0, n) / n
    return np.maximum(upper.max(axis=1), lower.max(axis=1))


def fraction_outside(normalized: np.ndarray, c: float) -> np.ndarray:
    """Fraction of each row's normalised eigenvalues outside the law's edges."""
    lo, hi = edges(c)
    x = np.asarray(normalized, dtype=np.float64)
    return ((x < lo) | (x > hi)).mean(axis=1)


def normalize(eigenvalues: np.ndarray) -> np.ndarray:
    """Each spectrum divided by its mean (float64); all-zero rows stay zero."""
    ev = np.asarray(eigenvalues, dtype=np.float64)
    mean = ev.mean(axis=1, keepdims=True)
    return ev / np.where(mean > 0, mean, 1.0)


def bartlett_factor(rng: np.random.Generator, n: int, p: int, dof: int) -> np.ndarray:
    """``n`` lower-triangular ``L`` (p x p) with ``L L^T ~ Wishart_p(dof, I)`` (Bartlett's decomposition)."""
    out = np.tril(rng.standard_normal((n, p, p)), -1)
    diag = np.sqrt(rng.chisquare(dof - np.arange(p), size=(n, p)))
    idx = np.arange(p)
    out[:, idx, idx] = diag
    return out


def monte_carlo_spectra(d_head: int, d_model: int, n: int = N_MONTE_CARLO, seed: int = 0) -> np.ndarray:
    """Eigenvalues ``(n, d_head)`` (descending) of ``A^T B`` for Gaussian ``A, B`` of shape ``d_head x d_model``."""
    rng = np.random.default_rng(np.random.SeedSequence(entropy=int(seed), spawn_key=(int(d_head), int(d_model))))
    la = bartlett_factor(rng, n, int(d_head), int(d_model))
    lb = bartlett_factor(rng, n, int(d_head), int(d_model))
    with threadpool_limits(1):  # many small problems: threads only oversubscribe
        core = np.swapaxes(la, 1, 2) @ lb
        ev = np.linalg.eigvalsh(core @ np.swapaxes(core, 1, 2))  # s^2 of the core, ascending
    return np.clip(ev[:, ::-1], 0.0, None)


def matched_monte_carlo(d_head: int, d_model: int, frobenius: np.ndarray, n: int = N_MONTE_CARLO, seed: int = 0):
    """Monte-Carlo heads rescaled to Frobenius norms drawn from the real heads' ``frobenius`` (cyclically)."""
    ev = monte_carlo_spectra(d_head, d_model, n, seed)
    target = np.resize(np.asarray(frobenius, dtype=np.float64), n) ** 2
    return ev * (target / ev.sum(axis=1))[:, None]


def d_model_of(model_id: str, rows: pd.DataFrame) -> tuple[int | None, str]:
    """``(d_model, source)``: the rows' ``d_model``, else :data:`KNOWN_D_MODEL` for legacy names, else (None, reason)."""
    if "d_model" in rows and rows["d_model"].notna().any():
        return int(rows["d_model"].dropna().iloc[0]), "dataset"
    name = str(model_id).split("/")[-1]
    if name in KNOWN_D_MODEL:
        return KNOWN_D_MODEL[name], "published config (legacy rows lack d_model)"
    return None, "unknown (no d_model in the rows)"


def null_histogram(c: float, edges_x: np.ndarray, log10: bool, clip: bool) -> np.ndarray:
    """The law's expected density histogram on feature bins: ``edges_x`` in x (or log10 x) units.

    ``clip``: out-of-range mass goes to the end bins (the log features);
    else the mass inside is renormalised (``np.histogram(density=True)``, the linear features).
    """
    e = 10.0 ** np.asarray(edges_x) if log10 else np.asarray(edges_x, dtype=np.float64)
    cdf = law_cdf(e, c)
    mass = np.diff(cdf)
    if clip:
        mass[0] += cdf[0]
        mass[-1] += 1.0 - cdf[-1]
    else:
        total = cdf[-1] - cdf[0]
        mass = mass / total if total > 0 else mass
    return mass / np.diff(np.asarray(edges_x, dtype=np.float64))


def head_distances(eigenvalues: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
    """Per head: KS distance to the analytic law and fraction of the spectrum outside its edges."""
    norm = normalize(eigenvalues)
    return ks_distances(norm, c, cdf_grid(c)), fraction_outside(norm, c)


def class_null_table(
    model_id: str,
    labels: np.ndarray,
    distance: np.ndarray,
    outside: np.ndarray,
    mc_distance: np.ndarray,
    variant_distance: np.ndarray | None = None,
    quantile: float = NULL_QUANTILE,
    seed: int = 0,
) -> pd.DataFrame:
    """Per class: median KS distance, median fraction outside, and whether it is distinguishable from the null(s)."""
    threshold = float(np.quantile(mc_distance, quantile))
    rng = np.random.default_rng(seed)
    mc = np.asarray(mc_distance, dtype=np.float64)
    mc_boot = mc[rng.integers(0, len(mc), (N_BOOTSTRAP, len(mc)))]
    t_low, t_high = np.quantile(np.quantile(mc_boot, quantile, axis=1), [0.025, 0.975])
    mc_median_boot = np.median(mc_boot, axis=1)
    v_threshold = (
        float(np.quantile(variant_distance, quantile))
        if variant_distance is not None and len(variant_distance)
        else np.nan
    )
    rows = []
    for k in np.unique(labels):
        member = labels == k
        med = float(np.median(distance[member]))
        own = distance[member]
        excess = np.median(own[rng.integers(0, len(own), (N_BOOTSTRAP, len(own)))], axis=1) - mc_median_boot
        rows.append(
            {
                "model": model_id,
                "class": int(k),
                "n_heads": int(member.sum()),
                "median_ks_distance": med,
                "median_fraction_outside": float(np.median(outside[member])),
                "ks_excess": med - float(np.median(mc)),
                "ks_excess_low": float(np.quantile(excess, 0.025)),
                "ks_excess_high": float(np.quantile(excess, 0.975)),
                "share_beyond_null": float((distance[member] > threshold).mean()),
                "mc_ks_q99": threshold,
                "mc_ks_q99_low": float(t_low),
                "mc_ks_q99_high": float(t_high),
                "n_monte_carlo": len(mc),
                "distinguishable_from_gaussian": bool(med > t_high),
                "null_variant_ks_q99": v_threshold,
                "distinguishable_from_null_variant": bool(med > v_threshold) if np.isfinite(v_threshold) else None,
            }
        )
    return pd.DataFrame(rows)
