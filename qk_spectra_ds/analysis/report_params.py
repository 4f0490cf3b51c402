"""The report's parameters, checked: every knob of both methods in one :class:`Params`, defaults as the original study.

A value no analysis can use is one line (:class:`~qk_spectra_ds.errors.AnalysisError`) naming the flag, before any
work; ``--method original`` needs the ``original`` extra (statsmodels), said at once. The CLIs take their defaults
from here (:mod:`.cli_defaults` mirrors them without importing the scientific stack).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import AnalysisError
from . import consensus_features, features, layer_boxplots, layer_permutation_tests, optional, taxonomy
from .plots import check_dpi, check_figure_format

METHODS = ("consensus", "original")


DEFAULT_METHOD = "consensus"
"""``original``: the original study's method only (its tables ``classes``, ``labels``, ``bds``, bit for bit
on its data; BDS p-values asymptotic, labelled invalid at these lengths). ``consensus`` (default):
order-independent consensus classes with their stability and k curve, whole-spectrum features, permutation
tests of the per-layer series and the random-matrix null (``consensus_*``, ``stability``, ``k_selection``,
``energy``, ``null_classes``, ``layer_tests`` tables; ``positional`` where the spectra have offsets); it
does not write the original's row-order-dependent tables (the ESD figures and box plots stay)."""


@dataclass
class Params:
    """Every knob of the analysis, defaults as the original study except the display embedding.

    The embedding defaults to PCA (no JIT compilation); ``umap`` reproduces the
    original figures (see ``taxonomy.EMBEDDINGS``). Tables never depend on it.
    """

    n_clusters: int = taxonomy.N_CLUSTERS
    n_bins: int = features.N_BINS
    quantile: float = features.QUANTILE
    seed: int = taxonomy.SEED
    skip_layers_below: int = layer_boxplots.SKIP_LAYERS_BELOW
    stats: tuple[str, ...] = layer_boxplots.STAT_NAMES
    n_bands: int = taxonomy.N_BANDS
    embedding: str = taxonomy.DEFAULT_EMBEDDING
    method: str = DEFAULT_METHOD
    features: str = consensus_features.DEFAULT_FEATURES
    k: str = "auto"
    permutations: int = layer_permutation_tests.N_PERMUTATIONS
    min_layers: int = layer_permutation_tests.MIN_LAYERS
    format: str = "png"
    dpi: float = 100.0

    def __post_init__(self) -> None:
        self.n_clusters = int(self.n_clusters)
        self.n_bins = int(self.n_bins)
        self.quantile = float(self.quantile)
        self.seed = int(self.seed)
        self.skip_layers_below = int(self.skip_layers_below)
        self.stats = tuple(layer_boxplots.parse_stats(self.stats))
        self.n_bands = int(self.n_bands)
        if self.n_clusters < 1:
            raise AnalysisError(f"--n_clusters must be >= 1, got {self.n_clusters}")
        if self.n_bins < 1:
            raise AnalysisError(f"--n_bins must be >= 1, got {self.n_bins}")
        if not 0.0 < self.quantile <= 1.0:
            raise AnalysisError(f"--quantile must be in (0, 1], got {self.quantile}")
        if self.n_bands < 1:
            raise AnalysisError(f"--n_bands must be >= 1, got {self.n_bands}")
        self.embedding = taxonomy.check_embedding(str(self.embedding))
        self.format, self.dpi = check_figure_format(self.format), check_dpi(self.dpi)
        self.method = str(self.method)
        if self.method not in METHODS:
            raise AnalysisError(f"unknown --method {self.method!r}: choose from {', '.join(METHODS)}")
        if self.method == "original":  # its BDS p-values are statsmodels' own
            optional.require("statsmodels", "--method original")
        self.features = str(self.features)
        if self.features not in consensus_features.FEATURES:
            raise AnalysisError(
                f"unknown --features {self.features!r}: choose from {', '.join(consensus_features.FEATURES)}"
            )
        self.k = str(self.k)
        if self.k != "auto" and not (self.k.isdigit() and int(self.k) >= 1):
            raise AnalysisError(f"--k must be auto or a whole number >= 1, got {self.k!r}")
        self.permutations = int(self.permutations)
        self.min_layers = int(self.min_layers)
        if self.permutations < 99:
            raise AnalysisError(f"--permutations must be >= 99, got {self.permutations}")
        if self.min_layers < 4:
            raise AnalysisError(f"--min_layers must be >= 4 (BDS needs them), got {self.min_layers}")

    def classifier(self, **overrides: Any) -> taxonomy.SpectralHeadClassifier:
        """The classification-A estimator with these parameters (``overrides``: other estimator parameters)."""
        settings = dict(
            n_clusters=self.n_clusters,
            n_bins=self.n_bins,
            quantile=self.quantile,
            random_state=self.seed,
            embedding=self.embedding,
        )
        return taxonomy.SpectralHeadClassifier(**{**settings, **overrides})
