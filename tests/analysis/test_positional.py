"""The positional table from rows alone (fast: the report-level checks are in test_variant_labels.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from qk_spectra_ds.analysis import positional


def _rows() -> pd.DataFrame:
    """Three heads given out of order: two with positional spectra at offsets 0, 1, 1024; one without."""
    offsets = [0, 1, 1024]
    return pd.DataFrame(
        {
            "layer": [1, 0, 0],
            "head": [0, 1, 0],
            "offsets": [offsets, None, offsets],
            "positional_singular_values": [
                np.array([[4.0, 1.0], [2.0, 1.0], [1.0, 0.5]]),
                None,
                np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]),
            ],
            "spectral_norm": [4.0, 3.0, 0.0],
            "positional_norm_ratio_min": [0.25, None, None],
            "positional_norm_ratio_max": [1.0, None, None],
            "half_norm_offset": [1024, None, None],
        }
    )


def test_ratios_are_the_top_singular_value_over_the_spectral_norm_per_offset():
    table = positional.positional_table("org/m", _rows(), "raw")
    assert table[["layer", "head"]].values.tolist() == [[0, 0], [1, 0]]  # sorted; the head without spectra left out
    assert positional.offsets_of(table) == [0, 1, 1024]
    live = table.iloc[1]
    assert [live[positional.ratio_column(d)] for d in (0, 1, 1024)] == [1.0, 0.5, 0.25]
    assert table.iloc[0][[positional.ratio_column(d) for d in (0, 1, 1024)]].isna().all()  # an all-zero head: NaN
    assert live["half_norm_offset"] == 1024 and pd.isna(table.iloc[0]["half_norm_offset"])
    assert set(table["model"]) == {"org/m"} and set(table["variant"]) == {"raw"}


def test_rows_without_positional_spectra_give_an_empty_table_and_short_offset_labels():
    rows = _rows().assign(positional_singular_values=[None, None, None])
    assert not positional.has_positional(rows) and positional.positional_table("org/m", rows, "raw").empty
    assert [positional.offset_label(d) for d in (0, 1000, 1024, 32768, 1536)] == ["0", "1000", "1k", "32k", "1536"]
