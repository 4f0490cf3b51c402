"""Import the original study's pickles into a dataset directory (``analyze.py import_legacy``).

Each pickle is read by :mod:`.legacy_pickle` (a bounded, restricted unpickler)
and checked and converted into rows by :mod:`.legacy_format`; this module
checks every target and writes the family's parquet files and the card, all
or nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import card_metadata, dataset_card, dataset_repo, schema
from ..errors import LegacyFormatError, UnsafePickleError  # noqa: F401 (UnsafePickleError: old import paths keep working)
from ..progress import progress_bar
from .legacy_format import legacy_columns, read_legacy


def legacy_files(pickles: str | os.PathLike) -> list[Path]:
    """The ``*.pkl`` files of a directory (sorted), or the single file given."""
    path = Path(os.path.expanduser(os.fspath(pickles)))
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise LegacyFormatError(f"no pickle directory or file {os.fspath(pickles)!r}")
    files = sorted(path.glob("*.pkl"))
    if not files:
        raise LegacyFormatError(f"no *.pkl files in {os.fspath(pickles)!r}")
    return files


def import_legacy(
    pickles_dir: str | os.PathLike,
    family: str,
    out_dir: str | os.PathLike,
    progress: bool = False,
    force: bool = False,
    pool_legacy: bool = False,
) -> list[Path]:
    """Convert every legacy pickle in ``pickles_dir`` into ``out_dir/data/<family>/<model>.parquet``.

    Every pickle is read and checked, and every target checked, before anything
    is written, so a refused or malformed file leaves ``out_dir`` untouched. A
    model the family already holds as built spectra is replaced only with
    ``force``; a family holding other built models takes legacy ones only with
    ``pool_legacy`` (their spectra carry the original study's pairing error).
    The card (README.md) is regenerated afterwards. Returns the written parquet paths.
    """
    family = str(family)
    if not family or "/" in family or family.startswith("."):
        raise LegacyFormatError(f"invalid family (config) name {family!r}")
    dataset_repo.check_family(family)
    files = legacy_files(pickles_dir)
    tables = []
    targets: dict[Path, Path] = {}
    for path in files:
        target = dataset_repo.model_path(out_dir, family, path.stem)
        if target in targets:
            raise LegacyFormatError(f"{targets[target].name} and {path.name} would both be written to {target}")
        targets[target] = path
        tables.append((path.stem, legacy_columns(read_legacy(path), path.stem, family)))
    card_metadata.read_card_versions(out_dir)  # a card that does not parse is refused before anything is written
    for model_id, _ in tables:
        dataset_repo.check_replace(out_dir, family, model_id, schema.VARIANT_LEGACY, force=force)
    if not pool_legacy:
        built = dataset_repo.built_models(out_dir, family, exclude=list(targets))
        if built:
            raise LegacyFormatError(
                f"family {family!r} in {os.fspath(out_dir)} holds spectra built from weights ({', '.join(built[:5])}"
                f"{', ...' if len(built) > 5 else ''}): importing the original study's legacy spectra (with its "
                "pairing error) would pool them in one config; import into another family, or pass --pool_legacy"
            )
    written = []
    iterator = tables
    if progress:
        iterator = progress_bar(tables, desc="import_legacy", unit="model")
    for model_id, columns in iterator:
        written.append(dataset_repo.write_model_table(out_dir, family, model_id, columns))
    try:
        dataset_card.write_card(out_dir)
    except OSError as exc:
        raise LegacyFormatError(
            f"the {len(written)} table(s) are in place, but the card {Path(out_dir) / dataset_repo.CARD_NAME} could "
            f"not be written ({exc.strerror or exc}): rerun the import to regenerate it"
        ) from None
    return written
