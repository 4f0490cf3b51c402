"""All figures of the analysis (matplotlib canvases outside pyplot, so nothing stays open).

The layouts follow the original study's figures, in its seaborn theme
(``talk`` context, ``white`` style, ``deep`` palette), made ready for a paper:
every axis has a title (and units where the quantity has any), every colour
bar a title, the statistic its full name, and legends say what the marks are.

- ESD figure (classification A): a 2-D embedding of the heads on the left,
  one panel per class on the right (mean histogram of the normalized
  eigenvalues as bars, std over the heads as error bars, the fitted gamma pdf
  dashed, ``alpha``/``theta`` in the corner, ``n`` and JSD in the title).
  Each class has one colour (:func:`class_colors`) in the embedding, its panel
  and its legend entry.
- Box plot (classification B): matplotlib's ``boxplot`` (as the original's
  ``plt.boxplot``), one box per layer (quartiles, whiskers at 1.5 IQR, no
  fliers), median and mean marked, the dashed linear smoothing spline of the
  per-layer means, BDS of the per-layer medians in the title, and a legend.
- Joint taxonomy: seaborn heat maps of class shares, models ordered by size
  (``order``: the report passes :func:`html_report.size_order`), never alphabetically (0.6B, 1.7B, 14B, 4B, 8B).

Tick labels are thinned automatically (``MaxNLocator(nbins="auto")`` for layer
axes, seaborn's ``"auto"`` labels for heat maps) so they stay readable at 72
layers or 5,000 heads. Figures are written as PNG (default), PDF or SVG
(:data:`FIGURE_FORMATS`, from the path's suffix) at ``dpi`` (default 100, the
original's), without timestamps so reruns give identical files. The theme is
applied in an ``rc_context`` so nothing global changes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from ..atomic import atomic_path
from ..errors import AnalysisError
from .taxonomy import EMBEDDINGS

PNG_COMPRESSION = 3
"""zlib level of the PNGs (3: about twice as fast to write as the default 6, files ~15% larger)."""

FIGURE_FORMATS = ("png", "pdf", "svg")
"""``--format``: the file types a figure can be written as."""

DEFAULT_DPI = 100.0
"""``--dpi`` default: the original's figures were 100 dpi."""

WIDE_LAYERS = 100
"""Above this many layers the box plot widens (the original's 405B case); its tick labels are thinned."""

THEME = {"context": "talk", "style": "white", "palette": "deep"}
"""The original's ``seaborn.set_theme("talk")`` + ``set_style("white")``."""

STAT_TITLES = {
    "MIN": "minimum eigenvalue",
    "MAX": "maximum eigenvalue",
    "MEAN": "mean eigenvalue",
    "STD": "standard deviation of the eigenvalues",
    "SKEW": "skewness of the eigenvalues",
    "KURTOSIS": "excess kurtosis of the eigenvalues",
}
"""The full name of each per-head statistic of the box plots (the eigenvalues are l = s^2 of W_QK)."""

STAT_UNITS = {"MIN": "λ = σ² of W_QK", "MAX": "λ = σ² of W_QK", "MEAN": "λ = σ² of W_QK", "STD": "λ = σ² of W_QK",
              "SKEW": "dimensionless", "KURTOSIS": "dimensionless"}
"""Units of each statistic: those of an eigenvalue λ = σ²(W_QK) (squared weight units), or none."""

MEDIAN_COLOR, MEAN_COLOR, SPLINE_COLOR = "C1", "C2", "C0"
GAMMA_COLOR = "red"


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


def class_colors(n_classes: int) -> list[str]:
    """One hex colour per class: seaborn's ``Set2`` (the original's scatter map) up to 8 classes, ``husl`` beyond.

    The embedding, the class panels, the interactive report and the heat-map
    labels all take a class's colour from here, so they match.
    """
    import seaborn as sns

    palette = sns.color_palette("Set2", n_classes) if n_classes <= 8 else sns.color_palette("husl", n_classes)
    return [matplotlib.colors.to_hex(c) for c in palette]


def check_figure_format(fmt: str) -> str:
    """``fmt`` lower-cased if it is one of :data:`FIGURE_FORMATS`, else an :class:`AnalysisError`."""
    value = str(fmt).lower().lstrip(".")
    if value not in FIGURE_FORMATS:
        raise AnalysisError(f"unknown figure format {fmt!r}: choose from {', '.join(FIGURE_FORMATS)}")
    return value


def check_dpi(dpi: float) -> float:
    """``dpi`` as a float if it is in [10, 1200], else an :class:`AnalysisError` (a typo like 30000 would fill the disk)."""
    try:
        value = float(dpi)
    except (TypeError, ValueError):
        raise AnalysisError(f"--dpi must be a number, got {dpi!r}") from None
    if not 10 <= value <= 1200:
        raise AnalysisError(f"--dpi must be between 10 and 1200, got {dpi!r}")
    return value


def new_figure(figsize: tuple[float, float], dpi: float = DEFAULT_DPI):
    """A ``Figure`` on its own Agg canvas, outside pyplot's registry (nothing to leak or close)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


CHAR_WIDTH_EM = 0.62
"""Width of an average character in em (DejaVu Sans, mixed case, with margin): how long a line of text may be."""


def wrap_to(text: str, width_in: float, fontsize_pt: float) -> str:
    """``text`` with each line wrapped at word boundaries so that it fits ``width_in`` inches at ``fontsize_pt``."""
    import textwrap

    chars = max(12, int(width_in * 72.0 / (CHAR_WIDTH_EM * float(fontsize_pt))))
    return "\n".join(textwrap.fill(line, chars, break_on_hyphens=False) if len(line) > chars else line
                     for line in text.split("\n"))  # fmt: skip


MIN_TITLE_IN = 3.5
"""An axes title is wrapped to its axes' width, but never to less than this (short panel titles stay on one line)."""


def fit_texts(fig) -> None:
    """Wrap the figure's long texts to the space they have: suptitle to the figure's width, each axes' title
    and x label to its width, its y label to its height (colour bars included)."""
    width, height = fig.get_figwidth(), fig.get_figheight()
    if fig.get_suptitle():  # the suptitle is one of the figure's texts
        for text in (t for t in fig.texts if t.get_text() == fig.get_suptitle()):
            text.set_text(wrap_to(text.get_text(), 0.96 * width, text.get_fontsize()))
    for ax in fig.axes:
        box = ax.get_position()
        for text, room in ((ax.title, min(0.96 * width, max(box.width * width, MIN_TITLE_IN))),
                           (ax.xaxis.label, max(box.width * width, 1.0)),
                           (ax.yaxis.label, max(box.height * height, 1.0))):  # fmt: skip
            if text.get_text():
                text.set_text(wrap_to(text.get_text(), room, text.get_fontsize()))


def occupied_range(edges, curves, floor: float = 0.01) -> tuple[float, float]:
    """The x range of histogram bins where any of ``curves`` exceeds ``floor`` x its peak, one bin of margin each side."""
    edges = np.asarray(edges, dtype=np.float64)
    used = np.zeros(len(edges) - 1, dtype=bool)
    for curve in curves:
        values = np.nan_to_num(np.asarray(curve, dtype=np.float64))
        if values.size == used.size and values.max() > 0:
            used |= values > floor * values.max()
    if not used.any():
        return float(edges[0]), float(edges[-1])
    first, last = np.flatnonzero(used)[[0, -1]]
    return float(edges[max(first - 1, 0)]), float(edges[min(last + 2, len(edges) - 1)])


def tight_layout(fig, **kwargs) -> None:
    """:func:`fit_texts`, then ``fig.tight_layout(**kwargs)``: every figure's last layout step."""
    fit_texts(fig)
    fig.tight_layout(**kwargs)


def variant_suffix(variant: str | Sequence[str] | None, circuit: str | None = None) -> str:
    """`` · folded QK spectra``: the end of a figure title naming the variant(s) and circuit of its spectra ('' for None).

    Several variants (a joint taxonomy over models with different ones, a
    comparison) are joined: `` · folded + raw QK spectra``; ``circuit`` is ``qk``,
    ``ov`` or ``qk+ov`` (None: the title names no circuit).
    """
    if variant is None:
        return ""
    names = [variant] if isinstance(variant, str) else list(dict.fromkeys(map(str, variant)))
    named = "" if not circuit else " " + str(circuit).upper().replace("+", " and ")
    return f" · {' + '.join(names)}{named} spectra" if names else ""


def figure_title(fig) -> str:
    """The title a reader sees first: the figure's suptitle, else its first axes title ('' if none)."""
    title = fig.get_suptitle() or next((ax.get_title() for ax in fig.axes if ax.get_title()), "")
    return " ".join(title.split("\n"))  # one line, however the figure wraps it


def save_figure(fig, path: str | os.PathLike, dpi: float = DEFAULT_DPI, preview: bool = True) -> Path:
    """Write the figure atomically as its suffix says (png, pdf, svg), with no timestamp: reruns give identical files.

    The file's ``Title`` metadata (PNG text chunk, PDF info, SVG ``dc:title``)
    holds :func:`figure_title`, so a figure says what it shows (model, variant)
    to any image tool, and tests can read it back from the file.
    """
    fmt = check_figure_format(Path(path).suffix or "png")
    title = figure_title(fig)
    with atomic_path(path) as tmp:
        if fmt == "png":
            _write_png(fig, tmp, dpi, title)
        else:
            metadata = {"CreationDate": None} if fmt == "pdf" else {"Date": None}
            if title:
                metadata["Title"] = title
            with matplotlib.rc_context({"svg.hashsalt": "qk-spectra-ds"}):  # fixed SVG ids: identical reruns
                fig.savefig(tmp, format=fmt, dpi=dpi, metadata=metadata)
    if fmt == "pdf" and preview:  # browsers do not show a PDF in <img>: index.html shows this preview beside the link
        with atomic_path(preview_path(path)) as tmp:
            _write_png(fig, tmp, min(dpi, PREVIEW_DPI), title)
    return Path(path)


PREVIEW_DPI = 72.0
"""Resolution of the PNG preview written beside each PDF figure (for index.html)."""


def preview_path(path: str | os.PathLike) -> Path:
    """``fig.pdf`` -> ``fig.preview.png``: the PNG preview of a PDF figure."""
    return Path(path).with_suffix(".preview.png")


def _write_png(fig, target, dpi: float, title: str) -> None:
    """The figure as an opaque PNG with its ``Title`` metadata, no timestamp."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    fig.set_dpi(dpi)
    fig.canvas.draw()
    rgb = np.ascontiguousarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])  # opaque figures: no alpha
    info = PngInfo()
    if title:
        info.add_itxt("Title", title)  # international text: titles hold non-ASCII (·, λ, σ)
    Image.fromarray(rgb).save(target, format="png", compress_level=PNG_COMPRESSION, pnginfo=info)


def _grid(n_panels: int, width: float = 16):
    """The original's grid: 5 columns (0.65, 0.65, 0.65, 1, 1), a 3x3 block top-left, panels elsewhere."""
    n_rows = int(3 + max(math.ceil((n_panels - 6) / 5), 0))
    fig = new_figure((width, 3.3 * n_rows + 0.9))
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
    ax.errorbar(centers, mean, yerr=np.nan_to_num(klass.std_hist), fmt="none", capsize=1.5, color="black", alpha=0.7,
                elinewidth=1)  # fmt: skip
    if np.isfinite(klass.alpha):
        ax.plot(centers, klass.pdf, color=GAMMA_COLOR, linestyle="--", lw=1.2)
        text = f"α : {klass.alpha:.2f}\nθ : {klass.theta:.2f}"
    else:
        text = "gamma fit\nfailed"
    _, top = ax.get_ylim()
    ax.set_ylim((0, top))
    ax.set_xlim(edges[0], edges[-1])
    ax.text(0.6, 0.9, text, transform=ax.transAxes, ha="left", va="top", fontsize=PANEL_FONT + 1,
            bbox=dict(facecolor="white", alpha=0.6, edgecolor="none"))  # fmt: skip
    ax.tick_params(labelsize=PANEL_FONT - 1)
    ax.set_xlabel("λ / mean λ of the head", fontsize=PANEL_FONT)
    ax.set_ylabel("density", fontsize=PANEL_FONT)
    ax.set_title(_class_title(klass, label), fontsize=PANEL_FONT + 1)
    for spine in ax.spines.values():  # the class's colour, as in the embedding (coloured text would be unreadable)
        spine.set_edgecolor(color)
        spine.set_linewidth(2.5)


def _panel_legend(fig) -> None:
    """One legend for all class panels: what the bars, error bars and dashed line are."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

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
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", linestyle="none", color=colors[k.klass], label=f"Class {k.klass} (n={k.n_heads})")
               for k in classifier.class_fits_]  # fmt: skip
    big.legend(handles=handles, fontsize=PANEL_FONT + 1, loc="best", framealpha=0.8, title="class",
               title_fontsize=PANEL_FONT + 1)  # fmt: skip
    unit = "principal component" if method == "PCA" else f"{method} dimension"
    big.set_xlabel(f"{unit} 1 (arbitrary units)")
    big.set_ylabel(f"{unit} 2 (arbitrary units)")
    big.tick_params(labelsize=PANEL_FONT)
    big.set_title(f"{method} of the heads' eigenvalue histograms ({len(labels)} heads)")


def clusters_figure(classifier, title: str, variant: str | None = None, circuit: str | None = None):
    """Classification A figure of one model (a fitted :class:`~qk_spectra_ds.taxonomy.SpectralHeadClassifier`); call inside :func:`style`.

    ``variant``, ``circuit``: of the spectra, named at the end of the title (:func:`variant_suffix`).
    """
    fig, big, panels = _grid(len(classifier.classes_))
    colors = class_colors(len(classifier.classes_))
    _embedding_axes(big, classifier, colors)
    for ax, klass in zip(panels, classifier.class_fits_):
        _class_panel(ax, klass, classifier.bin_edges_, colors[klass.klass])
    fig.suptitle(f"{title}: classes of heads by normalized-eigenvalue histogram{variant_suffix(variant, circuit)}")
    _panel_legend(fig)
    tight_layout(fig, rect=(0, 0.05, 1, 1))
    return fig


def plot_clusters(classifier, path: str | os.PathLike, title: str, dpi: float = DEFAULT_DPI,
                  variant: str | None = None, circuit: str | None = None) -> Path:  # fmt: skip
    """Write :func:`clusters_figure` to ``path`` (format from its suffix) at ``dpi``."""
    with style():
        return save_figure(clusters_figure(classifier, title, variant, circuit), path, dpi)


def _box_legend(ax, spline: bool) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

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
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins="auto", integer=True, min_n_ticks=2))


def plot_layer_stats(results: Sequence, paths: Sequence[str | os.PathLike], dpi: float = DEFAULT_DPI,
                     variant: str | None = None, tests: Sequence[str] | None = None,
                     skipped: str | None = None, circuit: str | None = None) -> list[Path]:  # fmt: skip
    """Classification B figures of one model, one per statistic (:class:`~qk_spectra_ds.layer_stats.LayerStat`).

    Each figure is the original's box plot, 20 x 8 inches (35 wide above 100
    layers), one box per layer at its layer number (means shown, no fliers),
    the dashed spline of the per-layer means, the BDS of the per-layer medians
    in the title (with the ``variant`` of the spectra), axis titles with units, a legend, and thinned layer ticks.
    ``tests`` (default method): per result, the title's text about its tests instead of the asymptotic BDS
    p-value (``layer_permutation_tests.figure_title_text``); ``skipped``: the layers left out, named under the axis.
    """
    tests = list(tests) if tests is not None else [None] * len(results)
    with style():
        return [save_figure(layer_stat_figure(result, variant, text, skipped, circuit), path, dpi)
                for result, path, text in zip(results, paths, tests)]  # fmt: skip


def layer_stat_figure(result, variant: str | None = None, tests: str | None = None, skipped: str | None = None,
                      circuit: str | None = None):  # fmt: skip
    """The box plot of one :class:`~qk_spectra_ds.layer_stats.LayerStat` (see :func:`plot_layer_stats`); call inside :func:`style`."""
    layers = np.asarray(result.layers, dtype=np.float64)
    n = len(layers)
    fig = new_figure((35 if n > WIDE_LAYERS else 20, 8))
    ax = fig.add_subplot()
    ax.boxplot(result.values, positions=layers, widths=0.5, showmeans=True, showfliers=False, manage_ticks=False,
               medianprops={"color": MEDIAN_COLOR, "lw": 2},
               meanprops={"marker": "^", "markerfacecolor": MEAN_COLOR, "markeredgecolor": MEAN_COLOR})  # fmt: skip
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
        ax.set_title(f"{result.model_id}: {name} by layer{variant_suffix(variant, circuit)}\nper-layer medians: {tests}", fontsize=13)
    else:
        bds = "NaN" if not np.isfinite(result.bds) else f"{result.bds:.2f}"
        ax.set_title(f"{result.model_id}: {name} by layer (BDS of the per-layer medians: {bds}, "
                     f"asymptotic p-value: {result.p_value:.2e}){variant_suffix(variant, circuit)}")  # fmt: skip
    _box_legend(ax, spline)
    tight_layout(fig)
    return fig


def _share_heatmap(
    ax, matrix: pd.DataFrame, vmax: float, cbar: bool = True, fontsize: float = 9, cbar_label: str = "share"
) -> None:
    """``seaborn.heatmap`` of shares (viridis, 0..vmax), annotated in percent up to 400 cells, titled colour bar.

    Tick labels stay horizontal (seaborn turns them when they might overlap,
    which a colour bar beside a panel makes it guess wrongly) and are thinned
    by seaborn (``"auto"``) when there are too many to read.
    """
    import seaborn as sns

    sns.heatmap(
        matrix.astype(float), ax=ax, cmap="viridis", vmin=0.0, vmax=vmax, cbar=cbar, annot=matrix.size <= 400, fmt=".0%",
        annot_kws={"fontsize": fontsize}, xticklabels="auto", yticklabels="auto",
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
    taxonomy, path: str | os.PathLike | None, title: str = "Joint taxonomy", order: Sequence[str] | None = None,
    dpi: float = DEFAULT_DPI, variant: str | Sequence[str] | None = None, circuit: str | None = None,
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
    colors = class_colors(len(classes))
    with style():
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
        fig.suptitle(title + variant_suffix(variant, circuit))
        _panel_legend(fig)
        tight_layout(fig, rect=(0, 0.05, 1, 1))
        return fig if path is None else save_figure(fig, path, dpi)


def plot_taxonomy_depth(
    taxonomy, path: str | os.PathLike | None, title: str = "Joint taxonomy by relative depth",
    order: Sequence[str] | None = None, dpi: float = DEFAULT_DPI, variant: str | Sequence[str] | None = None,
    circuit: str | None = None,
) -> Path:
    """One heat map per class: share of the heads of each (model, relative-depth band) in that class.

    ``order``, ``variant`` and ``circuit`` as in :func:`plot_taxonomy_classes`; ``path`` None: the figure is returned instead of written.
    """
    shares = taxonomy.shares_by_depth()
    models = _display_models(taxonomy, order)
    classes = taxonomy.classifier.class_fits_
    colors = class_colors(len(classes))
    n_classes = len(classes)
    n_cols = min(3, n_classes)
    n_rows = math.ceil(n_classes / n_cols)
    bands = [f"{lo:.1f}-{hi:.1f}" for lo, hi in zip(np.arange(taxonomy.n_bands) / taxonomy.n_bands,
                                                      np.arange(1, taxonomy.n_bands + 1) / taxonomy.n_bands)]
    vmax = max(float(shares["share"].max()), 1e-9)
    height = max(2.8, 0.45 * len(models) + 2.0)
    with style():
        fig = new_figure((7.0 * n_cols, height * n_rows))
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
        fig.suptitle(title + variant_suffix(variant, circuit))
        tight_layout(fig)
        return fig if path is None else save_figure(fig, path, dpi)
