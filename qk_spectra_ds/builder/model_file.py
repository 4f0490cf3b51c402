"""A model's file in the dataset folder, before and after its build: whose rows it holds, and the old-named file it replaces."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from .. import dataset_repo, schema
from ..errors import BuildError
from ..naming import legacy_slug

log = logging.getLogger(__name__)


def existing_rows(out_dir: str | Path, family: str, model_id: str, force: bool) -> dict[str, Any] | None:
    """What the model's file holds now (None: no file), after refusing to replace rows the build must not replace.

    :func:`.dataset_repo.check_replace` refuses rows of another kind (legacy imports) without
    ``force``; a file holding another model's rows (ids that differ only in case, on a
    case-insensitive file system) is refused always.
    """
    dataset_repo.check_replace(out_dir, family, model_id, schema.VARIANT_RAW, force=force)
    previous = dataset_repo.existing_build(out_dir, family, model_id)
    if previous is not None and previous.get("model_id") not in (None, model_id):
        raise BuildError(  # never overwrite another model's rows (names that differ only in case, on such a file system)
            f"{dataset_repo.model_path(out_dir, family, model_id)} holds the rows of {previous['model_id']!r}, "
            f"not {model_id!r}: the two ids name one file here; build one of them into another family"
        )
    return previous


def remove_legacy_file(model_id: str, written: Path) -> None:
    """Remove the file an older builder wrote for ``model_id`` under its old, non-injective name, now replaced.

    Only ids whose name changed (not Hub-style) have one, and only a file holding exactly this
    model id is removed: another model's file of that name is left alone.
    """
    old = written.with_name(f"{legacy_slug(model_id)}.parquet")
    try:
        if old == written or not old.is_file():  # a name too long for the file system was never written
            return
        held = set(pq.read_table(old, columns=["model_id"]).column(0).to_pylist())
    except Exception:  # noqa: BLE001 - unreadable or unnameable: not known to be this model's, so kept
        return
    if held == {model_id}:
        old.unlink()
        log.warning(
            "%s: removed %s, its file under the name older versions gave it (now %s)", model_id, old.name, written.name
        )
