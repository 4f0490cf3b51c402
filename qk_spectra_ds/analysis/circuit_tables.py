"""QK and OV side by side, as tables (issue 21): each head's QK metrics against its OV copying score.

:func:`pair_heads` pairs the two rows of each head (schema v4, ``circuit``
qk|ov, same model, variant, layer and head) and gives each its role:
``copying`` (``copying_score_z`` > 3), ``suppression`` (< -3) or ``''``;
:func:`role_table`, :func:`depth_table` and :func:`model_table` are the report
section's tables (:mod:`.circuits`). |z| > 3 is a per-head threshold, not a
test corrected for the number of heads: the model table states how many heads
it would flag by chance if z were standard normal under the null. The rank
correlation between QK positivity and OV copying score is descriptive (heads of
one layer are not independent), never a p-value. Also :func:`circuit_of`
(which circuit rows hold, for titles and the ``circuit`` column of every table,
:func:`label_tables`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .. import schema
from .table_files import write_table
from .taxonomy import depth_bands

Z_THRESHOLD = 3.0
"""|copying_score_z| beyond this marks a copying (z > 3) or suppression (z < -3) head."""

NORMAL_TAIL = 0.5 * math.erfc(Z_THRESHOLD / math.sqrt(2.0))
"""P(Z > 3) for a standard normal Z: the share of heads one side would flag by chance if z were N(0, 1)."""

HEAD_KEY = ["model_id", "variant", "layer", "head"]
QK_METRICS = ("positivity", "stable_rank")
"""The QK metrics each head's OV copying score is drawn against."""

ROLE_COPYING, ROLE_SUPPRESSION = "copying", "suppression"
HEAD_COLUMNS = [
    "model",
    "variant",
    "circuit",
    "layer",
    "head",
    "n_layers",
    "relative_depth",
    "band",
    "class",
    "qk_positivity",
    "qk_stable_rank",
    "qk_symmetry",
    "qk_positivity_z",
    "ov_copying_score",
    "ov_copying_positive_share",
    "ov_copying_score_z",
    "ov_symmetry",
    "ov_stable_rank",
    "role",
]
ROLE_COLUMNS = [
    "model",
    "variant",
    "circuit",
    "layer",
    "head",
    "relative_depth",
    "class",
    "ov_copying_score",
    "ov_copying_score_z",
    "ov_copying_positive_share",
    "qk_positivity",
    "qk_stable_rank",
]
PAIRED = f"{schema.CIRCUIT_QK}+{schema.CIRCUIT_OV}"


def circuit_of(rows: pd.DataFrame) -> str:
    """The circuit of ``rows`` (``qk``, ``ov``; several joined by ``+``); rows of schema v1-v3 (no column) are qk."""
    if "circuit" not in rows.columns or not len(rows):
        return schema.CIRCUIT_QK
    return "+".join(sorted(set(rows["circuit"].fillna(schema.CIRCUIT_QK).astype(str))))


def label_tables(outputs, circuit: str) -> list[str]:
    """Give every table of a run that has a ``variant`` column a ``circuit`` column right after it, rewritten in place.

    Tables of two sides (``variant_a``, ``variant_b``: compare) get it after ``variant_b``. Returns the names of the
    tables changed; tables that already say their circuit are left as they are.
    """
    changed = []
    for name, rel in outputs.tables.items():
        table = outputs.frames.get(name)
        after = next((c for c in ("variant", "variant_b") if table is not None and c in table.columns), None)
        if after is None or "circuit" in table.columns:
            continue
        table = table.copy()
        table.insert(table.columns.get_loc(after) + 1, "circuit", circuit)
        write_table(table, outputs.family_dir / rel)
        outputs.frames[name] = table
        changed.append(name)
    return changed


def _numeric(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame.columns:
        return pd.Series(np.nan, index=frame.index, dtype="float64")
    return pd.to_numeric(frame[column], errors="coerce").astype("float64")


def pair_heads(
    qk: pd.DataFrame, ov: pd.DataFrame, labels: pd.DataFrame | None = None, n_bands: int = 5
) -> pd.DataFrame:
    """One row per head that has both circuits (:data:`HEAD_COLUMNS`), in model, variant, layer, head order.

    ``labels``: a class table (model, layer, head, class) to name each head's class (NA where it has none).
    ``role`` is ``copying`` / ``suppression`` where ``copying_score_z`` is beyond +-:data:`Z_THRESHOLD`, else ''.
    """
    left = pd.DataFrame({**{k: qk[k].to_numpy() for k in HEAD_KEY}, "n_layers": qk["n_layers"].to_numpy()})
    for name in ("positivity", "stable_rank", "symmetry", "positivity_z"):
        left[f"qk_{name}"] = _numeric(qk, name).to_numpy()
    right = pd.DataFrame({k: ov[k].to_numpy() for k in HEAD_KEY})
    for name in ("copying_score", "copying_positive_share", "copying_score_z", "symmetry", "stable_rank"):
        right[f"ov_{name}"] = _numeric(ov, name).to_numpy()
    for side in (left, right):
        side["model_id"] = side["model_id"].astype(str)
        side["variant"] = side["variant"].astype(str)
    paired = left.merge(right, on=HEAD_KEY, how="inner", validate="one_to_one").rename(columns={"model_id": "model"})
    paired = paired.sort_values(["model", "variant", "layer", "head"], kind="stable", ignore_index=True)
    n_layers = paired["n_layers"].astype("int64").to_numpy()
    layers = paired["layer"].astype("int64").to_numpy()
    paired["relative_depth"] = np.where(n_layers > 1, layers / np.maximum(n_layers - 1, 1), 0.0)
    paired["band"] = [int(depth_bands(np.array([layer]), n, n_bands)[0]) for layer, n in zip(layers, n_layers)]
    paired["circuit"] = PAIRED
    paired["class"] = pd.array([pd.NA] * len(paired), dtype="Int64")
    if labels is not None and len(labels) and len(paired):
        key = labels.set_index(["model", "layer", "head"])["class"]
        index = pd.MultiIndex.from_arrays([paired["model"], paired["layer"], paired["head"]])
        paired["class"] = pd.array(key.reindex(index).to_numpy(), dtype="Int64")
    z = paired["ov_copying_score_z"].to_numpy()
    with np.errstate(invalid="ignore"):
        paired["role"] = np.where(z > Z_THRESHOLD, ROLE_COPYING, np.where(z < -Z_THRESHOLD, ROLE_SUPPRESSION, ""))
    return paired[HEAD_COLUMNS]


def role_table(paired: pd.DataFrame, role: str) -> pd.DataFrame:
    """The heads of one role (``copying`` strongest z first, ``suppression`` most negative first); circuit ``ov``."""
    picked = paired[paired["role"] == role]
    picked = picked.sort_values(
        ["model", "ov_copying_score_z"], ascending=[True, role == ROLE_SUPPRESSION], kind="stable", ignore_index=True
    )
    return picked[ROLE_COLUMNS].assign(circuit=schema.CIRCUIT_OV)


def depth_table(paired: pd.DataFrame, n_bands: int = 5) -> pd.DataFrame:
    """Per model, variant and relative-depth band: heads, medians of QK positivity and OV copying score, role counts."""
    rows = []
    for (model, variant), part in paired.groupby(["model", "variant"], sort=False):
        for band in range(int(n_bands)):
            heads = part[part["band"] == band]
            tested = heads["ov_copying_score_z"].notna()
            rows.append(
                {
                    "model": model,
                    "variant": variant,
                    "circuit": PAIRED,
                    "band": band,
                    "depth_lo": band / n_bands,
                    "depth_hi": (band + 1) / n_bands,
                    "n_heads": len(heads),
                    "n_tested": int(tested.sum()),
                    "qk_positivity_median": float(heads["qk_positivity"].median()) if len(heads) else np.nan,
                    "ov_copying_score_median": float(heads["ov_copying_score"].median()) if len(heads) else np.nan,
                    "n_copying": int((heads["role"] == ROLE_COPYING).sum()),
                    "n_suppression": int((heads["role"] == ROLE_SUPPRESSION).sum()),
                }
            )
    return pd.DataFrame(
        rows,
        columns=[
            "model",
            "variant",
            "circuit",
            "band",
            "depth_lo",
            "depth_hi",
            "n_heads",
            "n_tested",
            "qk_positivity_median",
            "ov_copying_score_median",
            "n_copying",
            "n_suppression",
        ],
    )


def _spearman(x: pd.Series, y: pd.Series) -> float:
    keep = x.notna() & y.notna()
    if keep.sum() < 3 or x[keep].nunique() < 2 or y[keep].nunique() < 2:
        return float("nan")
    return float(x[keep].rank().corr(y[keep].rank()))


def model_table(paired: pd.DataFrame) -> pd.DataFrame:
    """Per model and variant: heads paired and tested, copying and suppression heads, chance count, rank correlation,
    and the ``conclusion`` sentence of the report's summary."""
    rows = []
    for (model, variant), part in paired.groupby(["model", "variant"], sort=False):
        tested = int(part["ov_copying_score_z"].notna().sum())
        copying = int((part["role"] == ROLE_COPYING).sum())
        suppression = int((part["role"] == ROLE_SUPPRESSION).sum())
        chance = tested * NORMAL_TAIL
        rho = _spearman(part["qk_positivity"], part["ov_copying_score"])
        name = str(model).split("/")[-1]
        if tested == 0:
            said = f"{name} [{variant}]: OV copying not tested (no matched-null z-scores on {variant} rows)"
        else:
            said = (
                f"{name} [{variant}]: {copying} of {tested} heads copy (OV copying_score_z > {Z_THRESHOLD:g}) and "
                f"{suppression} suppress (< -{Z_THRESHOLD:g}), about {chance:.2g} per side expected by chance if z "
                f"were standard normal; QK positivity vs OV copying score rank correlation "
                f"{'NaN' if math.isnan(rho) else f'{rho:+.2f}'} (descriptive)"
            )
        rows.append(
            {
                "model": model,
                "variant": variant,
                "circuit": PAIRED,
                "n_heads": len(part),
                "n_tested": tested,
                "n_copying": copying,
                "n_suppression": suppression,
                "expected_by_chance_per_side": chance,
                "ov_copying_score_median": float(part["ov_copying_score"].median()),
                "spearman_qk_positivity_ov_copying": rho,
                "conclusion": said,
            }
        )
    return pd.DataFrame(rows)
