"""The analysis of both circuits (issue 21): --circuit selection, the circuit column and titles, the "QK and OV" section."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qk_spectra_ds.analysis import circuit_tables, circuits, layer_boxplot_figures, plots
from qk_spectra_ds.analysis.layer_boxplots import LayerStat

MODELS = ("org/a", "org/b")
N_LAYERS, N_HEADS = 3, 4


def _rows(circuit: str, variant: str = "folded", seed: int = 0) -> pd.DataFrame:
    """Synthetic schema-v4 rows of one circuit: two models, three layers, four heads."""
    rng = np.random.default_rng(seed)
    keys = [(m, layer, head) for m in MODELS for layer in range(N_LAYERS) for head in range(N_HEADS)]
    frame = pd.DataFrame(keys, columns=["model_id", "layer", "head"])
    n = len(frame)
    frame = frame.assign(
        variant=variant,
        circuit=circuit,
        n_layers=N_LAYERS,
        positivity=rng.uniform(-1, 1, n),
        stable_rank=rng.uniform(1, 8, n),
        symmetry=rng.uniform(0.4, 0.6, n),
        positivity_z=rng.normal(size=n),
    )
    if circuit == "ov":
        frame["copying_score"] = frame["positivity"]
        frame["copying_positive_share"] = rng.uniform(0, 1, n)
        frame["copying_score_z"] = rng.uniform(-2.5, 2.5, n)
    return frame


def _ov_with_planted_z() -> pd.DataFrame:
    ov = _rows("ov")
    planted = {
        ("org/a", 0, 1): 7.5,
        ("org/a", 2, 3): 3.01,
        ("org/a", 1, 0): 3.0,
        ("org/b", 1, 2): -4.0,
        ("org/b", 0, 0): -3.0,
        ("org/b", 2, 2): float("nan"),
    }
    for (model, layer, head), z in planted.items():
        ov.loc[(ov["model_id"] == model) & (ov["layer"] == layer) & (ov["head"] == head), "copying_score_z"] = z
    return ov


def test_roles_are_strictly_beyond_three_and_tables_count_them():
    qk, ov = _rows("qk"), _ov_with_planted_z()
    labels = pd.DataFrame(
        [
            (m, layer, head, (layer + head) % 2)
            for m, layer, head in qk[["model_id", "layer", "head"]].itertuples(index=False)
        ],
        columns=["model", "layer", "head", "class"],
    )
    paired = circuit_tables.pair_heads(qk, ov, labels, n_bands=3)
    assert len(paired) == len(qk) and set(paired["circuit"]) == {"qk+ov"}
    assert list(paired["class"]) == list((paired["layer"] + paired["head"]) % 2)  # each head's own class
    copying = circuit_tables.role_table(paired, circuit_tables.ROLE_COPYING)
    suppression = circuit_tables.role_table(paired, circuit_tables.ROLE_SUPPRESSION)
    assert list(zip(copying["model"], copying["layer"], copying["head"])) == [
        ("org/a", 0, 1),
        ("org/a", 2, 3),
    ]  # 3.0: not > 3
    assert list(zip(suppression["model"], suppression["layer"], suppression["head"])) == [
        ("org/b", 1, 2)
    ]  # -3.0: not < -3
    assert set(copying["circuit"]) == {"ov"} and copying["ov_copying_score_z"].is_monotonic_decreasing
    models = circuit_tables.model_table(paired).set_index("model")
    assert models.loc["org/a", "n_copying"] == 2 and models.loc["org/a", "n_suppression"] == 0
    assert (
        models.loc["org/b", "n_suppression"] == 1 and models.loc["org/b", "n_tested"] == N_LAYERS * N_HEADS - 1
    )  # NaN z
    from scipy.stats import norm

    assert models.loc["org/b", "expected_by_chance_per_side"] == pytest.approx(11 * norm.sf(3.0), rel=1e-12)
    assert "1 suppress" in models.loc["org/b", "conclusion"] and "descriptive" in models.loc["org/b", "conclusion"]
    rho = models.loc["org/a", "spearman_qk_positivity_ov_copying"]
    part = paired[paired["model"] == "org/a"]
    assert rho == pytest.approx(part["qk_positivity"].rank().corr(part["ov_copying_score"].rank()))
    depth = circuit_tables.depth_table(paired, n_bands=3)
    assert depth.groupby("model")["n_heads"].sum().tolist() == [N_LAYERS * N_HEADS] * 2
    assert depth.groupby("model")["n_copying"].sum().tolist() == [2, 0]
    assert (
        depth.loc[(depth["model"] == "org/a") & (depth["band"] == 0), "n_copying"].item() == 1
    )  # layer 0 of 3: band 0


def test_heads_pair_only_within_one_variant():
    paired = circuit_tables.pair_heads(_rows("qk", "folded"), _rows("ov", "raw"))
    assert paired.empty
    both = circuit_tables.pair_heads(pd.concat([_rows("qk", "folded"), _rows("qk", "raw")]), _rows("ov", "raw"))
    assert set(both["variant"]) == {"raw"} and len(both) == len(_rows("ov"))


def test_model_without_z_scores_says_not_tested():
    ov = _rows("ov", "null").assign(copying_score_z=np.nan)  # null rows carry no matched-null z
    table = circuit_tables.model_table(circuit_tables.pair_heads(_rows("qk", "null"), ov))
    assert (table["n_tested"] == 0).all() and table["conclusion"].str.contains("not tested").all()


def test_variant_suffix_names_the_circuit():
    assert plots.variant_suffix("folded", "qk") == " · folded QK spectra"
    assert plots.variant_suffix("folded", "ov") == " · folded OV spectra"
    assert plots.variant_suffix(["folded", "raw"], "qk+ov") == " · folded + raw QK and OV spectra"
    assert plots.variant_suffix("raw") == " · raw spectra" and plots.variant_suffix(None, "ov") == ""


def test_figure_titles_name_the_circuit():
    result = LayerStat(
        "m",
        "MEAN",
        [0, 1, 2],
        [np.ones(3), np.ones(3) * 2, np.ones(3) * 3],
        np.array([1.0, 2, 3]),
        np.array([1.0, 2, 3]),
        float("nan"),
        float("nan"),
        None,
        None,
    )
    with plots.style():
        fig = layer_boxplot_figures.layer_stat_figure(result, "folded", circuit="ov")
    assert plots.figure_title(fig).endswith("· folded OV spectra")


def test_circuit_of_and_label_tables(tmp_path):
    from qk_spectra_ds.analysis.report import Outputs
    from qk_spectra_ds.analysis.table_files import write_table

    assert circuit_tables.circuit_of(pd.DataFrame({"variant": ["raw"]})) == "qk"  # schema v1-v3: qk rows
    assert circuit_tables.circuit_of(_rows("ov")) == "ov"
    outputs = Outputs(tmp_path)
    (tmp_path / "tables").mkdir()
    tables = {
        "a": pd.DataFrame({"model": ["m"], "variant": ["folded"], "x": [1.0]}),
        "b": pd.DataFrame({"model_a": ["m"], "variant_a": ["raw"], "model_b": ["m"], "variant_b": ["folded"]}),
        "c": pd.DataFrame({"model": ["m"], "variant": ["folded"], "circuit": ["qk+ov"]}),
        "d": pd.DataFrame({"model": ["m"], "x": [1]}),
    }
    for name, table in tables.items():
        write_table(table, tmp_path / "tables" / f"{name}.csv")
        outputs.tables[name], outputs.frames[name] = f"tables/{name}.csv", table
    assert circuit_tables.label_tables(outputs, "ov") == ["a", "b"]
    assert list(pd.read_csv(tmp_path / "tables" / "a.csv").columns) == ["model", "variant", "circuit", "x"]
    assert list(pd.read_parquet(tmp_path / "tables" / "b.parquet").columns)[-1] == "circuit"
    assert pd.read_csv(tmp_path / "tables" / "c.csv")["circuit"].tolist() == ["qk+ov"]  # kept
    assert "circuit" not in pd.read_csv(tmp_path / "tables" / "d.csv").columns


class _NoSource:
    """A config read that fails the test when anything is selected from it."""

    def __getattr__(self, name):
        raise AssertionError("no load should be tried for a frame of schema v1-v3 rows")


def test_no_ov_rows_is_one_log_line_and_no_tables(tmp_path, monkeypatch):
    from qk_spectra_ds.analysis.report import Outputs, Params

    frame = _rows("qk").drop(columns="circuit")  # as a v1-v3 file loads
    lines: list[str] = []
    outputs = Outputs(tmp_path)
    assert circuits.store_circuits(outputs, frame, _NoSource(), "F", Params(), lines.append) is None
    assert len(lines) == 1 and "no ov rows" in lines[0]
    assert outputs.tables == {} and not (tmp_path / "tables").exists()
    (tmp_path / "tables").mkdir()
    kept = tmp_path / "tables" / "labels.csv"
    for path in (tmp_path / "tables" / "qk_ov.csv", tmp_path / "tables" / "copying_heads.parquet", kept):
        path.write_text("x\n")  # an earlier report's section tables, and a table of another section
    assert circuits.store_circuits(outputs, frame, _NoSource(), "F", Params(), lines.append) is None
    assert sorted(p.name for p in (tmp_path / "tables").iterdir()) == ["labels.csv"]
    assert "removed an earlier run's copying_heads.parquet, qk_ov.csv" in lines[-1]


@pytest.mark.slow
def test_section_tables_figures_and_summary(tmp_path, monkeypatch):
    from qk_spectra_ds.analysis.report import Outputs, Params

    qk, ov = _rows("qk"), _ov_with_planted_z()
    asked = []

    def other_circuit(source, frame, circuit):
        asked.append(circuit)
        return ov

    monkeypatch.setattr(circuits, "load_circuit_rows", other_circuit)
    outputs = Outputs(tmp_path)
    labels = (
        qk[["model_id", "layer", "head"]].rename(columns={"model_id": "model"}).assign(variant="folded", **{"class": 1})
    )
    outputs.frames["consensus_labels"] = labels
    lines: list[str] = []
    section = circuits.store_circuits(outputs, qk, None, "F", Params(), lines.append, list(MODELS))
    assert asked == ["ov"]
    assert section.startswith("## QK and OV") and "### Copying heads" in section and "QK class" in section
    for name in ("circuit_heads", "copying_heads", "suppression_heads", "circuit_depth", "qk_ov"):
        assert (tmp_path / "tables" / f"{name}.csv").is_file() and (tmp_path / "tables" / f"{name}.parquet").is_file()
    copying = pd.read_parquet(tmp_path / "tables" / "copying_heads.parquet")
    assert copying[["layer", "head"]].values.tolist() == [[0, 1], [2, 3]] and (copying["class"] == 1).all()
    figures = outputs.figures["org/a"] + outputs.figures["circuits"]
    assert len(figures) == 2 and figures[0].startswith("circuits/") and figures[1] == "circuits/depth.png"
    for figure in figures:
        from PIL import Image

        assert (tmp_path / figure).is_file()
        assert "· folded QK and OV spectra" in Image.open(tmp_path / figure).info["Title"]
    assert "2 copying and 1 suppression" in lines[-1]
    summary = pytest.importorskip("qk_spectra_ds.analysis.summary")
    said = summary.summarize(summary.read_tables(tmp_path, outputs.tables), outputs.tables, list(MODELS))
    line = next(line for line in said if line.topic == "QK and OV")
    assert "a [folded]: 2 of 12 heads copy" in line.text and "b [folded]: 0 of 11 heads copy" in line.text


@pytest.mark.slow
def test_an_ov_run_loads_the_qk_rows_and_colours_by_its_own_classes(tmp_path, monkeypatch):
    from qk_spectra_ds.analysis.report import Outputs, Params

    monkeypatch.setattr(circuits, "load_circuit_rows", lambda source, frame, circuit: _rows("qk"))
    section = circuits.store_circuits(Outputs(tmp_path), _ov_with_planted_z(), None, "F", Params(), None)
    assert "OV class" in section
    heads = pd.read_parquet(tmp_path / "tables" / "circuit_heads.parquet")
    assert (
        heads["qk_positivity"].tolist()
        == circuit_tables.pair_heads(_rows("qk"), _ov_with_planted_z())["qk_positivity"].tolist()
    )


# ---------------------------------------------------------------- end to end on a tiny model build


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny Llama (GQA) built with both circuits (folded rows), and the same model built QK-only."""
    pytest.importorskip("transformers")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import inspect

    from tiny_models import make_saved

    from qk_spectra_ds.builder.pipeline import build_family

    if "circuits" not in inspect.signature(build_family).parameters:  # until the builder's OV hook lands (issue 21)
        pytest.skip("this builder writes no OV rows yet")
    root = tmp_path_factory.mktemp("circuits")
    _, model_dir = make_saved("llama-gqa", root / "model")
    both, qk_only = root / "both", root / "qk_only"
    build_family(
        "T", both, models=[str(model_dir)], progress=False, variants=["folded"], offsets=[], circuits=["qk", "ov"]
    )
    build_family(
        "T", qk_only, models=[str(model_dir)], progress=False, variants=["folded"], offsets=[], circuits=["qk"]
    )
    return both, qk_only


@pytest.mark.slow
def test_end_to_end_circuit_selection_section_and_titles(built, tmp_path, analyze_cli):
    from PIL import Image

    from qk_spectra_ds.analysis.loading import AnalysisError, load_spectra

    both, qk_only = built
    ov = load_spectra(both, "T", circuit="ov")
    qk = load_spectra(both, "T")
    assert set(ov["circuit"]) == {"ov"} and set(qk["circuit"]) == {"qk"} and len(ov) == len(qk) == 2 * 4
    assert not np.allclose(ov["stable_rank"], qk["stable_rank"])
    with pytest.raises(AnalysisError, match="no ov rows"):
        load_spectra(qk_only, "T", circuit="ov")

    assert (
        analyze_cli(
            [
                "clusters",
                "--dataset",
                str(both),
                "--family",
                "T",
                "--out",
                str(tmp_path / "ov"),
                "--circuit",
                "ov",
                "--quiet",
            ]
        )
        == 0
    )
    labels = pd.read_csv(tmp_path / "ov" / "T" / "tables" / "labels.csv")
    assert list(labels.columns[:3]) == ["model", "variant", "circuit"] and set(labels["circuit"]) == {"ov"}
    esd = next((tmp_path / "ov" / "T" / "ESDs").glob("*.png"))
    assert Image.open(esd).info["Title"].endswith("· folded OV spectra")

    assert (
        analyze_cli(
            [
                "report",
                "--dataset",
                str(both),
                "--family",
                "T",
                "--out",
                str(tmp_path / "qk"),
                "--method",
                "original",
                "--skip_layers_below",
                "0",
                "--embedding",
                "pca",
                "--quiet",
            ]
        )
        == 0
    )
    family_dir = tmp_path / "qk" / "T"
    assert set(pd.read_csv(family_dir / "tables" / "classes.csv")["circuit"]) == {"qk"}
    heads = pd.read_parquet(family_dir / "tables" / "circuit_heads.parquet")
    assert len(heads) == 8 and heads["class"].notna().all()
    np.testing.assert_allclose(heads["ov_copying_score"], ov.sort_values(["layer", "head"])["copying_score"], rtol=1e-6)
    index = (family_dir / "index.md").read_text()
    assert "## QK and OV" in index and "**QK and OV**" in index
    assert Image.open(family_dir / "taxonomy" / "classes.png").info["Title"].endswith("· folded QK spectra")

    assert (
        analyze_cli(
            [
                "report",
                "--dataset",
                str(qk_only),
                "--family",
                "T",
                "--out",
                str(tmp_path / "v3"),
                "--method",
                "original",
                "--skip_layers_below",
                "0",
                "--embedding",
                "pca",
                "--quiet",
            ]
        )
        == 0
    )
    assert "QK and OV" not in (tmp_path / "v3" / "T" / "index.md").read_text()
    assert not (tmp_path / "v3" / "T" / "tables" / "qk_ov.csv").exists()
    assert math.isfinite(float(heads["qk_positivity"].iloc[0]))


def test_interactive_embedding_title_names_the_circuit():
    from qk_spectra_ds.analysis import html_report, taxonomy

    rng = np.random.default_rng(3)
    rows = _rows("ov").assign(eigenvalues=list(rng.gamma(2.0, size=(2 * N_LAYERS * N_HEADS, 8))))
    fitted = taxonomy.SpectralHeadClassifier(n_clusters=2, embedding="pca").fit(np.stack(rows["eigenvalues"]))
    table = html_report.embedding_table("org/a", rows, fitted)
    assert list(table.columns[:3]) == ["model", "variant", "circuit"] and set(table["circuit"]) == {"ov"}
    assert html_report._embedding_title("org/a", "pca", ["folded"], "consensus", html_report._circuit(table)).endswith(
        "· folded OV spectra"
    )
    legacy = table.drop(columns="circuit")  # schema v1-v3 rows: QK
    assert html_report._embedding_title("org/a", "pca", ["legacy"], None, html_report._circuit(legacy)).endswith(
        "· legacy QK spectra"
    )
