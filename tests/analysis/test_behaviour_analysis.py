"""The behaviour analysis: calibrated on data with no relation, finds a planted one, agrees with scipy/sklearn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qk_spectra_ds import schema
from qk_spectra_ds.analysis import behaviour as ab
from qk_spectra_ds.analysis import behaviour_report


def synthetic(seed: int, models=("m/a", "m/b", "m/c"), layers=6, heads=12, planted: float = 0.0) -> pd.DataFrame:
    """Heads of several models with random metrics and scores; ``planted``: the previous-token score follows stable_rank."""
    rng = np.random.default_rng(seed)
    parts = []
    for i, model in enumerate(models):
        n = layers * heads
        part = pd.DataFrame(
            {
                "model_id": model,
                "variant": "raw",
                "layer": np.repeat(np.arange(layers), heads),
                "head": np.tile(np.arange(heads), layers),
            }
        )
        for metric in schema.METRICS:
            part[metric] = rng.gamma(2.0, 1.0 + i, n)  # models differ in scale: ranks are within model
        for score in schema.BEHAVIOUR_SCORES:
            part[f"behaviour_{score}"] = rng.beta(1, 4, n)
        part["behaviour_next_token"] = np.nan  # a causal model
        if planted:
            z = (part["stable_rank"] - part["stable_rank"].mean()) / part["stable_rank"].std()
            part["behaviour_previous_token"] = 1 / (1 + np.exp(-(planted * z + rng.normal(0, 1, n) - 1.5)))
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


@pytest.mark.slow
def test_null_data_rejects_at_most_five_percent_of_runs():
    """Family-wise: a run with any significant test after the correction counts as one false rejection; the raw
    permutation p-values themselves are uniform (about 5% below 0.05), so the correction is not trivially passed."""
    runs, raw = 40, []
    false = 0
    for seed in range(runs):
        frame = synthetic(seed).drop(columns=[m for m in schema.METRICS if m not in ("stable_rank", "positivity")])
        table = ab.predictor_table(frame, permutations=299, seed=seed)
        false += bool(table["significant"].any())
        raw += table["p_permutation"].dropna().tolist()
    assert false <= 4  # the true rate is <= 5%; 40 runs: P(> 4 rejections | 5%) ~ 5%
    assert 0.03 <= np.mean(np.array(raw) <= 0.05) <= 0.07, np.mean(np.array(raw) <= 0.05)


def test_planted_relation_is_found_and_said():
    table = ab.predictor_table(synthetic(1, planted=2.0), permutations=499)
    hit = table[(table["score"] == "previous_token") & (table["predictor"] == "stable_rank")]
    rho = hit[hit["statistic"] == "spearman_rho"].iloc[0]
    auc = hit[hit["statistic"] == "roc_auc"].iloc[0]
    assert rho["significant"] and rho["value"] > 0.5 and rho["ci_low"] < rho["value"] < rho["ci_high"]
    assert auc["significant"] and auc["value"] > 0.8 and auc["auc_head_kind"] == "previous-token head"
    others = table[(table["score"] != "previous_token") & table["significant"]]
    assert len(others) == 0
    sentence = table.loc[table["score"] == "previous_token", "conclusion"].iloc[0]
    assert sentence.startswith("the previous-token score is predicted by stable_rank (spearman_rho 0.8")
    assert "; AUC 0.9" in sentence and "for previous-token heads, adjusted p" in sentence
    assert (
        table.loc[table["score"] == "induction", "conclusion"]
        .iloc[0]
        .startswith("no spectral metric predicts the induction score")
    )
    assert "next_token" not in set(table["score"])  # a score no row has is not tested


def test_between_model_differences_do_not_count():
    """Model b has both larger metrics and larger scores, with no relation inside any model: not significant."""
    frame = synthetic(4, models=("m/a", "m/b"))
    b = frame["model_id"] == "m/b"
    frame.loc[b, "behaviour_local"] += 0.5
    frame.loc[b, "frobenius"] += 100.0
    table = ab.predictor_table(frame, permutations=299)
    row = table[(table["score"] == "local") & (table["predictor"] == "frobenius")].iloc[0]
    assert not row["significant"] and abs(row["value"]) < 0.3
    pooled = np.corrcoef(frame["frobenius"].rank(), frame["behaviour_local"].rank())[0, 1]
    assert pooled > 0.5  # pooled over models, the same data would look strongly related


def test_one_model_statistics_equal_scipy_and_sklearn():
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    frame = synthetic(7, models=("m/a",), planted=1.0)
    table = ab.predictor_table(frame, permutations=99)
    for metric in ("stable_rank", "positivity"):
        rows = table[(table["score"] == "previous_token") & (table["predictor"] == metric)].set_index("statistic")
        assert rows.loc["spearman_rho", "value"] == pytest.approx(
            spearmanr(frame[metric], frame["behaviour_previous_token"])[0]
        )
        label = frame["behaviour_previous_token"] >= ab.HEAD_KINDS["previous_token"][1]
        assert rows.loc["roc_auc", "value"] == pytest.approx(roc_auc_score(label, frame[metric]))


def test_stratified_permutations_stay_inside_each_model():
    models = np.array(["b", "a", "b", "c", "a", "b", "c"])
    perms = ab.stratified_permutations(models, 50, 0)
    assert perms.shape == (50, 7)
    for row in perms:
        assert sorted(row) == list(range(7)) and (models[row] == models).all()
    assert len({tuple(r) for r in perms}) > 1


def test_classes_are_tested_and_untestable_cases_say_so():
    frame = synthetic(2, models=("m/a",))
    labels = frame[["model_id", "layer", "head"]].rename(columns={"model_id": "model"})
    labels["class"] = (frame["behaviour_first_token"] > frame["behaviour_first_token"].median()).astype(
        int
    )  # classes = the score
    table = ab.predictor_table(frame, {"consensus_labels": labels}, permutations=1999)
    row = table[(table["score"] == "first_token") & (table["kind"] == "classes")].iloc[0]
    assert row["predictor"] == "consensus class" and row["significant"] and row["value"] > 0.5
    frame["behaviour_induction"] = 0.0  # no induction head anywhere: no AUC, said so
    table = ab.predictor_table(frame, permutations=99)
    rows = table[table["score"] == "induction"]
    assert rows["value"].isna().all() and rows["note"].str.contains("constant").all()


@pytest.mark.slow
def test_report_section_writes_table_figures_and_sentences(tmp_path):
    from qk_spectra_ds.analysis.report import Outputs, Params

    frame = synthetic(1, planted=2.0)
    labels = frame[["model_id", "layer", "head"]].rename(columns={"model_id": "model"}).assign(cls=frame["layer"] % 2)
    outputs = Outputs(tmp_path)
    outputs.frames["consensus_labels"] = labels.rename(columns={"cls": "class"})
    lines = []
    section = behaviour_report.store_behaviour(outputs, frame, Params(), lines.append)
    assert (tmp_path / "tables" / "behaviour.csv").is_file() and outputs.tables["behaviour"] == "tables/behaviour.csv"
    written = pd.read_csv(tmp_path / "tables" / "behaviour.csv")
    assert len(written) == len(outputs.frames["behaviour"]) and written["conclusion"].notna().all()
    scores = ["previous_token", "induction", "first_token", "local", "entropy"]
    assert outputs.figures["behaviour"] == [f"behaviour/{s}.png" for s in scores]
    assert all((tmp_path / f).stat().st_size > 1000 for f in outputs.figures["behaviour"])
    assert "- The previous-token score is predicted by stable_rank" in section
    assert "- No spectral metric predicts the induction score, nor do the classes" in section
    assert "![previous_token](behaviour/previous_token.png)" in section
    assert lines and "significant after Benjamini-Hochberg" in lines[0]
    index = tmp_path / "index.md"
    index.write_text("# report\n")
    behaviour_report.append_section(index, section)
    assert index.read_text().startswith("# report\n\n## Does the spectrum predict what heads do?")
    assert (
        behaviour_report.store_behaviour(
            Outputs(tmp_path / "none"), frame.drop(columns=[c for c in frame if c.startswith("behaviour_")]), Params()
        )
        is None
    )
