"""The default method as a scikit-learn estimator: :class:`ConsensusHeadClassifier`.

The same classes as the report's default method (``qk-spectra-analyze report``,
``tables/consensus_labels.csv``): :meth:`ConsensusHeadClassifier.fit` runs
:func:`.consensus.analyze` on one model's heads with the report's defaults and
keeps its :class:`.consensus_result.ConsensusResult` as ``result_``. The
original study's estimator is :class:`.taxonomy.SpectralHeadClassifier`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.utils.validation import check_array, check_is_fitted

from ..errors import AnalysisError
from . import consensus, consensus_features
from . import features as original_features

SPECTRUM_COLUMN = "eigenvalues"


def _eigenvalue_array(X, min_heads: int = 1) -> np.ndarray:
    """``(heads, d_head)`` float64 eigenvalues of a frame's ``eigenvalues`` column or of an array; finite, >= 0."""
    if isinstance(X, pd.DataFrame):
        if SPECTRUM_COLUMN not in X:
            raise AnalysisError(
                f"the frame has no {SPECTRUM_COLUMN!r} column: load it with load_spectra(..., keep_spectra=True)"
            )
        lengths = {len(s) for s in X[SPECTRUM_COLUMN]}
        if len(lengths) > 1:
            raise AnalysisError(f"heads have spectra of different lengths {sorted(lengths)}: fit one model at a time")
        X = np.stack(X[SPECTRUM_COLUMN].tolist()) if len(X) else np.empty((0, 0))
    try:
        ev = check_array(X, dtype=np.float64, ensure_min_samples=min_heads, ensure_min_features=1)
    except ValueError as exc:
        raise AnalysisError(f"eigenvalues: {exc}") from exc
    if (ev < 0).any():
        raise AnalysisError("eigenvalues must be >= 0 (squared singular values of the QK circuit)")
    return ev


def _model_rows(X) -> tuple[pd.DataFrame, str | None]:
    """One model's rows for :func:`.consensus.analyze` and its id (None when ``X`` does not name one)."""
    ev = _eigenvalue_array(X, min_heads=3)
    if isinstance(X, pd.DataFrame):
        models = X["model_id"].unique() if "model_id" in X else []
        if len(models) > 1:
            raise AnalysisError(f"the frame holds {len(models)} models: fit one model's rows at a time")
        rows = X.reset_index(drop=True)
        if "layer" not in rows or "head" not in rows:
            rows = rows.assign(layer=0, head=np.arange(len(rows)))
        return rows.assign(**{SPECTRUM_COLUMN: list(ev)}), (str(models[0]) if len(models) else None)
    return pd.DataFrame({"layer": 0, "head": np.arange(len(ev)), SPECTRUM_COLUMN: list(ev)}), None


class ConsensusHeadClassifier(ClusterMixin, BaseEstimator):
    """The default method's classes of one model's attention heads: consensus clustering with the structure test first.

    Features: a density histogram per head of ``log10(l / mean l)`` (``features="log"``,
    the whole spectrum) or the original's ``[0, q]`` bins (``"linear"``). Classes: the
    consensus of :data:`.consensus_runs.N_RUNS` bootstrap KMeans runs, cut at ``k``; with
    ``k="auto"``, k = 1 when the structure test (:mod:`.structure`) finds no evidence
    of classes, else the k among 2..8 with the best silhouette of those whose
    bootstrap stability (mean ARI) is at least :data:`.consensus.STABLE_ARI`
    (:func:`.consensus.select_k`). Row order does not matter: heads are put in
    (layer, head) order first.

    Parameters
    ----------
    features : ``"log"`` (default) or ``"linear"``.
    k : ``"auto"`` (default) or a fixed number of classes (the original's 6, say).
    n_bins, quantile : the histogram bins (``quantile``: the linear features' top edge).
    seed : master seed of the bootstrap runs and of the structure test's draws.
    structure_draws : reference draws of the structure test (None: :data:`.structure.N_DRAWS`).

    Fitted attributes
    -----------------
    result_ : the :class:`.consensus_result.ConsensusResult` (every table the report writes for the model).
    labels_ : class of each training head, in input order (classes numbered by their mean histogram's centre of mass).
    confidence_ : each head's mean co-association with the other heads of its class, input order.
    n_classes_ : number of classes (1 when the structure test finds no evidence of classes).
    classes_ : ``arange(n_classes_)``.
    stability_ : mean ARI between the bootstrap runs at the chosen k (NaN for k = 1: nothing to compare).
    structure_ : the structure test's row as a dict (``p_value``, ``structure``, ``conclusion``, ...).
    cluster_centers_ : ``(n_classes_, n_bins)`` mean features of each class.
    bin_edges_ : the features' bin edges.
    n_features_in_ : d_head of the training heads.

    :meth:`predict` puts heads (another model's, say) into the fitted classes by
    the nearest class centre in feature space, on the fitted bins: the rule the
    joint taxonomy uses for heads outside its pool. The consensus itself is not a
    nearest-centre rule, so ``predict`` on the training heads can differ from
    ``labels_`` for a few heads at class borders. Input everywhere: a ``(heads,
    d_head)`` eigenvalue array or one model's rows (a frame with ``eigenvalues``).
    """

    def __init__(
        self,
        features: str = consensus_features.DEFAULT_FEATURES,
        k: int | str = "auto",
        n_bins: int = original_features.N_BINS,
        quantile: float = original_features.QUANTILE,
        seed: int = 0,
        structure_draws: int | None = None,
    ) -> None:
        self.features = features
        self.k = k
        self.n_bins = n_bins
        self.quantile = quantile
        self.seed = seed
        self.structure_draws = structure_draws

    def _check_params(self) -> None:
        if self.features not in consensus_features.FEATURES:
            raise AnalysisError(
                f"unknown features {self.features!r}: choose from {', '.join(consensus_features.FEATURES)}"
            )
        if not (self.k == "auto" or (str(self.k).isdigit() and int(self.k) >= 1)):
            raise AnalysisError(f"k must be 'auto' or a whole number >= 1, got {self.k!r}")
        if int(self.n_bins) < 2:
            raise AnalysisError(f"n_bins must be >= 2, got {self.n_bins!r}")

    def fit(self, X, y=None, name: str | None = None, null_eigenvalues=None) -> ConsensusHeadClassifier:
        """Fit the consensus classes on one model's heads (``y`` is ignored).

        ``name``: the model's id (default: the frame's ``model_id``); ``null_eigenvalues``: the
        model's ``null`` variant rows, for the null comparison tables (not for the classes).
        """
        self._check_params()
        rows, model = _model_rows(X)
        name = name or model or "model"
        k = self.k if self.k == "auto" else int(self.k)
        result = consensus.analyze(
            name,
            rows,
            self.features,
            k,
            int(self.n_bins),
            float(self.quantile),
            int(self.seed),
            null_eigenvalues,
            self.structure_draws,
        )
        order = consensus_features.canonical_order(rows.assign(_position=np.arange(len(rows))))["_position"].to_numpy()
        labels = np.empty(len(rows), dtype=np.int64)
        labels[order] = result.labels
        confidence = np.empty(len(rows))
        confidence[order] = result.consensus_labels["confidence"].to_numpy()
        chosen = result.k_selection[result.k_selection["chosen"]]
        self.result_ = result
        self.labels_ = labels
        self.confidence_ = confidence
        self.n_classes_ = int(len(result.class_means))
        self.classes_ = np.arange(self.n_classes_)
        self.stability_ = float(chosen["stability_ari_mean"].iloc[0]) if len(chosen) else float("nan")
        self.structure_ = result.structure_row
        self.cluster_centers_ = result.class_means
        self.bin_edges_ = result.edges
        self.n_features_in_ = int(np.stack(rows[SPECTRUM_COLUMN].tolist()).shape[1])
        return self

    def transform_features(self, X) -> np.ndarray:
        """``(heads, n_bins)`` features of ``X``'s heads on the fitted bins."""
        check_is_fitted(self, "result_")
        ev = _eigenvalue_array(X)
        edges = self.bin_edges_
        if self.result_.kind == "log":
            return consensus_features.log_histograms(ev, len(edges) - 1, (float(edges[0]), float(edges[-1])))[0]
        return original_features.eigenvalue_histograms(ev.astype(np.float32), edges=edges)[0]

    def predict(self, X) -> np.ndarray:
        """Class of each head of ``X``: the nearest class centre (squared Euclidean) in feature space, fitted bins."""
        hists = self.transform_features(X)
        distances = ((hists[:, None, :] - self.cluster_centers_[None, :, :]) ** 2).sum(axis=2)
        return self.classes_[np.argmin(distances, axis=1)]
