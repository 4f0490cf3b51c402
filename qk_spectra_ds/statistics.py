"""Per-head statistics and metrics of a spectrum (numpy only, both halves use it).

All functions take arrays of shape ``(..., n)`` (one spectrum per leading index)
and reduce the last axis, so a whole layer is one call with no Python loop.

Degenerate spectra get NaN where a quantity is undefined, never a number that
looks like a measurement: skew and kurtosis of a constant spectrum (0/0 after
standardizing), stable and effective rank of an all-zero spectrum (0/0), and
positivity when every eigenvalue mu is zero. ``log_det`` of a spectrum with an
exact zero is -inf (the log of a zero determinant). Every other value, and
every value of a non-degenerate spectrum, is the original study's formula
unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .schema import METRICS, STATISTICS

STD_FLOOR = 1e-9
"""The original study's floor on the std when standardizing (avoids 0/0)."""


def spectrum_statistics(values: np.ndarray, fast: bool = False) -> dict[str, np.ndarray]:
    """The original study's six statistics along the last axis.

    min, max, mean, std (N-1), skew = mean(z^3), kurtosis = mean(z^4) - 3,
    with z = (x - mean) / max(std, 1e-9). Computed in float64. Skew and kurtosis
    are NaN for a constant spectrum (all values equal, e.g. an all-zero head;
    the floor would turn 0/0 into 0 and -3, values of no spectrum at all);
    every other spectrum gets the original's numbers bit for bit.

    ``fast``: z^3 and z^4 through |z| (numpy's power is ~7x slower on negative
    bases), within 1 ulp of the default; for checks within a tolerance (the loader).
    """
    x = np.asarray(values, dtype=np.float64)
    mean = x.mean(axis=-1)
    std = x.std(axis=-1, ddof=1) if x.shape[-1] > 1 else np.zeros(x.shape[:-1])
    z = (x - mean[..., None]) / np.maximum(std, STD_FLOOR)[..., None]
    low, high = x.min(axis=-1), x.max(axis=-1)
    shapeless = (low == high) | (x.shape[-1] < 2)  # constant: no shape to measure
    stats = {
        "min": low,
        "max": high,
        "mean": mean,
        "std": std,
        "skew": np.where(shapeless, np.nan, ((np.abs(z) ** 3) * np.sign(z) if fast else z**3).mean(axis=-1)),
        "kurtosis": np.where(shapeless, np.nan, (np.abs(z) ** 4 if fast else z**4).mean(axis=-1) - 3.0),
    }
    return {name: stats[name] for name in STATISTICS}


def spectrum_metrics(singular_values: np.ndarray, positivity: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Frobenius norm, spectral norm, stable rank, effective rank, log-det (and positivity).

    ``singular_values`` are descending along the last axis. ``positivity`` needs
    the eigenvalues of W_K W_Q^T, which only the builder has; pass it in, or get
    NaN (the legacy data cannot provide it). An all-zero spectrum has NaN stable
    and effective rank (0/0); a spectrum with an exact zero has log_det -inf.
    """
    s = np.asarray(singular_values, dtype=np.float64)
    ev = s**2
    total = ev.sum(axis=-1)
    top = ev.max(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = ev / total[..., None]
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
        metrics = {
            "frobenius": np.sqrt(total),
            "spectral_norm": s.max(axis=-1),
            "stable_rank": np.where(top > 0, total / np.where(top > 0, top, 1.0), np.nan),
            "effective_rank": np.where(total > 0, np.exp(-plogp.sum(axis=-1)), np.nan),
            "log_det": np.log(s).sum(axis=-1),
        }
    metrics["positivity"] = (
        np.full(s.shape[:-1], np.nan) if positivity is None else np.asarray(positivity, dtype=np.float64)
    )
    return {name: metrics[name] for name in METRICS}


def positivity_from_eigenvalues(mu: np.ndarray) -> np.ndarray:
    """sum(Re mu) / sum(|mu|) along the last axis (1: all eigenvalues positive real).

    NaN when every mu is zero (0/0: an all-zero head has no positivity).
    """
    mu = np.asarray(mu)
    denom = np.abs(mu).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, mu.real.sum(axis=-1) / np.where(denom > 0, denom, 1.0), np.nan)


def positional_summaries(
    singular_values: np.ndarray, positional: np.ndarray, offsets: Sequence[int]
) -> dict[str, np.ndarray]:
    """Sortable per-head summaries of the positional spectra (rows: heads).

    ``singular_values`` (n, dh), ``positional`` (n, n_off, dh). With r(delta) =
    s_1(delta) / s_1 (spectral norm at the offset relative to the non-positional one,
    i.e. to offset 0): ``positional_norm_ratio_min`` and ``_max`` over the offsets > 0,
    and ``half_norm_offset``, the first offset > 0 where r < 1/2 (-1 if none).
    NaN (and -1) for a zero head.
    """
    offs = np.asarray(offsets)
    later = offs > 0
    top = singular_values[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = positional[:, later, 0] / top[:, None]
    if not later.any():
        nan = np.full(len(top), np.nan)
        return {
            "positional_norm_ratio_min": nan,
            "positional_norm_ratio_max": nan.copy(),
            "half_norm_offset": np.full(len(top), -1, np.int64),
        }
    below = ratio < 0.5
    first = np.where(below.any(axis=1), offs[later][below.argmax(axis=1)], -1)
    return {
        "positional_norm_ratio_min": ratio.min(axis=1),
        "positional_norm_ratio_max": ratio.max(axis=1),
        "half_norm_offset": first,
    }
