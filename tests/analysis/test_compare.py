"""``analyze.py compare``: one model in two datasets or variants head by head, and models by relative depth.

The head-by-head reference is independent of the project's reader: a tiny random Llama (GQA) is
built into a dataset (the builder's correct spectra), and the same in-memory weights go through
the original study's wrong factor pairing (``original_pairing`` of tests/builder/test_minilm_build.py) into a
legacy pickle, imported with ``import_legacy``. The per-head error ``compare`` reports must be the
one computed here from a dense float64 SVD of W_QK and the wrong pairing.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import depth_columns, original_pairing
from tiny_models import CASES_BY_ID, dense_singular_values, make_saved

from qk_spectra_ds import dataset_card, dataset_repo, schema
from qk_spectra_ds.analysis import compare, depth_profiles, head_compare
from qk_spectra_ds.analysis.legacy import import_legacy
from qk_spectra_ds.statistics import spectrum_metrics, spectrum_statistics

# ---------------------------------------------------------------- a tiny model, built and "legacy"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The llama-gqa case built twice (two datasets) and its wrong-pairing spectra imported as legacy."""
    from qk_spectra_ds.builder.pipeline import build_family

    root = tmp_path_factory.mktemp("compare")
    case = CASES_BY_ID["llama-gqa"]
    model, model_dir = make_saved("llama-gqa", root / "models" / "tiny-llama")
    for name in ("built", "built2"):
        (result,) = build_family("Tiny", root / name, models=[str(model_dir)], progress=False)
        assert result.status == "built"
    group = case.n_heads // case.n_kv_heads
    dense, wrong = {}, {}
    for layer, (wq, wk) in enumerate(case.reference(model)):
        dense[layer] = np.array([dense_singular_values(wq[h], wk[h // group]) for h in range(case.n_heads)])
        wrong[layer] = np.array([original_pairing(wq[h], wk[h // group]) for h in range(case.n_heads)])
    pickles = root / "pickles"
    pickles.mkdir()
    (pickles / "tiny-llama.pkl").write_bytes(pickle.dumps(legacy_pickle(wrong)))
    import_legacy(pickles, "Tiny", root / "legacy")
    return {"root": root, "dense": dense, "wrong": wrong}


def legacy_pickle(singular_values: dict[int, np.ndarray]) -> dict:
    """The original study's pickle layout (shared/legacy/README.md) for these per-layer spectra."""
    data = {"singular_values": {}, "eigen_values": {}, "singular_values_stats": {}, "eigen_values_stats": {}}
    for layer, s in singular_values.items():
        s = np.sort(np.asarray(s, np.float64), axis=1)[:, ::-1]
        for key, values in (("singular_values", s), ("eigen_values", s**2)):
            data[key][layer] = values.astype(np.float32)
            stats = spectrum_statistics(values.astype(np.float32))
            data[key + "_stats" if key == "singular_values" else "eigen_values_stats"][layer] = [
                stats[name].astype(np.float32).reshape(-1, 1) for name in schema.STATISTICS
            ]
    return data


def rel(actual, reference):
    actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    return np.abs(actual - reference) / np.abs(reference)


@pytest.mark.slow
def test_legacy_against_built_reports_the_original_pairing_error(tiny, analyze_cli, capsys, tmp_path):
    root = tiny["root"]
    argv = [
        "compare",
        "--dataset",
        str(root / "built"),
        "--family",
        "Tiny",
        "--variant",
        "raw",
        "--against",
        str(root / "legacy"),
        "--out",
        str(tmp_path),
    ]
    assert analyze_cli(argv) == 0
    err = capsys.readouterr().err
    heads = pd.read_csv(tmp_path / "Tiny" / "tables" / "compare_heads.csv").set_index(["layer", "head"])
    case = CASES_BY_ID["llama-gqa"]
    assert len(heads) == case.n_layers * case.n_heads
    assert set(heads["variant_a"]) == {"raw"} and set(heads["variant_b"]) == {"legacy"}
    assert heads["note"].str.contains("original study's spectra, with its SVD factor pairing error", regex=False).all()
    for layer, dense in tiny["dense"].items():
        wrong = np.sort(tiny["wrong"][layer], axis=1)[:, ::-1]
        for head in range(case.n_heads):
            expected = rel(wrong[head], dense[head])
            row = heads.loc[(layer, head)]
            assert expected.max() > 1e-3  # the original's error is real on every head ...
            assert row["sv_err_max"] == pytest.approx(expected.max(), rel=1e-4)  # ... and reported as computed here
            assert row["sv_err_median"] == pytest.approx(np.median(expected), rel=1e-3, abs=1e-6)
            ev_expected = rel(wrong[head] ** 2, dense[head] ** 2)
            assert row["ev_err_max"] == pytest.approx(ev_expected.max(), rel=1e-4)
            spectral = abs(wrong[head][0] - dense[head][0]) / dense[head][0]
            assert row["spectral_norm_rel_err"] == pytest.approx(spectral, rel=1e-3, abs=1e-6)
            # the product of the singular values survives the wrong pairing (shared/legacy/README.md)
            assert abs(np.log(wrong[head]).sum() - np.log(dense[head]).sum()) < 1e-9
            log_det = np.log(dense[head]).sum()
            assert row["log_det_rel_err"] * abs(log_det) < 1e-5
    summary = pd.read_csv(tmp_path / "Tiny" / "tables" / "compare_summary.csv")
    worst = summary[summary["quantity"] == "sv_err_max"].iloc[0]
    assert worst["max"] == pytest.approx(heads["sv_err_max"].max()) and worst["n_heads"] == len(heads)
    assert worst["note"].startswith("side B legacy")
    assert "tiny-llama [legacy, original pairing error] vs tiny-llama [raw]" in err
    assert (tmp_path / "Tiny" / "compare" / "tiny-llama.png").is_file()
    depth = pd.read_csv(tmp_path / "Tiny" / "tables" / "depth.csv")
    assert set(depth["variant"]) == {"raw", "legacy"}
    assert (depth["note"].fillna("") != "").to_numpy().tolist() == (depth["variant"] == "legacy").tolist()
    legacy_positivity = depth[(depth["variant"] == "legacy") & (depth["metric"] == "positivity")]
    assert legacy_positivity["median"].isna().all()  # the legacy data cannot provide it: NaN, not a number
    for metric in compare.DEFAULT_METRICS:
        assert (tmp_path / "Tiny" / "depth" / f"{metric}.png").is_file()


@pytest.mark.slow
def test_the_same_model_built_twice_compares_equal(tiny, tmp_path):
    root = tiny["root"]
    a, b = compare.load_sides(
        str(root / "built"), "Tiny", variant="raw", against=str(root / "built2"), against_variant="raw"
    )
    outputs = compare.run_compare(a, b, tmp_path, "Tiny", ["stable_rank"])
    heads = outputs.frames["compare_heads"]
    errors = heads[[c for c in heads.columns if c.endswith("_rel_err") or c.endswith(("_err_max", "_err_median"))]]
    assert errors.shape[1] == 4 + len(head_compare.COMPARED_VALUES)
    assert (errors.to_numpy() == 0).all()
    assert (heads["note"] == "").all()


@pytest.mark.slow
def test_shapes_that_differ_are_one_line(tiny, analyze_cli, capsys, tmp_path):
    other = tmp_path / "other"
    write_synthetic(other, "Tiny", "tiny-llama", n_layers=3, n_heads=4, d_head=8, seed=5)
    argv = [
        "compare",
        "--dataset",
        str(tiny["root"] / "built"),
        "--family",
        "Tiny",
        "--variant",
        "raw",
        "--against",
        str(other),
        "--out",
        str(tmp_path / "out"),
    ]
    assert analyze_cli(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot compare tiny-llama [raw]"), err
    assert "n_layers 2" in err[0] and "n_layers 3" in err[0] and "shapes differ" in err[0]
    assert not (tmp_path / "out" / "Tiny").exists()  # nothing half-written


# ---------------------------------------------------------------- synthetic rows: variants and depth


def write_synthetic(out: Path, family: str, model_id: str, **kwargs) -> dict:
    columns = depth_columns(model_id, family, **kwargs)
    dataset_repo.write_model_table(out, family, model_id, columns)
    dataset_card.write_card(out)
    return columns


@pytest.mark.slow
def test_raw_against_folded_in_one_dataset(tmp_path):
    """Two variants of one model in one family: --variant raw --against_variant folded, errors as perturbed."""
    out = tmp_path / "ds"
    raw = write_synthetic(out, "syn", "org/m", n_layers=3, n_heads=4, d_head=6, seed=1)
    table = pq.read_table(dataset_repo.model_path(out, "syn", "org/m"))
    factor = 1.0 + 0.01 * np.arange(len(raw["layer"]))  # head i: every singular value scaled by 1 + i/100
    s = np.stack(raw["singular_values"]).astype(np.float64) * factor[:, None]
    folded = {
        **raw,
        "variant": ["folded"] * len(factor),
        "singular_values": list(s.astype(np.float32)),
        "eigenvalues": list((s**2).astype(np.float32)),
    }
    for prefix, values in (("sv", s.astype(np.float32)), ("ev", (s**2).astype(np.float32))):
        for name, stat in spectrum_statistics(values).items():
            folded[f"{prefix}_{name}"] = stat.tolist()
    for name, value in spectrum_metrics(s.astype(np.float32), positivity=np.array(raw["positivity"])).items():
        folded[name] = value.tolist()
    pq.write_table(
        pa.table({c: folded[c] for c in table.column_names}, schema=table.schema),
        out / "data" / "syn" / "org--m-folded.parquet",
    )
    a, b = compare.load_sides(str(out), "syn", variant="raw", against_variant="folded")
    heads = head_compare.compare_heads(a, b)
    order = np.array([h + 4 * layer for layer, h in zip(heads["layer"], heads["head"])])
    expected = factor[order] - 1
    np.testing.assert_allclose(heads["sv_err_max"], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(heads["ev_err_median"], (1 + expected) ** 2 - 1, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(heads["stable_rank_rel_err"], 0, atol=1e-6)  # scale-free metrics do not move
    assert (heads["note"] == "").all()


@pytest.mark.slow
def test_metrics_against_relative_depth_for_models_of_different_depth(tmp_path, analyze_cli):
    out = tmp_path / "ds"
    small = write_synthetic(out, "fam", "org/small", n_layers=3, n_heads=4, d_head=8, seed=2)
    large = write_synthetic(out, "fam", "org/large", n_layers=7, n_heads=6, d_head=8, seed=3)
    argv = [
        "compare",
        "--dataset",
        str(out),
        "--family",
        "fam",
        "--out",
        str(tmp_path / "out"),
        "--metrics",
        "stable_rank,sv_mean",
        "--quiet",
    ]
    assert analyze_cli(argv) == 0
    depth = pd.read_csv(tmp_path / "out" / "fam" / "tables" / "depth.csv")
    assert list(dict.fromkeys(depth["model"])) == ["org/small", "org/large"]  # smallest first
    for model_id, columns, n_layers in (("org/small", small, 3), ("org/large", large, 7)):
        layers = np.array(columns["layer"])
        for metric in ("stable_rank", "sv_mean"):
            values = np.array(columns[metric])
            rows = depth[(depth["model"] == model_id) & (depth["metric"] == metric)].sort_values("layer")
            assert rows["layer"].tolist() == list(range(n_layers))
            np.testing.assert_allclose(rows["relative_depth"], np.arange(n_layers) / (n_layers - 1), rtol=1e-5)
            for layer, row in zip(range(n_layers), rows.itertuples()):
                q25, q50, q75 = np.percentile(values[layers == layer], [25, 50, 75])
                assert (row.median, row.q25, row.q75) == pytest.approx(
                    (q50, q25, q75), rel=1e-5
                )  # CSV: 6 significant digits
    assert not (tmp_path / "out" / "fam" / "tables" / "compare_heads.csv").exists()  # no --against: depth only
    for metric in ("stable_rank", "sv_mean"):
        assert (tmp_path / "out" / "fam" / "depth" / f"{metric}.png").is_file()


def test_unknown_metric_and_same_selection_are_one_line(tmp_path, analyze_cli, capsys):
    out = tmp_path / "ds"
    write_synthetic(out, "fam", "org/small", n_layers=3, n_heads=4, d_head=8, seed=2)
    for argv, words in (
        (["--metrics", "stable_rank,rank"], "unknown metric(s) rank"),
        (["--against", str(out)], "both sides of the comparison are the same selection"),
    ):
        assert (
            analyze_cli(["compare", "--dataset", str(out), "--family", "fam", "--out", str(tmp_path / "o"), *argv]) == 1
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err


def test_relative_error_edge_cases():
    got = head_compare.relative_error([0.0, 1.0, 2.0, np.nan, -np.inf], [0.0, 0.0, 1.0, 1.0, -np.inf])
    assert got[0] == 0 and got[1] == np.inf and got[2] == 1 and np.isnan(got[3]) and got[4] == 0


@pytest.mark.slow
def test_models_are_paired_by_name_across_datasets(tmp_path, analyze_cli, capsys):
    """Org/Model-X (built) pairs with the legacy Model-X; a model with no partner is left out with a warning."""
    built, legacy = tmp_path / "built", tmp_path / "legacy"
    x = write_synthetic(built, "fam", "org/Model-X", n_layers=3, n_heads=4, d_head=8, seed=7)
    write_synthetic(built, "fam", "org/Model-Y", n_layers=2, n_heads=4, d_head=8, seed=8)
    old = write_synthetic(legacy, "fam", "Model-X", n_layers=3, n_heads=4, d_head=8, seed=9, variant="legacy")
    with pytest.warns(UserWarning, match="1 model.*no partner.*org/Model-Y"):
        a, b = compare.load_sides(str(built), "fam", against=str(legacy))
        heads = head_compare.compare_heads(a, b)
    assert set(zip(heads["model_a"], heads["model_b"])) == {("org/Model-X", "Model-X")}
    expected = np.max(rel(np.stack(old["singular_values"]), np.stack(x["singular_values"])), axis=1)
    np.testing.assert_allclose(heads["sv_err_max"], expected, rtol=1e-6)  # rows in (layer, head) order, as written
    # --models names one model; side B looks it up by its short name
    argv = [
        "compare",
        "--dataset",
        str(built),
        "--family",
        "fam",
        "--models",
        "org/Model-X",
        "--against",
        str(legacy),
        "--out",
        str(tmp_path / "out"),
        "--metrics",
        "sv_max",
    ]
    assert analyze_cli(argv) == 0
    assert "Model-X [legacy, original pairing error] vs Model-X [raw]" in capsys.readouterr().err
    depth = pd.read_csv(tmp_path / "out" / "fam" / "tables" / "depth.csv")
    assert sorted(set(zip(depth["model"], depth["variant"]))) == [("Model-X", "legacy"), ("org/Model-X", "raw")]


@pytest.mark.slow
def test_legacy_pooled_with_built_in_one_family(tmp_path):
    """A family holding built and legacy models (import_legacy --pool_legacy): compare is the explicit request."""
    out = tmp_path / "ds"
    x = write_synthetic(out, "fam", "org/Model-X", n_layers=3, n_heads=4, d_head=8, seed=7)
    old = write_synthetic(out, "fam", "Model-X", n_layers=3, n_heads=4, d_head=8, seed=9, variant="legacy")
    side, none = compare.load_sides(str(out), "fam")  # depth only: both drawn, the legacy one labelled
    assert none is None and set(side.frame["variant"]) == {"raw", "legacy"}
    depth = depth_profiles.depth_table(side.frame, ["stable_rank"])
    assert dict(zip(depth["variant"], depth["note"])) == {"raw": "", "legacy": head_compare.LEGACY_NOTE}
    a, b = compare.load_sides(str(out), "fam", variant="raw", against_variant="legacy")
    heads = head_compare.compare_heads(a, b)
    expected = np.max(rel(np.stack(old["singular_values"]), np.stack(x["singular_values"])), axis=1)
    np.testing.assert_allclose(heads["sv_err_max"], expected, rtol=1e-6)
    assert (heads["note"] == "side B " + head_compare.LEGACY_NOTE).all()


@pytest.mark.slow
def test_the_default_variant_named_again_is_the_same_selection(tmp_path):
    """--against_variant naming the variant side A got by default compares rows with themselves: refused."""
    out = tmp_path / "ds"
    raw = write_synthetic(out, "syn", "org/m", n_layers=2, n_heads=2, d_head=4, seed=1)
    table = pq.read_table(dataset_repo.model_path(out, "syn", "org/m"))
    folded = table.set_column(table.column_names.index("variant"), "variant", pa.array(["folded"] * len(raw["layer"])))
    pq.write_table(folded, out / "data" / "syn" / "org--m-folded.parquet")
    side, _ = compare.load_sides(str(out), "syn", variant=None, against_variant=None)
    (default,) = set(side.frame["variant"])
    with pytest.raises(compare.CompareError, match="both sides of the comparison select the same rows"):
        compare.load_sides(str(out), "syn", against_variant=default)
    other = "raw" if default != "raw" else "folded"
    a, b = compare.load_sides(str(out), "syn", variant=other, against_variant=default)
    assert set(a.frame["variant"]) == {other} and set(b.frame["variant"]) == {default}


@pytest.mark.slow
def test_compare_figures_follow_format_and_dpi(tmp_path, analyze_cli, capsys):
    """--format/--dpi reach the compare and depth figures; a bad format stops before any work."""
    out, other = tmp_path / "ds", tmp_path / "other"
    write_synthetic(out, "fam", "org/small", n_layers=3, n_heads=4, d_head=8, seed=2)
    write_synthetic(other, "fam", "org/small", n_layers=3, n_heads=4, d_head=8, seed=5)
    base = [
        "compare",
        "--dataset",
        str(out),
        "--family",
        "fam",
        "--against",
        str(other),
        "--metrics",
        "stable_rank",
        "--quiet",
    ]
    assert analyze_cli([*base, "--out", str(tmp_path / "out"), "--format", "pdf", "--dpi", "72"]) == 0
    figures = sorted(p.relative_to(tmp_path / "out" / "fam").as_posix() for p in (tmp_path / "out").rglob("*.pdf"))
    assert figures == ["compare/org--small.pdf", "depth/stable_rank.pdf"], figures
    assert not list((tmp_path / "out").rglob("*.png"))
    capsys.readouterr()
    assert analyze_cli([*base, "--out", str(tmp_path / "bad"), "--format", "bmp"]) == 1
    assert "unknown figure format 'bmp'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists() or not list((tmp_path / "bad").rglob("*.*"))
