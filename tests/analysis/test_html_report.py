"""Issue 14, items 2-3: the HTML report (checked in headless Chromium) and figures a paper can use."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import SIZE_ORDER, SIZES, sized_dataset, synthetic_columns

from qk_spectra_ds.analysis import class_figures, html_report, layer_boxplot_figures, layer_boxplots, plots, taxonomy
from qk_spectra_ds.analysis.loading import AnalysisError
from qk_spectra_ds.analysis.report import Params, run_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="module")
def html_run(tmp_path_factory):
    """One report (the original's method, one statistic: fast) on the models of :data:`SIZES`."""
    root = tmp_path_factory.mktemp("html")
    dataset = sized_dataset(root / "ds")
    outputs = run_report(
        str(dataset), "syn", root / "out", params=Params(method="original", stats=("MEAN",)), jobs=1, progress=False
    )
    return outputs


# ---------------------------------------------------------------- the page, without a browser


@pytest.mark.slow
def test_html_is_offline_and_lists_every_table_and_figure(html_run):
    page = (html_run.family_dir / "index.html").read_text(encoding="utf-8")
    # no CDN: no script, stylesheet or module import from a URL
    assert not re.search(r"<script[^>]*\bsrc=", page)
    assert not re.search(r"<link[^>]*href=[\"']?https?:", page)
    assert not re.search(r"import[^;\n]*from\s*['\"]https?:", page)
    assert "Plotly.newPlot" in page and "_itables_" in page  # both libraries embedded
    for name, path in html_run.tables.items():
        assert f'id="table-{name}"' in page and f'href="{path}"' in page
    figures = [p for paths in html_run.figures.values() for p in paths]
    assert figures and all(f'src="{p}"' in page for p in figures)
    assert all((html_run.family_dir / p).is_file() for p in figures)
    # models listed by size, not by name
    listed = re.search(r"ordered by size\): (.*?)</li>", page).group(1)
    assert re.findall(r"<code>(.*?)</code>", listed) == SIZE_ORDER


@pytest.mark.slow
def test_models_ordered_by_size_not_name(html_run):
    frame = pd.concat(
        [
            pd.DataFrame(synthetic_columns(m, "syn", n_layers=s[0], n_heads=s[1], d_head=16)).assign(d_model=s[2])
            for m, s in SIZES.items()
        ]
    )
    assert html_report.size_order(frame) == SIZE_ORDER != sorted(SIZES)
    legacy = frame.assign(d_model=None)  # no d_model (legacy imports): heads x d_head for every model
    heads = {m: SIZES[m][0] * SIZES[m][1] for m in SIZES}
    assert html_report.size_order(legacy) == sorted(SIZES, key=lambda m: (heads[m], m))
    shares = pd.read_csv(html_run.family_dir / "tables" / "taxonomy_shares_model.csv")
    assert list(dict.fromkeys(html_report.in_display_order(shares, SIZE_ORDER)["model"])) == SIZE_ORDER


def test_embedding_table_matches_the_classifier():
    rows = pd.DataFrame(synthetic_columns("org/x", "syn", n_layers=3, n_heads=8, d_head=16))
    fitted = taxonomy.SpectralHeadClassifier(n_clusters=3).fit(np.stack(rows["eigenvalues"]))
    table = html_report.embedding_table("org/x", rows, fitted)
    assert list(table.columns) == [
        "model",
        "variant",
        "circuit",
        "layer",
        "head",
        "class",
        "x",
        "y",
    ]  # circuit: v4 rows
    assert (table["class"].to_numpy() == fitted.labels_).all()
    assert np.array_equal(table[["x", "y"]].to_numpy(), fitted.embedding_)
    assert table[["layer", "head"]].values.tolist() == rows[["layer", "head"]].values.tolist()


# ---------------------------------------------------------------- the page in a real browser


def _browser() -> str | None:
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


class DevTools:
    """A minimal Chrome DevTools Protocol client over one page's websocket; records JavaScript errors."""

    def __init__(self, url: str, timeout: float):
        import websocket

        self.ws = websocket.create_connection(url, timeout=timeout, suppress_origin=True)
        self.next_id = 0
        self.errors: list[str] = []

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                assert "error" not in message, message["error"]
                return message["result"]
            self._record(message)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def _record(self, message: dict) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append(details.get("exception", {}).get("description") or details.get("text", "?"))
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            self.errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append(f"{params['entry']['text']} {params['entry'].get('url', '')}")

    def drain(self) -> None:
        """Read the events still queued (errors logged after the last call)."""
        self.ws.settimeout(0.5)
        try:
            while True:
                self._record(json.loads(self.ws.recv()))
        except Exception:  # the websocket timed out: nothing more queued
            pass


@pytest.fixture(scope="module")
def browser_page(html_run, tmp_path_factory):
    """index.html opened in headless Chromium over the DevTools protocol, after its render marker is set."""
    executable = _browser()
    if executable is None:
        pytest.skip("no chromium on PATH (CI installs Debian's chromium in .ci/run)")
    pytest.importorskip("websocket")
    profile = Path(tempfile.mkdtemp(prefix="qk-chromium-"))
    process = subprocess.Popen(
        [
            executable,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "--window-size=1400,1000",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            assert process.poll() is None and time.monotonic() < deadline, "chromium did not start"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30))
        page = DevTools(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"], timeout=60)
        for domain in ("Runtime", "Log", "Page"):
            page.call(f"{domain}.enable")
        page.call("Page.navigate", url=(html_run.family_dir / "index.html").resolve().as_uri())
        deadline = time.monotonic() + 90
        status = "#render-status"
        while (
            page.evaluate(f"document.querySelector('{status}') && document.querySelector('{status}').dataset.ready")
            != "yes"
        ):
            assert time.monotonic() < deadline, page.evaluate(
                f"JSON.stringify(document.querySelector('{status}').dataset)"
            )
            time.sleep(0.2)
        shot = base64.b64decode(page.call("Page.captureScreenshot", format="png")["data"])
        (tmp_path_factory.getbasetemp() / "report_screenshot.png").write_bytes(shot)
        yield page, shot
        page.ws.close()
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.browser
def test_browser_renders_plot_tables_and_figures_without_errors(browser_page, html_run):
    from PIL import Image

    page, shot = browser_page
    state = json.loads(page.evaluate("JSON.stringify(document.getElementById('render-status').dataset)"))
    assert state["plot"] == "1"
    assert int(state["tables"]) == len(html_run.tables)
    n_figures = sum(len(v) for v in html_run.figures.values())
    assert state["images"] == f"{n_figures}/{n_figures}"
    points = page.evaluate("document.querySelectorAll('#embedding-plot .scatterlayer path.point').length")
    assert points == SIZES[SIZE_ORDER[0]][0] * SIZES[SIZE_ORDER[0]][1]  # the first model (the smallest) is shown
    image = Image.open(io.BytesIO(shot)).convert("RGB")
    assert image.size[0] == 1400 and image.size[1] > 500 and len(set(image.getdata())) > 50  # a drawn page
    page.drain()
    assert page.errors == []


@pytest.mark.slow
@pytest.mark.browser
def test_hover_shows_model_layer_head_class_variant(browser_page):
    page, _ = browser_page
    box = json.loads(
        page.evaluate(
            "(() => { const p = document.querySelector('#embedding-plot .scatterlayer path.point');"
            " p.scrollIntoView({block: 'center'}); const r = p.getBoundingClientRect();"
            " return JSON.stringify({x: r.x + r.width / 2, y: r.y + r.height / 2}); })()"
        )
    )
    page.call("Input.dispatchMouseEvent", type="mouseMoved", x=box["x"], y=box["y"])
    deadline, text = time.monotonic() + 10, ""
    while not text and time.monotonic() < deadline:
        time.sleep(0.2)
        text = page.evaluate("(document.querySelector('#embedding-plot .hoverlayer') || {}).textContent || ''")
    assert re.search(rf"model: {re.escape(SIZE_ORDER[0])}layer: \d+head: \d+class: \d+variant: raw", text), text


@pytest.mark.slow
@pytest.mark.browser
def test_tables_sort_on_header_click(browser_page):
    page, _ = browser_page
    column = "(() => Array.from(document.querySelectorAll('#table-labels tbody tr td:nth-child(4)')).map(td => td.textContent))()"
    click = "document.querySelector('#table-labels thead th:nth-child(4) .dt-column-order').click()"  # the layer column's sort icon (model, variant, circuit, layer)
    page.evaluate(click)
    ascending = [int(v) for v in page.evaluate(column)]
    page.evaluate(click)
    descending = [int(v) for v in page.evaluate(column)]
    assert ascending == sorted(ascending) and descending == sorted(descending, reverse=True)
    assert descending[0] > ascending[0]


# ---------------------------------------------------------------- figures


def _rows(n_layers: int, n_heads: int, seed: int = 0) -> pd.DataFrame:
    return pd.DataFrame(synthetic_columns("org/m", "syn", n_layers=n_layers, n_heads=n_heads, d_head=8, seed=seed))


def _tick_labels_apart(fig, axis) -> bool:
    """No two visible tick labels of ``axis`` overlap once drawn."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in axis.get_ticklabels() if t.get_visible() and t.get_text()]
    return all(not a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])


@pytest.mark.slow
@pytest.mark.parametrize("n_layers", [72, 126])
def test_box_plot_titles_legend_and_readable_layer_ticks(n_layers):
    result = layer_boxplots.layer_stat(_rows(n_layers, 4), "MEAN", skip_layers_below=2)
    with plots.style():
        fig = layer_boxplot_figures.layer_stat_figure(result)
        ax = fig.axes[0]
        assert ax.get_xlabel() == "layer" and "mean eigenvalue" in ax.get_ylabel() and "λ" in ax.get_ylabel()
        assert "mean eigenvalue" in ax.get_title() and "BDS" in ax.get_title()
        assert {t.get_text() for t in ax.get_legend().get_texts()} >= {
            "median",
            "mean",
            "smoothing spline of the means",
        }
        ticks = [t for t in ax.get_xticks() if 2 <= t <= n_layers - 1]
        assert 3 <= len(ticks) < n_layers - 2 and all(float(t).is_integer() for t in ticks)  # thinned, whole layers
        assert _tick_labels_apart(fig, ax.xaxis)


def test_cluster_colours_match_between_embedding_and_panels():
    from matplotlib.colors import to_hex

    rows = _rows(10, 8)
    fitted = taxonomy.SpectralHeadClassifier(n_clusters=4).fit(np.stack(rows["eigenvalues"]))
    colors = plots.class_colors(4)
    with plots.style():
        fig = class_figures.clusters_figure(fitted, "org/m")
    big, panels = fig.axes[0], fig.axes[1:5]
    point_colors = [to_hex(c) for c in big.collections[0].get_facecolors()]
    assert point_colors == [colors[k] for k in fitted.labels_]
    legend = [t.get_text() for t in big.get_legend().get_texts()]
    assert legend == [f"Class {k.klass} (n={k.n_heads})" for k in fitted.class_fits_]
    for ax, klass in zip(panels, fitted.class_fits_):
        assert {to_hex(p.get_facecolor()) for p in ax.patches} == {colors[klass.klass]}
        assert f"n={klass.n_heads}" in ax.get_title() and ax.get_xlabel() and ax.get_ylabel() == "density"
    assert big.get_xlabel().startswith("principal component 1")
    assert any("gamma" in t.get_text() for t in fig.legends[0].get_texts())


def _joint(n_models: int):
    models = [
        taxonomy.ModelHeads(
            f"org/m{i}", np.stack(_rows(2, 4, seed=i)["eigenvalues"]), np.repeat([0, 1], 4), np.tile(np.arange(4), 2), 2
        )
        for i in range(n_models)
    ]
    return taxonomy.joint_taxonomy(models, n_bands=3), [m.model_id for m in models][::-1]


@pytest.mark.slow
def test_taxonomy_heat_maps_in_given_order_with_titled_colour_bars():
    joint, order = _joint(4)
    with plots.style():
        classes = class_figures.plot_taxonomy_classes(joint, None, order=order)
        depth = class_figures.plot_taxonomy_depth(joint, None, order=order)
    heat = classes.axes[0]
    assert [t.get_text() for t in heat.get_yticklabels()] == order  # the given order (by size), top to bottom
    assert heat.get_xlabel() and heat.get_ylabel()
    for fig in (classes, depth):
        colorbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
        assert colorbars and all(ax.get_ylabel() for ax in colorbars)
    assert [t.get_text() for t in depth.axes[0].get_yticklabels()] == order


@pytest.mark.slow
def test_heat_map_model_labels_thinned_at_many_models():
    joint, order = _joint(72)
    with plots.style():
        classes = class_figures.plot_taxonomy_classes(joint, None, order=order)
    heat = classes.axes[0]
    labels = [t.get_text() for t in heat.get_yticklabels()]
    assert 2 <= len(labels) < 72 and labels == [m for m in order if m in labels]
    assert _tick_labels_apart(classes, heat.yaxis)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["png", "pdf", "svg"])
def test_figure_formats_and_dpi_are_reproducible(tmp_path, fmt):
    from PIL import Image

    result = layer_boxplots.layer_stat(_rows(6, 4), "MEAN")
    first, again = tmp_path / f"a.{fmt}", tmp_path / f"b.{fmt}"
    layer_boxplot_figures.plot_layer_stats([result], [first], dpi=50)
    layer_boxplot_figures.plot_layer_stats([result], [again], dpi=50)
    assert first.read_bytes() == again.read_bytes()  # no timestamps
    head = first.read_bytes()[:200]
    if fmt == "png":
        assert Image.open(first).size == (20 * 50, 8 * 50)
    else:
        assert head.startswith(b"%PDF") if fmt == "pdf" else b"<svg" in first.read_bytes()[:2000]


def test_format_and_dpi_flags(tmp_path, analyze_cli, capsys):
    dataset = sized_dataset(tmp_path / "ds", models=("org/m-0.6B",))
    common = ["boxplots", "--dataset", str(dataset), "--family", "syn", "--stats", "MEAN", "--quiet"]
    assert analyze_cli([*common, "--out", str(tmp_path / "o"), "--format", "svg", "--dpi", "72"]) == 0
    assert (tmp_path / "o" / "syn" / "plots" / "MEAN" / "org--m-0.6B_MEAN_box.svg").is_file()
    capsys.readouterr()
    for flags, message in ((("--format", "bmp"), "unknown figure format 'bmp'"), (("--dpi", "0"), "--dpi must be")):
        assert analyze_cli([*common, "--out", str(tmp_path / "o2"), *flags]) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not list((tmp_path / "o2").rglob("*.*"))  # stopped before any work
    with pytest.raises(AnalysisError):
        Params(format="jpeg")


@pytest.mark.slow
def test_report_writes_every_figure_in_the_chosen_format(tmp_path, analyze_cli, capsys):
    """--format svg reaches every figure of the default report (the consensus figures included), none left in PNG."""
    dataset = sized_dataset(tmp_path / "ds", models=("org/m-0.6B",))
    out = tmp_path / "o"
    assert (
        analyze_cli(
            [
                "report",
                "--dataset",
                str(dataset),
                "--family",
                "syn",
                "--stats",
                "MEAN",
                "--quiet",
                "--out",
                str(out),
                "--format",
                "svg",
            ]
        )
        == 0
    )
    figures = [p for p in (out / "syn").rglob("*") if p.suffix in (".png", ".svg", ".pdf")]
    assert any(p.parent.name == "consensus" for p in figures)
    assert figures and all(p.suffix == ".svg" for p in figures), sorted(p.name for p in figures if p.suffix != ".svg")
