"""How each head's QK spectrum changes with the offset between query and key (rotary models).

The dataset's raw and folded rows of rotary layers hold, per offset delta
(the key delta tokens before the query), the d_head singular values of the
circuit with the model's own rotary embedding applied
(``positional_singular_values``), and per head three summaries
(``positional_norm_ratio_min``/``_max``, ``half_norm_offset``). This module
turns them into

- a table (``positional.csv``): per head, the spectral norm at each offset
  relative to the non-positional one, ``r(delta) = s_1(delta) / s_1`` (the
  row's ``spectral_norm``; ``r(0) = 1``), in columns ``norm_ratio_<delta>``,
  next to the dataset's three summaries;
- a figure per model: one heat map per layer, rows = the layer's heads,
  columns = the offsets (log-spaced: 0, 1, 2, 4, ...), colour = ``r(delta)``
  on a log scale centred on 1 (blue: the strongest query-key coupling
  weakens with distance, red: it strengthens), one shared colour bar; layers
  without rotary (NoPE, absolute positions) are drawn as empty panels saying so.

Pure functions of the loaded rows (:func:`~.loading.load_spectra` with
``keep_positional=True``); nothing here reads files.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm

from . import plots

SUMMARY_COLUMNS = ("positional_norm_ratio_min", "positional_norm_ratio_max", "half_norm_offset")
"""The dataset's own per-head summaries, copied into the table."""

RATIO_PREFIX = "norm_ratio_"
"""Column ``norm_ratio_<delta>``: s_1(delta) / s_1 of the head at offset delta."""

PANEL_COLUMNS = 8
"""Layers per row of the figure."""


def has_positional(rows: pd.DataFrame) -> bool:
    """Whether any of these rows holds positional spectra (the loader's ``keep_positional`` columns)."""
    return "positional_singular_values" in rows and any(v is not None for v in rows["positional_singular_values"])


def norm_ratios(positional: np.ndarray, spectral_norm: float) -> np.ndarray:
    """``s_1(delta) / s_1`` for one head: the first singular value at each offset over the non-positional one.

    NaN for an all-zero head (as the dataset's summaries).
    """
    top = np.asarray(positional, dtype=np.float64)[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        return top / float(spectral_norm) if spectral_norm > 0 else np.full(len(top), np.nan)


def ratio_column(delta: int) -> str:
    """The table's column for offset ``delta``."""
    return f"{RATIO_PREFIX}{int(delta)}"


def positional_table(model_id: str, rows: pd.DataFrame, variant: str) -> pd.DataFrame:
    """Per head with positional spectra: model, variant, layer, head, ``norm_ratio_<delta>`` per offset, the summaries.

    Heads sorted by (layer, head); empty when no row has positional spectra.
    """
    keep = rows[[v is not None for v in rows["positional_singular_values"]]] if has_positional(rows) else rows.iloc[:0]
    keep = keep.sort_values(["layer", "head"], kind="stable")
    records = []
    for row in keep.itertuples(index=False):
        ratios = norm_ratios(row.positional_singular_values, row.spectral_norm)
        record = {"model": model_id, "variant": variant, "layer": int(row.layer), "head": int(row.head)}
        record.update({ratio_column(d): float(r) for d, r in zip(row.offsets, ratios)})
        for name in SUMMARY_COLUMNS:
            value = getattr(row, name, None)
            record[name] = np.nan if value is None or pd.isna(value) else value
        records.append(record)
    table = pd.DataFrame(records)
    if len(table):
        table["half_norm_offset"] = table["half_norm_offset"].astype("Int64")  # null: no offset gets below 1/2
    return table


def offsets_of(table: pd.DataFrame) -> list[int]:
    """The offsets a :func:`positional_table` holds, ascending."""
    return sorted(int(c[len(RATIO_PREFIX) :]) for c in table.columns if c.startswith(RATIO_PREFIX))


def offset_label(delta: int) -> str:
    """A short tick label: ``32k`` for 32768 (multiples of 1024 from 1024 up), else the number."""
    return f"{delta // 1024}k" if delta >= 1024 and delta % 1024 == 0 else str(delta)


def _layer_matrix(table: pd.DataFrame, layer: int, offsets: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(heads, ratios)``: the layer's head numbers and their (heads, offsets) ratio matrix."""
    part = table[table["layer"] == layer].sort_values("head")
    return part["head"].to_numpy(), part[[ratio_column(d) for d in offsets]].to_numpy(np.float64)


def colour_norm(values: np.ndarray):
    """A log colour scale centred on 1, symmetric, covering every finite positive ratio (at least 0.9..1.11)."""
    finite = values[np.isfinite(values) & (values > 0)]
    spread = float(np.abs(np.log10(finite)).max()) if len(finite) else 0.0
    spread = max(spread, math.log10(1 / 0.9))
    return LogNorm(vmin=10**-spread, vmax=10**spread)


def positional_figure(table: pd.DataFrame, n_layers: int, title: str):
    """The figure (see the module docstring) of one model's :func:`positional_table`; call inside ``plots.style()``."""
    offsets = offsets_of(table)
    layers = list(range(int(n_layers)))
    n_cols = min(PANEL_COLUMNS, max(1, len(layers)))
    n_rows = math.ceil(len(layers) / n_cols)
    n_heads = int(table.groupby("layer")["head"].count().max()) if len(table) else 1
    panel_h = min(4.0, max(1.6, 0.12 * n_heads + 1.0))
    fig = plots.new_figure((2.3 * n_cols + 1.6, panel_h * n_rows + 1.6))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    all_values = table[[ratio_column(d) for d in offsets]].to_numpy(np.float64)
    norm = colour_norm(all_values)
    image = None
    for index, ax in enumerate(axes.flat):
        if index >= len(layers):
            ax.remove()
            continue
        layer = layers[index]
        heads, matrix = _layer_matrix(table, layer, offsets)
        ax.set_title(f"layer {layer}", fontsize=11)
        if not len(heads):
            ax.text(
                0.5,
                0.5,
                "no rotary\n(no positional\nspectra)",
                ha="center",
                va="center",
                fontsize=9,
                transform=ax.transAxes,
                color="0.4",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        image = ax.imshow(
            np.where(matrix > 0, matrix, np.nan), aspect="auto", cmap="RdBu_r", norm=norm, interpolation="nearest"
        )
        xs = range(0, len(offsets), max(1, math.ceil(len(offsets) / 5)))  # thinned: readable at 20 offsets
        ax.set_xticks(list(xs), [offset_label(offsets[i]) for i in xs], fontsize=8)
        ys = range(0, len(heads), max(1, math.ceil(len(heads) / 8)))
        ax.set_yticks(list(ys), [str(heads[i]) for i in ys], fontsize=8)
    fig.suptitle(title, fontsize=13)
    fig.supxlabel("offset δ: the key δ tokens before the query (one column per offset; k = 1024)", fontsize=11)
    fig.supylabel("query head", fontsize=11)
    plots.tight_layout(fig, rect=(0, 0, 0.88, 1))
    if image is not None:
        _colour_bar(fig, image, norm)
    return fig


def _colour_bar(fig, image, norm) -> None:
    """The shared colour bar at the right: five ticks from the lowest to the highest ratio, 1 in the middle."""
    bar = fig.colorbar(image, cax=fig.add_axes((0.9, 0.15, 0.015, 0.7)))
    ticks = np.geomspace(norm.vmin, norm.vmax, 5)
    bar.set_ticks(ticks, labels=[f"{t:.3g}" for t in ticks])
    bar.ax.minorticks_off()
    bar.ax.tick_params(labelsize=9)
    bar.set_label("s₁(δ) / s₁(0): spectral norm at offset δ\nrelative to no offset (log scale)", fontsize=10)


def plot_positional(
    table: pd.DataFrame, n_layers: int, path: str | os.PathLike, title: str, dpi: float | None = None
) -> Path:
    """Write :func:`positional_figure` to ``path`` (format from its suffix) at ``dpi``."""
    with plots.style():
        return plots.save_figure(
            positional_figure(table, n_layers, title), path, plots.DEFAULT_DPI if dpi is None else dpi
        )
