"""Where a model's bytes come from: a local directory or a Hub repo at a pinned commit.

Both sources expose the same narrow interface, ranged reads of named files, so
the checkpoint reader never needs a whole file: config.json and the safetensors
index are read whole (they are small), shards only as header + tensor ranges.
Every source counts the bytes it fetched, for the "share of the checkpoint"
report and the tests' byte accounting.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelSourceError

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


class ModelSource:
    """A model's files, addressed by name relative to the repo root."""

    model_id: str
    revision: str | None  # 40-hex commit for the Hub; None until computed for local dirs

    def __init__(self) -> None:
        self.fetched = ByteCounter()

    def read_range(self, filename: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of ``filename``; exactly end - start bytes or an error."""
        raise NotImplementedError

    def read_file(self, filename: str) -> bytes:
        """The whole of a small file (config.json, the safetensors index)."""
        raise NotImplementedError

    def exists(self, filename: str) -> bool:
        raise NotImplementedError

    def size(self, filename: str) -> int:
        raise NotImplementedError

    def safetensors_files(self) -> list[str]:
        """Names of the top-level *.safetensors files."""
        raise NotImplementedError

    def read_json(self, filename: str) -> dict[str, Any]:
        try:
            return json.loads(self.read_file(filename))
        except json.JSONDecodeError as exc:
            raise ModelSourceError(f"{self.model_id}: {filename} is not valid JSON ({exc.msg} at line {exc.lineno})") from None

    def describe(self) -> str:
        return self.model_id


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
        return self.root / filename

    def exists(self, filename: str) -> bool:
        return self._path(filename).is_file()

    def size(self, filename: str) -> int:
        return self._path(filename).stat().st_size

    def read_file(self, filename: str) -> bytes:
        path = self._path(filename)
        if not path.is_file():
            raise ModelSourceError(f"{self.model_id}: no {filename} in {self.root}")
        data = path.read_bytes()
        self.fetched.add(len(data))
        return data

    def read_range(self, filename: str, start: int, end: int) -> bytes:
        data = bytearray(max(end - start, 0))  # writable, so numpy/torch can wrap it without a copy
        with open(self._path(filename), "rb") as fh:
            fh.seek(start)
            n = fh.readinto(data)
        self.fetched.add(n)
        return data[:n] if n < len(data) else data

    def safetensors_files(self) -> list[str]:
        return sorted(p.name for p in self.root.glob("*.safetensors"))

    def describe(self) -> str:
        return f"{self.model_id} ({self.root})"


class HubSource(ModelSource):
    """A model repo on the Hub (or any Hub-protocol endpoint), pinned to one commit.

    Files are fetched with HTTP range requests through huggingface_hub's
    session, with its exponential backoff on 429/5xx and network errors.
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
            raise ModelSourceError(f"{repo_id}: the Hub answered {_status(exc)}: {_first_line(exc)}") from None
        except Exception as exc:  # connection refused, DNS, timeouts after retries
            raise ModelSourceError(
                f"cannot reach the Hub for {repo_id} ({type(exc).__name__}: {_first_line(exc)}): check the network or HF_ENDPOINT"
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

    def _get(self, filename: str, headers: dict[str, str]) -> bytes:
        from huggingface_hub import hf_hub_url
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError
        from huggingface_hub.utils import build_hf_headers, hf_raise_for_status, http_backoff

        url = hf_hub_url(self.model_id, filename, revision=self.revision)
        try:
            response = http_backoff(
                "GET",
                url,
                headers={**build_hf_headers(token=self.token), **headers},
                follow_redirects=True,
                timeout=60,
            )
            hf_raise_for_status(response)
        except EntryNotFoundError:
            raise ModelSourceError(f"{self.model_id}@{self.revision[:12]}: no file {filename}") from None
        except HfHubHTTPError as exc:
            raise ModelSourceError(
                f"{self.model_id}: reading {filename} failed, the Hub answered {_status(exc)}: {_first_line(exc)}"
            ) from None
        except Exception as exc:
            raise ModelSourceError(
                f"{self.model_id}: reading {filename} failed ({type(exc).__name__}: {_first_line(exc)})"
            ) from None
        data = bytearray(response.content)  # writable, so numpy/torch can wrap it
        self.fetched.add(len(data))
        return data

    def read_file(self, filename: str) -> bytes:
        return self._get(filename, {})

    def read_range(self, filename: str, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        data = self._get(filename, {"Range": f"bytes={start}-{end - 1}"})
        if len(data) != end - start:
            raise ModelSourceError(
                f"{self.model_id}: asked {filename} for bytes {start}-{end - 1}, got {len(data)} bytes "
                "(the server ignored the range or the file is truncated)"
            )
        return data

    def describe(self) -> str:
        return f"{self.model_id}@{self.revision[:12]}"


def open_source(spec: str, model_id: str | None = None, token: str | bool | None = None) -> ModelSource:
    """A local directory if ``spec`` is one, else a Hub id ``org/name[@revision]``."""
    spec = str(spec).strip()
    path = Path(spec).expanduser()
    if path.is_dir():
        return LocalSource(path, model_id=model_id)
    if spec.startswith((".", "/", "~")) or os.sep in spec and spec.count("/") > 1:
        raise ModelSourceError(f"model directory {spec} does not exist: pass a directory with config.json or a Hub id")
    repo_id, _, revision = spec.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ModelSourceError(
            f"{spec!r} is neither a local directory nor a Hub id of the form org/name[@revision]"
        )
    return HubSource(repo_id, revision or None, token=token)


def _status(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    return str(getattr(response, "status_code", "an error"))


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
