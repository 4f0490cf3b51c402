"""A Hugging Face Hub-protocol server for tests, built on the Python standard library only.

The real, unmodified ``huggingface_hub`` and ``datasets`` clients talk to it when ``HF_ENDPOINT``
points at :attr:`HubServer.url` (set it, with ``HF_HUB_DISABLE_XET=1``, before importing them;
``tests/conftest.py`` does). Three modules, one job each:

* :mod:`hub_store`: the repositories (immutable snapshot commits, branches, tags, blobs);
* :mod:`hub_app`: the WSGI app that speaks the Hub protocol over the store (its docstring lists
  the endpoints), with the request log, byte counters and fault injection;
* this module: the server thread and :class:`HubServer`, the tests' handle on all of it
  (seeding repos without HTTP, counters, faults, bad tokens, gated repos).
"""

from __future__ import annotations

import io
import os
import socketserver
import sys
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from hub_app import RANGE_FAULT_MODES, HubApp, RequestRecord, _Fault
from hub_store import DEFAULT_BRANCH, Operation, RepoStore

__all__ = ["HubServer"]


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

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.host, self.port = host, port
        self.store = RepoStore()
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

    def requests(
        self, method: str | None = None, path_contains: str | None = None, status: int | None = None
    ) -> list[RequestRecord]:
        """The requests since the last :meth:`reset_counters`, in arrival order, filtered."""
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
    ) -> None:
        """Make the next ``n`` matching requests fail with ``status`` (e.g. 500, 429, 503).

        ``method``/``path_contains`` restrict which requests count.
        """
        self.app.add_fault(_Fault(n, status, method, path_contains))

    def misserve_ranges(
        self, n: int = 1, mode: str = "shift", *, path_contains: str | None = None, once_per_range: bool = False
    ) -> None:
        """Answer the next ``n`` ranged GETs (of paths containing ``path_contains``) wrongly.

        ``mode`` (see ``_misserve``): ``shift`` (other bytes of the same length, with their true
        Content-Range), ``total`` (wrong total size), ``no-header`` (206 without Content-Range),
        ``whole`` (200 with the whole file), ``short`` (a truncated body). With ``once_per_range`` only the first request of
        each distinct range counts (a flaky proxy): a client that retries then gets the right bytes.
        Requests without a Range header are never affected.
        """
        if mode not in RANGE_FAULT_MODES:
            raise ValueError(f"unknown range fault {mode!r}; known: {', '.join(RANGE_FAULT_MODES)}")
        self.app.add_fault(_Fault(n, 206, "GET", path_contains, mode, once_per_range))

    def clear_faults(self) -> None:
        self.app.clear_faults()

    # -- direct repo manipulation (no HTTP) ----------------------------------------------

    def seed_files(
        self,
        repo_id: str,
        files: Mapping[str, bytes | str | os.PathLike],
        repo_type: str = "model",
        *,
        tag: str | None = None,
    ) -> str:
        """Commit ``files`` (path in repo -> bytes, text or local file) to main directly; returns the commit sha.

        Creates the repo if needed; ``tag`` tags the new commit.
        """
        repo = self.store.create_repo(repo_id, repo_type, exist_ok=True)
        ops: list[Operation] = []
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
        commit = self.store.commit(repo, DEFAULT_BRANCH, ops, title="Seed files")
        if tag is not None:
            self.store.create_tag(repo, tag, commit.oid)
        return commit.oid

    def seed_repo(self, repo_id: str, local_dir: str | os.PathLike, repo_type: str = "model") -> str:
        """Commit every file under ``local_dir`` (skipping ``.git``/``.cache``); returns the commit sha."""
        root = Path(local_dir)
        files = {
            p.relative_to(root).as_posix(): p
            for p in sorted(root.rglob("*"))
            if p.is_file() and not any(part in (".git", ".cache") for part in p.relative_to(root).parts)
        }
        return self.seed_files(repo_id, files, repo_type)

    def set_gated(
        self, repo_id: str, repo_type: str = "model", gated: bool | str = "manual", granted_tokens: Iterable[str] = ()
    ) -> None:
        """Gate a repo: resolve requests get 401/403 with ``X-Error-Code: GatedRepo`` unless
        their token is in ``granted_tokens``. ``gated=False`` lifts the gate."""
        repo = self.store.get_repo(repo_id, repo_type)
        with self.store.lock:
            repo.gated = gated
            repo.granted_tokens = set(granted_tokens)

    def head(self, repo_id: str, repo_type: str = "model", revision: str = DEFAULT_BRANCH) -> str:
        """The commit sha ``revision`` resolves to."""
        return self.store.resolve(self.store.get_repo(repo_id, repo_type), revision).oid

    def list_files(self, repo_id: str, repo_type: str = "model", revision: str = DEFAULT_BRANCH) -> list[str]:
        commit = self.store.resolve(self.store.get_repo(repo_id, repo_type), revision)
        return sorted(commit.files)


if __name__ == "__main__":  # manual use: python tests/hub_server.py [PORT]
    with HubServer(port=int(sys.argv[1]) if len(sys.argv) > 1 else 0) as _server:
        print(f"HF_ENDPOINT={_server.url}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
