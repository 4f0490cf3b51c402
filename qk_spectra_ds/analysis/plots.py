"""All figures of the analysis (matplotlib Agg canvases outside pyplot, so nothing stays open).

The layouts follow the original study's figures, in its seaborn theme
(``talk`` context, ``white`` style, ``deep`` palette). The ESD figure is a 2-D
embedding of the heads coloured by class (Set2) on the left and one panel per
class on the right (mean histogram as bars, std as error bars, the fitted
gamma pdf dashed red, ``alpha``/``theta`` in the corner, title ``Class_k
(JSD:0.005)``), 15 x 2.8*rows inches; the box plot is matplotlib's
``boxplot`` (as the original's ``plt.boxplot``), 20 x 8 inches, one box per
layer (means shown, no fliers), the dashed linear smoothing spline of the
means, title ``<model>_<STAT> (BDS: 2.80 p-value: 5.07e-03)``; the joint
taxonomy's shares are seaborn heat maps. The theme is applied in an
``rc_context`` so nothing global changes.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import matplotlib
import numpy as np

from ..atomic import atomic_path
from .taxonomy import EMBEDDINGS

PNG_COMPRESSION = 3
"""zlib level of the PNGs (3: about twice as fast to write as the default 6, files ~15% larger)."""

WIDE_LAYERS = 100
"""Above this many layers the box plot widens and drops the tick labels (the original's 405B case)."""

THEME = {"context": "talk", "style": "white", "palette": "deep"}
"""The original's ``seaborn.set_theme("talk")`` + ``set_style("white")``."""


def theme_rc() -> dict:
    """:data:`THEME` as rcParams, from seaborn (without ``set_theme``'s global changes)."""
    import seaborn as sns
    from cycler import cycler

    return {
        **sns.axes_style(THEME["style"]),
        **sns.plotting_context(THEME["context"]),
        "axes.prop_cycle": cycler(color=sns.color_palette(THEME["palette"])),
    }


@contextmanager
def style() -> Iterator[None]:
    """The original's look (:data:`THEME`) for the figures made inside."""
    with matplotlib.rc_context(theme_rc()):
        yield


def new_figure(figsize: tuple[float, float], dpi: float = 100):
    """A ``Figure`` on its own Agg canvas, outside pyplot's registry (nothing to leak or close)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    """Render with Agg and write a PNG atomically (no timestamp metadata: reruns give identical files)."""
    from PIL import Image

    fig.canvas.draw()
    rgb = np.ascontiguousarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])  # opaque figures: no alpha
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="png", compress_level=PNG_COMPRESSION)
    return Path(path)


def _grid(n_panels: int):
    """The original's grid: 5 columns (0.65, 0.65, 0.65, 1, 1), a 3x3 block top-left, panels elsewhere."""
    n_rows = int(3 + max(math.ceil((n_panels - 6) / 5), 0))
    fig = new_figure((15, 2.8 * n_rows))
    gs = fig.add_gridspec(n_rows, 5, width_ratios=[0.65, 0.65, 0.65, 1, 1])
    big = fig.add_subplot(gs[:3, :3])
    cells = [(r, c) for r in range(n_rows) for c in range(5) if not (r < 3 and c < 3)]
    panels = [fig.add_subplot(gs[r, c]) for r, c in cells[:n_panels]]
    return fig, big, panels


def _class_panel(ax, klass, n_bins: int, label: str | None = None) -> None:
    """One class: bars of the mean histogram, std error bars, gamma pdf, alpha/theta, JSD title."""
    x = np.arange(n_bins)
    mean = np.nan_to_num(klass.mean_hist)
    ax.bar(x, mean)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.errorbar(x, mean, yerr=np.nan_to_num(klass.std_hist), fmt="none", capsize=2.0, color="black", alpha=0.7, elinewidth=2)
    if np.isfinite(klass.alpha):
        ax.plot(x, klass.pdf, color="red", linestyle="--", lw=0.8)
        text = f"α : {klass.alpha:.2f}\nθ : {klass.theta:.2f}"
    else:
        text = "gamma fit\nfailed"
    _, top = ax.get_ylim()
    ax.set_ylim((0, top))
    ax.text(
        0.6, 0.9, text, transform=ax.transAxes, ha="left", va="top", fontsize=16,
        bbox=dict(facecolor="white", alpha=0.6, edgecolor="none"),
    )
    name = label if label is not None else f"Class_{klass.klass}"
    ax.set_title(f"{name} (JSD:{klass.jsd:.3f})")


def plot_clusters(classifier, path: str | os.PathLike, title: str) -> Path:
    """Classification A figure of one model (a fitted :class:`~qk_spectra_ds.taxonomy.SpectralHeadClassifier`)."""
    with style():
        fig, big, panels = _grid(len(classifier.classes_))
        labels = classifier.labels_
        emb = classifier.embedding_ if classifier.embedding_ is not None else np.zeros((len(labels), 2))
        big.scatter(emb[:, 0], emb[:, 1], c=labels, s=10, cmap="Set2", alpha=0.75)
        big.set_xticks([])
        big.set_yticks([])
        big.set_title(f"{EMBEDDINGS.get(classifier.embedding, 'no')} features")
        n_bins = len(classifier.bin_edges_) - 1
        for ax, klass in zip(panels, classifier.class_fits_):
            _class_panel(ax, klass, n_bins)
        fig.suptitle(title)
        fig.tight_layout()
        return _save(fig, path)


def plot_layer_stats(results: Sequence, paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Classification B figures of one model, one per statistic (:class:`~qk_spectra_ds.layer_stats.LayerStat`).

    Each figure is the original's: 20 x 8 inches at 100 dpi (35 wide above
    100 layers, then without tick labels), one box per layer at positions
    ``0..n-1`` labelled by layer, means shown, no fliers, the dashed spline,
    the BDS title. The statistics of one model share the layers, so one
    figure is drawn and saved per statistic without being rebuilt.
    """
    written = []
    if not results:
        return written
    with style():
        fig = None
        for result, path in zip(results, paths):
            n = len(result.layers)
            wide = n > WIDE_LAYERS
            if fig is None or list(result.layers) != layers:
                layers = list(result.layers)
                fig = new_figure((35 if wide else 20, 8), dpi=100)
                ax = fig.add_subplot()
                if wide:
                    ax.set_xticks([])
                else:
                    ax.set_xticks(np.arange(n), [str(x) for x in layers])
            for artist in [*ax.lines, *ax.collections]:
                artist.remove()
            ax.ignore_existing_data_limits = True
            ax.boxplot(result.values, positions=np.arange(n), widths=0.5, showmeans=True, showfliers=False,
                       manage_ticks=False)
            if result.spline_x is not None:
                ax.plot(result.spline_x, result.spline_y, linestyle="--", color="C0", scalex=False, scaley=False)
                ax.update_datalim(np.column_stack([result.spline_x, result.spline_y]))
            ax.autoscale_view(scalex=False)
            ax.set_xlim(-0.5, n - 0.5)
            ax.set_title(f"{result.model_id}_{result.stat} (BDS: {result.bds:.2f} p-value: {result.p_value:.2e})")
            fig.tight_layout()
            written.append(_save(fig, path))
    return written


def _share_heatmap(
    ax, matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], vmax: float, cbar: bool = True, fontsize: float = 9
) -> None:
    """``seaborn.heatmap`` of shares (viridis, 0..vmax), annotated in percent up to 400 cells.

    Tick labels stay horizontal (seaborn turns them when they might overlap,
    which a colour bar beside a panel makes it guess wrongly).
    """
    import seaborn as sns

    matrix = np.asarray(matrix, dtype=float)
    sns.heatmap(
        matrix, ax=ax, cmap="viridis", vmin=0.0, vmax=vmax, cbar=cbar, annot=matrix.size <= 400, fmt=".0%",
        annot_kws={"fontsize": fontsize}, xticklabels=list(cols), yticklabels=list(rows),
    )
    ax.tick_params(axis="both", labelrotation=0, length=0)


def plot_taxonomy_classes(taxonomy, path: str | os.PathLike, title: str = "Joint taxonomy") -> Path:
    """The joint classes: share of each model's heads per class (heat map, left) and one panel per class."""
    classes = taxonomy.classifier.class_fits_
    shares = taxonomy.shares_by_model()
    matrix = shares.pivot(index="model", columns="class", values="share").reindex(taxonomy.models).to_numpy()
    with style():
        fig, big, panels = _grid(len(classes))
        _share_heatmap(big, matrix, taxonomy.models, [str(k) for k in range(len(classes))], vmax=1.0, fontsize=13)
        big.set_xlabel("class")
        big.set_title("share of each model's heads per class")
        n_bins = len(taxonomy.classifier.bin_edges_) - 1
        for ax, klass in zip(panels, classes):
            _class_panel(ax, klass, n_bins)
        fig.suptitle(title)
        fig.tight_layout()
        return _save(fig, path)


def plot_taxonomy_depth(taxonomy, path: str | os.PathLike, title: str = "Joint taxonomy by relative depth") -> Path:
    """One heat map per class: share of the heads of each (model, relative-depth band) in that class."""
    shares = taxonomy.shares_by_depth()
    n_classes = len(taxonomy.classifier.classes_)
    n_cols = min(3, n_classes)
    n_rows = math.ceil(n_classes / n_cols)
    bands = [f"{lo:.1f}-{hi:.1f}" for lo, hi in zip(np.arange(taxonomy.n_bands) / taxonomy.n_bands,
                                                      np.arange(1, taxonomy.n_bands + 1) / taxonomy.n_bands)]
    vmax = max(float(shares["share"].max()), 1e-9)
    height = max(2.5, 0.45 * len(taxonomy.models) + 1.6)
    with style():
        fig = new_figure((6.5 * n_cols, height * n_rows))
        axes = fig.subplots(n_rows, n_cols, squeeze=False)
        for k in range(n_rows * n_cols):
            ax = axes.flat[k]
            if k >= n_classes:
                ax.remove()
                continue
            part = shares[shares["class"] == k]
            matrix = part.pivot(index="model", columns="band", values="share").reindex(taxonomy.models).to_numpy()
            _share_heatmap(ax, matrix, taxonomy.models, bands, vmax=vmax, cbar=(k % n_cols == n_cols - 1))
            ax.set_title(f"Class_{k}")
            ax.set_xlabel("relative depth (layer / n_layers)")
            if k % n_cols:
                ax.set_yticklabels([])
        fig.suptitle(title)
        fig.tight_layout()
        return _save(fig, path)
