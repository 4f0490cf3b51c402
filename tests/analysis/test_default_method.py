"""The default analysis method (issue 13): random-matrix null, valid per-layer tests, order-independent consensus."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import synthetic_columns

from qk_spectra_ds.analysis import consensus, consensus_features, consensus_runs, layer_permutation_tests, rmt_null
from qk_spectra_ds.analysis.report import Params, run_boxplots, run_clusters
from qk_spectra_ds.analysis.report_tables import CONSENSUS_TABLES


def _synthetic_columns():
    """``helpers.synthetic_columns`` (plausible schema rows)."""
    return synthetic_columns


# ---------------------------------------------------------------- (a), (b): the random-matrix null


def _gaussian_product_spectra(d_head: int, d_model: int, n: int, seed: int) -> np.ndarray:
    """Normalised eigenvalues of (A^T B)^T (A^T B) for dense Gaussian A, B (d_head x d_model), by a dense SVD."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(seed)
    out = []
    with threadpool_limits(1):  # small matrices: BLAS threads only contend on a shared machine
        for _ in range(n):
            a = rng.standard_normal((d_head, d_model))
            b = rng.standard_normal((d_head, d_model))
            s = np.linalg.svd(a.T @ b, compute_uv=False)[:d_head]  # the d_model x d_model circuit, formed on purpose
            ev = s**2
            out.append(ev / ev.mean())
    return np.concatenate(out)


def test_analytic_null_density_matches_dense_monte_carlo():
    d_head, d_model = 24, 96  # c = 0.25
    c = d_head / d_model
    sample = _gaussian_product_spectra(d_head, d_model, 150, seed=1)
    lo, hi = rmt_null.edges(c)
    # the analytic CDF against the pooled sample: KS distance small (3,600 values; finite-size edges)
    x = np.sort(sample)
    f = rmt_null.law_cdf(x, c)
    n = len(x)
    ks = max((np.arange(1, n + 1) / n - f).max(), (f - np.arange(n) / n).max())
    assert ks < 0.03, ks
    # the density itself, bin by bin, against the sample's histogram
    edges = np.linspace(lo, hi, 13)
    hist, _ = np.histogram(sample, edges)
    expected = np.diff(rmt_null.law_cdf(edges, c)) * n
    assert np.allclose(hist, expected, rtol=0.15, atol=25), (hist, expected.round())
    assert ((sample < lo * 0.9) | (sample > hi * 1.1)).mean() < 0.01
    grid = np.linspace(lo, hi, 4001)
    dens = rmt_null.density(grid, c)
    assert np.trapezoid(dens, grid) == pytest.approx(1.0, abs=2e-3)
    assert np.trapezoid(dens * grid, grid) == pytest.approx(1.0, abs=2e-3)  # normalised spectra have mean 1


def test_null_edges_of_the_square_case_and_small_c():
    assert rmt_null.edges(1.0) == pytest.approx((0.0, 27 / 4))  # product of two square Wisharts
    lo, hi = rmt_null.edges(1e-4)
    assert lo == pytest.approx(1 - 2 * np.sqrt(2e-4), abs=1e-3) and hi == pytest.approx(1 + 2 * np.sqrt(2e-4), abs=1e-3)
    assert rmt_null.density(np.array([0.5 * (lo + hi), hi * 1.01, lo * 0.99]), 1e-4)[1:].tolist() == [0.0, 0.0]


def test_bartlett_monte_carlo_has_the_dense_distribution():
    from scipy.stats import ks_2samp

    d_head, d_model = 16, 80
    dense = _gaussian_product_spectra(d_head, d_model, 120, seed=2)
    fast = rmt_null.normalize(rmt_null.monte_carlo_spectra(d_head, d_model, 120, seed=3)).ravel()
    assert ks_2samp(dense, fast).pvalue > 0.001
    matched = rmt_null.matched_monte_carlo(d_head, d_model, np.array([2.0, 5.0]), n=4)
    assert np.allclose(np.sqrt(matched.sum(axis=1)), [2.0, 5.0, 2.0, 5.0])  # Frobenius norms matched


def test_gaussian_heads_are_not_distinguishable_from_the_null_and_structured_ones_are():
    d_head, d_model = 16, 64
    c = d_head / d_model
    gauss = rmt_null.monte_carlo_spectra(d_head, d_model, 60, seed=11)
    mc = rmt_null.monte_carlo_spectra(d_head, d_model, 100, seed=12)
    spiky = gauss.copy()
    spiky[:, 0] *= 50.0  # one dominant direction: a learned, low-rank structure
    labels = np.repeat([0, 1], 60)
    dist, out = rmt_null.head_distances(np.concatenate([gauss, spiky]), c)
    table = rmt_null.class_null_table("m", labels, dist, out, rmt_null.head_distances(mc, c)[0])
    assert table["distinguishable_from_gaussian"].tolist() == [False, True]


# ---------------------------------------------------------------- valid per-layer tests


@pytest.mark.slow
def test_vectorised_bds_equals_statsmodels():
    from statsmodels.tsa.stattools import bds

    rng = np.random.default_rng(0)
    series = rng.standard_normal((20, 23)).cumsum(axis=1)
    ours = layer_permutation_tests.bds_statistic(series)
    assert np.allclose(ours, [float(bds(x)[0]) for x in series], rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_permutation_tests_keep_their_level_on_iid_series():
    """On 240 i.i.d. series of 16-36 layers the 5% rejection rate is in [2%, 8%]; the asymptotic BDS's is not.

    199 permutations per series: a permutation p-value (1 + #)/(1 + P) is exactly valid for any P (at
    P = 199, p <= 0.05 means at most 9 of 199 shuffles as extreme); fewer permutations only cost power.
    """
    from statsmodels.tsa.stattools import bds

    rng = np.random.default_rng(2026)
    n_series = 240
    rejected = {"bds": 0, "trend_rho": 0, "asymptotic": 0}
    for i in range(n_series):
        x = rng.standard_normal(int(rng.integers(16, 37)))
        res = layer_permutation_tests.permutation_pvalues(x, 199, np.random.default_rng(i))
        rejected["bds"] += res["p_bds"] <= 0.05
        rejected["trend_rho"] += res["p_trend_rho"] <= 0.05
        rejected["asymptotic"] += float(bds(x)[1]) <= 0.05
    rates = {k: v / n_series for k, v in rejected.items()}
    assert 0.02 <= rates["bds"] <= 0.08, rates
    assert 0.02 <= rates["trend_rho"] <= 0.08, rates
    assert rates["asymptotic"] > 0.08, rates  # what the original's p-values do on the same series


def test_trend_test_finds_a_trend_and_short_series_are_not_tested():
    x = np.linspace(0, 1, 20) + np.random.default_rng(0).normal(0, 0.05, 20)
    row = layer_permutation_tests.series_tests("m", "MEAN", x, original_p=0.01, n_permutations=999)
    assert row["p_trend_permutation"] < 0.01 and row["trend_rho"] > 0.9
    short = layer_permutation_tests.series_tests("m", "MEAN", x[:6], original_p=1e-25)
    assert np.isnan(short["p_bds_permutation"]) and short["note"] == "not tested: 6 layers < 10"
    table = layer_permutation_tests.layer_test_table([row, short])
    assert table["p_bds_asymptotic_kind"].eq(layer_permutation_tests.ASYMPTOTIC_LABEL).all()
    assert not table["survives"].iloc[1]  # the original's p = 1e-25 on 6 points does not survive


def test_holm_adjustment():
    assert np.allclose(
        layer_permutation_tests.holm(np.array([0.01, 0.04, np.nan, 0.03])), [0.03, 0.06, np.nan, 0.06], equal_nan=True
    )


# ---------------------------------------------------------------- consensus classes


@pytest.mark.slow
def test_k_is_chosen_from_the_data():
    rng = np.random.default_rng(5)
    centres = rng.uniform(0, 1, (3, 24))
    X = np.concatenate([c + rng.normal(0, 0.02, (40, 24)) for c in centres])
    scan, results = consensus.k_scan(X, ks=range(2, 7), n_runs=12)
    k = consensus.choose_k(dict(zip(scan["k"], scan["stability_ari_mean"])), dict(zip(scan["k"], scan["silhouette"])))
    assert k == 3
    labels, conf, _ = results[3]
    truth = np.repeat([0, 1, 2], 40)
    assert consensus_runs.ari(labels, truth) == 1.0 and conf.min() > 0.9


@pytest.mark.slow
def test_k_is_selected_in_one_place(monkeypatch):
    """consensus.select_k is the one definition of k: no other module scans k or applies the criterion itself,
    and the variants comparison goes through it (the k scan alone: no structure test)."""
    from qk_spectra_ds.analysis import variants_compare

    package = Path(consensus.__file__).resolve().parents[1]
    for path in sorted(package.rglob("*.py")):
        if path.name != "consensus.py":
            text = path.read_text(encoding="utf-8")
            assert "k_scan(" not in text and "choose_k(" not in text and "K_RANGE" not in text, path
    calls = []
    real = consensus.select_k
    monkeypatch.setattr(
        consensus, "select_k", lambda *a, **kw: calls.append(kw.get("structure", "?")) or real(*a, **kw)
    )
    raw = _frame([("org/a", 0)], permute=False)
    summary, _ = variants_compare.compare("org/a", raw, raw.assign(variant="folded"), ("raw", "folded"), k=2)
    assert calls == [None, None] and summary["k_a"].iloc[0] == 2 and summary["ari"].iloc[0] == 1.0


def test_fast_ari_equals_sklearn():
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(1)
    for _ in range(5):
        a, b = rng.integers(0, 4, 300), rng.integers(0, 6, 300)
        assert consensus_runs.ari(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)


def test_log_features_keep_the_whole_spectrum():
    ev = np.array([[100.0, 1.0, 1.0, 1e-9], [4.0, 3.0, 2.0, 1.0]])
    hists, edges, energy = consensus_features.head_features(ev, "log", n_bins=8)
    assert np.allclose((hists * np.diff(edges)).sum(axis=1), 1.0)  # every eigenvalue counted (clipped ones in end bins)
    lin = consensus_features.linear_energy_kept(ev, top=1.0)
    assert lin[0] == pytest.approx(2 / 102, rel=1e-6)  # the original's bins drop the dominant eigenvalue's energy


def _frame(models, permute: bool) -> pd.DataFrame:
    """Schema rows of synthetic models (12 layers x 6 heads), optionally shuffled, as the loader returns them."""
    columns_of = _synthetic_columns()
    parts = []
    for model_id, seed in models:
        part = pd.DataFrame(columns_of(model_id, "syn", n_layers=12, n_heads=6, seed=seed))
        parts.append(part.sample(frac=1.0, random_state=seed + 100) if permute else part)
    return pd.concat(parts, ignore_index=True)


def _default_tables(frame: pd.DataFrame, out: Path, params: Params):
    outputs = run_clusters(frame, out, "syn", params, jobs=1, progress=False)
    return run_boxplots(frame, out, "syn", params, jobs=1, progress=False, outputs=outputs)


@pytest.mark.slow
def test_shuffled_rows_give_identical_default_tables_and_original_is_unchanged(tmp_path):
    models = [("org/a", 0), ("org/b", 1)]
    params = Params(stats=("MEAN", "STD"), n_clusters=3)
    out1 = _default_tables(_frame(models, permute=False), tmp_path / "o1", params)
    out2 = _default_tables(_frame(models[::-1], permute=True), tmp_path / "o2", params)  # rows shuffled, models swapped
    made = {p.stem for p in (out1.family_dir / "tables").glob("*.csv")} & {*CONSENSUS_TABLES, "layer_tests"}
    assert made == {*CONSENSUS_TABLES, "layer_tests"} - {"variants_ari", "variants_transitions"}  # no folded rows here
    for name in sorted(made):
        a, b = (o.family_dir / "tables" / f"{name}.csv" for o in (out1, out2))
        assert a.read_bytes() == b.read_bytes(), name
    tests = pd.read_csv(out1.family_dir / "tables" / "layer_tests.csv")
    assert tests["n_layers"].eq(10).all() and tests["p_bds_permutation"].notna().all()
    # the original's row-order-dependent tables: written by --method original only, not beside the default's (issue 13)
    assert not {"classes", "labels", "bds"} & {p.stem for p in (out1.family_dir / "tables").glob("*.csv")}
    original = _default_tables(
        _frame(models, permute=False), tmp_path / "o3", Params(stats=("MEAN", "STD"), n_clusters=3, method="original")
    )
    written = {p.stem for p in (original.family_dir / "tables").glob("*.csv")}
    assert written == {"classes", "labels", "bds"}


# ---------------------------------------------------------------- variants compared


def test_variants_compared_by_ari_and_transitions():
    from qk_spectra_ds.analysis import variants_compare

    raw = _frame([("org/a", 0)], permute=False)
    same = raw.sample(frac=1.0, random_state=3).assign(variant="folded")  # same spectra, other row order
    summary, moves = variants_compare.compare("org/a", raw, same, ("raw", "folded"), k=3)
    assert summary["ari"].iloc[0] == 1.0 and moves["n_heads"].sum() == len(raw)
    rng = np.random.default_rng(0)  # folded spectra unrelated to raw: the classes no longer agree
    other = raw.assign(eigenvalues=[np.sort(rng.gamma(rng.uniform(0.2, 3.0), size=16))[::-1] for _ in range(len(raw))])
    summary, moves = variants_compare.compare("org/a", raw, other, ("raw", "folded"), k=3)
    assert summary["ari"].iloc[0] < 0.5 and moves["n_heads"].sum() == len(raw)
