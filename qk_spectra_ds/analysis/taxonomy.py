"""Classification A (per model, as the original study) and the joint taxonomy.

:class:`SpectralHeadClassifier` (a scikit-learn estimator) is classification
A, with the original defaults:

- features: normalized-eigenvalue histograms, 24 bins on ``[0, q]``
  (:mod:`qk_spectra_ds.features`);
- classes: ``KMeans(n_clusters=6, random_state=seed, n_init="auto")`` on the
  histograms, class ids as KMeans numbers them (heads stacked in dataset
  order, which for an imported legacy model is the original's order);
- per class: mean histogram and its std (error bars), a gamma pdf fitted to
  the mean histogram at the bin centres with ``curve_fit(p0=(3.0, 0.5),
  sigma=mean_hist.std(), absolute_sigma=True)`` (shape ``alpha``, scale
  ``theta``), and the Jensen-Shannon divergence between the class histogram
  and the fitted pdf (natural log, eps 1e-12, both renormalized);
- display: a 2-D embedding of the histograms, :data:`EMBEDDINGS`: the
  principal components by default (no JIT compilation), or the original's
  ``UMAP(n_components=2, n_neighbors=10, min_dist=0.1, random_state=seed)``
  (the original left UMAP unseeded; seeding makes reruns identical).

A gamma fit that fails gives NaN ``alpha``/``theta``/``jsd`` and a
:class:`GammaFitWarning`, never an exception.

Joint taxonomy (:func:`joint_taxonomy`, beyond the original): the same
estimator fitted on the pool of all heads of a config (one set of bins, one
KMeans), classes ordered canonically (most mass in the first bin first), then
each model's heads predicted into them, with class shares per model and per
relative-depth band.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.utils.validation import check_is_fitted

from ..errors import AnalysisError
from . import features, optional
from .selection import eigenvalue_matrix, split_models

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


EMBEDDINGS = {"pca": "PCA", "umap": "UMAP"}
"""The 2-D display embeddings (``--embedding``) and the name each figure shows.

``pca``: the first two principal components (``sklearn.decomposition.PCA``):
no JIT compilation, a few milliseconds. ``umap``: the original study's
``UMAP(n_components=2, n_neighbors=10, min_dist=0.1)``, seeded; it reproduces
the original figures, but importing umap and compiling its numba functions
costs about 15 s in every new process (umap does not cache them on disk).
The embedding is for display only: classes and tables do not depend on it.
"""

DEFAULT_EMBEDDING = "pca"


def check_embedding(method: str | None) -> str | None:
    """``method`` if it names a known embedding (or is None: no embedding), else an :class:`AnalysisError`."""
    if method is not None and method not in EMBEDDINGS:
        raise AnalysisError(f"unknown embedding {method!r}: choose from {', '.join(EMBEDDINGS)}")
    if method == "umap":
        optional.require("umap", "--embedding umap")
    return method


def principal_components(hists: np.ndarray) -> np.ndarray:
    """The histograms' first two principal components, ``(heads, 2)`` (zero columns where there are fewer)."""
    from sklearn.decomposition import PCA

    hists = np.asarray(hists, dtype=np.float64)
    out = np.zeros((len(hists), 2))
    k = min(2, len(hists) - 1, hists.shape[1])
    if k >= 1:
        out[:, :k] = PCA(n_components=k, svd_solver="full").fit_transform(hists)
    return out


def umap_embedding(
    hists: np.ndarray, seed: int | None = SEED, n_neighbors: int = UMAP_NEIGHBORS, min_dist: float = UMAP_MIN_DIST
) -> np.ndarray:
    """``umap.UMAP(n_components=2, n_neighbors=10, min_dist=0.1, random_state=seed).fit_transform(hists)``.

    umap is imported here, only when asked for (its import alone takes seconds).
    ``n_neighbors`` is capped at ``heads - 1``; the warnings umap gives for
    small or disconnected data are silenced.
    """
    import umap

    n = len(hists)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")
        warnings.filterwarnings("ignore", message=".*Spectral initialisation failed.*")
        warnings.filterwarnings("ignore", message=".*Falling back to random initialisation.*")
        warnings.filterwarnings("ignore", message=".*n_neighbors is larger than the dataset size.*")
        warnings.filterwarnings("ignore", message=".*graph is not fully connected.*")
        reducer = umap.UMAP(
            n_components=2, n_neighbors=min(int(n_neighbors), n - 1), min_dist=min_dist, random_state=seed
        )
        return np.asarray(reducer.fit_transform(hists), dtype=np.float64)


def embed(hists: np.ndarray, method: str = DEFAULT_EMBEDDING, seed: int | None = SEED) -> np.ndarray:
    """2-D display coordinates of the histograms by ``method`` (see :data:`EMBEDDINGS`).

    UMAP needs at least 4 heads; with fewer, or if it fails, the principal
    components are shown instead (with a warning when it failed).
    """
    if check_embedding(method) == "umap" and len(hists) >= 4:
        try:
            return umap_embedding(hists, seed=seed)
        except Exception as exc:  # pragma: no cover - depends on umap internals
            warnings.warn(f"UMAP failed ({type(exc).__name__}: {exc}); showing principal components", stacklevel=2)
    return principal_components(hists)


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


# ---------------------------------------------------------------- classification A, as an estimator


def canonical_relabelling(hists: np.ndarray, labels: np.ndarray, n_clusters: int) -> np.ndarray:
    """``relabel[old] = new`` so that class 0 has the most mean mass in the first bin (spikiest spectra) and so on.

    Makes the numbering independent of KMeans' arbitrary order; ties keep KMeans' order.
    """
    first_bin = np.array([hists[labels == k, 0].mean() if (labels == k).any() else -np.inf for k in range(n_clusters)])
    order = np.argsort(-first_bin, kind="stable")  # new class i = old class order[i]
    relabel = np.empty(n_clusters, dtype=np.int64)
    relabel[order] = np.arange(n_clusters)
    return relabel


def eigenvalue_input(X) -> list[np.ndarray]:
    """The estimator's input as ``(heads, d_head)`` blocks: an array, a list of arrays, or a frame of dataset rows.

    A frame (one or more models, column ``eigenvalues``) gives one block per
    model, rows in dataset order, so models with different ``d_head`` mix.
    """
    if isinstance(X, pd.DataFrame):
        return [eigenvalue_matrix(rows) for _, rows in split_models(X)]
    return features.eigenvalue_blocks(X)


class SpectralHeadClassifier(ClusterMixin, BaseEstimator):
    """Classification A: KMeans classes of attention heads from their normalized-eigenvalue histograms.

    The original study's method with its defaults: each head's eigenvalues
    divided by their mean; ``n_bins`` equal bins on ``[0, q]``, ``q`` the
    ``quantile`` of all normalized values seen by :meth:`fit`; one density
    histogram per head; ``KMeans(n_clusters, random_state, n_init="auto")``;
    per class the mean histogram with its std, a gamma fit and its JSD.

    Parameters
    ----------
    n_clusters : number of classes (KMeans clusters).
    n_bins, quantile : the histogram bins, fixed at fit time.
    random_state : seed of KMeans and of the embedding.
    embedding : 2-D display embedding computed by :meth:`fit`
        (:data:`EMBEDDINGS`: ``"pca"``, ``"umap"``), or None for none.
    canonical_order : False numbers the classes as KMeans does (the original's
        numbering); True renumbers them so that class 0 has the most mass in
        the first bin (:func:`canonical_relabelling`), as the joint taxonomy does.

    Fitted attributes
    -----------------
    bin_edges_ : ``(n_bins + 1,)`` histogram edges.
    kmeans_ : the fitted ``sklearn.cluster.KMeans``.
    classes_ : ``arange(n_clusters)``.
    labels_ : class of each training head (input order).
    cluster_centers_ : ``(n_clusters, n_bins)`` centres, in class order.
    class_fits_ : one :class:`ClassFit` per class (size, mean/std histogram, gamma fit, JSD).
    embedding_ : ``(heads, 2)`` display coordinates, or None.

    :meth:`predict` puts new heads (say another model's) into these classes with
    the fitted bins and centres. Input everywhere: a ``(heads, d_head)``
    eigenvalue array, a list of them, or a frame of dataset rows.
    """

    def __init__(
        self,
        n_clusters: int = N_CLUSTERS,
        n_bins: int = features.N_BINS,
        quantile: float = features.QUANTILE,
        random_state: int | None = SEED,
        embedding: str | None = DEFAULT_EMBEDDING,
        canonical_order: bool = False,
    ) -> None:
        self.n_clusters = n_clusters
        self.n_bins = n_bins
        self.quantile = quantile
        self.random_state = random_state
        self.embedding = embedding
        self.canonical_order = canonical_order

    def fit(self, X, y=None, name: str = "") -> SpectralHeadClassifier:
        """Fit bins, classes, gamma fits and the embedding on the heads of ``X``; ``name`` prefixes messages."""
        from sklearn.cluster import KMeans

        n_clusters = int(self.n_clusters)
        if n_clusters < 1:
            raise AnalysisError(f"n_clusters must be >= 1, got {n_clusters}")
        check_embedding(self.embedding)
        prefix = f"{name}: " if name else ""
        try:
            hists, edges = features.eigenvalue_histograms(eigenvalue_input(X), self.n_bins, self.quantile)
        except ValueError as exc:
            raise AnalysisError(f"{prefix}{exc}") from exc
        if len(hists) < n_clusters:
            raise AnalysisError(f"{prefix}{len(hists)} head(s) cannot form {n_clusters} classes: lower --n-clusters")
        kmeans = KMeans(n_clusters=n_clusters, random_state=self.random_state, n_init="auto").fit(hists)
        raw = kmeans.labels_.astype(np.int64)
        relabel = canonical_relabelling(hists, raw, n_clusters) if self.canonical_order else np.arange(n_clusters)
        self.bin_edges_ = edges
        self.kmeans_ = kmeans
        self.relabel_ = relabel
        self.classes_ = np.arange(n_clusters)
        self.labels_ = relabel[raw]
        self.cluster_centers_ = kmeans.cluster_centers_[np.argsort(relabel)]
        self.class_fits_ = describe_classes(hists, self.labels_, features.bin_centers(edges), n_clusters, name=name)
        self.embedding_ = None if self.embedding is None else embed(hists, self.embedding, self.random_state)
        return self

    def predict(self, X) -> np.ndarray:
        """Class of each head of ``X``: its histogram on the fitted bins, nearest fitted centre."""
        check_is_fitted(self, "kmeans_")
        hists, _ = features.eigenvalue_histograms(eigenvalue_input(X), edges=self.bin_edges_)
        return self.relabel_[self.kmeans_.predict(hists)]

    def class_table(self) -> pd.DataFrame:
        """Columns class, n_heads, alpha, theta, jsd (one row per class)."""
        check_is_fitted(self, "class_fits_")
        return pd.DataFrame(
            {
                "class": [c.klass for c in self.class_fits_],
                "n_heads": [c.n_heads for c in self.class_fits_],
                "alpha": [c.alpha for c in self.class_fits_],
                "theta": [c.theta for c in self.class_fits_],
                "jsd": [c.jsd for c in self.class_fits_],
            }
        )


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

    classifier: SpectralHeadClassifier  # fitted on the pool of all heads
    labels: pd.DataFrame  # model, layer, head, n_layers, band, class
    n_bands: int
    models: list[str]

    def class_table(self) -> pd.DataFrame:
        """Columns class, n_heads, share, alpha, theta, jsd."""
        table = self.classifier.class_table()
        table.insert(2, "share", table["n_heads"] / table["n_heads"].sum())
        return table

    def shares_by_model(self) -> pd.DataFrame:
        """Columns model, class, n_heads, share (share of the model's heads)."""
        grid = pd.MultiIndex.from_product([self.models, self.classifier.classes_.tolist()], names=["model", "class"])
        counts = self.labels.groupby(["model", "class"]).size().reindex(grid, fill_value=0)
        totals = counts.groupby(level="model").transform("sum")
        out = pd.DataFrame({"n_heads": counts, "share": counts / totals.where(totals > 0, 1)}).reset_index()
        return out.astype({"n_heads": "int64"})

    def shares_by_depth(self) -> pd.DataFrame:
        """Columns model, band, depth_lo, depth_hi, class, n_heads, share (share of the band's heads)."""
        grid = pd.MultiIndex.from_product(
            [self.models, range(self.n_bands), self.classifier.classes_.tolist()], names=["model", "band", "class"]
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
    models: Sequence[ModelHeads], classifier: SpectralHeadClassifier | None = None, n_bands: int = N_BANDS
) -> JointTaxonomy:
    """Fit one classifier on the pool of all heads of all models, then predict each model's heads.

    The bins come from the ``quantile`` of the normalized eigenvalues of every
    head of every model. ``classifier``: its parameters (a fresh clone is
    fitted); default ``SpectralHeadClassifier(embedding=None,
    canonical_order=True)``, canonical numbering making classes comparable
    across runs.
    """
    from sklearn.base import clone

    if not models:
        raise AnalysisError("the joint taxonomy needs at least one model")
    if int(n_bands) < 1:
        raise AnalysisError(f"n_bands must be >= 1, got {n_bands}")
    if classifier is None:
        classifier = SpectralHeadClassifier(embedding=None, canonical_order=True)
    fitted = clone(classifier).fit([m.eigenvalues for m in models], name="joint taxonomy")
    labels = pd.concat(
        [
            pd.DataFrame(
                {
                    "model": m.model_id,
                    "layer": m.layers,
                    "head": m.heads,
                    "n_layers": m.n_layers,
                    "band": depth_bands(m.layers, m.n_layers, n_bands),
                    "class": fitted.predict(m.eigenvalues),
                }
            ).sort_values(["layer", "head"], kind="stable")
            for m in models
        ],
        ignore_index=True,
    )
    return JointTaxonomy(fitted, labels, int(n_bands), [m.model_id for m in models])
