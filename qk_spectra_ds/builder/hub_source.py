"""A model repo on the Hub (or any Hub-protocol endpoint), pinned to one commit, read by checked HTTP range requests.

Every ranged answer is checked against the range asked (:func:`range_answer_problem`); a wrong
or cut-short one is retried, then refused in one line. Files read whole (config.json, the index)
stop downloading past :data:`.weights.SMALL_FILE_LIMIT`.
"""

from __future__ import annotations

import re
import time

from ..errors import ModelSourceError, one_line
from . import weights
from .weights import ModelSource, too_large

RANGE_ATTEMPTS = 3
"""Tries of a ranged Hub read whose answer is not the range asked, before giving up."""

RANGE_RETRY_WAIT = 0.5
"""Seconds before the second try of such a read; doubled for each further try."""


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
        from huggingface_hub import HfApi  # deliberately lazy (about 0.9 s): a local build never imports it
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
            raise ModelSourceError(
                f"{repo_id}: the Hub answered {_status(exc)}: {one_line(exc, first_line=True)}"
            ) from None
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
        from huggingface_hub import hf_hub_url  # deliberately lazy, as above
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
                limit = weights.SMALL_FILE_LIMIT if byte_range is None else byte_range[1] - byte_range[0]
                try:
                    data = _bounded_body(response, limit)  # writable, so numpy/torch can wrap it
                except httpx.TransportError as exc:  # a body cut short or stalled: retried like a wrong answer
                    return None, f"a body cut short ({type(exc).__name__}: {one_line(exc, first_line=True)})"
                if data is None and byte_range is None:
                    raise ModelSourceError(too_large(self.model_id, filename, None))
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

    def _get_with_retries(
        self, filename: str, byte_range: tuple[int, int] | None
    ) -> tuple[bytearray | None, str | None]:
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
