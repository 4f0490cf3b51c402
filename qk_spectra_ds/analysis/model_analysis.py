"""One model's analysis (a worker's task): classification A and/or B, the default method's consensus and tests.

:func:`analyze_model` draws the model's figures and returns its tables (a dict the storing step writes, see
:mod:`.report_tables`); it runs single-threaded (BLAS limited to one thread) so results do not depend on the number
of workers.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from ..naming import model_slug
from . import (
    class_figures,
    class_profiles,
    consensus,
    consensus_figures,
    html_report,
    layer_boxplot_figures,
    layer_boxplots,
    layer_permutation_tests,
    variants_compare,
)
from .circuit_tables import circuit_of
from .report_params import Params
from .scheduling import Task, recorded_warnings
from .selection import eigenvalue_matrix, split_models

CLASS_COLUMNS = ["model", "class", "n_heads", "alpha", "theta", "jsd"]


def variant_of(rows: pd.DataFrame) -> str:
    """The variant of a model's rows (``folded``, ``raw``, ``null``, ``legacy``; several joined by ``+``).

    Every table gets it as its ``variant`` column and every figure names it in
    its title, so no output hides which spectra it was made from.
    """
    return "+".join(sorted({str(v) for v in rows["variant"].unique()})) if "variant" in rows and len(rows) else ""


def model_variants(frame: pd.DataFrame) -> dict[str, str]:
    """Per model of ``frame``: :func:`variant_of` its rows."""
    return {model_id: variant_of(rows) for model_id, rows in split_models(frame)}


ORIGINAL_CLASSES_NOTE = "the original method's classes (one KMeans seed, row-order dependent)"
"""How the default method's ESD figures say that their classes are the original study's, not the consensus ones."""


def with_consensus_classes(embedding: pd.DataFrame, consensus_labels: pd.DataFrame) -> pd.DataFrame:
    """The embedding table coloured by the consensus classes (matched on layer and head), as the default method reports."""
    if not len(embedding):
        return embedding
    by_head = consensus_labels.set_index(["layer", "head"])["class"]
    keys = pd.MultiIndex.from_arrays([embedding["layer"], embedding["head"]])
    return embedding.assign(**{"class": by_head.reindex(keys).to_numpy()})


def label_table(model_id: str, rows: pd.DataFrame, labels: np.ndarray) -> pd.DataFrame:
    """Columns model, layer, head, class: one row per head, sorted by layer then head."""
    table = pd.DataFrame(
        {"model": model_id, "layer": rows["layer"].to_numpy(), "head": rows["head"].to_numpy(), "class": labels}
    )
    return table.sort_values(["layer", "head"], kind="stable").reset_index(drop=True)


def analyze_model(
    model_id: str,
    rows: pd.DataFrame,
    family_dir: str,
    params: Params,
    do_clusters: bool,
    do_boxplots: bool,
    null_eigenvalues: np.ndarray | None = None,
    other_rows: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Classification A and/or B of one model; figures written, tables returned (runs in a worker).

    ``other_rows``: the model's rows of another variant (raw when these are
    folded, folded otherwise), whose consensus classes are compared with these.
    """
    variant = variant_of(rows)
    circuit = circuit_of(rows)  # named in every figure title beside the variant
    out: dict[str, Any] = {"model": model_id, "variant": variant, "figures": [], "timings": {}}
    family_dir_path = Path(family_dir)
    slug = model_slug(model_id)
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(1):
        warnings.simplefilter("always")
        if do_clusters:
            t0 = time.perf_counter()
            classifier = params.classifier().fit(eigenvalue_matrix(rows), name=model_id)
            t1 = time.perf_counter()
            figure = Path("ESDs") / f"{slug}.{params.format}"
            esd_title = model_id if params.method == "original" else f"{model_id}: {ORIGINAL_CLASSES_NOTE}"
            class_figures.plot_clusters(
                classifier, family_dir_path / figure, title=esd_title, dpi=params.dpi, variant=variant, circuit=circuit
            )
            out["timings"]["clusters"] = t1 - t0
            out["timings"]["clusters figures"] = time.perf_counter() - t1
            out["classes"] = classifier.class_table().assign(model=model_id)[CLASS_COLUMNS]
            out["labels"] = label_table(model_id, rows, classifier.labels_)
            out["embedding"] = html_report.embedding_table(model_id, rows, classifier)
            out["figures"].append(figure.as_posix())
            if params.method == "consensus":
                t0 = time.perf_counter()
                result = consensus.analyze(
                    model_id,
                    rows,
                    params.features,
                    params.k,
                    params.n_bins,
                    params.quantile,
                    params.seed,
                    null_eigenvalues,
                )
                figure = Path("consensus") / f"{slug}.{params.format}"
                consensus_figures.plot_consensus(
                    result,
                    family_dir_path / figure,
                    title=f"{model_id}: consensus classes",
                    dpi=params.dpi,
                    variant=variant,
                    circuit=circuit,
                )
                out["figures"].append(figure.as_posix())
                figure = Path("consensus") / f"{slug}_class_profiles.{params.format}"
                named = dict(zip(result.consensus_classes["class"], result.consensus_classes["name"]))
                class_profiles.plot_profiles(
                    result.class_profiles,
                    named,
                    family_dir_path / figure,
                    f"{model_id}: singular-value profile of each class",
                    params.dpi,
                    variant,
                    circuit,
                )
                out["figures"].append(figure.as_posix())
                out["consensus"] = result.tables()
                out["k"] = result.k
                out["embedding"] = with_consensus_classes(out["embedding"], result.consensus_labels)
                if other_rows is not None and len(other_rows):
                    pair = sorted(
                        [(variant, rows), (variant_of(other_rows), other_rows)], key=lambda item: item[0] != "raw"
                    )  # raw first: transitions read raw -> folded
                    summary, moves = variants_compare.compare(
                        model_id,
                        pair[0][1],
                        pair[1][1],
                        (pair[0][0], pair[1][0]),
                        params.features,
                        params.k,
                        params.n_bins,
                        params.quantile,
                        params.seed,
                    )
                    out["consensus"] = {**out["consensus"], "variants_ari": summary, "variants_transitions": moves}
                out["timings"]["consensus"] = time.perf_counter() - t0
        if do_boxplots:
            t0 = time.perf_counter()
            results = layer_boxplots.layer_stats(rows, list(params.stats), params.skip_layers_below, model_id)
            t1 = time.perf_counter()
            titles, skipped = None, None
            if params.method == "consensus":  # tests first: the box plots' titles show them, not the asymptotic p
                t2 = time.perf_counter()
                tested = [
                    layer_permutation_tests.series_tests(
                        model_id, r.stat, r.medians, r.p_value, params.permutations, params.min_layers, params.seed
                    )
                    for r in results
                ]
                legacy = bool((rows["variant"] == "legacy").any())
                out["layer_tests"] = layer_permutation_tests.layer_test_table(tested).assign(
                    legacy_pairing_error=legacy
                )
                titles = [
                    layer_permutation_tests.figure_title_text(r, params.permutations, params.min_layers)
                    for r in out["layer_tests"].to_dict("records")
                ]
                skipped = layer_boxplots.skipped_layers_text(rows, params.skip_layers_below)
                out["timings"]["layer tests"] = time.perf_counter() - t2
            t1 = time.perf_counter()
            figures = [Path("plots") / res.stat / f"{slug}_{res.stat}_box.{params.format}" for res in results]
            layer_boxplot_figures.plot_layer_stats(
                results,
                [family_dir_path / f for f in figures],
                dpi=params.dpi,
                variant=variant,
                tests=titles,
                skipped=skipped,
                circuit=circuit,
            )
            out["figures"].extend(f.as_posix() for f in figures)
            out["timings"]["boxplots"] = t1 - t0
            out["timings"]["boxplots figures"] = time.perf_counter() - t1
            out["bds"] = layer_boxplots.bds_table(results).assign(p_value_kind=layer_permutation_tests.ASYMPTOTIC_LABEL)
    out["warnings"] = recorded_warnings(caught)
    return out


def model_tasks(
    models,
    family_dir: Path,
    params: Params,
    do_clusters: bool,
    do_boxplots: bool,
    null_rows: dict[str, np.ndarray] | None = None,
    other: dict[str, pd.DataFrame] | None = None,
) -> list[Task]:
    null_rows, other = null_rows or {}, other or {}
    return [
        Task(
            model_id,
            float(len(rows)),
            analyze_model,
            (
                model_id,
                rows,
                str(family_dir),
                params,
                do_clusters,
                do_boxplots,
                null_rows.get(model_id),
                other.get(model_id),
            ),
        )
        for model_id, rows in models
    ]
