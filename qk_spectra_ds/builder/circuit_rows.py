"""The schema-v4 circuit columns of a model's rows: symmetry, copying score, matched-null z-scores.

Row assembly only (the math is :mod:`.circuits`): per (circuit, variant), from the kernel's
singular values and cross eigenvalues of every layer. ``qk`` rows carry the positivity null
(copying columns null), ``ov`` rows the copying score, its positive share and its null (their
``positivity`` equals ``copying_score``: the same formula on the OV eigenvalues). Symmetry and
its null on both. Null-variant rows carry the metrics but no matched null (they are a null
already); the matched null's draws are seeded per (model, layer, circuit, variant) from
``matched_null_seed`` (the build's ``--null-seed``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .. import schema
from . import circuits

_CIRCUIT_INDEX = {schema.CIRCUIT_QK: 0, schema.CIRCUIT_OV: 1}
_VARIANT_INDEX = {schema.VARIANT_RAW: 0, schema.VARIANT_FOLDED: 1, schema.VARIANT_NULL: 2}


def _nullable(values: np.ndarray) -> list:
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(values, np.float64).ravel()]


def circuit_metric_columns(
    circuit: str,
    variant: str,
    singular_values: np.ndarray,
    eigenvalues: np.ndarray | None,
    d_model: int,
    layers: Sequence[int],
    *,
    model_key: int,
    seed: int | None,
    eigvals: Callable | None = None,
) -> dict[str, list[Any]]:
    """:data:`schema.CIRCUIT_METRIC_COLUMNS` for (L, H, d_head) singular values and (L, H, d_head) complex mu.

    ``eigenvalues`` None (no cross eigenvalues): every column null.
    """
    n_layers, n_heads, _ = singular_values.shape
    n = n_layers * n_heads
    columns: dict[str, list[Any]] = {name: [None] * n for name in schema.CIRCUIT_METRIC_COLUMNS}
    if eigenvalues is None:
        return columns
    s = singular_values.reshape(n, -1)
    mu = eigenvalues.reshape(n, -1)
    columns["symmetry"] = _nullable(circuits.symmetry(s, mu))
    positivity_like = circuits.copying_score(mu)
    metric = "copying_score" if circuit == schema.CIRCUIT_OV else "positivity"
    if circuit == schema.CIRCUIT_OV:
        columns["copying_score"] = _nullable(positivity_like)
        columns["copying_positive_share"] = _nullable(circuits.positive_share(mu))
    if variant == schema.VARIANT_NULL or seed is None:
        return columns
    sym_mean, sym_sd = circuits.symmetry_null_moments(s, d_model)
    columns["symmetry_null_mean"] = _nullable(sym_mean)
    columns["symmetry_null_sd"] = _nullable(sym_sd)
    columns["symmetry_z"] = _nullable(circuits.z_scores(circuits.symmetry(s, mu), sym_mean, sym_sd))
    means, sds, draws = [], [], []
    for i, layer in enumerate(layers):
        rng = circuits.matched_null_rng(seed, model_key, int(layer), _CIRCUIT_INDEX[circuit], _VARIANT_INDEX[variant])
        mean, sd, used = circuits.positivity_null_moments(singular_values[i], d_model, rng, eigvals)
        means.append(mean)
        sds.append(sd)
        draws.extend([used] * n_heads)
    mean, sd = np.concatenate(means), np.concatenate(sds)
    columns[f"{metric}_null_mean"] = _nullable(mean)
    columns[f"{metric}_null_sd"] = _nullable(sd)
    columns[f"{metric}_z"] = _nullable(circuits.z_scores(positivity_like, mean, sd))
    columns["matched_null_draws"] = draws
    columns["matched_null_seed"] = [int(seed)] * n
    return columns


def eigvals_per_core(matrices: np.ndarray) -> np.ndarray:
    """Eigenvalues of (k, H, n, n) matrices, the heads split over the CPU cores (single-threaded LAPACK each)."""
    from .raw_numpy import per_core, single_threaded_blas

    with single_threaded_blas():
        parts = per_core(lambda heads: np.linalg.eigvals(matrices[:, heads.start : heads.stop]), matrices.shape[1])
    return np.concatenate(parts, axis=1)
