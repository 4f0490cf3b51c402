"""Comparisons people ask for, as one run (``analyze.py compare``): both sides loaded, tables and figures written.

Two kinds, both on frames from :func:`~qk_spectra_ds.analysis.loading.load_spectra`:

- **Head by head** (:mod:`.head_compare`): the same model on two sides (two
  datasets, two revisions, or two variants such as ``raw``/``folded``, or the
  original study's ``legacy`` spectra against spectra built from weights),
  every head's relative error, side A (the ``--dataset``) being the reference.
- **By relative depth** (:mod:`.depth_profiles`): any metric per layer of each
  model at relative depth ``layer / (n_layers - 1)``, so that models of
  different depths share one axis.

Their figures are in :mod:`.compare_figures`. Rows of the ``legacy`` variant
carry the original study's SVD factor pairing error: every table has a ``note``
column and every figure names it, so they are never mistaken for correct spectra.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..errors import CompareError
from ..naming import model_slug
from . import plots
from .circuit_tables import circuit_of, label_tables
from .compare_figures import plot_head_errors, plot_metric_depth
from .depth_profiles import METRIC_TITLES, depth_table
from .head_compare import COMPARED_VALUES, Side, compare_heads, short_name, side_label, summarize
from .loading import load_spectra
from .table_files import write_table

DEFAULT_METRICS = ("stable_rank", "effective_rank", "positivity", "log_det")


def parse_metrics(metrics: str | Sequence[str] | None) -> list[str]:
    """``"stable_rank,log_det"`` or a list -> checked metric names (default :data:`DEFAULT_METRICS`)."""
    if metrics is None:
        return list(DEFAULT_METRICS)
    items = metrics.split(",") if isinstance(metrics, str) else [str(m) for m in metrics]
    items = list(dict.fromkeys(m.strip() for m in items if m.strip()))
    unknown = [m for m in items if m not in COMPARED_VALUES]
    if unknown or not items:
        raise CompareError(
            f"unknown metric(s) {', '.join(unknown) or repr(metrics)}: choose among {', '.join(COMPARED_VALUES)}"
        )
    return items


# ---------------------------------------------------------------- loading the two sides


def describe(dataset: str, family: str, revision: str | None) -> str:
    """A short name of a side for labels: ``<dataset dir name or repo id>/<family>[@revision]``."""
    text = os.fspath(dataset).rstrip("/")
    name = Path(text).name if os.path.isdir(os.path.expanduser(text)) else text
    return f"{name}/{family}" + (f"@{revision}" if revision else "")


def selection(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """The (model_id, variant) pairs a loaded frame holds."""
    return list(dict.fromkeys(zip(frame["model_id"].astype(str), frame["variant"].astype(str))))


def load_sides(
    dataset: str,
    family: str,
    revision: str | None = None,
    models=None,
    variant=None,
    against: str | None = None,
    against_family: str | None = None,
    against_revision: str | None = None,
    against_models=None,
    against_variant=None,
    skip_nonfinite: bool = False,
    circuit: str = "qk",
) -> tuple[Side, Side | None]:
    """Load side A and, if any ``against*`` is given, side B (each through ``load_spectra``).

    Side B defaults to side A's dataset, family and models (by their short
    names, so ``Qwen/Qwen3-0.6B`` finds the legacy ``Qwen3-0.6B``); its revision
    and variant default to side A's only within the same dataset. The original
    study's legacy spectra may sit on either side or next to built ones (the
    comparison is the explicit request to put them side by side; every label
    says which they are). ``circuit``: both sides' rows, ``qk`` (default) or ``ov`` (schema v4).
    """
    frame_a = load_spectra(
        dataset,
        family,
        revision=revision,
        models=models,
        variant=variant,
        skip_nonfinite=skip_nonfinite,
        pool_legacy=True,
        circuit=circuit,
    )
    name_a = describe(dataset, family, revision)
    if all(x is None for x in (against, against_family, against_revision, against_models, against_variant)):
        return Side(frame_a, name_a), None
    dataset_b = dataset if against is None else against
    same_dataset = os.fspath(dataset_b) == os.fspath(dataset)
    family_b = family if against_family is None else against_family
    revision_b = against_revision if against_revision is not None else (revision if same_dataset else None)
    variant_b = against_variant if against_variant is not None else (variant if same_dataset else None)
    models_b = against_models
    if models_b is None and models is not None:
        models_b = list(dict.fromkeys(short_name(m) for m in frame_a["model_id"]))
    name_b = describe(dataset_b, family_b, revision_b)
    if (same_dataset, family_b, revision_b, variant_b, against_models) == (True, family, revision, variant, None):
        raise CompareError(
            "both sides of the comparison are the same selection: give --against DATASET, "
            "--against-variant, --against-family, --against-revision or --against-models"
        )
    frame_b = load_spectra(
        dataset_b,
        family_b,
        revision=revision_b,
        models=models_b,
        variant=variant_b,
        skip_nonfinite=skip_nonfinite,
        pool_legacy=True,
        circuit=circuit,
    )
    same_source = same_dataset and (family_b, revision_b) == (family, revision)
    if same_source and set(selection(frame_a)) == set(selection(frame_b)):
        chosen = ", ".join(f"{m} [{v}]" for m, v in sorted(set(selection(frame_a)))[:3])
        raise CompareError(
            f"both sides of the comparison select the same rows ({chosen}): name both variants "
            "(--variant and --against-variant), or give --against, --against-family or --against-revision"
        )
    if name_b == name_a:
        name_a, name_b = f"{name_a} (A)", f"{name_b} (B)"
    return Side(frame_a, name_a), Side(frame_b, name_b)


# ---------------------------------------------------------------- a whole run


@dataclass
class CompareOutputs:
    """What :func:`run_compare` wrote (paths relative to ``family_dir``) and its tables."""

    family_dir: Path
    figures: dict[str, list[str]] = field(default_factory=dict)
    tables: dict[str, str] = field(default_factory=dict)
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)


def run_compare(
    a: Side,
    b: Side | None,
    out: str | os.PathLike,
    family: str,
    metrics: Sequence[str] = DEFAULT_METRICS,
    fmt: str = "png",
    dpi: float | None = None,
) -> CompareOutputs:
    """Write the comparison under ``<out>/<family>/``; everything is computed before anything is written.

    With ``b``: ``tables/compare_heads.csv`` (per head), ``tables/compare_summary.csv``
    (per pair and quantity) and ``compare/<model>.png`` (per-layer distribution of the
    per-head error). Always: ``tables/depth.csv`` and ``depth/<metric>.png`` for every
    model of both sides.
    """
    metrics = parse_metrics(metrics)
    family_dir = Path(out) / family
    outputs = CompareOutputs(family_dir)
    heads = compare_heads(a, b) if b is not None else None
    sides = [a] if b is None else [a, b]
    frame = pd.concat([s.frame.assign(source=s.name) for s in sides], ignore_index=True)
    depth = depth_table(frame, metrics)
    outputs.models = list(dict.fromkeys(depth["model"]))
    (family_dir / "tables").mkdir(parents=True, exist_ok=True)
    if heads is not None:
        summary = summarize(heads)
        outputs.frames.update(compare_heads=heads, compare_summary=summary)
        write_table(heads, family_dir / "tables" / "compare_heads.csv")
        write_table(summary, family_dir / "tables" / "compare_summary.csv")
        outputs.tables.update(compare_heads="tables/compare_heads.csv", compare_summary="tables/compare_summary.csv")
        (family_dir / "compare").mkdir(exist_ok=True)
        for (model_a, va, model_b, vb), part in heads.groupby(
            ["model_a", "variant_a", "model_b", "variant_b"], sort=False
        ):
            name = f"compare/{model_slug(model_a)}.{fmt}"
            title = (
                f"{side_label(model_b, vb)} ({b.name}) against {side_label(model_a, va)} ({a.name}): "
                f"per-head relative error of the singular values"
            )
            plot_head_errors(part, family_dir / name, title, dpi)
            outputs.figures.setdefault("compare", []).append(name)
    outputs.frames["depth"] = depth
    write_table(depth, family_dir / "tables" / "depth.csv")
    outputs.tables["depth"] = "tables/depth.csv"
    (family_dir / "depth").mkdir(exist_ok=True)
    for metric in metrics:
        name = f"depth/{metric}.{fmt}"
        title = f"{family}: {METRIC_TITLES[metric]} by relative depth" + plots.variant_suffix(
            sorted(set(depth["variant"])), circuit_of(frame)
        )
        plot_metric_depth(depth, metric, family_dir / name, title, dpi)
        outputs.figures.setdefault("depth", []).append(name)
    label_tables(outputs, circuit_of(frame))
    return outputs


def error_lines(summary: pd.DataFrame) -> list[str]:
    """One line per pair: the per-head max relative error of the singular values, its median and max over heads."""
    lines = []
    for _, row in summary[summary["quantity"] == "sv_err_max"].iterrows():
        lines.append(
            f"{side_label(row['model_b'], row['variant_b'])} vs {side_label(row['model_a'], row['variant_a'])}: "
            f"per-head max relative error of the singular values: median {row['median']:.3g}, "
            f"max {row['max']:.3g} (layer {row['max_layer']} head {row['max_head']}) over {row['n_heads']} heads"
        )
    return lines
