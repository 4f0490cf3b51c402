"""A model's rows as columns of the current schema: identity, shape, spectra, statistics, metrics, positional and circuit columns.

:func:`model_rows` assembles a built model's columns, one block of rows per (circuit, variant)
concatenated in that order; :func:`model_columns` is one block, from (L, H, d_head) singular values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from .. import __version__, schema
from ..statistics import positional_summaries, spectrum_metrics, spectrum_statistics
from .circuit_rows import circuit_metric_columns, eigvals_per_core
from .layer_facts import LayerFacts
from .layouts import AttentionShape
from .planning import ModelPlan
from .seeds import null_seed_key

DTYPE_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64", "F8_E4M3": "float8_e4m3fn"}


def weights_dtype(checkpoint, tensor_names: Sequence[str]) -> str:
    """The checkpoint dtypes of the tensors the rows were computed from (torch's names, sorted, comma-separated)."""
    dtypes = {checkpoint.tensors[n].dtype for n in tensor_names}
    return ",".join(sorted({DTYPE_NAMES.get(dtype, dtype) for dtype in dtypes}))


def model_rows(
    plan: ModelPlan,
    spectra_by_variant: Mapping[tuple[str, str], list],
    tensor_names: Sequence[str],
    *,
    revision: str,
    family: str,
    null_seed: int,
) -> dict[str, list]:
    """Every row of a built model: one :func:`model_columns` block per (circuit, variant), concatenated."""
    dtype = weights_dtype(plan.checkpoint, tensor_names)
    return concat_columns(
        [
            model_columns(
                np.stack([s.singular_values for s in per_layer]),
                np.stack([s.positivity for s in per_layer]),
                plan.shape if circuit == schema.CIRCUIT_QK else replace(plan.shape, d_head=plan.d_v),
                facts=plan.facts,
                model_id=plan.model_id,
                revision=revision,
                family=family,
                model_type=plan.config["model_type"],
                weights_dtype=dtype,
                variant=name,
                positional=[s.positional for s in per_layer],
                offsets=plan.offsets,
                null_seed=null_seed,
                circuit=circuit,
                eigenvalues=np.stack([s.eigenvalues for s in per_layer]),
                matched_null_seed=null_seed,
            )
            for (circuit, name), per_layer in spectra_by_variant.items()
        ]
    )


def model_columns(
    singular_values: np.ndarray,
    positivity: np.ndarray,
    shape: AttentionShape,
    *,
    facts: list[LayerFacts] | None = None,
    model_id: str,
    revision: str,
    family: str,
    model_type: str,
    weights_dtype: str,
    variant: str = schema.VARIANT_RAW,
    positional: Sequence[np.ndarray | None] | None = None,
    offsets: Sequence[int] = (),
    null_seed: int | None = None,
    circuit: str = schema.CIRCUIT_QK,
    eigenvalues: np.ndarray | None = None,
    matched_null_seed: int | None = None,
) -> dict[str, Any]:
    """Current-schema columns for a model from its (L, H, d_head) float64 singular values.

    ``positional``: per layer None (no rotary, or a null row) or the (n_offsets, H, d_head)
    positional singular values at ``offsets``. ``null_seed`` is recorded on null rows only.
    ``eigenvalues`` (L, H, d_head) complex, the cross's mu, give symmetry, copying score and the
    matched null (:mod:`.circuit_rows`; None: those columns null). Behaviour and probe columns are null.
    """
    n_layers, n_heads, _ = singular_values.shape  # n_layers: the layers with softmax attention (facts)
    n = n_layers * n_heads
    s = singular_values.reshape(n, -1)
    ev = s**2
    if facts is None:  # rows of layers 0..L-1 whose facts are unknown (stored as null)
        facts = [LayerFacts(i, None, None, None) for i in range(n_layers)]
    layer = np.repeat(np.array([f.layer for f in facts], dtype=np.int32), n_heads)
    head = np.tile(np.arange(n_heads, dtype=np.int32), n_layers)
    columns: dict[str, Any] = {
        "model_id": [model_id] * n,
        "model_revision": [revision] * n,
        "family": [family] * n,
        "model_type": [model_type] * n,
        "variant": [variant] * n,
        "circuit": [circuit] * n,
        "layer": layer,
        "head": head,
        "kv_head": (head // shape.group_size).astype(np.int32),
        "n_layers": np.full(n, shape.n_layers, np.int32),
        "n_heads": np.full(n, shape.n_heads, np.int32),
        "n_kv_heads": np.full(n, shape.n_kv_heads, np.int32),
        "d_model": np.full(n, shape.d_model, np.int32),
        "d_head": np.full(n, shape.d_head, np.int32),
        **layer_fact_columns(facts, n_heads),
        "singular_values": list(s.astype(np.float32)),
        "eigenvalues": list(ev.astype(np.float32)),
        "weights_dtype": [weights_dtype] * n,
        "builder_version": [__version__] * n,
        "null_seed": [int(null_seed) if variant == schema.VARIANT_NULL else None] * n,
        "method_version": np.full(n, schema.METHOD_VERSION, np.int32),
        "schema_version": np.full(n, schema.SCHEMA_VERSION, np.int32),
    }
    for prefix, values in (("sv", s), ("ev", ev)):
        for name, stat in spectrum_statistics(values).items():
            columns[f"{prefix}_{name}"] = stat
    columns.update(spectrum_metrics(s, positivity.reshape(n)))
    columns.update(positional_columns(s.reshape(n_layers, n_heads, -1), positional, offsets))
    columns.update(
        circuit_metric_columns(
            circuit,
            variant,
            singular_values,
            eigenvalues,
            shape.d_model,
            [f.layer for f in facts],
            model_key=null_seed_key(model_id),
            seed=matched_null_seed,
            eigvals=eigvals_per_core,
        )
    )
    for name in schema.BEHAVIOUR_COLUMNS + schema.PROBE_COLUMNS:
        columns.setdefault(name, [None] * n)
    return columns


def layer_fact_columns(facts: list[LayerFacts], n_heads: int) -> dict[str, list]:
    """attention_type, sliding_window and rope_theta of every row (each layer's facts repeated per head)."""
    return {
        "attention_type": [f.attention_type for f in facts for _ in range(n_heads)],
        "sliding_window": [f.sliding_window for f in facts for _ in range(n_heads)],
        "rope_theta": [None if f.rope is None else f.rope.theta for f in facts for _ in range(n_heads)],
    }


def positional_columns(
    singular_values: np.ndarray, positional: Sequence[np.ndarray | None] | None, offsets: Sequence[int]
) -> dict[str, list]:
    """The positional columns (schema.OFFSET_COLUMNS), row-major over (layer, head); null where absent."""
    n_layers, n_heads, _ = singular_values.shape
    columns: dict[str, list] = {name: [] for name in schema.OFFSET_COLUMNS}
    for layer in range(n_layers):
        values = None if positional is None else positional[layer]
        if values is None:
            for name in schema.OFFSET_COLUMNS:
                columns[name].extend([None] * n_heads)
            continue
        per_head = np.moveaxis(values, 1, 0)  # (H, n_off, d_head)
        summary = positional_summaries(singular_values[layer], per_head, offsets)
        columns["offsets"].extend([list(map(int, offsets))] * n_heads)
        columns["positional_singular_values"].extend([list(h.astype(np.float32)) for h in per_head])
        columns["positional_norm_ratio_min"].extend(summary["positional_norm_ratio_min"].tolist())
        columns["positional_norm_ratio_max"].extend(summary["positional_norm_ratio_max"].tolist())
        columns["half_norm_offset"].extend(None if v < 0 else int(v) for v in summary["half_norm_offset"])
    return columns


def concat_columns(parts: Sequence[Mapping[str, Any]]) -> dict[str, list]:
    """Row-wise concatenation of column dicts (one per variant)."""
    if len(parts) == 1:
        return dict(parts[0])
    return {name: [v for part in parts for v in list(part[name])] for name in parts[0]}
