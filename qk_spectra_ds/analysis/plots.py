"""How every figure of the analysis looks and is written: the theme, the canvas, text fitted to its room, the files.

The figures follow the original study's look, in its seaborn theme (``talk``
context, ``white`` style, ``deep`` palette), made ready for a paper: every axis
has a title (and units where the quantity has any), every colour bar a title,
the statistic its full name, and legends say what the marks are. Each class
has one colour (:func:`class_colors`) in every figure and page.

Figures are matplotlib canvases outside pyplot, so nothing stays open. They are
written as PNG (default), PDF or SVG (:data:`FIGURE_FORMATS`, from the path's
suffix) at ``dpi`` (default 100, the original's), without timestamps so reruns
give identical files. The theme is applied in an ``rc_context`` so nothing
global changes. The figure families: :mod:`.class_figures` (classification A
and the joint taxonomy), :mod:`.layer_boxplot_figures` (classification B), and
each analysis's own figures beside it.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib
import numpy as np
import seaborn as sns
from cycler import cycler
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..atomic import atomic_path
from ..errors import AnalysisError

PNG_COMPRESSION = 3
"""zlib level of the PNGs (3: about twice as fast to write as the default 6, files ~15% larger)."""

FIGURE_FORMATS = ("png", "pdf", "svg")
"""``--format``: the file types a figure can be written as."""

DEFAULT_DPI = 100.0
"""``--dpi`` default: the original's figures were 100 dpi."""

THEME = {"context": "talk", "style": "white", "palette": "deep"}
"""The original's ``seaborn.set_theme("talk")`` + ``set_style("white")``."""


def theme_rc() -> dict:
    """:data:`THEME` as rcParams, from seaborn (without ``set_theme``'s global changes)."""
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
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


CHAR_WIDTH_EM = 0.62
"""Width of an average character in em (DejaVu Sans, mixed case, with margin): how long a line of text may be."""


def wrap_to(text: str, width_in: float, fontsize_pt: float) -> str:
    """``text`` with each line wrapped at word boundaries so that it fits ``width_in`` inches at ``fontsize_pt``."""
    chars = max(12, int(width_in * 72.0 / (CHAR_WIDTH_EM * float(fontsize_pt))))
    return "\n".join(
        textwrap.fill(line, chars, break_on_hyphens=False) if len(line) > chars else line for line in text.split("\n")
    )


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
        for text, room in (
            (ax.title, min(0.96 * width, max(box.width * width, MIN_TITLE_IN))),
            (ax.xaxis.label, max(box.width * width, 1.0)),
            (ax.yaxis.label, max(box.height * height, 1.0)),
        ):
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
    fig.set_dpi(dpi)
    fig.canvas.draw()
    rgb = np.ascontiguousarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])  # opaque figures: no alpha
    info = PngInfo()
    if title:
        info.add_itxt("Title", title)  # international text: titles hold non-ASCII (·, λ, σ)
    Image.fromarray(rgb).save(target, format="png", compress_level=PNG_COMPRESSION, pnginfo=info)
