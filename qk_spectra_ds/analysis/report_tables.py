"""Writing the report's tables from the tasks' results: per model, joint, crosswalk, positional; stale ones removed.

Every table gets a ``variant`` column (:func:`with_variant`), its models in display order (by size, as the
figures) and is written atomically as CSV and parquet (:mod:`.table_files`); :class:`Outputs` records what a run
wrote and how long each stage took.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..naming import model_slug
from . import html_report, layer_permutation_tests, plots, positional
from .circuit_tables import circuit_of
from .joint_consensus import crosswalk
from .model_analysis import variant_of
from .positional import SUMMARY_COLUMNS
from .report_params import DEFAULT_METHOD, Params
from .selection import split_models
from .table_files import TABLES, write_table

CONSENSUS_TABLES = (
    "consensus_classes",
    "consensus_labels",
    "k_selection",
    "stability",
    "energy",
    "null_classes",
    "variants_ari",
    "variants_transitions",
    "structure",
    "class_profiles",
    "class_metrics",
)


ORIGINAL_TABLES = ("classes", "labels", "bds")
"""The tables only ``--method original`` writes (order-dependent KMeans, asymptotic BDS)."""


JOINT_CONSENSUS_TABLES = (
    "taxonomy_structure",
    "taxonomy_k_selection",
    "taxonomy_consensus_classes",
    "taxonomy_consensus_labels",
    "taxonomy_stability",
    "crosswalk",
)
"""The default method's joint taxonomy (``joint_consensus``) and the crosswalk between class systems."""


DEFAULT_ONLY_TABLES = (*CONSENSUS_TABLES, *JOINT_CONSENSUS_TABLES, "layer_tests", "positional")
"""The tables only the default method writes."""


@dataclass
class Outputs:
    """What a run wrote (paths relative to the family directory) and how long each stage took."""

    family_dir: Path
    figures: dict[str, list[str]] = field(default_factory=dict)
    tables: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)
    order: list[str] = field(default_factory=list)
    """Models in display order (by size, as the figures): every table's rows follow it."""


def with_variant(table: pd.DataFrame, variant: str | dict[str, str]) -> pd.DataFrame:
    """``table`` with a ``variant`` column after ``model`` (first if none): one name, or per model from a dict.

    A table that already has ``variant`` is returned unchanged.
    """
    if "variant" in table.columns:
        return table
    if isinstance(variant, dict):  # a row of no one model (the joint taxonomy's "joint") gets all models' variants
        values = table["model"].map(variant).fillna("+".join(sorted(set(map(str, variant.values()))))).astype(str)
    else:
        values = str(variant)
    out = table.copy()
    out.insert(out.columns.get_loc("model") + 1 if "model" in out.columns else 0, "variant", values)
    return out


def add_timings(outputs: Outputs, results: Sequence[dict[str, Any]], scope: str = "per model") -> None:
    """Add the stage times of task results to ``outputs.timings``, each key saying what it measures.

    ``scope="per model"``: a stage's times are summed over the models that ran
    it, labelled ``(sum over N models)`` (worker time: with several jobs they
    overlap); ``"joint"``: the one joint-taxonomy task, labelled ``(joint, all models)``.
    """
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for result in results:
        for key, value in result.get("timings", {}).items():
            sums[key] = sums.get(key, 0.0) + float(value)
            counts[key] = counts.get(key, 0) + 1
    for key, total in sums.items():
        if scope == "joint":
            name = f"{key} (joint, all models)"
        else:
            name = f"{key} (sum over {counts[key]} model{'s' if counts[key] != 1 else ''})"
        outputs.timings[name] = outputs.timings.get(name, 0.0) + total


def ordered(outputs: Outputs, table: pd.DataFrame) -> pd.DataFrame:
    """``table``'s rows with its models in the display order (:attr:`Outputs.order`, by size), stably."""
    return html_report.in_display_order(table, outputs.order) if outputs.order else table


def store_models(
    outputs: Outputs, results: list[dict[str, Any]], do_clusters: bool, do_boxplots: bool, method: str = DEFAULT_METHOD
) -> None:
    """Write the per-model tables from the results (model order) and record the figures.

    The original method's ``classes``/``labels``/``bds`` tables (its single
    KMeans depends on the row order, its BDS p-values are asymptotic) only
    under ``method="original"``; the default method writes its own.
    """
    tables = outputs.family_dir / TABLES
    variants = {r["model"]: r.get("variant", "") for r in results}
    for r in results:
        outputs.figures.setdefault(r["model"], []).extend(r["figures"])
    original = method == "original"
    if do_clusters:
        outputs.frames["embedding"] = pd.concat([r["embedding"] for r in results], ignore_index=True)
    if do_clusters and original:
        classes = ordered(
            outputs, with_variant(pd.concat([r["classes"] for r in results], ignore_index=True), variants)
        )
        labels = ordered(outputs, with_variant(pd.concat([r["labels"] for r in results], ignore_index=True), variants))
        write_table(classes, tables / "classes.csv")
        write_table(labels, tables / "labels.csv")
        outputs.tables["classes"] = f"{TABLES}/classes.csv"
        outputs.tables["labels"] = f"{TABLES}/labels.csv"
        outputs.frames["classes"] = classes
        outputs.frames["labels"] = labels
    if do_boxplots and original:
        bds = ordered(outputs, with_variant(pd.concat([r["bds"] for r in results], ignore_index=True), variants))
        write_table(bds, tables / "bds.csv")
        outputs.tables["bds"] = f"{TABLES}/bds.csv"
        outputs.frames["bds"] = bds
    per_model = {
        name: [r["consensus"][name] for r in results if len(r.get("consensus", {}).get(name, ()))]
        for name in CONSENSUS_TABLES
    }
    per_model["layer_tests"] = [r["layer_tests"] for r in results if "layer_tests" in r]
    for name, parts in per_model.items():
        if parts:
            table = pd.concat(parts, ignore_index=True).sort_values("model", kind="stable", ignore_index=True)
            if name == "layer_tests":  # Holm across every test of the report, beside the per-model column;
                # the original's asymptotic p-value is invalid at these lengths: only whether it called the series
                # significant is kept (original_significant), never the number
                table = layer_permutation_tests.correct_across(table).drop(
                    columns=["p_bds_asymptotic", "p_bds_asymptotic_kind"]
                )
            table = ordered(outputs, with_variant(table, variants))
            write_table(table, tables / f"{name}.csv")
            outputs.tables[name] = f"{TABLES}/{name}.csv"
            outputs.frames[name] = table
    add_timings(outputs, results)


def store_taxonomy(outputs: Outputs, result: dict[str, Any], variants: dict[str, str]) -> None:
    """Write the joint taxonomy's tables, each with a ``variant`` column (per model, or all models' for the classes)."""
    tables = outputs.family_dir / TABLES
    pooled = "+".join(sorted(set(variants.values())))
    for name, table in result["frames"].items():
        table = ordered(outputs, with_variant(table, variants if "model" in table.columns else pooled))
        write_table(table, tables / f"{name}.csv")
        outputs.tables[name] = f"{TABLES}/{name}.csv"
        outputs.frames[name] = table
    outputs.figures["taxonomy"] = list(result["figures"])
    add_timings(outputs, [result], scope="joint")


def store_crosswalk(outputs: Outputs) -> None:
    """``tables/crosswalk.csv``: each model's consensus classes against the joint ones, the original's joint KMeans
    against the joint consensus (heads per pair of classes, ARI per model); default method only."""
    joint = outputs.frames.get("taxonomy_consensus_labels")
    if joint is None:
        return
    parts = []
    if outputs.frames.get("consensus_labels") is not None:
        parts.append(
            ordered(
                outputs, crosswalk(outputs.frames["consensus_labels"], joint, "per-model consensus", "joint consensus")
            )
        )
    if outputs.frames.get("taxonomy_labels") is not None:
        parts.append(
            ordered(
                outputs, crosswalk(outputs.frames["taxonomy_labels"], joint, "joint original KMeans", "joint consensus")
            )
        )
    if parts:
        table = pd.concat(parts, ignore_index=True)
        write_table(table, outputs.family_dir / TABLES / "crosswalk.csv")
        outputs.tables["crosswalk"] = f"{TABLES}/crosswalk.csv"
        outputs.frames["crosswalk"] = table


POSITIONAL_COLUMNS = ("offsets", "positional_singular_values")


def split_positional(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """``(frame without the positional lists, the rows' keys, summaries and lists)``; None when not loaded."""
    if not all(c in frame.columns for c in POSITIONAL_COLUMNS):
        return frame, None
    keep = [
        "model_id",
        "variant",
        "layer",
        "head",
        "n_layers",
        "spectral_norm",
        *POSITIONAL_COLUMNS,
        *(c for c in SUMMARY_COLUMNS if c in frame.columns),
    ]
    return frame.drop(columns=list(POSITIONAL_COLUMNS)), frame[keep]


def store_positional(outputs: Outputs, rows: pd.DataFrame, params: Params, log: Callable[[str], None] | None) -> None:
    """Per model with positional spectra: ``positional/<model>`` figure; all of them in ``tables/positional.csv``.

    Models without any (no rotary, built without offsets, legacy or null rows)
    are skipped, with one log line naming them.
    """
    tables, without = [], []
    for model_id, part in split_models(rows):
        variant = variant_of(part)
        if not positional.has_positional(part):
            without.append(f"{model_id} [{variant}]")
            continue
        table = positional.positional_table(model_id, part, variant)
        n_layers = part["n_layers"].dropna()
        n = int(n_layers.iloc[0]) if len(n_layers) else int(part["layer"].max()) + 1
        figure = f"positional/{model_slug(model_id)}.{params.format}"
        title = (
            f"{model_id}: each head's spectral norm by query-key offset, s₁(δ) / s₁(0), per layer"
            + plots.variant_suffix(variant, circuit_of(part))
        )
        positional.plot_positional(table, n, outputs.family_dir / figure, title, params.dpi)
        outputs.figures.setdefault(model_id, []).append(figure)
        tables.append(table)
    if without and log is not None:
        log(
            f"positional: no positional spectra for {', '.join(without)} (no rotary layers, built without offsets, "
            "or a legacy/null variant): no positional figure for them"
        )
    if tables:
        table = pd.concat(tables, ignore_index=True)
        ratio_columns = [positional.ratio_column(d) for d in positional.offsets_of(table)]  # offsets ascending
        table = ordered(
            outputs, table[["model", "variant", "layer", "head", *ratio_columns, *positional.SUMMARY_COLUMNS]]
        )
        write_table(table, outputs.family_dir / TABLES / "positional.csv")
        outputs.tables["positional"] = f"{TABLES}/positional.csv"
        outputs.frames["positional"] = table


def remove_stale_tables(outputs: Outputs, method: str) -> list[str]:
    """Remove the other method's tables a previous report left in ``tables/`` (CSV and parquet); returns their names.

    A report replaces its family directory's tables: without this, a default
    run after a ``--method original`` one (or after a version that wrote both)
    would leave ``classes.csv`` beside tables it does not belong with.
    """
    others = DEFAULT_ONLY_TABLES if method == "original" else ORIGINAL_TABLES
    removed = []
    for name in others:
        if name in outputs.tables:
            continue
        for suffix in (".csv", ".parquet"):
            path = outputs.family_dir / TABLES / f"{name}{suffix}"
            if path.is_file():
                path.unlink()
                removed.append(path.name)
    return removed
