"""Check a dataset's data files against the checksums its card records, before anything is read.

Local directory: each file's SHA-256 and size against the card's
``qk_spectra_ds.models[].sha256``/``n_bytes``. Hub repo: the revision is
resolved to its commit first, and the Hub's own LFS SHA-256 of each data file
at that commit is compared with the card of that commit; the data is then
loaded at that same commit (never a branch that may have moved), with parquet
page checksums verified as ``datasets`` reads the downloaded files.

A mismatch is one :class:`~qk_spectra_ds.integrity.IntegrityError` line naming
the file and what to do; nothing is analysed. Files the card has no checksum
for (datasets built before checksums were recorded) load with one
:class:`UnverifiedFilesWarning` line.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Sequence
from pathlib import Path

import pyarrow.dataset as pds

from ..card_metadata import card_metadata
from ..dataset_repo import CARD_NAME, DATA_DIR, DatasetRepoError
from ..errors import FileChecksumError, IntegrityError, LoadError, one_line
from ..integrity import check_digests, file_digest, recorded_digests

LOCAL_REMEDY = "rebuild that model (qk-spectra-build --force) or copy the dataset again"
HUB_REMEDY = "the publisher must rebuild and republish that model; load another --revision meanwhile"


class UnverifiedFilesWarning(UserWarning):
    """Data files with no checksum in the card (written before checksums were recorded) were read unverified."""


def _card_models(text: str | None, where: str) -> list[dict]:
    try:
        return card_metadata(text, where=where)["models"]
    except DatasetRepoError as exc:
        raise LoadError(str(exc)) from None


def _warn_unverified(names: Sequence[str], dataset: str) -> None:
    if names:
        warnings.warn(
            f"{len(names)} data file(s) of {dataset!r} have no checksum in its card (first: {names[0]}; written before "
            "qk-spectra-ds recorded checksums, or after the card was last written), so they cannot be verified: "
            "rebuild them (or rerun the build to refresh the card) to have them checked",
            UnverifiedFilesWarning,
            stacklevel=4,
        )


def verify_local(root: Path, files: Sequence[Path]) -> None:
    """Refuse (one line) a local data file whose SHA-256 or size is not the card's record of it."""
    card = root / CARD_NAME
    text = card.read_text(encoding="utf-8") if card.is_file() else None
    recorded = recorded_digests(_card_models(text, f"{root.name}/{CARD_NAME}"))
    actual = {path.relative_to(root).as_posix(): file_digest(path) for path in files}
    try:
        unverified = check_digests(actual, recorded, LOCAL_REMEDY)
    except IntegrityError as exc:
        raise FileChecksumError(str(exc)) from None
    _warn_unverified(unverified, str(root))


def verify_hub(repo_id: str, family: str, revision: str | None) -> str:
    """Compare the Hub's LFS SHA-256 of the config's data files at ``revision`` with its card; return the commit."""
    from huggingface_hub import HfApi, hf_hub_download  # lazily, as reading.py: only Hub datasets need it
    from huggingface_hub.errors import EntryNotFoundError

    api = HfApi()
    commit = api.dataset_info(repo_id, revision=revision).sha
    try:
        text = Path(hf_hub_download(repo_id, CARD_NAME, repo_type="dataset", revision=commit)).read_text(
            encoding="utf-8"
        )
    except EntryNotFoundError:
        text = None
    recorded = recorded_digests(_card_models(text, f"{repo_id}@{commit[:12]}/{CARD_NAME}"))
    pattern = f"{DATA_DIR}/*/*.parquet" if family == "all" else f"{DATA_DIR}/{family}/*.parquet"
    actual, unverifiable = {}, []
    try:
        entries = list(
            api.list_repo_tree(repo_id, path_in_repo=DATA_DIR, repo_type="dataset", revision=commit, recursive=True)
        )
    except EntryNotFoundError:
        entries = []
    for entry in entries:
        path = getattr(entry, "path", "")
        if not fnmatch.fnmatchcase(path, pattern) or path.count("/") != pattern.count("/"):
            continue
        lfs = getattr(entry, "lfs", None)
        if lfs is None:  # a regular git file: the Hub reports no SHA-256 for it
            unverifiable.append(path)
        else:
            actual[path] = {"sha256": lfs.sha256, "n_bytes": lfs.size}
    try:
        unverified = check_digests(actual, recorded, HUB_REMEDY)
    except IntegrityError as exc:
        raise FileChecksumError(
            f"{repo_id}@{revision or 'main'} ({commit[:12]}): {one_line(exc, limit=None)}"
        ) from None
    _warn_unverified(sorted(unverified + unverifiable), f"{repo_id}@{revision or 'main'}")
    return commit


def page_checksum_options() -> dict:
    """``load_dataset`` keyword arguments that make pyarrow verify every parquet page's CRC32 as it reads."""
    return {"fragment_scan_options": pds.ParquetFragmentScanOptions(page_checksum_verification=True)}
