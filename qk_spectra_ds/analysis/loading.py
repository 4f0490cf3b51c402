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
(optionally skipped with a warning that counts them), mixed variants, the
original study's legacy spectra pooled with built ones (allowed only when asked),
and rows no QK spectrum can have (see :func:`check_structure` and
:func:`spectrum_problem`). For a local directory the data files are checked
first (corrupt, empty, one model in two files, a card that does not parse) and
read as they are, even when the card is out of step with them (an interrupted
build); each message names the file.

The result is a ``pandas.DataFrame`` with one row per (model, layer, head): the
scalar columns of schema v1 plus ``eigenvalues`` as an object column holding
one float32 numpy array per head. Rows keep the dataset's order; within a
model that is the order the heads were stacked in by the original analysis
(see :mod:`qk_spectra_ds.analysis.legacy`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .. import schema
from ..dataset_repo import CARD_NAME, DATA_DIR, DatasetRepoError, card_configs, model_slug, quiet_datasets
from ..errors import AnalysisError, LoadError, one_line
from ..textutil import as_list


class NonFiniteSpectraWarning(UserWarning):
    """Rows with NaN/Inf spectra were skipped."""


EV_STAT_COLUMNS = schema.EV_STAT_COLUMNS
_SPECTRUM_COLUMN = "eigenvalues"


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
            raise LoadError(f"{name} is empty (0 bytes), so corrupt (an interrupted copy?): rebuild that model or remove the file")
        try:
            parquet = pq.ParquetFile(path)
            columns = [c for c in ("model_id", "variant") if c in parquet.schema_arrow.names]
            keys = parquet.read(columns=columns).to_pydict() if len(columns) == 2 else None
        except Exception as exc:  # ArrowInvalid, OSError, ...: the bytes are not a parquet file
            raise LoadError(f"{name} is corrupt (not a readable parquet file: {one_line(exc)}): rebuild that model or remove the file") from None
        if parquet.metadata.num_rows == 0:
            raise LoadError(f"{name} has no rows (a model file holds one row per head): rebuild that model or remove the file")
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

    from .verification import page_checksum_options  # imports this module

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
            ds = datasets.load_dataset(source, name, revision=revision, split="train", **kwargs, **page_checksum_options())
    except DatasetNotFoundError as exc:
        raise LoadError(f"dataset {dataset!r} not found{'' if revision is None else f' at revision {revision!r}'}: {one_line(exc)}") from exc
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

    from .verification import verify_hub

    at = "" if revision is None else f" at revision {revision!r}"
    try:
        return verify_hub(dataset, family, revision)
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise LoadError(f"dataset {dataset!r} not found{at}: {one_line(exc, first_line=True)}") from None
    except hub_errors() as exc:
        raise LoadError(f"cannot load {dataset!r}{at}: {type(exc).__name__}: {one_line(exc, first_line=True)}") from None


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
            if any(word in text for word in ("magic", "footer", "parquet", "corrupt", "truncat", "eof", "size", "checksum")):
                return True
        cause = cause.__cause__ or cause.__context__
    return False


def _list_column(table, name: str, dtype=np.float32) -> list[np.ndarray | None]:
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


def _nested_list_column(table, name: str) -> list[np.ndarray | None]:
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
            raise LoadError(f"column {name}: row {row} holds lists of different lengths ({sorted(set(lengths.tolist()))})")
        lo = value_starts[starts[row]]
        out.append(values[lo : lo + width * len(lengths)].reshape(len(lengths), width))
    return out


def load_spectra(
    dataset: str | os.PathLike,
    family: str = "all",
    revision: str | None = None,
    models: str | Sequence[str] | None = None,
    variant: str | Sequence[str] | None = None,
    skip_nonfinite: bool = False,
    pool_legacy: bool = False,
    keep_spectra: bool = False,
    keep_positional: bool = False,
    circuit: str = schema.CIRCUIT_QK,
) -> pd.DataFrame:
    """Load and validate one config of a spectra dataset.

    Args:
        dataset: a local dataset directory or a Hub dataset repo id.
        family: the config to load (a family name, or ``all``).
        revision: Hub revision (tag ``vX.Y.Z``, branch or commit); Hub repos only.
        models: keep only these models (``"a,b"`` or a list); each name may be a
            full model id (``Qwen/Qwen3-0.6B``), its file slug or its last path
            component (``Qwen3-0.6B``).
        variant: keep only rows of this variant (required when a model has rows
            of several variants, e.g. ``raw`` and ``folded``), or of these
            variants (``"raw,legacy"`` or a list). Naming ``legacy`` together
            with another variant asks for them to be pooled.
        skip_nonfinite: drop rows whose spectrum or eigenvalue statistics hold
            NaN/Inf (with a warning that counts them) instead of failing.
        pool_legacy: analyse the original study's imported spectra (variant
            ``legacy``, computed with its factor pairing error) together with
            spectra built from weights; without it such a selection is refused.
        keep_spectra: also keep ``singular_values`` (one float32 array per head,
            descending; None in rows that lack them), for work on the spectra
            themselves. Off by default: the analysis needs only the eigenvalues.
        keep_positional: also keep ``offsets`` (int64 array per head) and
            ``positional_singular_values`` (float32 array of shape (offsets,
            d_head) per head), None in rows without positional spectra (no
            rotary, null rows, schema v1).
        circuit: keep only rows of this circuit, ``qk`` (default: where a head looks, the
            meaning every analysis had before schema v4) or ``ov`` (what it writes). Rows of
            schema v1-v3 files are qk rows.

    Returns:
        One row per head, dataset order, scalar columns of the schema plus
        ``eigenvalues`` (float32 arrays), and ``singular_values`` with
        ``keep_spectra``. :func:`add_transformer_lens_names` adds the
        TransformerLens names of the heads.
    """
    dataset = os.fspath(dataset)
    family = str(family)
    revision = None if revision is None else str(revision)
    variants = as_list(variant)
    owners: dict[tuple[str, str], list[str]] = {}
    files: list[Path] = []
    if not is_local_dataset(dataset):
        check_hub_dataset(dataset)  # its id's form, and one request with no retries: one line, at once
    if is_local_dataset(dataset) and revision is None:
        root = Path(os.path.expanduser(dataset))
        if root.is_dir():
            files = config_files(root, family)
            from .verification import verify_local  # imports this module

            verify_local(root, files)  # each file's SHA-256 and size against the card, before anything is read
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
    lists = schema.SPECTRUM_COLUMNS + ("offsets", "positional_singular_values")
    scalar_columns = [c for c in schema.COLUMNS if c not in lists and c in table.column_names]
    frame = table.select(scalar_columns).to_pandas()
    frame[_SPECTRUM_COLUMN] = _list_column(table, _SPECTRUM_COLUMN)
    singular_values = _list_column(table, "singular_values")
    frame = select_circuit(frame, dataset, family, circuit)
    frame = _select(frame, dataset, family, as_list(models), variants)
    pooled = pool_legacy or (variants is not None and schema.VARIANT_LEGACY in variants and len(variants) > 1)
    _check_legacy_pooling(frame, dataset, family, pooled)
    where = _locator(owners, dataset)
    check_structure(frame, singular_values, where)
    frame = _check_finite(frame, skip_nonfinite)
    check_values(frame, singular_values, where)
    from .recompute import check_stored_values  # imports this module

    check_stored_values(table, frame, where)  # every stored statistic, metric and summary against the arrays
    if keep_spectra:
        frame.insert(frame.columns.get_loc(_SPECTRUM_COLUMN), "singular_values", [singular_values[i] for i in frame.index])
    if keep_positional:
        offsets = _list_column(table, "offsets", np.int64)
        positional = _nested_list_column(table, "positional_singular_values")
        frame["offsets"] = [offsets[i] for i in frame.index]
        frame["positional_singular_values"] = [positional[i] for i in frame.index]
    return frame.reset_index(drop=True)


def transformer_lens_name(layer: int, head: int) -> tuple[str, int]:
    """``("blocks.{layer}.attn", head)``: the TransformerLens attention module of a head and its head index.

    TransformerLens splits Q into heads in the same order as the checkpoint
    (query head ``h`` is index ``h`` of ``blocks.{layer}.attn``'s ``W_Q``,
    ``hook_pattern`` and ``hook_z``), so ``head`` carries over unchanged; under
    GQA its ``W_K`` repeats key head ``kv_head`` for that query head.
    """
    return f"blocks.{int(layer)}.attn", int(head)


def add_transformer_lens_names(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` with columns ``tl_module`` (``blocks.{layer}.attn``) and ``tl_head`` (the head index).

    Join key for TransformerLens results: ``(model_id, tl_module, tl_head)``,
    or ``blocks.{layer}.attn.hook_pattern`` indexed by ``tl_head``.
    """
    out = frame.copy()
    out["tl_module"] = [transformer_lens_name(layer, 0)[0] for layer in out["layer"]]
    out["tl_head"] = out["head"].astype("int64")
    return out


def _locator(owners: dict[tuple[str, str], list[str]], dataset: str):
    """``where(model, variant)``: the file holding those rows (local) or the model and dataset (Hub)."""

    def where(model: str, variant: str) -> str:
        names = owners.get((model, variant))
        return f"{names[0]} (model {model})" if names else f"model {model} of {dataset!r}"

    return where


def _check_legacy_pooling(frame: pd.DataFrame, dataset: str, family: str, pooled: bool) -> None:
    """Refuse legacy spectra (the original study's, with its pairing error) mixed with built ones, unless asked."""
    is_legacy = frame["variant"] == schema.VARIANT_LEGACY
    if pooled or is_legacy.all() or not is_legacy.any():
        return
    legacy = list(dict.fromkeys(frame.loc[is_legacy, "model_id"]))
    built = list(dict.fromkeys(frame.loc[~is_legacy, "model_id"]))
    others = sorted({str(v) for v in frame.loc[~is_legacy, "variant"]})

    def names(items: list[str]) -> str:
        return ", ".join(items[:3]) + (f" and {len(items) - 3} more" if len(items) > 3 else "")

    raise LoadError(
        f"{dataset!r} config {family!r} mixes the original study's imported legacy spectra (computed with its factor "
        f"pairing error: {names(legacy)}) with spectra built from weights ({names(built)}): analyse one with "
        f"--variant {schema.VARIANT_LEGACY} or --variant {others[0]}, or pool them explicitly with "
        f"--variant {','.join(others)},{schema.VARIANT_LEGACY}"
    )


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


def select_circuit(frame: pd.DataFrame, dataset: str, family: str, circuit: str) -> pd.DataFrame:
    """The rows of one circuit (``qk`` or ``ov``); rows without a circuit (schema v1-v3) are qk rows."""
    circuit = str(circuit).strip().lower()
    if circuit not in schema.CIRCUITS:
        raise LoadError(f"--circuit {circuit!r}: choose {' or '.join(schema.CIRCUITS)}")
    held = frame["circuit"].fillna(schema.CIRCUIT_QK) if "circuit" in frame else pd.Series(schema.CIRCUIT_QK, index=frame.index)
    kept = frame[held == circuit]
    if kept.empty and not frame.empty:
        raise LoadError(
            f"no {circuit} rows in {dataset!r} config {family!r} (circuits present: {', '.join(sorted(set(held)))}): "
            f"rebuild with --circuits qk,ov (schema v{schema.SCHEMA_VERSION}) or load --circuit qk"
        )
    return kept


def _select(frame: pd.DataFrame, dataset: str, family: str, models: list[str] | None, variants: list[str] | None) -> pd.DataFrame:
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
    if variants is None:  # default: the folded variant where a model has it, else what the model has
        has_folded = frame.loc[frame["variant"] == schema.VARIANT_FOLDED, "model_id"].unique()
        frame = frame[(frame["variant"] == schema.VARIANT_FOLDED) | ~frame["model_id"].isin(has_folded)]
    if variants is not None:
        present = sorted({str(v) for v in frame["variant"].unique()})
        missing = [v for v in variants if v not in present]
        frame = frame[frame["variant"].isin(variants)]
        if frame.empty or (len(variants) > 1 and missing):
            wanted = ", ".join(repr(v) for v in missing or variants)
            raise LoadError(
                f"no rows of variant {wanted} in the selection from {dataset!r} config {family!r}; "
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


class ConstantSpectraWarning(UserWarning):
    """Heads with a constant spectrum (e.g. all-zero heads, NaN skew/kurtosis) were left out."""


def _drop_constant_spectra(frame: pd.DataFrame) -> pd.DataFrame:
    """Leave out, with a warning, heads whose spectrum is constant and whose skew/kurtosis are NaN.

    The builder writes NaN skew/kurtosis for a constant spectrum (an all-zero head):
    it has no shape to classify or to put in a SKEW/KURTOSIS box, so it is not an error.
    """
    ev = frame[list(EV_STAT_COLUMNS)].to_numpy(dtype=np.float64, na_value=np.nan)
    shape = [EV_STAT_COLUMNS.index(c) for c in ("ev_skew", "ev_kurtosis")]
    rest = [i for i in range(len(EV_STAT_COLUMNS)) if i not in shape]
    low, high = ev[:, EV_STAT_COLUMNS.index("ev_min")], ev[:, EV_STAT_COLUMNS.index("ev_max")]
    constant = (low == high) & np.isfinite(ev[:, rest]).all(axis=1) & np.isnan(ev[:, shape]).all(axis=1)
    if not constant.any():
        return frame
    if constant.all():
        raise LoadError("every selected head has a constant spectrum (e.g. all zero): nothing to classify")
    first = frame.loc[constant].iloc[0]
    warnings.warn(
        f"left out {int(constant.sum())} head(s) with a constant spectrum (first: {first['model_id']} layer "
        f"{first['layer']} head {first['head']}, eigenvalues all {low[constant][0]:g}): no spectral shape to classify",
        ConstantSpectraWarning,
        stacklevel=4,
    )
    return frame.loc[~constant]


def _check_finite(frame: pd.DataFrame, skip: bool) -> pd.DataFrame:
    frame = _drop_constant_spectra(frame)
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


def check_structure(frame: pd.DataFrame, singular_values: Sequence[np.ndarray | None], where) -> None:
    """Refuse rows whose indices or shapes are impossible; one line naming the file (``where``) and the row.

    Checked: n_layers, n_heads, d_head positive and the same for all rows of a
    (model, variant); 0 <= layer < n_layers, 0 <= head < n_heads; n_heads a
    multiple of n_kv_heads and kv_head = head // (n_heads / n_kv_heads) where
    known; spectra of length d_head; no (model, variant, layer, head) twice;
    every layer present with all its n_heads heads.
    """
    index = frame.index.to_numpy()
    ints = {c: frame[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in ("layer", "head", "kv_head", "n_layers", "n_heads", "n_kv_heads", "d_head")}
    layer, head, n_layers, n_heads, d_head = (ints[c] for c in ("layer", "head", "n_layers", "n_heads", "d_head"))
    kv, n_kv = ints["kv_head"], ints["n_kv_heads"]
    ev_len = np.array([len(s) for s in frame[_SPECTRUM_COLUMN]], dtype=np.float64)
    sv_len = np.array([np.nan if singular_values[i] is None else len(singular_values[i]) for i in index], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        group = np.where(n_kv >= 1, n_heads // np.where(n_kv >= 1, n_kv, 1), np.nan)
        checks = [
            (~((n_layers >= 1) & (n_heads >= 1) & (d_head >= 1)), lambda r: f"n_layers {r.n_layers}, n_heads {r.n_heads}, d_head {r.d_head}: each must be at least 1"),
            (~((layer >= 0) & (layer < n_layers)), lambda r: f"layer {r.layer} is outside 0..{r.n_layers - 1} (n_layers {r.n_layers})"),
            (~((head >= 0) & (head < n_heads)), lambda r: f"head {r.head} is outside 0..{r.n_heads - 1} (n_heads {r.n_heads})"),
            (~np.isnan(n_kv) & ~((n_kv >= 1) & (n_heads % np.where(n_kv >= 1, n_kv, 1) == 0)), lambda r: f"n_heads {r.n_heads} is not a multiple of n_kv_heads {r.n_kv_heads}"),
            (~np.isnan(kv) & ~np.isnan(group) & (kv != head // group), lambda r: f"kv_head {r.kv_head} is not head // (n_heads / n_kv_heads) = {int(r.head // (r.n_heads // r.n_kv_heads))}"),
            (ev_len != d_head, lambda r: f"{len(r.eigenvalues)} eigenvalues, but d_head is {r.d_head}"),
            (~np.isnan(sv_len) & (sv_len != d_head), lambda r: f"{len(singular_values[r.Index])} singular values, but d_head is {r.d_head}"),
        ]
    for bad, describe in checks:
        if bad.any():
            row = next(frame.loc[bad].itertuples())
            raise AnalysisError(f"{where(row.model_id, row.variant)}: layer {row.layer} head {row.head}: {describe(row)}")
    keys = ["model_id", "variant"]
    for column in ("n_layers", "n_heads", "d_head"):
        counts = frame.groupby(keys, sort=False)[column].nunique()
        if (counts > 1).any():
            model, variant = counts[counts > 1].index[0]
            values = sorted(frame.loc[(frame.model_id == model) & (frame.variant == variant), column].unique())
            raise AnalysisError(f"{where(model, variant)}: rows disagree on {column} ({', '.join(map(str, values))})")
    dup = frame.duplicated(keys + ["layer", "head"])
    if dup.any():
        row = next(frame.loc[dup].itertuples())
        raise AnalysisError(
            f"{where(row.model_id, row.variant)}: layer {row.layer} head {row.head} appears more than once "
            f"({int(dup.sum())} duplicate row(s)): each (model, variant, layer, head) must be one row"
        )
    heads = frame.groupby(keys + ["layer"], sort=False).agg(count=("head", "size"), n_heads=("n_heads", "first"))
    short = heads[heads["count"] != heads["n_heads"]]
    if len(short):
        (model, variant, layer_id), row = next(iter(short.iterrows()))
        raise AnalysisError(f"{where(model, variant)}: layer {layer_id} has {row['count']} of its {row['n_heads']} heads")


def spectrum_problem(
    singular_values: np.ndarray, eigenvalues: np.ndarray, stats: dict[str, np.ndarray] | None = None
) -> tuple[int, str] | None:
    """The first head (row) whose spectrum no QK circuit can have, and what is wrong; None if all are fine.

    ``singular_values`` and ``eigenvalues`` are ``(n_heads, d_head)``; rows holding
    NaN/Inf are left to the non-finite check. Errors: a negative value; singular
    values not in descending order; eigenvalues that are not the squares of the
    singular values (relative 1e-5, plus 1e-6 of the head's largest eigenvalue
    for values near float32's underflow); published ``ev_min``/``ev_max``
    (``sv_min``/``sv_max``) other than the spectrum's smallest and largest value
    (the same tolerance). float32 rounding of correct data stays below 3e-7.
    """
    sv = np.asarray(singular_values, dtype=np.float64)
    ev = np.asarray(eigenvalues, dtype=np.float64)
    finite = np.isfinite(sv).all(axis=1) & np.isfinite(ev).all(axis=1)
    if not finite.any():
        return None
    with np.errstate(invalid="ignore"):
        atol = 1e-6 * np.where(finite, np.abs(ev).max(axis=1, initial=0.0), 0.0) + 1e-37
        sv_atol = 1e-6 * np.where(finite, np.abs(sv).max(axis=1, initial=0.0), 0.0) + 1e-37

    def close(a: np.ndarray, b: np.ndarray, scale: np.ndarray) -> np.ndarray:
        return np.abs(a - b) <= 1e-5 * np.abs(b) + scale

    checks = [
        (((sv < 0) | (ev < 0)).any(axis=1), lambda i: f"negative {'eigenvalue' if (ev[i] < 0).any() else 'singular value'} {min(ev[i].min(), sv[i].min()):.6g}"),
        ((np.diff(sv, axis=1) > 0).any(axis=1), lambda i: "singular values are not in descending order"),
        (~close(ev, sv**2, atol[:, None]).all(axis=1), lambda i: "eigenvalues are not the squares of the singular values"),
    ]
    for name, values, scale in (("ev", ev, atol), ("sv", sv, sv_atol)):
        for stat, reduce in (("min", np.min), ("max", np.max)):
            published = None if stats is None else stats.get(f"{name}_{stat}")
            if published is None:
                continue
            published = np.asarray(published, dtype=np.float64)
            actual = reduce(values, axis=1)
            bad = np.isfinite(published) & ~close(published, actual, scale)
            checks.append((bad, lambda i, n=f"{name}_{stat}", p=published, a=actual: f"{n} {p[i]:.6g} is not the spectrum's {n[3:]} {a[i]:.6g}"))
    for bad, describe in checks:
        bad = bad & finite
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            return first, describe(first)
    return None


def check_values(frame: pd.DataFrame, singular_values: Sequence[np.ndarray | None], where) -> None:
    """Apply :func:`spectrum_problem` per (model, variant) and d_head; one line naming the file and the head."""
    stat_columns = [c for c in ("ev_min", "ev_max", "sv_min", "sv_max") if c in frame.columns]
    for (model, variant), rows in frame.groupby(["model_id", "variant"], sort=False):
        with_sv = rows[[singular_values[i] is not None for i in rows.index]]
        for _, part in with_sv.groupby(with_sv[_SPECTRUM_COLUMN].map(len), sort=False):
            sv = np.stack([singular_values[i] for i in part.index])
            ev = np.stack(part[_SPECTRUM_COLUMN].tolist())
            stats = {c: part[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in stat_columns}
            problem = spectrum_problem(sv, ev, stats)
            if problem is not None:
                row = part.iloc[problem[0]]
                raise AnalysisError(f"{where(model, variant)}: layer {row['layer']} head {row['head']}: {problem[1]}")


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
