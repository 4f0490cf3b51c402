"""The dataset contract (the card's "Columns" section): columns, their types, schema versions.

One row per (model, layer, query head). Both halves import this module: the
builder to write rows with explicit ``datasets.Features``, the analysis to
refuse data it does not understand. It must stay free of torch.

Versions: the builder writes :data:`SCHEMA_VERSION`; the readers accept every
version in :data:`COLUMNS_BY_VERSION`, each with its own column set. To add a
column: give it a type in :data:`_TYPES` and add it to the current version's
tuple in :data:`COLUMNS_BY_VERSION` (a released version's tuple never changes;
a new version is a new key).

- v1: the first release.
- v2: adds ``method_version`` (see :data:`METHOD_VERSION`), and with the variants
  (``raw``, ``folded``, ``null``) the positional spectra :data:`OFFSET_COLUMNS`, and the
  per-layer facts ``attention_type``, ``sliding_window``, ``rope_theta`` (:data:`LAYER_FACT_COLUMNS`).
- v3: adds the null rows' ``null_seed`` (:data:`NULL_COLUMNS`, the builder's ``--null-seed``).
- v4: one row per (layer, head, circuit, variant): ``circuit`` (``qk`` or ``ov``, :data:`CIRCUIT_COLUMNS`), the
  symmetry and copying metrics and the matched-null z-scores (:data:`CIRCUIT_METRIC_COLUMNS`), and the optional
  behaviour scores with their probe parameters (:data:`BEHAVIOUR_COLUMNS`, :data:`PROBE_COLUMNS`; null unless
  built with ``--behaviour``, and only on ``qk`` rows).
"""

from __future__ import annotations

from collections.abc import Iterable

from .errors import SchemaError

SCHEMA_VERSION = 4

METHOD_VERSION = 5
"""Version of the computation behind the rows, stored in each row's ``method_version``.

Bump it whenever what a column means or how it is computed changes (the kernel,
a statistic, a metric, which bytes are read): a rebuild skips a model only if
its file has the same ``model_revision`` and exactly this ``method_version``,
so every model is recomputed after a bump. The package version plays no part.

- 1: the first recorded version (schema v2): Q/K spectra as the card's "Method" section defines them.
- 2: ill-conditioned head blocks (Frobenius condition number above ~6.7e4) are factored
  by QR instead of Cholesky; undefined values are NaN (skew/kurtosis of a constant
  spectrum; stable/effective rank and positivity of an all-zero head), no longer 0, 1 or -3.
- 3: one row per (layer, head, variant): ``folded`` (norm gains, q/k norm gains, centring and
  the attention scale folded in) and ``null`` (Haar-random pairing) beside ``raw``, positional
  (RoPE) spectra per offset on raw and folded rows of rotary layers; the norm and q/k-norm
  tensors are read (and part of a local model's revision).
- 4: null rows record their seed (schema v3); DeepSeek MLA gets folded, null and positional rows (the
  latent norms' gains folded into its maps, rotary on the rope dims); the rotary attention factor a
  scales only the rotating dimensions (partial rotary pass dims and MLA's no-position dims are not
  scaled, as in the model), where method 3 put a^2 into c for the whole head.
- 5: the matched null's Monte Carlo sd (``positivity_null_sd``, ``copying_score_null_sd`` and their z) draws
  from 4 (was 8) until a 90% upper bound of its relative standard error is <= 1/30 (was the estimate <= 1%):
  z's own error <= 0.1 up to |z| = 3, the decision threshold (was up to |z| = 10), with far fewer draws.
"""

METHOD_VERSION_LEGACY = 0
"""``method_version`` of rows imported from the original study: not computed by this builder."""

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
OFFSET_COLUMNS = (
    "offsets",
    "positional_singular_values",
    "positional_norm_ratio_min",
    "positional_norm_ratio_max",
    "half_norm_offset",
)
"""Positional (RoPE) spectra per token offset and their sortable summaries; null on null rows and layers without rotary."""
LAYER_FACT_COLUMNS = ("attention_type", "sliding_window", "rope_theta")
"""What the row's layer does, from config.json: ``full``/``sliding``/``chunked``, the window (null unless
sliding), the rotary base (null without rotary: NoPE layers, absolute positions, ALiBi, legacy rows)."""

NULL_COLUMNS = ("null_seed",)
"""The entropy the null rows' Haar rotations were drawn from (``--null-seed``); null on raw and folded rows."""

CIRCUIT_QK = "qk"
CIRCUIT_OV = "ov"
CIRCUITS = (CIRCUIT_QK, CIRCUIT_OV)
CIRCUIT_COLUMNS = ("circuit",)
"""Which circuit of the head a row describes: ``qk`` (W_Q^T W_K, where it looks) or ``ov`` (W_O W_V, what it writes)."""

MATCHED_NULL_METRICS = ("positivity", "copying_score", "symmetry")
"""Metrics compared per head with a matched null (the head's own singular values, Haar-random orientations)."""
CIRCUIT_METRIC_COLUMNS = (
    "symmetry",
    "copying_score",
    "copying_positive_share",
    *(f"{m}_{suffix}" for m in MATCHED_NULL_METRICS for suffix in ("null_mean", "null_sd", "z")),
    "matched_null_draws",
    "matched_null_seed",
)
"""Symmetry (both circuits), copying score and positive share (ov rows; null on qk), the matched-null mean,
sd and z of each :data:`MATCHED_NULL_METRICS` (null where the metric does not apply), and the Monte Carlo
draws and seed behind them (draws null where the null moments are analytic)."""

CIRCUIT_DESCRIPTIONS: dict[str, str] = {
    "circuit": "which circuit of the head the row describes: `qk` = W_QK = (W_Q^h)^T W_K^g (where the head looks), "
    "`ov` = W_OV = W_O^h W_V^g (what it writes: W_V^g the d_head x d_model rows of the value projection for KV head g, "
    "W_O^h the d_model x d_head columns of the output projection for head h); on ov rows every spectrum, statistic and "
    "metric is of W_OV, and d_head is the value head dimension (MLA: v_head_dim); schema v1-v3 rows are qk rows",
    "symmetry": "||(M + M^T)/2||_F^2 / ||M||_F^2 of the row's circuit M, in [0, 1] (1 symmetric, 0 antisymmetric, "
    "1/2 + 1/(2 d_model) expected of a random orientation), exact from the factors: 1/2 + Re(sum mu^2) / (2 sum s^2); "
    "NaN for an all-zero head",
    "copying_score": "ov rows: sum(Re mu) / sum(|mu|) over the eigenvalues mu of W_V^g W_O^h (the non-zero "
    "eigenvalues of W_OV; Elhage et al. 2021), in [-1, 1]: +1 copying, -1 suppression; equals `positivity` on ov "
    "rows; null on qk rows",
    "copying_positive_share": "ov rows: sum(|mu| over Re mu > 0) / sum(|mu|), the share of eigenvalue mass with "
    "positive real part; null on qk rows",
    "positivity_null_mean": "qk rows: mean of `positivity` over the matched null (the head's own singular values, "
    "Haar-random d_model x d_head left and right singular vectors): exactly 0 by symmetry; null on ov and null rows",
    "positivity_null_sd": "qk rows: sd of `positivity` over the matched null, Monte Carlo (see Circuits); null on ov "
    "and null rows",
    "positivity_z": "qk rows: (positivity - positivity_null_mean) / positivity_null_sd",
    "copying_score_null_mean": "ov rows: mean of `copying_score` over the matched null: exactly 0; null on qk and null "
    "rows",
    "copying_score_null_sd": "ov rows: sd of `copying_score` over the matched null, Monte Carlo (see Circuits)",
    "copying_score_z": "ov rows: (copying_score - copying_score_null_mean) / copying_score_null_sd: > 3 copying, "
    "< -3 suppression beyond chance",
    "symmetry_null_mean": "mean of `symmetry` over the matched null: 1/2 + 1/(2 d_model), exact; null on null rows",
    "symmetry_null_sd": "sd of `symmetry` over the matched null, exact from the Haar moments (see Circuits); null on "
    "null rows",
    "symmetry_z": "(symmetry - symmetry_null_mean) / symmetry_null_sd; null on null rows",
    "matched_null_draws": "Monte Carlo draws behind the row's positivity/copying null sd (shared by the heads of its "
    "layer); null on null rows",
    "matched_null_seed": "seed of those draws (the builder's --null-seed): numpy PCG64 from SeedSequence(entropy=seed, "
    "spawn_key=(sha256(model_id)[:8] little-endian, layer, circuit 0 qk / 1 ov, variant 0 raw / 1 folded, 2^32)); "
    "null on null rows",
}
"""Card descriptions of the schema-v4 circuit columns (the card's Columns table)."""

BEHAVIOUR_SCORES = ("previous_token", "next_token", "induction", "first_token", "local", "entropy")
BEHAVIOUR_COLUMNS = tuple(f"behaviour_{s}" for s in BEHAVIOUR_SCORES)
"""Per-head scores from running the model on seeded probes (``--behaviour``); null where not measured."""
PROBE_COLUMNS = ("probe_seed", "probe_sequences", "probe_length", "probe_local_window")
"""The probe's parameters behind the behaviour scores; null where none were measured."""

PROVENANCE_COLUMNS = ("weights_dtype", "builder_version", "method_version", "schema_version")

_VALUE_COLUMNS = (
    IDENTITY_COLUMNS + INDEX_COLUMNS + SHAPE_COLUMNS + SPECTRUM_COLUMNS + SV_STAT_COLUMNS + EV_STAT_COLUMNS + METRICS
)

COLUMNS_BY_VERSION: dict[int, tuple[str, ...]] = {
    1: _VALUE_COLUMNS + ("weights_dtype", "builder_version", "schema_version"),
    2: _VALUE_COLUMNS + LAYER_FACT_COLUMNS + OFFSET_COLUMNS + PROVENANCE_COLUMNS,
    3: _VALUE_COLUMNS + LAYER_FACT_COLUMNS + OFFSET_COLUMNS + NULL_COLUMNS + PROVENANCE_COLUMNS,
    4: IDENTITY_COLUMNS[:-1]
    + CIRCUIT_COLUMNS
    + _VALUE_COLUMNS[len(IDENTITY_COLUMNS) - 1 :]
    + CIRCUIT_METRIC_COLUMNS
    + LAYER_FACT_COLUMNS
    + OFFSET_COLUMNS
    + NULL_COLUMNS
    + BEHAVIOUR_COLUMNS
    + PROBE_COLUMNS
    + PROVENANCE_COLUMNS,
}
"""The columns of each schema version this package reads, in file order."""

COLUMNS = COLUMNS_BY_VERSION[SCHEMA_VERSION]
"""The columns the builder writes."""

_TYPES: dict[str, str] = {
    **{name: "string" for name in IDENTITY_COLUMNS + ("weights_dtype", "builder_version", "attention_type")},
    "sliding_window": "int32",
    "rope_theta": "float64",
    **{name: "int32" for name in INDEX_COLUMNS + SHAPE_COLUMNS + ("method_version", "schema_version")},
    **{name: "list<float32>" for name in SPECTRUM_COLUMNS},
    **{name: "float64" for name in SV_STAT_COLUMNS + EV_STAT_COLUMNS + METRICS},
    "offsets": "list<int32>",
    "positional_singular_values": "list<list<float32>>",
    "positional_norm_ratio_min": "float64",
    "positional_norm_ratio_max": "float64",
    "half_norm_offset": "int32",
    "null_seed": "int64",
    "circuit": "string",
    **{name: "float64" for name in CIRCUIT_METRIC_COLUMNS[:-2] + BEHAVIOUR_COLUMNS},
    "matched_null_draws": "int32",
    "matched_null_seed": "int64",
    "probe_seed": "int64",
    "probe_sequences": "int32",
    "probe_length": "int32",
    "probe_local_window": "int32",
}
"""Arrow-style type of every column of any version (a column keeps its type across versions)."""

VARIANT_RAW = "raw"
VARIANT_FOLDED = "folded"
VARIANT_NULL = "null"
BUILT_VARIANTS = (VARIANT_RAW, VARIANT_FOLDED, VARIANT_NULL)

NULL_SEED = 0
"""Default entropy of the null variant's draws (``--null-seed``): numpy PCG64 from SeedSequence(entropy=seed,
spawn_key=(sha256(model_id)[:8] little-endian, layer, head)); each null row records its seed in ``null_seed``."""

NULL_SEED_MAX = 2**63 - 1
"""Largest ``--null-seed`` (the ``null_seed`` column is int64)."""
VARIANT_LEGACY = "legacy"


def column_types(version: int = SCHEMA_VERSION) -> dict[str, str]:
    """Column name -> Arrow-style type name of a schema version, for docs, the card and validation."""
    return {name: _TYPES[name] for name in COLUMNS_BY_VERSION[version]}


def features(version: int = SCHEMA_VERSION):
    """The explicit ``datasets.Features`` of a schema version (the current one by default)."""
    from datasets import Features, List, Value  # lazy: the builder writes files without importing datasets (seconds)

    spec = {}
    for name, kind in column_types(version).items():
        if kind.startswith("list<"):
            inner = kind[len("list<") : -1]
            spec[name] = List(List(Value(inner[5:-1]))) if inner.startswith("list<") else List(Value(inner))
        else:
            spec[name] = Value(kind)
    return Features(spec)


def validate_columns(columns: Iterable[str], schema_versions: Iterable[int | None]) -> None:
    """Raise ``SchemaError`` with a one-line message if the columns or versions are wrong.

    Every ``schema_version`` present must be known, and the columns must hold
    each present version's column set (a table mixing versions, as ``datasets``
    loads it, has the union). With no version known (no rows), any known
    version's complete column set is accepted.
    """
    known = ", ".join(str(v) for v in sorted(COLUMNS_BY_VERSION))
    versions = sorted({int(v) for v in schema_versions if v is not None})
    unknown = [v for v in versions if v not in COLUMNS_BY_VERSION]
    if unknown:
        raise SchemaError(
            f"dataset has schema_version {unknown[0]}, this qk-spectra-ds understands only {known}: "
            "upgrade qk-spectra-ds or load an older dataset revision"
        )
    have = set(columns)
    if not versions and any(set(cols) <= have for cols in COLUMNS_BY_VERSION.values()):
        return
    for version in versions or [SCHEMA_VERSION]:
        missing = [c for c in COLUMNS_BY_VERSION[version] if c not in have]
        if missing:
            raise SchemaError(
                f"dataset lacks column(s) {', '.join(missing)} of schema v{version}: is this a qk-spectra-ds dataset?"
            )
