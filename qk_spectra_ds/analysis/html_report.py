"""``index.html``: the report to explore in a browser, self-contained and offline.

One page beside ``index.md`` (template ``templates/index.html``) with:

- an interactive 2-D embedding of the heads (plotly), one model at a time
  (menu), coloured by class with the static figures' colours
  (:func:`plots.class_colors`); hovering a point shows model, layer, head,
  class and variant;
- every table the run wrote (``Outputs.tables``, so tables added by other
  stages appear without changes here) as a sortable, searchable DataTable
  (itables), rows in the models' display order (by size);
- every figure the run wrote, linked relatively (PNG/SVG shown, PDF linked).

No CDN: plotly.js and the DataTables bundle come from their Python packages
(``plotly``, ``itables``) and are embedded in the page. After the plot and the
tables have rendered, the page's script sets ``data-ready="yes"`` on
``#render-status`` (the browser test reads it).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import __version__
from ..atomic import write_text
from . import plots, summary
from .taxonomy import EMBEDDINGS

# plotly and itables (about 1 s together) are imported where a page is written, not with the report's modules.

HTML_TEMPLATE = "index.html"
_TEMPLATES = Path(__file__).parents[1] / "templates"

EMBEDDING_DIV = "embedding-plot"
PAGE_LENGTH = 10

TABLE_DESCRIPTIONS = {
    "classes": "classification A, per model: class, n_heads, gamma alpha/theta, JSD",
    "labels": "classification A, per head: model, layer, head, class",
    "bds": "classification B, per model and statistic: BDS statistic and p-value of the per-layer medians",
    "positional": "positional spectra, per head: spectral norm at each query-key offset relative to offset 0 "
    "(norm_ratio_<delta>) and the dataset's summaries",
    "taxonomy_classes": "joint taxonomy: classes over all models (n_heads, share, alpha, theta, JSD)",
    "taxonomy_labels": "joint taxonomy, per head: model, layer, head, depth band, class",
    "taxonomy_shares_model": "joint taxonomy: share of each model's heads per class",
    "taxonomy_shares_depth": "joint taxonomy: share of each (model, relative-depth band)'s heads per class",
}
"""What each known table holds; tables of other stages are shown under their own name."""

IMAGE_SUFFIXES = (".png", ".svg")


def embedding_table(model_id: str, rows: pd.DataFrame, classifier) -> pd.DataFrame:
    """Columns model, variant, layer, head, class, x, y: one model's heads in the classifier's 2-D embedding.

    ``rows`` are the heads the classifier was fitted on, in the same order.
    Empty when the classifier has no embedding.
    """
    if getattr(classifier, "embedding_", None) is None:
        return pd.DataFrame(columns=["model", "variant", "layer", "head", "class", "x", "y"])
    emb = np.asarray(classifier.embedding_, dtype=np.float64)
    variant = rows["variant"].astype(str).to_numpy() if "variant" in rows else np.full(len(rows), "")
    table = pd.DataFrame(
        {
            "model": model_id,
            "variant": variant,
            "layer": rows["layer"].to_numpy(),
            "head": rows["head"].to_numpy(),
            "class": np.asarray(classifier.labels_),
            "x": emb[:, 0],
            "y": emb[:, 1],
        }
    )
    if "circuit" in rows:  # schema v4: which circuit's spectra (named in the figure's title)
        table.insert(2, "circuit", rows["circuit"].fillna("qk").astype(str).to_numpy())
    return table


def model_sizes(frame: pd.DataFrame) -> dict[str, float]:
    """A size per model from its shapes: ``n_layers * n_heads * d_head * d_model`` (the QK weights' element count).

    Where a model lacks ``d_model`` (legacy imports), every model falls back to
    heads x ``d_head`` (``n_layers * n_heads * d_head`` from its rows), so the
    sizes stay comparable within the frame.
    """
    sizes, fallback = {}, {}
    for model, rows in frame.groupby("model_id", sort=False):
        d_head = float(len(rows["eigenvalues"].iloc[0])) if "eigenvalues" in rows else float(rows["d_head"].iloc[0])
        fallback[model] = len(rows) * d_head
        n_layers, n_heads = rows.get("n_layers"), rows.get("n_heads")
        d_model = rows.get("d_model")
        shapes = [s.dropna() if s is not None else pd.Series(dtype=float) for s in (n_layers, n_heads, d_model)]
        if all(len(s) for s in shapes):
            sizes[model] = float(shapes[0].iloc[0]) * float(shapes[1].iloc[0]) * d_head * float(shapes[2].iloc[0])
    return sizes if len(sizes) == len(fallback) else fallback


def size_order(frame: pd.DataFrame) -> list[str]:
    """Model ids ordered by :func:`model_sizes` (smallest first), ties by id: the display order of every figure."""
    sizes = model_sizes(frame)
    return sorted(sizes, key=lambda m: (sizes[m], str(m)))


def display_rank(order: Sequence[str]) -> dict[str, int]:
    """model -> its position in the display order."""
    return {m: i for i, m in enumerate(order)}


def in_display_order(frame: pd.DataFrame, order: Sequence[str]) -> pd.DataFrame:
    """``frame`` with its rows stably sorted by model display order (unchanged without a ``model`` column)."""
    if "model" not in frame.columns or frame.empty:
        return frame
    rank = display_rank(order)
    key = frame["model"].map(lambda m: rank.get(m, len(rank)))
    return frame.iloc[np.argsort(key.to_numpy(), kind="stable")].reset_index(drop=True)


def embedding_figure(
    embedding: pd.DataFrame, order: Sequence[str], method: str | None, n_classes: int, analysis: str | None = None
):
    """A plotly figure: per model one trace per class (model chosen in a menu), hover = model/layer/head/class/variant.

    ``analysis``: the report's ``--method``, whose classes colour the points (named in the title).
    """
    import plotly.graph_objects as go

    colors = plots.class_colors(max(n_classes, int(embedding["class"].max()) + 1 if len(embedding) else 1))
    models = [m for m in order if (embedding["model"] == m).any()]
    fig = go.Figure()
    owner = []
    titles = {
        m: _embedding_title(
            m,
            method,
            embedding.loc[embedding["model"] == m, "variant"].unique(),
            analysis,
            _circuit(embedding[embedding["model"] == m]),
        )
        for m in models
    }
    for i, model in enumerate(models):
        part = embedding[embedding["model"] == model]
        for k in sorted(part["class"].unique()):
            sub = part[part["class"] == k]
            fig.add_trace(
                go.Scatter(
                    x=sub["x"],
                    y=sub["y"],
                    mode="markers",
                    name=f"class {k} (n={len(sub)})",
                    visible=i == 0,
                    marker={"color": colors[int(k)], "size": 7, "opacity": 0.8, "line": {"width": 0}},
                    customdata=np.column_stack([sub["layer"], sub["head"], sub["class"], sub["variant"]]),
                    hovertemplate=(
                        f"model: {html.escape(model)}<br>layer: %{{customdata[0]}}<br>head: %{{customdata[1]}}"
                        "<br>class: %{customdata[2]}<br>variant: %{customdata[3]}<extra></extra>"
                    ),
                )
            )
            owner.append(model)
    buttons = [
        {
            "label": model,
            "method": "update",
            "args": [{"visible": [o == model for o in owner]}, {"title.text": titles[model]}],
        }
        for model in models
    ]
    name = EMBEDDINGS.get(method, "embedding")
    unit = "principal component" if name == "PCA" else f"{name} dimension"
    fig.update_layout(
        title={"text": titles[models[0]] if models else "", "x": 0.5, "xanchor": "center"},
        xaxis_title=f"{unit} 1 (arbitrary units)",
        yaxis_title=f"{unit} 2 (arbitrary units)",
        legend_title_text="class (n heads)",
        template="plotly_white",
        height=620,
        margin={"t": 90},
        updatemenus=[
            {
                "buttons": buttons,
                "direction": "down",
                "x": 0.0,
                "xanchor": "left",
                "y": 1.2,
                "yanchor": "top",
                "showactive": True,
            }
        ]
        if len(models) > 1
        else [],
    )
    return fig


def _circuit(part: pd.DataFrame) -> str:
    """The circuit of an embedding table's rows (``qk`` without a circuit column: schema v1-v3 rows are QK rows)."""
    return "+".join(sorted(set(part["circuit"].astype(str)))) if "circuit" in part and len(part) else "qk"


def _embedding_title(
    model: str,
    method: str | None,
    variants: Sequence[str] = (),
    analysis: str | None = None,
    circuit: str | None = None,
) -> str:
    """The interactive figure's title for ``model``: which classes colour it, ending with the variant and circuit."""
    name = EMBEDDINGS.get(method, "embedding")
    classes = {"consensus": ", consensus classes", "original": ", the original method's KMeans classes"}.get(
        analysis or "", ""
    )
    return f"{model}: {name} of the heads' eigenvalue histograms{classes}{plots.variant_suffix(sorted(map(str, variants)) or None, circuit)}"


def _table_html(name: str, frame: pd.DataFrame) -> str:
    """A sortable, searchable DataTable of ``frame`` (itables, offline: the bundle is loaded once by the page)."""
    from itables import to_html_datatable

    return to_html_datatable(
        frame,
        connected=False,
        maxBytes=0,
        maxColumns=0,
        table_id=f"table-{name}",
        display_logo_when_loading=False,
        classes="display compact cell-border",
        pageLength=PAGE_LENGTH,
        layout={"topStart": "pageLength", "topEnd": "search", "bottomStart": "info", "bottomEnd": "paging"},
    )


def _datatables_bundle() -> str:
    """The script that loads itables' DataTables bundle (JS and CSS shipped in the itables package) into the page."""
    import itables
    from itables.javascript import generate_init_offline_itables_html

    return generate_init_offline_itables_html(Path(itables.__file__).parent / "html" / "dt_bundle.js")


def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def _figure_groups(
    figures: dict[str, list[str]], order: Sequence[str], family_dir: Path | None = None
) -> list[dict[str, Any]]:
    """Figures grouped for the page: joint taxonomy, then each model (display order), then any other stage's."""
    groups = []
    if figures.get("taxonomy"):
        groups.append({"title": "Joint taxonomy", "figures": figures["taxonomy"]})
    models = [m for m in order if figures.get(m)]
    groups += [{"title": m, "figures": figures[m]} for m in models]
    groups += [
        {"title": key, "figures": paths}
        for key, paths in figures.items()
        if key != "taxonomy" and key not in models and paths
    ]
    for group in groups:
        group["figures"] = [_figure_entry(p, family_dir) for p in group["figures"]]
    return groups


def _figure_entry(path: str, family_dir: Path | None) -> dict[str, Any]:
    """How the page shows one figure: PNG/SVG inline; a PDF by its PNG preview (:func:`plots.preview_path`) when written."""
    suffix = Path(path).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return {"path": path, "image": True, "src": path}
    preview = plots.preview_path(path).as_posix() if suffix == ".pdf" else None
    if preview is not None and family_dir is not None and (Path(family_dir) / preview).is_file():
        return {"path": path, "image": True, "src": preview}
    return {"path": path, "image": False, "src": None}


def render_html(
    outputs,
    family: str,
    dataset: str,
    revision: str | None,
    parameters: dict[str, Any],
    frame: pd.DataFrame,
    order: Sequence[str],
) -> str:
    """The text of ``index.html``: provenance, the interactive embedding, every table and every figure of ``outputs``."""
    import jinja2

    embedding = outputs.frames.get("embedding")
    plot_html = None
    if embedding is not None and len(embedding):
        n_classes = int(parameters.get("n_clusters", 0) or 0)
        fig = embedding_figure(embedding, order, parameters.get("embedding"), n_classes, parameters.get("method"))
        plot_html = fig.to_html(
            full_html=False,
            include_plotlyjs=False,
            div_id=EMBEDDING_DIV,
            config={"responsive": True, "displaylogo": False},
        )
    tables = []
    for name, path in outputs.tables.items():
        table = in_display_order(pd.read_csv(outputs.family_dir / path), order)
        tables.append(
            {
                "name": name,
                "path": path,
                "description": TABLE_DESCRIPTIONS.get(name, ""),
                "rows": len(table),
                "html": _table_html(name, table),
            }
        )
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    text = env.get_template(HTML_TEMPLATE).render(
        family=family,
        dataset=dataset,
        revision=revision,
        version=__version__,
        n_heads=len(frame),
        variants=sorted(map(str, frame["variant"].unique())) if len(frame) else [],
        parameters=parameters,
        models=list(order),
        plot_html=plot_html,
        plot_div=EMBEDDING_DIV,
        plotly_js=_plotly_js() if plot_html else "",
        datatables=_datatables_bundle() if tables else "",
        tables=tables,
        figure_groups=_figure_groups(outputs.figures, order, outputs.family_dir),
        summary_html=_summary_html(outputs, order),
    )
    return text.rstrip() + "\n"


def _summary_html(outputs, order: Sequence[str]) -> str:
    """The run's summary (:mod:`.summary`) as HTML, from the tables it wrote; '' when it wrote none."""
    lines = summary.summarize(summary.read_tables(outputs.family_dir, outputs.tables), outputs.tables, order)
    return summary.to_html(lines) if lines else ""


def write_html(
    outputs,
    family: str,
    dataset: str,
    revision: str | None,
    params,
    frame: pd.DataFrame,
    order: Sequence[str] | None = None,
) -> Path:
    """Write ``<family_dir>/index.html`` atomically; ``order``: models in display order (default: by size)."""
    order = list(order) if order is not None else size_order(frame)
    order += [m for m in outputs.models if m not in order]
    parameters = {k: ",".join(v) if isinstance(v, tuple) else v for k, v in asdict(params).items()}
    path = outputs.family_dir / "index.html"
    return write_text(path, render_html(outputs, family, dataset, revision, parameters, frame, order))
