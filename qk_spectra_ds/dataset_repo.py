"""The dataset repository on disk: one parquet file per model (the card: :mod:`qk_spectra_ds.dataset_card`).

Layout (identical on disk and on the Hub)::

    README.md                           card, rendered from dataset_card.md
    data/<family>/<model-slug>.parquet  one file per model

Every file is written to a temporary name beside its target and moved into
place with ``os.replace``, so a reader (or an interrupted build) never sees a
half-written file. The card is derived from the parquet files present, plus
the version history it already records, so it can always be regenerated.

Built spectra and the original study's imported legacy spectra (variant
``legacy``, computed with its factor pairing error) never replace each other
silently: :func:`check_replace` refuses it without ``force``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import schema
from .atomic import atomic_path
from .errors import CardError, CatalogError, DatasetRepoError  # noqa: F401 (CardError: old import paths keep working)
from .integrity import file_digest
from .naming import model_slug  # File-name stem of a model id, injective: Qwen/Qwen3-0.6B -> Qwen--Qwen3-0.6B

CARD_NAME = "README.md"
DATA_DIR = "data"
SUMMARY_COLUMNS = (
    "model_id",
    "model_revision",
    "family",
    "model_type",
    "variant",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "d_model",
    "d_head",
    "weights_dtype",
    "builder_version",
    "schema_version",
)
_BAD_FAMILY_CHARS = "<>:/\\|?*[]"  # datasets refuses <>:/\|?* in config names; [] would be a glob


def check_family(family: str) -> str:
    """``family`` if it can be a config name and one folder under data/, else a one-line CatalogError."""
    if not family or family.startswith(".") or not family.isprintable() or any(c in _BAD_FAMILY_CHARS for c in family):
        raise CatalogError(
            f"family {family!r} cannot name a dataset config: use a name without {_BAD_FAMILY_CHARS} "
            "that does not start with '.' (e.g. Qwen3)"
        )
    if family == "all":
        raise CatalogError("family 'all' is reserved for the dataset config of every family: pick another name")
    return family


def model_path(out_dir: str | os.PathLike, family: str, model_id: str) -> Path:
    """Where the parquet file of ``model_id`` in config ``family`` lives."""
    return Path(out_dir) / DATA_DIR / check_family(family) / f"{model_slug(model_id)}.parquet"


def write_model_table(
    out_dir: str | os.PathLike, family: str, model_id: str, columns: Mapping[str, Sequence[Any]]
) -> Path:
    """Write one model's rows (column name -> values) as parquet of the current schema, atomically.

    Written with pyarrow directly (no ``datasets`` import): the explicit Arrow schema of
    :func:`parquet_schema` with the ``huggingface`` features metadata ``datasets`` writes, and
    page checksums (CRC32 of every data page, verified by the loader). The file's SHA-256 and
    size are remembered for the card (:func:`qk_spectra_ds.dataset_card.write_card` records them).
    """
    missing = [c for c in schema.COLUMNS if c not in columns]
    if missing:
        raise schema.SchemaError(f"rows for {model_id} lack column(s) {', '.join(missing)}")
    arrow = parquet_schema()
    arrow = arrow.with_metadata({b"huggingface": json.dumps({"info": {"features": features_dict()}}).encode()})
    table = pa.Table.from_arrays([_arrow_column(columns[f.name], f.type) for f in arrow], schema=arrow)
    target = model_path(out_dir, family, model_id)
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp, write_page_checksum=True)
        digest = file_digest(tmp)
    _WRITTEN[str(target.resolve())] = digest
    return target


_WRITTEN: dict[str, dict[str, Any]] = {}
"""SHA-256 and size of every model file this process wrote (resolved path -> digest), for the card."""


def written_digest(path: str | os.PathLike) -> dict[str, Any] | None:
    """The SHA-256 and size this process wrote ``path`` with (None if it did not write it)."""
    return _WRITTEN.get(str(Path(path).resolve()))


def _arrow_type(kind: str):
    if kind.startswith("list<"):
        return pa.list_(_arrow_type(kind[len("list<") : -1]))
    return {
        "float32": pa.float32(),
        "float64": pa.float64(),
        "int32": pa.int32(),
        "int64": pa.int64(),
        "string": pa.string(),
    }[kind]


def parquet_schema(version: int = schema.SCHEMA_VERSION):
    """The Arrow schema of a schema version's parquet files (what ``datasets`` derives from :func:`schema.features`)."""
    return pa.schema([pa.field(name, _arrow_type(kind)) for name, kind in schema.column_types(version).items()])


def features_dict(version: int = schema.SCHEMA_VERSION) -> dict[str, Any]:
    """``datasets.Features.to_dict()`` of :func:`schema.features`, built without importing ``datasets``."""

    def one(kind: str) -> dict[str, Any]:
        if kind.startswith("list<"):
            return {"feature": one(kind[len("list<") : -1]), "_type": "List"}
        return {"dtype": kind, "_type": "Value"}

    return {name: one(kind) for name, kind in schema.column_types(version).items()}


def _arrow_column(values: Any, kind):
    """One column as an Arrow array of ``kind``; a list column of equal-length float arrays in one copy."""
    if (
        pa.types.is_list(kind)
        and not pa.types.is_list(kind.value_type)
        and len(values)
        and all(isinstance(v, np.ndarray) and v.ndim == 1 for v in values)
    ):
        lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
        offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int32)
        flat = np.concatenate(values).astype(kind.value_type.to_pandas_dtype(), copy=False)
        return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(flat, kind.value_type), type=kind)
    return pa.array(values, type=kind)


@contextmanager
def quiet_datasets() -> Iterator[None]:
    """Silence ``datasets``' progress bars and info logging (ours report per model), restoring them after."""
    from datasets.utils import logging as ds_logging  # lazy: writing a dataset never imports datasets (seconds)

    was_enabled = ds_logging.is_progress_bar_enabled()
    level = ds_logging.get_verbosity()
    ds_logging.disable_progress_bar()
    ds_logging.set_verbosity_error()
    try:
        yield
    finally:
        ds_logging.set_verbosity(level)
        if was_enabled:
            ds_logging.enable_progress_bar()


def model_files(out_dir: str | os.PathLike) -> list[Path]:
    """Every model parquet file in the repo, sorted by family then slug."""
    return sorted((Path(out_dir) / DATA_DIR).glob("*/*.parquet"))


def read_summary(path: str | os.PathLike) -> dict[str, Any]:
    """Per-model metadata of one parquet file (first row of the metadata columns, row count)."""
    try:
        table = pq.read_table(path, columns=[c for c in SUMMARY_COLUMNS])
    except Exception as exc:  # ArrowInvalid (not parquet, truncated), a missing column, OSError
        raise DatasetRepoError(
            f"{repo_relative(path)} is corrupt or not a model table ({' '.join(str(exc).split())[:200]}): "
            "rebuild that model (--force) or remove the file"
        ) from None
    first = table.slice(0, 1).to_pylist()
    summary = dict(first[0]) if first else {c: None for c in SUMMARY_COLUMNS}
    if first:  # a model's file holds one row per (layer, head, variant): name every variant
        summary["variant"] = ", ".join(str(v) for v in dict.fromkeys(table.column("variant").to_pylist()))
    summary["n_rows"] = table.num_rows
    summary["n_bytes"] = os.path.getsize(path)
    summary["config"] = Path(path).parent.name
    summary["path"] = Path(path).relative_to(Path(path).parents[2]).as_posix()
    return summary


def repo_relative(path: str | os.PathLike) -> str:
    """``data/<family>/<file>`` of a model file (the path as the card and messages name it)."""
    path = Path(path)
    return path.relative_to(path.parents[2]).as_posix() if len(path.parents) > 2 else path.as_posix()


def table_variants(path: str | os.PathLike) -> set[str] | None:
    """The variants a model's parquet file holds (None if it cannot be read: it is replaced, never trusted)."""
    try:
        return {str(v) for v in pq.read_table(path, columns=["variant"]).column("variant").unique().to_pylist()}
    except Exception:
        return None


def check_replace(out_dir: str | os.PathLike, family: str, model_id: str, variant: str, force: bool = False) -> None:
    """Refuse (one line) to replace built spectra by legacy ones, or legacy by built, unless ``force``.

    The model's table in ``family`` holds either spectra built from the weights
    or the original study's imported legacy spectra (with its pairing error);
    silently swapping one for the other would change every number under the
    same name.
    """
    path = model_path(out_dir, family, model_id)
    held = table_variants(path) if path.exists() else None
    if force or not held:
        return
    legacy = schema.VARIANT_LEGACY
    name = repo_relative(path)
    if variant == legacy and held - {legacy}:
        raise DatasetRepoError(
            f"{name} holds spectra of {model_id} built from its weights (variant {', '.join(sorted(held - {legacy}))}): "
            "importing the legacy pickle would replace them with the original study's numbers; pass --force to "
            "replace them, or import into another family"
        )
    if variant != legacy and legacy in held:
        raise DatasetRepoError(
            f"{name} holds the original study's imported legacy spectra of {model_id}: building it would replace them; "
            "pass --force to replace them, or build into another family"
        )


def built_models(out_dir: str | os.PathLike, family: str, exclude: Sequence[str | os.PathLike] = ()) -> list[str]:
    """Model ids of ``family`` whose tables hold spectra built from weights (not legacy), files in ``exclude`` aside."""
    skip = {Path(p).resolve() for p in exclude}
    found = []
    for path in sorted((Path(out_dir) / DATA_DIR / family).glob("*.parquet")):
        if path.resolve() in skip:
            continue
        held = table_variants(path)
        if held and held - {schema.VARIANT_LEGACY}:
            try:
                found.append(str(pq.read_table(path, columns=["model_id"]).column("model_id")[0]))
            except Exception:
                found.append(path.stem)
    return found


def null_seed_of(path: str | os.PathLike) -> int | None:
    """The seed of a model file's null rows (None if it has none, or if they disagree)."""
    if "null_seed" not in pq.read_schema(path).names:
        return None
    seeds = {s for s in pq.read_table(path, columns=["null_seed"]).column(0).to_pylist() if s is not None}
    return seeds.pop() if len(seeds) == 1 else None


def existing_build(out_dir: str | os.PathLike, family: str, model_id: str) -> dict[str, Any] | None:
    """The summary of the model's file (with its first row's ``method_version``, None before schema v2,
    and its null rows' ``null_seed``, None without them (before schema v3)) if it exists and is readable, else None."""
    path = model_path(out_dir, family, model_id)
    if not path.exists():
        return None
    try:
        summary = read_summary(path)
        has_method = "method_version" in pq.read_schema(path).names and summary["n_rows"]
        first = pq.read_table(path, columns=["method_version"]).column(0)[0].as_py() if has_method else None
        return {**summary, "method_version": first, "null_seed": null_seed_of(path)}
    except Exception:  # an unreadable file is rebuilt, never trusted
        return None
