"""The behaviour figures: each behaviour score against the spectral metrics that predict it best, heads coloured by class."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from . import plots
from .behaviour import CLASS_TABLES, CORRECTION, SCORE_LABELS, format_p


def plot_behaviour(
    frame: pd.DataFrame,
    table: pd.DataFrame,
    score: str,
    colours: pd.Series | None,
    colour_label: str,
    path: Path,
    dpi: float = 100.0,
    top: int = 3,
) -> Path:
    """One figure per behaviour: the score against its ``top`` metrics by |rho|, heads coloured by class."""
    import matplotlib  # lazily, with pyplot: selecting the Agg backend is a global change, made only when drawing

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rho = table[(table["score"] == score) & (table["statistic"] == "spearman_rho") & table["value"].notna()]
    chosen = rho.reindex(rho["value"].abs().sort_values(ascending=False).index).head(top)
    fig, axes = plt.subplots(
        1, max(len(chosen), 1), figsize=(4.2 * max(len(chosen), 1), 3.8), squeeze=False, layout="constrained"
    )
    y = frame[f"behaviour_{score}"].to_numpy(float)
    groups = colours.astype(str).to_numpy() if colours is not None else np.array(["all heads"] * len(frame))
    for ax, (_, row) in zip(axes[0], chosen.iterrows()):
        x = frame[row["predictor"]].to_numpy(float)
        for g in sorted(set(groups)):
            m = groups == g
            ax.scatter(x[m], y[m], s=12, alpha=0.75, label=g)
        star = " *" if row["significant"] else ""
        ax.set_title(f"ρ {row['value']:.2f}, adj. p {format_p(row['p_adjusted'])}{star}", fontsize=10)
        ax.set_xlabel(row["predictor"])
        ax.set_ylabel(SCORE_LABELS.get(score, score))
    if not len(chosen):
        axes[0][0].text(0.5, 0.5, "no metric could be tested", ha="center", va="center")
    if len(set(groups)) > 1:
        axes[0][-1].legend(title=colour_label, fontsize=7, title_fontsize=8, loc="best", markerscale=1.2)
    fig.suptitle(
        f"{SCORE_LABELS.get(score, score)} against the spectral metrics (* significant after {CORRECTION})", fontsize=11
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return plots.save_figure(fig, path, dpi)
    finally:
        plt.close(fig)


def colour_classes(frame: pd.DataFrame, class_labels: Mapping[str, pd.DataFrame]) -> tuple[pd.Series | None, str]:
    """Per row, the class to colour it by: the joint taxonomy's (one set across models) if present, else a model's own."""
    for name in ("taxonomy_labels", "consensus_labels", "labels"):
        table = class_labels.get(name)
        if table is not None and len(table):
            key = table.set_index(["model", "layer", "head"])["class"].to_dict()
            keys = pd.MultiIndex.from_arrays([frame["model_id"], frame["layer"], frame["head"]])
            values = pd.Series(keys.map(key), index=frame.index)
            if name != "taxonomy_labels" and frame["model_id"].nunique() > 1:
                values = frame["model_id"].astype(str).str.split("/").str[-1] + ": " + values.astype(str)
            return values, CLASS_TABLES[name]
    return None, ""
