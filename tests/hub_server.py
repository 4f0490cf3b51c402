"""A Hugging Face Hub-protocol server for tests, built on the Python standard library only.

The real, unmodified ``huggingface_hub`` and ``datasets`` clients talk to it when ``HF_ENDPOINT``
points at :attr:`HubServer.url` (set it, with ``HF_HUB_DISABLE_XET=1``, before importing them).

What it serves (paths as the clients build them; ``{t}`` is ``models``/``datasets``/``spaces``,
``{p}`` the matching URL prefix ``""``/``datasets/``/``spaces/``; a revision is one URL segment,
percent-encoded, so ``refs%2Fpr%2F1`` works):

* ``POST /api/repos/create``, ``DELETE /api/repos/delete``, ``PUT /api/{t}/{repo}/settings``
* ``GET /api/{t}/{repo}[/revision/{rev}]`` (``model_info``/``dataset_info``; ``blobs``/``expand``)
* ``GET /api/{t}/{repo}/tree/{rev}[/{path}]`` (``recursive``, ``expand``, cursor pagination)
* ``POST /api/{t}/{repo}/paths-info/{rev}``, ``GET /api/{t}/{repo}/refs``,
  ``GET /api/{t}/{repo}/commits/{rev}``
* ``POST /api/{t}/{repo}/preupload/{rev}``, ``POST /{p}{repo}.git/info/lfs/objects/batch``,
  ``PUT /_lfs/...`` (upload href), ``POST /_lfs/.../verify``, ``POST /api/{t}/{repo}/commit/{rev}``
  (NDJSON: ``header``, ``file``, ``lfsFile``, ``deletedFile``, ``deletedFolder``; ``parentCommit``
  that is not the branch head gets 412)
* ``POST/DELETE /api/{t}/{repo}/branch/{name}``, ``POST /api/{t}/{repo}/tag/{rev}``,
  ``DELETE /api/{t}/{repo}/tag/{tag}`` (an existing tag gets 409)
* ``GET/HEAD /{p}{repo}/resolve/{rev}/{path}`` with ``Range`` (206 + ``Content-Range``, 416),
  ``X-Repo-Commit``, ``ETag``, ``X-Linked-Size``/``X-Linked-Etag`` for LFS files
* ``GET /api/models/{repo}/safetensors-metadata/{index}``, ``GET /api/whoami-v2``,
  ``POST /api/validate-yaml``, ``GET /api/{t}/{repo}/auth-check``, ``GET /api/agent-harnesses``

Errors carry the ``X-Error-Code`` header the client maps to exceptions: ``RepoNotFound``,
``RevisionNotFound``, ``EntryNotFound``, ``GatedRepo``. Anything else answers 501 so that a
missing endpoint is obvious in the request log.

Each commit is a full immutable snapshot (path -> file entry); file contents live in one
content-addressed blob store (keyed by sha256). All state is in memory.

Test hooks live on :class:`HubServer`: byte counters and a request log, fault injection,
bad tokens, gated/private repos and direct seeding of repos without HTTP.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import io
import json
import os
import re
import socketserver
import struct
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

__all__ = ["HubServer", "RepoStore", "HubApp", "HubError", "RequestRecord", "FileEntry", "Commit"]

URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
DEFAULT_USER = "test-user"
DEFAULT_BRANCH = "main"

# Files matching these globs (on the file name) are stored with LFS, like the Hub's default
# .gitattributes. Binary content (a NUL byte in the first 512 bytes) and big files are LFS too.
LFS_GLOBS = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lz4",
    "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb",
    "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "*.tar", "*.tflite", "*.tgz",
    "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
)  # fmt: skip
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"{g} filter=lfs diff=lfs merge=lfs -text\n" for g in LFS_GLOBS).encode()
TREE_PAGE_SIZE = 1000  # the Hub's page size for /tree (50 with expand)
TREE_PAGE_SIZE_EXPAND = 50
CHUNK_SIZE = 64 * 1024
HEX40 = re.compile(r"[0-9a-f]{40}")
HEX_PREFIX = re.compile(r"[0-9a-f]{7,39}")
RANGE_RE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", re.IGNORECASE)


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def now_iso() -> str:
    """Current UTC time in the Hub's format (``2024-01-31T12:00:00.123Z``)."""
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def git_blob_oid(data: bytes) -> str:
    """The git object id of a blob with this content."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file stored in git in place of an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def should_use_lfs(path: str, size: int, sample: bytes = b"") -> bool:
    """The Hub's upload-mode rule, approximately: LFS globs, binary content or size > 10 MiB."""
    name = path.rsplit("/", 1)[-1]
    return (
        any(fnmatch.fnmatch(name, g) for g in LFS_GLOBS) or size > LFS_SIZE_THRESHOLD or b"\0" in sample[:512]
    )


def validate_path(path: str) -> str:
    """Reject paths a git tree could not hold (absolute, empty segments, ``..``)."""
    if not path or path.startswith("/") or any(seg in ("", ".", "..") for seg in path.split("/")):
        raise HubError(400, f"Invalid path in repo: {path!r}")
    return path


def truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes", "on")


# --------------------------------------------------------------------------------------------
# Repository storage
# --------------------------------------------------------------------------------------------


class HubError(Exception):
    """An error answered to the client: HTTP status, optional ``X-Error-Code`` and headers."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class FileEntry:
    """One file of a commit's tree. Content is in the blob store under ``sha256``."""

    sha256: str
    size: int
    lfs: bool
    git_oid: str  # sha1 of the git blob: the content for regular files, the LFS pointer otherwise

    @classmethod
    def for_content(cls, sha256: str, data_or_size: bytes | int, lfs: bool) -> FileEntry:
        if lfs:
            size = data_or_size if isinstance(data_or_size, int) else len(data_or_size)
            return cls(sha256, size, True, git_blob_oid(lfs_pointer(sha256, size)))
        assert isinstance(data_or_size, bytes)
        return cls(sha256, len(data_or_size), False, git_blob_oid(data_or_size))

    @property
    def pointer_size(self) -> int:
        return len(lfs_pointer(self.sha256, self.size)) if self.lfs else 0

    @property
    def etag(self) -> str:
        """What the Hub sends as (linked) ETag: sha256 for LFS files, the git oid otherwise."""
        return self.sha256 if self.lfs else self.git_oid

    @property
    def remote_oid(self) -> str:
        """The ``oid`` preupload answers for an existing file (what the client compares to)."""
        return self.sha256 if self.lfs else self.git_oid


@dataclass(frozen=True)
class Commit:
    """An immutable commit: a full snapshot of the tree (path -> :class:`FileEntry`)."""

    oid: str
    parents: tuple[str, ...]
    files: Mapping[str, FileEntry]
    title: str
    message: str
    author: str
    date: str


@dataclass
class Repo:
    """One repository: refs, commits and access settings."""

    repo_type: str
    repo_id: str
    private: bool = False
    gated: bool | str = False  # False, "auto" or "manual"
    granted_tokens: set[str] = field(default_factory=set)  # tokens allowed through the gate
    created_at: str = field(default_factory=now_iso)
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit oid (incl. "refs/pr/N")
    tags: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    lfs_oids: set[str] = field(default_factory=set)  # LFS objects uploaded to this repo
    num_prs: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return (self.repo_type, self.repo_id)


# An operation of RepoStore.commit: ("add", path, FileEntry) | ("delete", path) | ("delete_folder", path)
Operation = tuple


class RepoStore:
    """All repositories and blobs, guarded by one re-entrant lock.

    Commits are serialized under the lock, so concurrent pushers see a linear history: a
    commit with a stale ``parent_commit`` is refused with 412, one without is applied on top
    of whatever the branch head is when it arrives.
    """

    def __init__(self, username: str = DEFAULT_USER, gitattributes: bool = True):
        self.lock = threading.RLock()
        self.username = username
        self.gitattributes = gitattributes  # new repos start with a .gitattributes commit, as on the Hub
        self.repos: dict[tuple[str, str], Repo] = {}
        self.blobs: dict[str, bytes] = {}  # sha256 hex -> content
        self._counter = 0

    # -- blobs ---------------------------------------------------------------------------

    def put_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        with self.lock:
            self.blobs.setdefault(sha, bytes(data))
        return sha

    def entry_for(self, path: str, data: bytes, lfs: bool | None = None) -> FileEntry:
        """Store ``data`` and return its file entry (LFS decided by :func:`should_use_lfs`)."""
        sha = self.put_blob(data)
        if lfs is None:
            lfs = should_use_lfs(path, len(data), data[:512])
        return FileEntry.for_content(sha, data, lfs)

    def blob(self, sha256: str) -> bytes:
        return self.blobs[sha256]

    # -- repos ---------------------------------------------------------------------------

    def create_repo(
        self, repo_id: str, repo_type: str = "model", private: bool = False, exist_ok: bool = False
    ) -> Repo:
        if repo_type not in URL_PREFIX:
            raise HubError(400, f"Invalid repo type {repo_type!r}")
        if repo_id.count("/") != 1 or not all(repo_id.split("/")):
            raise HubError(400, f"Invalid repo id {repo_id!r}: expected 'namespace/name'")
        with self.lock:
            repo = self.repos.get((repo_type, repo_id))
            if repo is not None:
                if exist_ok:
                    return repo
                raise HubError(409, f"You already created this {repo_type} repo")
            repo = Repo(repo_type=repo_type, repo_id=repo_id, private=private)
            files = {}
            if self.gitattributes:
                files[".gitattributes"] = self.entry_for(".gitattributes", GITATTRIBUTES, lfs=False)
            initial = self._new_commit(repo, (), files, "initial commit", "", "system")
            repo.branches[DEFAULT_BRANCH] = initial.oid
            self.repos[repo.key] = repo
            return repo

    def delete_repo(self, repo_id: str, repo_type: str = "model") -> None:
        with self.lock:
            if self.repos.pop((repo_type, repo_id), None) is None:
                raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")

    def get_repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        with self.lock:
            repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    # -- revisions -----------------------------------------------------------------------

    def resolve(self, repo: Repo, revision: str | None) -> Commit:
        """Resolve a tag, branch, ``refs/...`` name, full sha or unique sha prefix to a commit."""
        revision = revision or DEFAULT_BRANCH
        with self.lock:
            oid = None
            if revision.startswith("refs/heads/"):
                oid = repo.branches.get(revision[len("refs/heads/") :])
            elif revision.startswith("refs/tags/"):
                oid = repo.tags.get(revision[len("refs/tags/") :])
            elif revision in repo.tags:
                oid = repo.tags[revision]
            elif revision in repo.branches:  # also "refs/pr/N"
                oid = repo.branches[revision]
            elif HEX40.fullmatch(revision) and revision in repo.commits:
                oid = revision
            elif HEX_PREFIX.fullmatch(revision):
                matches = [c for c in repo.commits if c.startswith(revision)]
                oid = matches[0] if len(matches) == 1 else None
            if oid is None:
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            return repo.commits[oid]

    def branch_name(self, repo: Repo, revision: str | None) -> str:
        """The branch a commit to ``revision`` goes to (404 if it is no branch)."""
        revision = revision or DEFAULT_BRANCH
        if revision.startswith("refs/heads/"):
            revision = revision[len("refs/heads/") :]
        with self.lock:
            if revision not in repo.branches:
                raise HubError(404, f"Invalid rev id: {revision} is not a branch", "RevisionNotFound")
        return revision

    def history(self, repo: Repo, commit: Commit) -> list[Commit]:
        """First-parent history, newest first."""
        out = [commit]
        with self.lock:
            while out[-1].parents:
                out.append(repo.commits[out[-1].parents[0]])
        return out

    # -- writes --------------------------------------------------------------------------

    def _new_commit(
        self, repo: Repo, parents: tuple[str, ...], files: dict, title: str, message: str, author: str
    ) -> Commit:
        self._counter += 1
        seed = f"{repo.repo_type}/{repo.repo_id}\n{parents}\n{title}\n{time.time_ns()}\n{self._counter}\n"
        seed += "".join(f"{p}:{e.git_oid}\n" for p, e in sorted(files.items()))
        commit = Commit(
            oid=hashlib.sha1(seed.encode()).hexdigest(),
            parents=parents,
            files=dict(files),
            title=title,
            message=message,
            author=author,
            date=now_iso(),
        )
        repo.commits[commit.oid] = commit
        return commit

    def commit(
        self,
        repo: Repo,
        revision: str | None,
        operations: Iterable[Operation],
        *,
        title: str,
        message: str = "",
        parent_commit: str | None = None,
        author: str = DEFAULT_USER,
        create_pr: bool = False,
    ) -> tuple[Commit, int | None]:
        """Apply ``operations`` on top of the branch head; returns (commit, PR number or None)."""
        with self.lock:
            branch = self.branch_name(repo, revision)
            head = repo.branches[branch]
            if parent_commit is not None and not head.startswith(parent_commit.lower()):
                raise HubError(
                    412,
                    f"A commit has happened since. Please refresh and try again."
                    f" (parent commit {parent_commit} is not the head {head} of {branch})",
                )
            pr_num = None
            if create_pr:
                repo.num_prs += 1
                pr_num = repo.num_prs
                branch = f"refs/pr/{pr_num}"
            files = dict(repo.commits[head].files)
            for op in operations:
                kind, path = op[0], op[1]
                if kind == "add":
                    files[validate_path(path)] = op[2]
                elif kind == "delete":
                    if files.pop(path, None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                elif kind == "delete_folder":
                    prefix = path.rstrip("/") + "/"
                    doomed = [p for p in files if p.startswith(prefix)]
                    if not doomed:
                        raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                    for p in doomed:
                        del files[p]
                else:
                    raise HubError(400, f"Unknown operation {kind!r}")
            new = self._new_commit(repo, (head,), files, title, message, author)
            repo.branches[branch] = new.oid
            return new, pr_num

    def create_branch(self, repo: Repo, branch: str, starting_point: str | None = None) -> None:
        with self.lock:
            if branch in repo.branches:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            repo.branches[branch] = self.resolve(repo, starting_point).oid

    def delete_branch(self, repo: Repo, branch: str) -> None:
        with self.lock:
            if branch == DEFAULT_BRANCH:
                raise HubError(403, "Cannot delete the default branch")
            if repo.branches.pop(branch, None) is None:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")

    def create_tag(self, repo: Repo, tag: str, revision: str | None = None) -> None:
        with self.lock:
            if tag in repo.tags:
                raise HubError(409, f"Tag already exists: refs/tags/{tag}")
            repo.tags[tag] = self.resolve(repo, revision).oid

    def delete_tag(self, repo: Repo, tag: str) -> None:
        with self.lock:
            if repo.tags.pop(tag, None) is None:
                raise HubError(404, f"Invalid rev id: {tag}", "RevisionNotFound")

    # -- tree queries --------------------------------------------------------------------

    @staticmethod
    def dir_oids(commit: Commit) -> dict[str, str]:
        """Every directory of the tree (not the root) -> a tree id that, as in git, depends
        only on the directory's content (paths relative to it and their blob ids)."""
        lines: dict[str, list[str]] = {}
        for path, entry in sorted(commit.files.items()):
            parts = path.split("/")
            for i in range(1, len(parts)):
                lines.setdefault("/".join(parts[:i]), []).append(f"{'/'.join(parts[i:])}:{entry.git_oid}")
        return {d: hashlib.sha1("\n".join(v).encode()).hexdigest() for d, v in lines.items()}

    def last_commit(self, repo: Repo, commit: Commit, path: str) -> Commit:
        """The newest commit (on the first-parent chain) that changed ``path`` (file or dir)."""

        def signature(c: Commit) -> str | None:
            entry = c.files.get(path)
            return entry.git_oid if entry is not None else self.dir_oids(c).get(path)

        current, sig = commit, signature(commit)
        for parent in self.history(repo, commit)[1:]:
            if signature(parent) != sig:
                break
            current = parent
        return current


# --------------------------------------------------------------------------------------------
# HTTP application
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestRecord:
    """One line of the request log."""

    method: str
    path: str  # percent-decoded path, e.g. "/datasets/org/x/resolve/main/data/a.parquet"
    query: str
    range: str | None
    status: int
    repo_type: str | None = None  # set for resolve requests
    repo_id: str | None = None
    filename: str | None = None
    revision: str | None = None
    token: str | None = None


@dataclass
class _Fault:
    remaining: int
    status: int
    method: str | None
    path_contains: str | None
    retry_after: int | None
    range_mode: str | None = None  # set: answer a ranged GET wrongly (see HubServer.misserve_ranges), not with status
    once_per_range: bool = False  # range faults: only the first request of each (path, Range) is misserved
    seen: set = field(default_factory=set)


@dataclass
class Request:
    """A parsed request: method, decoded path segments, query, headers, body, token."""

    method: str
    raw_path: str
    segments: list[str]
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    host: str
    meta: dict[str, Any] = field(default_factory=dict)  # what the handler learnt, for the log
    range_fault: str | None = None  # a range fault's mode, for _resolve to apply

    @property
    def path(self) -> str:
        return unquote(self.raw_path)

    @property
    def token(self) -> str | None:
        auth = self.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip() or None
        return None

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def params(self, name: str) -> list[str]:
        return self.query.get(name, []) + self.query.get(name + "[]", [])

    def json(self) -> Any:
        if not self.body:
            return {}
        try:
            return json.loads(self.body)
        except ValueError as e:
            raise HubError(400, f"Invalid JSON body: {e}") from e


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: Iterable[bytes]


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    body = json.dumps(data).encode()
    hdrs = [("Content-Type", "application/json; charset=utf-8"), ("Content-Length", str(len(body)))]
    hdrs += list((headers or {}).items())
    return Response(status, hdrs, [body])


def error_response(err: HubError) -> Response:
    headers = {"X-Error-Message": err.message.replace("\n", " ")[:500], **err.headers}
    if err.code:
        headers["X-Error-Code"] = err.code
    return json_response({"error": err.message}, err.status, headers)


def _read_body(environ: dict) -> bytes:
    """Read the whole request body (Content-Length or chunked), so the socket is drained."""
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if length:
        return stream.read(int(length))
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        out = io.BytesIO()
        while True:
            size_line = stream.readline()
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while stream.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return out.getvalue()
            out.write(stream.read(size))
            stream.readline()  # CRLF after each chunk
    return b""


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) of a single ``bytes=`` range; None to serve the whole file.

    Raises a 416 :class:`HubError` when the range cannot be satisfied.
    """
    if not header:
        return None
    m = RANGE_RE.fullmatch(header)
    if not m or m.groups() == ("", ""):
        return None  # malformed or multi-range: ignored, as servers may
    first, last = m.groups()
    if first == "":
        n = int(last)
        if n == 0 or size == 0:
            raise HubError(416, "Range Not Satisfiable", headers={"Content-Range": f"bytes */{size}"})
        return max(0, size - n), size - 1
    start = int(first)
    if last and int(last) < start:
        return None  # syntactically invalid: ignored (RFC 7233)
    if start >= size:
        raise HubError(416, "Range Not Satisfiable", headers={"Content-Range": f"bytes */{size}"})
    return start, min(int(last), size - 1) if last else size - 1


RANGE_FAULT_MODES = ("shift", "total", "no-header", "whole")


def _misserve(mode: str, headers: dict[str, str], blob: memoryview, byte_range: tuple[int, int]):
    """(status, body) of a wrong answer to a satisfiable range; edits ``headers`` to match.

    ``shift``: the same number of bytes one further on (one back at the end of the file),
    with a Content-Range that truthfully says so; ``total``: the right bytes, a wrong total;
    ``no-header``: the right bytes without Content-Range; ``whole``: a 200 with the whole file.
    """
    start, end = byte_range
    size = len(blob)
    if mode == "shift":
        step = 1 if end + 1 < size else -1
        if start + step < 0:
            raise HubError(500, "test server: cannot shift a range that spans the whole file")
        start, end = start + step, end + step
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        return 206, blob[start : end + 1]
    if mode == "total":
        headers["Content-Range"] = f"bytes {start}-{end}/{size + 1}"
        return 206, blob[start : end + 1]
    if mode == "no-header":
        del headers["Content-Range"]
        return 206, blob[start : end + 1]
    if mode == "whole":
        del headers["Content-Range"]
        return 200, blob
    raise ValueError(f"unknown range fault {mode!r}; known: {', '.join(RANGE_FAULT_MODES)}")


class HubApp:
    """The WSGI application: routing, access control, fault injection, counters and the log."""

    def __init__(self, store: RepoStore):
        self.store = store
        self.bad_tokens: set[str] = set()  # requests bearing one of these get 401
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._served: dict[tuple[str, str, str], int] = {}
        self._log: list[RequestRecord] = []
        self.errors: list[str] = []  # tracebacks of unexpected server-side exceptions

    # -- test hooks ----------------------------------------------------------------------

    def add_fault(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset_counters(self) -> None:
        with self._lock:
            self._served.clear()
            self._log.clear()

    def served(self) -> dict[tuple[str, str, str], int]:
        with self._lock:
            return dict(self._served)

    def log(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._log)

    def _take_fault(self, req: Request) -> Response | None:
        with self._lock:
            for fault in self._faults:
                if fault.method and fault.method.upper() != req.method:
                    continue
                if fault.path_contains and fault.path_contains not in req.path:
                    continue
                if fault.range_mode is not None:
                    key = (req.path, req.headers.get("range"))
                    if key[1] is None or (fault.once_per_range and key in fault.seen):
                        continue
                    fault.seen.add(key)
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                break
            else:
                return None
        if fault.range_mode is not None:
            req.range_fault = fault.range_mode
            return None
        headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
        return json_response({"error": f"Injected fault ({fault.status})"}, fault.status, headers)

    def _count(self, key: tuple[str, str, str], n: int) -> None:
        with self._lock:
            self._served[key] = self._served.get(key, 0) + n

    # -- WSGI entry point ----------------------------------------------------------------

    def __call__(self, environ: dict, start_response) -> Iterable[bytes]:
        raw_path = environ.get("RAW_PATH") or quote(environ.get("PATH_INFO", "/"))
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
        if environ.get("CONTENT_TYPE"):
            headers["content-type"] = environ["CONTENT_TYPE"]
        req = Request(
            method=environ["REQUEST_METHOD"].upper(),
            raw_path=raw_path,
            segments=[unquote(s) for s in raw_path.strip("/").split("/") if s != ""],
            query=parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True),
            headers=headers,
            body=_read_body(environ),
            host=headers.get("host", f"{environ.get('SERVER_NAME')}:{environ.get('SERVER_PORT')}"),
        )
        try:
            resp = self._take_fault(req) or self._dispatch(req)
        except HubError as err:
            resp = error_response(err)
        except Exception:  # a server bug: answer 500 and keep the traceback for the test
            tb = traceback.format_exc()
            with self._lock:
                self.errors.append(tb)
            resp = json_response({"error": f"Test hub server error:\n{tb}"}, 500)
        record = RequestRecord(
            method=req.method,
            path=req.path,
            query=environ.get("QUERY_STRING", ""),
            range=req.headers.get("range"),
            status=resp.status,
            token=req.token,
            **req.meta,
        )
        with self._lock:
            self._log.append(record)
        start_response(f"{resp.status} {HTTPStatus(resp.status).phrase}", resp.headers)
        return resp.body

    # -- routing -------------------------------------------------------------------------

    def _dispatch(self, req: Request) -> Response:
        segs = req.segments
        if segs[:1] == ["_lfs"]:  # upload hrefs: no auth, like a presigned storage URL
            return self._lfs_object(req, segs[1:])
        if req.token is not None and req.token in self.bad_tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        if segs[:1] == ["api"]:
            return self._api(req, segs[1:])
        # /{p}{repo}.git/info/lfs/objects/batch and /{p}{repo}/resolve/{rev}/{path}
        repo_type = "model"
        if segs[:1] in (["datasets"], ["spaces"]) and len(segs) >= 4:
            repo_type = API_TYPES[segs[0]]
            segs = segs[1:]
        if len(segs) >= 3:
            repo_id, rest = f"{segs[0]}/{segs[1]}", segs[2:]
            if repo_id.endswith(".git") and rest == ["info", "lfs", "objects", "batch"] and req.method == "POST":
                return self._lfs_batch(req, repo_type, repo_id[: -len(".git")])
            if rest[0] == "resolve" and len(rest) >= 3 and req.method in ("GET", "HEAD"):
                return self._resolve(req, repo_type, repo_id, rest[1], "/".join(rest[2:]))
        return self._not_implemented(req)

    def _not_implemented(self, req: Request) -> Response:
        raise HubError(501, f"Not implemented by the test hub server: {req.method} {req.path}")

    def _api(self, req: Request, segs: list[str]) -> Response:
        m = req.method
        if segs == ["whoami-v2"] and m == "GET":
            return self._whoami(req)
        if segs == ["agent-harnesses"] and m == "GET":  # client-side agent detection registry
            return json_response({"standardEnvVars": [], "harnesses": {}})
        if segs == ["validate-yaml"] and m == "POST":
            return self._validate_yaml(req)
        if segs == ["repos", "create"] and m == "POST":
            return self._create_repo(req)
        if segs == ["repos", "delete"] and m in ("DELETE", "POST"):
            return self._delete_repo(req)
        if len(segs) < 3 or segs[0] not in API_TYPES:
            return self._not_implemented(req)
        repo_type, repo_id, rest = API_TYPES[segs[0]], f"{segs[1]}/{segs[2]}", segs[3:]
        route = rest[0] if rest else ""
        if m == "GET" and route == "":
            return self._repo_info(req, repo_type, repo_id, None)
        if m == "GET" and route == "revision" and len(rest) == 2:
            return self._repo_info(req, repo_type, repo_id, rest[1])
        if m == "GET" and route == "tree" and len(rest) >= 2:
            return self._tree(req, repo_type, repo_id, rest[1], "/".join(rest[2:]))
        if m == "POST" and route == "paths-info" and len(rest) == 2:
            return self._paths_info(req, repo_type, repo_id, rest[1])
        if m == "GET" and route == "refs" and len(rest) == 1:
            return self._refs(req, repo_type, repo_id)
        if m == "GET" and route == "commits" and len(rest) == 2:
            return self._commits(req, repo_type, repo_id, rest[1])
        if m == "POST" and route == "preupload" and len(rest) == 2:
            return self._preupload(req, repo_type, repo_id, rest[1])
        if m == "POST" and route == "commit" and len(rest) == 2:
            return self._commit(req, repo_type, repo_id, rest[1])
        if route == "branch" and len(rest) == 2 and m in ("POST", "DELETE"):
            return self._branch(req, repo_type, repo_id, rest[1])
        if route == "tag" and len(rest) == 2 and m in ("POST", "DELETE"):
            return self._tag(req, repo_type, repo_id, rest[1])
        if m == "PUT" and route == "settings" and len(rest) == 1:
            return self._settings(req, repo_type, repo_id)
        if m == "GET" and route == "auth-check" and len(rest) == 1:
            self._readable_repo(req, repo_type, repo_id)
            return json_response({})
        if m == "GET" and route == "safetensors-metadata" and len(rest) >= 2:
            return self._safetensors_metadata(req, repo_type, repo_id, "/".join(rest[1:]))
        return self._not_implemented(req)

    # -- access control ------------------------------------------------------------------

    def _require_token(self, req: Request) -> str:
        if req.token is None:
            raise HubError(401, "You must be authenticated to perform this action (no token sent)")
        return req.token

    def _readable_repo(self, req: Request, repo_type: str, repo_id: str) -> Repo:
        repo = self.store.get_repo(repo_id, repo_type)
        if repo.private and req.token is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _writable_repo(self, req: Request, repo_type: str, repo_id: str) -> Repo:
        self._require_token(req)
        return self.store.get_repo(repo_id, repo_type)

    def _check_gate(self, req: Request, repo: Repo) -> None:
        if not repo.gated or (req.token is not None and req.token in repo.granted_tokens):
            return
        msg = f"Access to {repo.repo_type} {repo.repo_id} is restricted and you are not in the authorized list."
        raise HubError(401 if req.token is None else 403, msg, "GatedRepo")

    # -- misc endpoints ------------------------------------------------------------------

    def _whoami(self, req: Request) -> Response:
        self._require_token(req)
        return json_response(
            {
                "type": "user",
                "id": "0" * 24,
                "name": self.store.username,
                "fullname": "Test User",
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
            }
        )

    def _validate_yaml(self, req: Request) -> Response:
        content = req.json().get("content", "")
        if content.startswith("---") and "\n---" not in content[3:]:
            return json_response({"errors": [{"message": "Unterminated YAML front matter"}], "warnings": []}, 400)
        return json_response({"errors": [], "warnings": []})

    def _repo_url(self, req: Request, repo: Repo) -> str:
        return f"http://{req.host}/{URL_PREFIX[repo.repo_type]}{repo.repo_id}"

    def _create_repo(self, req: Request) -> Response:
        self._require_token(req)
        body = req.json()
        repo_type = body.get("type") or "model"
        name, org = body.get("name"), body.get("organization") or self.store.username
        private = bool(body.get("private")) or body.get("visibility") == "private"
        repo_id = f"{org}/{name}"
        try:
            repo = self.store.create_repo(repo_id, repo_type, private=private)
        except HubError as err:
            if err.status == 409:
                url = f"http://{req.host}/{URL_PREFIX.get(repo_type, '')}{repo_id}"
                return json_response({"error": err.message, "url": url}, 409, {"X-Error-Message": err.message})
            raise
        return json_response({"url": self._repo_url(req, repo), "name": repo_id, "id": repo_id})

    def _delete_repo(self, req: Request) -> Response:
        self._require_token(req)
        body = req.json()
        repo_id = f"{body.get('organization') or self.store.username}/{body.get('name')}"
        self.store.delete_repo(repo_id, body.get("type") or "model")
        return json_response({})

    def _settings(self, req: Request, repo_type: str, repo_id: str) -> Response:
        repo = self._writable_repo(req, repo_type, repo_id)
        body = req.json()
        with self.store.lock:
            if "private" in body:
                repo.private = bool(body["private"])
            if "visibility" in body:
                repo.private = body["visibility"] == "private"
            if "gated" in body:
                repo.gated = body["gated"] or False
        return json_response({})

    # -- read endpoints ------------------------------------------------------------------

    def _repo_info(self, req: Request, repo_type: str, repo_id: str, revision: str | None) -> Response:
        repo = self._readable_repo(req, repo_type, repo_id)
        commit = self.store.resolve(repo, revision)
        blobs = truthy(req.param("blobs"))
        siblings = []
        for path, entry in sorted(commit.files.items()):
            sib: dict[str, Any] = {"rfilename": path}
            if blobs:
                sib.update(size=entry.size, blobId=entry.git_oid)
                if entry.lfs:
                    sib["lfs"] = {"size": entry.size, "sha256": entry.sha256, "pointerSize": entry.pointer_size}
            siblings.append(sib)
        info: dict[str, Any] = {
            "_id": hashlib.sha1(f"{repo_type}/{repo_id}".encode()).hexdigest()[:24],
            "id": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": repo.gated,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(e.size for e in commit.files.values()),
        }
        if repo_type == "model":
            info["modelId"] = repo_id
        expand = req.params("expand")
        if expand:
            info = {k: v for k, v in info.items() if k in expand or k in ("_id", "id")}
        return json_response(info)

    def _entry_json(self, repo: Repo, commit: Commit, path: str, dir_oids: dict[str, str], expand: bool) -> dict:
        entry = commit.files.get(path)
        if entry is not None:
            out: dict[str, Any] = {"type": "file", "oid": entry.git_oid, "size": entry.size, "path": path}
            if entry.lfs:
                out["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
        else:
            out = {"type": "directory", "oid": dir_oids[path], "size": 0, "path": path}
        if expand:
            last = self.store.last_commit(repo, commit, path)
            out["lastCommit"] = {"id": last.oid, "title": last.title, "date": last.date}
            if entry is not None:
                out["securityFileStatus"] = {
                    "status": "safe",
                    "avScan": {"virusFound": False, "virusNames": None},
                    "pickleImportScan": None,
                }
        return out

    def _tree(self, req: Request, repo_type: str, repo_id: str, revision: str, path: str) -> Response:
        repo = self._readable_repo(req, repo_type, repo_id)
        commit = self.store.resolve(repo, revision)
        path = path.strip("/")
        recursive, expand = truthy(req.param("recursive")), truthy(req.param("expand"))
        dir_oids = self.store.dir_oids(commit)
        if path and path not in dir_oids:
            raise HubError(404, f"Entry not found: {path} is not a directory", "EntryNotFound",
                           {"X-Repo-Commit": commit.oid})  # fmt: skip
        prefix = path + "/" if path else ""
        depth = prefix.count("/")

        def wanted(p: str) -> bool:
            return p.startswith(prefix) and (recursive or p.count("/") == depth)

        # the Hub lists "tree first": directories, then files
        paths = sorted(d for d in dir_oids if wanted(d)) + sorted(p for p in commit.files if wanted(p))
        page_size = int(req.param("limit") or (TREE_PAGE_SIZE_EXPAND if expand else TREE_PAGE_SIZE))
        cursor = int(req.param("cursor") or 0)
        page = [self._entry_json(repo, commit, p, dir_oids, expand) for p in paths[cursor : cursor + page_size]]
        headers = {}
        if cursor + page_size < len(paths):
            query = urlencode({"recursive": str(recursive).lower(), "expand": str(expand).lower(),
                               "limit": page_size, "cursor": cursor + page_size})  # fmt: skip
            headers["Link"] = f'<http://{req.host}{req.raw_path}?{query}>; rel="next"'
        return json_response(page, headers=headers)

    def _paths_info(self, req: Request, repo_type: str, repo_id: str, revision: str) -> Response:
        repo = self._readable_repo(req, repo_type, repo_id)
        commit = self.store.resolve(repo, revision)
        if "json" in req.headers.get("content-type", ""):
            body = req.json()
            paths, expand = body.get("paths", []), bool(body.get("expand"))
        else:
            form = parse_qs(req.body.decode(), keep_blank_values=True)
            paths, expand = form.get("paths", []), truthy((form.get("expand") or ["false"])[-1])
        dir_oids = self.store.dir_oids(commit)
        out = []
        for p in paths:
            p = p.strip("/")
            if p in commit.files or p in dir_oids:
                out.append(self._entry_json(repo, commit, p, dir_oids, expand))
        return json_response(out)

    def _refs(self, req: Request, repo_type: str, repo_id: str) -> Response:
        repo = self._readable_repo(req, repo_type, repo_id)
        with self.store.lock:
            branches = [
                {"name": b, "ref": f"refs/heads/{b}", "targetCommit": oid}
                for b, oid in sorted(repo.branches.items())
                if not b.startswith("refs/pr/")
            ]
            tags = [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": oid} for t, oid in sorted(repo.tags.items())]
            prs = [
                {"name": b, "ref": b, "targetCommit": oid}
                for b, oid in sorted(repo.branches.items())
                if b.startswith("refs/pr/")
            ]
        out: dict[str, Any] = {"branches": branches, "converts": [], "tags": tags}
        if truthy(req.param("include_prs")):
            out["pullRequests"] = prs
        return json_response(out)

    def _commits(self, req: Request, repo_type: str, repo_id: str, revision: str) -> Response:
        repo = self._readable_repo(req, repo_type, repo_id)
        commit = self.store.resolve(repo, revision)
        formatted = "formatted" in req.params("expand")
        out = []
        for c in self.store.history(repo, commit):
            item: dict[str, Any] = {
                "id": c.oid,
                "title": c.title,
                "message": c.message,
                "authors": [{"user": c.author, "avatar": None}],
                "date": c.date,
            }
            if formatted:
                item["formatted"] = {"title": c.title, "message": c.message}
            out.append(item)
        return json_response(out)

    def _resolve(self, req: Request, repo_type: str, repo_id: str, revision: str, path: str) -> Response:
        req.meta.update(repo_type=repo_type, repo_id=repo_id, filename=path, revision=revision)
        repo = self._readable_repo(req, repo_type, repo_id)
        self._check_gate(req, repo)
        commit = self.store.resolve(repo, revision)
        entry = commit.files.get(path)
        if entry is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        data = memoryview(self.store.blob(entry.sha256))
        headers = {
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "ETag": f'"{entry.etag}"',
            "X-Repo-Commit": commit.oid,
            "Content-Disposition": f'inline; filename="{path.rsplit("/", 1)[-1]}"',
        }
        if entry.lfs:
            headers.update({"X-Linked-Size": str(entry.size), "X-Linked-Etag": f'"{entry.sha256}"'})
        try:
            byte_range = _parse_range(req.headers.get("range"), entry.size)
        except HubError as err:
            err.headers.update({"X-Repo-Commit": commit.oid})
            raise
        status = 200
        if byte_range is not None:
            status = 206
            start, end = byte_range
            headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
            data = data[start : end + 1]
            if req.range_fault is not None:
                status, data = _misserve(req.range_fault, headers, memoryview(self.store.blob(entry.sha256)), byte_range)
        headers["Content-Length"] = str(len(data))
        body: Iterable[bytes] = [] if req.method == "HEAD" else self._counted_body((repo_type, repo_id, path), data)
        return Response(status, list(headers.items()), body)

    def _counted_body(self, key: tuple[str, str, str], data: memoryview) -> Iterator[bytes]:
        """Yield ``data`` in chunks and count the bytes sent.

        A chunk is counted before it is handed to the server (so the count is complete by the
        time the client has the bytes) and uncounted if writing it fails: the server then
        closes this generator while it is suspended on that chunk.
        """
        for offset in range(0, len(data), CHUNK_SIZE):
            chunk = bytes(data[offset : offset + CHUNK_SIZE])
            self._count(key, len(chunk))
            try:
                yield chunk
            except GeneratorExit:  # the write of this chunk failed (client went away)
                self._count(key, -len(chunk))
                raise

    def _safetensors_metadata(self, req: Request, repo_type: str, repo_id: str, filename: str) -> Response:
        repo = self._readable_repo(req, repo_type, repo_id)
        self._check_gate(req, repo)
        commit = self.store.resolve(repo, req.param("revision"))
        if filename not in commit.files:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        index = json.loads(self.store.blob(commit.files[filename].sha256))
        headers = {}
        for shard in sorted(set(index.get("weight_map", {}).values())):
            shard_path = "/".join(filter(None, [filename.rpartition("/")[0], shard]))
            if shard_path not in commit.files:
                raise HubError(404, f"Entry not found: {shard_path}", "EntryNotFound")
            data = self.store.blob(commit.files[shard_path].sha256)
            (n,) = struct.unpack("<Q", data[:8])
            headers[shard] = json.loads(data[8 : 8 + n])
        return json_response({"index": index, "headers": headers})

    # -- write endpoints -----------------------------------------------------------------

    def _preupload(self, req: Request, repo_type: str, repo_id: str, revision: str) -> Response:
        repo = self._writable_repo(req, repo_type, repo_id)
        head = self.store.resolve(repo, self.store.branch_name(repo, revision))
        files = []
        for f in req.json().get("files", []):
            path, size = f["path"], int(f.get("size", 0))
            sample = base64.b64decode(f.get("sample") or "")
            existing = head.files.get(path)
            files.append(
                {
                    "path": path,
                    "uploadMode": "lfs" if should_use_lfs(path, size, sample) else "regular",
                    "shouldIgnore": False,
                    "oid": existing.remote_oid if existing is not None else None,
                }
            )
        return json_response({"files": files, "commitOid": head.oid})

    def _lfs_batch(self, req: Request, repo_type: str, repo_id: str) -> Response:
        repo = self._writable_repo(req, repo_type, repo_id)
        body = req.json()
        base = f"http://{req.host}/_lfs/{repo_type}/{repo_id}"
        objects = []
        for obj in body.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            item: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            present = oid in repo.lfs_oids and oid in self.store.blobs
            if body.get("operation", "upload") == "download":
                if present:
                    item["actions"] = {"download": {"href": f"{base}/{oid}", "header": {}}}
                else:
                    item["error"] = {"code": 404, "message": "Object does not exist"}
            elif not present:  # already-present objects get no actions: the client skips them
                item["actions"] = {
                    "upload": {"href": f"{base}/{oid}", "header": {}},
                    "verify": {"href": f"{base}/{oid}/verify", "header": {}},
                }
            objects.append(item)
        return json_response(
            {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
            headers={"Content-Type": "application/vnd.git-lfs+json"},
        )

    def _lfs_object(self, req: Request, segs: list[str]) -> Response:
        """PUT/GET ``/_lfs/{type}/{org}/{name}/{oid}``, POST ``.../{oid}/verify``."""
        if len(segs) not in (4, 5) or segs[0] not in URL_PREFIX or (len(segs) == 5 and segs[4] != "verify"):
            return self._not_implemented(req)
        repo = self.store.get_repo(f"{segs[1]}/{segs[2]}", segs[0])
        oid = segs[3]
        if len(segs) == 5 and req.method == "POST":
            body = req.json()
            blob = self.store.blobs.get(oid)
            if blob is None or oid not in repo.lfs_oids or len(blob) != int(body.get("size", len(blob))):
                raise HubError(404, f"LFS object {oid} not found or wrong size")
            return json_response({})
        if len(segs) == 4 and req.method == "PUT":
            if hashlib.sha256(req.body).hexdigest() != oid:
                raise HubError(400, f"Uploaded content does not match oid {oid}")
            self.store.put_blob(req.body)
            with self.store.lock:
                repo.lfs_oids.add(oid)
            return Response(200, [("Content-Length", "0"), ("ETag", f'"{oid}"')], [])
        if len(segs) == 4 and req.method == "GET" and oid in repo.lfs_oids:
            data = self.store.blob(oid)
            return Response(200, [("Content-Length", str(len(data)))], [data])
        return self._not_implemented(req)

    def _commit(self, req: Request, repo_type: str, repo_id: str, revision: str) -> Response:
        repo = self._writable_repo(req, repo_type, repo_id)
        header: dict[str, Any] = {}
        ops: list[Operation] = []
        for line in req.body.splitlines():
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as e:
                raise HubError(400, f"Invalid NDJSON line: {e}") from e
            key, value = item.get("key"), item.get("value", {})
            if key == "header":
                header = value
            elif key == "file":
                content = value.get("content", "")
                data = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                ops.append(("add", value["path"], self.store.entry_for(value["path"], data, lfs=False)))
            elif key == "lfsFile":
                oid = value["oid"]
                blob = self.store.blobs.get(oid)
                if blob is None:
                    raise HubError(400, f"Your push was rejected because an LFS pointer pointed to a file that "
                                        f"does not exist: {value['path']} ({oid})")  # fmt: skip
                if value.get("size") is not None and int(value["size"]) != len(blob):
                    raise HubError(400, f"LFS object {oid} has size {len(blob)}, not {value['size']}")
                with self.store.lock:
                    repo.lfs_oids.add(oid)
                ops.append(("add", value["path"], FileEntry.for_content(oid, len(blob), lfs=True)))
            elif key == "deletedFile":
                ops.append(("delete", value["path"]))
            elif key == "deletedFolder":
                ops.append(("delete_folder", value["path"]))
            else:
                raise HubError(400, f"Unknown commit operation key {key!r}")
        title = header.get("summary") or ""
        if not title:
            raise HubError(400, "Commit summary (commit_message) cannot be empty")
        commit, pr_num = self.store.commit(
            repo,
            revision,
            ops,
            title=title,
            message=header.get("description") or "",
            parent_commit=header.get("parentCommit"),
            create_pr=truthy(req.param("create_pr")),
        )
        repo_url = self._repo_url(req, repo)
        out = {
            "success": True,
            "commitOid": commit.oid,
            "commitUrl": f"{repo_url}/commit/{commit.oid}",
            "hookOutput": "",
        }
        if pr_num is not None:
            out["pullRequestUrl"] = f"{repo_url}/discussions/{pr_num}"
        return json_response(out)

    def _branch(self, req: Request, repo_type: str, repo_id: str, branch: str) -> Response:
        repo = self._writable_repo(req, repo_type, repo_id)
        if req.method == "DELETE":
            self.store.delete_branch(repo, branch)
        else:
            self.store.create_branch(repo, branch, req.json().get("startingPoint"))
        return json_response({})

    def _tag(self, req: Request, repo_type: str, repo_id: str, name: str) -> Response:
        repo = self._writable_repo(req, repo_type, repo_id)
        if req.method == "DELETE":  # DELETE .../tag/{tag}
            self.store.delete_tag(repo, name)
        else:  # POST .../tag/{revision} {"tag": ...}
            tag = req.json().get("tag")
            if not tag:
                raise HubError(400, "Missing 'tag' in request body")
            self.store.create_tag(repo, tag, name)
        return json_response({})


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def server_bind(self) -> None:
        # skip HTTPServer.server_bind's reverse DNS lookup (getfqdn)
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]
        self.setup_environ()

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # client went away: not interesting
        super().handle_error(request, client_address)


class _NullStream(io.StringIO):
    def write(self, s: str) -> int:
        return len(s)


class _RequestHandler(WSGIRequestHandler):
    """Quiet handler that also passes the undecoded path (``RAW_PATH``) to the app."""

    def get_environ(self) -> dict:
        env = super().get_environ()
        env["RAW_PATH"] = self.path.split("?", 1)[0]
        return env

    def get_stderr(self):
        return _NullStream()  # write errors on closed connections are expected (streams cut short)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class HubServer:
    """A Hub-protocol server on 127.0.0.1, in a background thread.

    >>> server = HubServer().start()          # or HubServer(port=1234), or `with HubServer() as s:`
    >>> os.environ["HF_ENDPOINT"] = server.url   # before importing huggingface_hub / datasets
    >>> sha = server.seed_repo("org/tiny", "path/to/checkpoint")
    >>> server.reset_counters(); ...; server.bytes_served("org/tiny", "model.safetensors")
    >>> server.stop()
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, username: str = DEFAULT_USER, gitattributes: bool = True
    ):
        self.host, self.port = host, port
        self.store = RepoStore(username=username, gitattributes=gitattributes)
        self.app = HubApp(self.store)
        self._httpd: _ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> HubServer:
        if self._httpd is None:
            self._httpd = _ThreadingWSGIServer((self.host, self.port), _RequestHandler)
            self._httpd.set_app(self.app)
            self.port = self._httpd.server_address[1]
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="hub-server", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._httpd = self._thread = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:PORT`` (the value for ``HF_ENDPOINT``)."""
        return f"http://{self.host}:{self.port}"

    # -- counters, log, faults, auth -----------------------------------------------------

    @property
    def bad_tokens(self) -> set[str]:
        """Tokens that get 401 "Invalid credentials" on any request (mutable set)."""
        return self.app.bad_tokens

    @property
    def errors(self) -> list[str]:
        """Tracebacks of unexpected exceptions inside the server (should stay empty)."""
        return self.app.errors

    def reset_counters(self) -> None:
        """Clear the byte counters and the request log."""
        self.app.reset_counters()

    @property
    def served_bytes(self) -> dict[tuple[str, str, str], int]:
        """Body bytes sent by resolve responses, per (repo_type, repo_id, path)."""
        return self.app.served()

    def bytes_served(
        self, repo_id: str | None = None, filename: str | None = None, repo_type: str | None = None
    ) -> int:
        """Sum of resolve body bytes sent, filtered by repo id, file path and repo type."""
        return sum(
            n
            for (rt, rid, path), n in self.app.served().items()
            if (repo_id is None or rid == repo_id)
            and (filename is None or path == filename)
            and (repo_type is None or rt == repo_type)
        )

    @property
    def request_log(self) -> list[RequestRecord]:
        """Every request since the last :meth:`reset_counters`, in arrival order."""
        return self.app.log()

    def requests(
        self, method: str | None = None, path_contains: str | None = None, status: int | None = None
    ) -> list[RequestRecord]:
        """The request log, filtered."""
        return [
            r
            for r in self.app.log()
            if (method is None or r.method == method.upper())
            and (path_contains is None or path_contains in r.path)
            and (status is None or r.status == status)
        ]

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        *,
        method: str | None = None,
        path_contains: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        """Make the next ``n`` matching requests fail with ``status`` (e.g. 500, 429, 503).

        ``method``/``path_contains`` restrict which requests count; ``retry_after`` adds a
        ``Retry-After`` header (seconds; the client then waits that long before retrying).
        """
        self.app.add_fault(_Fault(n, status, method, path_contains, retry_after))

    def misserve_ranges(
        self, n: int = 1, mode: str = "shift", *, path_contains: str | None = None, once_per_range: bool = False
    ) -> None:
        """Answer the next ``n`` ranged GETs (of paths containing ``path_contains``) wrongly.

        ``mode`` (see ``_misserve``): ``shift`` (other bytes of the same length, with their true
        Content-Range), ``total`` (wrong total size), ``no-header`` (206 without Content-Range),
        ``whole`` (200 with the whole file). With ``once_per_range`` only the first request of
        each distinct range counts (a flaky proxy): a client that retries then gets the right bytes.
        Requests without a Range header are never affected.
        """
        if mode not in RANGE_FAULT_MODES:
            raise ValueError(f"unknown range fault {mode!r}; known: {', '.join(RANGE_FAULT_MODES)}")
        self.app.add_fault(_Fault(n, 206, "GET", path_contains, None, mode, once_per_range))

    def clear_faults(self) -> None:
        self.app.clear_faults()

    # -- direct repo manipulation (no HTTP) ----------------------------------------------

    def create_repo(
        self, repo_id: str, repo_type: str = "model", *, private: bool = False, exist_ok: bool = True
    ) -> Repo:
        """Create a repo directly (with its initial commit); returns the stored :class:`Repo`."""
        return self.store.create_repo(repo_id, repo_type, private=private, exist_ok=exist_ok)

    def seed_files(
        self,
        repo_id: str,
        files: Mapping[str, bytes | str | os.PathLike],
        repo_type: str = "model",
        *,
        revision: str = DEFAULT_BRANCH,
        commit_message: str = "Seed files",
        private: bool = False,
        tag: str | None = None,
        delete: Iterable[str] = (),
    ) -> str:
        """Commit ``files`` (path in repo -> bytes, text or local file) directly; returns the commit sha.

        Creates the repo (and ``revision`` as a branch from main) if needed.
        """
        repo = self.store.create_repo(repo_id, repo_type, private=private, exist_ok=True)
        if revision not in repo.branches and not revision.startswith("refs/"):
            self.store.create_branch(repo, revision)
        ops: list[Operation] = [("delete", p) for p in delete]
        for path, content in files.items():
            if isinstance(content, str):
                data = content.encode()
            elif isinstance(content, (bytes, bytearray, memoryview)):
                data = bytes(content)
            else:
                data = Path(content).read_bytes()
            entry = self.store.entry_for(path, data)
            ops.append(("add", path, entry))
            if entry.lfs:
                with self.store.lock:
                    repo.lfs_oids.add(entry.sha256)
        commit, _ = self.store.commit(repo, revision, ops, title=commit_message)
        if tag is not None:
            self.store.create_tag(repo, tag, commit.oid)
        return commit.oid

    def seed_repo(
        self,
        repo_id: str,
        local_dir: str | os.PathLike,
        repo_type: str = "model",
        *,
        path_in_repo: str = "",
        revision: str = DEFAULT_BRANCH,
        commit_message: str = "Seed repo from local folder",
        private: bool = False,
        tag: str | None = None,
    ) -> str:
        """Commit every file under ``local_dir`` (skipping ``.git``/``.cache``); returns the commit sha."""
        root = Path(local_dir)
        files: dict[str, Path] = {}
        for p in sorted(root.rglob("*")):
            rel = p.relative_to(root).as_posix()
            if p.is_file() and not any(part in (".git", ".cache") for part in p.relative_to(root).parts):
                files["/".join(filter(None, [path_in_repo.strip("/"), rel]))] = p
        return self.seed_files(repo_id, files, repo_type, revision=revision, commit_message=commit_message,
                               private=private, tag=tag)  # fmt: skip

    def set_gated(
        self, repo_id: str, repo_type: str = "model", gated: bool | str = "manual", granted_tokens: Iterable[str] = ()
    ) -> None:
        """Gate a repo: resolve requests get 401/403 with ``X-Error-Code: GatedRepo`` unless
        their token is in ``granted_tokens``. ``gated=False`` lifts the gate."""
        repo = self.store.get_repo(repo_id, repo_type)
        with self.store.lock:
            repo.gated = gated
            repo.granted_tokens = set(granted_tokens)

    def set_private(self, repo_id: str, repo_type: str = "model", private: bool = True) -> None:
        """A private repo answers RepoNotFound to requests without a token."""
        repo = self.store.get_repo(repo_id, repo_type)
        with self.store.lock:
            repo.private = private

    def create_tag(self, repo_id: str, tag: str, revision: str = DEFAULT_BRANCH, repo_type: str = "model") -> None:
        self.store.create_tag(self.store.get_repo(repo_id, repo_type), tag, revision)

    def head(self, repo_id: str, repo_type: str = "model", revision: str = DEFAULT_BRANCH) -> str:
        """The commit sha ``revision`` resolves to."""
        return self.store.resolve(self.store.get_repo(repo_id, repo_type), revision).oid

    def list_files(self, repo_id: str, repo_type: str = "model", revision: str = DEFAULT_BRANCH) -> list[str]:
        commit = self.store.resolve(self.store.get_repo(repo_id, repo_type), revision)
        return sorted(commit.files)

    def read_file(self, repo_id: str, path: str, repo_type: str = "model", revision: str = DEFAULT_BRANCH) -> bytes:
        """Content of ``path`` at ``revision`` (KeyError if absent)."""
        commit = self.store.resolve(self.store.get_repo(repo_id, repo_type), revision)
        return self.store.blob(commit.files[path].sha256)

    def commits(self, repo_id: str, repo_type: str = "model", revision: str = DEFAULT_BRANCH) -> list[Commit]:
        """First-parent history of ``revision``, newest first."""
        repo = self.store.get_repo(repo_id, repo_type)
        return self.store.history(repo, self.store.resolve(repo, revision))


if __name__ == "__main__":  # manual use: python tests/hub_server.py [PORT]
    with HubServer(port=int(sys.argv[1]) if len(sys.argv) > 1 else 0) as _server:
        print(f"HF_ENDPOINT={_server.url}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
