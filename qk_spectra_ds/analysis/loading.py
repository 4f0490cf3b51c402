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
and rows no QK spectrum can have (see :func:`.row_checks.check_structure` and
:func:`.row_checks.spectrum_problem`). For a local directory the data files are
checked first (corrupt, empty, one model in two files, a card that does not
parse) and read as they are, even when the card is out of step with them (an
interrupted build); each message names the file.

:func:`load_spectra` is one read (:mod:`.reading`) and one selection
(:func:`select_spectra`: :mod:`.selection`, then :mod:`.row_checks` and
:mod:`.recompute`); a report reads once and selects several times.

The result is a ``pandas.DataFrame`` with one row per (model, layer, head): the
scalar columns of schema v1 plus ``eigenvalues`` as an object column holding
one float32 numpy array per head. Rows keep the dataset's order; within a
model that is the order the heads were stacked in by the original analysis
(see :mod:`qk_spectra_ds.analysis.legacy`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .. import schema
from ..errors import AnalysisError, LoadError  # noqa: F401  (raised here before the split: old import paths work)
from ..textutil import as_list
from .reading import SPECTRUM_COLUMN, LoadedConfig, list_column, nested_list_column, read_config
from .recompute import check_stored_values
from .row_checks import check_finite, check_structure, check_values
from .selection import check_legacy_pooling, select_circuit, select_rows


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
    return select_spectra(
        read_config(dataset, family, revision),
        models,
        variant,
        skip_nonfinite,
        pool_legacy,
        keep_spectra,
        keep_positional,
        circuit,
    )


def select_spectra(
    source: LoadedConfig,
    models: str | Sequence[str] | None = None,
    variant: str | Sequence[str] | None = None,
    skip_nonfinite: bool = False,
    pool_legacy: bool = False,
    keep_spectra: bool = False,
    keep_positional: bool = False,
    circuit: str = schema.CIRCUIT_QK,
) -> pd.DataFrame:
    """The rows of a config read once (:func:`~.reading.read_config`) that :func:`load_spectra` returns, checked.

    The arguments are :func:`load_spectra`'s; a report makes several selections (the analysed rows, the null
    variant, the other variant, the other circuit) from one read.
    """
    dataset, family, table, singular_values = source.dataset, source.family, source.table, source.singular_values
    variants = as_list(variant)
    frame = select_circuit(source.frame, dataset, family, circuit)
    frame = select_rows(frame, dataset, family, as_list(models), variants)
    pooled = pool_legacy or (variants is not None and schema.VARIANT_LEGACY in variants and len(variants) > 1)
    check_legacy_pooling(frame, dataset, family, pooled)
    check_structure(frame, singular_values, source.where)
    frame = check_finite(frame, skip_nonfinite)
    check_values(frame, singular_values, source.where)
    check_stored_values(table, frame, source.where)  # every stored statistic, metric and summary against the arrays
    if keep_spectra:
        frame.insert(
            frame.columns.get_loc(SPECTRUM_COLUMN), "singular_values", [singular_values[i] for i in frame.index]
        )
    if keep_positional:
        offsets = list_column(table, "offsets", np.int64)
        positional = nested_list_column(table, "positional_singular_values")
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
