"""Figures of classes of heads: one model's classes (classification A) and the joint taxonomy of several models.

- ESD figure (classification A): a 2-D embedding of the heads on the left,
  one panel per class on the right (mean histogram of the normalized
  eigenvalues as bars, std over the heads as error bars, the fitted gamma pdf
  dashed, ``alpha``/``theta`` in the corner, ``n`` and JSD in the title).
  Each class has one colour (:func:`~.plots.class_colors`) in the embedding, its panel
  and its legend entry.
- Joint taxonomy: seaborn heat maps of class shares, models ordered by size
  (``order``: the report passes :func:`html_report.size_order`), never alphabetically (0.6B, 1.7B, 14B, 4B, 8B),
  and the same class panels.

Heat-map tick labels are thinned by seaborn (``"auto"``) so they stay readable
at 5,000 heads. Style, canvas and saving: :mod:`.plots`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from . import plots
from .taxonomy import EMBEDDINGS

GAMMA_COLOR = "red"


def _grid(n_panels: int, width: float = 16):
    """The original's grid: 5 columns (0.65, 0.65, 0.65, 1, 1), a 3x3 block top-left, panels elsewhere."""
    n_rows = int(3 + max(math.ceil((n_panels - 6) / 5), 0))
    fig = plots.new_figure((width, 3.3 * n_rows + 0.9))
    gs = fig.add_gridspec(n_rows, 5, width_ratios=[0.65, 0.65, 0.65, 1, 1])
    big = fig.add_subplot(gs[:3, :3])
    cells = [(r, c) for r in range(n_rows) for c in range(5) if not (r < 3 and c < 3)]
    panels = [fig.add_subplot(gs[r, c]) for r, c in cells[:n_panels]]
    return fig, big, panels


PANEL_FONT = 12


def _class_title(klass, label: str | None = None) -> str:
    name = label if label is not None else f"Class {klass.klass}"
    jsd = "NaN" if not np.isfinite(klass.jsd) else f"{klass.jsd:.3f}"
    return f"{name} (n={klass.n_heads}, JSD {jsd})"


def _class_panel(ax, klass, edges: np.ndarray, color: str, label: str | None = None) -> None:
    """One class: bars of the mean histogram, std error bars, gamma pdf, alpha/theta, n and JSD in the title."""
    edges = np.asarray(edges, dtype=np.float64)
    centers = 0.5 * (edges[:-1] + edges[1:])
    mean = np.nan_to_num(klass.mean_hist)
    ax.bar(centers, mean, width=np.diff(edges) * 0.9, color=color, edgecolor="none")
    ax.errorbar(
        centers,
        mean,
        yerr=np.nan_to_num(klass.std_hist),
        fmt="none",
        capsize=1.5,
        color="black",
        alpha=0.7,
        elinewidth=1,
    )
    if np.isfinite(klass.alpha):
        ax.plot(centers, klass.pdf, color=GAMMA_COLOR, linestyle="--", lw=1.2)
        text = f"α : {klass.alpha:.2f}\nθ : {klass.theta:.2f}"
    else:
        text = "gamma fit\nfailed"
    _, top = ax.get_ylim()
    ax.set_ylim((0, top))
    ax.set_xlim(edges[0], edges[-1])
    ax.text(
        0.6,
        0.9,
        text,
        transform=ax.transAxes,
        ha="left",
        va="top",
        fontsize=PANEL_FONT + 1,
        bbox=dict(facecolor="white", alpha=0.6, edgecolor="none"),
    )
    ax.tick_params(labelsize=PANEL_FONT - 1)
    ax.set_xlabel("λ / mean λ of the head", fontsize=PANEL_FONT)
    ax.set_ylabel("density", fontsize=PANEL_FONT)
    ax.set_title(_class_title(klass, label), fontsize=PANEL_FONT + 1)
    for spine in ax.spines.values():  # the class's colour, as in the embedding (coloured text would be unreadable)
        spine.set_edgecolor(color)
        spine.set_linewidth(2.5)


def _panel_legend(fig) -> None:
    """One legend for all class panels: what the bars, error bars and dashed line are."""
    handles = [
        Patch(facecolor="0.6", label="mean histogram of the class's heads"),
        Line2D([], [], color="black", marker="|", linestyle="none", markersize=10, label="± 1 std over the heads"),
        Line2D([], [], color=GAMMA_COLOR, linestyle="--", label="fitted gamma pdf (shape α, scale θ)"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=PANEL_FONT + 1, frameon=False)


def _embedding_axes(big, classifier, colors: list[str]) -> None:
    """The 2-D embedding, coloured by class (legend: class and n), axes named after the embedding."""
    labels = np.asarray(classifier.labels_)
    emb = classifier.embedding_ if classifier.embedding_ is not None else np.zeros((len(labels), 2))
    method = EMBEDDINGS.get(classifier.embedding, "no")
    point_colors = np.asarray(colors, dtype=object)[labels]
    big.scatter(emb[:, 0], emb[:, 1], c=list(point_colors), s=10, alpha=0.75, rasterized=len(labels) > 2000)
    handles = [
        Line2D([], [], marker="o", linestyle="none", color=colors[k.klass], label=f"Class {k.klass} (n={k.n_heads})")
        for k in classifier.class_fits_
    ]
    big.legend(
        handles=handles,
        fontsize=PANEL_FONT + 1,
        loc="best",
        framealpha=0.8,
        title="class",
        title_fontsize=PANEL_FONT + 1,
    )
    unit = "principal component" if method == "PCA" else f"{method} dimension"
    big.set_xlabel(f"{unit} 1 (arbitrary units)")
    big.set_ylabel(f"{unit} 2 (arbitrary units)")
    big.tick_params(labelsize=PANEL_FONT)
    big.set_title(f"{method} of the heads' eigenvalue histograms ({len(labels)} heads)")


def clusters_figure(classifier, title: str, variant: str | None = None, circuit: str | None = None):
    """Classification A figure of one model (a fitted :class:`~qk_spectra_ds.analysis.taxonomy.SpectralHeadClassifier`); call inside :func:`plots.style`.

    ``variant``, ``circuit``: of the spectra, named at the end of the title (:func:`plots.variant_suffix`).
    """
    fig, big, panels = _grid(len(classifier.classes_))
    colors = plots.class_colors(len(classifier.classes_))
    _embedding_axes(big, classifier, colors)
    for ax, klass in zip(panels, classifier.class_fits_):
        _class_panel(ax, klass, classifier.bin_edges_, colors[klass.klass])
    fig.suptitle(
        f"{title}: classes of heads by normalized-eigenvalue histogram{plots.variant_suffix(variant, circuit)}"
    )
    _panel_legend(fig)
    plots.tight_layout(fig, rect=(0, 0.05, 1, 1))
    return fig


def plot_clusters(
    classifier,
    path: str | os.PathLike,
    title: str,
    dpi: float = plots.DEFAULT_DPI,
    variant: str | None = None,
    circuit: str | None = None,
) -> Path:
    """Write :func:`clusters_figure` to ``path`` (format from its suffix) at ``dpi``."""
    with plots.style():
        return plots.save_figure(clusters_figure(classifier, title, variant, circuit), path, dpi)


def _share_heatmap(
    ax, matrix: pd.DataFrame, vmax: float, cbar: bool = True, fontsize: float = 9, cbar_label: str = "share"
) -> None:
    """``seaborn.heatmap`` of shares (viridis, 0..vmax), annotated in percent up to 400 cells, titled colour bar.

    Tick labels stay horizontal (seaborn turns them when they might overlap,
    which a colour bar beside a panel makes it guess wrongly) and are thinned
    by seaborn (``"auto"``) when there are too many to read.
    """
    sns.heatmap(
        matrix.astype(float),
        ax=ax,
        cmap="viridis",
        vmin=0.0,
        vmax=vmax,
        cbar=cbar,
        annot=matrix.size <= 400,
        fmt=".0%",
        annot_kws={"fontsize": fontsize},
        xticklabels="auto",
        yticklabels="auto",
        cbar_kws={"format": matplotlib.ticker.PercentFormatter(1.0, decimals=0)} if cbar else None,
    )
    if cbar:
        ax.collections[0].colorbar.set_label(cbar_label, fontsize=14)
    ax.tick_params(axis="both", labelrotation=0, length=0)


BAND_TICK_FONT = 11
"""Font size of the depth bands' tick labels (``0.0-0.2``): five fit side by side under a 7-inch panel; more stand upright."""


def _display_models(taxonomy, order: Sequence[str] | None) -> list[str]:
    """The taxonomy's models in ``order`` (models it lacks dropped, models ``order`` lacks appended)."""
    order = [m for m in (order or []) if m in taxonomy.models]
    return order + [m for m in taxonomy.models if m not in order]


def plot_taxonomy_classes(
    taxonomy,
    path: str | os.PathLike | None,
    title: str = "Joint taxonomy",
    order: Sequence[str] | None = None,
    dpi: float = plots.DEFAULT_DPI,
    variant: str | Sequence[str] | None = None,
    circuit: str | None = None,
) -> Path:
    """The joint classes: share of each model's heads per class (heat map, left) and one panel per class.

    ``order``: the models top to bottom (default: the taxonomy's; the report passes them by size).
    ``variant``, ``circuit``: the variant(s) and circuit of the spectra, named at the end of the title.
    ``path`` None: the figure is returned instead of written.
    """
    classes = taxonomy.classifier.class_fits_
    models = _display_models(taxonomy, order)
    shares = taxonomy.shares_by_model()
    matrix = shares.pivot(index="model", columns="class", values="share").reindex(models)
    matrix.columns = [f"{k}\nn={c.n_heads}" for k, c in zip(matrix.columns, classes)]
    colors = plots.class_colors(len(classes))
    with plots.style():
        fig, big, panels = _grid(len(classes), width=19)
        _share_heatmap(big, matrix, vmax=1.0, fontsize=13, cbar_label="share of the model's heads in the class")
        for tick in big.get_xticklabels():
            k = int(tick.get_text().split("\n")[0])
            tick.set_color(colors[k])
        big.set_xlabel("class (n = heads in the class, all models)")
        big.set_ylabel("model (ordered by size)")
        big.set_title("share of each model's heads per class")
        for ax, klass in zip(panels, classes):
            _class_panel(ax, klass, taxonomy.classifier.bin_edges_, colors[klass.klass])
        fig.suptitle(title + plots.variant_suffix(variant, circuit))
        _panel_legend(fig)
        plots.tight_layout(fig, rect=(0, 0.05, 1, 1))
        return fig if path is None else plots.save_figure(fig, path, dpi)


def plot_taxonomy_depth(
    taxonomy,
    path: str | os.PathLike | None,
    title: str = "Joint taxonomy by relative depth",
    order: Sequence[str] | None = None,
    dpi: float = plots.DEFAULT_DPI,
    variant: str | Sequence[str] | None = None,
    circuit: str | None = None,
) -> Path:
    """One heat map per class: share of the heads of each (model, relative-depth band) in that class.

    ``order``, ``variant`` and ``circuit`` as in :func:`plot_taxonomy_classes`; ``path`` None: the figure is returned instead of written.
    """
    shares = taxonomy.shares_by_depth()
    models = _display_models(taxonomy, order)
    classes = taxonomy.classifier.class_fits_
    colors = plots.class_colors(len(classes))
    n_classes = len(classes)
    n_cols = min(3, n_classes)
    n_rows = math.ceil(n_classes / n_cols)
    bands = [
        f"{lo:.1f}-{hi:.1f}"
        for lo, hi in zip(
            np.arange(taxonomy.n_bands) / taxonomy.n_bands, np.arange(1, taxonomy.n_bands + 1) / taxonomy.n_bands
        )
    ]
    vmax = max(float(shares["share"].max()), 1e-9)
    height = max(2.8, 0.45 * len(models) + 2.0)
    with plots.style():
        fig = plots.new_figure((7.0 * n_cols, height * n_rows))
        axes = fig.subplots(n_rows, n_cols, squeeze=False)
        for k in range(n_rows * n_cols):
            ax = axes.flat[k]
            if k >= n_classes:
                ax.remove()
                continue
            part = shares[shares["class"] == k]
            matrix = part.pivot(index="model", columns="band", values="share").reindex(models)
            matrix.columns = bands[: matrix.shape[1]]
            last = k % n_cols == n_cols - 1 or k == n_classes - 1
            _share_heatmap(ax, matrix, vmax=vmax, cbar=last, cbar_label="share of the band's heads")
            ax.tick_params(axis="x", labelsize=BAND_TICK_FONT, labelrotation=0 if taxonomy.n_bands <= 5 else 90)
            ax.set_title(_class_title(classes[k]).split(", JSD")[0] + ")")
            for spine in ax.spines.values():  # the class's colour, as in the other figures
                spine.set_visible(True)
                spine.set_edgecolor(colors[k])
                spine.set_linewidth(3)
            ax.set_xlabel("relative depth (layer / n_layers)")
            if k % n_cols:
                ax.set_ylabel("")
                ax.set_yticklabels([])
            else:
                ax.set_ylabel("model (by size)")
        fig.suptitle(title + plots.variant_suffix(variant, circuit))
        plots.tight_layout(fig)
        return fig if path is None else plots.save_figure(fig, path, dpi)
