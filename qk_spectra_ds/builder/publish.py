"""Publishing a dataset directory to the Hub as a tagged version.

One commit carries the parquet files that differ from the remote branch and
the regenerated card; a git tag names the version. The card is merged with the
remote one (its model summaries and version history live in the card's YAML),
so builders on different machines can push different models of a family to
the same repo: each commit names its parent, and a builder that loses the race
(HTTP 412) re-reads the remote state and tries again on top of the winner.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, constants
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError
from huggingface_hub.utils import httpx  # huggingface_hub's public export of its HTTP client (no transport import)

from .. import card_metadata, dataset_card, dataset_repo
from ..errors import HubAccessError, PublishError, one_line
from ..hub_access import check_repo_id

log = logging.getLogger(__name__)

VERSION_PATTERN = re.compile(r"^v\d+\.\d+\.\d+$")


@dataclass
class PublishResult:
    repo_id: str
    commit: str | None  # the new commit, or None when nothing changed
    version: str | None
    uploaded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    attempts: int = 1

    def summary(self) -> str:
        what = f"{len(self.uploaded)} file(s) uploaded, {len(self.unchanged)} unchanged"
        if self.commit is None:
            head = "nothing changed (no commit)"
        else:
            head = f"commit {self.commit[:12]}"
        tag = f", tagged {self.version}" if self.version else ""
        return f"published {self.repo_id}: {head}{tag}; {what}"


def publish(
    out_dir: str | Path,
    repo_id: str,
    *,
    version: str | None = None,
    private: bool = False,
    branch: str | None = None,
    force: bool = False,
    message: str | None = None,
    token: str | None = None,
    max_attempts: int = 8,
) -> PublishResult:
    """Push ``out_dir`` (data/ and a merged card) to the dataset repo ``repo_id``, then tag ``version``.

    Every failure is a one-line ``PublishError``: HTTP errors name their status,
    and a Hub that cannot be reached at all (no network, a wrong HF_ENDPOINT)
    says so instead of a transport traceback.
    """
    check_target(repo_id, version)
    out_dir = Path(out_dir)
    local_files = dataset_repo.model_files(out_dir)
    if not local_files:
        raise PublishError(f"{out_dir} has no data/<family>/*.parquet to publish: build a family first")
    problem = card_metadata.local_digest_problem(
        out_dir, local_files
    )  # never publish a file the card does not vouch for
    if problem:
        raise PublishError(f"{problem}; nothing was published")
    try:
        return _publish(
            out_dir, local_files, repo_id, version, private, branch or "main", force, message, token, max_attempts
        )
    except _network_errors() as exc:
        raise PublishError(
            f"cannot reach the Hub at {constants.ENDPOINT} to publish {repo_id} ({type(exc).__name__}: "
            f"{one_line(exc, first_line=True)}): check the network or HF_ENDPOINT; {out_dir} is unchanged, rerun to publish it"
        ) from None


def check_target(repo_id: str, version: str | None = None) -> None:
    """Refuse a repo id or a version the Hub would refuse, before any work (a build can take hours)."""
    try:
        check_repo_id(repo_id, "--push-to-hub")  # ORG/NAME exactly: a bare NAME would land in the token's namespace
    except HubAccessError as exc:
        raise PublishError(str(exc)) from None
    if version is not None and not VERSION_PATTERN.match(version):
        raise PublishError(f"version {version!r} is not of the form vMAJOR.MINOR.PATCH (e.g. v0.1.0)")


def _network_errors() -> tuple[type[BaseException], ...]:
    """The exceptions of a request that never got an HTTP answer (refused, DNS, timeout, offline mode)."""
    return ConnectionError, TimeoutError, httpx.TransportError


def _publish(out_dir, local_files, repo_id, version, private, branch, force, message, token, max_attempts):
    """``publish`` once its arguments are checked: every Hub call, HTTP errors as PublishError."""
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        if branch != "main":
            api.create_branch(repo_id, repo_type="dataset", branch=branch, exist_ok=True)
    except HfHubHTTPError as exc:
        raise PublishError(_http_message(repo_id, exc)) from None

    local = {_repo_path(out_dir, p): p for p in local_files}
    local_sha = {path: _sha256(file) for path, file in local.items()}
    if version is not None and not force:
        try:
            if _tag_exists(api, repo_id, version):
                if _tag_holds(api, repo_id, version, branch, local_sha):
                    return PublishResult(repo_id, None, version, [], sorted(local))  # same content: no-op
                raise PublishError(
                    f"{repo_id} already has tag {version}: publish a new version, or pass --force to move the tag"
                )
        except HfHubHTTPError as exc:
            raise PublishError(_http_message(repo_id, exc)) from None
    local_summaries = card_metadata.with_digests(
        out_dir, [dataset_repo.read_summary(p) for p in local_files], card_metadata.read_card_models(out_dir)
    )

    for attempt in range(1, max_attempts + 1):
        try:
            result = _commit_once(api, repo_id, branch, out_dir, local, local_sha, local_summaries, version, message)
        except HfHubHTTPError as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if status in (409, 412) and attempt < max_attempts:  # another builder committed first
                wait = min(0.2 * 2**attempt, 5.0) * (0.5 + random.random())
                log.info("commit race on %s (HTTP %s), retrying in %.1fs", repo_id, status, wait)
                time.sleep(wait)
                continue
            raise PublishError(_http_message(repo_id, exc)) from None
        result.attempts = attempt
        break
    else:  # pragma: no cover - loop always breaks or raises
        raise PublishError(f"{repo_id}: gave up after {max_attempts} commit conflicts")

    if version is not None:
        try:
            if force:
                _delete_tag_if_present(api, repo_id, version)
            target = result.commit or api.dataset_info(repo_id, revision=branch).sha
            api.create_tag(
                repo_id,
                tag=version,
                revision=target,
                repo_type="dataset",
                tag_message=f"qk-spectra-ds dataset {version}",
            )
        except HfHubHTTPError as exc:
            raise PublishError(_http_message(repo_id, exc)) from None
    return result


def _commit_once(api, repo_id, branch, out_dir, local, local_sha, local_summaries, version, message) -> PublishResult:
    head = api.dataset_info(repo_id, revision=branch).sha
    remote_sha = _remote_lfs_sha(api, repo_id, head)
    try:
        remote_card = Path(
            api.hf_hub_download(repo_id, dataset_repo.CARD_NAME, repo_type="dataset", revision=head)
        ).read_text(encoding="utf-8")
    except EntryNotFoundError:
        remote_card = None
    remote_meta = card_metadata.card_metadata(remote_card)

    changed = sorted(p for p in local if remote_sha.get(p) != local_sha[p])
    unchanged = sorted(set(local) - set(changed))
    summaries = card_metadata.merge_summaries(remote_meta["models"], local_summaries)
    versions = remote_meta["versions"]
    if version is not None and not any(v.get("version") == version for v in versions):
        versions = card_metadata.add_version(
            versions, {"version": version, "changes": message or _describe(changed, remote_sha)}
        )
    card = dataset_card.render_card(summaries, versions, repo_id=repo_id)

    operations = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(local[p])) for p in changed]
    if card != remote_card:
        operations.append(CommitOperationAdd(path_in_repo=dataset_repo.CARD_NAME, path_or_fileobj=card.encode("utf-8")))
    if not operations:
        return PublishResult(repo_id, None, version, [], unchanged)
    info = api.create_commit(
        repo_id,
        operations,
        commit_message=message
        or f"qk-spectra-ds: {_describe(changed, remote_sha)}" + (f" ({version})" if version else ""),
        repo_type="dataset",
        revision=branch,
        parent_commit=head,
    )
    uploaded = changed + ([dataset_repo.CARD_NAME] if card != remote_card else [])
    return PublishResult(repo_id, info.oid, version, uploaded, unchanged)


def _tag_exists(api, repo_id: str, version: str) -> bool:
    return version in {ref.name for ref in api.list_repo_refs(repo_id, repo_type="dataset").tags}


def _tag_holds(api, repo_id: str, version: str, branch: str, local_sha: dict[str, str]) -> bool:
    """True if the tag is the branch head and every local parquet file is there unchanged."""
    tagged = api.dataset_info(repo_id, revision=version).sha
    if tagged != api.dataset_info(repo_id, revision=branch).sha:
        return False
    remote = _remote_lfs_sha(api, repo_id, tagged)
    return all(remote.get(path) == sha for path, sha in local_sha.items())


def _remote_lfs_sha(api, repo_id: str, revision: str) -> dict[str, str]:
    """path -> sha256 of every LFS file (the parquet files) at ``revision``."""
    shas = {}
    for entry in api.list_repo_tree(repo_id, repo_type="dataset", revision=revision, recursive=True):
        lfs = getattr(entry, "lfs", None)
        if lfs is not None:
            shas[entry.path] = lfs.sha256
    return shas


def _delete_tag_if_present(api, repo_id: str, version: str) -> None:
    if _tag_exists(api, repo_id, version):
        api.delete_tag(repo_id, tag=version, repo_type="dataset")


def _describe(changed: list[str], remote_sha: dict[str, str]) -> str:
    added = [Path(p).stem for p in changed if p not in remote_sha]
    updated = [Path(p).stem for p in changed if p in remote_sha]
    parts = []
    if added:
        parts.append("added " + ", ".join(added))
    if updated:
        parts.append("updated " + ", ".join(updated))
    return "; ".join(parts) or "card only"


def _repo_path(out_dir: Path, file: Path) -> str:
    return file.relative_to(out_dir).as_posix()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _http_message(repo_id: str, exc: Exception) -> str:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if status == 401:
        return f"the Hub rejected the token for {repo_id} (HTTP 401): log in with `hf auth login` or set HF_TOKEN"
    if status == 403:
        return f"no write access to {repo_id} (HTTP 403): check the token's permissions and the organization"
    return f"publishing {repo_id} failed (HTTP {status}): {one_line(exc, first_line=True)}"
