"""Checks of the selected rows: possible indices and shapes, finite spectra, values a QK spectrum can have.

Every failure is one line (:class:`~qk_spectra_ds.errors.AnalysisError` or
:class:`~qk_spectra_ds.errors.LoadError`) naming the file (``where``) and the
head. Heads with a constant spectrum (an all-zero head: NaN skew and kurtosis)
are left out with a :class:`ConstantSpectraWarning`; non-finite spectra fail
unless skipped, with a :class:`NonFiniteSpectraWarning` that counts them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .. import schema
from ..errors import AnalysisError, LoadError
from .reading import SPECTRUM_COLUMN

EV_STAT_COLUMNS = schema.EV_STAT_COLUMNS


class NonFiniteSpectraWarning(UserWarning):
    """Rows with NaN/Inf spectra were skipped."""


class ConstantSpectraWarning(UserWarning):
    """Heads with a constant spectrum (e.g. all-zero heads, NaN skew/kurtosis) were left out."""


def drop_constant_spectra(frame: pd.DataFrame) -> pd.DataFrame:
    """Leave out, with a warning, heads whose spectrum is constant and whose skew/kurtosis are NaN.

    The builder writes NaN skew/kurtosis for a constant spectrum (an all-zero head):
    it has no shape to classify or to put in a SKEW/KURTOSIS box, so it is not an error.
    """
    ev = frame[list(EV_STAT_COLUMNS)].to_numpy(dtype=np.float64, na_value=np.nan)
    shape = [EV_STAT_COLUMNS.index(c) for c in ("ev_skew", "ev_kurtosis")]
    rest = [i for i in range(len(EV_STAT_COLUMNS)) if i not in shape]
    low, high = ev[:, EV_STAT_COLUMNS.index("ev_min")], ev[:, EV_STAT_COLUMNS.index("ev_max")]
    constant = (low == high) & np.isfinite(ev[:, rest]).all(axis=1) & np.isnan(ev[:, shape]).all(axis=1)
    if not constant.any():
        return frame
    if constant.all():
        raise LoadError("every selected head has a constant spectrum (e.g. all zero): nothing to classify")
    first = frame.loc[constant].iloc[0]
    warnings.warn(
        f"left out {int(constant.sum())} head(s) with a constant spectrum (first: {first['model_id']} layer "
        f"{first['layer']} head {first['head']}, eigenvalues all {low[constant][0]:g}): no spectral shape to classify",
        ConstantSpectraWarning,
        stacklevel=5,
    )
    return frame.loc[~constant]


def check_finite(frame: pd.DataFrame, skip: bool) -> pd.DataFrame:
    """``frame`` without constant heads; non-finite or missing spectra fail, or are dropped with a warning (``skip``)."""
    frame = drop_constant_spectra(frame)
    spectra = frame[SPECTRUM_COLUMN].tolist()
    null = np.array([s is None or len(s) == 0 for s in spectra], dtype=bool)
    lengths = np.array([0 if s is None else len(s) for s in spectra])
    flat = np.concatenate([s for s in spectra if s is not None]) if (~null).any() else np.zeros(0, np.float32)
    row_of = np.repeat(np.arange(len(spectra)), lengths)
    bad_values = np.zeros(len(spectra), dtype=bool)
    np.logical_or.at(bad_values, row_of, ~np.isfinite(flat))
    stats = frame[list(EV_STAT_COLUMNS)].to_numpy(dtype=np.float64, na_value=np.nan)
    bad_stats = ~np.isfinite(stats).all(axis=1)
    bad = null | bad_values | bad_stats
    if not bad.any():
        return frame
    first = frame.loc[bad].iloc[0]
    where = f"{first['model_id']} layer {first['layer']} head {first['head']}"
    what = (
        "an empty or null spectrum"
        if null[bad][0]
        else ("NaN/Inf eigenvalues" if bad_values[bad][0] else "NaN/Inf eigenvalue statistics")
    )
    if not skip:
        raise LoadError(
            f"{int(bad.sum())} head(s) have non-finite or missing spectra (first: {where}, {what}); "
            "pass --skip-nonfinite to drop them"
        )
    warnings.warn(
        f"skipped {int(bad.sum())} head(s) with non-finite or missing spectra (first: {where}, {what})",
        NonFiniteSpectraWarning,
        stacklevel=4,
    )
    kept = frame.loc[~bad]
    if kept.empty:
        raise LoadError("every selected head has a non-finite or missing spectrum")
    return kept


def check_structure(frame: pd.DataFrame, singular_values: Sequence[np.ndarray | None], where) -> None:
    """Refuse rows whose indices or shapes are impossible; one line naming the file (``where``) and the row.

    Checked: n_layers, n_heads, d_head positive and the same for all rows of a
    (model, variant); 0 <= layer < n_layers, 0 <= head < n_heads; n_heads a
    multiple of n_kv_heads and kv_head = head // (n_heads / n_kv_heads) where
    known; spectra of length d_head; no (model, variant, layer, head) twice;
    every layer present with all its n_heads heads.
    """
    index = frame.index.to_numpy()
    ints = {
        c: frame[c].to_numpy(dtype=np.float64, na_value=np.nan)
        for c in ("layer", "head", "kv_head", "n_layers", "n_heads", "n_kv_heads", "d_head")
    }
    layer, head, n_layers, n_heads, d_head = (ints[c] for c in ("layer", "head", "n_layers", "n_heads", "d_head"))
    kv, n_kv = ints["kv_head"], ints["n_kv_heads"]
    ev_len = np.array([len(s) for s in frame[SPECTRUM_COLUMN]], dtype=np.float64)
    sv_len = np.array(
        [np.nan if singular_values[i] is None else len(singular_values[i]) for i in index], dtype=np.float64
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        group = np.where(n_kv >= 1, n_heads // np.where(n_kv >= 1, n_kv, 1), np.nan)
        checks = [
            (
                ~((n_layers >= 1) & (n_heads >= 1) & (d_head >= 1)),
                lambda r: f"n_layers {r.n_layers}, n_heads {r.n_heads}, d_head {r.d_head}: each must be at least 1",
            ),
            (
                ~((layer >= 0) & (layer < n_layers)),
                lambda r: f"layer {r.layer} is outside 0..{r.n_layers - 1} (n_layers {r.n_layers})",
            ),
            (
                ~((head >= 0) & (head < n_heads)),
                lambda r: f"head {r.head} is outside 0..{r.n_heads - 1} (n_heads {r.n_heads})",
            ),
            (
                ~np.isnan(n_kv) & ~((n_kv >= 1) & (n_heads % np.where(n_kv >= 1, n_kv, 1) == 0)),
                lambda r: f"n_heads {r.n_heads} is not a multiple of n_kv_heads {r.n_kv_heads}",
            ),
            (
                ~np.isnan(kv) & ~np.isnan(group) & (kv != head // group),
                lambda r: (
                    f"kv_head {r.kv_head} is not head // (n_heads / n_kv_heads) = {int(r.head // (r.n_heads // r.n_kv_heads))}"
                ),
            ),
            (ev_len != d_head, lambda r: f"{len(r.eigenvalues)} eigenvalues, but d_head is {r.d_head}"),
            (
                ~np.isnan(sv_len) & (sv_len != d_head),
                lambda r: f"{len(singular_values[r.Index])} singular values, but d_head is {r.d_head}",
            ),
        ]
    for bad, describe in checks:
        if bad.any():
            row = next(frame.loc[bad].itertuples())
            raise AnalysisError(
                f"{where(row.model_id, row.variant)}: layer {row.layer} head {row.head}: {describe(row)}"
            )
    keys = ["model_id", "variant"]
    for column in ("n_layers", "n_heads", "d_head"):
        counts = frame.groupby(keys, sort=False)[column].nunique()
        if (counts > 1).any():
            model, variant = counts[counts > 1].index[0]
            values = sorted(frame.loc[(frame.model_id == model) & (frame.variant == variant), column].unique())
            raise AnalysisError(f"{where(model, variant)}: rows disagree on {column} ({', '.join(map(str, values))})")
    dup = frame.duplicated(keys + ["layer", "head"])
    if dup.any():
        row = next(frame.loc[dup].itertuples())
        raise AnalysisError(
            f"{where(row.model_id, row.variant)}: layer {row.layer} head {row.head} appears more than once "
            f"({int(dup.sum())} duplicate row(s)): each (model, variant, layer, head) must be one row"
        )
    heads = frame.groupby(keys + ["layer"], sort=False).agg(count=("head", "size"), n_heads=("n_heads", "first"))
    short = heads[heads["count"] != heads["n_heads"]]
    if len(short):
        (model, variant, layer_id), row = next(iter(short.iterrows()))
        raise AnalysisError(
            f"{where(model, variant)}: layer {layer_id} has {row['count']} of its {row['n_heads']} heads"
        )


def spectrum_problem(
    singular_values: np.ndarray, eigenvalues: np.ndarray, stats: dict[str, np.ndarray] | None = None
) -> tuple[int, str] | None:
    """The first head (row) whose spectrum no QK circuit can have, and what is wrong; None if all are fine.

    ``singular_values`` and ``eigenvalues`` are ``(n_heads, d_head)``; rows holding
    NaN/Inf are left to the non-finite check. Errors: a negative value; singular
    values not in descending order; eigenvalues that are not the squares of the
    singular values (relative 1e-5, plus 1e-6 of the head's largest eigenvalue
    for values near float32's underflow); published ``ev_min``/``ev_max``
    (``sv_min``/``sv_max``) other than the spectrum's smallest and largest value
    (the same tolerance). float32 rounding of correct data stays below 3e-7.
    """
    sv = np.asarray(singular_values, dtype=np.float64)
    ev = np.asarray(eigenvalues, dtype=np.float64)
    finite = np.isfinite(sv).all(axis=1) & np.isfinite(ev).all(axis=1)
    if not finite.any():
        return None
    with np.errstate(invalid="ignore"):
        atol = 1e-6 * np.where(finite, np.abs(ev).max(axis=1, initial=0.0), 0.0) + 1e-37
        sv_atol = 1e-6 * np.where(finite, np.abs(sv).max(axis=1, initial=0.0), 0.0) + 1e-37

    def close(a: np.ndarray, b: np.ndarray, scale: np.ndarray) -> np.ndarray:
        return np.abs(a - b) <= 1e-5 * np.abs(b) + scale

    checks = [
        (
            ((sv < 0) | (ev < 0)).any(axis=1),
            lambda i: (
                f"negative {'eigenvalue' if (ev[i] < 0).any() else 'singular value'} {min(ev[i].min(), sv[i].min()):.6g}"
            ),
        ),
        ((np.diff(sv, axis=1) > 0).any(axis=1), lambda i: "singular values are not in descending order"),
        (
            ~close(ev, sv**2, atol[:, None]).all(axis=1),
            lambda i: "eigenvalues are not the squares of the singular values",
        ),
    ]
    for name, values, scale in (("ev", ev, atol), ("sv", sv, sv_atol)):
        for stat, reduce in (("min", np.min), ("max", np.max)):
            published = None if stats is None else stats.get(f"{name}_{stat}")
            if published is None:
                continue
            published = np.asarray(published, dtype=np.float64)
            actual = reduce(values, axis=1)
            bad = np.isfinite(published) & ~close(published, actual, scale)
            checks.append(
                (
                    bad,
                    lambda i, n=f"{name}_{stat}", p=published, a=actual: (
                        f"{n} {p[i]:.6g} is not the spectrum's {n[3:]} {a[i]:.6g}"
                    ),
                )
            )
    for bad, describe in checks:
        bad = bad & finite
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            return first, describe(first)
    return None


def check_values(frame: pd.DataFrame, singular_values: Sequence[np.ndarray | None], where) -> None:
    """Apply :func:`spectrum_problem` per (model, variant) and d_head; one line naming the file and the head."""
    stat_columns = [c for c in ("ev_min", "ev_max", "sv_min", "sv_max") if c in frame.columns]
    for (model, variant), rows in frame.groupby(["model_id", "variant"], sort=False):
        with_sv = rows[[singular_values[i] is not None for i in rows.index]]
        for _, part in with_sv.groupby(with_sv[SPECTRUM_COLUMN].map(len), sort=False):
            sv = np.stack([singular_values[i] for i in part.index])
            ev = np.stack(part[SPECTRUM_COLUMN].tolist())
            stats = {c: part[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in stat_columns}
            problem = spectrum_problem(sv, ev, stats)
            if problem is not None:
                row = part.iloc[problem[0]]
                raise AnalysisError(f"{where(model, variant)}: layer {row['layer']} head {row['head']}: {problem[1]}")
