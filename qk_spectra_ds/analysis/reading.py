"""Read one config of a spectra dataset into memory, once: files, checksums, the Arrow table, the schema.

A local dataset directory (as written by the builder or by ``import_legacy``)
or a Hub repo id, one config (family, or ``all``), optionally a revision. For a
local directory the data files are checked first (corrupt, empty, one model in
two files, a card that does not parse, each file's SHA-256 against the card)
and read as they are, even when the card is out of step with them (an
interrupted build); for a Hub repo the id, the Hub's answer and each file's LFS
SHA-256 at the revision. Reading goes through ``datasets.load_dataset`` so the
card's configs and features are honoured as for any other user. The result,
:class:`LoadedConfig`, holds every row of the config (all variants and
circuits); :mod:`.loading` selects and checks rows from it, so a report reads
its dataset once however many selections it makes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import schema
from ..card_metadata import card_configs
from ..dataset_repo import CARD_NAME, DATA_DIR, DatasetRepoError, quiet_datasets
from ..errors import LoadError, one_line
from . import verification

SPECTRUM_COLUMN = "eigenvalues"
POSITIONAL_LISTS = ("offsets", "positional_singular_values")


@dataclass
class LoadedConfig:
    """Every row of one config as read (:func:`read_config`): what selections are made from.

    ``frame``: the schema's scalar columns plus ``eigenvalues`` (one float32 array per row), in dataset
    order, indexed 0..n-1 like ``table``; ``singular_values``: one array per row (None where absent);
    ``where(model, variant)``: the file holding those rows (local) or the model and dataset (Hub), for messages.
    """

    dataset: str
    family: str
    table: object  # pyarrow.Table
    frame: pd.DataFrame
    singular_values: list[np.ndarray | None]
    where: Callable[[str, str], str]


def read_config(dataset: str | os.PathLike, family: str = "all", revision: str | None = None) -> LoadedConfig:
    """Read and check one config (files, checksums, schema, required columns); rows are selected later."""
    dataset = os.fspath(dataset)
    family = str(family)
    revision = None if revision is None else str(revision)
    owners: dict[tuple[str, str], list[str]] = {}
    files: list[Path] = []
    if not is_local_dataset(dataset):
        check_hub_dataset(dataset)  # its id's form, and one request with no retries: one line, at once
    if is_local_dataset(dataset) and revision is None:
        root = Path(os.path.expanduser(dataset))
        if root.is_dir():
            files = config_files(root, family)
            verification.verify_local(
                root, files
            )  # each file's SHA-256 and size against the card, before anything is read
            owners = check_local_files(root, files)
    load_revision = revision
    if not is_local_dataset(dataset):  # the Hub's LFS SHA-256 of each file at the commit against its card
        load_revision = _verify_hub_or_error(dataset, family, revision)
    table = _load_arrow(dataset, family, load_revision, files)

    versions = []
    if "schema_version" in table.column_names:
        versions = [None if v is None else int(v) for v in table.column("schema_version").unique().to_pylist()]
    schema.validate_columns(table.column_names, versions)
    if table.num_rows == 0:
        raise LoadError(f"dataset {dataset!r} config {family!r} has no rows")

    _check_required(table, dataset, family)
    lists = schema.SPECTRUM_COLUMNS + POSITIONAL_LISTS
    scalar_columns = [c for c in schema.COLUMNS if c not in lists and c in table.column_names]
    frame = table.select(scalar_columns).to_pandas()
    frame[SPECTRUM_COLUMN] = list_column(table, SPECTRUM_COLUMN)
    singular_values = list_column(table, "singular_values")
    return LoadedConfig(dataset, family, table, frame, singular_values, _locator(owners, dataset))


def _locator(owners: dict[tuple[str, str], list[str]], dataset: str):
    """``where(model, variant)``: the file holding those rows (local) or the model and dataset (Hub)."""

    def where(model: str, variant: str) -> str:
        names = owners.get((model, variant))
        return f"{names[0]} (model {model})" if names else f"model {model} of {dataset!r}"

    return where


def is_local_dataset(dataset: str | os.PathLike) -> bool:
    """True when ``dataset`` names a local path rather than a Hub repo id."""
    text = os.fspath(dataset)
    if os.path.isdir(text):
        return True
    return text.startswith((".", "/", "~")) or text.endswith("/") or text.count("/") > 1


def config_files(root: Path, family: str) -> list[Path]:
    """The parquet files a local config reads (``data/<family>/*.parquet``, or every family for ``all``)."""
    pattern = f"{DATA_DIR}/*/*.parquet" if family == "all" else f"{DATA_DIR}/{family}/*.parquet"
    return sorted(root.glob(pattern))


def check_local_files(root: Path, files: Sequence[Path]) -> dict[tuple[str, str], list[str]]:
    """Check the data files of a local config before ``datasets`` reads them; map (model, variant) -> files.

    One line naming the file for a file that is empty (0 bytes), not a readable
    parquet file, or has no rows, and for one (model, variant) held by two
    files (a parquet copied twice into a family, or one model built into two
    families and loaded together through ``all``).
    """
    import pyarrow.parquet as pq

    owners: dict[tuple[str, str], list[str]] = {}
    for path in files:
        name = path.relative_to(root).as_posix()
        if path.stat().st_size == 0:
            raise LoadError(
                f"{name} is empty (0 bytes), so corrupt (an interrupted copy?): rebuild that model or remove the file"
            )
        try:
            parquet = pq.ParquetFile(path)
            columns = [c for c in ("model_id", "variant") if c in parquet.schema_arrow.names]
            keys = parquet.read(columns=columns).to_pydict() if len(columns) == 2 else None
        except Exception as exc:  # ArrowInvalid, OSError, ...: the bytes are not a parquet file
            raise LoadError(
                f"{name} is corrupt (not a readable parquet file: {one_line(exc)}): rebuild that model or remove the file"
            ) from None
        if parquet.metadata.num_rows == 0:
            raise LoadError(
                f"{name} has no rows (a model file holds one row per head): rebuild that model or remove the file"
            )
        if keys is None:
            continue  # a missing column is reported by the schema check, naming the file
        for key in dict.fromkeys(zip(keys["model_id"], keys["variant"])):
            owners.setdefault(key, []).append(name)
    for (model, variant), names in owners.items():
        if len(names) > 1:
            raise LoadError(
                f"model {model} (variant {variant}) is in {len(names)} files, {' and '.join(names)}: a file copied twice, "
                "or one model in two families loaded together; remove the extra file or load one family"
            )
    return owners


def _local_card_configs(root: Path) -> set[str] | None:
    """The configs the local card declares (None without a card); a card that does not parse is one line."""
    card = root / CARD_NAME
    if not card.is_file():
        return None
    try:
        return card_configs(card.read_text(encoding="utf-8"), where=f"{root.name}/{CARD_NAME}")
    except DatasetRepoError as exc:
        raise LoadError(str(exc)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LoadError(f"cannot read {card}: {one_line(exc)}") from None


def _load_arrow(dataset: str, family: str, revision: str | None, files: Sequence[Path] | None = None):
    """``load_dataset(dataset, family, revision=..., split="train")`` -> pyarrow Table, errors as LoadError.

    A local directory is read as its files are: split sizes recorded in the
    card are not verified (an interrupted build can leave the card behind the
    files), and a config the card lacks but ``data/<family>/`` holds is read
    from the files directly.
    """
    import datasets
    import yaml
    from datasets.exceptions import DatasetNotFoundError

    local = is_local_dataset(dataset)
    kwargs = {}
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
        if not (path / CARD_NAME).exists() and not (path / DATA_DIR).is_dir():
            raise LoadError(f"{dataset!r} is not a qk-spectra-ds dataset directory (no README.md, no data/)")
        configs = _local_card_configs(path)
        source, name = str(path), family
        if files and (configs is None or family not in configs):
            source, name = "parquet", None  # the card is behind the files: read what the files hold
            kwargs["data_files"] = {"train": [str(f) for f in files]}
        # datasets caches a local directory under its base name, config and card only: a rebuilt
        # model file with an unchanged card would be served stale. Re-reading local parquet is cheap.
        kwargs.update(download_mode="force_redownload", verification_mode="no_checks")
    else:
        source, name = dataset, family
    try:
        with quiet_datasets():
            ds = datasets.load_dataset(
                source, name, revision=revision, split="train", **kwargs, **verification.page_checksum_options()
            )
    except DatasetNotFoundError as exc:
        raise LoadError(
            f"dataset {dataset!r} not found{'' if revision is None else f' at revision {revision!r}'}: {one_line(exc)}"
        ) from exc
    except datasets.exceptions.DatasetGenerationError as exc:
        raise LoadError(_describe_generation_error(dataset, family, exc)) from exc
    except datasets.exceptions.NonMatchingSplitsSizesError as exc:
        raise LoadError(
            f"the card of {dataset!r}{'' if revision is None else f'@{revision}'} records other split sizes than its "
            f"files hold for config {family!r}: the card is out of step with the data (republish it)"
        ) from exc
    except ValueError as exc:
        message = str(exc)
        if "BuilderConfig" in message:
            raise LoadError(f"dataset {dataset!r} has no config {family!r}: {one_line(exc)}") from exc
        if "corresponds to no data" in message:
            raise LoadError(f"dataset {dataset!r} config {family!r} has no rows") from exc
        raise LoadError(f"cannot load {dataset!r} config {family!r}: {one_line(exc)}") from exc
    except FileNotFoundError as exc:
        raise LoadError(f"cannot load {dataset!r} config {family!r}: {one_line(exc)}") from exc
    except hub_errors() as exc:
        raise LoadError(
            f"cannot load {dataset!r}{'' if revision is None else f'@{revision}'}: {type(exc).__name__}: {one_line(exc)}"
        ) from exc
    except yaml.YAMLError as exc:
        raise LoadError(
            f"the card README.md of {dataset!r} has a YAML header that does not parse as plain data "
            f"({one_line(exc)}); nothing in it was executed"
        ) from None
    return ds.data.table


def check_hub_dataset(dataset: str) -> None:
    """A one-line LoadError unless ``dataset`` has the form ORG/NAME and the Hub answers (:mod:`..hub_access`)."""
    from ..hub_access import HubAccessError, check_reachable, check_repo_id

    try:
        check_repo_id(dataset, "--dataset")
    except HubAccessError as exc:
        raise LoadError(f"{exc}; nor is it a local dataset directory") from None
    try:
        check_reachable(f"dataset {dataset}")
    except HubAccessError as exc:
        raise LoadError(str(exc)) from None


def hub_errors() -> tuple[type[BaseException], ...]:
    """What reaching a Hub repo can raise: its HTTP answers (missing or gated repo, revision, file), no network."""
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError
    from huggingface_hub.utils import httpx  # huggingface_hub's public export of its HTTP client: timeouts, transport

    return HfHubHTTPError, EntryNotFoundError, httpx.HTTPError, ConnectionError


def _verify_hub_or_error(dataset: str, family: str, revision: str | None) -> str:
    """:func:`verification.verify_hub` with the Hub's answers (no repo, no revision, no network) as one line."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    at = "" if revision is None else f" at revision {revision!r}"
    try:
        return verification.verify_hub(dataset, family, revision)
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise LoadError(f"dataset {dataset!r} not found{at}: {one_line(exc, first_line=True)}") from None
    except hub_errors() as exc:
        raise LoadError(
            f"cannot load {dataset!r}{at}: {type(exc).__name__}: {one_line(exc, first_line=True)}"
        ) from None


def _describe_generation_error(dataset: str, family: str, exc: BaseException) -> str:
    """Turn a cast error of ``datasets`` (files vs card features) into a schema message."""
    from datasets.table import CastError

    cause = exc.__cause__ or exc.__context__
    while cause is not None and not isinstance(cause, CastError):
        cause = cause.__cause__ or cause.__context__
    if cause is not None:
        have = set(cause.table_column_names or [])
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
    if _is_corrupt_file_error(exc):
        return (
            f"a data file of {dataset!r} config {family!r} is corrupt (not a readable parquet file: "
            f"{one_line(_root_cause(exc))}): rebuild that model or remove the file"
        )
    return f"dataset {dataset!r} config {family!r} does not match its card's features: {one_line(exc)}"


def _root_cause(exc: BaseException) -> BaseException:
    while (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__
    return exc


def _is_corrupt_file_error(exc: BaseException) -> bool:
    """An Arrow error reading the bytes of a file (magic bytes, footer, truncation), not a schema mismatch."""
    import pyarrow as pa

    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, (pa.ArrowInvalid, pa.ArrowIOError)):  # a CastError (schema mismatch) is neither
            text = str(cause).lower()
            if any(
                word in text for word in ("magic", "footer", "parquet", "corrupt", "truncat", "eof", "size", "checksum")
            ):
                return True
        cause = cause.__cause__ or cause.__context__
    return False


def list_column(table, name: str, dtype=np.float32) -> list[np.ndarray | None]:
    """A list column (``eigenvalues``, ``singular_values``, ``offsets``) as one ``dtype`` array per row (None where null)."""
    import pyarrow as pa

    if name not in table.column_names:
        return [None] * table.num_rows
    column = table.column(name).combine_chunks()
    if isinstance(column, pa.ChunkedArray):  # empty table
        return []
    values = column.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    lengths = column.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    bounds = np.concatenate(([0], np.cumsum(lengths)))
    return [values[bounds[i] : bounds[i + 1]] if valid[i] else None for i in range(len(lengths))]


def nested_list_column(table, name: str) -> list[np.ndarray | None]:
    """A list<list<float32>> column (``positional_singular_values``) as one (outer, inner) float32 array per row.

    None where the row is null (layers without rotary, null rows); a row whose
    inner lists differ in length is a :class:`LoadError` (every offset holds d_head values).
    """
    import pyarrow as pa

    if name not in table.column_names:
        return [None] * table.num_rows
    column = table.column(name).combine_chunks()
    if isinstance(column, pa.ChunkedArray):  # empty table
        return []
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    outer = column.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    inner = column.flatten()  # the valid rows' inner lists, in order
    inner_lengths = inner.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    values = inner.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    starts = np.concatenate(([0], np.cumsum(outer)))
    value_starts = np.concatenate(([0], np.cumsum(inner_lengths)))
    out: list[np.ndarray | None] = []
    for row in range(len(outer)):
        if not valid[row]:
            out.append(None)
            continue
        lengths = inner_lengths[starts[row] : starts[row + 1]]
        width = int(lengths[0]) if len(lengths) else 0
        if (lengths != width).any():
            raise LoadError(
                f"column {name}: row {row} holds lists of different lengths ({sorted(set(lengths.tolist()))})"
            )
        lo = value_starts[starts[row]]
        out.append(values[lo : lo + width * len(lengths)].reshape(len(lengths), width))
    return out


REQUIRED_COLUMNS = (
    "model_id",
    "family",
    "variant",
    "layer",
    "head",
    "n_layers",
    "n_heads",
    "d_head",
    "eigenvalues",
    *schema.EV_STAT_COLUMNS,
    "builder_version",
    "schema_version",
)
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
