"""All figures of the analysis (matplotlib Agg canvases outside pyplot, so nothing stays open).

The layouts follow the original study's figures: seaborn theme ``talk`` with
style ``white``; the ESD figure is a UMAP scatter coloured by class (Set2) on
the left and one panel per class on the right (mean histogram as bars, std
as error bars, the fitted gamma pdf dashed red, ``alpha``/``theta`` in the
corner, title ``Class_k (JSD:0.005)``), 15 x 2.8*rows inches; the box plot is
20 x 8 inches, one box per layer (means shown, no fliers), the dashed linear
smoothing spline of the means, title ``<model>_<STAT> (BDS: 2.80 p-value:
5.07e-03)``. Styles are applied in an ``rc_context`` so nothing global changes.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import matplotlib
import numpy as np

from .atomic import atomic_path

PNG_COMPRESSION = 3
"""zlib level of the PNGs (3: about twice as fast to write as the default 6, files ~15% larger)."""

WIDE_LAYERS = 100
"""Above this many layers the box plot widens and drops the tick labels (the original's 405B case)."""


THEME = {
    # ``seaborn.set_theme(context="talk", style="white")`` (seaborn 0.13), the original's look, as
    # plain rcParams: importing seaborn (and pyplot with it) would cost about a second per process.
    "axes.axisbelow": True,
    "axes.edgecolor": ".15",
    "axes.labelcolor": ".15",
    "axes.labelsize": 18.0,
    "axes.linewidth": 1.875,
    "axes.prop_cycle": ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3",
                        "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd"],  # seaborn "deep"
    "axes.titlesize": 18.0,
    "font.sans-serif": ["Arial", "DejaVu Sans", "Liberation Sans", "Bitstream Vera Sans", "sans-serif"],
    "font.size": 18.0,
    "grid.color": ".8",
    "grid.linewidth": 1.5,
    "legend.fontsize": 16.5,
    "legend.title_fontsize": 18.0,
    "lines.linewidth": 2.25,
    "lines.markersize": 9.0,
    "lines.solid_capstyle": "round",
    "patch.edgecolor": "w",
    "patch.force_edgecolor": True,
    "patch.linewidth": 1.5,
    "text.color": ".15",
    "xtick.bottom": False,
    "xtick.color": ".15",
    "xtick.labelsize": 16.5,
    "xtick.major.size": 9.0,
    "xtick.major.width": 1.875,
    "xtick.minor.size": 6.0,
    "xtick.minor.width": 1.5,
    "ytick.color": ".15",
    "ytick.labelsize": 16.5,
    "ytick.left": False,
    "ytick.major.size": 9.0,
    "ytick.major.width": 1.875,
    "ytick.minor.size": 6.0,
    "ytick.minor.width": 1.5,
}  # fmt: skip


def theme_rc() -> dict:
    """:data:`THEME` as rcParams values (the colour cycle as a ``cycler``)."""
    from cycler import cycler

    rc = dict(THEME)
    rc["axes.prop_cycle"] = cycler(color=THEME["axes.prop_cycle"])
    return rc


@contextmanager
def style() -> Iterator[None]:
    """The original's look (seaborn theme ``talk``, style ``white``) for the figures made inside."""
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


def plot_clusters(result, path: str | os.PathLike, title: str | None = None) -> Path:
    """Classification A figure of one model (:class:`~qk_spectra_ds.taxonomy.ClusterResult`)."""
    with style():
        fig, big, panels = _grid(result.n_clusters)
        emb = result.embedding if result.embedding is not None else np.zeros((len(result.labels), 2))
        big.scatter(emb[:, 0], emb[:, 1], c=result.labels, s=10, cmap="Set2", alpha=0.75)
        big.set_xticks([])
        big.set_yticks([])
        big.set_title("UMAP features")
        n_bins = len(result.edges) - 1
        for ax, klass in zip(panels, result.classes):
            _class_panel(ax, klass, n_bins)
        fig.suptitle(title if title is not None else result.model_id)
        fig.tight_layout()
        return _save(fig, path)


def _box_artists(ax, values: Sequence[np.ndarray], positions: np.ndarray, width: float = 0.5) -> None:
    """``ax.boxplot(values, positions=..., widths=width, showmeans=True, showfliers=False)``, drawn fast.

    Same statistics (``matplotlib.cbook.boxplot_stats``, whiskers at 1.5 IQR),
    same geometry, colours, widths and z-order as ``Axes.bxp`` with the
    current rcParams, but one ``LineCollection`` per element instead of seven
    ``Line2D`` per box (several times faster to build and draw).
    """
    from matplotlib import cbook
    from matplotlib.collections import LineCollection

    rc = matplotlib.rcParams
    stats = cbook.boxplot_stats(list(values), whis=rc["boxplot.whiskers"])
    q1 = np.array([s["q1"] for s in stats])
    q3 = np.array([s["q3"] for s in stats])
    med = np.array([s["med"] for s in stats])
    mean = np.array([s["mean"] for s in stats])
    lo = np.array([s["whislo"] for s in stats])
    hi = np.array([s["whishi"] for s in stats])
    pos = np.asarray(positions, dtype=float)
    left, right = pos - width / 2, pos + width / 2
    cap_l, cap_r = pos - width / 4, pos + width / 4

    def segments(xs, ys):
        return np.stack([np.stack([x, y], axis=-1) for x, y in zip(xs, ys)], axis=1)

    parts = {
        "box": segments([left, right, right, left, left], [q1, q1, q3, q3, q1]),
        "whisker": np.concatenate([segments([pos, pos], [q1, lo]), segments([pos, pos], [q3, hi])]),
        "cap": np.concatenate([segments([cap_l, cap_r], [lo, lo]), segments([cap_l, cap_r], [hi, hi])]),
        "median": segments([left, right], [med, med]),
    }
    for name, segs in parts.items():
        ax.add_collection(
            LineCollection(
                segs,
                colors=rc[f"boxplot.{name}props.color"],
                linewidths=rc[f"boxplot.{name}props.linewidth"],
                linestyles=rc[f"boxplot.{name}props.linestyle"],
                capstyle=rc["lines.solid_capstyle"],
                joinstyle=rc["lines.solid_joinstyle"],
                zorder=2.1 if name == "median" else 2,
            ),
            autolim=False,
        )
    ax.plot(
        pos, mean, linestyle="", marker=rc["boxplot.meanprops.marker"],
        markerfacecolor=rc["boxplot.meanprops.markerfacecolor"],
        markeredgecolor=rc["boxplot.meanprops.markeredgecolor"],
        markersize=rc["boxplot.meanprops.markersize"], zorder=2.1, scalex=False, scaley=False,
    )
    ax.update_datalim(np.column_stack([np.concatenate([pos, pos, pos]), np.concatenate([lo, hi, mean])]))


def plot_layer_stats(results: Sequence, paths: Sequence[str | os.PathLike], titles: Sequence[str] | None = None) -> list[Path]:
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
        for i, (result, path) in enumerate(zip(results, paths)):
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
            _box_artists(ax, result.values, np.arange(n), 0.5)
            if result.spline_x is not None:
                ax.plot(result.spline_x, result.spline_y, linestyle="--", color="C0", scalex=False, scaley=False)
                ax.update_datalim(np.column_stack([result.spline_x, result.spline_y]))
            ax.autoscale_view(scalex=False)
            ax.set_xlim(-0.5, n - 0.5)
            title = titles[i] if titles is not None else (
                f"{result.model_id}_{result.stat} (BDS: {result.bds:.2f} p-value: {result.p_value:.2e})"
            )
            ax.set_title(title)
            fig.tight_layout()
            written.append(_save(fig, path))
    return written


def plot_layer_stat(result, path: str | os.PathLike, title: str | None = None) -> Path:
    """One classification B figure (see :func:`plot_layer_stats`)."""
    return plot_layer_stats([result], [path], None if title is None else [title])[0]


def _share_heatmap(
    ax, matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], vmax: float, cbar: bool = True, fontsize: float = 9
):
    """A seaborn-style annotated heat map of shares (drawn directly: seaborn redraws the figure per call)."""
    matrix = np.ma.masked_invalid(np.asarray(matrix, dtype=float))
    n_rows, n_cols = matrix.shape
    mesh = ax.pcolormesh(matrix, cmap="viridis", vmin=0.0, vmax=vmax)
    ax.set_xlim(0, n_cols)
    ax.set_ylim(n_rows, 0)
    ax.set_xticks(np.arange(n_cols) + 0.5, list(cols))
    ax.set_yticks(np.arange(n_rows) + 0.5, list(rows))
    ax.tick_params(axis="both", length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if matrix.size <= 400:
        colors = mesh.cmap(mesh.norm(matrix.filled(0.0)))
        luminance = 0.2126 * colors[..., 0] + 0.7152 * colors[..., 1] + 0.0722 * colors[..., 2]
        for (i, j), value in np.ndenumerate(matrix.filled(np.nan)):
            if np.isfinite(value):
                ax.text(j + 0.5, i + 0.5, f"{value:.0%}", ha="center", va="center", fontsize=fontsize,
                        color="black" if luminance[i, j] > 0.408 else "white")
    if cbar:
        ax.figure.colorbar(mesh, ax=ax)


def plot_taxonomy_classes(taxonomy, path: str | os.PathLike, title: str = "Joint taxonomy") -> Path:
    """The joint classes: share of each model's heads per class (heat map, left) and one panel per class."""
    shares = taxonomy.shares_by_model()
    matrix = shares.pivot(index="model", columns="class", values="share").reindex(taxonomy.models).to_numpy()
    with style():
        fig, big, panels = _grid(len(taxonomy.classes))
        _share_heatmap(big, matrix, taxonomy.models, [str(k) for k in range(len(taxonomy.classes))], vmax=1.0, fontsize=13)
        big.set_xlabel("class")
        big.set_title("share of each model's heads per class")
        n_bins = len(taxonomy.edges) - 1
        for ax, klass in zip(panels, taxonomy.classes):
            _class_panel(ax, klass, n_bins)
        fig.suptitle(title)
        fig.tight_layout()
        return _save(fig, path)


def plot_taxonomy_depth(taxonomy, path: str | os.PathLike, title: str = "Joint taxonomy by relative depth") -> Path:
    """One heat map per class: share of the heads of each (model, relative-depth band) in that class."""
    shares = taxonomy.shares_by_depth()
    n_classes = len(taxonomy.classes)
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
