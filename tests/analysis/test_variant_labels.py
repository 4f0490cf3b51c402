"""Analysis gaps of issues 12 and 13 on a dataset the builder made from a tiny rotary model.

- Every table names the variant it was made from (a ``variant`` column) and every figure names it
  in its title (read back from the file's ``Title`` metadata, which holds the title drawn).
- The positional figure and ``positional.csv`` (issue 13 item 5): the ratios against the
  builder's own ``positional_singular_values`` read from the parquet file with pyarrow.
- The original method's order-dependent tables only under ``--method original``.
- The per-model timings are labelled as sums over the models.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image
from tiny_models import llama_case, make_saved

from qk_spectra_ds.analysis import compare
from qk_spectra_ds.analysis.report import Outputs, Params, remove_stale_tables, run_report

pytest.importorskip("torch")

OFFSETS = (0, 1, 2, 4, 8, 16, 32)
MODEL = "tiny-rope"
FAST = dict(stats=("MEAN", "STD"), k="3", permutations=99)  # a fixed k: one consensus scan, not seven


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A built dataset (raw, folded and null rows, positional spectra at OFFSETS) of a 4-layer GQA Llama."""
    from qk_spectra_ds.builder.pipeline import build_family

    root = tmp_path_factory.mktemp("gaps")
    case = llama_case(MODEL, layers=4, d=32, heads=8, kv=2, seed=5, max_position_embeddings=64)
    _, model_dir = make_saved(case, root / "models" / MODEL)
    (result,) = build_family("Tiny", root / "ds", models=[str(model_dir)], progress=False, offsets=OFFSETS)
    assert result.status == "built" and set(result.variants) == {"raw", "folded", "null"}
    return root / "ds"


@pytest.fixture(scope="module")
def reports(dataset, tmp_path_factory) -> dict:
    """The default report of the raw and of the folded rows (the default variant), with their log lines."""
    out = {}
    for variant in ("raw", None):
        lines: list[str] = []
        outputs = run_report(
            str(dataset),
            "Tiny",
            tmp_path_factory.mktemp(f"report-{variant}"),
            variant=variant,
            params=Params(**FAST),
            jobs=1,
            progress=False,
            log=lines.append,
        )
        out[variant or "folded"] = (outputs, lines)
    return out


def figure_title(path: Path) -> str:
    """The ``Title`` a figure file carries (PNG text chunk)."""
    with Image.open(path) as image:
        return image.text.get("Title", "")


def parquet_rows(dataset: Path, variant: str) -> pd.DataFrame:
    """The model's rows of one variant, straight from its parquet file (not through the analysis' loader)."""
    table = pq.read_table(
        dataset / "data" / "Tiny" / f"{MODEL}.parquet", filters=[("variant", "=", variant), ("circuit", "=", "qk")]
    )
    return table.to_pandas().sort_values(["layer", "head"], ignore_index=True)


# ---------------------------------------------------------------- issue 12: the variant in every table and title


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["raw", "folded"])
def test_every_table_and_figure_title_names_the_variant(reports, variant):
    outputs, _ = reports[variant]
    tables = sorted((outputs.family_dir / "tables").glob("*.csv"))
    assert {"consensus_classes", "consensus_labels", "layer_tests", "taxonomy_classes", "positional"} <= {
        p.stem for p in tables
    }
    for path in tables:
        table = pd.read_csv(path)
        assert "variant" in table.columns, path.name
        assert set(table["variant"]) == ({variant} if len(table) else set()), path.name  # e.g. no copying head
    figures = [path for paths in outputs.figures.values() for path in paths]
    assert any(f.startswith("taxonomy/") for f in figures) and any(f.startswith("plots/") for f in figures)
    assert {p.relative_to(outputs.family_dir).as_posix() for p in outputs.family_dir.rglob("*.png")} == set(figures)
    for figure in figures:
        title = figure_title(outputs.family_dir / figure)
        # box plots go on with their tests' line; the "QK and OV" section's figures name both circuits
        assert f"· {variant} QK spectra" in title or f"· {variant} QK and OV spectra" in title, (figure, title)
    index = (outputs.family_dir / "index.md").read_text()
    assert f"### {MODEL} · {variant} spectra\n" in index
    assert (
        f"## Joint taxonomy (default method: consensus over all models, k from the data) · {variant} spectra\n" in index
    )
    assert f"## Joint taxonomy (original method: one KMeans(6) over the pooled heads) · {variant} spectra\n" in index
    html = (outputs.family_dir / "index.html").read_text()  # the interactive embedding's title (plotly JSON)
    assert f"classes · {variant} QK spectra" in html or f"classes \\u00b7 {variant} QK spectra" in html


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["raw", "folded"])
def test_raw_and_folded_classes_compared_whichever_variant_the_report_analyses(reports, variant):
    """Issue 13 item 5: the default variant (folded) compares with raw too, not only a --variant raw run."""
    outputs, _ = reports[variant]
    ari = pd.read_csv(outputs.family_dir / "tables" / "variants_ari.csv")
    assert ari[["variant", "variant_a", "variant_b"]].values.tolist() == [[variant, "raw", "folded"]]
    assert ari["n_heads"].tolist() == [32] and -1 <= ari["ari"].iloc[0] <= 1
    moves = pd.read_csv(outputs.family_dir / "tables" / "variants_transitions.csv")
    assert moves["n_heads"].sum() == 32


@pytest.mark.slow
def test_compare_figures_name_both_variants(dataset, tmp_path):
    a, b = compare.load_sides(str(dataset), "Tiny", variant="raw", against_variant="folded")
    outputs = compare.run_compare(a, b, tmp_path, "Tiny", ["stable_rank"])
    depth = pd.read_csv(outputs.family_dir / "tables" / "depth.csv")
    assert set(depth["variant"]) == {"raw", "folded"}
    heads = pd.read_csv(outputs.family_dir / "tables" / "compare_heads.csv")
    assert set(zip(heads["variant_a"], heads["variant_b"])) == {("raw", "folded")}
    for figure in outputs.figures["depth"] + outputs.figures["compare"]:
        title = figure_title(outputs.family_dir / figure)
        assert "raw" in title and "folded" in title, (figure, title)


# ---------------------------------------------------------------- issue 13 item 5: heads by offset


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["raw", "folded"])
def test_positional_table_recomputes_from_the_builder_rows(dataset, reports, variant):
    outputs, _ = reports[variant]
    table = pd.read_parquet(outputs.family_dir / "tables" / "positional.parquet")
    rows = parquet_rows(dataset, variant)
    assert table[["layer", "head"]].values.tolist() == rows[["layer", "head"]].values.tolist()  # every rotary head
    assert list(table.columns[:5]) == ["model", "variant", "circuit", "layer", "head"]
    for k, delta in enumerate(OFFSETS):
        expected = [p[k][0] / sv[0] for p, sv in zip(rows["positional_singular_values"], rows["singular_values"])]
        np.testing.assert_allclose(table[f"norm_ratio_{delta}"], expected, rtol=1e-6)
    np.testing.assert_allclose(table["norm_ratio_0"], 1.0, rtol=1e-6)
    assert not np.allclose(table["norm_ratio_32"], 1.0)  # rotation changes the spectral norm of these heads
    for name in ("positional_norm_ratio_min", "positional_norm_ratio_max"):
        np.testing.assert_array_equal(table[name].to_numpy(float), rows[name].to_numpy(float))
    assert table["half_norm_offset"].astype("float").equals(rows["half_norm_offset"].astype("float"))
    csv = pd.read_csv(outputs.family_dir / "tables" / "positional.csv")
    np.testing.assert_allclose(csv["norm_ratio_4"], table["norm_ratio_4"], rtol=1e-5)


@pytest.mark.slow
def test_positional_figure_is_written_titled_and_linked(reports):
    outputs, _ = reports["folded"]
    figure = f"positional/{MODEL}.png"
    assert figure in outputs.figures[MODEL]
    path = outputs.family_dir / figure
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000
    with Image.open(path) as image:
        width, height = image.size
        assert width >= 800 and height >= 300 and len(set(image.convert("L").getdata())) > 30  # drawn, not blank
    title = figure_title(path)
    assert MODEL in title and "offset" in title and title.endswith("· folded QK spectra")
    index = (outputs.family_dir / "index.md").read_text()
    links = set(re.findall(r"\]\(([^)]+)\)", index))
    assert {"tables/positional.csv", figure} <= links
    html = (outputs.family_dir / "index.html").read_text()
    assert 'href="tables/positional.csv"' in html and f'src="{figure}"' in html


@pytest.mark.slow
def test_without_positional_spectra_no_figure_and_one_log_line(dataset, tmp_path):
    lines: list[str] = []
    outputs = run_report(
        str(dataset), "Tiny", tmp_path, variant="null", params=Params(**FAST), jobs=1, progress=False, log=lines.append
    )
    assert "positional" not in outputs.tables and not (outputs.family_dir / "positional").exists()
    assert [line for line in lines if line.startswith("positional:")] == [
        f"positional: no positional spectra for {MODEL} [null] (no rotary layers, built without offsets, "
        "or a legacy/null variant): no positional figure for them"
    ]


# ---------------------------------------------------------------- issue 13 leftovers


ORIGINAL_TABLES = {"classes", "labels", "bds"}


@pytest.mark.slow
def test_original_tables_only_under_method_original(dataset, reports, tmp_path):
    outputs, _ = reports["folded"]
    written = {p.stem for p in (outputs.family_dir / "tables").glob("*.csv")}
    assert not ORIGINAL_TABLES & written and not ORIGINAL_TABLES & set(outputs.tables)
    index = (outputs.family_dir / "index.md").read_text()
    assert not re.search(r"\((tables/)?(classes|labels|bds)\.csv\)", index) and "kept for comparison" not in index
    shutil.copytree(outputs.family_dir, tmp_path / "Tiny")  # a default report's outputs, then --method original there
    lines: list[str] = []
    original = run_report(
        str(dataset),
        "Tiny",
        tmp_path,
        params=Params(**FAST, method="original"),
        jobs=1,
        progress=False,
        log=lines.append,
    )
    written = {p.stem for p in (original.family_dir / "tables").glob("*.*")}
    assert ORIGINAL_TABLES <= written and not {"consensus_classes", "layer_tests", "positional"} & written  # none stale
    assert any(line.startswith("removed tables of the other method") and "positional.csv" in line for line in lines)
    index = (original.family_dir / "index.md").read_text()
    assert all(f"](tables/{name}.csv)" in index for name in ORIGINAL_TABLES)


def test_default_report_removes_the_original_tables_a_previous_run_left(tmp_path):
    outputs = Outputs(tmp_path / "Tiny")
    (outputs.family_dir / "tables").mkdir(parents=True)
    for name in ("classes.csv", "classes.parquet", "bds.csv", "stability.csv"):
        (outputs.family_dir / "tables" / name).write_text("x\n")
    assert sorted(remove_stale_tables(outputs, "consensus")) == ["bds.csv", "classes.csv", "classes.parquet"]
    assert [p.name for p in (outputs.family_dir / "tables").iterdir()] == ["stability.csv"]


@pytest.mark.slow
def test_per_model_timings_say_they_are_sums_over_models(reports):
    outputs, lines = reports["folded"]
    assert outputs.timings["consensus (sum over 1 model)"] > 0  # was an unlabelled "consensus"
    assert "taxonomy (joint, all models)" in outputs.timings
    labelled = ("(sum over", "(joint, all models)", "(wall", "(table + figures)", "(tables + figures)")
    plain = {"load", "tables + index", "total"}
    assert all(key in plain or any(mark in key for mark in labelled) for key in outputs.timings), outputs.timings
    (line,) = [line for line in lines if line.startswith("timings: ")]
    assert "consensus (sum over 1 model) " in line


@pytest.mark.slow
def test_the_default_method_colours_the_embedding_by_consensus_classes_and_labels_the_esd_figure(
    dataset, reports, tmp_path
):
    """Default method: the interactive embedding shows the consensus classes and the ESD figure says its classes are
    the original method's; under --method original both are the original's KMeans classes."""
    outputs, _ = reports["folded"]
    embedding = outputs.frames["embedding"]
    consensus = pd.read_csv(outputs.family_dir / "tables" / "consensus_labels.csv")
    merged = embedding.merge(consensus, on=["model", "layer", "head"], suffixes=("", "_consensus"))
    assert len(merged) == len(embedding) > 0 and (merged["class"] == merged["class_consensus"]).all()
    assert "consensus classes" in (outputs.family_dir / "index.html").read_text()
    (esd,) = (outputs.family_dir / "ESDs").glob("*.png")
    assert "the original method's classes" in figure_title(esd)

    original = run_report(
        str(dataset), "Tiny", tmp_path, params=Params(**FAST, method="original"), jobs=1, progress=False
    )
    labels = pd.read_csv(original.family_dir / "tables" / "labels.csv")
    merged = original.frames["embedding"].merge(labels, on=["model", "layer", "head"], suffixes=("", "_original"))
    assert (merged["class"] == merged["class_original"]).all()
    (esd,) = (original.family_dir / "ESDs").glob("*.png")
    assert "original method" not in figure_title(esd)
    assert "the original method's KMeans classes" in (original.family_dir / "index.html").read_text()
