"""Verification of a dataset: file checksums, and every stored number recomputed from the arrays.

Two independent guards, both pure functions (numpy and hashlib; no torch, no I/O
beyond reading the files they hash):

- **Files.** :func:`file_digest` is the SHA-256 and size of a data file; the
  builder records it in the card's ``qk_spectra_ds.models`` entries when it
  writes the file, and :func:`check_digests` compares a file (local) or the
  Hub's own LFS SHA-256 (remote) against that record. One flipped bit anywhere
  in a file is a mismatch.
- **Rows.** :func:`value_problem` and :func:`positional_problem` recompute every
  stored statistic, metric and positional summary from the stored float32
  arrays with the definitions in :mod:`qk_spectra_ds.statistics`, and compare
  within a bound derived from float32 rounding of those arrays (the builder
  computes in float64 before storing float32; the original study computed in
  float32). A value outside its bound cannot come from correct data: it is
  corrupt, edited, or computed by another formula.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

from .errors import IntegrityError
from .statistics import (
    STD_FLOOR,
    positional_summaries,
    spectrum_metrics,
    spectrum_statistics,
)

EPS32 = 2.0**-24
"""Unit roundoff of float32: a stored value is within |x| * EPS32 of the float64 value it rounds."""
TINY32 = 2.0**-149
"""float32's smallest subnormal: the rounding error of values below float32's normal range."""
SAFETY = 4.0
"""Factor on every first-order rounding bound (second-order terms, summation order)."""


# ---------------------------------------------------------------- files


def file_digest(path: str | os.PathLike) -> dict[str, object]:
    """``{"sha256": hex, "n_bytes": size}`` of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"sha256": digest.hexdigest(), "n_bytes": os.path.getsize(path)}


def recorded_digests(models: Sequence[Mapping[str, object]]) -> dict[str, dict[str, object]]:
    """path -> ``{"sha256", "n_bytes"}`` of the card's model entries that record a checksum."""
    out = {}
    for entry in models:
        sha = entry.get("sha256")
        if isinstance(sha, str) and len(sha) == 64 and isinstance(entry.get("path"), str):
            out[str(entry["path"])] = {"sha256": sha, "n_bytes": entry.get("n_bytes")}
    return out


def digest_mismatch(name: str, actual: Mapping[str, object], recorded: Mapping[str, object], remedy: str) -> str | None:
    """One line if ``actual`` (sha256, n_bytes) differs from ``recorded``, else None."""
    size = recorded.get("n_bytes")
    if size is not None and actual.get("n_bytes") is not None and int(actual["n_bytes"]) != int(size):
        return (
            f"{name} is {actual['n_bytes']} bytes, but the card records {size} bytes for it: the file is truncated, "
            f"corrupt or was changed after it was written; {remedy}"
        )
    if actual.get("sha256") != recorded.get("sha256"):
        return (
            f"{name} has SHA-256 {str(actual.get('sha256'))[:16]}..., but the card records {str(recorded['sha256'])[:16]}...: "
            f"the file is corrupt or was changed after it was written; {remedy}"
        )
    return None


def check_digests(
    actual: Mapping[str, Mapping[str, object]], recorded: Mapping[str, Mapping[str, object]], remedy: str
) -> list[str]:
    """Raise :class:`IntegrityError` at the first file whose digest differs; return the files with no record."""
    unverified = []
    for name in sorted(actual):
        if name not in recorded:
            unverified.append(name)
            continue
        problem = digest_mismatch(name, actual[name], recorded[name], remedy)
        if problem:
            raise IntegrityError(problem)
    return unverified


# ---------------------------------------------------------------- rows


def _rounding(x: np.ndarray, units: float) -> np.ndarray:
    """Largest error of each stored float32 value (``units`` roundings of it), per element."""
    return units * np.maximum(np.abs(x) * EPS32, TINY32)


def _agree(stored: np.ndarray, recomputed: np.ndarray, tol: np.ndarray) -> np.ndarray:
    """Equal within ``tol``; NaN only with NaN, infinities only with the same infinity."""
    stored, recomputed = np.asarray(stored, np.float64), np.asarray(recomputed, np.float64)
    with np.errstate(invalid="ignore"):
        close = np.abs(stored - recomputed) <= tol + 1e-12 * np.abs(recomputed)
    same = (np.isnan(stored) & np.isnan(recomputed)) | ((stored == recomputed) & np.isinf(stored))
    return close | same


def _statistic_bounds(x: np.ndarray, delta: np.ndarray, stats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """First-order bounds on how far each statistic moves when every x_i moves by at most delta_i."""
    d = delta.max(axis=-1)
    n = x.shape[-1]
    std = stats["std"]
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (x - stats["mean"][:, None]) / np.maximum(std, STD_FLOOR)[:, None]
        # z_i moves by at most (2 + |z_i|) d / std; skew = mean(z^3), kurtosis = mean(z^4) - 3
        b = d / np.maximum(std - 2 * d, STD_FLOOR)
        skew = 3 * (z**2 * (2 + np.abs(z))).mean(axis=-1) * b
        kurt = 4 * (np.abs(z) ** 3 * (2 + np.abs(z))).mean(axis=-1) * b
    ill = ~(b < 0.1)  # std within rounding of zero: the shape is rounding noise, and NaN (constant) or not is open
    skew = np.where(ill, np.inf, skew)
    kurt = np.where(ill, np.inf, kurt)
    return {"min": d, "max": d, "mean": d, "std": d * np.sqrt(n / max(n - 1, 1)) * 2, "skew": skew, "kurtosis": kurt}


def _metric_bounds(s: np.ndarray, delta: np.ndarray, metrics: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """First-order bounds for the metrics of singular values ``s`` that each moved by at most ``delta``."""
    ev = s**2
    e = 2 * s * delta + delta**2  # how far each eigenvalue moved
    total, top = ev.sum(axis=-1), ev.max(axis=-1)
    d_total, d_top = e.sum(axis=-1), e.max(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = ev / total[:, None]
        dp = (e + p * d_total[:, None]) / np.maximum(total - d_total, 0)[:, None]
        positive = p > 0
        log = np.log(np.where(positive, p, np.where(dp > 0, dp, 1.0)))  # ln p, or ln dp where p = 0
        d_entropy = (dp * np.where(positive, np.abs(log + 1), 1 + np.abs(log))).sum(axis=-1)
        stable = metrics["stable_rank"] * (d_total / total + d_top / top)
        effective = metrics["effective_rank"] * np.expm1(np.minimum(d_entropy, 700))
        tiny = (s <= 2 * delta).any(axis=-1)  # a value within rounding of zero: its log is unbounded
        log_det = np.where(tiny, np.inf, (delta / np.maximum(s - delta, TINY32)).sum(axis=-1))
        frob = np.minimum(
            np.sqrt(d_total), d_total / (2 * np.sqrt(np.maximum(total - d_total, 0)))
        )  # |sqrt(T + dT) - sqrt(T)|
    return {
        "frobenius": frob,
        "spectral_norm": delta.max(axis=-1),
        "stable_rank": stable,
        "effective_rank": effective,
        "log_det": log_det,
    }


def legacy_units(d_head: int) -> float:
    """float32 roundings the original study's float32 arithmetic may add to a statistic of ``d_head`` values.

    Its statistics were computed in float32 (pairwise sums: about log2(d_head) roundings),
    then stored as float32: 2 + log2(d_head), times the usual safety factor.
    """
    return 2.0 + math.log2(max(d_head, 2))


def value_problem(
    singular_values: np.ndarray,
    eigenvalues: np.ndarray,
    stored: Mapping[str, np.ndarray],
    units: float = 1.0,
) -> tuple[int, str] | None:
    """The first head whose stored statistics or metrics are not those of its stored spectra; None if all agree.

    ``singular_values``, ``eigenvalues``: ``(n, d_head)`` as stored (float32).
    ``stored``: column name -> ``(n,)`` stored value (NaN where null) for any of
    ``sv_*``, ``ev_*``, ``frobenius``, ``spectral_norm``, ``stable_rank``,
    ``effective_rank``, ``log_det``, ``positivity``. ``units``: float32 roundings
    per value allowed beyond the storage rounding (1 for float64 computation, more
    for the original study's float32 arithmetic). Also refused: non-finite or
    negative singular values, eigenvalues that are not their squares, positivity
    outside [-1, 1]. Heads with non-finite eigenvalues are left to the loader's
    non-finite check.
    """
    sv = np.asarray(singular_values, dtype=np.float64)
    ev = np.asarray(eigenvalues, dtype=np.float64)
    checked = np.isfinite(ev).all(axis=1)
    bad_sv = ~(np.isfinite(sv) & (sv >= 0)).all(axis=1)
    with np.errstate(invalid="ignore"):
        square_tol = _rounding(ev, 1.0) + 2 * sv * _rounding(sv, 1.0) + _rounding(sv, 1.0) ** 2
        not_square = ~(np.abs(ev - sv**2) <= SAFETY * square_tol).all(axis=1)
    checks: list[tuple[np.ndarray, object]] = [
        (bad_sv, lambda i: "singular values are NaN, infinite or negative"),
        (not_square & ~bad_sv, lambda i: "eigenvalues are not the squares of the singular values"),
    ]
    fine = checked & ~bad_sv
    for prefix, x in (("sv", sv), ("ev", ev)):
        columns = {name: f"{prefix}_{name}" for name in ("min", "max", "mean", "std", "skew", "kurtosis")}
        if not any(c in stored for c in columns.values()):
            continue
        xs = np.where(fine[:, None], x, 0.0)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            stats = spectrum_statistics(xs, fast=True)
            bounds = _statistic_bounds(xs, _rounding(xs, units + 1.0), stats)
        for name, column in columns.items():
            if column in stored:
                value = np.asarray(stored[column], dtype=np.float64)
                tol = SAFETY * bounds[name] + _rounding(value, 1.0) * (units > 1)
                checks.append((fine & ~_agree(value, stats[name], tol), _describe(column, value, stats[name])))
    names = ("frobenius", "spectral_norm", "stable_rank", "effective_rank", "log_det")
    if any(c in stored for c in names):
        ss = np.where(fine[:, None], sv, 0.0)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            metrics = spectrum_metrics(ss)
            bounds = _metric_bounds(ss, _rounding(ss, units), metrics)
        for name in names:
            if name in stored:
                value = np.asarray(stored[name], dtype=np.float64)
                checks.append(
                    (fine & ~_agree(value, metrics[name], SAFETY * bounds[name]), _describe(name, value, metrics[name]))
                )
    if "positivity" in stored:
        value = np.asarray(stored["positivity"], dtype=np.float64)
        checks.append(
            (
                ~(np.isnan(value) | ((value >= -1 - 1e-12) & (value <= 1 + 1e-12))),
                lambda i: f"positivity {value[i]:.6g} is outside [-1, 1]",
            )
        )
    for bad, describe in checks:
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            return first, describe(first)
    return None


def _describe(column: str, stored: np.ndarray, recomputed: np.ndarray):
    return lambda i: f"{column} {stored[i]:.8g} is not the {recomputed[i]:.8g} its stored spectrum gives"


def positional_problem(
    singular_values: np.ndarray,
    offsets: np.ndarray,
    positional: np.ndarray,
    stored: Mapping[str, np.ndarray],
) -> tuple[int, str] | None:
    """The first head whose positional spectra or summaries are impossible or disagree; None if all agree.

    ``singular_values`` ``(n, d)``, ``offsets`` ``(n, n_off)`` (int), ``positional``
    ``(n, n_off, d)`` as stored; ``stored``: ``positional_norm_ratio_min``/``_max``,
    ``half_norm_offset`` (NaN where null), each ``(n,)``. Checked: offsets
    non-negative, strictly increasing and the same per head; positional singular
    values finite, non-negative and descending; at offset 0 equal to the row's own
    spectrum; the summaries those of :func:`qk_spectra_ds.statistics.positional_summaries`.
    """
    sv = np.asarray(singular_values, dtype=np.float64)
    offs = np.asarray(offsets, dtype=np.int64)
    pos = np.asarray(positional, dtype=np.float64)
    if len(offs) == 0:
        return None
    bad_offsets = (offs < 0).any(axis=1) | (np.diff(offs, axis=1) <= 0).any(axis=1)
    with np.errstate(invalid="ignore"):
        bad_values = ~(np.isfinite(pos) & (pos >= 0)).all(axis=(1, 2)) | (np.diff(pos, axis=2) > 0).any(axis=(1, 2))
    checks = [
        (bad_offsets, lambda i: f"offsets {offs[i].tolist()[:8]} are not non-negative and strictly increasing"),
        (
            bad_values & ~bad_offsets,
            lambda i: "positional singular values are NaN, infinite, negative or not descending",
        ),
    ]
    fine = ~bad_offsets & ~bad_values & np.isfinite(sv).all(axis=1)
    zero = offs == 0
    if zero.any():
        at_zero = np.where(zero[:, :, None], pos, 0.0).sum(axis=1)
        tol = SAFETY * (_rounding(sv, 1.0) + _rounding(at_zero, 1.0)) + 1e-6 * sv.max(axis=1, initial=0.0)[:, None]
        differs = zero.any(axis=1) & ~(np.abs(at_zero - sv) <= tol).all(axis=1)
        checks.append(
            (fine & differs, lambda i: "the positional spectrum at offset 0 is not the row's singular values")
        )
    # the summaries: every row of a block shares its offsets (else they were refused above)
    same = (offs == offs[:1]).all()
    if same and fine.any():
        with np.errstate(invalid="ignore", divide="ignore"):
            summary = positional_summaries(sv, pos, offs[0])
        later = offs[0] > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = pos[:, later, 0] / sv[:, :1]
            ratio_tol = SAFETY * 2 * EPS32 * np.abs(ratio)
        for name in ("positional_norm_ratio_min", "positional_norm_ratio_max"):
            if name in stored:
                value = np.asarray(stored[name], dtype=np.float64)
                tol = SAFETY * 2 * EPS32 * np.abs(summary[name])
                checks.append((fine & ~_agree(value, summary[name], tol), _describe(name, value, summary[name])))
        if "half_norm_offset" in stored and later.any():
            value = np.asarray(stored["half_norm_offset"], dtype=np.float64)
            later_offsets = offs[0][later]
            with np.errstate(invalid="ignore"):
                surely = ratio < 0.5 - ratio_tol
                maybe = ratio < 0.5 + ratio_tol
            # a stored offset h is right if no earlier offset is surely below 1/2 and h maybe is; null if none surely is
            match = later_offsets[None, :] == value[:, None]
            before = later_offsets[None, :] < value[:, None]
            ok_value = match.any(axis=1) & ~(surely & before).any(axis=1) & (maybe & match).any(axis=1)
            ok_null = np.isnan(value) & ~surely.any(axis=1)
            zero_head = ~np.isfinite(ratio).all(axis=1)  # s_1 = 0: no ratio (the builder writes null)
            checks.append(
                (
                    fine & ~(ok_value | ok_null | (zero_head & np.isnan(value))),
                    lambda i: (
                        f"half_norm_offset {value[i]:g} is not the first offset where s_1(delta)/s_1 < 1/2 "
                        f"(recomputed: {summary['half_norm_offset'][i]})"
                    ),
                )
            )
    for bad, describe in checks:
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            return first, describe(first)
    return None
