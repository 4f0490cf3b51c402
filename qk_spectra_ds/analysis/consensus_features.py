"""The default method's features of each head: its eigenvalues as a histogram, in a canonical head order.

``log`` (default) keeps the whole spectrum: a density histogram of
``log10(l / mean l)`` on the fixed range :data:`LOG_RANGE`, values beyond it
counted in the end bins (nothing is cut); ``linear`` is the original's
histogram on ``[0, q]`` (:mod:`.features`), which drops every eigenvalue above
the ``quantile`` (the energy it keeps is reported). Each model's heads are
sorted by (layer, head) before anything random (:func:`canonical_order`), so
shuffled rows give identical results.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from . import features as original_features

FEATURES = ("log", "linear")
DEFAULT_FEATURES = "log"
LOG_RANGE = (-4.0, 2.5)
"""log10(l / mean l) range of the ``log`` features: 1e-4 x the mean to 316 x the mean (a head of d_head <= 316 cannot exceed it)."""


def canonical_order(rows: pd.DataFrame) -> pd.DataFrame:
    """One model's rows sorted by (layer, head): the order every random step sees."""
    return rows.sort_values(["layer", "head"], kind="stable").reset_index(drop=True)


def log_histograms(eigenvalues: np.ndarray, n_bins: int, log_range: tuple[float, float] = LOG_RANGE):
    """``(histograms, edges, energy_in_range)``: density histograms of log10(l / mean l), end bins catching the rest."""
    ev = np.asarray(eigenvalues, dtype=np.float64)
    mean = ev.mean(axis=1, keepdims=True)
    norm = ev / np.where(mean > 0, mean, 1.0)
    with np.errstate(divide="ignore"):
        logs = np.log10(norm)
    lo, hi = float(log_range[0]), float(log_range[1])
    edges = np.linspace(lo, hi, int(n_bins) + 1)
    inside = (logs >= lo) & (logs <= hi)
    total = ev.sum(axis=1)
    energy = np.where(total > 0, (ev * inside).sum(axis=1) / np.where(total > 0, total, 1.0), 1.0)
    counts = original_features.bin_counts(np.clip(logs, lo, hi), edges)
    return counts / np.diff(edges) / ev.shape[1], edges, energy


def linear_energy_kept(eigenvalues: np.ndarray, top: float) -> np.ndarray:
    """Share of each head's spectral energy (sum l) at normalised values <= ``top`` (what the original's bins keep)."""
    ev = np.asarray(eigenvalues, dtype=np.float64)
    mean = ev.mean(axis=1, keepdims=True)
    norm = ev / np.where(mean > 0, mean, 1.0)
    total = ev.sum(axis=1)
    return np.where(total > 0, (ev * (norm <= top)).sum(axis=1) / np.where(total > 0, total, 1.0), 1.0)


def head_features(
    eigenvalues: np.ndarray,
    kind: str = DEFAULT_FEATURES,
    n_bins: int = original_features.N_BINS,
    quantile: float = original_features.QUANTILE,
    log_low: float = LOG_RANGE[0],
):
    """``(histograms, edges, energy_kept)`` for the ``kind`` of features (:data:`FEATURES`)."""
    if kind == "log":
        return log_histograms(eigenvalues, n_bins, (log_low, LOG_RANGE[1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hists, edges = original_features.eigenvalue_histograms(np.asarray(eigenvalues, np.float32), n_bins, quantile)
    return hists, edges, linear_energy_kept(eigenvalues, edges[-1])
