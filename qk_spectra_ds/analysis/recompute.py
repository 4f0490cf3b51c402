"""Every stored number of the loaded rows recomputed from the stored arrays (runs on every load).

Per selected row: ``sv_*``/``ev_*`` statistics, ``frobenius``, ``spectral_norm``,
``stable_rank``, ``effective_rank``, ``log_det`` from the singular values and
eigenvalues (:func:`qk_spectra_ds.integrity.value_problem`), and the positional
columns (offsets, spectra at offset 0, the three summaries;
:func:`qk_spectra_ds.integrity.positional_problem`), all within float32
rounding of the stored arrays. Vectorised: one call per (d_head, legacy or not)
block, one per (number of offsets, d_head) block, reading the Arrow buffers
directly. The first bad row is one line naming its file, layer and head.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import schema
from ..errors import StoredValueError
from ..integrity import legacy_units, positional_problem, value_problem

STORED_COLUMNS = schema.SV_STAT_COLUMNS + schema.EV_STAT_COLUMNS + schema.METRICS
SUMMARY_COLUMNS = ("positional_norm_ratio_min", "positional_norm_ratio_max", "half_norm_offset")


def _list_buffers(table, name: str):
    """(values, starts, lengths, valid) of a list column: row i is ``values[starts[i]:starts[i] + lengths[i]]``."""
    column = table.column(name).combine_chunks()
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    starts = column.offsets.to_numpy()[:-1].astype(np.int64)
    lengths = column.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    return column, starts, lengths, valid


def _gather(values: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    return values[starts[:, None] + np.arange(width)]


def check_stored_values(table, frame: pd.DataFrame, where) -> None:
    """Raise :class:`StoredValueError` at the first selected row whose stored numbers its arrays do not give."""
    rows = frame.index.to_numpy()
    if len(rows) == 0:
        return
    ev_col, ev_starts, ev_len, _ = _list_buffers(table, "eigenvalues")
    ev_values = ev_col.values.to_numpy(zero_copy_only=False)
    has_sv = "singular_values" in table.column_names
    if has_sv:
        sv_col, sv_starts, sv_len, sv_valid = _list_buffers(table, "singular_values")
        sv_values = sv_col.values.to_numpy(zero_copy_only=False)
    legacy = (frame["variant"] == schema.VARIANT_LEGACY).to_numpy()
    stored_all = {c: frame[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in STORED_COLUMNS if c in frame.columns}
    lengths = ev_len[rows]
    for width in np.unique(lengths):
        for is_legacy in (False, True):
            pick = (lengths == width) & (legacy == is_legacy)
            if not pick.any():
                continue
            idx = rows[pick]
            ev = _gather(ev_values, ev_starts[idx], int(width)).astype(np.float64)
            sv = np.sqrt(np.maximum(ev, 0))
            if has_sv:
                present = sv_valid[idx] & (sv_len[idx] == width)
                if present.any():
                    sv[present] = _gather(sv_values, sv_starts[idx[present]], int(width))
            stored = {c: v[pick] for c, v in stored_all.items()}
            problem = value_problem(sv, ev, stored, units=legacy_units(int(width)) if is_legacy else 1.0)
            if problem is not None:
                _raise(frame, pick, problem, where)
    if "positional_singular_values" in table.column_names and "offsets" in table.column_names:
        _check_positional(table, frame, rows, where, sv_values if has_sv else None, sv_starts if has_sv else None)


def _check_positional(table, frame: pd.DataFrame, rows: np.ndarray, where, sv_values, sv_starts) -> None:
    off_col, off_starts, off_len, off_valid = _list_buffers(table, "offsets")
    pos_col, pos_starts, pos_len, pos_valid = _list_buffers(table, "positional_singular_values")
    inner = pos_col.values  # one list per (row, offset)
    inner_starts = inner.offsets.to_numpy()[:-1].astype(np.int64)
    inner_len = inner.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    pos_values = inner.values.to_numpy(zero_copy_only=False)
    offsets_values = off_col.values.to_numpy(zero_copy_only=False)
    d_head = frame["d_head"].to_numpy(dtype=np.int64)
    stored_all = {
        c: frame[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in SUMMARY_COLUMNS if c in frame.columns
    }
    has_off, has_pos = off_valid[rows], pos_valid[rows]
    summaries = np.zeros(len(rows), dtype=bool)
    for values in stored_all.values():
        summaries |= ~np.isnan(values)
    n_off = off_len[rows]
    # inner lists: each row's lists must all hold d_head values
    inner_ok = np.ones(len(rows), dtype=bool)
    if has_pos.any():
        first_inner = pos_starts[rows]
        counts = pos_len[rows]
        owner = np.repeat(np.arange(len(rows)), counts)
        lists = (
            np.concatenate([np.arange(s, s + c) for s, c in zip(first_inner, counts)])
            if counts.sum()
            else np.zeros(0, np.int64)
        )
        wrong = inner_len[lists] != d_head[owner]
        np.logical_and.at(inner_ok, owner[wrong], False)
    checks = [
        (has_off != has_pos, "offsets and positional_singular_values are not both null or both present"),
        (~has_pos & summaries, "positional summaries are set on a row without positional spectra"),
        (has_pos & (pos_len[rows] != n_off), "positional_singular_values does not hold one spectrum per offset"),
        (has_pos & ~inner_ok, "a positional spectrum does not hold d_head values"),
        (has_pos & (n_off == 0), "positional spectra at no offset"),
    ]
    for bad, message in checks:
        if bad.any():
            _raise(frame, bad, (0, message), where)
    usable = has_pos
    if not usable.any() or sv_values is None:
        return
    keys = np.stack([n_off, d_head], axis=1)
    for k_off, width in np.unique(keys[usable], axis=0):
        pick = usable & (n_off == k_off) & (d_head == width)
        idx = rows[pick]
        offs = _gather(offsets_values, off_starts[idx], int(k_off))
        flat_start = inner_starts[pos_starts[idx]]
        pos = _gather(pos_values, flat_start, int(k_off * width)).reshape(len(idx), int(k_off), int(width))
        sv = _gather(sv_values, sv_starts[idx], int(width))
        stored = {c: v[pick] for c, v in stored_all.items()}
        for same in _same_offsets(offs):
            problem = positional_problem(sv[same], offs[same], pos[same], {c: v[same] for c, v in stored.items()})
            if problem is not None:
                sub = np.zeros(len(rows), dtype=bool)
                sub[np.flatnonzero(pick)[same]] = True
                _raise(frame, sub, problem, where)


def _same_offsets(offs: np.ndarray) -> list[np.ndarray]:
    """Index arrays of the rows sharing each distinct offsets vector (one, for a model built in one run)."""
    _, inverse = np.unique(offs, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    return [np.flatnonzero(inverse == k) for k in range(inverse.max() + 1)]


def _raise(frame: pd.DataFrame, pick: np.ndarray, problem: tuple[int, str], where) -> None:
    row = frame.iloc[int(np.flatnonzero(pick)[problem[0]])]
    raise StoredValueError(
        f"{where(row['model_id'], row['variant'])}: layer {row['layer']} head {row['head']}: {problem[1]} "
        "(the file is corrupt or was edited: rebuild that model or re-download the dataset)"
    )
