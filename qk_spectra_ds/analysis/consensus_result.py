"""The default method's results as values: one model's consensus classes (:class:`ConsensusResult`).

:func:`.consensus.analyze` returns one; the report writes its :meth:`~ConsensusResult.tables`
and draws its figure (:func:`.consensus_figures.plot_consensus`) from it, and
:class:`.consensus_classifier.ConsensusHeadClassifier` keeps it as ``result_``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

TABLE_NAMES = (
    "consensus_classes",
    "consensus_labels",
    "k_selection",
    "stability",
    "energy",
    "null_classes",
    "structure",
    "class_profiles",
    "class_metrics",
)
"""The tables of one model, as the report names them (``tables/<name>.csv``)."""


@dataclass(frozen=True, eq=False)
class ConsensusResult:
    """One model's consensus classes, their k, stability and null comparison (the report's default method).

    Every table starts with ``model`` and, when it has rows, ends with
    ``legacy_pairing_error``; heads are in canonical (layer, head) order.
    """

    model: str
    """The model's id."""
    k: int
    """The number of classes used: 1 when the structure test found no evidence of classes (and k was ``auto``)."""
    kind: str
    """The features: ``log`` or ``linear`` (:data:`.consensus_features.FEATURES`)."""
    legacy: bool
    """Whether the rows are the original study's spectra, with its SVD pairing error."""
    consensus_classes: pd.DataFrame
    """Per class: name, n_heads, share, confidence_mean, confidence_min."""
    consensus_labels: pd.DataFrame
    """Per head: layer, head, class, confidence (and the distances to the random-matrix null when d_model is known)."""
    k_selection: pd.DataFrame
    """Per k scanned (k = 1 first): stability_ari_mean, stability_ari_min, silhouette, n_classes, chosen."""
    stability: pd.DataFrame
    """ARI of the classes under each perturbation (master seed, bins, range, bootstrap; the original KMeans)."""
    energy: pd.DataFrame
    """Share of the spectral energy each kind of features keeps (median, min over heads)."""
    null_classes: pd.DataFrame
    """Per class against the random-matrix null (empty when d_model is unknown)."""
    structure: pd.DataFrame
    """The structure test's row (:data:`.structure.STRUCTURE_COLUMNS`, and the k used)."""
    class_profiles: pd.DataFrame
    """Per class: its mean singular-value profile (:mod:`.class_profiles`)."""
    class_metrics: pd.DataFrame
    """Per class: the metrics that separate it from the others (:mod:`.class_profiles`)."""
    class_means: np.ndarray
    """``(k, bins)`` mean features of each class, in class order."""
    edges: np.ndarray
    """The feature bins' edges (log10 or linear units, by ``kind``)."""
    null_c: float | None
    """Aspect ratio d_head / d_model of the random-matrix null (None when d_model is unknown)."""
    null_features: np.ndarray | None
    """Features of the matched Monte Carlo null heads (log features only, else None)."""
    d_model_source: str
    """Where d_model came from (the dataset, a published config, or unknown)."""

    @property
    def labels(self) -> np.ndarray:
        """Each head's class, in canonical (layer, head) order."""
        return self.consensus_labels["class"].to_numpy()

    @property
    def structure_row(self) -> dict:
        """The structure test as a dict (tested, p_value, structure, conclusion, ...)."""
        return self.structure.iloc[0].to_dict()

    def tables(self) -> dict[str, pd.DataFrame]:
        """The tables by the names the report writes them under (:data:`TABLE_NAMES`)."""
        return {name: getattr(self, name) for name in TABLE_NAMES}


JOINT_TABLE_NAMES = (
    "taxonomy_structure",
    "taxonomy_k_selection",
    "taxonomy_consensus_classes",
    "taxonomy_consensus_labels",
    "taxonomy_stability",
)
"""The joint taxonomy's tables, as the report names them."""


@dataclass(frozen=True, eq=False)
class JointConsensusResult:
    """The default method's joint taxonomy over all models of a config (:func:`.joint_consensus.joint_consensus`)."""

    k: int
    """The number of classes used: 1 when the structure test on the pool found no evidence of classes."""
    taxonomy_structure: pd.DataFrame
    """The structure test's row on the pooled heads (with pooled_heads, all_heads and the k used)."""
    taxonomy_k_selection: pd.DataFrame
    """Per k scanned (k = 1 first): stability, silhouette, chosen."""
    taxonomy_consensus_classes: pd.DataFrame
    """Per class: name, n_heads, share."""
    taxonomy_consensus_labels: pd.DataFrame
    """Per head of every model: model, layer, head, band (relative depth), class."""
    taxonomy_stability: pd.DataFrame
    """ARI between bootstrap runs and against other master seeds (median, 5-95% range)."""

    @property
    def labels(self) -> np.ndarray:
        """Each head's joint class, models sorted by id and heads by (layer, head)."""
        return self.taxonomy_consensus_labels["class"].to_numpy()

    def tables(self) -> dict[str, pd.DataFrame]:
        """The tables by the names the report writes them under (:data:`JOINT_TABLE_NAMES`)."""
        return {name: getattr(self, name) for name in JOINT_TABLE_NAMES}
