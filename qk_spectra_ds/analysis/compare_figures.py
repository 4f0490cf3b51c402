"""The comparison's figures: per-layer distributions of the per-head error, and metrics by relative depth."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from . import plots
from .depth_profiles import METRIC_TITLES, depth_labels
from .head_compare import is_legacy


def plot_head_errors(heads: pd.DataFrame, path: str | os.PathLike, title: str, dpi: float | None = None) -> Path:
    """Per layer, the distribution over heads of the per-head max and median relative error of s (box plots)."""
    layers = sorted(heads["layer"].unique())
    with plots.style():
        fig = plots.new_figure((max(10, 0.35 * len(layers) + 4), 9), dpi=100)
        axes = fig.subplots(2, 1, sharex=True)
        for ax, column, what in zip(axes, ("sv_err_max", "sv_err_median"), ("max", "median")):
            values = [heads.loc[heads["layer"] == layer, column].to_numpy(np.float64) for layer in layers]
            finite = np.concatenate(values)
            finite = finite[np.isfinite(finite)]
            ax.boxplot(
                [v[np.isfinite(v)] for v in values],
                positions=np.arange(len(layers)),
                widths=0.5,
                showmeans=True,
                showfliers=True,
                manage_ticks=False,
            )
            if len(finite) and finite.min() > 0:
                ax.set_yscale("log")
            ax.set_ylabel(f"{what} over the head's\nsingular values")
            ax.set_title(f"per-head {what} relative error |s_B − s_A| / |s_A|", fontsize="medium")
        step = max(1, len(layers) // 40)
        axes[-1].set_xticks(np.arange(0, len(layers), step), [str(layers[i]) for i in range(0, len(layers), step)])
        axes[-1].set_xlabel("layer (boxes: heads of the layer; triangle: mean)")
        axes[-1].set_xlim(-0.5, len(layers) - 0.5)
        fig.suptitle(textwrap.fill(title, 90), fontsize="medium")
        plots.tight_layout(fig)
        return plots.save_figure(
            fig, path, plots.DEFAULT_DPI if dpi is None else dpi, preview=False
        )  # no page shows compare's figures


def plot_metric_depth(
    depth: pd.DataFrame, metric: str, path: str | os.PathLike, title: str | None = None, dpi: float | None = None
) -> Path:
    """One metric against relative depth: per model the per-layer median line and its interquartile band.

    ``depth`` is a :func:`depth_table`; models without any value of the metric
    (e.g. positivity of legacy rows) are named below the axes instead of drawn.
    """
    part = depth[depth["metric"] == metric]
    labels = depth_labels(depth)
    with plots.style():
        fig = plots.new_figure((11, 7), dpi=100)
        ax = fig.add_subplot()
        absent = []
        for i, key in enumerate(labels):
            line = part[(part["source"] == key[0]) & (part["model"] == key[1]) & (part["variant"] == key[2])]
            line = line.sort_values("layer")
            if line.empty or line["median"].isna().all():
                absent.append(labels[key])
                continue
            x = line["relative_depth"].to_numpy()
            style_kw = {"linestyle": "--"} if is_legacy(key[2]) else {}
            ax.plot(x, line["median"], marker="o", markersize=3, color=f"C{i % 10}", label=labels[key], **style_kw)
            ax.fill_between(x, line["q25"], line["q75"], color=f"C{i % 10}", alpha=0.2, linewidth=0)
        xlabel = "relative depth  layer / (n_layers − 1)"
        ax.set_ylabel(f"{METRIC_TITLES.get(metric, metric)}\n(per-layer median; band: 25–75% of heads)")
        ax.set_xlim(-0.02, 1.02)
        if ax.lines:
            ax.legend(fontsize="small", loc="best")
        if absent:  # below the axis title, where plots.tight_layout keeps room for it
            xlabel += "\n" + textwrap.fill("no values, not drawn: " + ", ".join(absent), 110)
        ax.set_xlabel(xlabel)
        legacy = any(is_legacy(k[2]) for k in labels)
        default = f"{METRIC_TITLES.get(metric, metric)} by relative depth"
        ax.set_title(
            (title or default)
            + ("\n(dashed: legacy spectra, with the original study's pairing error)" if legacy else ""),
            fontsize="medium",
        )
        plots.tight_layout(fig)
        return plots.save_figure(
            fig, path, plots.DEFAULT_DPI if dpi is None else dpi, preview=False
        )  # no page shows compare's figures
