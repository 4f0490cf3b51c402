"""Classification B's figures: the original's box plot of one per-head statistic by layer.

Matplotlib's ``boxplot`` (as the original's ``plt.boxplot``), one box per layer
(quartiles, whiskers at 1.5 IQR, no fliers), median and mean marked, the dashed
linear smoothing spline of the per-layer means, BDS of the per-layer medians
(or, by the default method, its valid tests) in the title, and a legend. Layer
ticks are thinned (``MaxNLocator(nbins="auto")``) so they stay readable at 72
layers. The statistics: :mod:`.layer_boxplots`; style and saving: :mod:`.plots`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from . import plots

WIDE_LAYERS = 100
"""Above this many layers the box plot widens (the original's 405B case); its tick labels are thinned."""

STAT_TITLES = {
    "MIN": "minimum eigenvalue",
    "MAX": "maximum eigenvalue",
    "MEAN": "mean eigenvalue",
    "STD": "standard deviation of the eigenvalues",
    "SKEW": "skewness of the eigenvalues",
    "KURTOSIS": "excess kurtosis of the eigenvalues",
}
"""The full name of each per-head statistic of the box plots (the eigenvalues are l = s^2 of W_QK)."""

STAT_UNITS = {
    "MIN": "λ = σ² of W_QK",
    "MAX": "λ = σ² of W_QK",
    "MEAN": "λ = σ² of W_QK",
    "STD": "λ = σ² of W_QK",
    "SKEW": "dimensionless",
    "KURTOSIS": "dimensionless",
}
"""Units of each statistic: those of an eigenvalue λ = σ²(W_QK) (squared weight units), or none."""

MEDIAN_COLOR, MEAN_COLOR, SPLINE_COLOR = "C1", "C2", "C0"


def _box_legend(ax, spline: bool) -> None:
    handles = [
        Patch(facecolor="white", edgecolor="black", label="quartiles (whiskers: 1.5 IQR)"),
        Line2D([], [], color=MEDIAN_COLOR, lw=2, label="median"),
        Line2D([], [], color=MEAN_COLOR, marker="^", linestyle="none", label="mean"),
    ]
    if spline:
        handles.append(Line2D([], [], color=SPLINE_COLOR, linestyle="--", lw=2, label="smoothing spline of the means"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=14, frameon=False)


def _layer_ticks(ax) -> None:
    """Integer layer ticks, as many as fit at this font size (all of them for a few dozen layers)."""
    ax.xaxis.set_major_locator(MaxNLocator(nbins="auto", integer=True, min_n_ticks=2))


def plot_layer_stats(
    results: Sequence,
    paths: Sequence[str | os.PathLike],
    dpi: float = plots.DEFAULT_DPI,
    variant: str | None = None,
    tests: Sequence[str] | None = None,
    skipped: str | None = None,
    circuit: str | None = None,
) -> list[Path]:
    """Classification B figures of one model, one per statistic (:class:`~qk_spectra_ds.analysis.layer_boxplots.LayerStat`).

    Each figure is the original's box plot, 20 x 8 inches (35 wide above 100
    layers), one box per layer at its layer number (means shown, no fliers),
    the dashed spline of the per-layer means, the BDS of the per-layer medians
    in the title (with the ``variant`` of the spectra), axis titles with units, a legend, and thinned layer ticks.
    ``tests`` (default method): per result, the title's text about its tests instead of the asymptotic BDS
    p-value (``layer_permutation_tests.figure_title_text``); ``skipped``: the layers left out, named under the axis.
    """
    tests = list(tests) if tests is not None else [None] * len(results)
    with plots.style():
        return [
            plots.save_figure(layer_stat_figure(result, variant, text, skipped, circuit), path, dpi)
            for result, path, text in zip(results, paths, tests)
        ]


def layer_stat_figure(
    result, variant: str | None = None, tests: str | None = None, skipped: str | None = None, circuit: str | None = None
):
    """The box plot of one :class:`~qk_spectra_ds.analysis.layer_boxplots.LayerStat` (see :func:`plot_layer_stats`); call inside :func:`plots.style`."""
    layers = np.asarray(result.layers, dtype=np.float64)
    n = len(layers)
    fig = plots.new_figure((35 if n > WIDE_LAYERS else 20, 8))
    ax = fig.add_subplot()
    ax.boxplot(
        result.values,
        positions=layers,
        widths=0.5,
        showmeans=True,
        showfliers=False,
        manage_ticks=False,
        medianprops={"color": MEDIAN_COLOR, "lw": 2},
        meanprops={"marker": "^", "markerfacecolor": MEAN_COLOR, "markeredgecolor": MEAN_COLOR},
    )
    spline = result.spline_x is not None
    if spline:  # the spline is fitted on positions 0..n-1: put it at the layer numbers
        x = np.interp(result.spline_x, np.arange(n), layers)
        ax.plot(x, result.spline_y, linestyle="--", color=SPLINE_COLOR, lw=2, scalex=False, scaley=False)
        ax.update_datalim(np.column_stack([x, result.spline_y]))
    ax.autoscale_view(scalex=False)
    ax.set_xlim(layers[0] - 0.5, layers[-1] + 0.5)
    _layer_ticks(ax)
    name = STAT_TITLES.get(result.stat, result.stat)
    unit = STAT_UNITS.get(result.stat, "")
    ax.set_xlabel("layer" + (f" ({skipped})" if skipped else ""))
    ax.set_ylabel(f"{name} of a head ({unit})" if unit else f"{name} of a head")
    if tests is not None:  # the default method: valid tests only, never the asymptotic p-value
        ax.set_title(
            f"{result.model_id}: {name} by layer{plots.variant_suffix(variant, circuit)}\nper-layer medians: {tests}",
            fontsize=13,
        )
    else:
        bds = "NaN" if not np.isfinite(result.bds) else f"{result.bds:.2f}"
        ax.set_title(
            f"{result.model_id}: {name} by layer (BDS of the per-layer medians: {bds}, "
            f"asymptotic p-value: {result.p_value:.2e}){plots.variant_suffix(variant, circuit)}"
        )
    _box_legend(ax, spline)
    plots.tight_layout(fig)
    return fig
