"""Head by head: one model on two sides, every head's relative error.

The sides may be two datasets, two revisions, or two variants such as
``raw``/``folded``, or the original study's ``legacy`` spectra against spectra
built from weights. Heads are matched by (layer, head) after checking that the two sides have the
same n_layers, n_heads and d_head. Per head: the relative error
``|b - a| / |a|`` of every singular value and eigenvalue (its max and median
over the head's spectrum) and of every statistic and metric, side A (the
``--dataset``) being the reference. ``0/0`` counts as 0 and ``x/0`` as inf.

Rows of the ``legacy`` variant carry the original study's SVD factor pairing
error (the card's "Known difference from the original study"): every table has a ``note`` column and
every figure names it (:func:`side_label`, :func:`note`), so they are never mistaken for correct spectra.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import schema
from ..errors import CompareError
from .selection import model_names

LEGACY_NOTE = "legacy: the original study's spectra, with its SVD factor pairing error"
"""The ``note`` of legacy rows in every table (and, shortened, in every figure)."""

LEGACY_TAG = "legacy, original pairing error"

COMPARED_VALUES = schema.SV_STAT_COLUMNS + schema.EV_STAT_COLUMNS + schema.METRICS
"""The per-head scalars compared head by head and offered as depth metrics."""


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
            "name one model on each side with --models and --against-models"
        )
    if unmatched:
        warnings.warn(
            f"{len(unmatched)} model(s) of {a.name} have no partner in {b.name} and are left out: "
            f"{', '.join(unmatched[:5])}",
            UserWarning,
            stacklevel=2,
        )
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
        warnings.warn(
            f"{missing} head(s) of {rows_a['model_id'].iloc[0]} are on one side only and are left out",
            UserWarning,
            stacklevel=2,
        )
    if len(common) == 0:
        raise CompareError(f"{rows_a['model_id'].iloc[0]}: no (layer, head) is on both sides")
    a, b = a.loc[common], b.loc[common]
    table = pd.DataFrame(
        {"layer": common.get_level_values(0).astype(int), "head": common.get_level_values(1).astype(int)}
    )
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
            rows.append(
                {
                    **dict(zip(keys, key)),
                    "quantity": quantity,
                    "n_heads": int(finite.sum()),
                    "median": float(np.median(values[finite])) if finite.any() else np.nan,
                    "max": float(values[finite].max()) if finite.any() else np.nan,
                    "max_layer": int(worst["layer"]) if worst is not None else -1,
                    "max_head": int(worst["head"]) if worst is not None else -1,
                }
            )
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
    check_one_variant(b, "--against-variant")
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
