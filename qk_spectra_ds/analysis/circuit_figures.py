"""The figures of the report's "QK and OV" section: per model, QK metrics against the OV copying score; by depth."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from . import plots
from .circuit_tables import PAIRED, QK_METRICS, ROLE_COPYING, ROLE_SUPPRESSION, Z_THRESHOLD


def _class_colours(classes: pd.Series) -> tuple[list, list[str]]:
    known = sorted(int(c) for c in classes.dropna().unique())
    palette = dict(zip(known, plots.class_colors(max(len(known), 1))))
    return [palette.get(int(c), "0.6") if not pd.isna(c) else "0.6" for c in classes], [str(k) for k in known]


def scatter_figure(heads: pd.DataFrame, model: str, class_label: str, variant: str):
    """One model: QK positivity and QK stable rank against the OV copying score, coloured by class, roles marked."""
    fig = plots.new_figure((11, 4.6))
    axes = fig.subplots(1, 2)
    colours, known = _class_colours(heads["class"])
    colours = np.array(colours, dtype=object)
    for ax, metric in zip(axes, QK_METRICS):
        for role, marker, size in (("", "o", 22), (ROLE_COPYING, "^", 60), (ROLE_SUPPRESSION, "v", 60)):
            keep = (heads["role"] == role).to_numpy()
            if keep.any():
                ax.scatter(
                    heads["ov_copying_score"][keep],
                    heads[f"qk_{metric}"][keep],
                    c=list(colours[keep]),
                    marker=marker,
                    s=size,
                    edgecolors="k" if role else "none",
                    linewidths=0.6,
                    alpha=0.85,
                )
        ax.set_xlabel("OV copying score", fontsize=11)
        ax.set_ylabel({"positivity": "QK positivity", "stable_rank": "QK stable rank"}[metric], fontsize=11)
        ax.tick_params(labelsize=9)
        ax.axvline(0.0, color="0.7", lw=0.8, zorder=0)
    handles = [
        Line2D([], [], ls="", marker="o", color=c, label=f"{class_label} {k}")
        for k, c in zip(known, plots.class_colors(max(len(known), 1)))
    ]
    handles += [
        Line2D([], [], ls="", marker="^", mec="k", color="w", label=f"copying (z > {Z_THRESHOLD:g})"),
        Line2D([], [], ls="", marker="v", mec="k", color="w", label=f"suppression (z < -{Z_THRESHOLD:g})"),
    ]
    axes[1].legend(handles=handles, fontsize=7, loc="best")
    fig.suptitle(
        f"{model}: QK metrics against OV copying score per head{plots.variant_suffix(variant, PAIRED)}", fontsize=11
    )
    fig.tight_layout()
    return fig


def depth_figure(paired: pd.DataFrame, family: str, order: Sequence[str]):
    """Every model: OV copying score against relative depth, heads coloured by their QK positivity."""
    models = [m for m in order if m in set(paired["model"])] + sorted(set(paired["model"]) - set(order))
    n_cols = min(3, len(models))
    n_rows = math.ceil(len(models) / n_cols)
    fig = plots.new_figure((4.4 * n_cols + 1.0, 3.6 * n_rows))
    axes = np.atleast_1d(fig.subplots(n_rows, n_cols, squeeze=False)).ravel()
    mappable = None
    for ax, model in zip(axes, models):
        part = paired[paired["model"] == model]
        mappable = ax.scatter(
            part["relative_depth"],
            part["ov_copying_score"],
            c=part["qk_positivity"],
            cmap="coolwarm",
            vmin=-1.0,
            vmax=1.0,
            s=18,
            edgecolors="none",
        )
        ax.axhline(0.0, color="0.7", lw=0.8, zorder=0)
        ax.set_title(str(model).split("/")[-1], fontsize=9)
        ax.set_xlabel("relative depth, layer / (n_layers - 1)", fontsize=10)
        ax.set_ylabel("OV copying score", fontsize=10)
        ax.tick_params(labelsize=9)
    for ax in axes[len(models) :]:
        ax.set_visible(False)
    if mappable is not None:
        fig.colorbar(mappable, ax=list(axes[: len(models)]), label="QK positivity")
    variants = sorted(set(map(str, paired["variant"])))
    fig.suptitle(
        f"{family}: OV copying score by relative depth, coloured by QK positivity"
        f"{plots.variant_suffix(variants, PAIRED)}",
        fontsize=11,
    )
    return fig
