"""The repositories of the test Hub server: commits as immutable snapshots, refs, a blob store.

Each commit is a full snapshot of its tree (path -> :class:`FileEntry`); file contents live in
one content-addressed blob store keyed by sha256. All state is in memory, behind one lock.
No HTTP here: :mod:`hub_app` serves this store, :mod:`hub_server` runs it for the tests.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

URL_PREFIX = {"model": "", "dataset": "datasets/"}  # repo type -> its URL prefix
DEFAULT_USER = "test-user"
DEFAULT_BRANCH = "main"

# Files matching these globs (on the file name) are stored with LFS, like the Hub's default
# .gitattributes. Binary content (a NUL byte in the first 512 bytes) and big files are LFS too.
LFS_GLOBS = (
    "*.7z",
    "*.arrow",
    "*.bin",
    "*.bz2",
    "*.ckpt",
    "*.ftz",
    "*.gz",
    "*.h5",
    "*.joblib",
    "*.lz4",
    "*.mlmodel",
    "*.model",
    "*.msgpack",
    "*.npy",
    "*.npz",
    "*.onnx",
    "*.ot",
    "*.parquet",
    "*.pb",
    "*.pickle",
    "*.pkl",
    "*.pt",
    "*.pth",
    "*.rar",
    "*.safetensors",
    "*.tar",
    "*.tflite",
    "*.tgz",
    "*.wasm",
    "*.xz",
    "*.zip",
    "*.zst",
    "*tfevents*",
)
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"{g} filter=lfs diff=lfs merge=lfs -text\n" for g in LFS_GLOBS).encode()
HEX40 = re.compile(r"[0-9a-f]{40}")
HEX_PREFIX = re.compile(r"[0-9a-f]{7,39}")


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
    return any(fnmatch.fnmatch(name, g) for g in LFS_GLOBS) or size > LFS_SIZE_THRESHOLD or b"\0" in sample[:512]


def validate_path(path: str) -> str:
    """Reject paths a git tree could not hold (absolute, empty segments, ``..``)."""
    if not path or path.startswith("/") or any(seg in ("", ".", "..") for seg in path.split("/")):
        raise HubError(400, f"Invalid path in repo: {path!r}")
    return path


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
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit oid
    tags: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    lfs_oids: set[str] = field(default_factory=set)  # LFS objects uploaded to this repo

    @property
    def key(self) -> tuple[str, str]:
        return (self.repo_type, self.repo_id)


# An operation of RepoStore.commit: ("add", path, FileEntry) | ("delete", path)
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
            elif revision in repo.branches:
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
    ) -> Commit:
        """Apply ``operations`` on top of the branch head; returns the new commit."""
        with self.lock:
            branch = self.branch_name(repo, revision)
            head = repo.branches[branch]
            if parent_commit is not None and not head.startswith(parent_commit.lower()):
                raise HubError(
                    412,
                    f"A commit has happened since. Please refresh and try again."
                    f" (parent commit {parent_commit} is not the head {head} of {branch})",
                )
            files = dict(repo.commits[head].files)
            for op in operations:
                kind, path = op[0], op[1]
                if kind == "add":
                    files[validate_path(path)] = op[2]
                elif kind == "delete":
                    if files.pop(path, None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                else:
                    raise HubError(400, f"Unknown operation {kind!r}")
            new = self._new_commit(repo, (head,), files, title, message, author)
            repo.branches[branch] = new.oid
            return new

    def create_branch(self, repo: Repo, branch: str, starting_point: str | None = None) -> None:
        with self.lock:
            if branch in repo.branches:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            repo.branches[branch] = self.resolve(repo, starting_point).oid

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
