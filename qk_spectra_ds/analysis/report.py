"""Run the analysis of one config and write its figures, tables and index.

Output layout under ``<out>/<family>/``::

    ESDs/<model>.png                      classification A figure per model
    plots/<STAT>/<model>_<STAT>_box.png   classification B figure per model and statistic
    taxonomy/classes.png, depth.png       joint taxonomy figures
    consensus/<model>.png                 default method: k curve, consensus classes against the null
    positional/<model>.png                default method, rotary models: s_1(delta)/s_1 per layer, head and offset
    tables/classes.csv                    --method original: model, variant, class, n_heads, alpha, theta, jsd
    tables/labels.csv                     --method original: model, variant, layer, head, class
    tables/bds.csv                        --method original: model, variant, stat, bds, p_value, n_layers
    tables/consensus_*.csv, ...           default method: see :data:`DEFAULT_METHOD`
    tables/taxonomy_*.csv                 joint classes, labels, shares per model and per depth
    index.md                              links to every figure and table
    index.html                            the same to explore in a browser: interactive embedding, sortable tables

``<model>`` is the file slug of the model id (``Qwen/Qwen3-0.6B`` ->
``Qwen--Qwen3-0.6B``). Each model (classification A and B) and the joint
taxonomy is one task; with ``jobs > 1`` joblib runs them in worker processes
(largest first), by default one per core for configs of 2,000+ heads. Results
do not depend on ``jobs``: KMeans runs single-threaded, the embedding is
seeded, warnings are replayed in task order, tables are sorted and written
atomically, PNGs carry no timestamp, so a rerun gives byte-identical files.
``index.md`` is rendered from the jinja2 template ``templates/index.md``.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import __version__
from ..atomic import sweep_stale_temporaries, write_text
from ..markdown_text import md_code, md_text
from ..naming import model_slug
from . import consensus, features, html_report, layer_boxplots, layer_permutation_tests, optional, taxonomy
from .circuits import circuit_of, label_tables
from .loading import AnalysisError, load_spectra
from .selection import eigenvalue_matrix, split_models
from .table_files import TABLES, write_table

METHODS = ("consensus", "original")
DEFAULT_METHOD = "consensus"
"""``original``: the original study's method only (its tables ``classes``, ``labels``, ``bds``, bit for bit
on its data; BDS p-values asymptotic, labelled invalid at these lengths). ``consensus`` (default):
order-independent consensus classes with their stability and k curve, whole-spectrum features, permutation
tests of the per-layer series and the random-matrix null (``consensus_*``, ``stability``, ``k_selection``,
``energy``, ``null_classes``, ``layer_tests`` tables; ``positional`` where the spectra have offsets); it
does not write the original's row-order-dependent tables (the ESD figures and box plots stay)."""

CONSENSUS_TABLES = ("consensus_classes", "consensus_labels", "k_selection", "stability", "energy", "null_classes",
                    "variants_ari", "variants_transitions", "structure", "class_profiles", "class_metrics")


@dataclass
class Params:
    """Every knob of the analysis, defaults as the original study except the display embedding.

    The embedding defaults to PCA (no JIT compilation); ``umap`` reproduces the
    original figures (see ``taxonomy.EMBEDDINGS``). Tables never depend on it.
    """

    n_clusters: int = taxonomy.N_CLUSTERS
    n_bins: int = features.N_BINS
    quantile: float = features.QUANTILE
    seed: int = taxonomy.SEED
    skip_layers_below: int = layer_boxplots.SKIP_LAYERS_BELOW
    stats: tuple[str, ...] = layer_boxplots.STAT_NAMES
    n_bands: int = taxonomy.N_BANDS
    embedding: str = taxonomy.DEFAULT_EMBEDDING
    method: str = DEFAULT_METHOD
    features: str = consensus.DEFAULT_FEATURES
    k: str = "auto"
    permutations: int = layer_permutation_tests.N_PERMUTATIONS
    min_layers: int = layer_permutation_tests.MIN_LAYERS
    format: str = "png"
    dpi: float = 100.0

    def __post_init__(self) -> None:
        self.n_clusters = int(self.n_clusters)
        self.n_bins = int(self.n_bins)
        self.quantile = float(self.quantile)
        self.seed = int(self.seed)
        self.skip_layers_below = int(self.skip_layers_below)
        self.stats = tuple(layer_boxplots.parse_stats(self.stats))
        self.n_bands = int(self.n_bands)
        if self.n_clusters < 1:
            raise AnalysisError(f"--n_clusters must be >= 1, got {self.n_clusters}")
        if self.n_bins < 1:
            raise AnalysisError(f"--n_bins must be >= 1, got {self.n_bins}")
        if not 0.0 < self.quantile <= 1.0:
            raise AnalysisError(f"--quantile must be in (0, 1], got {self.quantile}")
        if self.n_bands < 1:
            raise AnalysisError(f"--n_bands must be >= 1, got {self.n_bands}")
        self.embedding = taxonomy.check_embedding(str(self.embedding))
        from .plots import check_dpi, check_figure_format

        self.format, self.dpi = check_figure_format(self.format), check_dpi(self.dpi)
        self.method = str(self.method)
        if self.method not in METHODS:
            raise AnalysisError(f"unknown --method {self.method!r}: choose from {', '.join(METHODS)}")
        if self.method == "original":  # its BDS p-values are statsmodels' own
            optional.require("statsmodels", "--method original")
        self.features = str(self.features)
        if self.features not in consensus.FEATURES:
            raise AnalysisError(f"unknown --features {self.features!r}: choose from {', '.join(consensus.FEATURES)}")
        self.k = str(self.k)
        if self.k != "auto" and not (self.k.isdigit() and int(self.k) >= 1):
            raise AnalysisError(f"--k must be auto or a whole number >= 1, got {self.k!r}")
        self.permutations = int(self.permutations)
        self.min_layers = int(self.min_layers)
        if self.permutations < 99:
            raise AnalysisError(f"--permutations must be >= 99, got {self.permutations}")
        if self.min_layers < 4:
            raise AnalysisError(f"--min_layers must be >= 4 (BDS needs them), got {self.min_layers}")

    def classifier(self, **overrides: Any) -> taxonomy.SpectralHeadClassifier:
        """The classification-A estimator with these parameters (``overrides``: other estimator parameters)."""
        settings = dict(n_clusters=self.n_clusters, n_bins=self.n_bins, quantile=self.quantile,
                        random_state=self.seed, embedding=self.embedding)  # fmt: skip
        return taxonomy.SpectralHeadClassifier(**{**settings, **overrides})


@dataclass
class Outputs:
    """What a run wrote (paths relative to the family directory) and how long each stage took."""

    family_dir: Path
    figures: dict[str, list[str]] = field(default_factory=dict)
    tables: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)
    order: list[str] = field(default_factory=list)
    """Models in display order (by size, as the figures): every table's rows follow it."""


# ---------------------------------------------------------------- per-model work (in a worker)


def _replay(caught: Sequence[tuple[type, str]]) -> None:
    for category, message in caught:
        warnings.warn(message, category, stacklevel=3)


def _recorded(caught) -> list[tuple[type, str]]:
    relevant = [w for w in caught if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning))]
    return [(w.category, str(w.message)) for w in relevant]


CLASS_COLUMNS = ["model", "class", "n_heads", "alpha", "theta", "jsd"]


def variant_of(rows: pd.DataFrame) -> str:
    """The variant of a model's rows (``folded``, ``raw``, ``null``, ``legacy``; several joined by ``+``).

    Every table gets it as its ``variant`` column and every figure names it in
    its title, so no output hides which spectra it was made from.
    """
    return "+".join(sorted({str(v) for v in rows["variant"].unique()})) if "variant" in rows and len(rows) else ""


def with_variant(table: pd.DataFrame, variant: str | dict[str, str]) -> pd.DataFrame:
    """``table`` with a ``variant`` column after ``model`` (first if none): one name, or per model from a dict.

    A table that already has ``variant`` is returned unchanged.
    """
    if "variant" in table.columns:
        return table
    if isinstance(variant, dict):  # a row of no one model (the joint taxonomy's "joint") gets all models' variants
        values = table["model"].map(variant).fillna("+".join(sorted(set(map(str, variant.values()))))).astype(str)
    else:
        values = str(variant)
    out = table.copy()
    out.insert(out.columns.get_loc("model") + 1 if "model" in out.columns else 0, "variant", values)
    return out


ORIGINAL_CLASSES_NOTE = "the original method's classes (one KMeans seed, row-order dependent)"
"""How the default method's ESD figures say that their classes are the original study's, not the consensus ones."""


def with_consensus_classes(embedding: pd.DataFrame, consensus_labels: pd.DataFrame) -> pd.DataFrame:
    """The embedding table coloured by the consensus classes (matched on layer and head), as the default method reports."""
    if not len(embedding):
        return embedding
    by_head = consensus_labels.set_index(["layer", "head"])["class"]
    keys = pd.MultiIndex.from_arrays([embedding["layer"], embedding["head"]])
    return embedding.assign(**{"class": by_head.reindex(keys).to_numpy()})


def label_table(model_id: str, rows: pd.DataFrame, labels: np.ndarray) -> pd.DataFrame:
    """Columns model, layer, head, class: one row per head, sorted by layer then head."""
    table = pd.DataFrame({"model": model_id, "layer": rows["layer"].to_numpy(), "head": rows["head"].to_numpy(),
                          "class": labels})  # fmt: skip
    return table.sort_values(["layer", "head"], kind="stable").reset_index(drop=True)


def analyze_model(
    model_id: str, rows: pd.DataFrame, family_dir: str, params: Params, do_clusters: bool, do_boxplots: bool,
    null_eigenvalues: np.ndarray | None = None, other_rows: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Classification A and/or B of one model; figures written, tables returned (runs in a worker).

    ``other_rows``: the model's rows of another variant (raw when these are
    folded, folded otherwise), whose consensus classes are compared with these.
    """
    from threadpoolctl import threadpool_limits

    from . import class_figures, layer_boxplot_figures

    variant = variant_of(rows)
    circuit = circuit_of(rows)  # named in every figure title beside the variant
    out: dict[str, Any] = {"model": model_id, "variant": variant, "figures": [], "timings": {}}
    family_dir_path = Path(family_dir)
    slug = model_slug(model_id)
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(1):
        warnings.simplefilter("always")
        if do_clusters:
            t0 = time.perf_counter()
            classifier = params.classifier().fit(eigenvalue_matrix(rows), name=model_id)
            t1 = time.perf_counter()
            figure = Path("ESDs") / f"{slug}.{params.format}"
            esd_title = model_id if params.method == "original" else f"{model_id}: {ORIGINAL_CLASSES_NOTE}"
            class_figures.plot_clusters(classifier, family_dir_path / figure, title=esd_title, dpi=params.dpi, variant=variant,
                                        circuit=circuit)  # fmt: skip
            out["timings"]["clusters"] = t1 - t0
            out["timings"]["clusters figures"] = time.perf_counter() - t1
            out["classes"] = classifier.class_table().assign(model=model_id)[CLASS_COLUMNS]
            out["labels"] = label_table(model_id, rows, classifier.labels_)
            out["embedding"] = html_report.embedding_table(model_id, rows, classifier)
            out["figures"].append(figure.as_posix())
            if params.method == "consensus":
                t0 = time.perf_counter()
                result = consensus.analyze(model_id, rows, params.features, params.k, params.n_bins, params.quantile,
                                           params.seed, null_eigenvalues)  # fmt: skip
                figure = Path("consensus") / f"{slug}.{params.format}"
                consensus.plot_consensus(result, family_dir_path / figure, title=f"{model_id}: consensus classes",
                                         dpi=params.dpi, variant=variant, circuit=circuit)  # fmt: skip
                out["figures"].append(figure.as_posix())
                from . import class_profiles

                figure = Path("consensus") / f"{slug}_class_profiles.{params.format}"
                named = dict(zip(result.consensus_classes["class"], result.consensus_classes["name"]))
                class_profiles.plot_profiles(result.class_profiles, named, family_dir_path / figure,
                                             f"{model_id}: singular-value profile of each class", params.dpi, variant,
                                             circuit)  # fmt: skip
                out["figures"].append(figure.as_posix())
                out["consensus"] = result.tables()
                out["k"] = result.k
                out["embedding"] = with_consensus_classes(out["embedding"], result.consensus_labels)
                if other_rows is not None and len(other_rows):
                    from . import variants_compare

                    pair = sorted([(variant, rows), (variant_of(other_rows), other_rows)],
                                  key=lambda item: item[0] != "raw")  # raw first: transitions read raw -> folded
                    summary, moves = variants_compare.compare(model_id, pair[0][1], pair[1][1], (pair[0][0], pair[1][0]),
                                                              params.features, params.k, params.n_bins, params.quantile, params.seed)  # fmt: skip
                    out["consensus"] = {**out["consensus"], "variants_ari": summary, "variants_transitions": moves}
                out["timings"]["consensus"] = time.perf_counter() - t0
        if do_boxplots:
            t0 = time.perf_counter()
            results = layer_boxplots.layer_stats(rows, list(params.stats), params.skip_layers_below, model_id)
            t1 = time.perf_counter()
            titles, skipped = None, None
            if params.method == "consensus":  # tests first: the box plots' titles show them, not the asymptotic p
                t2 = time.perf_counter()
                tested = [layer_permutation_tests.series_tests(model_id, r.stat, r.medians, r.p_value, params.permutations,
                                                   params.min_layers, params.seed) for r in results]  # fmt: skip
                legacy = bool((rows["variant"] == "legacy").any())
                out["layer_tests"] = layer_permutation_tests.layer_test_table(tested).assign(legacy_pairing_error=legacy)
                titles = [layer_permutation_tests.figure_title_text(r, params.permutations, params.min_layers)
                          for r in out["layer_tests"].to_dict("records")]  # fmt: skip
                skipped = layer_boxplots.skipped_layers_text(rows, params.skip_layers_below)
                out["timings"]["layer tests"] = time.perf_counter() - t2
            t1 = time.perf_counter()
            figures = [Path("plots") / res.stat / f"{slug}_{res.stat}_box.{params.format}" for res in results]
            layer_boxplot_figures.plot_layer_stats(results, [family_dir_path / f for f in figures], dpi=params.dpi, variant=variant,
                                                   tests=titles, skipped=skipped, circuit=circuit)  # fmt: skip
            out["figures"].extend(f.as_posix() for f in figures)
            out["timings"]["boxplots"] = t1 - t0
            out["timings"]["boxplots figures"] = time.perf_counter() - t1
            out["bds"] = layer_boxplots.bds_table(results).assign(p_value_kind=layer_permutation_tests.ASYMPTOTIC_LABEL)
    out["warnings"] = _recorded(caught)
    return out


def taxonomy_task(heads: list[taxonomy.ModelHeads], family_dir: str, family: str, params: Params,
                  order: Sequence[str] | None = None, variant: str | Sequence[str] | None = None,
                  circuit: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Fit the joint taxonomy and draw its figures (models in ``order``); tables returned (worker or in-process).

    ``variant``, ``circuit``: the variant(s) and circuit of the models' spectra, named in the figures' titles.
    """
    from threadpoolctl import threadpool_limits

    from . import class_figures

    family_dir_path = Path(family_dir)
    out: dict[str, Any] = {"timings": {}}
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(1):
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        classifier = params.classifier(embedding=None, canonical_order=True)
        joint = taxonomy.joint_taxonomy(heads, classifier, params.n_bands)
        t1 = time.perf_counter()
        out["frames"] = {
            "taxonomy_classes": joint.class_table(),
            "taxonomy_labels": joint.labels[["model", "layer", "head", "band", "class"]],
            "taxonomy_shares_model": joint.shares_by_model(),
            "taxonomy_shares_depth": joint.shares_by_depth(),
        }
        title = f"{family}: joint taxonomy of {len(heads)} model(s)"
        names = [f"taxonomy/classes.{params.format}", f"taxonomy/depth.{params.format}"]
        class_figures.plot_taxonomy_classes(joint, family_dir_path / names[0], title=title, order=order, dpi=params.dpi,
                                            variant=variant, circuit=circuit)  # fmt: skip
        class_figures.plot_taxonomy_depth(joint, family_dir_path / names[1], title=f"{family}: class shares by relative depth",
                                          order=order, dpi=params.dpi, variant=variant, circuit=circuit)  # fmt: skip
        out["figures"] = names
        if params.method == "consensus":  # the default method's joint classes: structure test first, k = 1 possible
            from . import joint_consensus

            t2 = time.perf_counter()
            fitted = joint_consensus.joint_consensus(heads, params.features, params.k, params.n_bins, params.quantile,
                                                     params.seed, params.n_bands)  # fmt: skip
            out["frames"].update(fitted.tables())
            out["timings"]["taxonomy consensus"] = time.perf_counter() - t2
        out["timings"]["taxonomy"] = t1 - t0
        out["timings"]["taxonomy figures"] = time.perf_counter() - t1
    out["warnings"] = _recorded(caught)
    return out


PARALLEL_MIN_HEADS = 2000
"""Below this many heads a worker's start-up (importing the stack again) costs more than it saves."""

MAX_DEFAULT_JOBS = 4
"""The most workers ``jobs=None`` starts (each imports the whole analysis stack again)."""

JOINT_TASK = "<joint taxonomy>"
TAXONOMY_COST_HEADS = 1000
"""Scheduling weight of the joint-taxonomy task, in heads of per-model work."""


def default_jobs(n_models: int, n_heads: int) -> int:
    """Worker processes for ``jobs=None``: one per core (at most 4), only for several models and many heads."""
    from joblib import cpu_count

    if n_models < 2 or n_heads < PARALLEL_MIN_HEADS:
        return 1
    return max(1, min(n_models, cpu_count(), MAX_DEFAULT_JOBS))


@dataclass
class Task:
    """One unit of work for :func:`run_tasks`: ``fn(*args)``, scheduled by decreasing ``cost``."""

    key: str
    cost: float
    fn: Callable[..., dict[str, Any]]
    args: tuple


def _keyed(key: str, fn: Callable[..., dict[str, Any]], args: tuple) -> tuple[str, dict[str, Any]]:
    return key, fn(*args)


def run_tasks(tasks: list[Task], jobs: int = 1, progress: bool = True, desc: str = "models") -> dict[str, dict[str, Any]]:
    """Run the tasks with joblib: in-process and in order (``jobs <= 1``) or in worker processes, largest first.

    Each task records its warnings; they are re-issued here in task order, so
    the output does not depend on ``jobs``.
    """
    from joblib import Parallel, delayed

    from ..progress import progress_bar

    jobs = max(1, min(int(jobs), len(tasks)))
    order = tasks if jobs == 1 else sorted(tasks, key=lambda t: -t.cost)  # longest first: the workers finish together
    parallel = Parallel(n_jobs=jobs, return_as="generator_unordered", max_nbytes=None)
    results: dict[str, dict[str, Any]] = {}
    with progress_bar(None, progress, file=sys.stderr, total=len(tasks), desc=desc, unit="task") as bar:
        for key, result in parallel(delayed(_keyed)(task.key, task.fn, task.args) for task in order):
            results[key] = result
            bar.set_postfix_str(key, refresh=False)
            bar.update(1)
    for task in tasks:
        _replay(results[task.key].pop("warnings", []))
    return {task.key: results[task.key] for task in tasks}


# ---------------------------------------------------------------- stages


def _family_dir(out: str | os.PathLike, family: str) -> Path:
    return Path(os.path.expanduser(os.fspath(out))) / family


def _model_tasks(models, family_dir: Path, params: Params, do_clusters: bool, do_boxplots: bool,
                 null_rows: dict[str, np.ndarray] | None = None,
                 other: dict[str, pd.DataFrame] | None = None) -> list[Task]:  # fmt: skip
    null_rows, other = null_rows or {}, other or {}
    return [
        Task(model_id, float(len(rows)), analyze_model,
             (model_id, rows, str(family_dir), params, do_clusters, do_boxplots, null_rows.get(model_id),
              other.get(model_id)))  # fmt: skip
        for model_id, rows in models
    ]


def _jobs(jobs: int | None, models) -> int:
    """``jobs``, or :func:`default_jobs` for these models when None."""
    n_heads = sum(len(rows) for _, rows in models)
    return default_jobs(len(models), n_heads) if jobs is None else max(1, int(jobs))


def _add_timings(outputs: Outputs, results: Sequence[dict[str, Any]], scope: str = "per model") -> None:
    """Add the stage times of task results to ``outputs.timings``, each key saying what it measures.

    ``scope="per model"``: a stage's times are summed over the models that ran
    it, labelled ``(sum over N models)`` (worker time: with several jobs they
    overlap); ``"joint"``: the one joint-taxonomy task, labelled ``(joint, all models)``.
    """
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for result in results:
        for key, value in result.get("timings", {}).items():
            sums[key] = sums.get(key, 0.0) + float(value)
            counts[key] = counts.get(key, 0) + 1
    for key, total in sums.items():
        if scope == "joint":
            name = f"{key} (joint, all models)"
        else:
            name = f"{key} (sum over {counts[key]} model{'s' if counts[key] != 1 else ''})"
        outputs.timings[name] = outputs.timings.get(name, 0.0) + total


def _in_order(outputs: Outputs, table: pd.DataFrame) -> pd.DataFrame:
    """``table``'s rows with its models in the display order (:attr:`Outputs.order`, by size), stably."""
    return html_report.in_display_order(table, outputs.order) if outputs.order else table


def _store_models(outputs: Outputs, results: list[dict[str, Any]], do_clusters: bool, do_boxplots: bool,
                  method: str = DEFAULT_METHOD) -> None:  # fmt: skip
    """Write the per-model tables from the results (model order) and record the figures.

    The original method's ``classes``/``labels``/``bds`` tables (its single
    KMeans depends on the row order, its BDS p-values are asymptotic) only
    under ``method="original"``; the default method writes its own.
    """
    tables = outputs.family_dir / TABLES
    variants = {r["model"]: r.get("variant", "") for r in results}
    for r in results:
        outputs.figures.setdefault(r["model"], []).extend(r["figures"])
    original = method == "original"
    if do_clusters:
        outputs.frames["embedding"] = pd.concat([r["embedding"] for r in results], ignore_index=True)
    if do_clusters and original:
        classes = _in_order(outputs, with_variant(pd.concat([r["classes"] for r in results], ignore_index=True), variants))
        labels = _in_order(outputs, with_variant(pd.concat([r["labels"] for r in results], ignore_index=True), variants))
        write_table(classes, tables / "classes.csv")
        write_table(labels, tables / "labels.csv")
        outputs.tables["classes"] = f"{TABLES}/classes.csv"
        outputs.tables["labels"] = f"{TABLES}/labels.csv"
        outputs.frames["classes"] = classes
        outputs.frames["labels"] = labels
    if do_boxplots and original:
        bds = _in_order(outputs, with_variant(pd.concat([r["bds"] for r in results], ignore_index=True), variants))
        write_table(bds, tables / "bds.csv")
        outputs.tables["bds"] = f"{TABLES}/bds.csv"
        outputs.frames["bds"] = bds
    per_model = {name: [r["consensus"][name] for r in results if len(r.get("consensus", {}).get(name, ()))]
                 for name in CONSENSUS_TABLES}  # fmt: skip
    per_model["layer_tests"] = [r["layer_tests"] for r in results if "layer_tests" in r]
    for name, parts in per_model.items():
        if parts:
            table = pd.concat(parts, ignore_index=True).sort_values("model", kind="stable", ignore_index=True)
            if name == "layer_tests":  # Holm across every test of the report, beside the per-model column;
                # the original's asymptotic p-value is invalid at these lengths: only whether it called the series
                # significant is kept (original_significant), never the number
                table = layer_permutation_tests.correct_across(table).drop(columns=["p_bds_asymptotic", "p_bds_asymptotic_kind"])
            table = _in_order(outputs, with_variant(table, variants))
            write_table(table, tables / f"{name}.csv")
            outputs.tables[name] = f"{TABLES}/{name}.csv"
            outputs.frames[name] = table
    _add_timings(outputs, results)


def _store_taxonomy(outputs: Outputs, result: dict[str, Any], variants: dict[str, str]) -> None:
    """Write the joint taxonomy's tables, each with a ``variant`` column (per model, or all models' for the classes)."""
    tables = outputs.family_dir / TABLES
    pooled = "+".join(sorted(set(variants.values())))
    for name, table in result["frames"].items():
        table = _in_order(outputs, with_variant(table, variants if "model" in table.columns else pooled))
        write_table(table, tables / f"{name}.csv")
        outputs.tables[name] = f"{TABLES}/{name}.csv"
        outputs.frames[name] = table
    outputs.figures["taxonomy"] = list(result["figures"])
    _add_timings(outputs, [result], scope="joint")


def _store_crosswalk(outputs: Outputs) -> None:
    """``tables/crosswalk.csv``: each model's consensus classes against the joint ones, the original's joint KMeans
    against the joint consensus (heads per pair of classes, ARI per model); default method only."""
    from .joint_consensus import crosswalk

    joint = outputs.frames.get("taxonomy_consensus_labels")
    if joint is None:
        return
    parts = []
    if outputs.frames.get("consensus_labels") is not None:
        parts.append(_in_order(outputs, crosswalk(outputs.frames["consensus_labels"], joint, "per-model consensus", "joint consensus")))
    if outputs.frames.get("taxonomy_labels") is not None:
        parts.append(_in_order(outputs, crosswalk(outputs.frames["taxonomy_labels"], joint, "joint original KMeans", "joint consensus")))
    if parts:
        table = pd.concat(parts, ignore_index=True)
        write_table(table, outputs.family_dir / TABLES / "crosswalk.csv")
        outputs.tables["crosswalk"] = f"{TABLES}/crosswalk.csv"
        outputs.frames["crosswalk"] = table


def run_clusters(
    frame: pd.DataFrame, out: str | os.PathLike, family: str, params: Params | None = None,
    jobs: int | None = None, progress: bool = True, outputs: Outputs | None = None,
) -> Outputs:
    """Classification A for every model of ``frame``: ESD figures; ``classes.csv``, ``labels.csv`` under ``method="original"``.

    The default method writes its consensus tables instead (``consensus_*``, ``k_selection``, ...).
    """
    return _run_per_model(frame, out, family, params or Params(), jobs, progress, outputs, True, False)


def run_boxplots(
    frame: pd.DataFrame, out: str | os.PathLike, family: str, params: Params | None = None,
    jobs: int | None = None, progress: bool = True, outputs: Outputs | None = None,
) -> Outputs:
    """Classification B for every model of ``frame``: box plots; ``bds.csv`` under ``method="original"``, else ``layer_tests.csv``."""
    return _run_per_model(frame, out, family, params or Params(), jobs, progress, outputs, False, True)


def _run_per_model(frame, out, family, params, jobs, progress, outputs, do_clusters, do_boxplots) -> Outputs:
    family_dir = _family_dir(out, family)
    outputs = outputs or Outputs(family_dir)
    models = split_models(frame)
    outputs.models = [m for m, _ in models]
    outputs.order = outputs.order or html_report.size_order(frame)
    desc = "clusters" if do_clusters else "boxplots"
    t0 = time.perf_counter()
    results = run_tasks(_model_tasks(models, family_dir, params, do_clusters, do_boxplots), _jobs(jobs, models), progress, desc)
    outputs.timings[f"{desc} (wall)"] = time.perf_counter() - t0
    _store_models(outputs, list(results.values()), do_clusters, do_boxplots, params.method)
    label_tables(outputs, circuit_of(frame))
    return outputs


def model_variants(frame: pd.DataFrame) -> dict[str, str]:
    """Per model of ``frame``: :func:`variant_of` its rows."""
    return {model_id: variant_of(rows) for model_id, rows in split_models(frame)}


def model_heads(frame: pd.DataFrame) -> list[taxonomy.ModelHeads]:
    """Per model: eigenvalues, layers, heads and n_layers (from the column, else max layer + 1)."""
    out = []
    for model_id, rows in split_models(frame):
        n_layers = rows["n_layers"].dropna()
        n = int(n_layers.iloc[0]) if len(n_layers) else int(rows["layer"].max()) + 1
        out.append(
            taxonomy.ModelHeads(model_id, eigenvalue_matrix(rows), rows["layer"].to_numpy(), rows["head"].to_numpy(), n)
        )
    return out


def run_taxonomy(
    frame: pd.DataFrame, out: str | os.PathLike, family: str, params: Params | None = None,
    progress: bool = True, outputs: Outputs | None = None,
) -> Outputs:
    """Joint taxonomy across the models of ``frame``: figures under ``taxonomy/``, tables under ``tables/``."""
    params = params or Params()
    family_dir = _family_dir(out, family)
    outputs = outputs or Outputs(family_dir)
    if not outputs.models:
        outputs.models = list(dict.fromkeys(frame["model_id"].tolist()))
    outputs.order = outputs.order or html_report.size_order(frame)
    t0 = time.perf_counter()
    variants = model_variants(frame)
    result = taxonomy_task(model_heads(frame), str(family_dir), family, params, html_report.size_order(frame),
                           sorted(set(variants.values())), circuit_of(frame))  # fmt: skip
    _replay(result.pop("warnings", []))
    outputs.timings["taxonomy (wall)"] = time.perf_counter() - t0
    _store_taxonomy(outputs, result, variants)
    label_tables(outputs, circuit_of(frame))
    return outputs


# ---------------------------------------------------------------- index


_FORMATS = {"alpha": "{:.2f}", "theta": "{:.2f}", "jsd": "{:.3f}", "share": "{:.1%}", "bds": "{:.2f}", "p_value": "{:.2e}",
            "p_bds_asymptotic": "{:.2e}", "p_bds_permutation_holm": "{:.3f}", "p_trend_permutation_holm": "{:.3f}"}
"""As the original figures print them: alpha/theta to 2 decimals, JSD to 3, BDS 2, p-values 2e."""

INDEX_TEMPLATE = "index.md"
_TEMPLATES = Path(__file__).parents[1] / "templates"


def format_value(value: Any, column: str = "") -> str:
    """A table cell or number for the index: floats by column (:data:`_FORMATS`, else 4 significant digits), NaN as NaN."""
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            return "NaN"
        return _FORMATS.get(column, "{:.4g}").format(value)
    return str(value)


def _model_section(model: str, figures: list[str], classes: pd.DataFrame | None, bds: pd.DataFrame | None) -> dict:
    """What the index shows of one model: its ESD figure, class table and box plots with their BDS."""
    boxes = []
    for path in (f for f in figures if f.startswith("plots/")):
        stat = Path(path).parent.name
        row = bds[(bds["model"] == model) & (bds["stat"] == stat)] if bds is not None else []
        found = len(row) > 0
        boxes.append({"stat": stat, "path": path, "bds": float(row["bds"].iloc[0]) if found else None,
                      "p_value": float(row["p_value"].iloc[0]) if found else None})  # fmt: skip
    esd = [f for f in figures if f.startswith("ESDs/")]
    return {
        "id": model,
        "esd": esd[0] if esd else None,
        "classes": None if classes is None else classes[classes["model"] == model].drop(columns=["model", "variant", "circuit"], errors="ignore"),
        "boxes": boxes,
    }


def _rows_of(outputs: Outputs, name: str, model: str, columns: Sequence[str]) -> pd.DataFrame | None:
    """The rows of table ``name`` for ``model``, these ``columns`` (None when the run has no such table)."""
    table = outputs.frames.get(name)
    if table is None or not len(table):
        return None
    rows = table[table["model"] == model]
    return rows[[c for c in columns if c in rows.columns]] if len(rows) else None


def _consensus_section(outputs: Outputs, model: str) -> dict:
    """What the index shows of a model's default-method results (empty under --method original)."""
    figure = [f for f in outputs.figures.get(model, []) if f.startswith("consensus/") and "_class_profiles." not in f]
    profiles = [f for f in outputs.figures.get(model, []) if f.startswith("consensus/") and "_class_profiles." in f]
    by_offset = [f for f in outputs.figures.get(model, []) if f.startswith("positional/")]
    scan = _rows_of(outputs, "k_selection", model, ["k", "stability_ari_mean", "silhouette", "chosen"])
    chosen = None if scan is None else int(scan.loc[scan["chosen"], "k"].iloc[0])
    return {
        "figure": figure[0] if figure else None,
        "positional": by_offset[0] if by_offset else None,
        "class_profiles": profiles[0] if profiles else None,
        "maps": [f for f in outputs.figures.get(model, []) if f.startswith("maps/")],
        "k": chosen,
        "classes": _rows_of(outputs, "consensus_classes", model, ["class", "name", "n_heads", "share", "confidence_mean"]),
        "structure": _rows_of(outputs, "structure", model, ["statistic", "null_median", "null_q05", "p_value", "n_draws",
                                                            "seed", "conclusion", "k"]),
        "metrics": _rows_of(outputs, "class_metrics", model, ["class", "metric", "class_median", "class_q25", "class_q75",
                                                              "others_median", "auc_vs_others", "auc_low", "auc_high"]),
        "stability": _rows_of(outputs, "stability", model, ["perturbation", "n", "ari_median", "ari_min", "ari_q05", "ari_q95"]),
        "null": _rows_of(outputs, "null_classes", model, ["class", "n_heads", "median_ks_distance", "ks_excess",
                                                          "ks_excess_low", "ks_excess_high", "median_fraction_outside",
                                                          "share_beyond_null", "mc_ks_q99", "mc_ks_q99_low", "mc_ks_q99_high",
                                                          "distinguishable_from_gaussian",
                                                          "distinguishable_from_null_variant"]),
        "variants": _rows_of(outputs, "variants_ari", model, ["variant_a", "variant_b", "n_heads", "k_a", "k_b", "ari"]),
        "tests": _rows_of(outputs, "layer_tests", model, ["stat", "n_layers", "bds", "p_bds_permutation_holm",
                                                          "p_bds_permutation_holm_all", "trend_rho", "trend_rho_low",
                                                          "trend_rho_high", "p_trend_permutation_holm",
                                                          "p_trend_permutation_holm_all", "profile_r2",
                                                          "p_profile_permutation_holm", "p_profile_permutation_holm_all",
                                                          "survives", "note"]),
        "power": _rows_of(outputs, "layer_tests", model, ["power_note"]),
    }  # fmt: skip


def render_index(
    outputs: Outputs, family: str, dataset: str, revision: str | None, params: Params, frame: pd.DataFrame
) -> str:
    """The text of ``index.md`` (template ``templates/index.md``): the run's provenance, tables and figures."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES), trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined, autoescape=False,
    )  # fmt: skip
    env.filters["fmt"] = format_value
    env.filters["md"], env.filters["code"] = md_text, md_code  # user text (model ids, names) shown as itself
    joint = outputs.frames.get("taxonomy_classes")
    variants = model_variants(frame) if len(frame) else {}
    text = env.get_template(INDEX_TEMPLATE).render(
        family=family,
        dataset=dataset,
        revision=revision,
        version=__version__,
        n_heads=len(frame),
        variants=sorted(map(str, frame["variant"].unique())) if len(frame) else [],
        parameters={k: ",".join(v) if isinstance(v, tuple) else v for k, v in asdict(params).items()},
        tables=outputs.tables,
        joint_classes=None if joint is None else joint.drop(columns=["variant", "circuit"], errors="ignore"),
        joint_variant=None if joint is None or "variant" not in joint else "+".join(sorted(set(map(str, joint["variant"])))),
        joint_figures=outputs.figures.get("taxonomy", []),
        joint_consensus={name: outputs.frames.get(name) for name in JOINT_CONSENSUS_TABLES if outputs.frames.get(name) is not None},
        models=[
            {**_model_section(m, outputs.figures.get(m, []), outputs.frames.get("classes"), outputs.frames.get("bds")),
             "consensus": _consensus_section(outputs, m), "variant": variants.get(m)}
            for m in outputs.models
        ],
        method=params.method,
        legacy=bool(len(frame)) and bool((frame["variant"] == "legacy").any()),
        summary=run_summary(outputs, frame, "markdown"),
    )
    return text.rstrip() + "\n"


def run_summary(outputs: Outputs, frame: pd.DataFrame, form: str = "markdown") -> str:
    """The summary of what the run found (:mod:`.summary`), from the tables it wrote, as Markdown or HTML."""
    from . import summary

    order = html_report.size_order(frame) if len(frame) else list(outputs.models)
    lines = summary.summarize(summary.read_tables(outputs.family_dir, outputs.tables), outputs.tables, order)
    return summary.to_html(lines) if form == "html" else summary.to_markdown(lines)


def write_index(
    outputs: Outputs, family: str, dataset: str, revision: str | None, params: Params, frame: pd.DataFrame
) -> Path:
    """``index.md`` linking every figure and table of the run, written atomically."""
    return write_text(outputs.family_dir / "index.md", render_index(outputs, family, dataset, revision, params, frame))


# ---------------------------------------------------------------- everything


ORIGINAL_TABLES = ("classes", "labels", "bds")
"""The tables only ``--method original`` writes (order-dependent KMeans, asymptotic BDS)."""

JOINT_CONSENSUS_TABLES = ("taxonomy_structure", "taxonomy_k_selection", "taxonomy_consensus_classes",
                          "taxonomy_consensus_labels", "taxonomy_stability", "crosswalk")
"""The default method's joint taxonomy (``joint_consensus``) and the crosswalk between class systems."""

DEFAULT_ONLY_TABLES = (*CONSENSUS_TABLES, *JOINT_CONSENSUS_TABLES, "layer_tests", "positional")
"""The tables only the default method writes."""


def remove_stale_tables(outputs: Outputs, method: str) -> list[str]:
    """Remove the other method's tables a previous report left in ``tables/`` (CSV and parquet); returns their names.

    A report replaces its family directory's tables: without this, a default
    run after a ``--method original`` one (or after a version that wrote both)
    would leave ``classes.csv`` beside tables it does not belong with.
    """
    others = DEFAULT_ONLY_TABLES if method == "original" else ORIGINAL_TABLES
    removed = []
    for name in others:
        if name in outputs.tables:
            continue
        for suffix in (".csv", ".parquet"):
            path = outputs.family_dir / TABLES / f"{name}{suffix}"
            if path.is_file():
                path.unlink()
                removed.append(path.name)
    return removed


POSITIONAL_COLUMNS = ("offsets", "positional_singular_values")


def split_positional(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """``(frame without the positional lists, the rows' keys, summaries and lists)``; None when not loaded."""
    if not all(c in frame.columns for c in POSITIONAL_COLUMNS):
        return frame, None
    from .positional import SUMMARY_COLUMNS

    keep = ["model_id", "variant", "layer", "head", "n_layers", "spectral_norm", *POSITIONAL_COLUMNS,
            *(c for c in SUMMARY_COLUMNS if c in frame.columns)]  # fmt: skip
    return frame.drop(columns=list(POSITIONAL_COLUMNS)), frame[keep]


def _store_positional(outputs: Outputs, rows: pd.DataFrame, params: Params,
                      log: Callable[[str], None] | None) -> None:  # fmt: skip
    """Per model with positional spectra: ``positional/<model>`` figure; all of them in ``tables/positional.csv``.

    Models without any (no rotary, built without offsets, legacy or null rows)
    are skipped, with one log line naming them.
    """
    from . import plots, positional

    tables, without = [], []
    for model_id, part in split_models(rows):
        variant = variant_of(part)
        if not positional.has_positional(part):
            without.append(f"{model_id} [{variant}]")
            continue
        table = positional.positional_table(model_id, part, variant)
        n_layers = part["n_layers"].dropna()
        n = int(n_layers.iloc[0]) if len(n_layers) else int(part["layer"].max()) + 1
        figure = f"positional/{model_slug(model_id)}.{params.format}"
        title = (f"{model_id}: each head's spectral norm by query-key offset, s₁(δ) / s₁(0), per layer"
                 + plots.variant_suffix(variant, circuit_of(part)))  # fmt: skip
        positional.plot_positional(table, n, outputs.family_dir / figure, title, params.dpi)
        outputs.figures.setdefault(model_id, []).append(figure)
        tables.append(table)
    if without and log is not None:
        log(f"positional: no positional spectra for {', '.join(without)} (no rotary layers, built without offsets, "
            "or a legacy/null variant): no positional figure for them")  # fmt: skip
    if tables:
        table = pd.concat(tables, ignore_index=True)
        ratio_columns = [positional.ratio_column(d) for d in positional.offsets_of(table)]  # offsets ascending
        table = _in_order(outputs, table[["model", "variant", "layer", "head", *ratio_columns, *positional.SUMMARY_COLUMNS]])
        write_table(table, outputs.family_dir / TABLES / "positional.csv")
        outputs.tables["positional"] = f"{TABLES}/positional.csv"
        outputs.frames["positional"] = table


def null_variant_rows(dataset: str, family: str, revision: str | None, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per model of ``frame``: the eigenvalues of its ``null`` variant rows, where the dataset has them.

    Nothing for legacy data (the original study made no null rows) or when ``frame`` is the null variant itself.
    """
    return {m: eigenvalue_matrix(rows).astype(np.float64) for m, rows in other_variant_rows(dataset, family, revision, frame, "null").items()}


def other_variant_rows(dataset: str, family: str, revision: str | None, frame: pd.DataFrame, variant: str) -> dict[str, pd.DataFrame]:
    """Per model of ``frame``: its rows of another ``variant`` (``null``, ``folded``) where the dataset has them.

    Nothing for legacy data (the original study made no other variants) or when ``frame`` holds ``variant`` itself.
    """
    variants = set(map(str, frame["variant"].unique())) if len(frame) else set()
    if not variants or variants & {"legacy", variant}:
        return {}
    wanted = list(dict.fromkeys(frame["model_id"].tolist()))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            other = load_spectra(dataset, family, revision=revision, models=wanted, variant=variant, skip_nonfinite=True,
                                 circuit=circuit_of(frame))  # fmt: skip
    except AnalysisError:
        return {}
    return dict(split_models(other))


def run_report(
    dataset: str,
    family: str,
    out: str | os.PathLike = "analysis",
    revision: str | None = None,
    models: str | Sequence[str] | None = None,
    variant: str | None = None,
    skip_nonfinite: bool = False,
    params: Params | None = None,
    jobs: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    circuit: str = "qk",
) -> Outputs:
    """Load a config, run classification A and B per model and the joint taxonomy, write the index.

    The per-model work and the joint taxonomy are independent tasks; with
    ``jobs > 1`` they share one worker pool. ``jobs=None``: see :func:`default_jobs`.
    ``circuit``: the rows analysed, ``qk`` (default) or ``ov`` (schema v4); every table gets a ``circuit`` column
    and every figure title names it. Where the dataset has both, the "QK and OV" section pairs them (:mod:`.circuits`).
    """
    params = params or Params()
    family = str(family)
    swept = sweep_stale_temporaries(_family_dir(out, family))  # left by a killed report
    if swept and log is not None:
        log(f"removed {len(swept)} temporary file(s) an interrupted report left in {_family_dir(out, family)}")
    t0 = time.perf_counter()
    frame = load_spectra(dataset, family, revision=revision, models=models, variant=variant, skip_nonfinite=skip_nonfinite,
                         keep_positional=params.method == "consensus", circuit=circuit)  # fmt: skip
    frame, positional_rows = split_positional(frame)  # the workers need only the eigenvalues
    family_dir = _family_dir(out, family)
    outputs = Outputs(family_dir)
    outputs.timings["load"] = time.perf_counter() - t0
    per_model = split_models(frame)
    outputs.models = [m for m, _ in per_model]
    outputs.order = html_report.size_order(frame) if len(frame) else []
    null_rows = null_variant_rows(dataset, family, revision, frame) if params.method == "consensus" else {}
    other = {}
    if params.method == "consensus":  # raw against folded where the dataset has both (whichever this run analyses)
        other = {**other_variant_rows(dataset, family, revision, frame, "raw"),
                 **other_variant_rows(dataset, family, revision, frame, "folded")}  # fmt: skip
    tasks = _model_tasks(per_model, family_dir, params, True, True, null_rows, other)
    variants = model_variants(frame)
    tasks.append(Task(JOINT_TASK, float(TAXONOMY_COST_HEADS), taxonomy_task,
                      (model_heads(frame), str(family_dir), family, params, html_report.size_order(frame),
                       sorted(set(variants.values())), circuit_of(frame))))  # fmt: skip
    t1 = time.perf_counter()
    n_jobs = _jobs(jobs, per_model)
    results = run_tasks(tasks, n_jobs, progress, desc="report")
    outputs.timings[f"analysis (wall, jobs={n_jobs})"] = time.perf_counter() - t1
    taxonomy_result = results.pop(JOINT_TASK)
    _store_models(outputs, list(results.values()), True, True, params.method)
    _store_taxonomy(outputs, taxonomy_result, variants)
    t2 = time.perf_counter()
    from .head_maps import store_head_maps
    from .plots import variant_suffix

    store_head_maps(outputs, frame, params.format, params.dpi,
                    lambda model: variant_suffix(variants.get(model), circuit_of(frame)))  # fmt: skip
    outputs.timings["layer x head maps (wall, all models)"] = time.perf_counter() - t2
    _store_crosswalk(outputs)
    if positional_rows is not None:
        t2 = time.perf_counter()
        _store_positional(outputs, positional_rows, params, log)
        outputs.timings["positional (table + figures)"] = time.perf_counter() - t2
    from .behaviour import append_section, store_behaviour

    t2 = time.perf_counter()
    behaviour_section = store_behaviour(outputs, frame, params, log)  # None when no row has behaviour scores
    if behaviour_section is not None:
        outputs.timings["behaviour (tests + figures)"] = time.perf_counter() - t2
    from .circuits import store_circuits

    t2 = time.perf_counter()
    circuits_section = store_circuits(outputs, frame, str(dataset), family, revision, params, log, outputs.order)
    if circuits_section is not None:
        outputs.timings["QK and OV (tables + figures)"] = time.perf_counter() - t2
    label_tables(outputs, circuit_of(frame))
    removed = remove_stale_tables(outputs, params.method)
    if removed and log is not None:
        log(f"removed tables of the other method left by a previous report: {', '.join(removed)}")
    t2 = time.perf_counter()
    write_index(outputs, family, str(dataset), revision, params, frame)
    if behaviour_section is not None:
        append_section(outputs.family_dir / "index.md", behaviour_section)
    if circuits_section is not None:
        append_section(outputs.family_dir / "index.md", circuits_section)
    html_report.write_html(outputs, family, str(dataset), revision, params, frame,
                           html_report.size_order(frame))  # fmt: skip
    outputs.timings["tables + index"] = time.perf_counter() - t2
    outputs.timings["total"] = time.perf_counter() - t0
    if log is not None:
        log("timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in outputs.timings.items()))
    return outputs
