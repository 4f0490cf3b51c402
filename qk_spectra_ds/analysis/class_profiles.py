"""What a class of heads is: its singular-value profile, the metrics that separate it, its depth, a name.

A class number says nothing; these tables say what the heads of a class
have in common, with effect sizes a reader can weigh:

- **Profile** (``class_profiles``): per class and rank ``k``, the median and
  interquartile range over its heads of ``s_k / s_1`` (the singular values
  normalised by the head's largest), beside the same for Gaussian heads of
  the model's shape when the random-matrix null is available.
- **Separating metrics** (``class_metrics``): for each continuous metric
  (:data:`METRICS` that the rows have, and the relative depth
  ``layer / (n_layers - 1)``), the class's median against the other heads'
  and the effect size ``AUC = P(metric of a class head > metric of another
  head)`` (Mann-Whitney; 0.5 = no separation) with a 95% interval (Hanley and
  McNeil's standard error). With one class (no structure) the table
  describes all heads: medians and quartiles, no AUC.
- **Name** (:func:`class_name`): a few words derived from those AUCs, e.g.
  "low-rank, late" when the class's stable rank is lower than the others'
  with AUC <= 0.3 (interval excluding 0.5) and it sits deeper.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu

from . import plots

METRICS = (
    "stable_rank",
    "effective_rank",
    "positivity",
    "log_det",
    "spectral_norm",
    "positional_norm_ratio_min",
    "positivity_z",
    "symmetry_z",
)
"""Used when the rows have them; ``*_z``: the head against its matched null (schema v4), where the dataset has it."""
DEPTH = "relative_depth"
STRONG = 0.3
"""|AUC - 0.5| >= 0.5 - STRONG (AUC <= 0.3 or >= 0.7), interval excluding 0.5: a metric names the class."""

WORDS = {  # metric: (word when the class is lower, word when higher)
    "stable_rank": ("low-rank", "high-rank"),
    "positivity": ("sign-mixed", "positive (self-similar)"),
    "positional_norm_ratio_min": ("position-sensitive", "position-insensitive"),
    DEPTH: ("early", "late"),
    "spectral_norm": ("weak", "strong"),
}
ONE_CLASS = "all heads (one population)"


def relative_depth(rows: pd.DataFrame) -> np.ndarray:
    """``layer / (n_layers - 1)`` per row (0 = first layer, 1 = last); ``n_layers`` from the column, else max layer + 1."""
    layers = rows["layer"].to_numpy(dtype=np.float64)
    n = rows["n_layers"].to_numpy(dtype=np.float64) if "n_layers" in rows else np.full(len(layers), np.nan)
    n = np.where(np.isfinite(n), n, layers.max() + 1)  # per row: pooled models differ in depth
    return layers / np.maximum(n - 1.0, 1.0)


def auc_with_interval(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """``(AUC, low, high)``: P(a > b) + P(a = b) / 2 with a 95% Hanley-McNeil interval (NaN if a side is empty)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) == 0 or len(b) == 0:
        return float("nan"), float("nan"), float("nan")
    auc = float(mannwhitneyu(a, b, alternative="two-sided").statistic / (len(a) * len(b)))
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (len(a) - 1) * (q1 - auc**2) + (len(b) - 1) * (q2 - auc**2)) / (len(a) * len(b))
    half = 1.959964 * np.sqrt(max(var, 0.0))
    return auc, max(0.0, auc - half), min(1.0, auc + half)


def rank_profile(singular_values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(median, q25, q75)`` by rank of ``s_k / s_1`` over the rows of ``singular_values`` (descending)."""
    s = np.asarray(singular_values, dtype=np.float64)
    ratio = s / np.where(s[:, :1] > 0, s[:, :1], 1.0)
    return np.median(ratio, axis=0), np.quantile(ratio, 0.25, axis=0), np.quantile(ratio, 0.75, axis=0)


def profile_table(
    model_id: str, eigenvalues: np.ndarray, labels: np.ndarray, null_eigenvalues: np.ndarray | None = None
) -> pd.DataFrame:
    """``class_profiles`` rows: per class and rank, median and IQR of ``s_k / s_1``, and the Gaussian heads' median."""
    s = np.sqrt(np.clip(np.asarray(eigenvalues, np.float64), 0.0, None))
    null_median = (
        rank_profile(np.sqrt(np.clip(null_eigenvalues, 0.0, None)))[0] if null_eigenvalues is not None else None
    )
    parts = []
    for c in np.unique(labels):
        med, q25, q75 = rank_profile(s[labels == c])
        parts.append(
            pd.DataFrame(
                {
                    "model": model_id,
                    "class": int(c),
                    "rank": np.arange(1, s.shape[1] + 1),
                    "s_over_s1_median": med,
                    "s_over_s1_q25": q25,
                    "s_over_s1_q75": q75,
                    "gaussian_null_median": null_median if null_median is not None else np.nan,
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def metric_values(rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """The continuous metrics the rows have (finite somewhere), and the relative depth."""
    out = {
        m: rows[m].to_numpy(dtype=np.float64)
        for m in METRICS
        if m in rows and np.isfinite(rows[m].to_numpy(np.float64)).any()
    }
    out[DEPTH] = relative_depth(rows)
    return out


def metrics_table(model_id: str, rows: pd.DataFrame, labels: np.ndarray) -> pd.DataFrame:
    """``class_metrics`` rows: per class and metric, medians, quartiles and the AUC against the other heads."""
    values = metric_values(rows)
    out = []
    for c in np.unique(labels):
        member = labels == c
        for metric, x in values.items():
            inside, rest = x[member], x[~member]
            auc, low, high = auc_with_interval(inside, rest)
            finite = inside[np.isfinite(inside)]
            out.append(
                {
                    "model": model_id,
                    "class": int(c),
                    "metric": metric,
                    "n_heads": int(member.sum()),
                    "class_median": float(np.median(finite)) if len(finite) else np.nan,
                    "class_q25": float(np.quantile(finite, 0.25)) if len(finite) else np.nan,
                    "class_q75": float(np.quantile(finite, 0.75)) if len(finite) else np.nan,
                    "others_median": float(np.nanmedian(rest)) if np.isfinite(rest).any() else np.nan,
                    "auc_vs_others": auc,
                    "auc_low": low,
                    "auc_high": high,
                }
            )
    return pd.DataFrame(out)


def class_name(metrics: pd.DataFrame, n_classes: int) -> str:
    """A short name from one class's ``class_metrics`` rows: the words of its strong separating metrics."""
    if n_classes <= 1:
        return ONE_CLASS
    words = []
    for metric, (low_word, high_word) in WORDS.items():
        row = metrics[metrics["metric"] == metric]
        if not len(row):
            continue
        auc, low, high = (float(row[c].iloc[0]) for c in ("auc_vs_others", "auc_low", "auc_high"))
        if not np.isfinite(auc):
            continue
        if auc <= STRONG and high < 0.5:
            words.append(low_word)
        elif auc >= 1 - STRONG and low > 0.5:
            words.append(high_word)
    return ", ".join(words) if words else "not separated by the metrics"


@dataclass(frozen=True, eq=False)
class ClassDescription:
    """What one model's classes are (:func:`describe`)."""

    class_profiles: pd.DataFrame
    """Per class and rank: median and quartiles of ``s_k / s_1`` (and of Gaussian heads, when given)."""
    class_metrics: pd.DataFrame
    """Per class and metric: medians against the other heads', AUC with its 95% interval."""
    names: dict[int, str]
    """Class -> the few words :func:`class_name` derives from the AUCs."""


def describe(
    model_id: str,
    rows: pd.DataFrame,
    eigenvalues: np.ndarray,
    labels: np.ndarray,
    null_eigenvalues: np.ndarray | None = None,
) -> ClassDescription:
    """The profiles, separating metrics and names of one model's classes (rows in the labels' order)."""
    metrics = metrics_table(model_id, rows, labels)
    n = len(np.unique(labels))
    names = {int(c): class_name(metrics[metrics["class"] == c], n) for c in np.unique(labels)}
    return ClassDescription(profile_table(model_id, eigenvalues, labels, null_eigenvalues), metrics, names)


class_profiles = describe
"""The public name of :func:`describe` (``qk_spectra_ds.class_profiles``): what each class is, in tables and a name."""


def plot_profiles(
    profiles: pd.DataFrame,
    names: dict[int, str],
    path,
    title: str,
    dpi: float | None = None,
    variant: str | None = None,
    circuit: str | None = None,
):
    """Each class's median ``s_k / s_1`` by rank with its interquartile band, Gaussian heads dashed (log scale)."""
    with plots.style():
        fig = plots.new_figure((10, 6))
        ax = fig.add_subplot()
        colors = plots.class_colors(profiles["class"].nunique())
        for color, (c, part) in zip(colors, profiles.groupby("class", sort=True)):
            ax.plot(
                part["rank"],
                part["s_over_s1_median"],
                color=color,
                lw=2,
                label=f"class {c}: {names.get(int(c), '')} (median; band: IQR)",
            )
            ax.fill_between(part["rank"], part["s_over_s1_q25"], part["s_over_s1_q75"], color=color, alpha=0.25, lw=0)
        null = profiles.groupby("rank")["gaussian_null_median"].first()
        if null.notna().any():
            ax.plot(null.index, null.to_numpy(), "k--", lw=1.2, label="Gaussian heads of this shape (median)")
        ax.set_yscale("log")
        ax.set_xlabel("rank k of the singular value")
        ax.set_ylabel("s_k / s_1")
        ax.legend(fontsize=10)
        fig.suptitle(title + plots.variant_suffix(variant, circuit), fontsize=12)
        fig.tight_layout()
        return plots.save_figure(fig, path, plots.DEFAULT_DPI if dpi is None else dpi)
