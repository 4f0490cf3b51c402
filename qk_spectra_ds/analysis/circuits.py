"""QK and OV side by side (issue 21): each head's QK metrics against its OV copying score.

A head's QK circuit decides where it looks, its OV circuit what it writes. This
module selects the other circuit's rows, has :mod:`.circuit_tables` pair the two
rows of each head (schema v4, ``circuit`` qk|ov, same model, variant, layer and
head) and :mod:`.circuit_figures` draw them, and writes the report's "QK and OV"
section:

- ``tables/circuit_heads.csv``: one row per head, its QK metrics, its OV copying
  score and z-score against the matched null, its class (the run's classes) and
  its role: ``copying`` (``copying_score_z`` > 3), ``suppression`` (< -3) or ``''``;
- ``tables/copying_heads.csv`` and ``tables/suppression_heads.csv``: those heads;
- ``tables/circuit_depth.csv``: the joint distribution by relative-depth band;
- ``tables/qk_ov.csv``: per model, the counts and a ``conclusion`` sentence that
  the report's summary (:mod:`.summary`) quotes;
- ``circuits/<model>.<fmt>`` (QK positivity and stable rank against the OV
  copying score, heads coloured by class) and ``circuits/depth.<fmt>``.

|z| > 3 is a per-head threshold, not a test corrected for the number of heads:
the model table states how many heads it would flag by chance if z were
standard normal under the null. The rank correlation between QK positivity and
OV copying score is descriptive (heads of one layer are not independent), never
a p-value. Which circuit rows hold, for titles and the ``circuit`` column of
every table: :func:`.circuit_tables.circuit_of`, :func:`.circuit_tables.label_tables`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from .. import schema
from ..errors import AnalysisError
from ..markdown_text import md_text
from ..naming import model_slug
from . import plots
from .circuit_figures import depth_figure, scatter_figure
from .circuit_tables import (
    ROLE_COPYING,
    ROLE_SUPPRESSION,
    Z_THRESHOLD,
    circuit_of,
    depth_table,
    model_table,
    pair_heads,
    role_table,
)
from .loading import select_spectra
from .report_index import format_value
from .table_files import TABLES, write_table

SECTION_TABLES = ("circuit_heads", "copying_heads", "suppression_heads", "circuit_depth", "qk_ov")
"""The tables the section writes (``tables/<name>.csv`` and ``.parquet``)."""


def load_circuit_rows(source, frame: pd.DataFrame, circuit: str) -> pd.DataFrame | None:
    """The rows of ``circuit`` for the models and variants of ``frame``; None when the dataset holds none.

    ``source``: the config the report read once (:class:`~.reading.LoadedConfig`). One selection per variant of
    ``frame`` (each model has one). Frames without a ``circuit`` column come from schema v1-v3 files only, which
    hold qk rows: nothing is selected for them.
    """
    if "circuit" not in frame.columns and circuit != schema.CIRCUIT_QK:
        return None
    parts = []
    for variant, rows in frame.groupby("variant", sort=True):
        models = list(dict.fromkeys(rows["model_id"].astype(str)))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                parts.append(
                    select_spectra(source, models=models, variant=str(variant), skip_nonfinite=True, circuit=circuit)
                )
        except AnalysisError:  # no such rows (schema v1-v3 files, a qk-only build, a legacy variant)
            continue
    return pd.concat(parts, ignore_index=True) if parts else None


# ---------------------------------------------------------------- the report's section


def _markdown_table(frame: pd.DataFrame, columns: Sequence[str], limit: int | None = None) -> list[str]:
    shown = frame if limit is None else frame.head(limit)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in shown.iterrows():
        lines.append("| " + " | ".join(md_text(format_value(row[c], c)) for c in columns) + " |")
    return lines


def section_markdown(
    models: pd.DataFrame,
    copying: pd.DataFrame,
    suppression: pd.DataFrame,
    figures: Sequence[str],
    links: Mapping[str, str],
    class_label: str,
    limit: int = 20,
) -> str:
    """The report's "QK and OV" section: what it shows, the per-model counts, the heads of each role, the figures."""
    lines = [
        "## QK and OV",
        "",
        (
            f"Each head's QK circuit (where it looks) beside its OV circuit (what it writes), paired by model, variant, "
            f"layer and head ([per head]({links['circuit_heads']}), [by depth]({links['circuit_depth']})). "
            f"Copying heads have an OV copying score beyond its matched null (copying_score_z > {Z_THRESHOLD:g}), "
            f"suppression heads below it (< -{Z_THRESHOLD:g}); this is a per-head threshold, not corrected for the "
            f"number of heads: the table says how many a model would show by chance if z were standard normal. "
            f"Points are coloured by {class_label}; the rank correlation is descriptive."
        ),
        "",
    ]
    lines += _markdown_table(
        models,
        [
            "model",
            "variant",
            "n_tested",
            "n_copying",
            "n_suppression",
            "expected_by_chance_per_side",
            "ov_copying_score_median",
            "spearman_qk_positivity_ov_copying",
        ],
    ) + [""]
    columns = ["model", "variant", "layer", "head", "class", "ov_copying_score", "ov_copying_score_z", "qk_positivity"]
    for title, table, name in (
        ("Copying heads", copying, "copying_heads"),
        ("Suppression heads", suppression, "suppression_heads"),
    ):
        more = f", the first {limit} shown" if len(table) > limit else ""
        lines += [f"### {title}", "", f"{len(table)} head(s) ([{Path(links[name]).name}]({links[name]}){more}).", ""]
        if len(table):
            lines += _markdown_table(table, columns, limit) + [""]
    for figure in figures:
        lines += [f"![{Path(figure).stem}]({figure})", ""]
    return "\n".join(lines)


def _remove_section_tables(tables_dir: Path) -> list[str]:
    """Remove the section's tables an earlier report left (they would sit beside a run without OV rows)."""
    removed = []
    for name in SECTION_TABLES:
        for suffix in (".csv", ".parquet"):
            path = Path(tables_dir) / f"{name}{suffix}"
            if path.is_file():
                path.unlink()
                removed.append(path.name)
    return removed


def class_labels(frames: Mapping[str, pd.DataFrame]) -> pd.DataFrame | None:
    """The run's per-model classes: the default method's consensus labels, else the original method's labels."""
    for name in ("consensus_labels", "labels"):
        table = frames.get(name)
        if table is not None and len(table):
            return table
    return None


def store_circuits(
    outputs,
    frame: pd.DataFrame,
    source,
    family: str,
    params,
    log: Callable[[str], None] | None = None,
    order: Sequence[str] | None = None,
) -> str | None:
    """The report's hook: the section's tables and figures, and its Markdown; None (one log line) without OV rows.

    ``frame``: the rows the report analysed (one circuit); the other circuit is selected from ``source`` (the config
    read once, :class:`~.reading.LoadedConfig`) for the same models and variants.
    """
    circuit = circuit_of(frame)
    other = schema.CIRCUIT_OV if circuit == schema.CIRCUIT_QK else schema.CIRCUIT_QK
    other_rows = load_circuit_rows(source, frame, other)
    if other_rows is None or not len(other_rows):
        stale = _remove_section_tables(outputs.family_dir / TABLES)
        if log is not None:
            log(
                f"QK and OV: no {other} rows for these models in the dataset (schema v1-v3, or built with --circuits "
                f"{circuit}): no section" + (f"; removed an earlier run's {', '.join(stale)}" if stale else "")
            )
        return None
    qk, ov = (frame, other_rows) if circuit == schema.CIRCUIT_QK else (other_rows, frame)
    n_bands = int(getattr(params, "n_bands", 5))
    paired = pair_heads(qk, ov, class_labels(outputs.frames), n_bands)
    if not len(paired):
        if log is not None:
            log("QK and OV: no head has rows of both circuits in the same variant: no section")
        return None
    tables = {
        "circuit_heads": paired,
        "copying_heads": role_table(paired, ROLE_COPYING),
        "suppression_heads": role_table(paired, ROLE_SUPPRESSION),
        "circuit_depth": depth_table(paired, n_bands),
        "qk_ov": model_table(paired),
    }
    for name, table in tables.items():
        write_table(table, outputs.family_dir / TABLES / f"{name}.csv")
        outputs.tables[name] = f"{TABLES}/{name}.csv"
        outputs.frames[name] = table
    class_label = f"{circuit.upper()} class"
    figures = []
    fmt, dpi = getattr(params, "format", "png"), getattr(params, "dpi", plots.DEFAULT_DPI)
    with plots.style():
        for (model, variant), heads in paired.groupby(["model", "variant"], sort=False):
            relative = f"circuits/{model_slug(str(model))}.{fmt}"
            (outputs.family_dir / relative).parent.mkdir(parents=True, exist_ok=True)
            plots.save_figure(
                scatter_figure(heads, str(model), class_label, str(variant)), outputs.family_dir / relative, dpi
            )
            figures.append(relative)
            outputs.figures.setdefault(str(model), []).append(relative)
        relative = f"circuits/depth.{fmt}"
        plots.save_figure(depth_figure(paired, family, list(order or [])), outputs.family_dir / relative, dpi)
        figures.append(relative)
        outputs.figures.setdefault("circuits", []).append(relative)
    if log is not None:
        log(
            f"QK and OV: {len(paired)} heads paired, {len(tables['copying_heads'])} copying and "
            f"{len(tables['suppression_heads'])} suppression heads (|copying_score_z| > {Z_THRESHOLD:g})"
        )
    return section_markdown(
        tables["qk_ov"], tables["copying_heads"], tables["suppression_heads"], figures, outputs.tables, class_label
    )
