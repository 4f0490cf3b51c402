"""Load a published spectra dataset and check it before any analysis runs.

The analysis reads nothing but the dataset: a local dataset directory (as
written by the builder or by ``import_legacy``) or a Hub repo id, one config
(family, or ``all``), optionally a revision (a tag such as ``v1.0.0``, a branch
or a commit). Loading goes through ``datasets.load_dataset`` so the card's
configs and features are honoured exactly as for any other user.

Every expected failure is an :class:`AnalysisError` (or a
:class:`~qk_spectra_ds.schema.SchemaError`, a subclass of ``ValueError`` too)
with a one-line message: a missing dataset or config, an unknown
``schema_version``, a missing column, an empty selection, non-finite spectra
(optionally skipped with a warning that counts them), mixed variants.

The result is a ``pandas.DataFrame`` with one row per (model, layer, head): the
scalar columns of schema v1 plus ``eigenvalues`` as an object column holding
one float32 numpy array per head. Rows keep the dataset's order; within a
model that is the order the heads were stacked in by the original analysis
(see :mod:`qk_spectra_ds.legacy`).
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from . import schema
from .dataset_repo import model_slug
from .errors import QKSpectraError


class AnalysisError(QKSpectraError, ValueError):
    """An expected, user-facing failure of the analysis (printed as one line by the CLI)."""


class LoadError(AnalysisError):
    """The dataset, config or selection cannot be loaded."""


class NonFiniteSpectraWarning(UserWarning):
    """Rows with NaN/Inf spectra were skipped."""


EV_STAT_COLUMNS = schema.EV_STAT_COLUMNS
_SPECTRUM_COLUMN = "eigenvalues"


def parse_models(models: str | Sequence[str] | None) -> list[str] | None:
    """``"a,b"``, ``("a", "b")`` or None -> a list of names (None: every model)."""
    if models is None:
        return None
    if isinstance(models, str):
        items = models.split(",")
    elif isinstance(models, Iterable):
        items = [str(m) for m in models]
    else:
        items = [str(models)]
    items = [m.strip() for m in items if str(m).strip()]
    return items or None


def is_local_dataset(dataset: str | os.PathLike) -> bool:
    """True when ``dataset`` names a local path rather than a Hub repo id."""
    text = os.fspath(dataset)
    if os.path.isdir(text):
        return True
    return text.startswith((".", "/", "~")) or text.endswith("/") or text.count("/") > 1


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """Silence ``datasets``' progress bars and info logging while loading."""
    from datasets.utils import logging as ds_logging

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


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _load_arrow(dataset: str, family: str, revision: str | None):
    """``load_dataset(dataset, family, revision=..., split="train")`` -> pyarrow Table, errors as LoadError."""
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    local = is_local_dataset(dataset)
    if local:
        path = Path(os.path.expanduser(dataset))
        if not path.is_dir():
            raise LoadError(
                f"no dataset directory {dataset!r}: pass a directory written by build_dataset.py "
                "or import_legacy, or a Hub dataset repo id ORG/NAME"
            )
        if revision is not None:
            raise LoadError(
                f"--revision {revision!r} applies to Hub repos only; {dataset!r} is a local directory "
                "(check out that revision there instead)"
            )
        if not (path / "README.md").exists() and not (path / "data").is_dir():
            raise LoadError(f"{dataset!r} is not a qk-spectra-ds dataset directory (no README.md, no data/)")
        source = str(path)
    else:
        source = dataset
    # datasets caches a local directory under its base name, config and card only: a rebuilt
    # model file with an unchanged card would be served stale. Re-reading local parquet is cheap.
    mode = "force_redownload" if local else None
    try:
        with _quiet_datasets():
            ds = datasets.load_dataset(source, family, revision=revision, split="train", download_mode=mode)
    except DatasetNotFoundError as exc:
        raise LoadError(f"dataset {dataset!r} not found{'' if revision is None else f' at revision {revision!r}'}: {_one_line(exc)}") from exc
    except datasets.exceptions.DatasetGenerationError as exc:
        raise LoadError(_describe_generation_error(dataset, family, exc)) from exc
    except ValueError as exc:
        message = str(exc)
        if "BuilderConfig" in message:
            raise LoadError(f"dataset {dataset!r} has no config {family!r}: {_one_line(exc)}") from exc
        if "corresponds to no data" in message:
            raise LoadError(f"dataset {dataset!r} config {family!r} has no rows") from exc
        raise LoadError(f"cannot load {dataset!r} config {family!r}: {_one_line(exc)}") from exc
    except FileNotFoundError as exc:
        raise LoadError(f"cannot load {dataset!r} config {family!r}: {_one_line(exc)}") from exc
    except Exception as exc:  # network / Hub errors from huggingface_hub, with their own types
        name = type(exc).__name__
        if name in {"RepositoryNotFoundError", "RevisionNotFoundError", "EntryNotFoundError", "HfHubHTTPError",
                    "GatedRepoError", "LocalEntryNotFoundError", "ConnectionError", "HTTPError"}:
            raise LoadError(f"cannot load {dataset!r}{'' if revision is None else f'@{revision}'}: {name}: {_one_line(exc)}") from exc
        raise
    return ds.data.table


def _describe_generation_error(dataset: str, family: str, exc: BaseException) -> str:
    """Turn a cast error of ``datasets`` (files vs card features) into a schema message."""
    cause = exc.__cause__ or exc.__context__
    while cause is not None and not hasattr(cause, "table_column_names"):
        cause = cause.__cause__ or cause.__context__
    if cause is not None:
        have = set(getattr(cause, "table_column_names", []) or [])
        missing = [c for c in schema.COLUMNS if c not in have]
        if missing:
            return (
                f"dataset {dataset!r} config {family!r} lacks column(s) {', '.join(missing)} of schema "
                f"v{schema.SCHEMA_VERSION}: is this a qk-spectra-ds dataset?"
            )
        extra = sorted(have - set(schema.COLUMNS))
        if extra:
            return (
                f"dataset {dataset!r} config {family!r} has column(s) {', '.join(extra)} unknown to schema "
                f"v{schema.SCHEMA_VERSION}: upgrade qk-spectra-ds or load an older dataset revision"
            )
    return f"dataset {dataset!r} config {family!r} does not match its card's features: {_one_line(exc)}"


def _spectra_column(table) -> list[np.ndarray | None]:
    """The ``eigenvalues`` list column as one float32 array per row (None where null)."""
    import pyarrow as pa

    column = table.column(_SPECTRUM_COLUMN).combine_chunks()
    if isinstance(column, pa.ChunkedArray):  # empty table
        return []
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    lengths = column.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    bounds = np.concatenate(([0], np.cumsum(lengths)))
    return [values[bounds[i] : bounds[i + 1]] if valid[i] else None for i in range(len(lengths))]


def load_spectra(
    dataset: str | os.PathLike,
    family: str = "all",
    revision: str | None = None,
    models: str | Sequence[str] | None = None,
    variant: str | None = None,
    skip_nonfinite: bool = False,
) -> pd.DataFrame:
    """Load and validate one config of a spectra dataset.

    Args:
        dataset: a local dataset directory or a Hub dataset repo id.
        family: the config to load (a family name, or ``all``).
        revision: Hub revision (tag ``vX.Y.Z``, branch or commit); Hub repos only.
        models: keep only these models (``"a,b"`` or a list); each name may be a
            full model id (``Qwen/Qwen3-0.6B``), its file slug or its last path
            component (``Qwen3-0.6B``).
        variant: keep only rows of this variant (required when the selection
            mixes variants, e.g. ``raw`` and ``legacy``).
        skip_nonfinite: drop rows whose spectrum or eigenvalue statistics hold
            NaN/Inf (with a warning that counts them) instead of failing.

    Returns:
        One row per head, dataset order, scalar columns of schema v1 plus
        ``eigenvalues`` (float32 arrays).
    """
    dataset = os.fspath(dataset)
    family = str(family)
    revision = None if revision is None else str(revision)
    table = _load_arrow(dataset, family, revision)

    versions = []
    if "schema_version" in table.column_names:
        versions = [None if v is None else int(v) for v in table.column("schema_version").unique().to_pylist()]
    schema.validate_columns(table.column_names, versions)
    if table.num_rows == 0:
        raise LoadError(f"dataset {dataset!r} config {family!r} has no rows")

    _check_required(table, dataset, family)
    scalar_columns = [c for c in schema.COLUMNS if c not in schema.SPECTRUM_COLUMNS]
    frame = table.select(scalar_columns).to_pandas()
    frame[_SPECTRUM_COLUMN] = _spectra_column(table)
    frame = _select(frame, dataset, family, parse_models(models), variant)
    frame = _check_finite(frame, skip_nonfinite)
    _check_duplicates(frame)
    return frame.reset_index(drop=True)


REQUIRED_COLUMNS = (
    "model_id", "family", "variant", "layer", "head", "n_layers", "n_heads", "d_head",
    "eigenvalues", *EV_STAT_COLUMNS, "builder_version", "schema_version",
)  # fmt: skip
"""Columns the analysis needs in every row (the others may be null, e.g. in legacy rows)."""


def _check_required(table, dataset: str, family: str) -> None:
    """A required column that is null: ``datasets`` fills a column missing from a file with nulls."""
    for name in REQUIRED_COLUMNS:
        nulls = table.column(name).null_count
        if nulls == 0:
            continue
        files = _local_files_lacking(dataset, family, name)
        where = f" (file(s) {', '.join(files)})" if files else ""
        if nulls == table.num_rows or files:
            raise schema.SchemaError(
                f"dataset {dataset!r} config {family!r} lacks column {name} of schema v{schema.SCHEMA_VERSION}{where}: "
                "is this a qk-spectra-ds dataset?"
            )
        raise schema.SchemaError(f"dataset {dataset!r} config {family!r}: column {name} is null in {nulls} row(s)")


def _local_files_lacking(dataset: str, family: str, column: str) -> list[str]:
    if not is_local_dataset(dataset):
        return []
    import pyarrow.parquet as pq

    root = Path(os.path.expanduser(dataset))
    pattern = "data/*/*.parquet" if family == "all" else f"data/{family}/*.parquet"
    lacking = []
    for path in sorted(root.glob(pattern)):
        try:
            if column not in pq.read_schema(path).names:
                lacking.append(path.relative_to(root).as_posix())
        except Exception:  # unreadable: datasets would have said so
            continue
    return lacking


def model_names(model_id: str) -> set[str]:
    """The names a user may give for ``model_id`` in ``--models``."""
    return {model_id, model_slug(model_id), model_id.rstrip("/").rsplit("/", 1)[-1]}


def _select(frame: pd.DataFrame, dataset: str, family: str, models: list[str] | None, variant: str | None) -> pd.DataFrame:
    available = list(dict.fromkeys(frame["model_id"].tolist()))
    if models is not None:
        chosen: list[str] = []
        unknown = []
        for name in models:
            hits = [m for m in available if name in model_names(m)]
            if not hits:
                unknown.append(name)
            chosen.extend(h for h in hits if h not in chosen)
        if unknown:
            raise LoadError(
                f"model(s) {', '.join(unknown)} not in {dataset!r} config {family!r}; "
                f"available: {', '.join(available)}"
            )
        frame = frame[frame["model_id"].isin(chosen)]
    if variant is not None:
        present = sorted({str(v) for v in frame["variant"].unique()})
        frame = frame[frame["variant"] == variant]
        if frame.empty:
            raise LoadError(
                f"no rows of variant {variant!r} in the selection from {dataset!r} config {family!r}; "
                f"variants present: {', '.join(present)}"
            )
    if frame.empty:
        raise LoadError(f"the selection from {dataset!r} config {family!r} is empty")
    mixed = frame.groupby("model_id", sort=False)["variant"].nunique(dropna=False)
    if (mixed > 1).any():
        model = mixed[mixed > 1].index[0]
        present = sorted({str(v) for v in frame.loc[frame["model_id"] == model, "variant"].unique()})
        raise LoadError(
            f"model {model} has rows of several variants ({', '.join(present)}): choose one with --variant"
        )
    return frame


def _check_finite(frame: pd.DataFrame, skip: bool) -> pd.DataFrame:
    spectra = frame[_SPECTRUM_COLUMN].tolist()
    null = np.array([s is None or len(s) == 0 for s in spectra], dtype=bool)
    lengths = np.array([0 if s is None else len(s) for s in spectra])
    flat = np.concatenate([s for s in spectra if s is not None]) if (~null).any() else np.zeros(0, np.float32)
    row_of = np.repeat(np.arange(len(spectra)), lengths)
    bad_values = np.zeros(len(spectra), dtype=bool)
    np.logical_or.at(bad_values, row_of, ~np.isfinite(flat))
    stats = frame[list(EV_STAT_COLUMNS)].to_numpy(dtype=np.float64, na_value=np.nan)
    bad_stats = ~np.isfinite(stats).all(axis=1)
    bad = null | bad_values | bad_stats
    if not bad.any():
        return frame
    first = frame.loc[bad].iloc[0]
    where = f"{first['model_id']} layer {first['layer']} head {first['head']}"
    what = "an empty or null spectrum" if null[bad][0] else ("NaN/Inf eigenvalues" if bad_values[bad][0] else "NaN/Inf eigenvalue statistics")
    if not skip:
        raise LoadError(
            f"{int(bad.sum())} head(s) have non-finite or missing spectra (first: {where}, {what}); "
            "pass --skip_nonfinite to drop them"
        )
    warnings.warn(
        f"skipped {int(bad.sum())} head(s) with non-finite or missing spectra (first: {where}, {what})",
        NonFiniteSpectraWarning,
        stacklevel=3,
    )
    kept = frame.loc[~bad]
    if kept.empty:
        raise LoadError("every selected head has a non-finite or missing spectrum")
    return kept


def _check_duplicates(frame: pd.DataFrame) -> None:
    dup = frame.duplicated(["model_id", "variant", "layer", "head"])
    if dup.any():
        row = frame.loc[dup].iloc[0]
        raise LoadError(
            f"{int(dup.sum())} duplicate row(s) in the selection (first: {row['model_id']} layer {row['layer']} "
            f"head {row['head']}): the config holds the same model twice"
        )


def split_models(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """``[(model_id, rows)]`` in order of first appearance, each model's rows in dataset order."""
    order = list(dict.fromkeys(frame["model_id"].tolist()))
    groups = {key: rows for key, rows in frame.groupby("model_id", sort=False)}
    return [(m, groups[m]) for m in order]


def eigenvalue_matrix(rows: pd.DataFrame) -> np.ndarray:
    """Stack one model's eigenvalues into ``(n_heads_total, d_head)`` float32 (rows in frame order)."""
    spectra = rows[_SPECTRUM_COLUMN].tolist()
    lengths = {len(s) for s in spectra}
    if len(lengths) != 1:
        model = rows["model_id"].iloc[0]
        raise AnalysisError(f"{model}: heads have spectra of different lengths {sorted(lengths)}")
    return np.stack(spectra).astype(np.float32, copy=False)
