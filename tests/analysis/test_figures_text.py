"""Issue 23 item 3: no figure of a report has text outside its canvas or text on other text.

Every figure a report and a comparison write is drawn, as written (``plots.save_figure``
is replaced by a check that draws the figure at the report's size and dpi), for a
72-head model (MiniLM's 6 x 12, the real model's long Hub id) and for a
5,000-head one (40 x 125) beside two small models. While a figure draws, each
text that matplotlib actually renders is recorded with its extent
(``Text.get_window_extent``); none may leave the canvas or overlap another.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import make_dataset, synthetic_columns
from matplotlib.text import Text

from qk_spectra_ds.analysis import plots
from qk_spectra_ds.analysis.report import Params, run_report

LONG_ID = "sentence-transformers/all-MiniLM-L6-v2"
SLACK_PX = 1.0
"""Extents are rounded to the pixel: a text may touch the edge or its neighbour by this much."""


def _dataset(out, models: dict[str, tuple[int, int]], d_head: int = 32):
    """A dataset of ``models`` (id -> (n_layers, n_heads)): the suite's synthetic rows, other columns null."""
    sizes = [
        (model, seed, dict(n_layers=layers, n_heads=heads))
        for seed, (model, (layers, heads)) in enumerate(models.items())
    ]
    return make_dataset(out, "fig", sizes, d_head=d_head)


def drawn_texts(fig, monkeypatch) -> list[tuple[str, object]]:
    """(text, window extent) of every text the figure's renderer draws (ticks outside the view are not drawn)."""
    drawn = []
    original = Text.draw

    def record(self, renderer):
        original(self, renderer)
        if self.get_visible() and self.get_text().strip():
            drawn.append((self.get_text(), self.get_window_extent(renderer)))

    with monkeypatch.context() as patch:
        patch.setattr(Text, "draw", record)
        fig.canvas.draw()
    return drawn


def text_problems(fig, monkeypatch) -> list[str]:
    """What is wrong with the figure's text: extents past the canvas, pairs of texts that overlap."""
    canvas = fig.bbox
    texts = drawn_texts(fig, monkeypatch)
    problems = []
    for text, box in texts:
        if (
            box.x0 < canvas.x0 - SLACK_PX
            or box.y0 < canvas.y0 - SLACK_PX
            or box.x1 > canvas.x1 + SLACK_PX
            or box.y1 > canvas.y1 + SLACK_PX
        ):
            problems.append(f"outside the canvas: {text!r}")
    for i, (text_a, a) in enumerate(texts):
        shrunk = a.expanded(1.0, 1.0).padded(-SLACK_PX)
        for text_b, b in texts[i + 1 :]:
            if shrunk.overlaps(b.padded(-SLACK_PX)):
                problems.append(f"overlap: {text_a!r} and {text_b!r}")
    return problems


@pytest.fixture
def checked_figures(monkeypatch):
    """Replaces ``plots.save_figure``: each figure is drawn at the dpi it would be written with and checked."""
    found: dict[str, list[str]] = {}

    def check(fig, path, dpi=plots.DEFAULT_DPI, preview=True):
        fig.set_dpi(dpi)
        name = "/".join(str(path).split("/")[-3:])
        found[name] = text_problems(fig, monkeypatch)
        return path

    monkeypatch.setattr(plots, "save_figure", check)
    return found


def _report(tmp_path, models) -> None:
    dataset = _dataset(tmp_path / "ds", models)
    run_report(str(dataset), "fig", tmp_path / "out", params=Params(permutations=99), jobs=1, progress=False)


def _compare(tmp_path, models) -> None:
    from qk_spectra_ds.analysis import compare

    other = _dataset(tmp_path / "other", models)
    side_a, side_b = compare.load_sides(str(tmp_path / "ds"), "fig", against=str(other))
    compare.run_compare(side_a, side_b, tmp_path / "cmp", "fig", ["stable_rank", "positivity"], "png", 100.0)


def _assert_clean(found: dict[str, list[str]], expected: tuple[str, ...]) -> None:
    for kind in expected:
        assert any(kind in name for name in found), (kind, sorted(found))
    bad = {name: problems for name, problems in found.items() if problems}
    assert not bad, "\n".join(f"{name}: {p}" for name, problems in bad.items() for p in problems)


@pytest.mark.slow
def test_figures_of_a_72_head_model(tmp_path, checked_figures):
    models = {LONG_ID: (6, 12)}
    _report(tmp_path, models)
    _compare(tmp_path, models)
    _assert_clean(
        checked_figures,
        (
            "ESDs/",
            "consensus/",
            "plots/MEAN",
            "taxonomy/classes",
            "taxonomy/depth",
            "maps/",
            "_class_profiles",
            "compare/",
            "depth/stable_rank",
        ),
    )


@pytest.mark.slow
def test_figures_at_5000_heads(tmp_path, checked_figures):
    models = {"org/wide-model-with-5000-heads": (40, 126), LONG_ID: (6, 12), "org/m-1.7B": (28, 16)}  # 5,040 heads
    _report(tmp_path, models)
    _assert_clean(
        checked_figures, ("ESDs/", "consensus/", "plots/KURTOSIS", "taxonomy/classes", "taxonomy/depth", "maps/")
    )


def test_the_check_sees_clipped_and_overlapping_text(monkeypatch):
    """The check itself: a title wider than its figure and two labels on one spot are reported."""
    fig = plots.new_figure((4, 3))
    ax = fig.add_subplot()
    ax.set_title("a title far too long for a figure four inches wide, clipped on both sides")
    ax.text(0.5, 0.5, "here")
    ax.text(0.5, 0.5, "there")
    problems = text_problems(fig, monkeypatch)
    assert any(p.startswith("outside the canvas: 'a title") for p in problems)
    assert "overlap: 'here' and 'there'" in problems
    clean = plots.new_figure((4, 3))
    clean.add_subplot().set_title("short")
    clean.tight_layout()
    assert text_problems(clean, monkeypatch) == []


@pytest.mark.slow
def test_consensus_figure_names_its_axes_and_shows_where_the_data_is(monkeypatch):
    """λ (not l) on the x axis, 'class k (n=... heads)' titles, a y label on every panel, no empty x range."""
    from qk_spectra_ds.analysis import consensus, consensus_figures

    rows = pd.DataFrame(synthetic_columns(LONG_ID, "fig", n_layers=6, n_heads=12, d_head=32, seed=0))
    rng = np.random.default_rng(0)  # flat spectra: every l / mean l within a factor 3, a narrow part of the fixed range
    ev = -np.sort(-rng.uniform(0.5, 1.5, (len(rows), 32)) * rng.uniform(0.5, 2.0, (len(rows), 1)), axis=1)
    rows["eigenvalues"], rows["singular_values"] = list(ev.astype(np.float32)), list(np.sqrt(ev).astype(np.float32))
    result = consensus.analyze(LONG_ID, rows, k=2, structure_draws=19)
    captured = {}
    monkeypatch.setattr(
        plots, "save_figure", lambda fig, path, dpi=plots.DEFAULT_DPI, **_: captured.setdefault("fig", fig)
    )
    consensus_figures.plot_consensus(result, "unused.png", title=f"{LONG_ID}: consensus classes")
    fig = captured["fig"]
    sizes = result.consensus_classes["n_heads"].tolist()
    panels = fig.axes[1:]
    assert [ax.get_title() for ax in panels] == [f"class {i} (n={n} heads)" for i, n in enumerate(sizes)]
    assert all(ax.get_ylabel() for ax in fig.axes)
    edges = result.edges
    for ax, mean in zip(panels, result.class_means):
        assert "λ" in ax.get_xlabel() and " l " not in f" {ax.get_xlabel()} "
        low, high = ax.get_xlim()
        assert (high - low) < 0.8 * (edges[-1] - edges[0])  # the empty tails are cut
        centers = (edges[:-1] + edges[1:]) / 2
        assert low <= centers[mean > 0.01 * mean.max()].min() and centers[mean > 0.01 * mean.max()].max() <= high
    assert text_problems(fig, monkeypatch) == []
