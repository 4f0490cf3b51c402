"""Issue 23 item 4: a layer x head map of each head's class, and a metric beside it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from qk_spectra_ds.analysis import head_maps, plots


def _labels(n_layers=5, n_heads=7) -> pd.DataFrame:
    layer = np.repeat(np.arange(n_layers), n_heads)
    head = np.tile(np.arange(n_heads), n_layers)
    return pd.DataFrame(
        {
            "layer": layer,
            "head": head,
            "class": (layer >= 3).astype(int) + (head == 0),
            "stable_rank": layer * 10.0 + head,
        }
    )


def test_grid_puts_each_head_in_its_cell():
    table = _labels().sample(frac=1.0, random_state=0)  # row order must not matter
    values = head_maps.grid(table, "stable_rank")
    assert values.shape == (5, 7)
    assert values[3, 4] == 34.0 and values[0, 6] == 6.0
    missing = head_maps.grid(table[~((table["layer"] == 2) & (table["head"] == 1))], "stable_rank")
    assert np.isnan(missing[2, 1]) and np.isfinite(missing).sum() == 34


def test_map_shows_classes_by_layer_and_head_with_counts_and_a_metric():
    labels = _labels()
    with plots.style():
        fig = head_maps.head_map_figure(
            labels, "org/m: classes by layer and head", labels[["layer", "head", "stable_rank"]]
        )
    classes_ax, metric_ax = fig.axes[0], fig.axes[1]
    legend = [t.get_text() for t in classes_ax.get_legend().get_texts()]
    counts = labels["class"].value_counts()
    assert legend == [f"class {c} (n={counts[c]})" for c in sorted(counts.index)]
    mesh = classes_ax.collections[0]
    assert np.array_equal(np.asarray(mesh.get_array()).reshape(5, 7), head_maps.grid(labels, "class"))
    assert classes_ax.get_ylim() == (4.5, -0.5) and classes_ax.get_xlim() == (
        -0.5,
        6.5,
    )  # layer 0 on top, cells centred
    assert classes_ax.get_xlabel() == "query head" and classes_ax.get_ylabel() == "layer"
    assert metric_ax.get_title() == "stable rank" and any(ax.get_label() == "<colorbar>" for ax in fig.axes)
