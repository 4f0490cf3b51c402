"""Classification A (per model, as the original study) and the joint taxonomy.

Per model (:func:`cluster_model`), with the original defaults:

- features: normalized-eigenvalue histograms, 24 bins on ``[0, q]``
  (:mod:`qk_spectra_ds.features`);
- classes: ``KMeans(n_clusters=6, random_state=seed, n_init="auto")`` on the
  histograms, class ids as KMeans numbers them (heads stacked in dataset
  order, which for an imported legacy model is the original's order);
- display: ``UMAP(n_components=2, n_neighbors=10, min_dist=0.1,
  random_state=seed)`` (the original left UMAP unseeded; seeding makes reruns
  identical);
- per class: mean histogram and its std (error bars), a gamma pdf fitted to
  the mean histogram at the bin centres with ``curve_fit(p0=(3.0, 0.5),
  sigma=mean_hist.std(), absolute_sigma=True)`` (shape ``alpha``, scale
  ``theta``), and the Jensen-Shannon divergence between the class histogram
  and the fitted pdf (natural log, eps 1e-12, both renormalized).

A gamma fit that fails gives NaN ``alpha``/``theta``/``jsd`` and a
:class:`GammaFitWarning`, never an exception.

Joint taxonomy (:func:`joint_taxonomy`, beyond the original): one set of
bins (the quantile over all heads of all models) and one KMeans over all
heads of a config, classes ordered canonically (most mass in the first bin
first), then class shares per model and per relative-depth band.
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from . import features
from .loading import AnalysisError

N_CLUSTERS = 6
SEED = 0
UMAP_NEIGHBORS = 10
UMAP_MIN_DIST = 0.1
GAMMA_P0 = (3.0, 0.5)
JSD_EPS = 1e-12
N_BANDS = 5


class GammaFitWarning(UserWarning):
    """A class's gamma fit did not converge (its alpha, theta and JSD are NaN)."""


# ---------------------------------------------------------------- building blocks


def gamma_pdf(x: np.ndarray, a: float, scale: float) -> np.ndarray:
    """The gamma pdf with shape ``a``, ``loc`` 0 and ``scale``."""
    from scipy.stats import gamma

    return gamma.pdf(x, a, loc=0, scale=scale)


def fit_gamma(
    centers: np.ndarray, mean_hist: np.ndarray, p0: tuple[float, float] = GAMMA_P0, maxfev: int | None = None
) -> tuple[float, float, str | None]:
    """Fit ``gamma.pdf(x, alpha, scale=theta)`` to a class's mean histogram.

    Exactly the original's call: ``curve_fit(pdf, centers, mean_hist, p0=(3.0, 0.5),
    sigma=mean_hist.std(), absolute_sigma=True)``. Returns ``(alpha, theta, None)``
    or ``(nan, nan, reason)`` when the fit fails or gives non-finite parameters.
    """
    from scipy.optimize import OptimizeWarning, curve_fit

    y = np.asarray(mean_hist, dtype=np.float64)
    kwargs: dict[str, Any] = {} if maxfev is None else {"maxfev": int(maxfev)}
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", OptimizeWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            popt, _ = curve_fit(gamma_pdf, centers, y, p0=p0, sigma=y.std(), absolute_sigma=True, **kwargs)
    except (RuntimeError, ValueError, FloatingPointError, ZeroDivisionError) as exc:
        return float("nan"), float("nan"), " ".join(str(exc).split())
    alpha, theta = (float(v) for v in popt)
    if not (np.isfinite(alpha) and np.isfinite(theta)) or alpha <= 0 or theta <= 0:
        return float("nan"), float("nan"), f"non-finite or non-positive parameters ({alpha}, {theta})"
    return alpha, theta, None


def jensen_shannon(p: np.ndarray, q: np.ndarray, eps: float = JSD_EPS) -> float:
    """Jensen-Shannon divergence (natural log) of two non-negative vectors, each renormalized.

    As the original: ``p / (sum p + eps)``, ``q / (sum q + eps)``, ``m = (p + q) / 2``,
    ``0.5 * (sum p ln((p + eps) / (m + eps)) + sum q ln((q + eps) / (m + eps)))``.
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p = p / (p.sum() + eps)
    q = q / (q.sum() + eps)
    m = 0.5 * (p + q)
    kl_pm = np.sum(p * np.log((p + eps) / (m + eps)))
    kl_qm = np.sum(q * np.log((q + eps) / (m + eps)))
    return float(0.5 * (kl_pm + kl_qm))


def kmeans_labels(hists: np.ndarray, n_clusters: int = N_CLUSTERS, seed: int = SEED) -> np.ndarray:
    """``KMeans(n_clusters, random_state=seed, n_init="auto").fit_predict(hists)``."""
    from sklearn.cluster import KMeans

    n_clusters = int(n_clusters)
    if n_clusters < 1:
        raise AnalysisError(f"n_clusters must be >= 1, got {n_clusters}")
    if len(hists) < n_clusters:
        raise AnalysisError(f"{len(hists)} head(s) cannot form {n_clusters} classes: lower --n_clusters")
    return KMeans(n_clusters=n_clusters, random_state=seed, n_init="auto").fit_predict(hists).astype(np.int64)


def enable_umap_cache(cache_dir: str | os.PathLike | None = None) -> str | None:
    """Let numba cache UMAP's jitted functions on disk (compiling them costs ~12 s per process).

    UMAP's numba functions are declared without ``cache=True``; turning the
    cache on for them changes no result, only skips recompiling in later
    processes. The cache lives in ``$NUMBA_CACHE_DIR`` if set, else
    ``$XDG_CACHE_HOME/qk_spectra_ds/numba`` (``~/.cache/...``). Returns the
    directory, or None if caching could not be enabled (never raises).
    """
    global _UMAP_CACHE_DIR
    if _UMAP_CACHE_DIR is not None:
        return _UMAP_CACHE_DIR
    try:
        import numba
        from numba.core.dispatcher import Dispatcher

        import umap  # noqa: F401  (imports pynndescent, whose own cache location stays as it is)

        if cache_dir is None:
            cache_dir = os.environ.get("NUMBA_CACHE_DIR") or os.path.join(
                os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                "qk_spectra_ds",
                "numba",
            )
        os.makedirs(cache_dir, exist_ok=True)
        numba.config.CACHE_DIR = os.fspath(cache_dir)
        for name in ("umap.umap_", "umap.layouts", "umap.utils", "umap.distances", "umap.sparse", "umap.spectral"):
            module = importlib.import_module(name)
            for obj in vars(module).values():
                if isinstance(obj, Dispatcher) and type(obj._cache).__name__ == "NullCache":
                    obj.enable_caching()
        _UMAP_CACHE_DIR = os.fspath(cache_dir)
    except Exception:  # pragma: no cover - caching is an optimisation only
        return None
    return _UMAP_CACHE_DIR


_UMAP_CACHE_DIR: str | None = None


def _pairwise_euclidean_py(X):  # jitted by _fast_pairwise(); kept at module level so numba can cache it
    n = X.shape[0]
    out = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        for j in range(i + 1, n):
            d = _umap_euclidean(X[i], X[j])
            out[i, j] = d
            out[j, i] = d
    return out


_umap_euclidean = None
_PAIRWISE_JIT = None


def _fast_pairwise():
    """A cached numba twin of ``sklearn.pairwise_distances(X, metric=umap.distances.euclidean)``.

    UMAP computes its small-data (< 4096 points) distance matrix through
    sklearn with a numba metric called once per pair from Python (seconds
    for a thousand heads). This calls the very same numba ``euclidean`` from a
    jitted loop and stores float32 as sklearn does, so the matrix is bit-identical.
    """
    global _umap_euclidean, _PAIRWISE_JIT
    if _PAIRWISE_JIT is None:
        import numba
        from umap.distances import euclidean

        _umap_euclidean = euclidean
        jitted = numba.njit(_pairwise_euclidean_py)
        if enable_umap_cache() is not None:
            try:
                jitted.enable_caching()
            except Exception:  # pragma: no cover
                pass
        _PAIRWISE_JIT = jitted
    return _PAIRWISE_JIT


class _FastSmallDataDistances:
    """Within the block, UMAP's small-data ``pairwise_distances(X, metric=euclidean)`` uses the jitted twin."""

    def __enter__(self):
        import umap.umap_ as umap_module
        from umap.distances import euclidean

        self._module = umap_module
        self._original = original = umap_module.pairwise_distances
        fast = _fast_pairwise()

        def pairwise_distances(X, Y=None, metric="euclidean", **kwargs):
            if metric is euclidean and Y is None and not kwargs and isinstance(X, np.ndarray) and X.dtype == np.float32:
                return fast(np.ascontiguousarray(X))
            return original(X, Y, metric=metric, **kwargs)

        umap_module.pairwise_distances = pairwise_distances
        return self

    def __exit__(self, *exc):
        self._module.pairwise_distances = self._original
        return False


def umap_embedding(
    hists: np.ndarray, seed: int = SEED, n_neighbors: int = UMAP_NEIGHBORS, min_dist: float = UMAP_MIN_DIST
) -> np.ndarray:
    """The original's 2-D UMAP of the histograms, seeded so reruns are identical.

    Identical to ``umap.UMAP(n_components=2, n_neighbors=10, min_dist=0.1,
    random_state=seed).fit_transform(hists)``, only faster (numba cache, jitted
    distance matrix). Falls back to the first two principal components (with a
    warning) when UMAP cannot embed so few heads.
    """
    n = len(hists)
    if n >= 4:
        enable_umap_cache()
        import umap

        try:
            with warnings.catch_warnings(), _FastSmallDataDistances():
                warnings.filterwarnings("ignore", message=".*n_jobs value.*")
                warnings.filterwarnings("ignore", message=".*Spectral initialisation failed.*")
                warnings.filterwarnings("ignore", message=".*Falling back to random initialisation.*")
                warnings.filterwarnings("ignore", message=".*n_neighbors is larger than the dataset size.*")
                warnings.filterwarnings("ignore", message=".*graph is not fully connected.*")
                reducer = umap.UMAP(
                    n_components=2, n_neighbors=min(int(n_neighbors), n - 1), min_dist=min_dist, random_state=seed
                )
                embedding = reducer.fit_transform(hists)
            return np.asarray(embedding, dtype=np.float64)
        except Exception as exc:  # pragma: no cover - depends on umap internals
            warnings.warn(f"UMAP failed ({type(exc).__name__}: {exc}); showing principal components", stacklevel=2)
    centered = hists - hists.mean(axis=0)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    out = np.zeros((n, 2))
    k = min(2, vt.shape[0])
    out[:, :k] = centered @ vt[:k].T
    return out


@dataclass
class ClassFit:
    """One class: its size, mean histogram with std, gamma fit and JSD."""

    klass: int
    n_heads: int
    mean_hist: np.ndarray
    std_hist: np.ndarray
    alpha: float
    theta: float
    jsd: float
    pdf: np.ndarray
    fit_error: str | None = None


def describe_classes(
    hists: np.ndarray, labels: np.ndarray, centers: np.ndarray, n_clusters: int, name: str = ""
) -> list[ClassFit]:
    """Mean/std histogram, gamma fit and JSD per class ``0 .. n_clusters-1``."""
    out = []
    for k in range(int(n_clusters)):
        members = hists[labels == k]
        if len(members) == 0:
            mean = std = np.full(hists.shape[1], np.nan)
        else:
            mean = members.mean(axis=0)
            std = members.std(axis=0)
        alpha, theta, error = fit_gamma(centers, mean) if len(members) else (np.nan, np.nan, "empty class")
        if error is None:
            pdf = gamma_pdf(centers, alpha, theta)
            jsd = jensen_shannon(mean, pdf)
        else:
            pdf = np.full_like(centers, np.nan)
            jsd = float("nan")
            warnings.warn(
                f"{name + ': ' if name else ''}gamma fit of class {k} did not converge ({error}); alpha, theta, JSD are NaN",
                GammaFitWarning,
                stacklevel=2,
            )
        out.append(ClassFit(k, int(len(members)), mean, std, alpha, theta, jsd, pdf, error))
    return out


# ---------------------------------------------------------------- classification A


@dataclass
class ClusterResult:
    """Classification A of one model."""

    model_id: str
    edges: np.ndarray
    histograms: np.ndarray
    labels: np.ndarray
    embedding: np.ndarray | None
    classes: list[ClassFit]
    layers: np.ndarray
    heads: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def centers(self) -> np.ndarray:
        return features.bin_centers(self.edges)

    @property
    def n_clusters(self) -> int:
        return len(self.classes)

    def class_table(self) -> pd.DataFrame:
        """Columns model, class, n_heads, alpha, theta, jsd."""
        return pd.DataFrame(
            {
                "model": [self.model_id] * len(self.classes),
                "class": [c.klass for c in self.classes],
                "n_heads": [c.n_heads for c in self.classes],
                "alpha": [c.alpha for c in self.classes],
                "theta": [c.theta for c in self.classes],
                "jsd": [c.jsd for c in self.classes],
            }
        )

    def label_table(self) -> pd.DataFrame:
        """Columns model, layer, head, class (one row per head, sorted by layer then head)."""
        table = pd.DataFrame(
            {"model": self.model_id, "layer": self.layers, "head": self.heads, "class": self.labels}
        )
        return table.sort_values(["layer", "head"], kind="stable").reset_index(drop=True)


def cluster_model(
    eigenvalues: np.ndarray,
    model_id: str = "",
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    n_clusters: int = N_CLUSTERS,
    n_bins: int = features.N_BINS,
    quantile: float = features.QUANTILE,
    seed: int = SEED,
    embed: bool = True,
) -> ClusterResult:
    """Classification A of one model from its ``(heads, d_head)`` eigenvalues (rows in stacking order)."""
    ev = np.asarray(eigenvalues)
    n = len(ev)
    layers = np.arange(n) if layers is None else np.asarray(layers)
    heads = np.zeros(n, dtype=np.int64) if heads is None else np.asarray(heads)
    try:
        hists, edges = features.eigenvalue_histograms(ev, n_bins=n_bins, quantile=quantile)
    except ValueError as exc:
        raise AnalysisError(f"{model_id}: {exc}") from exc
    labels = kmeans_labels(hists, n_clusters, seed)
    embedding = umap_embedding(hists, seed=seed) if embed else None
    classes = describe_classes(hists, labels, features.bin_centers(edges), n_clusters, name=model_id)
    params = {"n_clusters": int(n_clusters), "n_bins": int(n_bins), "quantile": float(quantile), "seed": int(seed)}
    return ClusterResult(model_id, edges, hists, labels, embedding, classes, layers, heads, params)


# ---------------------------------------------------------------- joint taxonomy


@dataclass
class ModelHeads:
    """One model's heads for the joint taxonomy."""

    model_id: str
    eigenvalues: np.ndarray
    layers: np.ndarray
    heads: np.ndarray
    n_layers: int


@dataclass
class JointTaxonomy:
    """One set of classes over all heads of a config, with shares per model and per relative depth."""

    edges: np.ndarray
    classes: list[ClassFit]
    labels: pd.DataFrame  # model, layer, head, class
    n_bands: int
    models: list[str]
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def centers(self) -> np.ndarray:
        return features.bin_centers(self.edges)

    def class_table(self) -> pd.DataFrame:
        """Columns class, n_heads, share, alpha, theta, jsd."""
        total = sum(c.n_heads for c in self.classes)
        return pd.DataFrame(
            {
                "class": [c.klass for c in self.classes],
                "n_heads": [c.n_heads for c in self.classes],
                "share": [c.n_heads / total for c in self.classes],
                "alpha": [c.alpha for c in self.classes],
                "theta": [c.theta for c in self.classes],
                "jsd": [c.jsd for c in self.classes],
            }
        )

    def shares_by_model(self) -> pd.DataFrame:
        """Columns model, class, n_heads, share (share of the model's heads)."""
        grid = pd.MultiIndex.from_product([self.models, range(len(self.classes))], names=["model", "class"])
        counts = self.labels.groupby(["model", "class"]).size().reindex(grid, fill_value=0)
        totals = counts.groupby(level="model").transform("sum")
        out = pd.DataFrame({"n_heads": counts, "share": counts / totals.where(totals > 0, 1)}).reset_index()
        return out.astype({"n_heads": "int64"})

    def shares_by_depth(self) -> pd.DataFrame:
        """Columns model, band, depth_lo, depth_hi, class, n_heads, share (share of the band's heads)."""
        grid = pd.MultiIndex.from_product(
            [self.models, range(self.n_bands), range(len(self.classes))], names=["model", "band", "class"]
        )
        counts = self.labels.groupby(["model", "band", "class"]).size().reindex(grid, fill_value=0)
        totals = counts.groupby(level=["model", "band"]).transform("sum")
        out = pd.DataFrame({"n_heads": counts, "share": counts / totals.where(totals > 0, 1)}).reset_index()
        out.insert(2, "depth_lo", out["band"] / self.n_bands)
        out.insert(3, "depth_hi", (out["band"] + 1) / self.n_bands)
        return out.astype({"n_heads": "int64"})


def depth_bands(layers: np.ndarray, n_layers: int, n_bands: int = N_BANDS) -> np.ndarray:
    """Relative-depth band ``floor(layer / n_layers * n_bands)`` in ``0 .. n_bands-1``."""
    layers = np.asarray(layers, dtype=np.int64)
    return np.clip((layers * int(n_bands)) // max(int(n_layers), 1), 0, int(n_bands) - 1)


def joint_taxonomy(
    models: Sequence[ModelHeads],
    n_clusters: int = N_CLUSTERS,
    n_bins: int = features.N_BINS,
    quantile: float = features.QUANTILE,
    seed: int = SEED,
    n_bands: int = N_BANDS,
) -> JointTaxonomy:
    """Fit one set of classes across all models (shared bins), ordered canonically.

    Bins: ``n_bins`` on ``[0, q]`` with ``q`` the ``quantile`` of the normalized
    eigenvalues of all heads of all models. Classes are renumbered so that class
    0 has the most mass in the first bin (the spikiest spectra), which makes the
    numbering independent of KMeans' arbitrary order.
    """
    if not models:
        raise AnalysisError("the joint taxonomy needs at least one model")
    if int(n_bands) < 1:
        raise AnalysisError(f"n_bands must be >= 1, got {n_bands}")
    d_heads = {m.eigenvalues.shape[1] for m in models}
    normalized = [features.normalize_by_mean(m.eigenvalues) for m in models]
    try:
        pooled = np.concatenate([x.reshape(-1) for x in normalized])
        edges = features.shared_edges(pooled, n_bins, quantile)
    except ValueError as exc:
        raise AnalysisError(str(exc)) from exc
    hists = np.concatenate([features.histograms(x, edges) for x in normalized])
    raw = kmeans_labels(hists, n_clusters, seed)
    first_bin = np.array([hists[raw == k, 0].mean() if (raw == k).any() else -np.inf for k in range(n_clusters)])
    order = np.argsort(-first_bin, kind="stable")  # new class i = old class order[i]
    relabel = np.empty(n_clusters, dtype=np.int64)
    relabel[order] = np.arange(n_clusters)
    labels = relabel[raw]
    classes = describe_classes(hists, labels, features.bin_centers(edges), n_clusters, name="joint taxonomy")
    table = pd.concat(
        [
            pd.DataFrame(
                {
                    "model": m.model_id,
                    "layer": m.layers,
                    "head": m.heads,
                    "n_layers": m.n_layers,
                    "band": depth_bands(m.layers, m.n_layers, n_bands),
                }
            )
            for m in models
        ],
        ignore_index=True,
    )
    table["class"] = labels
    table["_order"] = np.repeat(np.arange(len(models)), [len(m.layers) for m in models])
    table = table.sort_values(["_order", "layer", "head"], kind="stable").drop(columns="_order").reset_index(drop=True)
    params = {
        "n_clusters": int(n_clusters),
        "n_bins": int(n_bins),
        "quantile": float(quantile),
        "seed": int(seed),
        "n_bands": int(n_bands),
        "d_heads": sorted(d_heads),
    }
    return JointTaxonomy(edges, classes, table, int(n_bands), [m.model_id for m in models], params)
