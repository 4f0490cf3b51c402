"""The report's behaviour step: the table of :func:`.behaviour.predictor_table`, its figures, the index's section."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .. import schema
from ..atomic import write_text
from .behaviour import (
    CLASS_TABLES,
    CORRECTION,
    HEAD_KINDS,
    N_PERMUTATIONS,
    SEED,
    has_behaviour,
    predictor_table,
    scores_present,
)
from .behaviour_figures import colour_classes, plot_behaviour
from .table_files import TABLES, write_table


def section_markdown(table: pd.DataFrame, figures: Sequence[str], table_path: str) -> str:
    """The report's behaviour section: the sentences, the significant predictors, the figures."""
    lines = [
        "## Does the spectrum predict what heads do?",
        "",
        (
            f"Behaviour scores from the dataset's probes against the spectral metrics and classes ([{Path(table_path).name}]"
            f"({table_path})): Spearman rho on within-model ranks with an approximate 95% CI (Fisher z, Bonett-Wright), ROC AUC for previous-token / induction / sink "
            f"heads (thresholds {', '.join(f'{k} >= {t}' for k, (_, t) in HEAD_KINDS.items())}), rank eta² for classes; "
            f"permutation p-values (scores shuffled within each model), adjusted by {CORRECTION} over all "
            f"{int(table['p_permutation'].notna().sum())} tests."
        ),
        "",
    ]
    for sentence in dict(zip(table["score"], table["conclusion"])).values():
        lines.append(f"- {sentence[:1].upper() + sentence[1:]}.")
    lines.append("")
    hits = table[table["significant"]]
    if len(hits):
        cols = ["score", "predictor", "statistic", "value", "ci_low", "ci_high", "n_heads", "p_adjusted"]
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for _, row in hits.iterrows():
            cells = [f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c]) for c in cols]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    for fig in figures:
        lines += [f"![{Path(fig).stem}]({fig})", ""]
    return "\n".join(lines)


def store_behaviour(outputs, frame: pd.DataFrame, params, log=None) -> str | None:
    """The report's hook: the table (``tables/behaviour.csv``), one figure per score, the section's Markdown.

    Returns None (and logs one line) when no row carries behaviour scores.
    """
    if not has_behaviour(frame):
        return None
    if "circuit" in frame.columns:
        frame = frame[frame["circuit"].fillna(schema.CIRCUIT_QK) == schema.CIRCUIT_QK]
    frame = frame.reset_index(drop=True)
    labels = {name: outputs.frames.get(name) for name in CLASS_TABLES if outputs.frames.get(name) is not None}
    permutations = max(N_PERMUTATIONS, int(getattr(params, "permutations", 0) or 0))
    table = predictor_table(frame, labels, permutations=permutations, seed=SEED)
    write_table(table, outputs.family_dir / TABLES / "behaviour.csv")
    outputs.tables["behaviour"] = f"{TABLES}/behaviour.csv"
    outputs.frames["behaviour"] = table
    colours, colour_label = colour_classes(frame, labels)
    figures = []
    for score in scores_present(frame):
        relative = f"behaviour/{score}.{params.format}"
        plot_behaviour(frame, table, score, colours, colour_label, outputs.family_dir / relative, params.dpi)
        figures.append(relative)
    outputs.figures.setdefault("behaviour", []).extend(figures)
    if log is not None:
        log(
            f"behaviour: {int(table['significant'].sum())} of {int(table['p_permutation'].notna().sum())} tests significant "
            f"after {CORRECTION}"
        )
    return section_markdown(table, figures, f"{TABLES}/behaviour.csv")


def append_section(index: Path, markdown: str) -> Path:
    """Add the behaviour section to the end of a written ``index.md`` (atomically: the whole file is rewritten)."""
    index = Path(index)
    return write_text(index, index.read_text("utf-8").rstrip() + "\n\n" + markdown.rstrip() + "\n")
