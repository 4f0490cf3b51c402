"""The crosswalk between two class systems, per model (fast: joint_consensus itself is tested in test_structure.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score

from qk_spectra_ds.analysis import joint_consensus


def _labels(model: str, classes: list[int], variant: str = "raw") -> pd.DataFrame:
    n = len(classes)
    return pd.DataFrame(
        {
            "model": model,
            "variant": variant,
            "layer": [i // 2 for i in range(n)],
            "head": [i % 2 for i in range(n)],
            "class": classes,
        }
    )


def test_counts_and_ari_are_per_model_on_matched_heads():
    a = pd.concat([_labels("org/a", [0, 0, 1, 1, 2, 2]), _labels("org/b", [0, 1, 0, 1])])
    b = pd.concat([_labels("org/a", [5, 5, 6, 6, 7, 7]), _labels("org/b", [3, 3, 4, 4])])
    walk = joint_consensus.crosswalk(a, b, "per-model", "joint")
    for model, g in walk.groupby("model"):
        merged = a[a["model"] == model].merge(b[b["model"] == model], on=["model", "layer", "head"])
        expected = merged.groupby(["class_x", "class_y"]).size()
        assert dict(zip(zip(g["class_a"], g["class_b"]), g["n_heads"])) == expected.to_dict()
        assert np.allclose(g["ari"], adjusted_rand_score(merged["class_x"], merged["class_y"]), rtol=1e-12, atol=1e-12)
    assert set(walk.loc[walk["model"] == "org/a", "ari"]) == {1.0}  # the same partition under other names
    assert walk.loc[walk["model"] == "org/b", "ari"].iloc[0] < 0.5
    assert (
        set(walk["system_a"]) == {"per-model"}
        and set(walk["system_b"]) == {"joint"}
        and set(walk["variant"]) == {"raw"}
    )


def test_no_shared_heads_is_an_empty_table_with_the_columns():
    walk = joint_consensus.crosswalk(_labels("org/a", [0, 1]), _labels("org/b", [0, 1]), "x", "y")
    assert walk.empty and list(walk.columns) == list(joint_consensus.CROSSWALK_COLUMNS)
