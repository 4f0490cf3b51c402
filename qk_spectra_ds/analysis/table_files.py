"""Writing the report's tables: a CSV to read (6 significant digits) and the exact values as parquet beside it.

Shared by the report, the comparison and the circuit and behaviour tables, so none of them imports another's
runner for it.
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from ..atomic import atomic_path, write_text

TABLES = "tables"
"""The folder of a family's report that holds its tables."""

CSV_FLOAT_FORMAT = "%.6g"
"""Floats in the CSV tables: 6 significant digits (the exact values are in the parquet file beside each CSV)."""


def write_table(frame: pd.DataFrame, path: Path) -> Path:
    """CSV with floats to 6 significant digits, and the exact values as parquet beside it (same stem), atomically."""
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, lineterminator="\n", float_format=CSV_FLOAT_FORMAT)
    with atomic_path(Path(path).with_suffix(".parquet")) as tmp:
        frame.to_parquet(tmp, index=False)
    return write_text(path, buffer.getvalue())
