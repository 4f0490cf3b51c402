"""Import the original study's pickles into a dataset directory.

The original study (S. Darveshi 2025, github.com/SD-interp/qk-spectral-analysis,
Apache-2.0) published one pickle per model: a dict with the keys
``singular_values``, ``eigen_values`` (each ``layer -> (n_heads, d_head)``
float32 array) and ``singular_values_stats``, ``eigen_values_stats`` (each
``layer -> list of 6 (n_heads, 1) arrays``: min, max, mean, std, skew,
kurtosis). Its pickles (protocol 4) use exactly five globals:
``collections.defaultdict`` and ``builtins.dict`` for the top-level
``defaultdict(dict)``, and ``numpy._core.multiarray._reconstruct``,
``numpy.ndarray`` and ``numpy.dtype`` for the arrays.

Pickles execute code when loaded, and even the numpy globals can allocate
without bound (``ndarray((40000, 40000))``) or hand back uninitialised memory.
So :func:`safe_load` reads a pickle in three bounded steps, each refusal one
line naming the file:

1. :func:`check_opcodes` walks the opcode stream without executing it
   (``pickletools.genops``): only the data opcodes such pickles use, memo
   indices in order (a ``LONG_BINPUT 2**31`` would make the C unpickler
   allocate a 16 GB memo), every argument present (a truncated ``BINBYTES``
   would be allocated at its declared size first).
2. :class:`RestrictedUnpickler` resolves each global to a stand-in of ours,
   never to numpy itself: ``defaultdict(dict)`` becomes a plain dict;
   ``_reconstruct`` accepts only numpy's own ``(ndarray, (0,), b'b')``
   placeholder and returns an :class:`_ArrayStub`; ``dtype`` accepts only
   little-endian float32/float64 (strings, objects and records are refused);
   the array is made in ``_ArrayStub.__setstate__`` only from raw bytes of
   exactly ``prod(shape) * itemsize`` (never uninitialised), each dimension at
   most :data:`MAX_DIM`, and all arrays together at most the pickle's own size
   (so memo references cannot multiply one buffer). Anything else (``os.system``,
   a user class, ``ndarray`` called directly, ...) raises
   :class:`UnsafePickleError` before it is called.
3. :func:`_materialize` walks the result at most :data:`MAX_DEPTH` containers
   deep, visiting each container once: a shared (DAG) or self-referencing dict
   is refused instead of being flattened exponentially or recursing forever.

:func:`read_legacy` then checks the exact layout, and :func:`check_legacy_values`
what the numbers must satisfy (no negative values, eigenvalues the squares of
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

import io
import math
import os
import pickle
import pickletools
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__, dataset_repo, schema
from ..errors import LegacyFormatError, UnsafePickleError
from ..integrity import legacy_units, value_problem
from ..statistics import spectrum_metrics
from .row_checks import spectrum_problem

LEGACY_KEYS = ("singular_values", "singular_values_stats", "eigen_values", "eigen_values_stats")

MAX_PICKLE_BYTES = 256 * 2**20
"""Largest pickle read (the 405B model's file would be about 17 MB)."""
MAX_DIM = 1024
"""Largest n_heads or d_head of a legacy array (the study's largest: 128 heads, d_head 256)."""
MAX_LAYERS = 1024
"""Most layers (keys) per legacy dict."""
MAX_DEPTH = 3
"""Containers nested deeper than this (top dict -> layer dict -> stats list) are refused."""

_DTYPES = {"f4": np.dtype("<f4"), "f8": np.dtype("<f8")}
"""The dtype names the stand-in for ``numpy.dtype`` accepts (the study wrote f4)."""
_DTYPE_STATE = (3, "<", None, None, None, -1, -1, 0)
"""numpy's pickled state of a plain little-endian float dtype."""

_DATA_OPCODES = frozenset(
    {
        "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK",
        "EMPTY_DICT", "EMPTY_LIST", "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
        "SETITEM", "SETITEMS", "APPEND", "APPENDS",
        "NONE", "NEWTRUE", "NEWFALSE", "BININT", "BININT1", "BININT2",
        "SHORT_BINUNICODE", "BINUNICODE", "SHORT_BINBYTES", "BINBYTES",
        "MEMOIZE", "BINPUT", "LONG_BINPUT", "BINGET", "LONG_BINGET",
        "GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD",
    }
)  # fmt: skip
"""Opcodes of protocol 2-4 pickles of dicts, lists and numpy arrays; no object-construction opcodes."""
_PUT_OPCODES = frozenset({"MEMOIZE", "BINPUT", "LONG_BINPUT"})
_GET_OPCODES = frozenset({"BINGET", "LONG_BINGET"})


# ---------------------------------------------------------------- step 1: the opcode stream


def _refuse_global(module: str, name: str) -> UnsafePickleError:
    return UnsafePickleError(
        f"refusing to load {module}.{name} from a pickle: only numpy float arrays in dicts/lists are allowed"
    )


def check_opcodes(data: bytes) -> None:
    """Walk the opcodes without executing them; refuse any the legacy format does not need.

    Also refuses memo indices that skip ahead (the C unpickler sizes its memo
    by the largest index) and references to memo entries never stored, and
    any truncated argument (``genops`` reads each argument before yielding it).
    """
    stored = 0
    try:
        for opcode, arg, pos in pickletools.genops(data):
            name = opcode.name
            if name not in _DATA_OPCODES:
                raise UnsafePickleError(
                    f"refusing pickle opcode {name} at byte {pos}: the legacy pickles hold only dicts, lists and "
                    "numpy arrays"
                )
            if name == "PROTO" and not 2 <= arg <= 4:
                raise LegacyFormatError(f"pickle protocol {arg}: the legacy pickles are protocol 4 (2-4 accepted)")
            if name == "GLOBAL":
                module, _, attr = str(arg).partition(" ")
                if (module, attr) not in _GLOBALS:
                    raise _refuse_global(module, attr)
            if name in _PUT_OPCODES:
                index = stored if name == "MEMOIZE" else arg
                if index > stored:
                    raise LegacyFormatError(
                        f"pickle memo index {index} at byte {pos} skips ahead of the {stored} stored so far"
                    )
                stored = max(stored, index + 1)
            elif name in _GET_OPCODES and arg >= stored:
                raise LegacyFormatError(f"pickle memo reference {arg} at byte {pos} was never stored")
    except (UnsafePickleError, LegacyFormatError):  # ValueErrors too: raised as they are
        raise
    except ValueError as exc:  # unknown opcode, truncated argument, no STOP
        raise LegacyFormatError(f"not a readable pickle: {exc}") from None


# ---------------------------------------------------------------- step 2: the stand-ins


class _Token:
    """A global that may appear only as an argument (``ndarray`` to ``_reconstruct``, ``dict`` to ``defaultdict``)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name

    def __call__(self, *args: Any) -> Any:
        raise UnsafePickleError(f"refusing to call {self.name} from a pickle: it may only name a class there")

    def __setstate__(self, state: Any) -> None:
        raise LegacyFormatError(f"a pickle sets the state of {self.name}")


_NDARRAY = _Token("numpy.ndarray")
_DICT = _Token("builtins.dict")


class _DtypeStub:
    """``numpy.dtype(name, False, True)`` of an accepted float dtype, finished by its BUILD state."""

    __slots__ = ("dtype", "built")

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype
        self.built = False

    def __setstate__(self, state: Any) -> None:
        if self.built or state != _DTYPE_STATE:
            raise LegacyFormatError(f"unexpected numpy dtype state {_short(state)} (only little-endian floats)")
        self.built = True


class _ArrayStub:
    """Numpy's ``_reconstruct`` placeholder; the array is made from its BUILD state by the unpickler."""

    __slots__ = ("owner", "array")

    def __init__(self, owner: RestrictedUnpickler) -> None:
        self.owner = owner
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if self.array is not None:
            raise LegacyFormatError("a pickle sets an array's data twice")
        self.array = self.owner.array_from_state(state)


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, (bytes, bytearray)) else f"<{len(value)} bytes>"
    return text if len(text) <= 80 else text[:77] + "..."


def _dtype(name: Any, align: Any = False, copy: Any = True) -> _DtypeStub:
    """Stand-in for ``numpy.dtype``: little-endian float32/float64 only."""
    if not isinstance(name, str) or name not in _DTYPES or align is not False or copy is not True:
        kind = f"dtype {name!r}"
        if isinstance(name, str) and name[:1] in ("U", "S", "O", "<", ">", "|", "="):
            kind += " (strings, objects or a byte order)"
        raise LegacyFormatError(f"array of {kind}: the legacy pickles hold float32 arrays")
    return _DtypeStub(_DTYPES[name])


def _defaultdict(factory: Any = None) -> dict:
    """Stand-in for ``collections.defaultdict(dict)``: a plain dict (no factory can ever run)."""
    if factory is not _DICT:
        raise UnsafePickleError("refusing a defaultdict whose factory is not dict")
    return {}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves the legacy format's five globals to bounded stand-ins of ours.

    Everything a pickle can call comes from ``find_class``; refusing there
    means no constructor, reducer or function outside the allow-list ever
    runs, and nothing numpy allocates is sized by the pickle except through
    :meth:`array_from_state`. Persistent ids are refused as well.
    """

    def __init__(self, file: io.BytesIO, max_array_bytes: int) -> None:
        super().__init__(file)
        self.max_array_bytes = max_array_bytes
        self.array_bytes = 0

    def find_class(self, module: str, name: str) -> Any:
        kind = _GLOBALS.get((module, name))
        if kind is None:
            raise _refuse_global(module, name)
        if kind == "_reconstruct":
            return self.reconstruct
        return {"defaultdict": _defaultdict, "dict": _DICT, "ndarray": _NDARRAY, "dtype": _dtype}[kind]

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing a pickle with persistent ids")

    def reconstruct(self, cls: Any = None, shape: Any = None, typecode: Any = None) -> _ArrayStub:
        """Stand-in for ``numpy._core.multiarray._reconstruct``: numpy's empty placeholder only."""
        if cls is not _NDARRAY or shape != (0,) or typecode != b"b":
            raise UnsafePickleError(
                f"refusing numpy _reconstruct{_short((cls, shape, typecode))}: only numpy's own (ndarray, (0,), b'b')"
            )
        return _ArrayStub(self)

    def array_from_state(self, state: Any) -> np.ndarray:
        """The array of an ndarray BUILD state ``(1, shape, dtype, False, raw bytes)``, sizes checked first."""
        if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1 and state[3] is False):
            raise LegacyFormatError(f"unexpected numpy array state {_short(state)}")
        _, shape, dtype, _, raw = state
        if not (isinstance(dtype, _DtypeStub) and dtype.built):
            raise LegacyFormatError("a numpy array without a float dtype")
        if not (
            isinstance(shape, tuple)
            and len(shape) in (1, 2)
            and all(type(n) is int and 1 <= n <= MAX_DIM for n in shape)
        ):
            raise LegacyFormatError(
                f"array of shape {_short(shape)}: legacy arrays are (n_heads, d_head) or (n_heads, 1), "
                f"each at most {MAX_DIM}"
            )
        if not isinstance(raw, bytes):
            raise LegacyFormatError(f"array data is {type(raw).__name__}, not raw bytes (uninitialised or object data)")
        size = math.prod(shape) * dtype.dtype.itemsize
        if len(raw) != size:
            raise LegacyFormatError(f"array of shape {shape} needs {size} bytes of data, the pickle gives {len(raw)}")
        self.array_bytes += size
        if self.array_bytes > self.max_array_bytes:
            raise LegacyFormatError(
                f"its arrays hold more bytes than the pickle itself ({self.array_bytes} > {self.max_array_bytes}): "
                "one buffer is referenced several times"
            )
        return np.frombuffer(raw, dtype=dtype.dtype).reshape(shape).copy()


_GLOBALS: dict[tuple[str, str], str] = {
    ("collections", "defaultdict"): "defaultdict",
    ("builtins", "dict"): "dict",
    ("numpy", "ndarray"): "ndarray",
    ("numpy", "dtype"): "dtype",
    ("numpy._core.multiarray", "_reconstruct"): "_reconstruct",
    ("numpy.core.multiarray", "_reconstruct"): "_reconstruct",
}


# ---------------------------------------------------------------- step 3: the result


def _materialize(obj: Any, seen: set[int], depth: int = 0) -> Any:
    """Replace array stand-ins by their arrays; refuse deep, shared or self-referencing containers."""
    if isinstance(obj, _ArrayStub):
        if obj.array is None:
            raise LegacyFormatError("an array without data (uninitialised memory)")
        if id(obj) in seen:
            raise LegacyFormatError("the same array is referenced twice: not the layout of the legacy pickles")
        seen.add(id(obj))
        return obj.array
    if isinstance(obj, (dict, list)):
        if depth >= MAX_DEPTH:
            raise LegacyFormatError(f"containers nested more than {MAX_DEPTH} deep: not the layout of the legacy pickles")
        if id(obj) in seen:
            raise LegacyFormatError(
                "a dict or list is referenced twice (shared or self-referencing): not the layout of the legacy pickles"
            )
        seen.add(id(obj))
        if isinstance(obj, dict):
            return {key: _materialize(value, seen, depth + 1) for key, value in obj.items()}
        return [_materialize(value, seen, depth + 1) for value in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    kind = {_DtypeStub: "numpy dtype", _Token: "class"}.get(type(obj), type(obj).__name__)
    raise LegacyFormatError(f"a {kind} where the legacy pickles hold arrays, dicts or lists")


def safe_load(source: str | os.PathLike | bytes) -> Any:
    """Unpickle a file (path) or bytes: opcodes checked, globals stood in for, sizes bounded."""
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
        name = "<bytes>"
    else:
        name = os.fspath(source)
        try:
            size = os.path.getsize(name)
            if size > MAX_PICKLE_BYTES:
                raise LegacyFormatError(f"{name} is {size} bytes, more than any legacy pickle ({MAX_PICKLE_BYTES})")
            data = Path(name).read_bytes()
        except OSError as exc:
            raise LegacyFormatError(f"cannot read {name}: {exc.strerror or exc}") from exc
    if len(data) > MAX_PICKLE_BYTES:
        raise LegacyFormatError(f"{name} is {len(data)} bytes, more than any legacy pickle ({MAX_PICKLE_BYTES})")
    try:
        check_opcodes(data)
        loaded = RestrictedUnpickler(io.BytesIO(data), max_array_bytes=len(data)).load()
        return _materialize(loaded, set())
    except (UnsafePickleError, LegacyFormatError) as exc:
        raise type(exc)(f"{name}: {exc}") from None
    except Exception as exc:  # a malformed stream the opcode walk let through
        raise LegacyFormatError(f"{name} is not a readable pickle: {type(exc).__name__}: {exc}") from None


# ---------------------------------------------------------------- the layout and the values


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
    force: bool = False,
    pool_legacy: bool = False,
) -> list[Path]:
    """Convert every legacy pickle in ``pickles_dir`` into ``out_dir/data/<family>/<model>.parquet``.

    Every pickle is read and checked, and every target checked, before anything
    is written, so a refused or malformed file leaves ``out_dir`` untouched. A
    model the family already holds as built spectra is replaced only with
    ``force``; a family holding other built models takes legacy ones only with
    ``pool_legacy`` (their spectra carry the original study's pairing error).
    The card (README.md) is regenerated afterwards. Returns the written parquet paths.
    """
    family = str(family)
    if not family or "/" in family or family.startswith("."):
        raise LegacyFormatError(f"invalid family (config) name {family!r}")
    dataset_repo.check_family(family)
    files = legacy_files(pickles_dir)
    tables = []
    targets: dict[Path, Path] = {}
    for path in files:
        target = dataset_repo.model_path(out_dir, family, path.stem)
        if target in targets:
            raise LegacyFormatError(f"{targets[target].name} and {path.name} would both be written to {target}")
        targets[target] = path
        tables.append((path.stem, legacy_columns(read_legacy(path), path.stem, family)))
    dataset_repo.read_card_versions(out_dir)  # a card that does not parse is refused before anything is written
    for model_id, _ in tables:
        dataset_repo.check_replace(out_dir, family, model_id, schema.VARIANT_LEGACY, force=force)
    if not pool_legacy:
        built = dataset_repo.built_models(out_dir, family, exclude=list(targets))
        if built:
            raise LegacyFormatError(
                f"family {family!r} in {os.fspath(out_dir)} holds spectra built from weights ({', '.join(built[:5])}"
                f"{', ...' if len(built) > 5 else ''}): importing the original study's legacy spectra (with its "
                "pairing error) would pool them in one config; import into another family, or pass --pool_legacy"
            )
    written = []
    iterator = tables
    if progress:
        from ..progress import progress_bar

        iterator = progress_bar(tables, desc="import_legacy", unit="model")
    for model_id, columns in iterator:
        written.append(dataset_repo.write_model_table(out_dir, family, model_id, columns))
    try:
        dataset_repo.write_card(out_dir)
    except OSError as exc:
        raise LegacyFormatError(
            f"the {len(written)} table(s) are in place, but the card {Path(out_dir) / dataset_repo.CARD_NAME} could "
            f"not be written ({exc.strerror or exc}): rerun the import to regenerate it"
        ) from None
    return written
