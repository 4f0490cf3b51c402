"""``index.md``: the run's provenance, summary, tables and figures, rendered from the jinja2 template
``templates/index.md``; numbers formatted as the original figures print them (:func:`format_value`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from .. import __version__
from ..atomic import write_text
from ..markdown_text import md_code, md_text
from . import html_report, summary
from .model_analysis import model_variants
from .report_params import Params
from .report_tables import JOINT_CONSENSUS_TABLES, Outputs

_FORMATS = {
    "alpha": "{:.2f}",
    "theta": "{:.2f}",
    "jsd": "{:.3f}",
    "share": "{:.1%}",
    "bds": "{:.2f}",
    "p_value": "{:.2e}",
    "p_bds_asymptotic": "{:.2e}",
    "p_bds_permutation_holm": "{:.3f}",
    "p_trend_permutation_holm": "{:.3f}",
}
"""As the original figures print them: alpha/theta to 2 decimals, JSD to 3, BDS 2, p-values 2e."""


INDEX_TEMPLATE = "index.md"


_TEMPLATES = Path(__file__).parents[1] / "templates"


def format_value(value: Any, column: str = "") -> str:
    """A table cell or number for the index: floats by column (:data:`_FORMATS`, else 4 significant digits), NaN as NaN."""
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            return "NaN"
        return _FORMATS.get(column, "{:.4g}").format(value)
    return str(value)


def _model_section(model: str, figures: list[str], classes: pd.DataFrame | None, bds: pd.DataFrame | None) -> dict:
    """What the index shows of one model: its ESD figure, class table and box plots with their BDS."""
    boxes = []
    for path in (f for f in figures if f.startswith("plots/")):
        stat = Path(path).parent.name
        row = bds[(bds["model"] == model) & (bds["stat"] == stat)] if bds is not None else []
        found = len(row) > 0
        boxes.append(
            {
                "stat": stat,
                "path": path,
                "bds": float(row["bds"].iloc[0]) if found else None,
                "p_value": float(row["p_value"].iloc[0]) if found else None,
            }
        )
    esd = [f for f in figures if f.startswith("ESDs/")]
    return {
        "id": model,
        "esd": esd[0] if esd else None,
        "classes": None
        if classes is None
        else classes[classes["model"] == model].drop(columns=["model", "variant", "circuit"], errors="ignore"),
        "boxes": boxes,
    }


def _rows_of(outputs: Outputs, name: str, model: str, columns: Sequence[str]) -> pd.DataFrame | None:
    """The rows of table ``name`` for ``model``, these ``columns`` (None when the run has no such table)."""
    table = outputs.frames.get(name)
    if table is None or not len(table):
        return None
    rows = table[table["model"] == model]
    return rows[[c for c in columns if c in rows.columns]] if len(rows) else None


def _consensus_section(outputs: Outputs, model: str) -> dict:
    """What the index shows of a model's default-method results (empty under --method original)."""
    figure = [f for f in outputs.figures.get(model, []) if f.startswith("consensus/") and "_class_profiles." not in f]
    profiles = [f for f in outputs.figures.get(model, []) if f.startswith("consensus/") and "_class_profiles." in f]
    by_offset = [f for f in outputs.figures.get(model, []) if f.startswith("positional/")]
    scan = _rows_of(outputs, "k_selection", model, ["k", "stability_ari_mean", "silhouette", "chosen"])
    chosen = None if scan is None else int(scan.loc[scan["chosen"], "k"].iloc[0])
    return {
        "figure": figure[0] if figure else None,
        "positional": by_offset[0] if by_offset else None,
        "class_profiles": profiles[0] if profiles else None,
        "maps": [f for f in outputs.figures.get(model, []) if f.startswith("maps/")],
        "k": chosen,
        "classes": _rows_of(
            outputs, "consensus_classes", model, ["class", "name", "n_heads", "share", "confidence_mean"]
        ),
        "structure": _rows_of(
            outputs,
            "structure",
            model,
            ["statistic", "null_median", "null_q05", "p_value", "n_draws", "seed", "conclusion", "k"],
        ),
        "metrics": _rows_of(
            outputs,
            "class_metrics",
            model,
            [
                "class",
                "metric",
                "class_median",
                "class_q25",
                "class_q75",
                "others_median",
                "auc_vs_others",
                "auc_low",
                "auc_high",
            ],
        ),
        "stability": _rows_of(
            outputs, "stability", model, ["perturbation", "n", "ari_median", "ari_min", "ari_q05", "ari_q95"]
        ),
        "null": _rows_of(
            outputs,
            "null_classes",
            model,
            [
                "class",
                "n_heads",
                "median_ks_distance",
                "ks_excess",
                "ks_excess_low",
                "ks_excess_high",
                "median_fraction_outside",
                "share_beyond_null",
                "mc_ks_q99",
                "mc_ks_q99_low",
                "mc_ks_q99_high",
                "distinguishable_from_gaussian",
                "distinguishable_from_null_variant",
            ],
        ),
        "variants": _rows_of(
            outputs, "variants_ari", model, ["variant_a", "variant_b", "n_heads", "k_a", "k_b", "ari"]
        ),
        "tests": _rows_of(
            outputs,
            "layer_tests",
            model,
            [
                "stat",
                "n_layers",
                "bds",
                "p_bds_permutation_holm",
                "p_bds_permutation_holm_all",
                "trend_rho",
                "trend_rho_low",
                "trend_rho_high",
                "p_trend_permutation_holm",
                "p_trend_permutation_holm_all",
                "profile_r2",
                "p_profile_permutation_holm",
                "p_profile_permutation_holm_all",
                "survives",
                "note",
            ],
        ),
        "power": _rows_of(outputs, "layer_tests", model, ["power_note"]),
    }


def render_index(
    outputs: Outputs, family: str, dataset: str, revision: str | None, params: Params, frame: pd.DataFrame
) -> str:
    """The text of ``index.md`` (template ``templates/index.md``): the run's provenance, tables and figures."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
    )
    env.filters["fmt"] = format_value
    env.filters["md"], env.filters["code"] = md_text, md_code  # user text (model ids, names) shown as itself
    joint = outputs.frames.get("taxonomy_classes")
    variants = model_variants(frame) if len(frame) else {}
    text = env.get_template(INDEX_TEMPLATE).render(
        family=family,
        dataset=dataset,
        revision=revision,
        version=__version__,
        n_heads=len(frame),
        variants=sorted(map(str, frame["variant"].unique())) if len(frame) else [],
        parameters={k: ",".join(v) if isinstance(v, tuple) else v for k, v in asdict(params).items()},
        tables=outputs.tables,
        joint_classes=None if joint is None else joint.drop(columns=["variant", "circuit"], errors="ignore"),
        joint_variant=None
        if joint is None or "variant" not in joint
        else "+".join(sorted(set(map(str, joint["variant"])))),
        joint_figures=outputs.figures.get("taxonomy", []),
        joint_consensus={
            name: outputs.frames.get(name) for name in JOINT_CONSENSUS_TABLES if outputs.frames.get(name) is not None
        },
        models=[
            {
                **_model_section(
                    m, outputs.figures.get(m, []), outputs.frames.get("classes"), outputs.frames.get("bds")
                ),
                "consensus": _consensus_section(outputs, m),
                "variant": variants.get(m),
            }
            for m in outputs.models
        ],
        method=params.method,
        legacy=bool(len(frame)) and bool((frame["variant"] == "legacy").any()),
        summary=run_summary(outputs, frame, "markdown"),
    )
    return text.rstrip() + "\n"


def run_summary(outputs: Outputs, frame: pd.DataFrame, form: str = "markdown") -> str:
    """The summary of what the run found (:mod:`.summary`), from the tables it wrote, as Markdown or HTML."""
    order = html_report.size_order(frame) if len(frame) else list(outputs.models)
    lines = summary.summarize(summary.read_tables(outputs.family_dir, outputs.tables), outputs.tables, order)
    return summary.to_html(lines) if form == "html" else summary.to_markdown(lines)


def write_index(
    outputs: Outputs, family: str, dataset: str, revision: str | None, params: Params, frame: pd.DataFrame
) -> Path:
    """``index.md`` linking every figure and table of the run, written atomically."""
    return write_text(outputs.family_dir / "index.md", render_index(outputs, family, dataset, revision, params, frame))
