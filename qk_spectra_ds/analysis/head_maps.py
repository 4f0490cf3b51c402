"""Per model: each head's class (or any metric) on a layer x head grid.

The grid is the view interpretability papers use (rows: layers, columns: query
heads, as TransformerLens numbers them), so a class can be read as "where in
the network" at a glance; a metric of the dataset (stable rank by default) sits
beside it on the same grid. (Each class's singular-value profile by rank is
:func:`.class_profiles.plot_profiles`.)

:func:`store_head_maps` adds ``maps/<model>.<fmt>`` to a report for every model
with consensus labels.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from ..naming import model_slug
from . import plots

MAP_METRIC = "stable_rank"
"""The metric drawn beside the classes on the report's grid (any numeric column of the dataset can be drawn)."""


def grid(table: pd.DataFrame, column: str) -> np.ndarray:
    """``table[column]`` on an (n_layers, n_heads) grid by its ``layer`` and ``head`` columns (NaN where absent)."""
    layers = table["layer"].to_numpy(dtype=int)
    heads = table["head"].to_numpy(dtype=int)
    out = np.full((layers.max() + 1, heads.max() + 1), np.nan)
    out[layers, heads] = table[column].to_numpy(dtype=np.float64)
    return out


def _grid_axes(ax, values: np.ndarray, cmap, norm, title: str) -> object:
    """One layer x head panel: layer 0 at the top, as a network is read; ticks thinned to what fits."""
    rows, cols = values.shape
    x, y = np.arange(cols + 1) - 0.5, np.arange(rows + 1) - 0.5  # cell centres at whole numbers: ticks name cells
    mesh = ax.pcolormesh(x, y, np.ma.masked_invalid(values), cmap=cmap, norm=norm, rasterized=values.size > 2000)
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(nbins="auto", integer=True, min_n_ticks=2))
    ax.set_xlabel("query head")
    ax.set_ylabel("layer")
    ax.set_title(title)
    return mesh


def head_map_figure(
    labels: pd.DataFrame, title: str, metric: pd.DataFrame | None = None, metric_name: str = MAP_METRIC
):
    """The class of each head on a layer x head grid (class colours of every figure), ``metric`` beside it.

    ``labels``: columns layer, head, class (one model); ``metric``: columns layer, head and ``metric_name``.
    Call inside :func:`plots.style`.
    """
    classes = sorted(int(c) for c in labels["class"].unique())
    colors = plots.class_colors(max(classes) + 1)
    values = grid(labels, "class")
    n_layers, n_heads = values.shape
    panels = 1 if metric is None else 2
    width = min(max(4.0 + 0.12 * n_heads, 7.0), 16.0)
    height = min(max(2.5 + 0.16 * n_layers, 4.5), 14.0)
    fig = plots.new_figure((width * panels + 1.0, height))
    axes = fig.subplots(1, panels, squeeze=False)[0]
    cmap = ListedColormap(colors)
    _grid_axes(axes[0], values, cmap, BoundaryNorm(np.arange(len(colors) + 1) - 0.5, len(colors)), "class of each head")
    counts = labels["class"].value_counts()
    handles = [Patch(facecolor=colors[c], label=f"class {c} (n={int(counts.get(c, 0))})") for c in classes]
    axes[0].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=11, frameon=False)
    if metric is not None:
        grid_metric = grid(metric, metric_name)
        mesh = _grid_axes(axes[1], grid_metric, "viridis", None, metric_name.replace("_", " "))
        bar = fig.colorbar(mesh, ax=axes[1])
        bar.set_label(metric_name.replace("_", " "), fontsize=12)
    fig.suptitle(title)
    plots.tight_layout(fig)
    return fig


def store_head_maps(
    outputs, frame: pd.DataFrame, fmt: str, dpi: float, title_suffix: Callable[[str], str] = lambda model: ""
) -> None:
    """Per model with consensus labels: ``maps/<model>`` (classes and :data:`MAP_METRIC`), recorded in
    ``outputs.figures`` under the model."""
    labels = outputs.frames.get("consensus_labels")
    if labels is None or not len(labels):
        return
    for model in outputs.order or list(dict.fromkeys(labels["model"])):
        rows = labels[labels["model"] == model]
        if not len(rows):
            continue
        slug = model_slug(model)
        metric = None
        if MAP_METRIC in frame.columns:
            own = frame[frame["model_id"] == model]
            metric = own[["layer", "head", MAP_METRIC]] if len(own) and own[MAP_METRIC].notna().any() else None
        with plots.style():
            path = f"maps/{slug}.{fmt}"
            plots.save_figure(
                head_map_figure(rows, f"{model}: classes by layer and head{title_suffix(model)}", metric),
                outputs.family_dir / path,
                dpi,
            )
            outputs.figures.setdefault(model, []).append(path)


def plot_head_map(
    labels: pd.DataFrame,
    path: str | os.PathLike,
    title: str,
    metric: pd.DataFrame | None = None,
    metric_name: str = MAP_METRIC,
    dpi: float | None = None,
) -> Path:
    """Write :func:`head_map_figure` to ``path`` (format from its suffix)."""
    with plots.style():
        return plots.save_figure(
            head_map_figure(labels, title, metric, metric_name), path, plots.DEFAULT_DPI if dpi is None else dpi
        )
