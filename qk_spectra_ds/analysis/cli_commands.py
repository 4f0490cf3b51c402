"""The analysis commands (``analyze.py COMMAND``): a command's signature is its flags, its docstring its ``--help``.

:mod:`.cli` runs them (flags checked before any work, errors as one line); :mod:`.cli_flags` declares the flags
they share. The analysis modules (numpy, pandas, scikit-learn, matplotlib, datasets: about 3 s) are imported inside
the commands, deliberately, so that ``analyze.py --help`` answers at once.
"""

import dataclasses
import sys
import time

from ..errors import AnalysisError
from .cli_defaults import Defaults  # the values only: --help must not import the analysis stack
from .cli_flags import DATA_FLAGS, DEFAULT_STATS, flags_of, with_flag_help


def _params(flags):
    """The analysis parameters among ``flags`` (the others are not Params fields), as ``report.Params``."""
    from .report import Params

    fields = {field.name for field in dataclasses.fields(Params)}
    return Params(**{name: value for name, value in flags.items() if name in fields})


def _load(dataset, family, revision, models, variant, skip_nonfinite, circuit="qk"):
    from .loading import load_spectra

    if dataset is None:
        raise _usage("--dataset is required (a local dataset directory or a Hub dataset repo id)")
    if family is None:
        raise _usage("--family is required (a config of the dataset, e.g. Qwen3, or all)")
    return load_spectra(
        str(dataset),
        str(family),
        revision=None if revision is None else str(revision),
        models=models,
        variant=variant,
        skip_nonfinite=bool(skip_nonfinite),
        circuit=str(circuit),
    )


def _usage(message: str):
    return AnalysisError(message)


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, file=sys.stderr)


@with_flag_help
def report(
    dataset: str = None,
    family: str = None,
    out: str = "analysis",
    revision: str = None,
    models: str = None,
    variant: str = None,
    circuit: str = "qk",
    n_clusters: int = Defaults.n_clusters,
    n_bins: int = Defaults.n_bins,
    quantile: float = Defaults.quantile,
    seed: int = Defaults.seed,
    embedding: str = Defaults.embedding,
    stats: str = DEFAULT_STATS,
    skip_layers_below: int = Defaults.skip_layers_below,
    n_bands: int = Defaults.n_bands,
    method: str = Defaults.method,
    features: str = Defaults.features,
    k: str = Defaults.k,
    permutations: int = Defaults.permutations,
    min_layers: int = Defaults.min_layers,
    format: str = Defaults.format,
    dpi: float = Defaults.dpi,
    skip_nonfinite: bool = False,
    jobs: int = None,
    quiet: bool = False,
):
    """Everything for one config: clusters, boxplots and taxonomy, plus <out>/<family>/index.md and index.html.

    The index links every figure and table and records the dataset, config,
    revision, package version and parameters. index.html is the same to explore
    in a browser, offline: the heads' embedding with hover (model, layer, head,
    class, variant), sortable tables, every figure. Per-stage timings are printed
    on stderr unless --quiet.
    """
    params = _params(locals())  # first, while the locals are the flags
    from .report import run_report

    if dataset is None or family is None:
        _load(dataset, family, revision, models, variant, skip_nonfinite)  # raises the usage error
    t0 = time.perf_counter()
    outputs = run_report(
        str(dataset),
        str(family),
        out,
        revision=None if revision is None else str(revision),
        models=models,
        variant=variant,
        skip_nonfinite=bool(skip_nonfinite),
        params=params,
        jobs=jobs,
        progress=not quiet,
        log=None if quiet else (lambda line: print(line, file=sys.stderr)),
        circuit=str(circuit),
    )
    _summary(quiet, "report", outputs, t0, extra=f"open {outputs.family_dir / 'index.html'} (also index.md)")


@flags_of(
    report,
    *DATA_FLAGS,
    "n_clusters",
    "n_bins",
    "quantile",
    "seed",
    "embedding",
    "format",
    "dpi",
    "skip_nonfinite",
    "jobs",
    "quiet",
)
def clusters(**flags):
    """Classification A per model, as the original study: ESD figures and class/label tables.

    Per model: each head's eigenvalues divided by their mean; one set of n_bins
    equal bins on [0, q], q the `quantile` of all normalized values of the model;
    a density histogram per head; KMeans(n_clusters, random_state=seed) on the
    histograms; a seeded 2-D embedding of the histograms for display (--embedding);
    per class the mean histogram (std error bars), a fitted gamma pdf (alpha,
    theta) and the Jensen-Shannon divergence between the two.
    Writes <out>/<family>/ESDs/<model>.png, tables/classes.csv (model, class,
    n_heads, alpha, theta, jsd) and tables/labels.csv (model, layer, head, class).
    """
    from .report import run_clusters

    params, t0 = dataclasses.replace(_params(flags), method="original"), time.perf_counter()  # the original's method
    outputs = run_clusters(
        _frame(flags), flags["out"], str(flags["family"]), params, jobs=flags["jobs"], progress=not flags["quiet"]
    )
    _summary(flags["quiet"], "clusters", outputs, t0)


@flags_of(report, *DATA_FLAGS, "stats", "skip_layers_below", "format", "dpi", "skip_nonfinite", "jobs", "quiet")
def boxplots(**flags):
    """Classification B per model, as the original study: statistics by layer with the BDS test.

    For each model and statistic of the eigenvalues: one box per layer over its
    heads (means shown, no fliers), the BDS statistic and p-value
    (statsmodels defaults) of the series of per-layer medians in the title, and
    a dashed linear smoothing spline (s=20) of the per-layer means.
    Writes <out>/<family>/plots/<STAT>/<model>_<STAT>_box.png and
    tables/bds.csv (model, stat, bds, p_value, n_layers). Too few layers for BDS
    give NaN and a warning.
    """
    from .report import run_boxplots

    params, t0 = dataclasses.replace(_params(flags), method="original"), time.perf_counter()  # the original's method
    outputs = run_boxplots(
        _frame(flags), flags["out"], str(flags["family"]), params, jobs=flags["jobs"], progress=not flags["quiet"]
    )
    _summary(flags["quiet"], "boxplots", outputs, t0)


@flags_of(
    report,
    *DATA_FLAGS,
    "n_clusters",
    "n_bins",
    "quantile",
    "seed",
    "n_bands",
    "format",
    "dpi",
    "skip_nonfinite",
    "quiet",
)
def taxonomy(**flags):
    """Joint taxonomy: one set of classes across all models of a config (beyond the original).

    The same histogram features as `clusters`, but on bins shared by all models
    (q = the quantile of the normalized eigenvalues of every head of every
    model) and one KMeans over all heads; classes are numbered canonically
    (class 0 has the most mass in the first bin). Reports each class's gamma
    fit and the share of each model's heads per class, and per relative-depth
    band (layer / n_layers in n_bands equal bands), so that models of
    different sizes can be compared class by class.
    Writes <out>/<family>/taxonomy/classes.png, taxonomy/depth.png and
    tables/taxonomy_{classes,labels,shares_model,shares_depth}.csv.
    """
    from .report import run_taxonomy

    params, t0 = _params(flags), time.perf_counter()
    outputs = run_taxonomy(_frame(flags), flags["out"], str(flags["family"]), params, progress=not flags["quiet"])
    _summary(flags["quiet"], "taxonomy", outputs, t0)


def _frame(flags):
    """The rows ``flags`` select (dataset, family, revision, models, variant, skip_nonfinite, circuit)."""
    return _load(
        flags["dataset"],
        flags["family"],
        flags["revision"],
        flags["models"],
        flags["variant"],
        flags["skip_nonfinite"],
        flags["circuit"],
    )


def import_legacy(
    pickles: str = None,
    family: str = None,
    out: str = None,
    force: bool = False,
    pool_legacy: bool = False,
    quiet: bool = False,
):
    """Convert the original study's pickles into a schema-v1 dataset directory.

    Each <model>.pkl (dict of layer -> arrays: singular_values, eigen_values and
    their six statistics) becomes <out>/data/<family>/<model>.parquet, and the
    card README.md is regenerated, so `load_dataset(out, family)` and every
    command here work on it. The pickles are read with a restricted unpickler:
    anything beyond numpy arrays in dicts/lists is refused before it can run.
    Rows are marked variant=legacy; what the pickles cannot tell (model
    revision and type, d_model, KV heads, dtype, positivity) is left null.
    A model the family already holds as spectra built from weights is not
    replaced without --force, and a family holding other built models does not
    take legacy ones without --pool-legacy (the legacy numbers carry the
    original study's pairing error; the analysis keeps the two apart unless asked).

    Args:
        pickles: directory of *.pkl files (or one .pkl file) from the original study (required).
        family: config name to file the models under, e.g. Qwen3 (required).
        out: dataset directory to create or update (required).
        force: replace a model the family holds as spectra built from weights by its legacy numbers.
        pool_legacy: import into a family that already holds spectra built from weights.
        quiet: no progress bar or summary on stderr.
    """
    from . import legacy

    if pickles is None or family is None or out is None:
        raise _usage("import_legacy needs --pickles DIR, --family NAME and --out DATASET_DIR")
    t0 = time.perf_counter()
    written = legacy.import_legacy(
        str(pickles), str(family), str(out), progress=not quiet, force=bool(force), pool_legacy=bool(pool_legacy)
    )
    _say(quiet, f"import_legacy: {len(written)} model(s) -> {out}/data/{family}/ in {time.perf_counter() - t0:.1f}s")


@flags_of(report, *DATA_FLAGS, "format", "dpi", "skip_nonfinite", "quiet")
def compare(
    *,
    against: str = None,
    against_family: str = None,
    against_revision: str = None,
    against_models: str = None,
    against_variant: str = None,
    metrics: str = "stable_rank,effective_rank,positivity,log_det",
    **flags,
):
    """Compare spectra: one model in two datasets or variants head by head, and models by relative depth.

    Head by head (when any --against* flag is given): side A is --dataset/--family/--variant,
    side B the same with the --against* flags replaced. Each model is paired with its
    namesake on side B (Qwen/Qwen3-0.6B matches the legacy Qwen3-0.6B; one model per
    side is paired whatever the names), shapes (n_layers, n_heads, d_head) must agree, and
    heads are matched by (layer, head). Per head: the relative error |B - A| / |A| of each
    singular value and eigenvalue (max and median over the head) and of every statistic and
    metric. E.g. the original study's legacy spectra against the corrected ones built from
    weights: --dataset ./qk-spectra --family Qwen3 --variant raw --against ./legacy-spectra; or raw
    against folded in one dataset: --variant raw --against-variant folded.
    By depth (always, for every model of both sides): each --metrics value per layer (median
    over heads, interquartile band) against relative depth layer / (n_layers - 1), one line
    per model. Legacy rows are labelled as carrying the original study's pairing error.
    Writes <out>/<family>/tables/compare_heads.csv, compare_summary.csv, compare/<model>.<format>
    (per-layer distribution of the per-head error), tables/depth.csv and depth/<metric>.<format>.

    Args:
        dataset: side A: local dataset directory or Hub dataset repo id (required).
        family: side A: dataset config, e.g. Qwen3, or all (required).
        out: output root; results go to <out>/<family>/.
        revision: side A: Hub revision (tag vX.Y.Z, branch or commit); Hub repos only.
        models: comma-separated models to keep (id, file slug or last path part); default all. Side B keeps the same names unless --against-models.
        variant: side A: rows of this variant (raw, folded, null or legacy); default: as the other commands. Name both variants to compare two of one dataset.
        against: side B: another dataset directory or Hub repo id (default: --dataset).
        against_family: side B: its config (default: --family).
        against_revision: side B: its Hub revision (default: --revision within the same dataset).
        against_models: side B: comma-separated models (default: the last path part of each model --models kept, else all); one model per side is paired whatever the names.
        against_variant: side B: its variant (default: --variant within the same dataset, else the other dataset's default); two sides loading the same rows are refused.
        metrics: comma-separated metrics to plot against depth: stable_rank, effective_rank, positivity, log_det, spectral_norm, frobenius, or any sv_/ev_ statistic (sv_mean, ev_kurtosis, ...).
        skip_nonfinite: drop heads with NaN/Inf spectra (with a warning counting them) instead of failing.
        quiet: no summary on stderr.
    """
    from .compare import error_lines, load_sides, parse_metrics, run_compare

    dataset, family, out, revision, models, variant, circuit = (flags[name] for name in DATA_FLAGS)
    skip_nonfinite, quiet = flags["skip_nonfinite"], flags["quiet"]
    if dataset is None or family is None:
        _load(dataset, family, revision, models, variant, skip_nonfinite)  # raises the usage error
    chosen = parse_metrics(metrics)
    params = _params(flags)  # checks --format and --dpi before any work
    t0 = time.perf_counter()
    side_a, side_b = load_sides(
        str(dataset),
        str(family),
        revision=revision,
        models=models,
        variant=variant,
        against=against,
        against_family=against_family,
        against_revision=against_revision,
        against_models=against_models,
        against_variant=against_variant,
        skip_nonfinite=bool(skip_nonfinite),
        circuit=str(circuit),
    )
    outputs = run_compare(side_a, side_b, out, str(family), chosen, params.format, params.dpi)
    if "compare_summary" in outputs.frames:
        for line in error_lines(outputs.frames["compare_summary"]):
            _say(quiet, line)
    _summary(quiet, "compare", outputs, t0)


def _summary(quiet: bool, command: str, outputs, t0: float, extra: str = "") -> None:
    n_figures = sum(len(v) for v in outputs.figures.values())
    tables = ", ".join(outputs.tables.values())
    _say(
        quiet,
        f"{command}: {len(outputs.models)} model(s), {n_figures} figure(s), tables {tables} "
        f"in {outputs.family_dir} ({time.perf_counter() - t0:.1f}s)" + (f"; {extra}" if extra else ""),
    )


COMMANDS = {
    "clusters": clusters,
    "boxplots": boxplots,
    "taxonomy": taxonomy,
    "report": report,
    "import_legacy": import_legacy,
    "compare": compare,
}
