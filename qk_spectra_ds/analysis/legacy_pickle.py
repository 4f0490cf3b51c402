"""The original study's pickles, read through a bounded, restricted unpickler (no code of the pickle ever runs).

The original study (S. Darveshi 2025, github.com/SD-interp/qk-spectral-analysis,
Apache-2.0) published one pickle per model (the layout: :mod:`.legacy_format`).
Its pickles (protocol 4) use exactly five globals:
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

from ..errors import LegacyFormatError, UnsafePickleError

MAX_PICKLE_BYTES = 256 * 2**20
"""Largest pickle read (the 405B model's file would be about 17 MB)."""
MAX_DIM = 1024
"""Largest n_heads or d_head of a legacy array (the study's largest: 128 heads, d_head 256)."""
MAX_DEPTH = 3
"""Containers nested deeper than this (top dict -> layer dict -> stats list) are refused."""

_DTYPES = {"f4": np.dtype("<f4"), "f8": np.dtype("<f8")}
"""The dtype names the stand-in for ``numpy.dtype`` accepts (the study wrote f4)."""
_DTYPE_STATE = (3, "<", None, None, None, -1, -1, 0)
"""numpy's pickled state of a plain little-endian float dtype."""

_DATA_OPCODES = frozenset(
    {
        "PROTO",
        "FRAME",
        "STOP",
        "MARK",
        "POP",
        "POP_MARK",
        "EMPTY_DICT",
        "EMPTY_LIST",
        "EMPTY_TUPLE",
        "TUPLE",
        "TUPLE1",
        "TUPLE2",
        "TUPLE3",
        "SETITEM",
        "SETITEMS",
        "APPEND",
        "APPENDS",
        "NONE",
        "NEWTRUE",
        "NEWFALSE",
        "BININT",
        "BININT1",
        "BININT2",
        "SHORT_BINUNICODE",
        "BINUNICODE",
        "SHORT_BINBYTES",
        "BINBYTES",
        "MEMOIZE",
        "BINPUT",
        "LONG_BINPUT",
        "BINGET",
        "LONG_BINGET",
        "GLOBAL",
        "STACK_GLOBAL",
        "REDUCE",
        "BUILD",
    }
)
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
            raise LegacyFormatError(
                f"containers nested more than {MAX_DEPTH} deep: not the layout of the legacy pickles"
            )
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
