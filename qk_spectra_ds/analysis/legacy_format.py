"""The original study's pickle layout, checked, and its conversion into dataset rows (schema columns).

The original study published one pickle per model: a dict with the keys
``singular_values``, ``eigen_values`` (each ``layer -> (n_heads, d_head)``
float32 array) and ``singular_values_stats``, ``eigen_values_stats`` (each
``layer -> list of 6 (n_heads, 1) arrays``: min, max, mean, std, skew,
kurtosis). :mod:`.legacy_pickle` reads it safely; :func:`read_legacy` then
checks the exact layout, and :func:`check_legacy_values` what the numbers must satisfy (no negative values, eigenvalues the squares of
the singular values, descending, the published min/max equal to the spectra's).

What the arrays and the file name give: ``model_id`` (file stem), ``n_layers``,
``n_heads``, ``d_head``, the spectra and the published statistics (copied
unchanged, upcast to float64). What they cannot give stays null:
``model_revision``, ``model_type``, ``kv_head``, ``n_kv_heads``, ``d_model``,
``weights_dtype`` and the ``positivity`` metric. Rows are marked
``variant = "legacy"``. The other metrics are computed from the legacy
singular values by :func:`qk_spectra_ds.statistics.spectrum_metrics`.

Row order: layers in the order the pickle stores them (often ``0, 1, 10, 11,
..., 19, 2, 20, ...``), heads ascending within a layer. This is the order in
which the original analysis stacked the heads (``np.concatenate(list(
data.values()))``), and KMeans' seeded initialisation depends on it: keeping it
reproduces the original class numbering exactly.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .. import __version__, schema
from ..errors import LegacyFormatError
from ..integrity import legacy_units, value_problem
from ..statistics import spectrum_metrics
from .legacy_pickle import safe_load
from .row_checks import spectrum_problem

LEGACY_KEYS = ("singular_values", "singular_values_stats", "eigen_values", "eigen_values_stats")
MAX_LAYERS = 1024
"""Most layers (keys) per legacy dict."""


def read_legacy(path: str | os.PathLike) -> dict[str, dict[int, Any]]:
    """Safely read and check one legacy pickle; returns the four ``layer -> value`` dicts."""
    name = os.fspath(path)
    data = safe_load(path)
    if not isinstance(data, dict):
        raise LegacyFormatError(f"{name}: expected a dict, found {type(data).__name__}")
    missing = [k for k in LEGACY_KEYS if k not in data]
    if missing:
        raise LegacyFormatError(f"{name}: missing key(s) {', '.join(missing)} of the legacy format")
    extra = [str(k) for k in data if k not in LEGACY_KEYS]
    if extra:
        raise LegacyFormatError(f"{name}: unexpected key(s) {', '.join(extra[:5])}: not the legacy format")
    for key in LEGACY_KEYS:
        if not isinstance(data[key], dict):
            raise LegacyFormatError(f"{name}: {key} is a {type(data[key]).__name__}, not a dict of layers")
    layers = list(data["eigen_values"].keys())
    if not layers:
        raise LegacyFormatError(f"{name}: no layers")
    if not all(type(k) is int and 0 <= k < MAX_LAYERS for k in layers):
        raise LegacyFormatError(f"{name}: layer keys must be integers from 0 to {MAX_LAYERS - 1}")
    for key in LEGACY_KEYS:
        if set(data[key]) != set(layers):
            raise LegacyFormatError(f"{name}: {key} does not have the same layers as eigen_values")
    shape = None
    for layer in layers:
        for key in ("singular_values", "eigen_values"):
            arr = data[key][layer]
            if not isinstance(arr, np.ndarray) or arr.ndim != 2:
                raise LegacyFormatError(f"{name}: {key}[{layer}] is not a 2-D array")
            if shape is None:
                shape = arr.shape
            if arr.shape != shape:
                raise LegacyFormatError(f"{name}: {key}[{layer}] has shape {arr.shape}, expected {shape}")
        for key in ("singular_values_stats", "eigen_values_stats"):
            stats = data[key][layer]
            if not isinstance(stats, list) or len(stats) != len(schema.STATISTICS):
                raise LegacyFormatError(f"{name}: {key}[{layer}] is not a list of {len(schema.STATISTICS)} arrays")
            for stat, arr in zip(schema.STATISTICS, stats):
                if not isinstance(arr, np.ndarray) or arr.shape != (shape[0], 1):
                    found = f"shape {arr.shape}" if isinstance(arr, np.ndarray) else f"a {type(arr).__name__}"
                    raise LegacyFormatError(
                        f"{name}: {key}[{layer}] ({stat}) is {found}, expected shape ({shape[0]}, 1): one value per head"
                    )
    check_legacy_values(data, name)
    return data


def check_legacy_values(data: dict[str, dict[int, Any]], name: str) -> None:
    """Refuse numbers no QK spectrum can have (see :func:`qk_spectra_ds.loading.spectrum_problem`), and
    published statistics other than those the original's formula gives for the published spectra.

    The six statistics of both spectra are recomputed (:func:`qk_spectra_ds.statistics.spectrum_statistics`,
    the original's definitions) and compared within the rounding of its float32 arithmetic
    (:func:`qk_spectra_ds.integrity.value_problem` with :func:`~qk_spectra_ds.integrity.legacy_units`).
    """
    for layer in data["eigen_values"]:
        sv = np.asarray(data["singular_values"][layer], dtype=np.float64)
        ev = np.asarray(data["eigen_values"][layer], dtype=np.float64)
        stored = {
            f"{prefix}_{stat}": np.asarray(array, dtype=np.float64).reshape(-1)
            for prefix, key in (("sv", "singular_values_stats"), ("ev", "eigen_values_stats"))
            for stat, array in zip(schema.STATISTICS, data[key][layer])
        }
        problem = spectrum_problem(sv, ev, {"ev_min": stored["ev_min"], "ev_max": stored["ev_max"]})
        if problem is None and np.isfinite(ev).all():
            problem = value_problem(sv, ev, stored, units=legacy_units(sv.shape[1]))
        if problem is not None:
            head, what = problem
            raise LegacyFormatError(f"{name}: layer {layer} head {head}: {what}")


def legacy_columns(data: dict[str, dict[int, Any]], model_id: str, family: str) -> dict[str, list]:
    """Dataset columns (name -> values) for one legacy model, in the pickle's layer order."""
    layers = [int(k) for k in data["eigen_values"].keys()]
    n_heads, d_head = data["eigen_values"][layers[0]].shape
    n_layers = max(layers) + 1
    n_rows = len(layers) * n_heads

    sv = np.concatenate([np.asarray(data["singular_values"][k], dtype=np.float32) for k in layers])
    ev = np.concatenate([np.asarray(data["eigen_values"][k], dtype=np.float32) for k in layers])
    columns: dict[str, list] = {
        "model_id": [model_id] * n_rows,
        "model_revision": [None] * n_rows,
        "family": [family] * n_rows,
        "model_type": [None] * n_rows,
        "variant": [schema.VARIANT_LEGACY] * n_rows,
        "layer": np.repeat(layers, n_heads).tolist(),
        "head": np.tile(np.arange(n_heads), len(layers)).tolist(),
        "kv_head": [None] * n_rows,
        "n_layers": [n_layers] * n_rows,
        "n_heads": [int(n_heads)] * n_rows,
        "n_kv_heads": [None] * n_rows,
        "d_model": [None] * n_rows,
        "d_head": [int(d_head)] * n_rows,
        "singular_values": list(sv),
        "eigenvalues": list(ev),
    }
    for prefix, key in (("sv", "singular_values_stats"), ("ev", "eigen_values_stats")):
        for i, stat in enumerate(schema.STATISTICS):
            values = np.concatenate([np.asarray(data[key][k][i]).reshape(-1) for k in layers])
            columns[f"{prefix}_{stat}"] = values.astype(np.float64).tolist()
    with np.errstate(divide="ignore", invalid="ignore"):
        metrics = spectrum_metrics(sv)
    for name in schema.METRICS:
        if name == "positivity":
            columns[name] = [None] * n_rows  # needs the weights: unknowable from the legacy data
        else:
            columns[name] = metrics[name].tolist()
    for name in schema.LAYER_FACT_COLUMNS + schema.OFFSET_COLUMNS + schema.NULL_COLUMNS:
        columns[name] = [None] * n_rows  # legacy spectra have no positional part, per-layer facts or null draws
    columns["circuit"] = [schema.CIRCUIT_QK] * n_rows  # the original study's spectra are of W_QK
    for name in schema.CIRCUIT_METRIC_COLUMNS + schema.BEHAVIOUR_COLUMNS + schema.PROBE_COLUMNS:
        columns[name] = [None] * n_rows  # need the eigenvalues of the weights, or a run of the model
    columns["weights_dtype"] = [None] * n_rows
    columns["builder_version"] = [__version__] * n_rows
    columns["method_version"] = [schema.METHOD_VERSION_LEGACY] * n_rows  # not computed by this builder
    columns["schema_version"] = [schema.SCHEMA_VERSION] * n_rows
    return columns
