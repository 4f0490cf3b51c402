"""The analysis commands' flags, declared once: their help lines, the decorators that give a command the flags
of another (type, default and help line), and the sets the runner checks (list flags, minimums).

Nothing here imports the analysis stack, so that ``analyze.py --help`` answers at once.
"""

import functools
import inspect

from .cli_defaults import Defaults  # the values only: --help must not import the analysis stack

DEFAULT_STATS = ",".join(Defaults.stats)

FLAG_HELP = {
    "dataset": "local dataset directory or Hub dataset repo id (required).",
    "family": "dataset config to analyse, e.g. Qwen3, or all (required).",
    "out": "output root; results go to <out>/<family>/.",
    "revision": "Hub revision (tag vX.Y.Z, branch or commit); Hub repos only.",
    "models": "comma-separated models to keep (id, file slug or last path part); default all.",
    "variant": "keep only rows of this variant (e.g. raw, legacy); needed if a model has several.",
    "circuit": "which circuit of each head to analyse: qk (default: W_Q^T W_K, where it looks) or ov (W_O W_V, what it "
    "writes; schema v4 datasets built with --circuits qk,ov). Tables get a circuit column, titles name it.",
    "n_clusters": "number of KMeans classes, per model and for the joint taxonomy (default: as the original).",
    "n_bins": "number of histogram bins (default: as the original).",
    "quantile": "upper bin edge = this quantile of all normalized eigenvalues of the model (for the joint taxonomy: of "
    "all models; default: as the original).",
    "seed": "random_state of KMeans and of the embedding (default: as the original's KMeans; its UMAP was unseeded).",
    "embedding": "2-D display of the heads in the ESD figures: pca (principal components, "
    "fast) or umap (the original's seeded UMAP(2, n_neighbors=10, min_dist=0.1); compiles numba code, "
    "~15 s more per process). Tables do not depend on it.",
    "stats": f"comma-separated statistics for the box plots among {', '.join(Defaults.stats)}.",
    "skip_layers_below": "box plots leave out layers with index below this "
    "(default: as the original; it used 5 for its 70B Llamas).",
    "n_bands": "number of relative-depth bands of the joint taxonomy.",
    "skip_nonfinite": "drop heads with NaN/Inf spectra (with a warning counting them) instead of failing.",
    "jobs": "worker processes for the per-model work; default: one per core (at most 4) for configs of 2,000+ heads "
    "(results do not depend on it).",
    "quiet": "no progress bar, summary or timings on stderr (warnings and errors still show).",
    "method": "consensus (default: order-independent consensus classes with their stability, k from the data, "
    "permutation tests of the per-layer series, a random-matrix null, heads by rotary offset) or original "
    "(the original study's method only, and its tables classes.csv, labels.csv, bds.csv, which depend on "
    "the row order; its BDS p-values are asymptotic, invalid at 16-36 layers).",
    "features": "consensus features: log (default: density histogram of log10(l / mean l) on a fixed range, the whole "
    "spectrum) or linear (the original's [0, q] histogram, which drops the tail above q).",
    "k": "number of consensus classes: auto (default: among k = 2..8 with mean bootstrap ARI >= 0.8 the best "
    "silhouette, else the most stable k) or a whole number (6: the original's).",
    "permutations": "shufflings of the layer order for the permutation BDS and depth-trend tests (>= 99; default 999).",
    "min_layers": "per-layer series shorter than this are not tested, and say so (default 10).",
    "format": "file type of every figure: png (default), pdf or svg (vector, for papers).",
    "dpi": "resolution of the figures in dots per inch (default 100, the original's; 300 for print).",
}
"""The help line of each flag the analysis commands share, written once (defaults from ``report.Params``)."""


def with_flag_help(function):
    """``function`` with an ``Args:`` line from FLAG_HELP for each of its flags its docstring leaves out.

    fire shows these lines in ``--help``; a command documents a flag itself only where it means something else.
    """
    doc = inspect.cleandoc(function.__doc__ or "")
    documented = doc.partition("Args:")[2]
    missing = [
        name
        for name in inspect.signature(function).parameters
        if name in FLAG_HELP and f"    {name}: " not in documented
    ]
    if missing:
        doc += ("" if "Args:" in doc else "\n\nArgs:") + "".join(f"\n    {name}: {FLAG_HELP[name]}" for name in missing)
    function.__doc__ = doc
    return function


def flags_of(command, *names: str):
    """Decorator: the function takes flags ``names`` of ``command``, declared there once (type and default).

    The function receives every one of them as a keyword (defaults filled in),
    then its own keyword-only flags; ``--help`` lines of the shared ones come
    from FLAG_HELP unless its docstring gives its own.
    """
    shared = inspect.signature(command).parameters

    def decorate(function):
        own = [p for p in inspect.signature(function).parameters.values() if p.kind is p.KEYWORD_ONLY]
        parameters = [shared[name] for name in names] + own  # its own flags (keyword-only) come last
        signature = inspect.Signature(parameters)

        @functools.wraps(function)
        def run(**flags):
            bound = signature.bind(**flags)
            bound.apply_defaults()
            return function(**bound.arguments)

        run.__signature__ = signature
        run.__annotations__ = {p.name: p.annotation for p in parameters}
        return with_flag_help(run)

    return decorate


DATA_FLAGS = ("dataset", "family", "out", "revision", "models", "variant", "circuit")
"""The flags that choose what to analyse and where the results go."""

LIST_FLAGS = (
    "models",
    "stats",
    "against_models",
    "metrics",
)  # comma-separated: a value naming nothing is refused, not read as "all"
MINIMUMS = {
    "jobs": 1,
    "seed": 0,
    "skip_layers_below": 0,
    "permutations": 99,
    "min_layers": 4,
}  # the others are checked by report.Params
