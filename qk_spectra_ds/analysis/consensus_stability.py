"""The stability table of the default method's classes: how much they move when the analysis is perturbed.

ARI of the consensus classes against the consensus with other master seeds,
other bin counts (16, 32), other feature ranges (quantile 0.90/0.99 or log
range -3/-5), between bootstrap runs, and, for comparison, of the original
single KMeans(6) across seeds 1-10.
"""

from __future__ import annotations

import numpy as np

from .consensus_features import head_features
from .consensus_runs import N_RUNS, ari, consensus, mean_pairwise_ari

PERTURBED_SEEDS = tuple(range(1, 9))
"""Other master seeds for the stability table: 8, so that the stated ARI has a spread (its 5-95% range)."""
PERTURBED_BINS = (16, 32)
PERTURBED_QUANTILES = (0.90, 0.99)
PERTURBED_LOG_LOW = (-3.0, -5.0)
ORIGINAL_SEEDS = tuple(range(1, 11))


def ari_summary(kind: str, aris) -> dict:
    aris = np.asarray(list(aris), dtype=np.float64)
    return {
        "perturbation": kind,
        "n": int(len(aris)),
        "ari_median": float(np.median(aris)),
        "ari_min": float(aris.min()),
        "ari_q05": float(np.quantile(aris, 0.05)),
        "ari_q95": float(np.quantile(aris, 0.95)),
    }


def stability_rows(
    eigenvalues: np.ndarray,
    labels: np.ndarray,
    runs: np.ndarray,
    k: int,
    kind: str,
    n_bins: int,
    quantile: float,
    n_runs: int = N_RUNS,
    seed: int = 0,
) -> list[dict]:
    """ARI of the consensus ``labels`` against the consensus under each perturbation (see the module docstring)."""
    rows = []
    X, _, _ = head_features(eigenvalues, kind, n_bins, quantile)
    rows.append(
        ari_summary(
            "consensus: master seed", (ari(labels, consensus(X, k, n_runs, seed + s)[0]) for s in PERTURBED_SEEDS)
        )
    )
    rows.append(
        ari_summary(
            "consensus: bins",
            (
                ari(labels, consensus(head_features(eigenvalues, kind, b, quantile)[0], k, n_runs, seed)[0])
                for b in PERTURBED_BINS
            ),
        )
    )
    if kind == "log":
        others = (head_features(eigenvalues, kind, n_bins, quantile, low)[0] for low in PERTURBED_LOG_LOW)
        rows.append(
            ari_summary(
                "consensus: log range low edge", (ari(labels, consensus(Y, k, n_runs, seed)[0]) for Y in others)
            )
        )
    else:
        others = (head_features(eigenvalues, kind, n_bins, q)[0] for q in PERTURBED_QUANTILES)
        rows.append(ari_summary("consensus: quantile", (ari(labels, consensus(Y, k, n_runs, seed)[0]) for Y in others)))
    rows.append(ari_summary("bootstrap runs (pairwise)", mean_pairwise_ari(runs)))
    rows.append(ari_summary("original KMeans(6): seeds 1-10 vs 0", original_seed_aris(eigenvalues)))
    return rows


def original_seed_aris(eigenvalues: np.ndarray, n_clusters: int = 6) -> list[float]:
    """ARI of the original's single ``KMeans(6, random_state=s, n_init="auto")`` for s in 1..10 against s = 0."""
    from sklearn.cluster import KMeans

    X, _, _ = head_features(eigenvalues, "linear")
    k = min(int(n_clusters), len(X) - 1)
    base = KMeans(n_clusters=k, random_state=0, n_init="auto").fit_predict(X)
    return [ari(base, KMeans(n_clusters=k, random_state=s, n_init="auto").fit_predict(X)) for s in ORIGINAL_SEEDS]
