"""Reading single tensors (or row ranges of them) from safetensors checkpoints.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON
``{name: {dtype, shape, data_offsets: [begin, end]}}`` and the raw data, row
major, offsets relative to the end of the header. That is all we need to fetch
exactly the rows of Q and K from a local file or through HTTP ranges, so this
module parses headers itself and reads through a ``ModelSource``: no shard is
ever loaded whole, and the same code serves local dirs and Hub repos.

Because the bytes are read by offset, a header is checked as strictly as the
``safetensors`` library checks it (its ``Metadata::validate`` and
``read_metadata``): a header that library refuses is refused here, in one line,
before any tensor byte is read (:func:`check_entry`, :func:`check_data_layout`).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CheckpointError, ModelSourceError
from .weights import INDEX_NAME, SINGLE_NAME, ModelSource, check_relative_name

MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit (MAX_HEADER_SIZE)

_NUMPY_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # decoded by _bf16_to_float32
    "F8_E4M3": np.dtype("u1"),  # decoded by E4M3_VALUES and scaled by the sibling weight_scale_inv
}

FP8_BLOCK = 128
"""Rows and columns of the blocks that share one ``weight_scale_inv`` (DeepSeek-V3's ``weight_block_size``)."""

SCALE_SUFFIX = "_scale_inv"
"""``<name>.weight`` in FP8 has its block scales in ``<name>.weight_scale_inv`` (F32)."""


def _e4m3_values() -> np.ndarray:
    """The float64 value of each of the 256 float8_e4m3fn codes (exact).

    Bit 7 sign, bits 6-3 exponent (bias 7), bits 2-0 mantissa; exponent 0 is
    subnormal (m/8 * 2^-6); 0x7F and 0xFF are NaN; there is no infinity.
    """
    codes = np.arange(256)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    exponent, mantissa = (codes >> 3) & 0xF, codes & 0x7
    normal = (1 + mantissa / 8) * np.ldexp(1.0, exponent - 7)
    values = sign * np.where(exponent == 0, mantissa / 8 * 2.0**-6, normal)
    values[(codes & 0x7F) == 0x7F] = np.nan
    return values


E4M3_VALUES = _e4m3_values()

DTYPE_BITS = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}
"""Bits per element of every dtype the safetensors library (0.8) accepts; any other is refused."""

_USIZE_MAX = 2**64 - 1  # the library's offsets and sizes are 64-bit unsigned


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes are: file, dtype, shape and absolute byte range."""

    name: str
    filename: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute offset of the first byte in the file
    end: int

    @property
    def itemsize(self) -> int:
        return _NUMPY_DTYPES[self.dtype].itemsize

    @property
    def row_bytes(self) -> int:
        """Bytes of one row (first axis) of the tensor."""
        n = 1
        for dim in self.shape[1:]:
            n *= dim
        return n * self.itemsize


class _HeaderProblem(ValueError):
    """What is wrong with one header; read_header turns it into a one-line CheckpointError."""


def read_header(source: ModelSource, filename: str) -> dict[str, TensorInfo]:
    """Parse and validate a safetensors header with two small reads (the length, then the JSON)."""
    try:
        file_size = source.size(filename)
    except (OSError, ModelSourceError) as exc:
        raise CheckpointError(f"{source.model_id}: cannot open {filename} ({exc})") from None
    where = f"{source.model_id}: {filename}"
    if file_size < 8:
        raise CheckpointError(f"{where} is truncated ({file_size} bytes): re-download the checkpoint")
    (n,) = struct.unpack("<Q", source.read_range(filename, 0, 8))
    if n > MAX_HEADER_BYTES or 8 + n > file_size:
        raise CheckpointError(
            f"{where} is truncated or not safetensors (header of {n} bytes, file of {file_size}): re-download it"
        )
    raw = source.read_range(filename, 8, 8 + n)
    try:
        header = parse_header_json(raw)
    except _HeaderProblem as exc:
        raise CheckpointError(f"{where} has a corrupt header ({exc}): re-download it") from None
    data_start = 8 + n
    tensors = {}
    try:
        for name, entry in header.items():
            if name == "__metadata__":
                check_metadata(entry)
                continue
            dtype, shape, (begin, end) = check_entry(name, entry)
            tensors[name] = TensorInfo(name, filename, dtype, shape, data_start + begin, data_start + end)
        check_data_layout(
            {name: (t.start - data_start, t.end - data_start) for name, t in tensors.items()}, file_size - data_start
        )
    except _HeaderProblem as exc:
        problem = str(exc)
        state = "truncated" if problem.startswith("the data ends") else "corrupt"
        raise CheckpointError(f"{where} is {state}: {problem}: re-download it") from None
    return tensors


def strict_json(raw: bytes) -> Any:
    """JSON read as serde_json reads it: UTF-8, no NaN or Infinity, no name twice in one object."""

    def no_repeats(pairs):
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            repeated = next(k for k in keys if keys.count(k) > 1)
            raise _HeaderProblem(f"the name {repeated!r} appears twice")
        return dict(pairs)

    def no_constant(name):
        raise _HeaderProblem(f"{name} is not JSON")

    try:
        return json.loads(bytes(raw).decode("utf-8"), object_pairs_hook=no_repeats, parse_constant=no_constant)
    except UnicodeDecodeError:
        raise _HeaderProblem("not UTF-8") from None
    except json.JSONDecodeError:
        raise _HeaderProblem("not JSON") from None


def parse_header_json(raw: bytes) -> dict[str, Any]:
    """The header's JSON object; refuses what serde_json would: bad UTF-8, NaN, repeated names, not an object."""
    header = strict_json(raw)
    if not isinstance(header, dict):
        raise _HeaderProblem("not a JSON object")
    return header


def check_metadata(entry: Any) -> None:
    """``__metadata__`` is absent, null or a map of strings to strings, as the library requires."""
    if entry is not None and not (isinstance(entry, dict) and all(isinstance(v, str) for v in entry.values())):
        raise _HeaderProblem("__metadata__ is not a map of strings to strings")


def _is_count(value: Any) -> bool:
    """A JSON integer the library reads as usize: not a bool, a float or negative, below 2**64."""
    return type(value) is int and 0 <= value <= _USIZE_MAX


def check_entry(name: str, entry: Any) -> tuple[str, tuple[int, ...], tuple[int, int]]:
    """(dtype, shape, (begin, end)) of one tensor entry, or why the library would refuse it.

    The dtype must be one the library knows, shape and offsets non-negative
    integers, begin <= end, and end - begin exactly the size of the shape in
    that dtype (whole bytes, no 64-bit overflow).
    """
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise _HeaderProblem(f"the entry of {name} lacks dtype, shape or data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise _HeaderProblem(f"{name} has the unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise _HeaderProblem(f"{name} has the shape {shape!r}, not a list of non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        raise _HeaderProblem(f"{name} has the data_offsets {offsets!r}, not two non-negative integers")
    begin, end = offsets
    if begin > end:
        raise _HeaderProblem(f"{name} begins at byte {begin} after it ends ({end})")
    bits = DTYPE_BITS[dtype]
    for dim in shape:
        bits *= dim
        if bits > 8 * _USIZE_MAX:
            raise _HeaderProblem(f"{name}'s shape {shape} overflows 64-bit sizes")
    if bits % 8 or bits // 8 != end - begin:
        raise _HeaderProblem(
            f"{name}'s {end - begin} bytes do not hold its shape {shape} of {dtype} ({bits / 8:g} bytes)"
        )
    return dtype, tuple(shape), (begin, end)


def check_data_layout(ranges: Mapping[str, tuple[int, int]], data_size: int) -> None:
    """The tensors' byte ranges tile the data section exactly: from 0, in order, no gap, no overlap, to the end."""
    position = 0
    for name, (begin, end) in sorted(ranges.items(), key=lambda item: item[1]):
        if begin != position:
            kind = "overlaps the tensor before it" if begin < position else f"leaves a gap after byte {position}"
            raise _HeaderProblem(f"{name} (bytes {begin}-{end} of the data) {kind}")
        position = end
    if position != data_size:
        if position > data_size:
            raise _HeaderProblem(f"the data ends at byte {data_size}, but the header needs {position} bytes")
        raise _HeaderProblem(f"the tensors cover {position} of the {data_size} bytes of data")


def shard_names(model_id: str, weight_map: Any) -> list[str]:
    """The shard files an index's weight_map names, each a plain ``*.safetensors`` file beside the index.

    Anything else (a path into another folder, ``..``, an absolute path, a
    backslash, a subfolder) is refused: a model's index must not make the
    builder read files outside the model.
    """
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{model_id}: {INDEX_NAME} has no weight_map: re-download it")
    for tensor, shard in weight_map.items():
        if not isinstance(shard, str) or not shard.endswith(".safetensors") or "/" in shard:
            raise CheckpointError(
                f"{model_id}: {INDEX_NAME} maps {tensor} to {shard!r}, not a .safetensors file beside the index: "
                "refusing to read outside the model's folder"
            )
        try:
            check_relative_name(model_id, shard)
        except ModelSourceError as exc:
            raise CheckpointError(f"{exc} (named in {INDEX_NAME})") from None
    return sorted(set(weight_map.values()))


def tensors_by_index(
    model_id: str, weight_map: Mapping[str, str], headers: Mapping[str, Mapping[str, TensorInfo]]
) -> dict[str, TensorInfo]:
    """Each tensor of the index, from the shard the index maps it to (a copy in another shard is not used)."""
    tensors = {}
    for name, shard in weight_map.items():
        info = headers[shard].get(name)
        if info is None:
            elsewhere = [f for f in sorted(headers) if name in headers[f]]
            found = f" (it is in {elsewhere[0]})" if elsewhere else ""
            raise CheckpointError(
                f"{model_id}: {INDEX_NAME} maps {name} to {shard}, which has no such tensor{found}: "
                "index and shards do not match, re-download the checkpoint"
            )
        tensors[name] = info
    return tensors


def tensors_without_index(model_id: str, headers: Mapping[str, Mapping[str, TensorInfo]]) -> dict[str, TensorInfo]:
    """The tensors of several shards with no index: a name in two shards is ambiguous and refused."""
    tensors: dict[str, TensorInfo] = {}
    for filename in sorted(headers):
        for name, info in headers[filename].items():
            if name in tensors:
                raise CheckpointError(
                    f"{model_id}: {name} is in both {tensors[name].filename} and {filename}, and no {INDEX_NAME} "
                    "says which to use: remove the stray file"
                )
            tensors[name] = info
    return tensors


class Checkpoint:
    """The tensors of a (possibly sharded) safetensors checkpoint, by name.

    Only headers are read on construction; tensor data is fetched on demand.
    With an index, its weight_map decides which shard each tensor comes from.
    """

    def __init__(self, source: ModelSource) -> None:
        self.source = source
        weight_map = self._weight_map()
        if weight_map is not None:
            files = shard_names(source.model_id, weight_map)
            missing = [f for f in files if not source.exists(f)]
            if missing:
                raise CheckpointError(f"{source.model_id}: shard {missing[0]} named in {INDEX_NAME} is missing")
        else:
            files = self._unindexed_files()
        headers = {filename: read_header(source, filename) for filename in files}
        if weight_map is not None:
            self.tensors = tensors_by_index(source.model_id, weight_map, headers)
        else:
            self.tensors = tensors_without_index(source.model_id, headers)
        self.files = files

    def _weight_map(self) -> Any:
        """The index's weight_map (None without an index)."""
        if not self.source.exists(INDEX_NAME):
            return None
        try:
            index = strict_json(self.source.read_file(INDEX_NAME))
        except _HeaderProblem as exc:  # a tensor listed twice would be ambiguous
            raise CheckpointError(
                f"{self.source.model_id}: {INDEX_NAME} is not valid ({exc}): re-download it"
            ) from None
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        return {} if weight_map is None else weight_map  # {}: refused by shard_names as "no weight_map"

    def _unindexed_files(self) -> list[str]:
        source = self.source
        if source.exists(SINGLE_NAME):
            return [SINGLE_NAME]
        files = source.safetensors_files()
        if not files:
            raise ModelSourceError(
                f"{source.model_id}: no safetensors weights (model.safetensors or an index): "
                "only safetensors checkpoints are supported"
            )
        return files

    def total_bytes(self) -> int:
        """Size of all shards, the denominator of the "share fetched" report."""
        return sum(self.source.size(f) for f in self.files)

    def matches(self, suffix: str) -> list[str]:
        """Names of the tensors that are ``suffix`` or end with ``.suffix``."""
        return [n for n in self.tensors if n == suffix or n.endswith("." + suffix)]

    def find(self, suffix: str) -> TensorInfo:
        """The tensor whose name is ``suffix`` or ends with ``.suffix`` (any prefix)."""
        matches = self.matches(suffix)
        if not matches:
            raise CheckpointError(
                f"{self.source.model_id}: no tensor named *{suffix} in the checkpoint: "
                "is config.json's model_type right for these weights?"
            )
        if len(matches) > 1:
            raise CheckpointError(
                f"{self.source.model_id}: several tensors match *{suffix} ({', '.join(sorted(matches)[:3])}): "
                "pass a checkpoint with one language model"
            )
        return self.tensors[matches[0]]

    def read_rows(self, info: TensorInfo, row_start: int = 0, row_stop: int | None = None) -> np.ndarray:
        """Rows [row_start, row_stop) of a tensor as float32/float64 numpy (one ranged read; FP8: two)."""
        if info.dtype not in _NUMPY_DTYPES:
            raise CheckpointError(
                f"{self.source.model_id}: {info.name} has dtype {info.dtype}; supported: F64, F32, F16, BF16, F8_E4M3"
            )
        row_stop = info.shape[0] if row_stop is None else row_stop
        if info.dtype == "F8_E4M3":
            return self._read_fp8_rows(info, row_start, row_stop)
        return self._read_raw_rows(info, row_start, row_stop)

    def scale_tensor(self, info: TensorInfo) -> TensorInfo:
        """The F32 ``weight_scale_inv`` of an FP8 weight, shaped (ceil(rows/128), ceil(cols/128)); else one line."""
        name = info.name + SCALE_SUFFIX
        scale = self.tensors.get(name)
        rows, cols = info.shape if len(info.shape) == 2 else (None, None)
        expected = (-(-rows // FP8_BLOCK), -(-cols // FP8_BLOCK)) if rows is not None else None
        if scale is None or scale.dtype != "F32" or expected is None or tuple(scale.shape) != expected:
            found = "none" if scale is None else f"{scale.dtype} {list(scale.shape)}"
            raise CheckpointError(
                f"{self.source.model_id}: {info.name} is F8_E4M3 but its block scales {name} are {found}, not F32 "
                f"{list(expected) if expected else '(a 2-d weight)'} (128x128 blocks): only DeepSeek-style block FP8 is supported"
            )
        return scale

    def _read_fp8_rows(self, info: TensorInfo, row_start: int, row_stop: int) -> np.ndarray:
        """FP8 (e4m3) rows dequantized exactly in float64: W[i, j] = e4m3(W[i, j]) * scale_inv[i // 128, j // 128]."""
        scale_info = self.scale_tensor(info)
        codes = self._read_raw_rows(info, row_start, row_stop)
        first_block = row_start // FP8_BLOCK
        scales = self._read_raw_rows(scale_info, first_block, -(-row_stop // FP8_BLOCK)).astype(np.float64)
        row_blocks = np.arange(row_start, row_stop) // FP8_BLOCK - first_block
        col_blocks = np.arange(info.shape[1]) // FP8_BLOCK
        return E4M3_VALUES[codes] * scales[row_blocks][:, col_blocks]

    def _read_raw_rows(self, info: TensorInfo, row_start: int, row_stop: int) -> np.ndarray:
        """Rows [row_start, row_stop) as stored (BF16/F16 widened to float32, FP8 as its uint8 codes)."""
        start = info.start + row_start * info.row_bytes
        stop = info.start + row_stop * info.row_bytes
        data = self.source.read_range(info.filename, start, stop)
        if len(data) != stop - start:
            raise CheckpointError(
                f"{self.source.model_id}: {info.filename} is truncated inside {info.name}: re-download it"
            )
        array = np.frombuffer(data, dtype=_NUMPY_DTYPES[info.dtype]).reshape((row_stop - row_start,) + info.shape[1:])
        if info.dtype == "BF16":
            return _bf16_to_float32(array)
        if info.dtype == "F16":
            return array.astype(np.float32)
        return array


def _bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of a float32: shift the 16 bits into place (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)
