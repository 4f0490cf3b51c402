"""Issue 19, item 6: umap-learn and statsmodels are optional extras; the default method runs without them."""

from __future__ import annotations

import configparser
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from qk_spectra_ds.errors import AnalysisError

ROOT = Path(__file__).resolve().parents[2]


def _hide(monkeypatch, *modules: str) -> None:
    """Make ``modules`` unimportable (as if not installed) for this test."""
    for name in list(sys.modules):
        if name.split(".")[0] in modules:
            monkeypatch.delitem(sys.modules, name)
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def _extra(name: str) -> set[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config.get("options.extras_require", name, raw=True).splitlines()
    return {re.split(r"[<>=!~\[ ]", line.strip())[0].lower() for line in lines if line.strip()}


def test_extras_declare_the_optional_packages():
    assert not _extra("analysis") & {"umap-learn", "statsmodels"}
    assert "psutil" not in _extra("test")  # declared and never imported
    assert "umap-learn" in _extra("umap")
    assert {"statsmodels", "umap-learn"} <= _extra("original")  # the study exactly: its BDS and its UMAP
    assert {"%(umap)s", "%(original)s"} <= _extra("all")


def test_umap_flag_without_umap_is_one_line(monkeypatch):
    from qk_spectra_ds.analysis import taxonomy

    _hide(monkeypatch, "umap")
    with pytest.raises(AnalysisError, match=r"--embedding umap needs umap-learn.*qk-spectra-ds\[umap\]") as info:
        taxonomy.check_embedding("umap")
    assert "\n" not in str(info.value)
    assert taxonomy.check_embedding("pca") == "pca"


def test_original_method_without_statsmodels_is_one_line(monkeypatch):
    from qk_spectra_ds.analysis.report import Params

    _hide(monkeypatch, "statsmodels")
    with pytest.raises(AnalysisError, match=r"--method original needs statsmodels.*qk-spectra-ds\[original\]"):
        Params(method="original")
    assert Params().method == "consensus"  # the default method needs neither


def test_asymptotic_bds_without_statsmodels_matches_it(monkeypatch):
    """The default method's (labelled invalid) asymptotic BDS column is the same number without statsmodels."""
    from statsmodels.tsa.stattools import bds

    from qk_spectra_ds.analysis import layer_boxplots

    rng = np.random.default_rng(3)
    series = [rng.standard_normal(n).cumsum() for n in (5, 12, 28)]
    expected = [tuple(float(v) for v in bds(x)) for x in series]
    _hide(monkeypatch, "statsmodels")
    got = [layer_boxplots.bds_test(x) for x in series]
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert np.isnan(layer_boxplots.bds_test(np.array([1.0, 2.0]), "m MEAN")).all()
    assert any("2 layer(s) are too few" in str(w.message) for w in caught)


def test_benjamini_hochberg_is_statsmodels_bit_for_bit():
    from statsmodels.stats.multitest import multipletests

    from qk_spectra_ds.analysis.behaviour import adjust

    rng = np.random.default_rng(7)
    p = np.concatenate([rng.uniform(size=40), rng.uniform(0, 1e-3, size=10), [0.5, 0.5, 1.0, 0.0]])
    rng.shuffle(p)
    np.testing.assert_array_equal(adjust(p), multipletests(p, method="fdr_bh")[1])
    with_nan = adjust([0.01, np.nan, 0.04])
    assert np.isnan(with_nan[1]) and np.array_equal(with_nan[[0, 2]], multipletests([0.01, 0.04], method="fdr_bh")[1])
