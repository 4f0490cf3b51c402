"""The card's YAML header read back: its configs, the version history and the models block with checksums.

The card records every model's summary (with the SHA-256 and size of its file)
and the version history, so that it can be regenerated, merged with another
builder's card, or checked against the files, without downloading any parquet
file. :mod:`qk_spectra_ds.dataset_card` writes what this module reads.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard

from . import __version__
from .dataset_repo import CARD_NAME, repo_relative, written_digest
from .errors import CardError
from .integrity import digest_mismatch, file_digest, recorded_digests


def card_yaml(text: str, where: str = CARD_NAME) -> dict[str, Any]:
    """The card's YAML header as plain data; one line (:class:`CardError`) if it does not parse.

    Parsed with ``yaml.safe_load`` (through ``huggingface_hub``): a tag such as
    ``!!python/object/apply`` is refused, never executed.
    """
    try:
        return DatasetCard(text).data.to_dict()
    except Exception as exc:  # yaml.YAMLError (syntax, !!python tags), ValueError (not a mapping)
        detail = " ".join(str(exc).split())
        hint = "a !!python tag (never executed)" if "python/" in detail else detail[:160]
        raise CardError(
            f"the card {where} has a YAML header that does not parse as plain data ({hint}): fix it, or delete it to "
            "have it regenerated from the data files (its version history would be lost)"
        ) from None


def card_configs(text: str, where: str = CARD_NAME) -> set[str]:
    """The config names a card declares."""
    configs = card_yaml(text, where).get("configs") or []
    return {str(c.get("config_name")) for c in configs if isinstance(c, dict)} if isinstance(configs, list) else set()


def card_metadata(text: str | None, where: str = CARD_NAME) -> dict[str, list[dict[str, Any]]]:
    """The ``qk_spectra_ds`` block of a card: ``versions`` (history) and ``models`` (summaries).

    The card records both so that it can be regenerated, or merged with another
    builder's card, without downloading any parquet file.
    """
    if not text:
        return {"versions": [], "models": []}
    block = card_yaml(text, where).get("qk_spectra_ds") or {}
    if not isinstance(block, dict):
        raise CardError(f"the card {where} has a qk_spectra_ds block that is not a mapping: fix or delete the card")
    lists = {key: block.get(key) or [] for key in ("versions", "models")}
    for key, value in lists.items():
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise CardError(
                f"the card {where} has a qk_spectra_ds.{key} that is not a list of mappings: fix or delete the card"
            )
    return {key: list(value) for key, value in lists.items()}


def read_card_versions(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The version history recorded in the card in ``out_dir`` (empty if none)."""
    card_path = Path(out_dir) / CARD_NAME
    text = card_path.read_text(encoding="utf-8") if card_path.exists() else None
    return card_metadata(text, where=str(card_path))["versions"]


def read_card_models(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The model entries recorded in the card in ``out_dir`` (with their ``sha256`` and ``n_bytes``; empty if none)."""
    card_path = Path(out_dir) / CARD_NAME
    text = card_path.read_text(encoding="utf-8") if card_path.exists() else None
    return card_metadata(text, where=str(card_path))["models"]


def with_digests(
    out_dir: str | os.PathLike,
    summaries: Sequence[Mapping[str, Any]],
    recorded: Sequence[Mapping[str, Any]],
    rerecord: bool = False,
) -> list[dict[str, Any]]:
    """``summaries`` with the ``sha256`` and ``n_bytes`` the card records for each file.

    A file this process wrote, or one the card has no checksum for yet, is recorded
    as it is. A file whose bytes differ from the card's record and that this process
    did not write keeps the recorded checksum: the card holds what was written, so
    a file corrupted or edited since is refused on load instead of being blessed.
    ``rerecord``: record every file as it is now (after a deliberate edit).
    """
    previous = recorded_digests(recorded)
    out = []
    for summary in summaries:
        path = Path(out_dir) / summary["path"]
        actual = file_digest(path)
        old = previous.get(summary["path"])
        keep = not rerecord and old is not None and old["sha256"] != actual["sha256"] and written_digest(path) != actual
        out.append({**summary, **(old if keep else actual)})
    return out


def local_digest_problem(out_dir: str | os.PathLike, files: Sequence[str | os.PathLike]) -> str | None:
    """One line naming the first of ``files`` whose SHA-256 or size differs from the card's record, else None."""
    recorded = recorded_digests(read_card_models(out_dir))
    for path in files:
        name = repo_relative(path)
        if name in recorded:
            problem = digest_mismatch(name, file_digest(path), recorded[name], "rebuild that model (--force)")
            if problem:
                return problem
    return None


def merge_summaries(*groups: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Model summaries keyed by their path in the repo; later groups win. Sorted by path."""
    merged: dict[str, dict[str, Any]] = {}
    for group in groups:
        for summary in group:
            merged[summary["path"]] = dict(summary)
    return [merged[path] for path in sorted(merged)]


def add_version(versions: Sequence[Mapping[str, Any]], version: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Append a version entry (with today's date and the builder version), replacing a same-named one."""
    entry = {"date": _dt.date.today().isoformat(), "builder_version": __version__, **version}
    return [dict(v) for v in versions if v.get("version") != entry["version"]] + [entry]
