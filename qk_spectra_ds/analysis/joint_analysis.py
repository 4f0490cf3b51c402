"""The joint taxonomy across the models of a config (one task): the original's joint KMeans, and the default
method's joint consensus classes; figures drawn, tables returned for :mod:`.report_tables` to write.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from threadpoolctl import threadpool_limits

from . import class_figures, html_report, joint_consensus, taxonomy
from .circuit_tables import circuit_of
from .model_analysis import model_variants
from .report_params import Params
from .scheduling import Task, recorded_warnings
from .selection import eigenvalue_matrix, split_models

JOINT_TASK = "<joint taxonomy>"


TAXONOMY_COST_HEADS = 1000
"""Scheduling weight of the joint-taxonomy task, in heads of per-model work."""


def model_heads(frame: pd.DataFrame) -> list[taxonomy.ModelHeads]:
    """Per model: eigenvalues, layers, heads and n_layers (from the column, else max layer + 1)."""
    out = []
    for model_id, rows in split_models(frame):
        n_layers = rows["n_layers"].dropna()
        n = int(n_layers.iloc[0]) if len(n_layers) else int(rows["layer"].max()) + 1
        out.append(
            taxonomy.ModelHeads(model_id, eigenvalue_matrix(rows), rows["layer"].to_numpy(), rows["head"].to_numpy(), n)
        )
    return out


def taxonomy_task(
    heads: list[taxonomy.ModelHeads],
    family_dir: str,
    family: str,
    params: Params,
    order: Sequence[str] | None = None,
    variant: str | Sequence[str] | None = None,
    circuit: str | None = None,
) -> dict[str, Any]:
    """Fit the joint taxonomy and draw its figures (models in ``order``); tables returned (worker or in-process).

    ``variant``, ``circuit``: the variant(s) and circuit of the models' spectra, named in the figures' titles.
    """
    family_dir_path = Path(family_dir)
    out: dict[str, Any] = {"timings": {}}
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(1):
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        classifier = params.classifier(embedding=None, canonical_order=True)
        joint = taxonomy.joint_taxonomy(heads, classifier, params.n_bands)
        t1 = time.perf_counter()
        out["frames"] = {
            "taxonomy_classes": joint.class_table(),
            "taxonomy_labels": joint.labels[["model", "layer", "head", "band", "class"]],
            "taxonomy_shares_model": joint.shares_by_model(),
            "taxonomy_shares_depth": joint.shares_by_depth(),
        }
        title = f"{family}: joint taxonomy of {len(heads)} model(s)"
        names = [f"taxonomy/classes.{params.format}", f"taxonomy/depth.{params.format}"]
        class_figures.plot_taxonomy_classes(
            joint,
            family_dir_path / names[0],
            title=title,
            order=order,
            dpi=params.dpi,
            variant=variant,
            circuit=circuit,
        )
        class_figures.plot_taxonomy_depth(
            joint,
            family_dir_path / names[1],
            title=f"{family}: class shares by relative depth",
            order=order,
            dpi=params.dpi,
            variant=variant,
            circuit=circuit,
        )
        out["figures"] = names
        if params.method == "consensus":  # the default method's joint classes: structure test first, k = 1 possible
            t2 = time.perf_counter()
            fitted = joint_consensus.joint_consensus(
                heads, params.features, params.k, params.n_bins, params.quantile, params.seed, params.n_bands
            )
            out["frames"].update(fitted.tables())
            out["timings"]["taxonomy consensus"] = time.perf_counter() - t2
        out["timings"]["taxonomy"] = t1 - t0
        out["timings"]["taxonomy figures"] = time.perf_counter() - t1
    out["warnings"] = recorded_warnings(caught)
    return out


def joint_task(frame: pd.DataFrame, family_dir: Path, family: str, params: Params) -> Task:
    """The joint taxonomy of every model of ``frame`` as one :class:`~.scheduling.Task` (models in display order)."""
    variants = model_variants(frame)
    return Task(
        JOINT_TASK,
        float(TAXONOMY_COST_HEADS),
        taxonomy_task,
        (
            model_heads(frame),
            str(family_dir),
            family,
            params,
            html_report.size_order(frame),
            sorted(set(variants.values())),
            circuit_of(frame),
        ),
    )
