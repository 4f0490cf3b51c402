"""By relative depth: any per-head metric per layer of each model, on one axis for models of different depths.

Any metric (``stable_rank``, ``effective_rank``, ``positivity``, ``log_det``,
``spectral_norm``, ``frobenius`` or an ``sv_``/``ev_`` statistic) per layer of
each model: the median over the layer's heads with its interquartile range, at
relative depth ``layer / (n_layers - 1)``, so that models of different depths
share one axis. Legacy rows keep their ``note`` (:func:`.head_compare.note`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .head_compare import note, side_label

_STAT_NAMES = {
    "min": "minimum",
    "max": "maximum",
    "mean": "mean",
    "std": "standard deviation",
    "skew": "skewness",
    "kurtosis": "excess kurtosis",
}
METRIC_TITLES = {
    "frobenius": "Frobenius norm ‖W_QK‖_F",
    "spectral_norm": "spectral norm σ₁",
    "stable_rank": "stable rank Σλ / λ₁",
    "effective_rank": "effective rank exp(H(λ / Σλ))",
    "log_det": "log-det Σ ln σ",
    "positivity": "QK eigenvalue positivity Σ Re μ / Σ |μ|",
    **{f"sv_{k}": f"{v} singular value" for k, v in _STAT_NAMES.items()},
    **{f"ev_{k}": f"{v} eigenvalue (σ²)" for k, v in _STAT_NAMES.items()},
}
"""Full names of the metrics for axis titles."""


def relative_depth(layer: np.ndarray, n_layers: np.ndarray) -> np.ndarray:
    """``layer / (n_layers - 1)`` in [0, 1] (0 for a one-layer model)."""
    layer, n_layers = np.asarray(layer, np.float64), np.asarray(n_layers, np.float64)
    return np.where(n_layers > 1, layer / np.maximum(n_layers - 1, 1), 0.0)


def model_order(frame: pd.DataFrame) -> list[tuple[str, str, str]]:
    """``(source, model_id, variant)`` of every model, smallest first, ties by name.

    Size from the shapes, as the report orders models: ``n_layers * n_heads *
    d_head * d_model`` (the QK weights' element count), or, where some model
    lacks ``d_model`` (legacy imports), ``n_layers * n_heads * d_head`` for all.
    """
    columns = ["n_layers", "n_heads", "d_head", "d_model"]
    keys = frame.groupby(["source", "model_id", "variant"], sort=False)[columns].first().astype("float64")
    size = keys["n_layers"] * keys["n_heads"] * keys["d_head"]
    if keys["d_model"].notna().all():
        size = size * keys["d_model"]
    return sorted(size.index, key=lambda key: (size[key], str(key[1]), str(key[2]), str(key[0])))


def depth_table(frame: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Per (source, model, variant, layer, metric): relative depth, heads, median, quartiles, mean.

    ``frame`` may hold several sources (a ``source`` column, e.g. the two
    datasets of a comparison); NaN values (positivity of legacy rows) are
    ignored, a layer without any value gets NaN.
    """
    if "source" not in frame.columns:
        frame = frame.assign(source="")
    rows = []
    for source, model, variant in model_order(frame):
        part = frame[(frame["source"] == source) & (frame["model_id"] == model) & (frame["variant"] == variant)]
        n_layers = int(part["n_layers"].iloc[0])
        for layer, heads in part.groupby("layer", sort=True):
            for metric in metrics:
                values = heads[metric].to_numpy(np.float64, na_value=np.nan)
                values = values[~np.isnan(values)]
                quartiles = np.percentile(values, [25, 50, 75]) if len(values) else [np.nan] * 3
                rows.append(
                    {
                        "source": source,
                        "model": model,
                        "variant": variant,
                        "metric": metric,
                        "layer": int(layer),
                        "n_layers": n_layers,
                        "relative_depth": float(relative_depth(layer, n_layers)),
                        "n_heads": len(values),
                        "median": quartiles[1],
                        "q25": quartiles[0],
                        "q75": quartiles[2],
                        "mean": float(values.mean()) if len(values) else np.nan,
                        "note": note(variant),
                    }
                )
    return pd.DataFrame(rows)


def depth_labels(depth: pd.DataFrame) -> dict[tuple[str, str, str], str]:
    """A legend label per (source, model, variant): name and variant, plus the source where names repeat."""
    keys = list(dict.fromkeys(zip(depth["source"], depth["model"], depth["variant"])))
    plain = {k: side_label(k[1], k[2]) for k in keys}
    counts = pd.Series(list(plain.values())).value_counts()
    return {k: plain[k] + (f" ({k[0]})" if counts[plain[k]] > 1 and k[0] else "") for k in keys}
