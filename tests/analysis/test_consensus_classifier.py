"""The default method as a scikit-learn estimator (issue 19 item 2): the report's labels, sklearn's conventions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import synthetic_columns
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from qk_spectra_ds.analysis import consensus_runs
from qk_spectra_ds.analysis.consensus_classifier import ConsensusHeadClassifier
from qk_spectra_ds.errors import AnalysisError


def planted_eigenvalues(n_flat: int, n_decaying: int, rng: np.random.Generator, d_head: int = 16) -> np.ndarray:
    """Two planted classes of heads: flat spectra (values within a factor 3) and fast power-law decay."""
    flat = rng.uniform(0.5, 1.5, (n_flat, d_head))
    rate = rng.uniform(1.5, 2.0, (n_decaying, 1))
    decaying = np.arange(1, d_head + 1)[None, :] ** -rate * np.exp(0.1 * rng.standard_normal((n_decaying, d_head)))
    return -np.sort(-np.vstack([flat, decaying**2]), axis=1)


def planted_rows(seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """One model's schema rows (12 layers x 6 heads) with the two planted classes spread over layers, and the truth."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(72)
    ev = planted_eigenvalues(36, 36, rng)[order]
    truth = np.repeat([0, 1], 36)[order]
    rows = pd.DataFrame(synthetic_columns("org/planted", "syn", n_layers=12, n_heads=6, d_head=16, seed=seed))
    rows["eigenvalues"] = list(ev.astype(np.float32))
    rows["singular_values"] = list(np.sqrt(ev).astype(np.float32))
    return rows, truth


@pytest.mark.slow
def test_the_estimator_gives_the_reports_labels_in_input_order_and_predicts_new_heads(tmp_path):
    from qk_spectra_ds.analysis.report import Params, run_clusters

    rows, truth = planted_rows()
    outputs = run_clusters(rows, tmp_path, "syn", Params(), jobs=1, progress=False)
    report = pd.read_csv(outputs.family_dir / "tables" / "consensus_labels.csv")
    shuffled = rows.sample(frac=1.0, random_state=5)  # the estimator sorts the heads itself
    clf = ConsensusHeadClassifier().fit(shuffled)
    assert clf.n_classes_ >= 2 and clf.structure_["structure"]  # planted classes: not the trivial k = 1 answer
    assert clf.n_classes_ == pd.read_csv(outputs.family_dir / "tables" / "structure.csv")["k"].iloc[0]
    mine = shuffled[["layer", "head"]].assign(**{"class": clf.labels_, "confidence": clf.confidence_})
    merged = report.merge(mine, on=["layer", "head"], suffixes=("_report", "_estimator"))
    assert len(merged) == len(rows)
    assert (merged["class_report"] == merged["class_estimator"]).all()
    assert np.allclose(merged["confidence_report"], merged["confidence_estimator"])
    assert np.array_equal(clf.fit_predict(shuffled), clf.labels_)
    assert 0.8 <= clf.stability_ <= 1.0
    assert consensus_runs.ari(clf.labels_, truth[shuffled.index.to_numpy()]) > 0.8
    # predict: fresh heads of each planted class land in the class most of its training heads are in
    fresh = planted_eigenvalues(10, 10, np.random.default_rng(99))
    majority = [np.bincount(clf.labels_[truth[shuffled.index.to_numpy()] == t]).argmax() for t in (0, 1)]
    assert clf.predict(fresh).tolist() == [majority[0]] * 10 + [majority[1]] * 10


@pytest.mark.slow
def test_the_estimator_follows_scikit_learn_conventions():
    clf = ConsensusHeadClassifier(k=2, structure_draws=19, seed=3)
    assert clf.get_params() == {
        "features": "log",
        "k": 2,
        "n_bins": 24,
        "quantile": 0.96,
        "seed": 3,
        "structure_draws": 19,
    }
    assert clone(clf).get_params() == clf.get_params()
    assert clf.set_params(n_bins=16).n_bins == 16
    with pytest.raises(NotFittedError):
        clf.predict(np.ones((2, 4)))
    ev = planted_eigenvalues(12, 12, np.random.default_rng(1))
    assert clf.fit(ev) is clf  # an array: heads in the given order
    assert clf.labels_.shape == (24,) and clf.n_classes_ == 2 and clf.cluster_centers_.shape == (2, 16)
    assert clf.n_features_in_ == 16 and list(clf.classes_) == [0, 1]
    assert consensus_runs.ari(clf.labels_, np.repeat([0, 1], 12)) == 1.0


def test_a_fixed_k_of_one_is_one_class_without_a_stability():
    clf = ConsensusHeadClassifier(k=1, structure_draws=19).fit(planted_eigenvalues(5, 5, np.random.default_rng(2)))
    assert clf.n_classes_ == 1 and np.isnan(clf.stability_) and not clf.labels_.any()
    assert clf.predict(planted_eigenvalues(2, 2, np.random.default_rng(3))).tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda ev, rows: ConsensusHeadClassifier(k="six").fit(ev), "k must be 'auto'"),
        (lambda ev, rows: ConsensusHeadClassifier(features="cubic").fit(ev), "unknown features"),
        (lambda ev, rows: ConsensusHeadClassifier(k=2).fit(-ev), "must be >= 0"),
        (lambda ev, rows: ConsensusHeadClassifier(k=2).fit(ev[:2]), "minimum of 3"),
        (
            lambda ev, rows: ConsensusHeadClassifier(k=2).fit(pd.concat([rows, rows.assign(model_id="org/b")])),
            "2 models",
        ),
        (lambda ev, rows: ConsensusHeadClassifier(k=2).fit(rows.drop(columns="eigenvalues")), "keep_spectra=True"),
    ],
)
def test_user_errors_are_one_line(make, words):
    rows, _ = planted_rows()
    ev = np.stack(rows["eigenvalues"].tolist())
    with pytest.raises(AnalysisError) as info:
        make(ev, rows)
    assert words in str(info.value) and "\n" not in str(info.value)


FAST_CHECKS = (
    "check_no_attributes_set_in_init",
    "check_parameters_default_constructible",
    "check_get_params_invariance",
    "check_set_params",
    "check_estimators_unfitted",
    "check_estimator_repr",
    "check_estimator_cloneable",
)
FIT_CHECKS = ("check_fit_check_is_fitted", "check_n_features_in", "check_fit2d_predict1d")
"""scikit-learn's own estimator checks that apply. Not applicable: those fitting on data with negative values
(check_clustering, check_estimators_overwrite_params, ...): eigenvalues are >= 0, and the estimator says so."""


@pytest.mark.parametrize("check", FAST_CHECKS)
def test_scikit_learn_checks_without_a_fit(check):
    from sklearn.utils import estimator_checks

    getattr(estimator_checks, check)("ConsensusHeadClassifier", ConsensusHeadClassifier(k=2, structure_draws=19))


@pytest.mark.slow
def test_scikit_learn_checks_that_fit():
    import warnings

    from sklearn.utils import estimator_checks

    for check in FIT_CHECKS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # KMeans on sklearn's small test data: duplicate points
            getattr(estimator_checks, check)(
                "ConsensusHeadClassifier", ConsensusHeadClassifier(k=2, structure_draws=19)
            )
