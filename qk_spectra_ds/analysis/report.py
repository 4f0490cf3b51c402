"""Run the analysis of one config and write its figures, tables and index.

Output layout under ``<out>/<family>/``::

    ESDs/<model>.png                      classification A figure per model
    plots/<STAT>/<model>_<STAT>_box.png   classification B figure per model and statistic
    taxonomy/classes.png, depth.png       joint taxonomy figures
    consensus/<model>.png                 default method: k curve, consensus classes against the null
    positional/<model>.png                default method, rotary models: s_1(delta)/s_1 per layer, head and offset
    tables/classes.csv                    --method original: model, variant, class, n_heads, alpha, theta, jsd
    tables/labels.csv                     --method original: model, variant, layer, head, class
    tables/bds.csv                        --method original: model, variant, stat, bds, p_value, n_layers
    tables/consensus_*.csv, ...           default method: see :data:`.report_params.DEFAULT_METHOD`
    tables/taxonomy_*.csv                 joint classes, labels, shares per model and per depth
    index.md                              links to every figure and table
    index.html                            the same to explore in a browser: interactive embedding, sortable tables

``<model>`` is the file slug of the model id (``Qwen/Qwen3-0.6B`` ->
``Qwen--Qwen3-0.6B``). :func:`run_report` is a pipeline, one module per step:
read the dataset once (:mod:`.reading`) and select every frame the run needs
from it (:mod:`.loading`: the analysed rows, the null and other variant, the
other circuit); analyse each model (:mod:`.model_analysis`) and the models
jointly (:mod:`.joint_analysis`), scheduled by :mod:`.scheduling`; write the
tables (:mod:`.report_tables`), then ``index.md`` (:mod:`.report_index`) and
``index.html`` (:mod:`.html_report`); parameters in :mod:`.report_params`.

Each model (classification A and B) and the joint taxonomy is one task; with
``jobs > 1`` joblib runs them in worker processes (largest first), by default
one per core for configs of 2,000+ heads. Results do not depend on ``jobs``:
KMeans runs single-threaded, the embedding is seeded, warnings are replayed in
task order, tables are sorted and written atomically, PNGs carry no timestamp,
so a rerun gives byte-identical files.
``index.md`` is rendered from the jinja2 template ``templates/index.md``.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import sweep_stale_temporaries
from ..errors import AnalysisError
from . import html_report
from .behaviour_report import append_section, store_behaviour
from .circuit_tables import circuit_of, label_tables
from .circuits import store_circuits
from .head_maps import store_head_maps
from .joint_analysis import JOINT_TASK, joint_task, model_heads, taxonomy_task
from .loading import select_spectra
from .model_analysis import model_tasks, model_variants
from .plots import variant_suffix
from .reading import LoadedConfig, read_config
from .report_index import write_index
from .report_params import Params
from .report_tables import (
    Outputs,
    remove_stale_tables,
    split_positional,
    store_crosswalk,
    store_models,
    store_positional,
    store_taxonomy,
)
from .scheduling import jobs_for, replay_warnings, run_tasks
from .selection import eigenvalue_matrix, split_models


def family_dir_of(out: str | os.PathLike, family: str) -> Path:
    """Where a run on ``family`` writes: ``<out>/<family>``."""
    return Path(os.path.expanduser(os.fspath(out))) / family


def run_report(
    dataset: str,
    family: str,
    out: str | os.PathLike = "analysis",
    revision: str | None = None,
    models: str | Sequence[str] | None = None,
    variant: str | None = None,
    skip_nonfinite: bool = False,
    params: Params | None = None,
    jobs: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    circuit: str = "qk",
) -> Outputs:
    """Read a config once, run classification A and B per model and the joint taxonomy, write the tables and indexes.

    The per-model work and the joint taxonomy are independent tasks; with
    ``jobs > 1`` they share one worker pool. ``jobs=None``: see :func:`.scheduling.default_jobs`.
    ``circuit``: the rows analysed, ``qk`` (default) or ``ov`` (schema v4); every table gets a ``circuit`` column
    and every figure title names it. Where the dataset has both, the "QK and OV" section pairs them (:mod:`.circuits`).
    """
    params = params or Params()
    family = str(family)
    family_dir = family_dir_of(out, family)
    swept = sweep_stale_temporaries(family_dir)  # left by a killed report
    if swept and log is not None:
        log(f"removed {len(swept)} temporary file(s) an interrupted report left in {family_dir}")
    t0 = time.perf_counter()
    source = read_config(
        dataset, family, revision
    )  # the one read of the dataset: every frame below is selected from it
    frame = select_spectra(
        source, models, variant, skip_nonfinite, keep_positional=params.method == "consensus", circuit=circuit
    )
    frame, positional_rows = split_positional(frame)  # the workers need only the eigenvalues
    null_rows, other = {}, {}
    if params.method == "consensus":  # the null variant; raw against folded where the dataset has both
        null_rows = null_variant_rows(source, frame)
        other = {**other_variant_rows(source, frame, "raw"), **other_variant_rows(source, frame, "folded")}
    outputs = Outputs(family_dir)
    outputs.timings["load"] = time.perf_counter() - t0
    per_model = split_models(frame)
    outputs.models = [m for m, _ in per_model]
    outputs.order = html_report.size_order(frame) if len(frame) else []
    tasks = [
        *model_tasks(per_model, family_dir, params, True, True, null_rows, other),
        joint_task(frame, family_dir, family, params),
    ]
    t1 = time.perf_counter()
    n_jobs = jobs_for(jobs, per_model)
    results = run_tasks(tasks, n_jobs, progress, desc="report")
    outputs.timings[f"analysis (wall, jobs={n_jobs})"] = time.perf_counter() - t1
    taxonomy_result = results.pop(JOINT_TASK)
    variants = model_variants(frame)
    store_models(outputs, list(results.values()), True, True, params.method)
    store_taxonomy(outputs, taxonomy_result, variants)
    sections = store_sections(outputs, frame, positional_rows, source, params, variants, log)
    label_tables(outputs, circuit_of(frame))
    removed = remove_stale_tables(outputs, params.method)
    if removed and log is not None:
        log(f"removed tables of the other method left by a previous report: {', '.join(removed)}")
    t2 = time.perf_counter()
    write_index(outputs, family, str(dataset), revision, params, frame)
    for section in sections:
        append_section(outputs.family_dir / "index.md", section)
    html_report.write_html(outputs, family, str(dataset), revision, params, frame, html_report.size_order(frame))
    outputs.timings["tables + index"] = time.perf_counter() - t2
    outputs.timings["total"] = time.perf_counter() - t0
    if log is not None:
        log("timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in outputs.timings.items()))
    return outputs


def store_sections(
    outputs: Outputs,
    frame: pd.DataFrame,
    positional_rows: pd.DataFrame | None,
    source: LoadedConfig,
    params: Params,
    variants: dict[str, str],
    log: Callable[[str], None] | None,
) -> list[str]:
    """The sections drawn from the whole run: layer x head maps, crosswalk, positional, behaviour, QK and OV.

    Returns the Markdown of the sections that append to ``index.md`` (behaviour, QK and OV; where the data has them).
    """
    t2 = time.perf_counter()
    store_head_maps(
        outputs, frame, params.format, params.dpi, lambda model: variant_suffix(variants.get(model), circuit_of(frame))
    )
    outputs.timings["layer x head maps (wall, all models)"] = time.perf_counter() - t2
    store_crosswalk(outputs)
    if positional_rows is not None:
        t2 = time.perf_counter()
        store_positional(outputs, positional_rows, params, log)
        outputs.timings["positional (table + figures)"] = time.perf_counter() - t2
    t2 = time.perf_counter()
    behaviour_section = store_behaviour(outputs, frame, params, log)  # None when no row has behaviour scores
    if behaviour_section is not None:
        outputs.timings["behaviour (tests + figures)"] = time.perf_counter() - t2
    t2 = time.perf_counter()
    circuits_section = store_circuits(outputs, frame, source, source.family, params, log, outputs.order)
    if circuits_section is not None:
        outputs.timings["QK and OV (tables + figures)"] = time.perf_counter() - t2
    return [section for section in (behaviour_section, circuits_section) if section is not None]


def null_variant_rows(source: LoadedConfig, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per model of ``frame``: the eigenvalues of its ``null`` variant rows, where the dataset has them.

    Nothing for legacy data (the original study made no null rows) or when ``frame`` is the null variant itself.
    """
    return {
        m: eigenvalue_matrix(rows).astype(np.float64) for m, rows in other_variant_rows(source, frame, "null").items()
    }


def other_variant_rows(source: LoadedConfig, frame: pd.DataFrame, variant: str) -> dict[str, pd.DataFrame]:
    """Per model of ``frame``: its rows of another ``variant`` (``null``, ``folded``) in the config read, where it has them.

    Nothing for legacy data (the original study made no other variants) or when ``frame`` holds ``variant`` itself.
    """
    variants = set(map(str, frame["variant"].unique())) if len(frame) else set()
    if not variants or variants & {"legacy", variant}:
        return {}
    wanted = list(dict.fromkeys(frame["model_id"].tolist()))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            other = select_spectra(
                source, models=wanted, variant=variant, skip_nonfinite=True, circuit=circuit_of(frame)
            )
    except AnalysisError:
        return {}
    return dict(split_models(other))


def run_clusters(
    frame: pd.DataFrame,
    out: str | os.PathLike,
    family: str,
    params: Params | None = None,
    jobs: int | None = None,
    progress: bool = True,
    outputs: Outputs | None = None,
) -> Outputs:
    """Classification A for every model of ``frame``: ESD figures; ``classes.csv``, ``labels.csv`` under ``method="original"``.

    The default method writes its consensus tables instead (``consensus_*``, ``k_selection``, ...).
    """
    return _run_per_model(frame, out, family, params or Params(), jobs, progress, outputs, True, False)


def run_boxplots(
    frame: pd.DataFrame,
    out: str | os.PathLike,
    family: str,
    params: Params | None = None,
    jobs: int | None = None,
    progress: bool = True,
    outputs: Outputs | None = None,
) -> Outputs:
    """Classification B for every model of ``frame``: box plots; ``bds.csv`` under ``method="original"``, else ``layer_tests.csv``."""
    return _run_per_model(frame, out, family, params or Params(), jobs, progress, outputs, False, True)


def _run_per_model(frame, out, family, params, jobs, progress, outputs, do_clusters, do_boxplots) -> Outputs:
    family_dir = family_dir_of(out, family)
    outputs = outputs or Outputs(family_dir)
    models = split_models(frame)
    outputs.models = [m for m, _ in models]
    outputs.order = outputs.order or html_report.size_order(frame)
    desc = "clusters" if do_clusters else "boxplots"
    t0 = time.perf_counter()
    results = run_tasks(
        model_tasks(models, family_dir, params, do_clusters, do_boxplots), jobs_for(jobs, models), progress, desc
    )
    outputs.timings[f"{desc} (wall)"] = time.perf_counter() - t0
    store_models(outputs, list(results.values()), do_clusters, do_boxplots, params.method)
    label_tables(outputs, circuit_of(frame))
    return outputs


def run_taxonomy(
    frame: pd.DataFrame,
    out: str | os.PathLike,
    family: str,
    params: Params | None = None,
    progress: bool = True,
    outputs: Outputs | None = None,
) -> Outputs:
    """Joint taxonomy across the models of ``frame``: figures under ``taxonomy/``, tables under ``tables/``."""
    params = params or Params()
    family_dir = family_dir_of(out, family)
    outputs = outputs or Outputs(family_dir)
    if not outputs.models:
        outputs.models = list(dict.fromkeys(frame["model_id"].tolist()))
    outputs.order = outputs.order or html_report.size_order(frame)
    t0 = time.perf_counter()
    variants = model_variants(frame)
    result = taxonomy_task(
        model_heads(frame),
        str(family_dir),
        family,
        params,
        html_report.size_order(frame),
        sorted(set(variants.values())),
        circuit_of(frame),
    )
    replay_warnings(result.pop("warnings", []))
    outputs.timings["taxonomy (wall)"] = time.perf_counter() - t0
    store_taxonomy(outputs, result, variants)
    label_tables(outputs, circuit_of(frame))
    return outputs
