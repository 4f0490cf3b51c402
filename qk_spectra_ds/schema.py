"""The dataset contract, schema version 1 (DESIGN.md section 3).

One row per (model, layer, query head). Both halves import this module: the
builder to write rows with explicit ``datasets.Features``, the analysis to
refuse data it does not understand. It must stay free of torch.
"""

from __future__ import annotations

from typing import Iterable

SCHEMA_VERSION = 1

STATISTICS = ("min", "max", "mean", "std", "skew", "kurtosis")
"""The six per-head statistics of the original study, in its order."""

METRICS = ("frobenius", "spectral_norm", "stable_rank", "effective_rank", "log_det", "positivity")
"""Per-head metrics beyond the original study."""

SV_STAT_COLUMNS = tuple(f"sv_{s}" for s in STATISTICS)
EV_STAT_COLUMNS = tuple(f"ev_{s}" for s in STATISTICS)

IDENTITY_COLUMNS = ("model_id", "model_revision", "family", "model_type", "variant")
INDEX_COLUMNS = ("layer", "head", "kv_head")
SHAPE_COLUMNS = ("n_layers", "n_heads", "n_kv_heads", "d_model", "d_head")
SPECTRUM_COLUMNS = ("singular_values", "eigenvalues")
PROVENANCE_COLUMNS = ("weights_dtype", "builder_version", "schema_version")

COLUMNS = (
    IDENTITY_COLUMNS
    + INDEX_COLUMNS
    + SHAPE_COLUMNS
    + SPECTRUM_COLUMNS
    + SV_STAT_COLUMNS
    + EV_STAT_COLUMNS
    + METRICS
    + PROVENANCE_COLUMNS
)

VARIANT_RAW = "raw"
VARIANT_LEGACY = "legacy"


def column_types() -> dict[str, str]:
    """Column name -> Arrow-style type name, for docs, the card and validation."""
    types: dict[str, str] = {}
    for name in IDENTITY_COLUMNS + ("weights_dtype", "builder_version"):
        types[name] = "string"
    for name in INDEX_COLUMNS + SHAPE_COLUMNS + ("schema_version",):
        types[name] = "int32"
    for name in SPECTRUM_COLUMNS:
        types[name] = "list<float32>"
    for name in SV_STAT_COLUMNS + EV_STAT_COLUMNS + METRICS:
        types[name] = "float64"
    return {name: types[name] for name in COLUMNS}


def features():
    """The explicit ``datasets.Features`` of schema version 1."""
    from datasets import Features, List, Value

    spec = {}
    for name, kind in column_types().items():
        spec[name] = List(Value("float32")) if kind == "list<float32>" else Value(kind)
    return Features(spec)


def arrow_schema():
    """The same contract as a ``pyarrow.Schema`` (for writing without ``datasets``)."""
    return features().arrow_schema


class SchemaError(ValueError):
    """The data does not follow a schema version this package understands."""


def validate_columns(columns: Iterable[str], schema_versions: Iterable[int | None]) -> None:
    """Raise ``SchemaError`` with a one-line message if the columns or versions are wrong."""
    versions = sorted({v for v in schema_versions if v is not None})
    unknown = [v for v in versions if v != SCHEMA_VERSION]
    if unknown:
        raise SchemaError(
            f"dataset has schema_version {unknown[0]}, this qk-spectra-ds understands only "
            f"{SCHEMA_VERSION}: upgrade qk-spectra-ds or load an older dataset revision"
        )
    missing = [c for c in COLUMNS if c not in set(columns)]
    if missing:
        raise SchemaError(
            f"dataset lacks column(s) {', '.join(missing)} of schema v{SCHEMA_VERSION}: "
            "is this a qk-spectra-ds dataset?"
        )
