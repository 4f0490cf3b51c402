"""The consensus of bootstrap KMeans runs at a given number of classes, and how alike two labelings are.

:data:`N_RUNS` KMeans runs, each with its own seed on a bootstrap resample of
the heads (``n_init=1``), each run predicting every head; the co-association
matrix (share of runs putting two heads together); the classes by
average-linkage clustering of ``1 - co-association`` cut at ``k`` clusters
(deterministic given the matrix), numbered by the centre of mass of their mean
histogram (ascending); each head's *confidence*, its mean co-association with
the other heads of its class. Also the adjusted Rand index (:func:`ari`) and
the silhouette that :mod:`.consensus` weighs when it picks the number of classes.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np

N_RUNS = 30


def ari(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two labelings (same formula as sklearn's, without its overhead)."""
    a = np.unique(np.asarray(a), return_inverse=True)[1]
    b = np.unique(np.asarray(b), return_inverse=True)[1]
    n = len(a)
    table = np.bincount(a * (b.max() + 1) + b, minlength=(a.max() + 1) * (b.max() + 1)).astype(np.float64)

    def pairs(x):
        return (x * (x - 1) / 2).sum()

    sum_cells = pairs(table)
    sum_a = pairs(np.bincount(a).astype(np.float64))
    sum_b = pairs(np.bincount(b).astype(np.float64))
    expected = sum_a * sum_b / (n * (n - 1) / 2)
    top = (sum_a + sum_b) / 2
    if top == expected:
        return 1.0
    return float((sum_cells - expected) / (top - expected))


def kmeans_runs(X: np.ndarray, k: int, n_runs: int = N_RUNS, seed: int = 0) -> np.ndarray:
    """``(n_runs, heads)`` labels: run r fits KMeans(k, n_init=1) on a bootstrap resample, seeded by (seed, r), and predicts all heads."""
    from sklearn.cluster import KMeans

    n = len(X)
    out = np.empty((int(n_runs), n), dtype=np.int64)
    children = np.random.SeedSequence(entropy=int(seed), spawn_key=(int(k),)).spawn(int(n_runs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate points in a resample: fewer distinct points than k is handled below
        for r, child in enumerate(children):
            rng = np.random.default_rng(child)
            sample = X[rng.integers(0, n, n)]
            state = int(rng.integers(0, 2**31 - 1))
            km = KMeans(n_clusters=min(int(k), len(np.unique(sample, axis=0))), n_init=1, random_state=state).fit(
                sample
            )
            out[r] = km.predict(X)
    return out


def coassociation(runs: np.ndarray) -> np.ndarray:
    """``(heads, heads)`` share of the runs that put two heads in the same class."""
    n_runs, n = runs.shape
    width = int(runs.max()) + 1
    onehot = np.zeros((n, n_runs * width), dtype=np.float32)
    onehot[np.arange(n)[:, None], runs.T + np.arange(n_runs) * width] = 1.0
    return (onehot @ onehot.T) / n_runs


def consensus_labels(coassoc: np.ndarray, k: int, X: np.ndarray) -> np.ndarray:
    """Average-linkage classes of ``1 - coassoc`` cut at ``k``, numbered by their mean histogram's centre of mass."""
    from scipy.cluster.hierarchy import fcluster, linkage

    n = len(coassoc)
    if n < 2 or k <= 1:
        return np.zeros(n, dtype=np.int64)
    iu = np.triu_indices(n, 1)
    tree = linkage(np.clip(1.0 - coassoc[iu].astype(np.float64), 0.0, None), method="average")
    raw = fcluster(tree, t=int(k), criterion="maxclust") - 1
    ids = np.unique(raw)
    centre = np.array(
        [
            (X[raw == c].mean(axis=0) * np.arange(X.shape[1])).sum() / max(X[raw == c].mean(axis=0).sum(), 1e-300)
            for c in ids
        ]
    )
    order = ids[np.argsort(centre, kind="stable")]
    relabel = np.empty(raw.max() + 1, dtype=np.int64)
    relabel[order] = np.arange(len(order))
    return relabel[raw]


def confidence(coassoc: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per head: mean co-association with the other heads of its class (1 for a class of one)."""
    out = np.ones(len(labels))
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) > 1:
            block = coassoc[np.ix_(idx, idx)]
            out[idx] = (block.sum(axis=1) - np.diag(block)) / (len(idx) - 1)
    return out


def mean_pairwise_ari(runs: np.ndarray) -> np.ndarray:
    """ARI between every pair of runs."""
    return np.array([ari(runs[i], runs[j]) for i, j in itertools.combinations(range(len(runs)), 2)])


def silhouette(X: np.ndarray, labels: np.ndarray) -> float:
    """Silhouette of the labels on the features (NaN for one class or one head per class)."""
    from sklearn.metrics import silhouette_score

    n_classes = len(np.unique(labels))
    if n_classes < 2 or n_classes >= len(labels):
        return float("nan")
    return float(silhouette_score(X, labels))


def consensus(X: np.ndarray, k: int, n_runs: int = N_RUNS, seed: int = 0):
    """``(labels, confidence, runs)`` of the consensus classes at ``k``."""
    runs = kmeans_runs(X, k, n_runs, seed)
    co = coassociation(runs)
    labels = consensus_labels(co, k, X)
    return labels, confidence(co, labels), runs
