"""QK and OV side by side (issue 21): each head's QK metrics against its OV copying score.

A head's QK circuit decides where it looks, its OV circuit what it writes. This
module pairs the two rows of each head (schema v4, ``circuit`` qk|ov, same
variant) and names the heads whose OV copying score lies beyond the matched
null: copying (``copying_score_z`` > 3) and suppression (< -3).
"""

from __future__ import annotations

import pandas as pd

from .. import schema

Z_THRESHOLD = 3.0
"""|copying_score_z| beyond this marks a copying (z > 3) or suppression (z < -3) head."""

HEAD_KEY = ["model_id", "variant", "layer", "head"]


def ov_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The OV rows of a frame (empty for schema v1-v3 frames, which hold only QK rows)."""
    if "circuit" not in frame.columns:
        return frame.iloc[0:0]
    return frame[frame["circuit"] == schema.CIRCUIT_OV]


def beyond_null(ov: pd.DataFrame, sign: int, threshold: float = Z_THRESHOLD) -> pd.DataFrame:
    """OV rows with ``copying_score_z`` beyond ``sign * threshold`` (+1 copying, -1 suppression), strongest first."""
    z = pd.to_numeric(ov["copying_score_z"], errors="coerce")
    picked = ov[(z > threshold) if sign > 0 else (z < -threshold)]
    return picked.sort_values("copying_score_z", ascending=sign < 0, kind="stable")
