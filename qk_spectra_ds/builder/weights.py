"""Where a model's bytes come from: a local directory or a Hub repo at a pinned commit.

Both sources expose the same narrow interface, ranged reads of named files, so
the checkpoint reader never needs a whole file: config.json and the safetensors
index are read whole (they are small), shards only as header + tensor ranges.
Every source counts the bytes it fetched, for the "share of the checkpoint"
report and the tests' byte accounting, and hashes every byte it hands out
(:class:`ReadLog`), so a local model's revision can name exactly the bytes its
rows were computed from. The Hub's source, with its checked HTTP range reads, is
:mod:`.hub_source`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelSourceError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


@dataclass
class ByteCounter:
    """Bytes fetched from a source, thread-safe (the prefetcher reads in a thread)."""

    total: int = 0
    requests: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, n: int) -> None:
        with self._lock:
            self.total += n
            self.requests += 1


WHOLE_FILE = -1
"""The ``stop`` a :class:`ReadLog` records for a whole-file read (config.json, the index)."""

SMALL_FILE_LIMIT = 256 << 20
"""Largest file read whole (config.json, the safetensors index): far above any real one, far below memory.

A larger one (a lying server, a corrupt or hostile folder) is one line, never read into memory:
locally its size is checked first, from the Hub the download stops once it passes the limit
(:mod:`.hub_source` reads it here, so lowering it here lowers both).
"""


class ReadLog:
    """The sha256 of every byte range a source handed out, keyed by (file, start, stop).

    :meth:`digest` names the set of bytes read, independent of the order and of how
    often each range was read, so a pre-pass over a model's ranges and the build
    that reads them again give the same digest. A range read twice with different
    bytes means the file changed under us: refused at once, never mixed.
    """

    def __init__(self) -> None:
        self._ranges: dict[tuple[str, int, int], str] = {}
        self._whole: dict[str, int] = {}  # size of each file read whole
        self._lock = threading.Lock()

    def record(self, model_id: str, filename: str, start: int, stop: int, data: bytes) -> None:
        digest = hashlib.sha256(data).hexdigest()
        key = (filename, start, stop)
        with self._lock:
            previous = self._ranges.setdefault(key, digest)
            if stop == WHOLE_FILE:
                self._whole[filename] = len(data)
        if previous != digest:
            where = "" if stop == WHOLE_FILE else f" (bytes {start}-{stop - 1})"
            raise ModelSourceError(
                f"{model_id}: {filename} changed while it was being read{where}: rerun when the model's files "
                "no longer change"
            )

    def distinct_bytes(self) -> int:
        """Bytes read, each byte once: the union of the ranges per file (a range read twice counts once)."""
        with self._lock:
            keys = sorted(self._ranges)
        total, last = 0, {}
        for filename, start, stop in keys:
            if stop == WHOLE_FILE:
                total += self._whole.get(filename, 0)
                continue
            begin = max(start, last.get(filename, 0))
            if stop > begin:
                total += stop - begin
            last[filename] = max(last.get(filename, 0), stop)
        return total

    def digest(self) -> str:
        """sha256 over the sorted (file, start, stop, sha256 of the bytes) records."""
        with self._lock:
            items = sorted(self._ranges.items())
        h = hashlib.sha256()
        for (filename, start, stop), digest in items:
            h.update(f"{filename}\0{start}\0{stop}\0{digest}\n".encode())
        return h.hexdigest()


def check_relative_name(model_id: str, filename: str) -> str:
    """``filename`` if it names a file inside the model's folder (or repo), else a one-line error.

    Refused: empty names, absolute paths, backslashes, drive letters, NUL and any
    ``.``/``..`` component, so no name from a model's own files (its index) can
    reach outside it. Symlinks inside a local folder are followed as the OS does
    (the Hub cache's snapshot folders are made of them).
    """
    if (
        not isinstance(filename, str)
        or not filename
        or "\\" in filename
        or "\0" in filename
        or filename.startswith("/")
        or re.match(r"[A-Za-z]:", filename)  # a drive would replace the folder when joined on Windows
        or any(part in ("", ".", "..") for part in filename.split("/"))
    ):
        raise ModelSourceError(
            f"{model_id}: refusing to read {filename!r}: a model's files must be named relative to its folder, "
            "without '.' or '..' parts, a leading '/', a drive or backslashes"
        )
    return filename


class ModelSource:
    """A model's files, addressed by name relative to the repo root.

    Subclasses implement ``_read_range`` and ``_read_file``; the public readers
    here check the name, count the bytes and record their hash in ``reads``.
    """

    model_id: str
    revision: str | None  # 40-hex commit for the Hub; None for local dirs (their rows carry a content digest)

    def __init__(self) -> None:
        self.fetched = ByteCounter()
        self.reads = ReadLog()

    def read_range(self, filename: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of ``filename``; exactly end - start bytes or an error (a short file: fewer)."""
        check_relative_name(self.model_id, filename)
        data = self._read_range(filename, start, end)
        self.reads.record(self.model_id, filename, start, end, data)
        return data

    def read_file(self, filename: str) -> bytes:
        """The whole of a small file (config.json, the safetensors index)."""
        check_relative_name(self.model_id, filename)
        data = self._read_file(filename)
        self.reads.record(self.model_id, filename, 0, WHOLE_FILE, data)
        return data

    def read_digest(self) -> str:
        """sha256 naming every byte read so far (see :class:`ReadLog`)."""
        return self.reads.digest()

    def _read_range(self, filename: str, start: int, end: int) -> bytes:
        raise NotImplementedError

    def _read_file(self, filename: str) -> bytes:
        raise NotImplementedError

    def exists(self, filename: str) -> bool:
        raise NotImplementedError

    def size(self, filename: str) -> int:
        raise NotImplementedError

    def safetensors_files(self) -> list[str]:
        """Names of the top-level *.safetensors files."""
        raise NotImplementedError

    def read_json(self, filename: str) -> Any:
        try:
            return json.loads(self.read_file(filename))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            detail = f"{exc.msg} at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
            raise ModelSourceError(f"{self.model_id}: {filename} is not valid JSON ({detail})") from None


class LocalSource(ModelSource):
    """A directory with config.json and safetensors files, read through the filesystem."""

    def __init__(self, root: str | os.PathLike, model_id: str | None = None) -> None:
        super().__init__()
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise ModelSourceError(f"model directory {root} does not exist: pass a directory with config.json")
        self.model_id = model_id or self.root.name
        self.revision = None

    def _path(self, filename: str) -> Path:
        return self.root / check_relative_name(self.model_id, filename)

    def exists(self, filename: str) -> bool:
        return self._path(filename).is_file()

    def size(self, filename: str) -> int:
        return self._path(filename).stat().st_size

    def _read_file(self, filename: str) -> bytes:
        path = self._path(filename)
        if not path.is_file():
            raise ModelSourceError(f"{self.model_id}: no {filename} in {self.root}")
        if path.stat().st_size > SMALL_FILE_LIMIT:
            raise ModelSourceError(too_large(self.model_id, filename, path.stat().st_size))
        data = path.read_bytes()
        self.fetched.add(len(data))
        return data

    def _read_range(self, filename: str, start: int, end: int) -> bytes:
        data = bytearray(max(end - start, 0))  # writable, so numpy/torch can wrap it without a copy
        with open(self._path(filename), "rb") as fh:
            fh.seek(start)
            n = fh.readinto(data)
        self.fetched.add(n)
        return data[:n] if n < len(data) else data

    def safetensors_files(self) -> list[str]:
        return sorted(p.name for p in self.root.glob("*.safetensors"))


def missing_directory(spec: str) -> str | None:
    """The one-line error for a spec that names a local directory (a path, not ``org/name``) that does not exist, else None."""
    spec = str(spec).strip()
    if Path(spec).expanduser().is_dir():
        return None
    if spec.startswith((".", "/", "~")) or os.sep in spec and spec.count("/") > 1:
        return f"model directory {spec} does not exist: pass a directory with config.json or a Hub id"
    return None


def open_source(spec: str, model_id: str | None = None, token: str | bool | None = None) -> ModelSource:
    """A local directory if ``spec`` is one, else a Hub id ``org/name[@revision]``."""
    spec = str(spec).strip()
    path = Path(spec).expanduser()
    if path.is_dir():
        return LocalSource(path, model_id=model_id)
    missing = missing_directory(spec)
    if missing:
        raise ModelSourceError(missing)
    repo_id, _, revision = spec.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ModelSourceError(f"{spec!r} is neither a local directory nor a Hub id of the form org/name[@revision]")
    from .hub_source import HubSource  # deliberately lazy: hub_source imports this module (its base class)

    return HubSource(repo_id, revision or None, token=token)


def too_large(model_id: str, filename: str, size: int | None) -> str:
    """The one-line error for a config or index over :data:`SMALL_FILE_LIMIT`."""
    actual = "" if size is None else f" ({size / 2**20:.0f} MiB)"
    return (
        f"{model_id}: {filename} is larger than {SMALL_FILE_LIMIT >> 20} MiB{actual}, far beyond any real "
        "config or index: the model folder or repo is corrupt"
    )
