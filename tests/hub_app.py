"""The HTTP side of the test Hub server: a WSGI app speaking the Hub protocol over a :class:`RepoStore`.

The real, unmodified ``huggingface_hub`` and ``datasets`` clients talk to it. It serves what the
tests' clients ask for, no more (paths as the clients build them; ``{t}`` is ``models`` or
``datasets``, ``{p}`` the matching URL prefix ``""`` or ``datasets/``; a revision is one URL
segment, percent-encoded):

* ``POST /api/repos/create``, ``POST /api/validate-yaml``
* ``GET /api/{t}/{repo}[/revision/{rev}]`` (``model_info``/``dataset_info``; ``blobs``)
* ``GET /api/{t}/{repo}/tree/{rev}[/{path}]`` (``recursive``, ``expand``; one page)
* ``POST /api/{t}/{repo}/paths-info/{rev}`` (form body), ``GET /api/{t}/{repo}/refs``,
  ``GET /api/{t}/{repo}/commits/{rev}``
* ``POST /api/{t}/{repo}/preupload/{rev}``, ``POST /{p}{repo}.git/info/lfs/objects/batch`` (upload),
  ``PUT /_lfs/...`` (upload href), ``POST /_lfs/.../verify``, ``POST /api/{t}/{repo}/commit/{rev}``
  (NDJSON: ``header``, ``file``, ``lfsFile``, ``deletedFile``; a ``parentCommit`` that is not the
  branch head gets 412)
* ``POST /api/{t}/{repo}/branch/{name}``, ``POST /api/{t}/{repo}/tag/{rev}``,
  ``DELETE /api/{t}/{repo}/tag/{tag}`` (an existing tag gets 409)
* ``GET/HEAD /{p}{repo}/resolve/{rev}/{path}`` with ``Range`` (206 + ``Content-Range``, 416),
  ``X-Repo-Commit``, ``ETag``, ``X-Linked-Size``/``X-Linked-Etag`` for LFS files

Errors carry the ``X-Error-Code`` header the client maps to exceptions: ``RepoNotFound``,
``RevisionNotFound``, ``EntryNotFound``, ``GatedRepo``. Anything else answers 501, so that a
missing endpoint is obvious in the request log. The app also keeps the tests' instruments:
byte counters per file, the request log, injected faults and bad tokens.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import threading
import traceback
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, quote, unquote

from hub_store import URL_PREFIX, Commit, FileEntry, HubError, Operation, Repo, RepoStore, should_use_lfs

API_TYPES = {"models": "model", "datasets": "dataset"}  # URL segment -> repo type
CHUNK_SIZE = 64 * 1024
RANGE_RE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", re.IGNORECASE)


def truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class RequestRecord:
    """One line of the request log."""

    method: str
    path: str  # percent-decoded path, e.g. "/datasets/org/x/resolve/main/data/a.parquet"
    range: str | None
    status: int


@dataclass
class _Fault:
    remaining: int
    status: int
    method: str | None
    path_contains: str | None
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


RANGE_FAULT_MODES = ("shift", "total", "no-header", "whole", "short")


def _misserve(mode: str, headers: dict[str, str], blob: memoryview, byte_range: tuple[int, int]):
    """(status, body) of a wrong answer to a satisfiable range; edits ``headers`` to match.

    ``shift``: the same number of bytes one further on (one back at the end of the file),
    with a Content-Range that truthfully says so; ``total``: the right bytes, a wrong total;
    ``no-header``: the right bytes without Content-Range; ``whole``: a 200 with the whole file;
    ``short``: the right headers (Content-Length included), then only the first half of the body
    and a closed connection (a truncated response: :meth:`HubApp._resolve` cuts it).
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
    if mode == "short":
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
        return json_response({"error": f"Injected fault ({fault.status})"}, fault.status)

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
        record = RequestRecord(method=req.method, path=req.path, range=req.headers.get("range"), status=resp.status)
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
        if segs[:1] == ["datasets"] and len(segs) >= 4:
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
        if segs == ["validate-yaml"] and m == "POST":
            return self._validate_yaml(req)
        if segs == ["repos", "create"] and m == "POST":
            return self._create_repo(req)
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
        if route == "branch" and len(rest) == 2 and m == "POST":
            return self._branch(req, repo_type, repo_id, rest[1])
        if route == "tag" and len(rest) == 2 and m in ("POST", "DELETE"):
            return self._tag(req, repo_type, repo_id, rest[1])
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
            raise HubError(
                404, f"Entry not found: {path} is not a directory", "EntryNotFound", {"X-Repo-Commit": commit.oid}
            )
        prefix = path + "/" if path else ""
        depth = prefix.count("/")

        def wanted(p: str) -> bool:
            return p.startswith(prefix) and (recursive or p.count("/") == depth)

        # the Hub lists "tree first": directories, then files; all on one page (no Link header)
        paths = sorted(d for d in dir_oids if wanted(d)) + sorted(p for p in commit.files if wanted(p))
        return json_response([self._entry_json(repo, commit, p, dir_oids, expand) for p in paths])

    def _paths_info(self, req: Request, repo_type: str, repo_id: str, revision: str) -> Response:
        repo = self._readable_repo(req, repo_type, repo_id)
        commit = self.store.resolve(repo, revision)
        form = parse_qs(req.body.decode(), keep_blank_values=True)  # the client posts a form
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
                {"name": b, "ref": f"refs/heads/{b}", "targetCommit": oid} for b, oid in sorted(repo.branches.items())
            ]
            tags = [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": oid} for t, oid in sorted(repo.tags.items())]
        return json_response({"branches": branches, "converts": [], "tags": tags})

    def _commits(self, req: Request, repo_type: str, repo_id: str, revision: str) -> Response:
        repo = self._readable_repo(req, repo_type, repo_id)
        commit = self.store.resolve(repo, revision)
        return json_response(
            [
                {
                    "id": c.oid,
                    "title": c.title,
                    "message": c.message,
                    "authors": [{"user": c.author, "avatar": None}],
                    "date": c.date,
                }
                for c in self.store.history(repo, commit)
            ]
        )

    def _resolve(self, req: Request, repo_type: str, repo_id: str, revision: str, path: str) -> Response:
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
                status, data = _misserve(
                    req.range_fault, headers, memoryview(self.store.blob(entry.sha256)), byte_range
                )
        headers["Content-Length"] = str(len(data))
        if req.range_fault == "short":  # announce every byte, send half: the client sees the connection close early
            data = data[: len(data) // 2]
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
            if (
                oid not in repo.lfs_oids or oid not in self.store.blobs
            ):  # present objects: no actions, the client skips them
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
        """PUT ``/_lfs/{type}/{org}/{name}/{oid}`` (upload), POST ``.../{oid}/verify``."""
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
                    raise HubError(
                        400,
                        f"Your push was rejected because an LFS pointer pointed to a file that "
                        f"does not exist: {value['path']} ({oid})",
                    )
                if value.get("size") is not None and int(value["size"]) != len(blob):
                    raise HubError(400, f"LFS object {oid} has size {len(blob)}, not {value['size']}")
                with self.store.lock:
                    repo.lfs_oids.add(oid)
                ops.append(("add", value["path"], FileEntry.for_content(oid, len(blob), lfs=True)))
            elif key == "deletedFile":
                ops.append(("delete", value["path"]))
            else:
                raise HubError(400, f"Unknown commit operation key {key!r}")
        title = header.get("summary") or ""
        if not title:
            raise HubError(400, "Commit summary (commit_message) cannot be empty")
        commit = self.store.commit(
            repo,
            revision,
            ops,
            title=title,
            message=header.get("description") or "",
            parent_commit=header.get("parentCommit"),
        )
        commit_url = f"{self._repo_url(req, repo)}/commit/{commit.oid}"
        return json_response({"success": True, "commitOid": commit.oid, "commitUrl": commit_url, "hookOutput": ""})

    def _branch(self, req: Request, repo_type: str, repo_id: str, branch: str) -> Response:
        repo = self._writable_repo(req, repo_type, repo_id)
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
