"""Classification B (per model, as the original study): statistics by layer.

For each model and each statistic of the eigenvalues (MIN, MAX, MEAN, STD,
SKEW, KURTOSIS: the dataset's ``ev_*`` columns):

- one box per layer over its heads (layers below ``skip_layers_below``,
  default 2, skipped: they distort the plots; the original skipped below 5 for
  the 70B Llamas);
- the BDS test (``statsmodels.tsa.stattools.bds`` with its defaults) on the
  series of per-layer medians, for the title;
- a linear smoothing spline of the per-layer means,
  ``scipy.interpolate.make_splrep(positions, means, s=20, k=1)`` evaluated on
  500 points, drawn dashed.

Too few layers for BDS (statsmodels needs at least 3 values) or a degenerate
series give NaN and a :class:`BDSWarning`, never an exception.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.interpolate import make_splrep
from scipy.stats import norm

from ..errors import AnalysisError
from ..schema import STATISTICS
from . import layer_permutation_tests

STAT_NAMES = tuple(name.upper() for name in STATISTICS)
"""The schema's statistics as the original names them (MIN ... KURTOSIS); ``MEAN`` reads ``ev_mean``."""

SKIP_LAYERS_BELOW = 2
SPLINE_S = 20
SPLINE_K = 1
SPLINE_POINTS = 500


class BDSWarning(UserWarning):
    """The BDS statistic could not be computed (too few layers or a degenerate series)."""


def stat_column(stat: str) -> str:
    """``"MEAN"`` -> ``"ev_mean"``."""
    name = str(stat).upper()
    if name not in STAT_NAMES:
        raise AnalysisError(f"unknown statistic {stat!r}; choose from {', '.join(STAT_NAMES)}")
    return f"ev_{name.lower()}"


def parse_stats(stats: str | tuple | list | None) -> list[str]:
    """``None`` (all), ``"MEAN,STD"`` or a list -> validated upper-case names."""
    if stats is None:
        return list(STAT_NAMES)
    items = stats.split(",") if isinstance(stats, str) else [str(s) for s in stats]
    names = [s.strip().upper() for s in items if s.strip()]
    for name in names:
        stat_column(name)
    return names or list(STAT_NAMES)


@dataclass
class LayerStat:
    """One statistic of one model by layer: box data, BDS on medians, spline of means."""

    model_id: str
    stat: str
    layers: list[int]
    values: list[np.ndarray]  # per layer, the heads' values
    medians: np.ndarray
    means: np.ndarray
    bds: float
    p_value: float
    spline_x: np.ndarray | None
    spline_y: np.ndarray | None


def _bds_without_statsmodels(x: np.ndarray) -> tuple[float, float]:
    """statsmodels' ``bds(x)`` (max_dim 2) by :func:`.layer_tests.bds_statistic`: statistic and 2 * norm.sf(|stat|)."""
    if not 2 < len(x):  # statsmodels' own check: max_dim 2 must be below the number of values
        raise ValueError("Maximum embedding dimension must be in the range [2,len(x)-1]")
    stat = float(layer_permutation_tests.bds_statistic(x)[0])
    return stat, float(2 * norm.sf(abs(stat)))


def bds_test(series: np.ndarray, name: str = "") -> tuple[float, float]:
    """``statsmodels.tsa.stattools.bds(series)`` (defaults) -> (statistic, p-value), NaN with a warning if impossible.

    Without statsmodels (it comes with the ``original`` extra, which ``--method original`` requires) the same
    statistic is computed by :func:`.layer_tests.bds_statistic` (equal to 1e-12), with statsmodels' normal p-value.
    """
    try:
        from statsmodels.tsa.stattools import bds  # lazily: statsmodels is optional (the ``original`` extra)
    except ImportError:
        bds = _bds_without_statsmodels

    x = np.asarray(series, dtype=np.float64)
    reason = None
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            stat, p = bds(x)
        stat, p = float(np.asarray(stat).reshape(-1)[0]), float(np.asarray(p).reshape(-1)[0])
        if not (np.isfinite(stat) and np.isfinite(p)):
            reason = "degenerate series"
    except (ValueError, ZeroDivisionError, FloatingPointError, np.linalg.LinAlgError) as exc:
        reason = f"{len(x)} layer(s) are too few" if len(x) < 3 else " ".join(str(exc).split())
    if reason is not None:
        warnings.warn(f"{name + ': ' if name else ''}BDS statistic is NaN ({reason})", BDSWarning, stacklevel=2)
        return float("nan"), float("nan")
    return stat, p


def smoothing_spline(means: np.ndarray, s: float = SPLINE_S, k: int = SPLINE_K, n_points: int = SPLINE_POINTS):
    """``make_splrep(arange(n), means, s=s, k=k)`` on ``linspace(0, n-1, n_points)``; None if too short."""
    y = np.asarray(means, dtype=np.float64)
    n = len(y)
    if n <= k:
        return None, None
    spline = make_splrep(np.arange(n), y, s=s, k=k)
    x_new = np.linspace(0, n - 1, n_points)
    return x_new, np.asarray(spline(x_new))


def layer_stat(
    rows: pd.DataFrame, stat: str, skip_layers_below: int = SKIP_LAYERS_BELOW, model_id: str | None = None
) -> LayerStat:
    """Classification B of one statistic for one model's rows (columns layer, head, ``ev_<stat>``)."""
    column = stat_column(stat)
    stat = str(stat).upper()
    model_id = model_id if model_id is not None else str(rows["model_id"].iloc[0])
    kept = rows.loc[rows["layer"] >= int(skip_layers_below), ["layer", "head", column]]
    if kept.empty:
        raise AnalysisError(
            f"{model_id}: no layer left after --skip-layers-below {skip_layers_below} "
            f"(layers {int(rows['layer'].min())}..{int(rows['layer'].max())})"
        )
    kept = kept.sort_values(["layer", "head"], kind="stable")
    layer_ids = kept["layer"].to_numpy()
    values_all = kept[column].to_numpy(dtype=np.float64)
    layers, starts = np.unique(layer_ids, return_index=True)
    values = np.split(values_all, starts[1:])
    medians = np.array([np.median(v) for v in values])
    means = np.array([v.mean() for v in values])
    bds_stat, p_value = bds_test(medians, name=f"{model_id} {stat}")
    spline_x, spline_y = smoothing_spline(means)
    return LayerStat(
        model_id, stat, [int(x) for x in layers], values, medians, means, bds_stat, p_value, spline_x, spline_y
    )


def layer_stats(
    rows: pd.DataFrame,
    stats: list[str] | None = None,
    skip_layers_below: int = SKIP_LAYERS_BELOW,
    model_id: str | None = None,
) -> list[LayerStat]:
    """:func:`layer_stat` for each statistic (default: all six)."""
    return [layer_stat(rows, s, skip_layers_below, model_id) for s in (stats or STAT_NAMES)]


def bds_table(results: list[LayerStat]) -> pd.DataFrame:
    """Columns model, stat, bds, p_value, n_layers (layers in the series)."""
    return pd.DataFrame(
        {
            "model": [r.model_id for r in results],
            "stat": [r.stat for r in results],
            "bds": [r.bds for r in results],
            "p_value": [r.p_value for r in results],
            "n_layers": [len(r.layers) for r in results],
        }
    )


def skipped_layers_text(rows: pd.DataFrame, skip_layers_below: int = SKIP_LAYERS_BELOW) -> str | None:
    """``"layers 0-1 not shown: --skip_layers_below 2"`` for the box plots' axis, or None when none is skipped."""
    skipped = sorted({int(x) for x in rows["layer"] if int(x) < int(skip_layers_below)})
    if not skipped:
        return None
    span = f"layer {skipped[0]}" if len(skipped) == 1 else f"layers {skipped[0]}-{skipped[-1]}"
    return f"{span} not shown: --skip_layers_below {int(skip_layers_below)}"
