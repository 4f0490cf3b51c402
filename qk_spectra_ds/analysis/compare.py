"""Comparisons people ask for: one model's spectra in two datasets or variants, and models by relative depth.

Two kinds, both on frames from :func:`~qk_spectra_ds.analysis.loading.load_spectra`:

- **Head by head** (:func:`compare_heads`): the same model on two sides (two
  datasets, two revisions, or two variants such as ``raw``/``folded``, or the
  original study's ``legacy`` spectra against spectra built from weights).
  Heads are matched by (layer, head) after checking that the two sides have the
  same n_layers, n_heads and d_head. Per head: the relative error
  ``|b - a| / |a|`` of every singular value and eigenvalue (its max and median
  over the head's spectrum) and of every statistic and metric, side A (the
  ``--dataset``) being the reference. ``0/0`` counts as 0 and ``x/0`` as inf.
- **By relative depth** (:func:`depth_table`): any metric (``stable_rank``,
  ``effective_rank``, ``positivity``, ``log_det``, ``spectral_norm``,
  ``frobenius`` or an ``sv_``/``ev_`` statistic) per layer of each model: the
  median over the layer's heads with its interquartile range, at relative depth
  ``layer / (n_layers - 1)``, so that models of different depths share one axis.

Rows of the ``legacy`` variant carry the original study's SVD factor pairing
error (the card's "Known difference from the original study"): every table has a ``note`` column and
every figure names it, so they are never mistaken for correct spectra.
"""

from __future__ import annotations

import os
import textwrap
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import schema
from ..errors import CompareError
from ..naming import model_slug
from .selection import model_names

LEGACY_NOTE = "legacy: the original study's spectra, with its SVD factor pairing error"
"""The ``note`` of legacy rows in every table (and, shortened, in every figure)."""

LEGACY_TAG = "legacy, original pairing error"

DEFAULT_METRICS = ("stable_rank", "effective_rank", "positivity", "log_det")

COMPARED_VALUES = schema.SV_STAT_COLUMNS + schema.EV_STAT_COLUMNS + schema.METRICS
"""The per-head scalars compared head by head and offered as depth metrics."""

_STAT_NAMES = {"min": "minimum", "max": "maximum", "mean": "mean", "std": "standard deviation",
               "skew": "skewness", "kurtosis": "excess kurtosis"}  # fmt: skip
METRIC_TITLES = {
    "frobenius": "Frobenius norm ‖W_QK‖_F",
    "spectral_norm": "spectral norm σ₁",
    "stable_rank": "stable rank Σλ / λ₁",
    "effective_rank": "effective rank exp(H(λ / Σλ))",
    "log_det": "log-det Σ ln σ",
    "positivity": "QK eigenvalue positivity Σ Re μ / Σ |μ|",
    **{f"sv_{k}": f"{v} singular value" for k, v in _STAT_NAMES.items()},
    **{f"ev_{k}": f"{v} eigenvalue (σ²)" for k, v in _STAT_NAMES.items()},
}
"""Full names of the metrics for axis titles."""


# ---------------------------------------------------------------- small pieces


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


def is_legacy(variant: str) -> bool:
    return str(variant) == schema.VARIANT_LEGACY


def short_name(model_id: str) -> str:
    """The last path component of a model id (``Qwen/Qwen3-0.6B`` -> ``Qwen3-0.6B``)."""
    return str(model_id).rstrip("/").rsplit("/", 1)[-1]


def side_label(model_id: str, variant: str) -> str:
    """``Qwen3-0.6B [raw]``; legacy rows say they carry the original study's pairing error."""
    return f"{short_name(model_id)} [{LEGACY_TAG if is_legacy(variant) else variant}]"


def note(variant: str) -> str:
    """The ``note`` column: :data:`LEGACY_NOTE` for legacy rows, empty otherwise."""
    return LEGACY_NOTE if is_legacy(variant) else ""


def relative_error(actual: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``|actual - reference| / |reference|`` elementwise, float64; 0/0 is 0, x/0 is inf, NaN stays NaN."""
    a, r = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.abs(a - r) / np.abs(r)
    out[a == r] = 0.0  # 0/0, and -inf on both sides (log_det of a zero head)
    return out


def singular_value_matrix(rows: pd.DataFrame) -> np.ndarray:
    """``(heads, d_head)`` float64 singular values: the stored column if loaded, else sqrt of the eigenvalues.

    The eigenvalues are float32 squares of the singular values, so their square
    root matches the stored singular values to float32 rounding (~1e-7 relative).
    """
    if "singular_values" in rows.columns and rows["singular_values"].map(lambda s: s is not None).all():
        return np.stack(rows["singular_values"].tolist()).astype(np.float64)
    return np.sqrt(np.stack(rows["eigenvalues"].tolist()).astype(np.float64))


def relative_depth(layer: np.ndarray, n_layers: np.ndarray) -> np.ndarray:
    """``layer / (n_layers - 1)`` in [0, 1] (0 for a one-layer model)."""
    layer, n_layers = np.asarray(layer, np.float64), np.asarray(n_layers, np.float64)
    return np.where(n_layers > 1, layer / np.maximum(n_layers - 1, 1), 0.0)


# ---------------------------------------------------------------- head by head


@dataclass
class Side:
    """One side of a comparison: its frame and where it came from (for labels and error messages)."""

    frame: pd.DataFrame
    name: str  # e.g. "--dataset ./qk-spectra (Tiny)"


def check_one_variant(side: Side, flag: str) -> None:
    """A side must hold one variant per model name: a legacy and a built copy of one model are ambiguous."""
    by_name: dict[str, set[str]] = {}
    for model, variant in side.frame[["model_id", "variant"]].drop_duplicates().itertuples(index=False):
        by_name.setdefault(short_name(model), set()).add(str(variant))
    for name, variants in by_name.items():
        if len(variants) > 1:
            raise CompareError(
                f"{side.name} holds {name} in variants {', '.join(sorted(variants))}: choose one with {flag}"
            )


def pair_models(a: Side, b: Side) -> list[tuple[str, str]]:
    """``[(model_a, model_b)]``: same id, else same name (``Qwen/Qwen3-0.6B`` ~ ``Qwen3-0.6B``); one each: paired.

    A model of side A with no partner is left out with a warning; no pair at all is an error.
    """
    models_a = list(dict.fromkeys(a.frame["model_id"]))
    models_b = list(dict.fromkeys(b.frame["model_id"]))
    if len(models_a) == 1 and len(models_b) == 1:
        return [(models_a[0], models_b[0])]
    pairs, unmatched = [], []
    for model in models_a:
        exact = [m for m in models_b if m == model]
        named = exact or [m for m in models_b if model_names(m) & model_names(model)]
        if len(named) == 1:
            pairs.append((model, named[0]))
        else:
            unmatched.append(model)
    if not pairs:
        raise CompareError(
            f"no model of {a.name} ({', '.join(models_a[:5])}) is in {b.name} ({', '.join(models_b[:5])}): "
            "name one model on each side with --models and --against_models"
        )
    if unmatched:
        warnings.warn(f"{len(unmatched)} model(s) of {a.name} have no partner in {b.name} and are left out: "
                      f"{', '.join(unmatched[:5])}", UserWarning, stacklevel=2)  # fmt: skip
    return pairs


SHAPE = ("n_layers", "n_heads", "d_head")


def check_shapes(rows_a: pd.DataFrame, rows_b: pd.DataFrame, label_a: str, label_b: str) -> None:
    """One line if the two models differ in n_layers, n_heads or d_head (no head could be matched)."""
    shape_a = tuple(int(rows_a[c].iloc[0]) for c in SHAPE)
    shape_b = tuple(int(rows_b[c].iloc[0]) for c in SHAPE)
    if shape_a != shape_b:
        text = lambda s: ", ".join(f"{c} {v}" for c, v in zip(SHAPE, s))  # noqa: E731
        raise CompareError(
            f"cannot compare {label_a} ({text(shape_a)}) with {label_b} ({text(shape_b)}): "
            "the shapes differ, so these are not the same model"
        )


def head_errors(rows_a: pd.DataFrame, rows_b: pd.DataFrame) -> pd.DataFrame:
    """Per (layer, head) in both: max/median relative error of s and l, and of every statistic and metric.

    Side A is the reference. Heads present on one side only (skipped as
    non-finite or constant when loading) are left out with a warning.
    """
    a = rows_a.set_index(["layer", "head"])
    b = rows_b.set_index(["layer", "head"])
    common = a.index.intersection(b.index, sort=False).sort_values()
    missing = len(a.index.union(b.index)) - len(common)
    if missing:
        warnings.warn(f"{missing} head(s) of {rows_a['model_id'].iloc[0]} are on one side only and are left out",
                      UserWarning, stacklevel=2)  # fmt: skip
    if len(common) == 0:
        raise CompareError(f"{rows_a['model_id'].iloc[0]}: no (layer, head) is on both sides")
    a, b = a.loc[common], b.loc[common]
    table = pd.DataFrame({"layer": common.get_level_values(0).astype(int), "head": common.get_level_values(1).astype(int)})
    sv = relative_error(singular_value_matrix(b), singular_value_matrix(a))
    ev = relative_error(np.stack(b["eigenvalues"].tolist()), np.stack(a["eigenvalues"].tolist()))
    for prefix, err in (("sv", sv), ("ev", ev)):
        table[f"{prefix}_err_max"] = err.max(axis=1)
        table[f"{prefix}_err_median"] = np.median(err, axis=1)
    for column in COMPARED_VALUES:
        values_a = a[column].to_numpy(np.float64, na_value=np.nan)
        values_b = b[column].to_numpy(np.float64, na_value=np.nan)
        table[f"{column}_rel_err"] = relative_error(values_b, values_a)
    return table


HEAD_ERROR_COLUMNS = ("sv_err_max", "sv_err_median", "ev_err_max", "ev_err_median")
"""Per head: max and median over its spectrum of the relative error of s (sv) and l (ev)."""


def summarize(heads: pd.DataFrame) -> pd.DataFrame:
    """Per pair and per compared quantity: median, max over heads (NaN ignored) and where the max is."""
    keys = ["model_a", "variant_a", "model_b", "variant_b"]
    quantities = [*HEAD_ERROR_COLUMNS, *(c for c in heads.columns if c.endswith("_rel_err"))]
    rows = []
    for key, part in heads.groupby(keys, sort=False):
        for quantity in quantities:
            values = part[quantity].to_numpy(np.float64)
            finite = ~np.isnan(values)
            worst = part.iloc[int(np.nanargmax(values))] if finite.any() else None
            rows.append({
                **dict(zip(keys, key)), "quantity": quantity, "n_heads": int(finite.sum()),
                "median": float(np.median(values[finite])) if finite.any() else np.nan,
                "max": float(values[finite].max()) if finite.any() else np.nan,
                "max_layer": int(worst["layer"]) if worst is not None else -1,
                "max_head": int(worst["head"]) if worst is not None else -1,
            })  # fmt: skip
    summary = pd.DataFrame(rows)
    summary["note"] = [_pair_note(va, vb) for va, vb in zip(summary["variant_a"], summary["variant_b"])]
    return summary


def _pair_note(variant_a: str, variant_b: str) -> str:
    sides = [s for s, v in (("A", variant_a), ("B", variant_b)) if is_legacy(v)]
    return "" if not sides else f"side {' and '.join(sides)} {LEGACY_NOTE}"


def compare_heads(a: Side, b: Side) -> pd.DataFrame:
    """Every paired model, head by head (see :func:`head_errors`): one table, pairs in side A's order.

    Every pair's shapes are checked before any error is computed, so a
    mismatch is reported before anything is written.
    """
    check_one_variant(a, "--variant")
    check_one_variant(b, "--against_variant")
    groups_a = dict(tuple(a.frame.groupby("model_id", sort=False)))
    groups_b = dict(tuple(b.frame.groupby("model_id", sort=False)))
    pairs = pair_models(a, b)
    labels = {}
    for model_a, model_b in pairs:
        va, vb = str(groups_a[model_a]["variant"].iloc[0]), str(groups_b[model_b]["variant"].iloc[0])
        labels[model_a] = (f"{side_label(model_a, va)} of {a.name}", f"{side_label(model_b, vb)} of {b.name}", va, vb)
        check_shapes(groups_a[model_a], groups_b[model_b], *labels[model_a][:2])
    tables = []
    for model_a, model_b in pairs:
        table = head_errors(groups_a[model_a], groups_b[model_b])
        va, vb = labels[model_a][2:]
        ids = {"model_a": model_a, "variant_a": va, "model_b": model_b, "variant_b": vb}
        tables.append(pd.concat([pd.DataFrame({k: [v] * len(table) for k, v in ids.items()}), table], axis=1))
    heads = pd.concat(tables, ignore_index=True)
    heads["note"] = [_pair_note(va, vb) for va, vb in zip(heads["variant_a"], heads["variant_b"])]
    return heads


# ---------------------------------------------------------------- by relative depth


def model_order(frame: pd.DataFrame) -> list[tuple[str, str, str]]:
    """``(source, model_id, variant)`` of every model, smallest first, ties by name.

    Size from the shapes, as the report orders models: ``n_layers * n_heads *
    d_head * d_model`` (the QK weights' element count), or, where some model
    lacks ``d_model`` (legacy imports), ``n_layers * n_heads * d_head`` for all.
    """
    columns = ["n_layers", "n_heads", "d_head", "d_model"]
    keys = frame.groupby(["source", "model_id", "variant"], sort=False)[columns].first().astype("float64")
    size = keys["n_layers"] * keys["n_heads"] * keys["d_head"]
    if keys["d_model"].notna().all():
        size = size * keys["d_model"]
    return sorted(size.index, key=lambda key: (size[key], str(key[1]), str(key[2]), str(key[0])))


def depth_table(frame: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Per (source, model, variant, layer, metric): relative depth, heads, median, quartiles, mean.

    ``frame`` may hold several sources (a ``source`` column, e.g. the two
    datasets of a comparison); NaN values (positivity of legacy rows) are
    ignored, a layer without any value gets NaN.
    """
    if "source" not in frame.columns:
        frame = frame.assign(source="")
    rows = []
    for source, model, variant in model_order(frame):
        part = frame[(frame["source"] == source) & (frame["model_id"] == model) & (frame["variant"] == variant)]
        n_layers = int(part["n_layers"].iloc[0])
        for layer, heads in part.groupby("layer", sort=True):
            for metric in metrics:
                values = heads[metric].to_numpy(np.float64, na_value=np.nan)
                values = values[~np.isnan(values)]
                quartiles = np.percentile(values, [25, 50, 75]) if len(values) else [np.nan] * 3
                rows.append({
                    "source": source, "model": model, "variant": variant, "metric": metric, "layer": int(layer),
                    "n_layers": n_layers, "relative_depth": float(relative_depth(layer, n_layers)),
                    "n_heads": len(values), "median": quartiles[1], "q25": quartiles[0], "q75": quartiles[2],
                    "mean": float(values.mean()) if len(values) else np.nan, "note": note(variant),
                })  # fmt: skip
    return pd.DataFrame(rows)


def depth_labels(depth: pd.DataFrame) -> dict[tuple[str, str, str], str]:
    """A legend label per (source, model, variant): name and variant, plus the source where names repeat."""
    keys = list(dict.fromkeys(zip(depth["source"], depth["model"], depth["variant"])))
    plain = {k: side_label(k[1], k[2]) for k in keys}
    counts = pd.Series(list(plain.values())).value_counts()
    return {k: plain[k] + (f" ({k[0]})" if counts[plain[k]] > 1 and k[0] else "") for k in keys}


# ---------------------------------------------------------------- figures


def plot_head_errors(heads: pd.DataFrame, path: str | os.PathLike, title: str, dpi: float | None = None) -> Path:
    """Per layer, the distribution over heads of the per-head max and median relative error of s (box plots)."""
    from .plots import DEFAULT_DPI, new_figure, save_figure, style, tight_layout

    layers = sorted(heads["layer"].unique())
    with style():
        fig = new_figure((max(10, 0.35 * len(layers) + 4), 9), dpi=100)
        axes = fig.subplots(2, 1, sharex=True)
        for ax, column, what in zip(axes, ("sv_err_max", "sv_err_median"), ("max", "median")):
            values = [heads.loc[heads["layer"] == layer, column].to_numpy(np.float64) for layer in layers]
            finite = np.concatenate(values)
            finite = finite[np.isfinite(finite)]
            ax.boxplot([v[np.isfinite(v)] for v in values], positions=np.arange(len(layers)), widths=0.5,
                       showmeans=True, showfliers=True, manage_ticks=False)  # fmt: skip
            if len(finite) and finite.min() > 0:
                ax.set_yscale("log")
            ax.set_ylabel(f"{what} over the head's\nsingular values")
            ax.set_title(f"per-head {what} relative error |s_B − s_A| / |s_A|", fontsize="medium")
        step = max(1, len(layers) // 40)
        axes[-1].set_xticks(np.arange(0, len(layers), step), [str(layers[i]) for i in range(0, len(layers), step)])
        axes[-1].set_xlabel("layer (boxes: heads of the layer; triangle: mean)")
        axes[-1].set_xlim(-0.5, len(layers) - 0.5)
        fig.suptitle(textwrap.fill(title, 90), fontsize="medium")
        tight_layout(fig)
        return save_figure(fig, path, DEFAULT_DPI if dpi is None else dpi, preview=False)  # no page shows compare's figures


def plot_metric_depth(depth: pd.DataFrame, metric: str, path: str | os.PathLike, title: str | None = None,
                      dpi: float | None = None) -> Path:  # fmt: skip
    """One metric against relative depth: per model the per-layer median line and its interquartile band.

    ``depth`` is a :func:`depth_table`; models without any value of the metric
    (e.g. positivity of legacy rows) are named below the axes instead of drawn.
    """
    from .plots import DEFAULT_DPI, new_figure, save_figure, style, tight_layout

    part = depth[depth["metric"] == metric]
    labels = depth_labels(depth)
    with style():
        fig = new_figure((11, 7), dpi=100)
        ax = fig.add_subplot()
        absent = []
        for i, key in enumerate(labels):
            line = part[(part["source"] == key[0]) & (part["model"] == key[1]) & (part["variant"] == key[2])]
            line = line.sort_values("layer")
            if line.empty or line["median"].isna().all():
                absent.append(labels[key])
                continue
            x = line["relative_depth"].to_numpy()
            style_kw = {"linestyle": "--"} if is_legacy(key[2]) else {}
            ax.plot(x, line["median"], marker="o", markersize=3, color=f"C{i % 10}", label=labels[key], **style_kw)
            ax.fill_between(x, line["q25"], line["q75"], color=f"C{i % 10}", alpha=0.2, linewidth=0)
        xlabel = "relative depth  layer / (n_layers − 1)"
        ax.set_ylabel(f"{METRIC_TITLES.get(metric, metric)}\n(per-layer median; band: 25–75% of heads)")
        ax.set_xlim(-0.02, 1.02)
        if ax.lines:
            ax.legend(fontsize="small", loc="best")
        if absent:  # below the axis title, where tight_layout keeps room for it
            xlabel += "\n" + textwrap.fill("no values, not drawn: " + ", ".join(absent), 110)
        ax.set_xlabel(xlabel)
        legacy = any(is_legacy(k[2]) for k in labels)
        default = f"{METRIC_TITLES.get(metric, metric)} by relative depth"
        ax.set_title((title or default) + ("\n(dashed: legacy spectra, with the original study's pairing error)" if legacy else ""),
                     fontsize="medium")  # fmt: skip
        tight_layout(fig)
        return save_figure(fig, path, DEFAULT_DPI if dpi is None else dpi, preview=False)  # no page shows compare's figures


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
    dataset: str, family: str, revision: str | None = None, models=None, variant=None,
    against: str | None = None, against_family: str | None = None, against_revision: str | None = None,
    against_models=None, against_variant=None, skip_nonfinite: bool = False, circuit: str = "qk",
) -> tuple[Side, Side | None]:
    """Load side A and, if any ``against*`` is given, side B (each through ``load_spectra``).

    Side B defaults to side A's dataset, family and models (by their short
    names, so ``Qwen/Qwen3-0.6B`` finds the legacy ``Qwen3-0.6B``); its revision
    and variant default to side A's only within the same dataset. The original
    study's legacy spectra may sit on either side or next to built ones (the
    comparison is the explicit request to put them side by side; every label
    says which they are). ``circuit``: both sides' rows, ``qk`` (default) or ``ov`` (schema v4).
    """
    from .loading import load_spectra

    frame_a = load_spectra(dataset, family, revision=revision, models=models, variant=variant,
                           skip_nonfinite=skip_nonfinite, pool_legacy=True, circuit=circuit)  # fmt: skip
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
        raise CompareError("both sides of the comparison are the same selection: give --against DATASET, "
                           "--against_variant, --against_family, --against_revision or --against_models")  # fmt: skip
    frame_b = load_spectra(dataset_b, family_b, revision=revision_b, models=models_b, variant=variant_b,
                           skip_nonfinite=skip_nonfinite, pool_legacy=True, circuit=circuit)  # fmt: skip
    same_source = same_dataset and (family_b, revision_b) == (family, revision)
    if same_source and set(selection(frame_a)) == set(selection(frame_b)):
        chosen = ", ".join(f"{m} [{v}]" for m, v in sorted(set(selection(frame_a)))[:3])
        raise CompareError(f"both sides of the comparison select the same rows ({chosen}): name both variants "
                           "(--variant and --against_variant), or give --against, --against_family or --against_revision")  # fmt: skip
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
    from .circuits import circuit_of, label_tables
    from .plots import variant_suffix
    from .table_files import write_table

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
        for (model_a, va, model_b, vb), part in heads.groupby(["model_a", "variant_a", "model_b", "variant_b"], sort=False):
            name = f"compare/{model_slug(model_a)}.{fmt}"
            title = (f"{side_label(model_b, vb)} ({b.name}) against {side_label(model_a, va)} ({a.name}): "
                     f"per-head relative error of the singular values")  # fmt: skip
            plot_head_errors(part, family_dir / name, title, dpi)
            outputs.figures.setdefault("compare", []).append(name)
    outputs.frames["depth"] = depth
    write_table(depth, family_dir / "tables" / "depth.csv")
    outputs.tables["depth"] = "tables/depth.csv"
    (family_dir / "depth").mkdir(exist_ok=True)
    for metric in metrics:
        name = f"depth/{metric}.{fmt}"
        title = (f"{family}: {METRIC_TITLES[metric]} by relative depth"
                 + variant_suffix(sorted(set(depth["variant"])), circuit_of(frame)))  # fmt: skip
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
