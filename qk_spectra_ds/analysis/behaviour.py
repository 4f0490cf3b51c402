"""Does the spectrum predict what a head does? Spectral metrics and classes tested against behaviour scores.

The behaviour scores are columns of the dataset (``behaviour_*``, built with ``--behaviour``), so this
module needs no torch. For every behaviour score and every predictor:

- a spectral metric: the rank correlation (Spearman's rho on within-model ranks: for one model,
  plain Spearman) with a 95% confidence interval (Fisher z, Bonett-Wright standard error), and for
  the three scores that name a kind of head (:data:`HEAD_KINDS`: previous-token, induction, sink
  heads, a head being one when its score is at least the threshold) the area under the ROC curve
  of the metric for that kind (on within-model ranks);
- a class system (per-model consensus classes, the original method's classes, the joint taxonomy):
  the share of the score's rank variance between classes (rank eta squared, within-model ranks).

Every statistic gets a permutation p-value: the score is shuffled among the heads of each model
(never across models, so differences between models cannot pass for an association), ``permutations``
times, with the same seeded shuffles for every test; p = (1 + #{|T*| >= |T|}) / (1 + permutations),
two-sided (|rho|, |AUC - 0.5|, eta squared). The p-values of all tests of a run are then adjusted
together by Benjamini-Hochberg (false discovery rate 5%); a test is ``significant`` when its adjusted
p-value is at most 0.05. Under no association at all this rejects anything in at most ~5% of runs
(tests/analysis/test_behaviour_analysis.py checks it on null data).

Its figures are :mod:`.behaviour_figures`'s, its part of the report :mod:`.behaviour_report`'s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm, rankdata

from .. import schema

N_PERMUTATIONS = 1999
SEED = 0
ALPHA = 0.05
CORRECTION = "Benjamini-Hochberg (FDR)"

HEAD_KINDS = {
    "previous_token": ("previous-token head", 0.4),
    "induction": ("induction head", 0.4),
    "first_token": ("sink head", 0.5),
}
"""Score -> (the kind of head, threshold): a head is of that kind when its score is at least the threshold."""

SCORE_LABELS = {
    "previous_token": "previous-token score",
    "next_token": "next-token score",
    "induction": "induction score",
    "first_token": "first-token (sink) score",
    "local": "local score",
    "entropy": "attention entropy",
}

METRICS = (*schema.METRICS, "symmetry", "ev_kurtosis")
"""The spectral metrics tried as predictors (those present with values in the data)."""

CLASS_TABLES = {
    "consensus_labels": "consensus class",
    "labels": "original class",
    "taxonomy_labels": "joint taxonomy class",
}

TABLE_COLUMNS = [
    "variant",
    "score",
    "predictor",
    "kind",
    "n_heads",
    "n_models",
    "statistic",
    "value",
    "ci_low",
    "ci_high",
    "auc_head_kind",
    "n_positive",
    "auc",
    "p_permutation",
    "p_adjusted",
    "significant",
    "note",
    "conclusion",
]


def has_behaviour(frame: pd.DataFrame) -> bool:
    """True when any row carries a behaviour score."""
    return any(c in frame.columns and frame[c].notna().any() for c in schema.BEHAVIOUR_COLUMNS)


def scores_present(frame: pd.DataFrame) -> list[str]:
    return [
        s
        for s in schema.BEHAVIOUR_SCORES
        if f"behaviour_{s}" in frame.columns and frame[f"behaviour_{s}"].notna().any()
    ]


# ---------------------------------------------------------------- statistics (pure)


def within_model_ranks(values: np.ndarray, models: np.ndarray) -> np.ndarray:
    """Average ranks within each model, scaled to (rank - 0.5) / n_model, so models of any size share one scale."""
    out = np.empty(len(values), float)
    codes = pd.factorize(models)[0]
    for m in range(codes.max() + 1 if len(codes) else 0):
        idx = np.flatnonzero(codes == m)
        out[idx] = (rankdata(values[idx]) - 0.5) / len(idx)
    return out


def stratified_permutations(models: np.ndarray, n: int, seed: int) -> np.ndarray:
    """(n, len(models)) index arrays, each shuffling positions only among rows of the same model."""
    rng = np.random.default_rng(seed)
    codes = pd.factorize(models)[0]
    order = np.argsort(codes, kind="stable")
    keys = codes[order][None, :] + rng.random((n, len(models)))
    shuffled = order[np.argsort(keys, axis=1)]  # row b: the rows of each model in a random order, model blocks in place
    perms = np.empty_like(shuffled)
    perms[:, order] = shuffled
    return perms


def rho_ci(rho: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Confidence interval of a Spearman rho: Fisher z with the Bonett-Wright (2000) standard error."""
    if n < 4 or not math.isfinite(rho):
        return float("nan"), float("nan")
    z = math.atanh(max(min(rho, 0.999999), -0.999999))
    se = math.sqrt((1 + rho * rho / 2) / (n - 3))
    q = norm.ppf(0.5 + level / 2)
    return math.tanh(z - q * se), math.tanh(z + q * se)


def _p(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
    """Permutation p-values, two-sided on |statistic| (``null``: (B, k))."""
    return (1 + (np.abs(null) >= np.abs(observed)[None, :] - 1e-12).sum(axis=0)) / (1 + null.shape[0])


def adjust(p_values: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values, NaN kept as NaN.

    Bit for bit statsmodels' ``multipletests(p, method="fdr_bh")[1]`` (the same operations in the same
    order), so the default method needs no statsmodels.
    """
    p = np.asarray(p_values, float)
    out = np.full(len(p), np.nan)
    ok = np.isfinite(p)
    if ok.any():
        order = np.argsort(p[ok])
        ranked = p[ok][order]
        adjusted = np.minimum.accumulate((ranked / (np.arange(1, len(ranked) + 1) / float(len(ranked))))[::-1])[::-1]
        adjusted[adjusted > 1] = 1
        unsorted = np.empty_like(adjusted)
        unsorted[order] = adjusted
        out[ok] = unsorted
    return out


@dataclass
class _Block:
    """Heads with a finite score: their models, the score's within-model ranks, the shuffles."""

    index: np.ndarray
    models: np.ndarray
    ranks: np.ndarray
    perms: np.ndarray


def _auc(labels: np.ndarray, ranks: np.ndarray, n1: int) -> np.ndarray:
    """Mann-Whitney AUC of 0/1 ``labels`` (one row or a (B, n) stack of shuffles) from the predictor's ranks."""
    n0 = ranks.shape[-1] - n1
    return (labels @ ranks - n1 * (n1 + 1) / 2) / (n1 * n0)


def _eta(centred: np.ndarray, onehot: np.ndarray, sizes: np.ndarray, total: float) -> np.ndarray:
    """Between-class share of the (centred) ranks' sum of squares, for one row or a (B, n) stack of shuffles."""
    sums = centred @ onehot
    return (sums**2 / sizes).sum(axis=-1) / total


def _metric_tests(score: str, block: _Block, frame: pd.DataFrame, metrics: Sequence[str], y: np.ndarray) -> list[dict]:
    rows = []
    kind = HEAD_KINDS.get(score)
    for metric in metrics:
        x_all = frame[metric].to_numpy(float)[block.index]
        ok = np.isfinite(x_all)
        base = {
            "score": score,
            "predictor": metric,
            "kind": "metric",
            "n_heads": int(ok.sum()),
            "n_models": len(np.unique(block.models[ok])),
            "statistic": "spearman_rho",
        }
        if ok.sum() < 4 or np.ptp(x_all[ok]) == 0 or np.ptp(y[ok]) == 0:
            rows.append({**base, "value": np.nan, "note": "fewer than 4 heads or a constant column: not tested"})
            continue
        if ok.all():
            perms, yr, models = block.perms, block.ranks, block.models
        else:  # heads without the metric: shuffles of the remaining heads, same seed
            models = block.models[ok]
            yr = within_model_ranks(y[ok], models)
            perms = stratified_permutations(models, block.perms.shape[0], SEED)
        xr = within_model_ranks(x_all[ok], models)
        xc, yc = xr - xr.mean(), yr - yr.mean()
        denom = math.sqrt((xc @ xc) * (yc @ yc))
        rho = float(xc @ yc / denom)
        null = (yc[perms] @ xc) / denom
        lo, hi = rho_ci(rho, int(ok.sum()))
        row = {
            **base,
            "value": rho,
            "ci_low": lo,
            "ci_high": hi,
            "p_permutation": float(_p(np.array([rho]), null[:, None])[0]),
        }
        if kind is not None:
            name, threshold = kind
            label = (y[ok] >= threshold).astype(float)
            positives = int(label.sum())
            row.update(auc_head_kind=name, n_positive=positives)
            if 0 < positives < len(label):
                ranks = pd.Series(xr).rank(method="average").to_numpy()
                auc = float(_auc(label, ranks, positives))
                null_auc = _auc(label[perms], ranks, positives) - 0.5
                row["auc"] = auc
                row["p_auc_permutation"] = float(_p(np.array([auc - 0.5]), null_auc[:, None])[0])
            else:
                row["note"] = f"no AUC: {positives} of {len(label)} heads are {name}s (score >= {threshold})"
        rows.append(row)
    return rows


def _class_tests(score: str, block: _Block, labels: Mapping[str, pd.Series], frame: pd.DataFrame) -> list[dict]:
    rows = []
    for name, classes in labels.items():
        cls = classes.to_numpy()[block.index]
        ok = pd.notna(cls)
        base = {
            "score": score,
            "predictor": CLASS_TABLES.get(name, name),
            "kind": "classes",
            "n_heads": int(ok.sum()),
            "n_models": len(np.unique(block.models[ok])),
            "statistic": "rank_eta_squared",
        }
        groups = pd.factorize(pd.Series(block.models[ok]).astype(str) + "\x00" + pd.Series(cls[ok]).astype(str))[0]
        if ok.sum() < 4 or groups.max() < 1 or len(np.unique(groups)) == len(np.unique(block.models[ok])):
            rows.append({**base, "value": np.nan, "note": "one class per model or too few heads: not tested"})
            continue
        if ok.all():
            perms, yr = block.perms, block.ranks
        else:
            yr = within_model_ranks(frame[f"behaviour_{score}"].to_numpy(float)[block.index][ok], block.models[ok])
            perms = stratified_permutations(block.models[ok], block.perms.shape[0], SEED)
        onehot = np.zeros((len(groups), groups.max() + 1))
        onehot[np.arange(len(groups)), groups] = 1.0
        sizes = onehot.sum(axis=0)
        yc = yr - yr.mean()
        value = float(_eta(yc, onehot, sizes, float(yc @ yc)))
        null = _eta(yc[perms], onehot, sizes, float(yc @ yc))
        rows.append({**base, "value": value, "p_permutation": float(_p(np.array([value]), null[:, None])[0])})
    return rows


def predictor_table(
    frame: pd.DataFrame,
    class_labels: Mapping[str, pd.DataFrame] | None = None,
    permutations: int = N_PERMUTATIONS,
    seed: int = SEED,
) -> pd.DataFrame:
    """What predicts what: one row per (score, predictor, statistic), with permutation and adjusted p-values.

    ``frame``: one variant's qk rows with ``model_id``, ``layer``, ``head``, the metrics and the
    behaviour columns. ``class_labels``: table name -> (model, layer, head, class) per head.
    AUC rows (``statistic`` = ``roc_auc``) follow their metric's rho row.
    """
    frame = frame.reset_index(drop=True)
    variant = "+".join(sorted(map(str, frame["variant"].unique()))) if "variant" in frame and len(frame) else ""
    metrics = [m for m in METRICS if m in frame.columns and np.isfinite(frame[m].to_numpy(float)).any()]
    labels = {}
    for name, table in (class_labels or {}).items():
        if table is None or not len(table):
            continue
        key = table.set_index(["model", "layer", "head"])["class"]
        labels[name] = pd.Series(
            pd.MultiIndex.from_arrays([frame["model_id"], frame["layer"], frame["head"]]).map(key.to_dict())
        )
    rows: list[dict] = []
    shuffles: dict[bytes, np.ndarray] = {}  # the same heads get the same shuffles
    for score in scores_present(frame):
        y_all = frame[f"behaviour_{score}"].to_numpy(float)
        index = np.flatnonzero(np.isfinite(y_all))
        models = frame["model_id"].to_numpy()[index]
        if index.tobytes() not in shuffles:
            shuffles[index.tobytes()] = stratified_permutations(models, permutations, seed)
        block = _Block(index, models, within_model_ranks(y_all[index], models), shuffles[index.tobytes()])
        for row in _metric_tests(score, block, frame, metrics, y_all[index]):
            auc = {k: row.pop(k) for k in ("auc", "p_auc_permutation") if k in row}
            rows.append(row)
            if auc:
                rows.append(
                    {
                        **row,
                        "statistic": "roc_auc",
                        "value": auc["auc"],
                        "auc": auc["auc"],
                        "ci_low": np.nan,
                        "ci_high": np.nan,
                        "p_permutation": auc["p_auc_permutation"],
                    }
                )
        rows.extend(_class_tests(score, block, labels, frame))
    table = pd.DataFrame(rows, columns=[c for c in TABLE_COLUMNS if c not in ("variant", "conclusion")])
    table.insert(0, "variant", variant)
    table["p_adjusted"] = adjust(table["p_permutation"].to_numpy(float))
    table["significant"] = table["p_adjusted"] <= ALPHA
    table["note"] = table["note"].astype(object).where(table["note"].notna(), "")
    sentences = conclusions(table)
    table["conclusion"] = table["score"].map(sentences)
    return table


# ---------------------------------------------------------------- words


def format_p(p: float) -> str:
    """A p-value as the sentences and figure titles print it (two significant digits, NaN when untested)."""
    return f"{p:.2g}" if math.isfinite(p) else "NaN"


def conclusions(table: pd.DataFrame) -> dict[str, str]:
    """One sentence per score, from the table alone: which predictors survive the correction, or that none does."""
    out = {}
    for score, rows in table.groupby("score", sort=False):
        label = SCORE_LABELS.get(score, score)
        tested = rows[rows["value"].notna()]
        n = int(rows["n_heads"].max()) if len(rows) else 0
        if not len(tested):
            out[score] = f"the {label} could not be tested ({n} heads)"
            continue
        hits = tested[tested["significant"]]
        rho_rows = tested[tested["statistic"] == "spearman_rho"]
        if not len(hits):
            best = rho_rows.loc[rho_rows["value"].abs().idxmax()] if len(rho_rows) else tested.iloc[0]
            nor = " nor do the classes" if (tested["kind"] == "classes").any() else ""
            out[score] = (
                f"no spectral metric predicts the {label}{',' + nor if nor else ''} ({n} heads; strongest: "
                f"{best['predictor']} {best['statistic']} {best['value']:.2f}, adjusted p {format_p(best['p_adjusted'])})"
            )
            continue
        metric_hits = hits[hits["kind"] == "metric"]
        parts = []
        if len(metric_hits):
            rho_hits = metric_hits[metric_hits["statistic"] == "spearman_rho"]
            lead = (rho_hits if len(rho_hits) else metric_hits).sort_values("p_adjusted").iloc[0]
            text = f"{lead['predictor']} ({lead['statistic']} {lead['value']:.2f}"
            if lead["statistic"] == "spearman_rho" and math.isfinite(lead["ci_low"]):
                text += f", 95% CI {lead['ci_low']:.2f} to {lead['ci_high']:.2f}"
            auc = rows[(rows["predictor"] == lead["predictor"]) & (rows["statistic"] == "roc_auc")]
            text += f", adjusted p {format_p(lead['p_adjusted'])}"
            if len(auc):
                text += (
                    f"; AUC {auc['value'].iloc[0]:.2f} for {auc['auc_head_kind'].iloc[0]}s, "
                    f"adjusted p {format_p(auc['p_adjusted'].iloc[0])}"
                )
            text += ")"
            others = sorted(set(metric_hits["predictor"]) - {lead["predictor"]})
            parts.append(text + (f", also {', '.join(others)}" if others else ""))
        class_hits = hits[hits["kind"] == "classes"]
        for _, row in class_hits.iterrows():
            parts.append(
                f"the {row['predictor']}es (rank eta² {row['value']:.2f}, adjusted p {format_p(row['p_adjusted'])})"
            )
        out[score] = f"the {label} is predicted by " + "; ".join(parts)
    return out
