"""Where a model's bytes come from: a local directory or a Hub repo at a pinned commit.

Both sources expose the same narrow interface, ranged reads of named files, so
the checkpoint reader never needs a whole file: config.json and the safetensors
index are read whole (they are small), shards only as header + tensor ranges.
Every source counts the bytes it fetched, for the "share of the checkpoint"
report and the tests' byte accounting, and hashes every byte it hands out
(:class:`ReadLog`), so a local model's revision can name exactly the bytes its
rows were computed from.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelSourceError, one_line

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

RANGE_ATTEMPTS = 3
"""Tries of a ranged Hub read whose answer is not the range asked, before giving up."""
RANGE_RETRY_WAIT = 0.5
"""Seconds before the second try of such a read; doubled for each further try."""


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

SMALL_FILE_LIMIT = 256 << 20
"""Largest file read whole (config.json, the safetensors index): far above any real one, far below memory.

A larger one (a lying server, a corrupt or hostile folder) is one line, never read into memory:
locally its size is checked first, from the Hub the download stops once it passes the limit.
"""
"""The ``stop`` a :class:`ReadLog` records for a whole-file read (config.json, the index)."""


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
            raise ModelSourceError(_too_large(self.model_id, filename, path.stat().st_size))
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


class HubSource(ModelSource):
    """A model repo on the Hub (or any Hub-protocol endpoint), pinned to one commit.

    Files are fetched with HTTP range requests through huggingface_hub's
    session, with its exponential backoff on 429/5xx and network errors. Every
    ranged answer is checked against the range asked (status, Content-Range
    start, end and total, body length): a wrong one is retried
    :data:`RANGE_ATTEMPTS` times, then refused in one line. A 200 with the whole
    file is refused unless the whole file was asked for (slicing it would mean
    downloading whole shards).
    """

    def __init__(self, repo_id: str, revision: str | None = None, token: str | bool | None = None) -> None:
        super().__init__()
        from huggingface_hub import HfApi
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        self.model_id = repo_id
        self.token = token
        self._api = HfApi(token=token)
        try:
            info = self._api.model_info(repo_id, revision=revision)
        except GatedRepoError:
            raise ModelSourceError(
                f"{repo_id} is gated: accept its license on the Hub and log in (hf auth login or HF_TOKEN)"
            ) from None
        except RevisionNotFoundError:
            raise ModelSourceError(f"{repo_id} has no revision {revision!r}: check the branch, tag or commit") from None
        except RepositoryNotFoundError:
            raise ModelSourceError(
                f"{repo_id} is not a local directory and not found on the Hub (or private and your token "
                "cannot see it): check the path, or the id and HF_TOKEN"
            ) from None
        except HfHubHTTPError as exc:
            raise ModelSourceError(f"{repo_id}: the Hub answered {_status(exc)}: {one_line(exc, first_line=True)}") from None
        except Exception as exc:  # connection refused, DNS, timeouts after retries
            raise ModelSourceError(
                f"cannot reach the Hub for {repo_id} ({type(exc).__name__}: {one_line(exc, first_line=True)}): check the network or HF_ENDPOINT"
            ) from None
        self.revision = info.sha
        self._files = sorted(s.rfilename for s in (info.siblings or []))
        self._sizes: dict[str, int] = {}

    def exists(self, filename: str) -> bool:
        return filename in self._files

    def safetensors_files(self) -> list[str]:
        return [f for f in self._files if f.endswith(".safetensors") and "/" not in f]

    def size(self, filename: str) -> int:
        if filename not in self._sizes:
            for info in self._api.get_paths_info(self.model_id, [filename], revision=self.revision):
                self._sizes[info.path] = info.size
        if filename not in self._sizes:
            raise ModelSourceError(f"{self.model_id}@{self.revision}: no file {filename}")
        return self._sizes[filename]

    def _get(self, filename: str, byte_range: tuple[int, int] | None) -> tuple[bytearray | None, str | None]:
        """GET the file, or bytes [start, end) of it: (data, None), or (None, what was wrong with the answer)."""
        from huggingface_hub import hf_hub_url
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError
        from huggingface_hub.utils import build_hf_headers, hf_raise_for_status, http_stream_backoff, httpx

        url = hf_hub_url(self.model_id, filename, revision=self.revision)
        headers = build_hf_headers(token=self.token)
        if byte_range is not None:
            headers["Range"] = f"bytes={byte_range[0]}-{byte_range[1] - 1}"
            headers["Accept-Encoding"] = "identity"  # a compressed answer's Content-Range would not be in file bytes
        try:
            with http_stream_backoff("GET", url, headers=headers, follow_redirects=True, timeout=60) as response:
                hf_raise_for_status(response)
                if byte_range is None:
                    problem = None if response.status_code == 200 else f"HTTP {response.status_code}"
                else:
                    problem = range_answer_problem(
                        response.status_code,
                        response.headers.get("Content-Range"),
                        byte_range,
                        self._sizes.get(filename),
                    )
                if problem is not None:
                    return None, problem  # the body is never downloaded (it may be a whole shard)
                limit = SMALL_FILE_LIMIT if byte_range is None else byte_range[1] - byte_range[0]
                try:
                    data = _bounded_body(response, limit)  # writable, so numpy/torch can wrap it
                except httpx.TransportError as exc:  # a body cut short or stalled: retried like a wrong answer
                    return None, f"a body cut short ({type(exc).__name__}: {one_line(exc, first_line=True)})"
                if data is None and byte_range is None:
                    raise ModelSourceError(_too_large(self.model_id, filename, None))
                if data is None:
                    return None, f"more than the {limit} bytes asked for"
        except ModelSourceError:
            raise
        except EntryNotFoundError:
            raise ModelSourceError(f"{self.model_id}@{self.revision[:12]}: no file {filename}") from None
        except HfHubHTTPError as exc:
            raise ModelSourceError(
                f"{self.model_id}: reading {filename} failed, the Hub answered {_status(exc)}: {one_line(exc, first_line=True)}"
            ) from None
        except Exception as exc:
            raise ModelSourceError(
                f"{self.model_id}: reading {filename} failed ({type(exc).__name__}: {one_line(exc, first_line=True)})"
            ) from None
        self.fetched.add(len(data))
        if byte_range is not None and len(data) != byte_range[1] - byte_range[0]:
            return None, f"{len(data)} bytes"
        return data, None

    def _get_with_retries(self, filename: str, byte_range: tuple[int, int] | None) -> tuple[bytearray | None, str | None]:
        """:meth:`_get`, tried :data:`RANGE_ATTEMPTS` times while the answer is wrong or cut short."""
        for attempt in range(RANGE_ATTEMPTS):
            if attempt:
                time.sleep(RANGE_RETRY_WAIT * 2 ** (attempt - 1))
            data, problem = self._get(filename, byte_range)
            if problem is None:
                return data, None
        return None, problem

    def _read_file(self, filename: str) -> bytes:
        data, problem = self._get_with_retries(filename, None)
        if problem is not None:
            raise ModelSourceError(
                f"{self.model_id}: reading {filename} failed, the Hub answered {problem} ({RANGE_ATTEMPTS} tries)"
            )
        return data

    def _read_range(self, filename: str, start: int, end: int) -> bytes:
        if end <= start:
            return bytearray()
        data, problem = self._get_with_retries(filename, (start, end))
        if problem is None:
            return data
        raise ModelSourceError(
            f"{self.model_id}: asked {filename} for bytes {start}-{end - 1} and got {problem} "
            f"({RANGE_ATTEMPTS} tries): the server or a proxy returns the wrong bytes; retry later, or download "
            "the model and build from its folder"
        )


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)  # range units are case-insensitive


def range_answer_problem(
    status: int, content_range: str | None, asked: tuple[int, int], file_size: int | None
) -> str | None:
    """None if an HTTP answer to ``Range: bytes=start-(end-1)`` holds exactly those bytes, else what is wrong.

    A 206 must carry ``Content-Range: bytes start-(end-1)/total`` with the range
    asked and, when the file's size is known, that size as total. A 200 (the
    server ignored the range) is right only if the range was the whole file.
    """
    start, end = asked
    if status == 200:
        if file_size is not None and (start, end) == (0, file_size):
            return None
        return "a 200 with the whole file instead of the range (the server ignored the Range header)"
    if status != 206:
        return f"HTTP {status} instead of 206 Partial Content"
    if content_range is None:
        return "a 206 without a Content-Range header"
    match = _CONTENT_RANGE.fullmatch(content_range.strip())
    if match is None:
        return f"a Content-Range of {content_range!r}, not 'bytes START-END/TOTAL'"
    first, last, total = int(match[1]), int(match[2]), match[3]
    if (first, last) != (start, end - 1):
        return f"bytes {first}-{last} (Content-Range {content_range!r})"
    if total != "*" and file_size is not None and int(total) != file_size:
        return f"a file of {total} bytes where the file has {file_size} (Content-Range {content_range!r})"
    return None


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
        raise ModelSourceError(
            f"{spec!r} is neither a local directory nor a Hub id of the form org/name[@revision]"
        )
    return HubSource(repo_id, revision or None, token=token)


def _status(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    return str(getattr(response, "status_code", "an error"))


def _bounded_body(response, limit: int) -> bytearray | None:
    """The streamed body, or None as soon as it passes ``limit`` bytes (the rest is never downloaded)."""
    data = bytearray()
    for chunk in response.iter_bytes():
        data += chunk
        if len(data) > limit:
            return None
    return data


def _too_large(model_id: str, filename: str, size: int | None) -> str:
    """The one-line error for a config or index over :data:`SMALL_FILE_LIMIT`."""
    actual = "" if size is None else f" ({size / 2**20:.0f} MiB)"
    return (f"{model_id}: {filename} is larger than {SMALL_FILE_LIMIT >> 20} MiB{actual}, far beyond any real "
            "config or index: the model folder or repo is corrupt")
