"""Import the original study's pickles into a schema-v1 dataset directory.

The original study (S. Darveshi 2025, github.com/SD-interp/qk-spectral-analysis,
Apache-2.0) published one pickle per model: a dict with the keys
``singular_values``, ``eigen_values`` (each ``layer -> (n_heads, d_head)``
float32 array) and ``singular_values_stats``, ``eigen_values_stats`` (each
``layer -> list of 6 (n_heads, 1) arrays``: min, max, mean, std, skew,
kurtosis).

Pickles execute code when loaded, so they are read with
:class:`RestrictedUnpickler`, which admits only the numpy array machinery and
``dict``/``defaultdict``/``list``: any other global (``os.system``, a user
class, ...) is refused with :class:`UnsafePickleError` before anything is
called.

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

import io
import os
import pickle
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, dataset_repo, schema
from .loading import AnalysisError
from .statistics import spectrum_metrics

LEGACY_KEYS = ("singular_values", "singular_values_stats", "eigen_values", "eigen_values_stats")


class UnsafePickleError(AnalysisError):
    """A pickle references something outside the numpy/dict machinery; nothing was executed."""


class LegacyFormatError(AnalysisError):
    """A (safe) pickle does not have the legacy layout."""


def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:  # numpy >= 2
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    allowed = {}
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    return allowed


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("collections", "defaultdict"): defaultdict,
    ("collections", "OrderedDict"): dict,
    **_numpy_globals(),
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals needed for numpy arrays in dicts.

    Everything a pickle can call comes from ``find_class``; refusing there
    means no constructor, reducer or function outside the allow-list ever
    runs. Persistent ids are refused as well.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load {module}.{name} from a pickle: only numpy arrays in dicts/lists are allowed"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing a pickle with persistent ids")


def safe_load(source: str | os.PathLike | bytes) -> Any:
    """Unpickle a file (path) or bytes with :class:`RestrictedUnpickler`."""
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
        name = "<bytes>"
    else:
        name = os.fspath(source)
        try:
            data = Path(name).read_bytes()
        except OSError as exc:
            raise LegacyFormatError(f"cannot read {name}: {exc.strerror or exc}") from exc
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{name}: {exc}") from None
    except Exception as exc:  # truncated or not a pickle at all
        raise LegacyFormatError(f"{name} is not a readable pickle: {type(exc).__name__}: {exc}") from None


def _plain(obj: Any) -> Any:
    """defaultdicts -> dicts (so that no factory can run later)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def read_legacy(path: str | os.PathLike) -> dict[str, dict[int, Any]]:
    """Safely read and check one legacy pickle; returns the four ``layer -> value`` dicts."""
    name = os.fspath(path)
    data = _plain(safe_load(path))
    if not isinstance(data, dict):
        raise LegacyFormatError(f"{name}: expected a dict, found {type(data).__name__}")
    missing = [k for k in LEGACY_KEYS if k not in data]
    if missing:
        raise LegacyFormatError(f"{name}: missing key(s) {', '.join(missing)} of the legacy format")
    layers = list(data["eigen_values"].keys())
    if not layers:
        raise LegacyFormatError(f"{name}: no layers")
    for key in LEGACY_KEYS:
        if not isinstance(data[key], dict) or set(data[key]) != set(layers):
            raise LegacyFormatError(f"{name}: {key} does not have the same layers as eigen_values")
    if not all(isinstance(k, (int, np.integer)) and k >= 0 for k in layers):
        raise LegacyFormatError(f"{name}: layer keys must be non-negative integers")
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
            if not isinstance(stats, (list, tuple)) or len(stats) != len(schema.STATISTICS):
                raise LegacyFormatError(f"{name}: {key}[{layer}] is not a list of {len(schema.STATISTICS)} arrays")
            for arr in stats:
                if not isinstance(arr, np.ndarray) or arr.size != shape[0]:
                    raise LegacyFormatError(f"{name}: {key}[{layer}] holds an array of the wrong size")
    return data


def legacy_columns(data: dict[str, dict[int, Any]], model_id: str, family: str) -> dict[str, list]:
    """Schema-v1 columns (name -> values) for one legacy model, in the pickle's layer order."""
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
    columns["weights_dtype"] = [None] * n_rows
    columns["builder_version"] = [__version__] * n_rows
    columns["schema_version"] = [schema.SCHEMA_VERSION] * n_rows
    return columns


def legacy_files(pickles: str | os.PathLike) -> list[Path]:
    """The ``*.pkl`` files of a directory (sorted), or the single file given."""
    path = Path(os.path.expanduser(os.fspath(pickles)))
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise LegacyFormatError(f"no pickle directory or file {os.fspath(pickles)!r}")
    files = sorted(path.glob("*.pkl"))
    if not files:
        raise LegacyFormatError(f"no *.pkl files in {os.fspath(pickles)!r}")
    return files


def import_legacy(
    pickles_dir: str | os.PathLike,
    family: str,
    out_dir: str | os.PathLike,
    progress: bool = False,
) -> list[Path]:
    """Convert every legacy pickle in ``pickles_dir`` into ``out_dir/data/<family>/<model>.parquet``.

    Every pickle is read and checked before anything is written, so a refused
    or malformed file leaves ``out_dir`` untouched. The card (README.md) is
    regenerated afterwards. Returns the written parquet paths.
    """
    family = str(family)
    if not family or "/" in family or family.startswith("."):
        raise LegacyFormatError(f"invalid family (config) name {family!r}")
    files = legacy_files(pickles_dir)
    tables = []
    for path in files:
        tables.append((path.stem, legacy_columns(read_legacy(path), path.stem, family)))
    written = []
    iterator = tables
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(tables, desc="import_legacy", unit="model")
    for model_id, columns in iterator:
        written.append(dataset_repo.write_model_table(out_dir, family, model_id, columns))
    dataset_repo.write_card(out_dir)
    return written
