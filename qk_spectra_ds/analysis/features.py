"""Normalized-eigenvalue histograms: the features of classification A.

Exactly the original study's features, vectorized over all heads at once:

1. each head's eigenvalues divided by their mean (in the stored float32);
2. one set of ``n_bins`` equal bins on ``[0, q]``, ``q`` the ``quantile``
   (0.96) of all normalized values of the model (``np.quantile`` default
   method), or of all models for the joint taxonomy;
3. per head ``np.histogram(values, edges, density=True)``: values outside
   ``[0, q]`` are ignored, the last bin is closed, density = count / (width *
   in-range count).

:func:`histograms` reproduces ``np.histogram`` bit for bit (same bin
assignment, same floating-point operations) without a per-head loop.
"""

from __future__ import annotations

import warnings

import numpy as np

N_BINS = 24
QUANTILE = 0.96


def normalize_by_mean(eigenvalues: np.ndarray) -> np.ndarray:
    """Each row divided by its mean, keeping the stored dtype (float32 in the dataset).

    A row whose mean is 0 (an all-zero spectrum) becomes all zeros, with a warning.
    """
    ev = np.asarray(eigenvalues)
    if ev.ndim != 2:
        raise ValueError(f"expected a (heads, d_head) array, got shape {ev.shape}")
    mean = ev.mean(axis=-1)[..., np.newaxis]
    zero = mean[:, 0] == 0
    if zero.any():
        warnings.warn(
            f"{int(zero.sum())} head(s) have an all-zero spectrum; their histogram is a spike at 0", stacklevel=2
        )
        mean = np.where(mean == 0, np.ones_like(mean), mean)
    return ev / mean


def shared_edges(normalized: np.ndarray, n_bins: int = N_BINS, quantile: float = QUANTILE) -> np.ndarray:
    """``n_bins + 1`` equal bin edges on ``[0, quantile of all values]`` (float64)."""
    n_bins = int(n_bins)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if not 0.0 < float(quantile) <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    top = np.quantile(normalized, quantile)
    if not np.isfinite(top) or top <= 0:
        raise ValueError(
            f"the {quantile} quantile of the normalized eigenvalues is {top}: the spectra are degenerate "
            "(mostly zero); raise --quantile"
        )
    return np.linspace(0.0, top, n_bins + 1)


def bin_centers(edges: np.ndarray) -> np.ndarray:
    """Midpoints of consecutive edges."""
    return (edges[:-1] + edges[1:]) / 2


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Per-row counts in the bins ``[e_i, e_{i+1})`` (last bin closed), as ``np.histogram`` counts them."""
    values = np.asarray(values)
    n_rows = values.shape[0]
    n_bins = len(edges) - 1
    # np.histogram compares the values against the float64 edges (searchsorted
    # on the promoted type): do the same.
    flat = values.reshape(-1).astype(np.float64)
    index = np.searchsorted(edges, flat, side="right") - 1
    index[flat == edges[-1]] = n_bins - 1
    inside = (flat >= edges[0]) & (flat <= edges[-1])
    rows = np.repeat(np.arange(n_rows), values.shape[1])
    counts = np.bincount(rows[inside] * n_bins + index[inside], minlength=n_rows * n_bins)
    return counts.reshape(n_rows, n_bins)


def histograms(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``np.histogram(row, edges, density=True)[0]`` for every row, stacked ``(rows, n_bins)``.

    A row with no value inside the edges gets zeros (``np.histogram`` would give NaN), with a warning.
    """
    counts = bin_counts(values, edges)
    widths = np.array(np.diff(edges), float)
    totals = counts.sum(axis=1, keepdims=True)
    empty = totals[:, 0] == 0
    if empty.any():
        warnings.warn(
            f"{int(empty.sum())} head(s) have no value inside the bins; their histogram is zero", stacklevel=2
        )
        totals = np.where(totals == 0, 1, totals)
    return counts / widths / totals


def eigenvalue_blocks(eigenvalues) -> list[np.ndarray]:
    """One ``(heads, d_head)`` array, or a sequence of them (models whose ``d_head`` differ), as a list of 2-D arrays."""
    if isinstance(eigenvalues, np.ndarray):
        return [eigenvalues]
    return [np.asarray(block) for block in eigenvalues]


def eigenvalue_histograms(
    eigenvalues, n_bins: int = N_BINS, quantile: float = QUANTILE, edges: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Features of classification A: ``(histograms (heads, n_bins), edges)``.

    ``eigenvalues``: a ``(heads, d_head)`` array or a sequence of such arrays
    (say one per model; their ``d_head`` may differ), histograms stacked in
    that order. ``edges`` given (fitted before): used as is; else derived from
    the normalized values of all these heads pooled.
    """
    normalized = [normalize_by_mean(block) for block in eigenvalue_blocks(eigenvalues)]
    if not normalized:
        raise ValueError("no heads to histogram")
    if edges is None:
        edges = shared_edges(np.concatenate([block.reshape(-1) for block in normalized]), n_bins, quantile)
    return np.concatenate([histograms(block, edges) for block in normalized]), edges
