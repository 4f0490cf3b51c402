"""Selecting rows of a loaded config: by circuit, model and variant, and per model.

Pure functions of a frame (no reading): the circuit (rows without one are qk
rows), the models a user named (full id, file slug or last path component), the
variant (by default the folded one where a model has it), the refusal to pool
the original study's legacy spectra with built ones unless asked, and the
per-model views the analyses work on.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import schema
from ..errors import AnalysisError, LoadError
from ..naming import model_slug
from .reading import SPECTRUM_COLUMN


def model_names(model_id: str) -> set[str]:
    """The names a user may give for ``model_id`` in ``--models``."""
    return {model_id, model_slug(model_id), model_id.rstrip("/").rsplit("/", 1)[-1]}


def select_circuit(frame: pd.DataFrame, dataset: str, family: str, circuit: str) -> pd.DataFrame:
    """The rows of one circuit (``qk`` or ``ov``); rows without a circuit (schema v1-v3) are qk rows."""
    circuit = str(circuit).strip().lower()
    if circuit not in schema.CIRCUITS:
        raise LoadError(f"--circuit {circuit!r}: choose {' or '.join(schema.CIRCUITS)}")
    held = (
        frame["circuit"].fillna(schema.CIRCUIT_QK)
        if "circuit" in frame
        else pd.Series(schema.CIRCUIT_QK, index=frame.index)
    )
    kept = frame[held == circuit]
    if kept.empty and not frame.empty:
        raise LoadError(
            f"no {circuit} rows in {dataset!r} config {family!r} (circuits present: {', '.join(sorted(set(held)))}): "
            f"rebuild with --circuits qk,ov (schema v{schema.SCHEMA_VERSION}) or load --circuit qk"
        )
    return kept


def select_rows(
    frame: pd.DataFrame, dataset: str, family: str, models: list[str] | None, variants: list[str] | None
) -> pd.DataFrame:
    """The rows of these models (None: all) and variants (None: folded where a model has it, else its own); one line
    when a name or variant is not there, the selection is empty or a model is left with several variants."""
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
                f"model(s) {', '.join(unknown)} not in {dataset!r} config {family!r}; available: {', '.join(available)}"
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
        raise LoadError(f"model {model} has rows of several variants ({', '.join(present)}): choose one with --variant")
    return frame


def check_legacy_pooling(frame: pd.DataFrame, dataset: str, family: str, pooled: bool) -> None:
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


def split_models(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """``[(model_id, rows)]`` in order of first appearance, each model's rows in dataset order."""
    order = list(dict.fromkeys(frame["model_id"].tolist()))
    groups = {key: rows for key, rows in frame.groupby("model_id", sort=False)}
    return [(m, groups[m]) for m in order]


def eigenvalue_matrix(rows: pd.DataFrame) -> np.ndarray:
    """Stack one model's eigenvalues into ``(n_heads_total, d_head)`` float32 (rows in frame order)."""
    spectra = rows[SPECTRUM_COLUMN].tolist()
    lengths = {len(s) for s in spectra}
    if len(lengths) != 1:
        model = rows["model_id"].iloc[0]
        raise AnalysisError(f"{model}: heads have spectra of different lengths {sorted(lengths)}")
    return np.stack(spectra).astype(np.float32, copy=False)
