"""The comparison's per-layer error figure, drawn from a heads table alone (fast; the CLI run is in test_compare.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from qk_spectra_ds.analysis import compare_figures


def _heads() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 3 * 4  # 3 layers x 4 heads
    heads = pd.DataFrame(
        {
            "layer": np.repeat(np.arange(3), 4),
            "head": np.tile(np.arange(4), 3),
            "sv_err_max": rng.uniform(1e-7, 1e-3, n),
            "sv_err_median": rng.uniform(1e-8, 1e-4, n),
        }
    )
    heads.loc[5, "sv_err_max"] = np.nan  # a head without a comparable spectrum is left out of its box, not fatal
    return heads


def test_head_error_figure_is_titled_and_identical_on_a_rerun(tmp_path):
    title = "org/m: raw vs folded, per-head relative error"
    first = compare_figures.plot_head_errors(_heads(), tmp_path / "a.png", title, dpi=40)
    again = compare_figures.plot_head_errors(_heads(), tmp_path / "b.png", title, dpi=40)
    with Image.open(first) as image:
        assert image.format == "PNG" and image.text.get("Title") == title
    assert first.read_bytes() == again.read_bytes()
