"""Issue 23 item 1: the report's summary, generated from its tables, every number linked to its table."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from helpers import SIZE_ORDER, sized_dataset

from qk_spectra_ds.analysis import summary

LINKS = {
    name: f"tables/{name}.csv"
    for name in (
        "consensus_labels",
        "consensus_classes",
        "k_selection",
        "null_classes",
        "layer_tests",
        "variants_ari",
        "taxonomy_classes",
        "structure",
        "behaviour_predicts",
        "ov_copying",
    )
}


def _tables(models=("org/a", "org/b"), k=(2, 3), n_layers=12, surviving=("MEAN",)) -> dict[str, pd.DataFrame]:
    """Tables as a default-method report writes them, for ``models`` with ``k`` classes each."""
    labels, classes, scan, null, tests, ari = [], [], [], [], [], []
    for model, kk in zip(models, k):
        heads = n_layers * 4
        labels.append(
            pd.DataFrame(
                {
                    "model": model,
                    "variant": "folded",
                    "layer": np.repeat(np.arange(n_layers), 4),
                    "head": np.tile(np.arange(4), n_layers),
                    "class": np.arange(heads) % kk,
                }
            )
        )
        for c in range(kk):
            n = int((np.arange(heads) % kk == c).sum())
            classes.append(
                {
                    "model": model,
                    "variant": "folded",
                    "class": c,
                    "n_heads": n,
                    "share": n / heads,
                    "confidence_mean": 0.9,
                }
            )
            null.append(
                {
                    "model": model,
                    "class": c,
                    "median_fraction_outside": 0.25,
                    "distinguishable_from_gaussian": True,
                    "distinguishable_from_null_variant": c == 0,
                }
            )
        for kv in range(2, 9):
            scan.append(
                {"model": model, "k": kv, "stability_ari_mean": 0.9 - 0.05 * kv, "silhouette": 0.4, "chosen": kv == kk}
            )
        for stat in ("MEAN", "STD"):
            tests.append(
                {
                    "model": model,
                    "stat": stat,
                    "p_bds_permutation_holm": 0.01 if stat in surviving else 0.4,
                    "p_trend_permutation_holm": 0.5,
                    "survives": stat in surviving,
                    "original_significant": True,
                    "note": "",
                }
            )
        ari.append(
            {
                "model": model,
                "variant_a": "raw",
                "variant_b": "folded",
                "n_heads": heads,
                "k_a": kk,
                "k_b": kk,
                "ari": 0.3,
            }
        )
    return {
        "consensus_labels": pd.concat(labels, ignore_index=True),
        "consensus_classes": pd.DataFrame(classes),
        "k_selection": pd.DataFrame(scan),
        "null_classes": pd.DataFrame(null),
        "layer_tests": pd.DataFrame(tests),
        "variants_ari": pd.DataFrame(ari),
    }


def _line(lines, topic) -> str:
    found = [line.text for line in lines if line.topic == topic]
    assert found, (topic, [line.topic for line in lines])
    return " ".join(found)


def _every_number_linked(lines, links=LINKS) -> None:
    """Each piece of a sentence holding a digit is a link to a table the run wrote (or a model id, as code)."""
    for line in lines:
        for part in line.parts:
            if re.search(r"\d", part.text) and not part.code:
                assert part.link in links.values(), (line.topic, part)


def test_summary_with_class_structure():
    tables = _tables()
    tables["structure"] = pd.DataFrame(
        {
            "model": ["org/a", "org/b"],
            "statistic": [3.1, 4.2],
            "p_value": [0.001, 0.004],
            "alpha": 0.05,
            "tested": True,
            "structure": [True, True],
            "conclusion": "evidence of classes",
        }
    )
    lines = summary.summarize(tables, LINKS, order=["org/b", "org/a"])
    _every_number_linked(lines)
    text = {line.topic: line.text for line in lines}
    assert _line(lines, "data").startswith(
        "96 heads in 2 models (org/b: 12 layers × 4 heads, org/a: 12 layers × 4 heads)"
    )
    assert "evidence of classes in 2 of 2 models tested (structure column, level 0.05)" in text["structure"]
    assert "a: evidence of classes, p = 0.001, k = 2; b: evidence of classes, p = 0.004, k = 3" in text["structure"]
    assert "a continuum" not in text["structure"] and "not tested" not in text["structure"]
    classes = _line(lines, "classes")
    assert "class 2: 16 heads (33%)" in classes and "25% of a head's spectrum outside" in classes
    assert text["per-layer trends"].startswith("2 of 4 tested per-layer series survive")
    assert "a MEAN" in text["per-layer trends"] and "STD" not in text["per-layer trends"]
    assert (
        "raw k = 2, folded k = 2, agreement ARI 0.30" in text["folded vs raw"]
        and "differently" in text["folded vs raw"]
    )
    assert (
        text["null"].startswith("5 of 5 classes differ from Gaussian")
        and "2 of 5 differ from the dataset's null variant" in text["null"]
    )


def test_summary_without_class_structure_says_continuum():
    tables = _tables(surviving=())
    tables["structure"] = pd.DataFrame({"model": ["org/a", "org/b"], "p_value": [0.41, 0.77]})  # no decision column
    lines = summary.summarize(tables, LINKS)
    _every_number_linked(lines)
    structure = _line(lines, "structure")
    assert "evidence of classes in 0 of 2 models tested (p_value < 0.05)" in structure
    assert structure.count("no evidence of classes (a continuum)") == 2
    tables["structure"] = pd.DataFrame(
        {
            "model": ["org/a", "org/b"],
            "p_value": [0.41, np.nan],
            "tested": [True, False],
            "structure": [False, False],
            "conclusion": ["no evidence of classes: a continuum", "not tested: 3 heads"],
        }
    )
    structure = _line(summary.summarize(tables, LINKS), "structure")
    assert "in 0 of 1 models tested" in structure and "a: no evidence of classes: a continuum, p = 0.41" in structure
    assert "b: not tested" in structure
    assert _line(lines, "per-layer trends").startswith("0 of 4 tested per-layer series survive")


def test_summary_without_a_structure_table_says_it_was_not_tested():
    lines = summary.summarize(_tables(), LINKS)
    structure = _line(lines, "structure")
    assert "k = 2 for a" in structure and "k = 3 for b" in structure
    assert "not tested in this run" in structure and "starts at 2, so classes are imposed" in structure


def test_summary_degrades_when_tables_are_absent():
    assert summary.summarize({}) == []
    only = _tables()
    lines = summary.summarize({"consensus_labels": only["consensus_labels"]}, LINKS)
    assert [line.topic for line in lines] == ["data"]
    short = _tables(n_layers=4)
    short["layer_tests"] = short["layer_tests"].assign(
        p_bds_permutation_holm=np.nan, p_trend_permutation_holm=np.nan, survives=False, note="not tested: 4 layers < 10"
    )
    trends = _line(summary.summarize(short, LINKS), "per-layer trends")
    assert trends.startswith("no per-layer series was tested (4 series: not tested: 4 layers < 10)")
    assert "not valid at these lengths" in trends


def test_summary_reads_behaviour_and_ov_conclusions_when_present():
    tables = _tables()
    tables["behaviour_predicts"] = pd.DataFrame(
        {
            "behaviour": ["induction", "previous_token"],
            "conclusion": ["no spectral metric predicts induction", "stable rank predicts previous-token (AUC 0.81)"],
        }
    )
    tables["ov_copying"] = pd.DataFrame({"model": ["org/a"], "n_copying": [3]})
    lines = summary.summarize(tables, LINKS)
    _every_number_linked(lines)
    assert "no spectral metric predicts induction; stable rank predicts previous-token (AUC 0.81)" in _line(
        lines, "behaviour"
    )
    assert "1 rows in ov_copying" in _line(lines, "QK and OV")


def test_markdown_and_html_link_numbers_and_escape():
    tables = _tables(models=("org/a_<b>", "org/c"))
    lines = summary.summarize(tables, LINKS)
    md = summary.to_markdown(lines)
    assert "[96](tables/consensus_labels.csv) heads" in md and "`org/a_<b>`" in md
    page = summary.to_html(lines)
    assert '<a href="tables/consensus_labels.csv">96</a> heads' in page and "<code>org/a_&lt;b&gt;</code>" in page
    assert "<b>" not in page


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """``analyze.py report`` (default method, PDF figures) on three models of different sizes: (family dir, stderr)."""
    import contextlib
    import io

    from qk_spectra_ds.analysis.cli import main

    root = tmp_path_factory.mktemp("summary")
    dataset = sized_dataset(root / "ds")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(
            [
                "report",
                "--dataset",
                str(dataset),
                "--family",
                "syn",
                "--out",
                str(root / "out"),
                "--stats",
                "MEAN",
                "--permutations",
                "99",
                "--format",
                "pdf",
                "--jobs",
                "1",
            ]
        )
    assert code == 0, err.getvalue()[-2000:]
    return root / "out" / "syn", err.getvalue()


@pytest.mark.slow
def test_report_index_and_html_open_with_the_summary(default_run):
    family_dir, err = default_run
    md = (family_dir / "index.md").read_text()
    head = md.split("## Run")[0]
    assert "## Summary" in head and "heads in [3](tables/consensus_labels.csv) models" in head
    page = (family_dir / "index.html").read_text()
    assert page.index('id="summary"') < page.index('id="embedding"')
    assert '<a href="tables/consensus_labels.csv">3</a> models' in page
    last = err.strip().splitlines()[-1]
    assert str(family_dir / "index.html") in last, last  # item 7: the last line names the page to open


@pytest.mark.slow
def test_every_table_lists_models_by_size(default_run):
    family_dir, _ = default_run
    tables = sorted((family_dir / "tables").glob("*.csv"))
    assert len(tables) >= 8
    for path in tables:
        table = pd.read_csv(path)
        if "model" not in table.columns:
            continue
        seen = [m for m in dict.fromkeys(table["model"]) if m in SIZE_ORDER]  # not '<joint: all models>' rows
        assert seen == [m for m in SIZE_ORDER if m in seen], (path.name, seen)


@pytest.mark.slow
def test_pdf_figures_get_png_previews_shown_in_the_page(default_run):
    family_dir, _ = default_run
    page = (family_dir / "index.html").read_text()
    pdfs = [p.relative_to(family_dir).as_posix() for p in family_dir.rglob("*.pdf")]
    assert len(pdfs) >= 5
    for pdf in pdfs:
        preview = pdf[: -len(".pdf")] + ".preview.png"
        assert (family_dir / preview).is_file(), preview
        assert f'src="{preview}"' in page and f'href="{pdf}"' in page
