"""QK and OV side by side (issue 21): each head's QK metrics against its OV copying score.

A head's QK circuit decides where it looks, its OV circuit what it writes. This
module pairs the two rows of each head (schema v4, ``circuit`` qk|ov, same
model, variant, layer and head) and writes the report's "QK and OV" section:

- ``tables/circuit_heads.csv``: one row per head, its QK metrics, its OV copying
  score and z-score against the matched null, its class (the run's classes) and
  its role: ``copying`` (``copying_score_z`` > 3), ``suppression`` (< -3) or ``''``;
- ``tables/copying_heads.csv`` and ``tables/suppression_heads.csv``: those heads;
- ``tables/circuit_depth.csv``: the joint distribution by relative-depth band;
- ``tables/qk_ov.csv``: per model, the counts and a ``conclusion`` sentence that
  the report's summary (:mod:`.summary`) quotes;
- ``circuits/<model>.<fmt>`` (QK positivity and stable rank against the OV
  copying score, heads coloured by class) and ``circuits/depth.<fmt>``.

|z| > 3 is a per-head threshold, not a test corrected for the number of heads:
the model table states how many heads it would flag by chance if z were
standard normal under the null. The rank correlation between QK positivity and
OV copying score is descriptive (heads of one layer are not independent), never
a p-value. Also :func:`circuit_of` (which circuit rows hold, for titles and the
``circuit`` column of every table, :func:`label_tables`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from .. import schema
from ..errors import AnalysisError
from ..markdown_text import md_text
from ..naming import model_slug
from . import plots
from .loading import select_spectra
from .table_files import TABLES, write_table
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
SECTION_TABLES = ("circuit_heads", "copying_heads", "suppression_heads", "circuit_depth", "qk_ov")
"""The tables the section writes (``tables/<name>.csv`` and ``.parquet``)."""


def circuit_of(rows: pd.DataFrame) -> str:
    """The circuit of ``rows`` (``qk``, ``ov``; several joined by ``+``); rows of schema v1-v3 (no column) are qk."""
    if "circuit" not in rows.columns or not len(rows):
        return schema.CIRCUIT_QK
    return "+".join(sorted(set(rows["circuit"].fillna(schema.CIRCUIT_QK).astype(str))))


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


def load_circuit_rows(source, frame: pd.DataFrame, circuit: str) -> pd.DataFrame | None:
    """The rows of ``circuit`` for the models and variants of ``frame``; None when the dataset holds none.

    ``source``: the config the report read once (:class:`~.reading.LoadedConfig`). One selection per variant of
    ``frame`` (each model has one). Frames without a ``circuit`` column come from schema v1-v3 files only, which
    hold qk rows: nothing is selected for them.
    """
    if "circuit" not in frame.columns and circuit != schema.CIRCUIT_QK:
        return None
    parts = []
    for variant, rows in frame.groupby("variant", sort=True):
        models = list(dict.fromkeys(rows["model_id"].astype(str)))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                parts.append(
                    select_spectra(source, models=models, variant=str(variant), skip_nonfinite=True, circuit=circuit)
                )
        except AnalysisError:  # no such rows (schema v1-v3 files, a qk-only build, a legacy variant)
            continue
    return pd.concat(parts, ignore_index=True) if parts else None


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


# ---------------------------------------------------------------- figures


def _class_colours(classes: pd.Series) -> tuple[list, list[str]]:
    known = sorted(int(c) for c in classes.dropna().unique())
    palette = dict(zip(known, plots.class_colors(max(len(known), 1))))
    return [palette.get(int(c), "0.6") if not pd.isna(c) else "0.6" for c in classes], [str(k) for k in known]


def scatter_figure(heads: pd.DataFrame, model: str, class_label: str, variant: str):
    """One model: QK positivity and QK stable rank against the OV copying score, coloured by class, roles marked."""
    fig = plots.new_figure((11, 4.6))
    axes = fig.subplots(1, 2)
    colours, known = _class_colours(heads["class"])
    colours = np.array(colours, dtype=object)
    for ax, metric in zip(axes, QK_METRICS):
        for role, marker, size in (("", "o", 22), (ROLE_COPYING, "^", 60), (ROLE_SUPPRESSION, "v", 60)):
            keep = (heads["role"] == role).to_numpy()
            if keep.any():
                ax.scatter(
                    heads["ov_copying_score"][keep],
                    heads[f"qk_{metric}"][keep],
                    c=list(colours[keep]),
                    marker=marker,
                    s=size,
                    edgecolors="k" if role else "none",
                    linewidths=0.6,
                    alpha=0.85,
                )
        ax.set_xlabel("OV copying score", fontsize=11)
        ax.set_ylabel({"positivity": "QK positivity", "stable_rank": "QK stable rank"}[metric], fontsize=11)
        ax.tick_params(labelsize=9)
        ax.axvline(0.0, color="0.7", lw=0.8, zorder=0)
    handles = [
        Line2D([], [], ls="", marker="o", color=c, label=f"{class_label} {k}")
        for k, c in zip(known, plots.class_colors(max(len(known), 1)))
    ]
    handles += [
        Line2D([], [], ls="", marker="^", mec="k", color="w", label=f"copying (z > {Z_THRESHOLD:g})"),
        Line2D([], [], ls="", marker="v", mec="k", color="w", label=f"suppression (z < -{Z_THRESHOLD:g})"),
    ]
    axes[1].legend(handles=handles, fontsize=7, loc="best")
    fig.suptitle(
        f"{model}: QK metrics against OV copying score per head{plots.variant_suffix(variant, PAIRED)}", fontsize=11
    )
    fig.tight_layout()
    return fig


def depth_figure(paired: pd.DataFrame, family: str, order: Sequence[str]):
    """Every model: OV copying score against relative depth, heads coloured by their QK positivity."""
    models = [m for m in order if m in set(paired["model"])] + sorted(set(paired["model"]) - set(order))
    n_cols = min(3, len(models))
    n_rows = math.ceil(len(models) / n_cols)
    fig = plots.new_figure((4.4 * n_cols + 1.0, 3.6 * n_rows))
    axes = np.atleast_1d(fig.subplots(n_rows, n_cols, squeeze=False)).ravel()
    mappable = None
    for ax, model in zip(axes, models):
        part = paired[paired["model"] == model]
        mappable = ax.scatter(
            part["relative_depth"],
            part["ov_copying_score"],
            c=part["qk_positivity"],
            cmap="coolwarm",
            vmin=-1.0,
            vmax=1.0,
            s=18,
            edgecolors="none",
        )
        ax.axhline(0.0, color="0.7", lw=0.8, zorder=0)
        ax.set_title(str(model).split("/")[-1], fontsize=9)
        ax.set_xlabel("relative depth, layer / (n_layers - 1)", fontsize=10)
        ax.set_ylabel("OV copying score", fontsize=10)
        ax.tick_params(labelsize=9)
    for ax in axes[len(models) :]:
        ax.set_visible(False)
    if mappable is not None:
        fig.colorbar(mappable, ax=list(axes[: len(models)]), label="QK positivity")
    variants = sorted(set(map(str, paired["variant"])))
    fig.suptitle(
        f"{family}: OV copying score by relative depth, coloured by QK positivity"
        f"{plots.variant_suffix(variants, PAIRED)}",
        fontsize=11,
    )
    return fig


# ---------------------------------------------------------------- the report's section


def _markdown_table(frame: pd.DataFrame, columns: Sequence[str], limit: int | None = None) -> list[str]:
    from .report_index import format_value  # lazily: report_index imports this module

    shown = frame if limit is None else frame.head(limit)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in shown.iterrows():
        lines.append("| " + " | ".join(md_text(format_value(row[c], c)) for c in columns) + " |")
    return lines


def section_markdown(
    models: pd.DataFrame,
    copying: pd.DataFrame,
    suppression: pd.DataFrame,
    figures: Sequence[str],
    links: Mapping[str, str],
    class_label: str,
    limit: int = 20,
) -> str:
    """The report's "QK and OV" section: what it shows, the per-model counts, the heads of each role, the figures."""
    lines = [
        "## QK and OV",
        "",
        (
            f"Each head's QK circuit (where it looks) beside its OV circuit (what it writes), paired by model, variant, "
            f"layer and head ([per head]({links['circuit_heads']}), [by depth]({links['circuit_depth']})). "
            f"Copying heads have an OV copying score beyond its matched null (copying_score_z > {Z_THRESHOLD:g}), "
            f"suppression heads below it (< -{Z_THRESHOLD:g}); this is a per-head threshold, not corrected for the "
            f"number of heads: the table says how many a model would show by chance if z were standard normal. "
            f"Points are coloured by {class_label}; the rank correlation is descriptive."
        ),
        "",
    ]
    lines += _markdown_table(
        models,
        [
            "model",
            "variant",
            "n_tested",
            "n_copying",
            "n_suppression",
            "expected_by_chance_per_side",
            "ov_copying_score_median",
            "spearman_qk_positivity_ov_copying",
        ],
    ) + [""]
    columns = ["model", "variant", "layer", "head", "class", "ov_copying_score", "ov_copying_score_z", "qk_positivity"]
    for title, table, name in (
        ("Copying heads", copying, "copying_heads"),
        ("Suppression heads", suppression, "suppression_heads"),
    ):
        more = f", the first {limit} shown" if len(table) > limit else ""
        lines += [f"### {title}", "", f"{len(table)} head(s) ([{Path(links[name]).name}]({links[name]}){more}).", ""]
        if len(table):
            lines += _markdown_table(table, columns, limit) + [""]
    for figure in figures:
        lines += [f"![{Path(figure).stem}]({figure})", ""]
    return "\n".join(lines)


def _remove_section_tables(tables_dir: Path) -> list[str]:
    """Remove the section's tables an earlier report left (they would sit beside a run without OV rows)."""
    removed = []
    for name in SECTION_TABLES:
        for suffix in (".csv", ".parquet"):
            path = Path(tables_dir) / f"{name}{suffix}"
            if path.is_file():
                path.unlink()
                removed.append(path.name)
    return removed


def class_labels(frames: Mapping[str, pd.DataFrame]) -> pd.DataFrame | None:
    """The run's per-model classes: the default method's consensus labels, else the original method's labels."""
    for name in ("consensus_labels", "labels"):
        table = frames.get(name)
        if table is not None and len(table):
            return table
    return None


def store_circuits(
    outputs,
    frame: pd.DataFrame,
    source,
    family: str,
    params,
    log: Callable[[str], None] | None = None,
    order: Sequence[str] | None = None,
) -> str | None:
    """The report's hook: the section's tables and figures, and its Markdown; None (one log line) without OV rows.

    ``frame``: the rows the report analysed (one circuit); the other circuit is selected from ``source`` (the config
    read once, :class:`~.reading.LoadedConfig`) for the same models and variants.
    """
    circuit = circuit_of(frame)
    other = schema.CIRCUIT_OV if circuit == schema.CIRCUIT_QK else schema.CIRCUIT_QK
    other_rows = load_circuit_rows(source, frame, other)
    if other_rows is None or not len(other_rows):
        stale = _remove_section_tables(outputs.family_dir / TABLES)
        if log is not None:
            log(
                f"QK and OV: no {other} rows for these models in the dataset (schema v1-v3, or built with --circuits "
                f"{circuit}): no section" + (f"; removed an earlier run's {', '.join(stale)}" if stale else "")
            )
        return None
    qk, ov = (frame, other_rows) if circuit == schema.CIRCUIT_QK else (other_rows, frame)
    n_bands = int(getattr(params, "n_bands", 5))
    paired = pair_heads(qk, ov, class_labels(outputs.frames), n_bands)
    if not len(paired):
        if log is not None:
            log("QK and OV: no head has rows of both circuits in the same variant: no section")
        return None
    tables = {
        "circuit_heads": paired,
        "copying_heads": role_table(paired, ROLE_COPYING),
        "suppression_heads": role_table(paired, ROLE_SUPPRESSION),
        "circuit_depth": depth_table(paired, n_bands),
        "qk_ov": model_table(paired),
    }
    for name, table in tables.items():
        write_table(table, outputs.family_dir / TABLES / f"{name}.csv")
        outputs.tables[name] = f"{TABLES}/{name}.csv"
        outputs.frames[name] = table
    class_label = f"{circuit.upper()} class"
    figures = []
    fmt, dpi = getattr(params, "format", "png"), getattr(params, "dpi", plots.DEFAULT_DPI)
    with plots.style():
        for (model, variant), heads in paired.groupby(["model", "variant"], sort=False):
            relative = f"circuits/{model_slug(str(model))}.{fmt}"
            (outputs.family_dir / relative).parent.mkdir(parents=True, exist_ok=True)
            plots.save_figure(
                scatter_figure(heads, str(model), class_label, str(variant)), outputs.family_dir / relative, dpi
            )
            figures.append(relative)
            outputs.figures.setdefault(str(model), []).append(relative)
        relative = f"circuits/depth.{fmt}"
        plots.save_figure(depth_figure(paired, family, list(order or [])), outputs.family_dir / relative, dpi)
        figures.append(relative)
        outputs.figures.setdefault("circuits", []).append(relative)
    if log is not None:
        log(
            f"QK and OV: {len(paired)} heads paired, {len(tables['copying_heads'])} copying and "
            f"{len(tables['suppression_heads'])} suppression heads (|copying_score_z| > {Z_THRESHOLD:g})"
        )
    return section_markdown(
        tables["qk_ov"], tables["copying_heads"], tables["suppression_heads"], figures, outputs.tables, class_label
    )
