"""The build options that change a model's rows, and whether an existing file holds rows built with them.

A rerun skips a model only when its file holds the same revision and method version
(:func:`is_up_to_date`) and every option in :data:`ROW_OPTIONS` has the value
this build would write (:func:`is_current`). A new option that changes rows (``--circuits``,
``--behaviour``) is one more :class:`RowOption` here, one field of :class:`.build_options.BuildOptions`
and one keyword more in :func:`wanted_key`'s caller: nothing else decides a skip.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from .. import schema

POSITIONAL_VARIANTS = (schema.VARIANT_RAW, schema.VARIANT_FOLDED)
"""The variants whose rows of rotary layers carry positional spectra at the offsets."""
MIXED = "mixed"
"""The held value of an option whose rows disagree (never equal to a wanted value: the model is rebuilt)."""


@dataclass(frozen=True)
class RowOption:
    """One build option that changes rows: what this build would write, and what a file's rows hold."""

    name: str  # the build_model / build_family keyword (the CLI flag with - for _)
    columns: tuple[str, ...]  # the columns ``held`` reads
    wanted: Callable[[Mapping[str, Any]], Any]  # resolved options -> the value the rows will hold
    held: Callable[[Mapping[str, list]], Any]  # the file's columns (absent ones: None per row) -> the value held


def _held_variants(columns: Mapping[str, list]) -> frozenset:
    return frozenset(map(str, columns["variant"]))


def _wanted_offsets(options: Mapping[str, Any]) -> tuple[int, ...]:
    if not any(v in options["variants"] for v in POSITIONAL_VARIANTS):
        return ()
    return tuple(int(o) for o in options["offsets"] or ())


def _held_offsets(columns: Mapping[str, list]) -> Any:
    found = {
        tuple(int(o) for o in offsets)
        for variant, offsets in zip(columns["variant"], columns["offsets"])
        if variant in POSITIONAL_VARIANTS and offsets is not None
    }
    return found.pop() if len(found) == 1 else (() if not found else MIXED)


def _wanted_null_seed(options: Mapping[str, Any]) -> int | None:
    return int(options["null_seed"]) if schema.VARIANT_NULL in options["variants"] else None


def _held_null_seed(columns: Mapping[str, list]) -> Any:
    found = {seed for variant, seed in zip(columns["variant"], columns["null_seed"]) if variant == schema.VARIANT_NULL}
    return found.pop() if len(found) == 1 else (None if not found else MIXED)


def _wanted_circuits(options: Mapping[str, Any]) -> frozenset:
    return frozenset(options["circuits"] or (schema.CIRCUIT_QK,))  # a build without circuits writes qk rows only


def _held_circuits(columns: Mapping[str, list]) -> frozenset:
    return frozenset(schema.CIRCUIT_QK if c is None else str(c) for c in columns["circuit"])  # before v4: qk only


def _wanted_behaviour(options: Mapping[str, Any]) -> tuple | None:
    spec = options["behaviour"]  # a probes.ProbeSpec, or None without --behaviour
    return None if spec is None else tuple(spec.key())


def _held_behaviour(columns: Mapping[str, list]) -> Any:
    found = {key for key in zip(*(columns[c] for c in schema.PROBE_COLUMNS)) if key[0] is not None}
    return found.pop() if len(found) == 1 else (None if not found else MIXED)


ROW_OPTIONS: tuple[RowOption, ...] = (
    RowOption("variants", ("variant",), lambda o: frozenset(o["variants"]), _held_variants),
    RowOption("circuits", ("circuit",), _wanted_circuits, _held_circuits),
    RowOption("offsets", ("variant", "offsets"), _wanted_offsets, _held_offsets),
    RowOption("null_seed", ("variant", "null_seed"), _wanted_null_seed, _held_null_seed),
    RowOption("behaviour", schema.PROBE_COLUMNS, _wanted_behaviour, _held_behaviour),  # --behaviour's probe, or None
)
"""Every build option that changes a model's rows: the skip key. Add new ones here."""


def wanted_key(*, variants: Any, **options: Any) -> dict[str, Any]:
    """The key of the rows this build writes, from its resolved options (:data:`ROW_OPTIONS` names; one not given is off, None)."""
    unknown = set(options) - {o.name for o in ROW_OPTIONS}
    if unknown:
        raise TypeError(f"wanted_key() got options that are not in ROW_OPTIONS: {', '.join(sorted(unknown))}")
    options = {o.name: None for o in ROW_OPTIONS} | options | {"variants": variants}
    return {o.name: o.wanted(options) for o in ROW_OPTIONS}


def held_key(path: str | Path) -> dict[str, Any] | None:
    """The key of the rows a model file holds (None if the file is missing or unreadable: it is rebuilt)."""
    try:
        present = set(pq.read_schema(path).names)
        names = sorted({c for o in ROW_OPTIONS for c in o.columns} & present)
        table = pq.read_table(path, columns=names).to_pydict()
    except Exception:  # noqa: BLE001 - an unreadable file is rebuilt, never trusted
        return None
    n = len(next(iter(table.values()), []))
    columns = {c: table.get(c, [None] * n) for o in ROW_OPTIONS for c in o.columns}
    return {o.name: o.held(columns) for o in ROW_OPTIONS}


def is_up_to_date(previous: Mapping[str, Any] | None, revision: str) -> bool:
    """True if an existing model file has exactly this revision and the current method version."""
    return (
        previous is not None
        and previous.get("model_revision") == revision
        and previous.get("method_version") == schema.METHOD_VERSION
    )


def is_current(
    previous: Mapping[str, Any] | None, path: str | Path, revision: str | None, wanted: Mapping[str, Any]
) -> bool:
    """True if the file at ``path`` holds rows of this revision and method version built with the ``wanted`` key.

    ``revision`` None (nothing to compare: a local model's first build or --force) is never current;
    the file's rows are read only when its revision and method version match.
    """
    return revision is not None and is_up_to_date(previous, revision) and held_key(path) == wanted
