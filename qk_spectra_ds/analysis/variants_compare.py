"""Variants compared: how a model's consensus classes change from one variant of its spectra to another.

For a model held as two variants (``raw`` and ``folded``: the bare ``W_Q^T
W_K`` against the logit map with norms, q/k gains and the scale folded in),
the heads are matched by (layer, head), each variant gets its own consensus
classes with k chosen from its own data (:func:`.consensus.select_k`, the k
scan alone: no structure test, so never k = 1 unless fixed), and the report
gives the adjusted Rand index between the two labelings and the transition
counts (how many heads of raw class i fall in folded class j).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import consensus, consensus_features, consensus_runs


def variant_labels(
    rows: pd.DataFrame, kind: str, k, n_bins: int, quantile: float, seed: int
) -> tuple[pd.DataFrame, int]:
    """``(frame of layer, head, class in canonical order, k)``: consensus classes of one variant's rows."""
    rows = consensus_features.canonical_order(rows)
    ev = np.stack(rows["eigenvalues"].tolist()).astype(np.float64)
    X, _, _ = consensus_features.head_features(ev, kind, n_bins, quantile)
    name = str(rows["model_id"].iloc[0]) if "model_id" in rows and len(rows) else "variant"
    chosen, _, results = consensus.select_k(name, X, k, seed, structure=None)  # k from the k scan alone, as before
    return pd.DataFrame(
        {"layer": rows["layer"].to_numpy(), "head": rows["head"].to_numpy(), "class": results[chosen][0]}
    ), chosen


def compare(
    model_id: str,
    a_rows: pd.DataFrame,
    b_rows: pd.DataFrame,
    names: tuple[str, str],
    kind: str = "log",
    k="auto",
    n_bins: int = 24,
    quantile: float = 0.96,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(summary row, transitions)`` of one model's two variants, heads matched by (layer, head)."""
    a, ka = variant_labels(a_rows, kind, k, n_bins, quantile, seed)
    b, kb = variant_labels(b_rows, kind, k, n_bins, quantile, seed)
    both = a.merge(b, on=["layer", "head"], suffixes=(f"_{names[0]}", f"_{names[1]}"))
    ca, cb = both[f"class_{names[0]}"].to_numpy(), both[f"class_{names[1]}"].to_numpy()
    summary = pd.DataFrame(
        [
            {
                "model": model_id,
                "variant_a": names[0],
                "variant_b": names[1],
                "n_heads": len(both),
                "k_a": ka,
                "k_b": kb,
                "ari": consensus_runs.ari(ca, cb) if len(both) else np.nan,
            }
        ]
    )
    counts = both.groupby([f"class_{names[0]}", f"class_{names[1]}"]).size().rename("n_heads").reset_index()
    counts = counts.rename(columns={f"class_{names[0]}": "class_a", f"class_{names[1]}": "class_b"})
    counts.insert(0, "model", model_id)
    counts.insert(1, "variant_a", names[0])
    counts.insert(2, "variant_b", names[1])
    return summary, counts
