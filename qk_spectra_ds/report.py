"""Run the analysis of one config and write its figures, tables and index.

Output layout under ``<out>/<family>/``::

    ESDs/<model>.png                      classification A figure per model
    plots/<STAT>/<model>_<STAT>_box.png   classification B figure per model and statistic
    taxonomy/classes.png, depth.png       joint taxonomy figures
    tables/classes.csv                    model, class, n_heads, alpha, theta, jsd
    tables/labels.csv                     model, layer, head, class
    tables/bds.csv                        model, stat, bds, p_value, n_layers
    tables/taxonomy_*.csv                 joint classes, labels, shares per model and per depth
    index.md                              links to every figure and table

``<model>`` is the file slug of the model id (``Qwen/Qwen3-0.6B`` ->
``Qwen--Qwen3-0.6B``). Each model (classification A and B) and the joint
taxonomy is one task; with ``jobs > 1`` the tasks run in a pool of worker
processes (a forkserver with the heavy modules preloaded, largest tasks
first), by default one per idle core for configs of 2,000+ heads. Results do
not depend on ``jobs``: KMeans runs single-threaded, UMAP is seeded, warnings
are replayed in task order, tables are sorted and written atomically, PNGs
carry no timestamp, so a rerun gives byte-identical files.
"""

from __future__ import annotations

import io
import math
import multiprocessing
import os
import sys
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from . import __version__, features, layer_stats, taxonomy
from .atomic import write_text
from .dataset_repo import model_slug
from .loading import AnalysisError, eigenvalue_matrix, load_spectra, split_models

TABLES = "tables"


@dataclass
class Params:
    """Every knob of the analysis, defaults as the original study."""

    n_clusters: int = taxonomy.N_CLUSTERS
    n_bins: int = features.N_BINS
    quantile: float = features.QUANTILE
    seed: int = taxonomy.SEED
    skip_layers_below: int = layer_stats.SKIP_LAYERS_BELOW
    stats: tuple[str, ...] = layer_stats.STAT_NAMES
    n_bands: int = taxonomy.N_BANDS

    def __post_init__(self) -> None:
        self.n_clusters = int(self.n_clusters)
        self.n_bins = int(self.n_bins)
        self.quantile = float(self.quantile)
        self.seed = int(self.seed)
        self.skip_layers_below = int(self.skip_layers_below)
        self.stats = tuple(layer_stats.parse_stats(self.stats))
        self.n_bands = int(self.n_bands)
        if self.n_clusters < 1:
            raise AnalysisError(f"--n_clusters must be >= 1, got {self.n_clusters}")
        if self.n_bins < 1:
            raise AnalysisError(f"--n_bins must be >= 1, got {self.n_bins}")
        if not 0.0 < self.quantile <= 1.0:
            raise AnalysisError(f"--quantile must be in (0, 1], got {self.quantile}")
        if self.n_bands < 1:
            raise AnalysisError(f"--n_bands must be >= 1, got {self.n_bands}")


@dataclass
class Outputs:
    """What a run wrote (paths relative to the family directory) and how long each stage took."""

    family_dir: Path
    figures: dict[str, list[str]] = field(default_factory=dict)
    tables: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- tables


def write_table(frame: pd.DataFrame, path: Path) -> Path:
    """CSV, atomically, floats in shortest round-trip form (byte-identical reruns)."""
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, lineterminator="\n")
    return write_text(path, buffer.getvalue())


# ---------------------------------------------------------------- per-model work (in a worker)


def _replay(caught: Sequence[tuple[type, str]]) -> None:
    for category, message in caught:
        warnings.warn(message, category, stacklevel=3)


def _recorded(caught) -> list[tuple[type, str]]:
    relevant = [w for w in caught if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning))]
    return [(w.category, str(w.message)) for w in relevant]


def analyze_model(
    model_id: str, rows: pd.DataFrame, family_dir: str, params: Params, do_clusters: bool, do_boxplots: bool
) -> dict[str, Any]:
    """Classification A and/or B of one model; figures written, tables returned (runs in a worker)."""
    from threadpoolctl import threadpool_limits

    from . import plots

    out: dict[str, Any] = {"model": model_id, "figures": [], "timings": {}}
    family_dir_path = Path(family_dir)
    slug = model_slug(model_id)
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(1):
        warnings.simplefilter("always")
        if do_clusters:
            t0 = time.perf_counter()
            result = taxonomy.cluster_model(
                eigenvalue_matrix(rows),
                model_id=model_id,
                layers=rows["layer"].to_numpy(),
                heads=rows["head"].to_numpy(),
                n_clusters=params.n_clusters,
                n_bins=params.n_bins,
                quantile=params.quantile,
                seed=params.seed,
            )
            t1 = time.perf_counter()
            figure = Path("ESDs") / f"{slug}.png"
            plots.plot_clusters(result, family_dir_path / figure, title=model_id)
            out["timings"]["clusters"] = t1 - t0
            out["timings"]["clusters figures"] = time.perf_counter() - t1
            out["classes"] = result.class_table()
            out["labels"] = result.label_table()
            out["figures"].append(figure.as_posix())
        if do_boxplots:
            t0 = time.perf_counter()
            results = layer_stats.layer_stats(rows, list(params.stats), params.skip_layers_below, model_id)
            t1 = time.perf_counter()
            figures = [Path("plots") / res.stat / f"{slug}_{res.stat}_box.png" for res in results]
            plots.plot_layer_stats(results, [family_dir_path / f for f in figures])
            out["figures"].extend(f.as_posix() for f in figures)
            out["timings"]["boxplots"] = t1 - t0
            out["timings"]["boxplots figures"] = time.perf_counter() - t1
            out["bds"] = layer_stats.bds_table(results)
    out["warnings"] = _recorded(caught)
    return out


def taxonomy_task(heads: list[taxonomy.ModelHeads], family_dir: str, family: str, params: Params) -> dict[str, Any]:
    """Fit the joint taxonomy and draw its figures; tables returned (runs in a worker or in-process)."""
    from threadpoolctl import threadpool_limits

    from . import plots

    family_dir_path = Path(family_dir)
    out: dict[str, Any] = {"timings": {}}
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(1):
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        joint = taxonomy.joint_taxonomy(
            heads, n_clusters=params.n_clusters, n_bins=params.n_bins, quantile=params.quantile,
            seed=params.seed, n_bands=params.n_bands,
        )
        t1 = time.perf_counter()
        out["frames"] = {
            "taxonomy_classes": joint.class_table(),
            "taxonomy_labels": joint.labels[["model", "layer", "head", "band", "class"]],
            "taxonomy_shares_model": joint.shares_by_model(),
            "taxonomy_shares_depth": joint.shares_by_depth(),
        }
        title = f"{family}: joint taxonomy of {len(heads)} model(s)"
        plots.plot_taxonomy_classes(joint, family_dir_path / "taxonomy" / "classes.png", title=title)
        plots.plot_taxonomy_depth(
            joint, family_dir_path / "taxonomy" / "depth.png", title=f"{family}: class shares by relative depth"
        )
        out["figures"] = ["taxonomy/classes.png", "taxonomy/depth.png"]
        out["timings"]["taxonomy"] = t1 - t0
        out["timings"]["taxonomy figures"] = time.perf_counter() - t1
    out["warnings"] = _recorded(caught)
    return out


_PRELOAD = [
    "numpy",
    "pandas",
    "scipy.optimize",
    "scipy.stats",
    "scipy.interpolate",
    "sklearn.cluster",
    "threadpoolctl",
    "umap",
    "matplotlib",
    "matplotlib.backends.backend_agg",
    "PIL.Image",
    "statsmodels.tsa.stattools",
    "qk_spectra_ds.report",
    "qk_spectra_ds.plots",
]

PARALLEL_MIN_HEADS = 2000
"""Below this many heads a worker pool's start-up (importing the stack again) costs more than it saves."""

JOINT_TASK = "<joint taxonomy>"
TAXONOMY_COST_HEADS = 1000
"""Scheduling weight of the joint-taxonomy task, in heads of per-model work."""


def default_jobs(n_models: int, n_heads: int | None = None) -> int:
    """Worker processes for ``jobs=None``: one per idle core, only for several models and many heads.

    Idle cores = usable CPUs minus the work of other processes, taken as the smaller
    of the 1-minute load average and the processes runnable right now (besides this
    one): a machine busy with a long job runs in-process, while one that has just
    finished a job (load average still high) gets its cores. Results never depend on it.
    """
    if n_models < 2 or (n_heads is not None and n_heads < PARALLEL_MIN_HEADS):
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(n_models, cpus, 4, int(cpus - _other_load() + 0.5)))


def _other_load() -> float:
    """CPU demand of other processes: min(1-minute load average, runnable tasks now minus this one)."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - not Unix
        return 0.0
    try:
        running = Path("/proc/loadavg").read_text().split()[3].split("/")[0]
        return min(load, max(0, int(running) - 1))
    except (OSError, IndexError, ValueError):  # not Linux: the load average alone
        return load


def _worker_init() -> None:
    # Make UMAP's numba functions load from the shared on-disk cache in this worker.
    taxonomy.enable_umap_cache()


@dataclass
class Task:
    """One unit of work for :func:`run_tasks`: ``fn(*args)``, scheduled by decreasing ``cost``."""

    key: str
    cost: float
    fn: Callable[..., dict[str, Any]]
    args: tuple


def run_tasks(tasks: list[Task], jobs: int = 1, progress: bool = True, desc: str = "models") -> dict[str, dict[str, Any]]:
    """Run the tasks in-process (``jobs <= 1``, in order) or in a forkserver pool; warnings replayed here.

    Each task records its warnings; they are re-issued in this process in task
    order, so the output does not depend on ``jobs``.
    """
    from tqdm.auto import tqdm

    jobs = max(1, min(int(jobs), len(tasks)))
    bar = tqdm(total=len(tasks), desc=desc, unit="task", disable=not progress, file=sys.stderr)
    results: dict[str, dict[str, Any]] = {}
    try:
        if jobs <= 1:
            taxonomy.enable_umap_cache()
            for task in tasks:
                bar.set_postfix_str(task.key, refresh=False)
                results[task.key] = task.fn(*task.args)
                bar.update(1)
        else:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(_PRELOAD)
            order = sorted(tasks, key=lambda t: -t.cost)  # longest first: the workers finish together
            with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_worker_init) as pool:
                futures = {task.key: pool.submit(task.fn, *task.args) for task in order}
                pending = dict(futures)
                while pending:
                    done, _ = wait(list(pending.values()), return_when=FIRST_COMPLETED)
                    for key in [k for k, f in pending.items() if f in done]:
                        results[key] = pending.pop(key).result()
                        bar.set_postfix_str(key, refresh=False)
                        bar.update(1)
    finally:
        bar.close()
    for task in tasks:
        _replay(results[task.key].pop("warnings", []))
    return {task.key: results[task.key] for task in tasks}


# ---------------------------------------------------------------- stages


def _family_dir(out: str | os.PathLike, family: str) -> Path:
    return Path(os.path.expanduser(os.fspath(out))) / family


def _model_tasks(models, family_dir: Path, params: Params, do_clusters: bool, do_boxplots: bool) -> list[Task]:
    return [
        Task(model_id, float(len(rows)), analyze_model, (model_id, rows, str(family_dir), params, do_clusters, do_boxplots))
        for model_id, rows in models
    ]


def _jobs(jobs: int | None, models) -> int:
    n_heads = sum(len(rows) for _, rows in models)
    return default_jobs(len(models), n_heads) if jobs is None else max(1, int(jobs))


def _add_timings(outputs: Outputs, results: Sequence[dict[str, Any]]) -> None:
    for result in results:
        for key, value in result.get("timings", {}).items():
            name = f"{key} (sum over models)" if key.startswith(("clusters", "boxplots")) else key
            outputs.timings[name] = outputs.timings.get(name, 0.0) + float(value)


def _store_models(outputs: Outputs, results: list[dict[str, Any]], do_clusters: bool, do_boxplots: bool) -> None:
    """Write classes/labels/bds tables from per-model results (model order) and record the figures."""
    tables = outputs.family_dir / TABLES
    for r in results:
        outputs.figures.setdefault(r["model"], []).extend(r["figures"])
    if do_clusters:
        classes = pd.concat([r["classes"] for r in results], ignore_index=True)
        labels = pd.concat([r["labels"] for r in results], ignore_index=True)
        write_table(classes, tables / "classes.csv")
        write_table(labels, tables / "labels.csv")
        outputs.tables["classes"] = f"{TABLES}/classes.csv"
        outputs.tables["labels"] = f"{TABLES}/labels.csv"
        outputs.frames["classes"] = classes
        outputs.frames["labels"] = labels
    if do_boxplots:
        bds = pd.concat([r["bds"] for r in results], ignore_index=True)
        write_table(bds, tables / "bds.csv")
        outputs.tables["bds"] = f"{TABLES}/bds.csv"
        outputs.frames["bds"] = bds
    _add_timings(outputs, results)


def _store_taxonomy(outputs: Outputs, result: dict[str, Any]) -> None:
    tables = outputs.family_dir / TABLES
    for name, table in result["frames"].items():
        write_table(table, tables / f"{name}.csv")
        outputs.tables[name] = f"{TABLES}/{name}.csv"
        outputs.frames[name] = table
    outputs.figures["taxonomy"] = list(result["figures"])
    _add_timings(outputs, [result])


def run_clusters(
    frame: pd.DataFrame, out: str | os.PathLike, family: str, params: Params | None = None,
    jobs: int | None = None, progress: bool = True, outputs: Outputs | None = None,
) -> Outputs:
    """Classification A for every model of ``frame``: ESD figures, ``classes.csv``, ``labels.csv``."""
    return _run_per_model(frame, out, family, params or Params(), jobs, progress, outputs, True, False)


def run_boxplots(
    frame: pd.DataFrame, out: str | os.PathLike, family: str, params: Params | None = None,
    jobs: int | None = None, progress: bool = True, outputs: Outputs | None = None,
) -> Outputs:
    """Classification B for every model of ``frame``: box plots and ``bds.csv``."""
    return _run_per_model(frame, out, family, params or Params(), jobs, progress, outputs, False, True)


def _run_per_model(frame, out, family, params, jobs, progress, outputs, do_clusters, do_boxplots) -> Outputs:
    family_dir = _family_dir(out, family)
    outputs = outputs or Outputs(family_dir)
    models = split_models(frame)
    outputs.models = [m for m, _ in models]
    desc = "clusters" if do_clusters else "boxplots"
    t0 = time.perf_counter()
    results = run_tasks(_model_tasks(models, family_dir, params, do_clusters, do_boxplots), _jobs(jobs, models), progress, desc)
    outputs.timings[f"{desc} (wall)"] = time.perf_counter() - t0
    _store_models(outputs, list(results.values()), do_clusters, do_boxplots)
    return outputs


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
    t0 = time.perf_counter()
    result = taxonomy_task(model_heads(frame), str(family_dir), family, params)
    _replay(result.pop("warnings", []))
    outputs.timings["taxonomy (wall)"] = time.perf_counter() - t0
    _store_taxonomy(outputs, result)
    return outputs


# ---------------------------------------------------------------- index


_FORMATS = {"alpha": "{:.2f}", "theta": "{:.2f}", "jsd": "{:.3f}", "share": "{:.1%}", "bds": "{:.2f}", "p_value": "{:.2e}"}
"""As the original figures print them: alpha/theta to 2 decimals, JSD to 3, BDS 2, p-values 2e."""


def _fmt(value: Any, column: str = "") -> str:
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            return "NaN"
        return _FORMATS.get(column, "{:.4g}").format(value)
    return str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    """A small pipe table (no extra dependency)."""
    columns = list(frame.columns)
    head = "| " + " | ".join(str(c) for c in columns) + " |"
    rule = "| " + " | ".join("---" for _ in columns) + " |"
    body = ["| " + " | ".join(_fmt(v, c) for v, c in zip(row, columns)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def write_index(
    outputs: Outputs, family: str, dataset: str, revision: str | None, params: Params, frame: pd.DataFrame
) -> Path:
    """``index.md`` linking every figure and table of the run."""
    lines = [
        f"# QK-circuit spectra analysis: `{family}`",
        "",
        f"- dataset: `{dataset}`, config `{family}`, revision `{revision or 'default'}`",
        f"- models: {len(outputs.models)}, heads: {len(frame)}"
        + (f", variants: {', '.join(sorted(map(str, frame['variant'].unique())))}" if len(frame) else ""),
        f"- qk-spectra-ds {__version__}; parameters: "
        + ", ".join(f"{k}={v if not isinstance(v, tuple) else ','.join(v)}" for k, v in asdict(params).items()),
        "",
        "## Tables",
        "",
    ]
    descriptions = {
        "classes": "classification A, per model: class, n_heads, gamma alpha/theta, JSD",
        "labels": "classification A, per head: model, layer, head, class",
        "bds": "classification B, per model and statistic: BDS statistic and p-value of the per-layer medians",
        "taxonomy_classes": "joint taxonomy: classes over all models (n_heads, share, alpha, theta, JSD)",
        "taxonomy_labels": "joint taxonomy, per head: model, layer, head, depth band, class",
        "taxonomy_shares_model": "joint taxonomy: share of each model's heads per class",
        "taxonomy_shares_depth": "joint taxonomy: share of each (model, relative-depth band)'s heads per class",
    }
    for name, path in outputs.tables.items():
        lines.append(f"- [{Path(path).name}]({path}): {descriptions.get(name, name)}")
    if "taxonomy" in outputs.figures:
        lines += ["", "## Joint taxonomy", ""]
        if "taxonomy_classes" in outputs.frames:
            lines += [markdown_table(outputs.frames["taxonomy_classes"]), ""]
        for path in outputs.figures["taxonomy"]:
            lines += [f"[{path}]({path})", "", f"![{path}]({path})", ""]
    classes = outputs.frames.get("classes")
    bds = outputs.frames.get("bds")
    lines += ["## Per model", ""]
    for model in outputs.models:
        lines += [f"### {model}", ""]
        figs = outputs.figures.get(model, [])
        esd = [f for f in figs if f.startswith("ESDs/")]
        boxes = [f for f in figs if f.startswith("plots/")]
        if esd:
            lines += [f"Classification A: [{esd[0]}]({esd[0]})", "", f"![{model} classes]({esd[0]})", ""]
        if classes is not None:
            part = classes[classes["model"] == model].drop(columns="model")
            if len(part):
                lines += [markdown_table(part), ""]
        if boxes:
            stats_part = bds[bds["model"] == model] if bds is not None else None
            lines += ["Classification B (BDS of the per-layer medians):", ""]
            for f in boxes:
                stat = Path(f).parent.name
                row = stats_part[stats_part["stat"] == stat] if stats_part is not None else None
                detail = ""
                if row is not None and len(row):
                    detail = f": BDS {_fmt(float(row['bds'].iloc[0]), 'bds')}, p-value {_fmt(float(row['p_value'].iloc[0]), 'p_value')}"
                lines.append(f"- [{stat}]({f}){detail}")
            lines.append("")
    return write_text(outputs.family_dir / "index.md", "\n".join(lines).rstrip() + "\n")


# ---------------------------------------------------------------- everything


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
) -> Outputs:
    """Load a config, run classification A and B per model and the joint taxonomy, write the index.

    The per-model work and the joint taxonomy are independent tasks; with
    ``jobs > 1`` they share one worker pool. ``jobs=None``: see :func:`default_jobs`.
    """
    params = params or Params()
    family = str(family)
    t0 = time.perf_counter()
    frame = load_spectra(dataset, family, revision=revision, models=models, variant=variant, skip_nonfinite=skip_nonfinite)
    family_dir = _family_dir(out, family)
    outputs = Outputs(family_dir)
    outputs.timings["load"] = time.perf_counter() - t0
    per_model = split_models(frame)
    outputs.models = [m for m, _ in per_model]
    tasks = _model_tasks(per_model, family_dir, params, True, True)
    tasks.append(Task(JOINT_TASK, float(TAXONOMY_COST_HEADS), taxonomy_task,
                      (model_heads(frame), str(family_dir), family, params)))  # fmt: skip
    t1 = time.perf_counter()
    n_jobs = _jobs(jobs, per_model)
    results = run_tasks(tasks, n_jobs, progress, desc="report")
    outputs.timings[f"analysis (wall, jobs={n_jobs})"] = time.perf_counter() - t1
    taxonomy_result = results.pop(JOINT_TASK)
    _store_models(outputs, list(results.values()), True, True)
    _store_taxonomy(outputs, taxonomy_result)
    t2 = time.perf_counter()
    write_index(outputs, family, str(dataset), revision, params, frame)
    outputs.timings["tables + index"] = time.perf_counter() - t2
    outputs.timings["total"] = time.perf_counter() - t0
    if log is not None:
        log("timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in outputs.timings.items()))
    return outputs
