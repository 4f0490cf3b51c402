"""Reading single tensors (or row ranges of them) from safetensors checkpoints.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON
``{name: {dtype, shape, data_offsets: [begin, end]}}`` and the raw data, row
major, offsets relative to the end of the header. That is all we need to fetch
exactly the rows of Q and K from a local file or through HTTP ranges, so this
module parses headers itself and reads through a ``ModelSource``: no shard is
ever loaded whole, and the same code serves local dirs and Hub repos.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass

import numpy as np

from .errors import CheckpointError, ModelSourceError
from .weights import INDEX_NAME, SINGLE_NAME, ModelSource

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors format's own limit

_NUMPY_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # decoded by _bf16_to_float32
}


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


def read_header(source: ModelSource, filename: str) -> tuple[dict[str, TensorInfo], bytes]:
    """Parse a safetensors header with two small reads; validate it against the file size."""
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
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{where} has a corrupt header (not JSON): re-download it") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{where} has a corrupt header (not a JSON object): re-download it")
    data_start = 8 + n
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, stop) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{where} has a corrupt entry for {name}: re-download it") from None
        info = TensorInfo(name, filename, dtype, shape, data_start + int(begin), data_start + int(stop))
        if info.end > file_size:
            raise CheckpointError(
                f"{where} is truncated: {name} ends at byte {info.end} but the file has {file_size}: re-download it"
            )
        if dtype in _NUMPY_DTYPES and info.end - info.start != int(np.prod(shape, dtype=np.int64)) * info.itemsize:
            raise CheckpointError(f"{where} is corrupt: {name}'s byte range does not match its shape and dtype")
        tensors[name] = info
    return tensors, raw


class Checkpoint:
    """The tensors of a (possibly sharded) safetensors checkpoint, by name.

    Only headers are read on construction; tensor data is fetched on demand.
    """

    def __init__(self, source: ModelSource) -> None:
        self.source = source
        files = self._shard_names()
        self.tensors: dict[str, TensorInfo] = {}
        digest = hashlib.sha256()
        for filename in files:
            tensors, raw_header = read_header(source, filename)
            digest.update(filename.encode() + b"\0" + raw_header)
            self.tensors.update(tensors)
        self.files = files
        self.header_digest = digest.hexdigest()

    def _shard_names(self) -> list[str]:
        source = self.source
        if source.exists(INDEX_NAME):
            weight_map = source.read_json(INDEX_NAME).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{source.model_id}: {INDEX_NAME} has no weight_map: re-download it")
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not source.exists(f)]
            if missing:
                raise CheckpointError(f"{source.model_id}: shard {missing[0]} named in {INDEX_NAME} is missing")
            return files
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
        """Rows [row_start, row_stop) of a tensor as float32/float64 numpy (one ranged read)."""
        if info.dtype not in _NUMPY_DTYPES:
            raise CheckpointError(
                f"{self.source.model_id}: {info.name} has dtype {info.dtype}; supported: F64, F32, F16, BF16"
            )
        row_stop = info.shape[0] if row_stop is None else row_stop
        start = info.start + row_start * info.row_bytes
        stop = info.start + row_stop * info.row_bytes
        data = self.source.read_range(info.filename, start, stop)
        if len(data) != stop - start:
            raise CheckpointError(f"{self.source.model_id}: {info.filename} is truncated inside {info.name}: re-download it")
        array = np.frombuffer(data, dtype=_NUMPY_DTYPES[info.dtype]).reshape((row_stop - row_start,) + info.shape[1:])
        if info.dtype == "BF16":
            return _bf16_to_float32(array)
        if info.dtype == "F16":
            return array.astype(np.float32)
        return array


def _bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of a float32: shift the 16 bits into place (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)
