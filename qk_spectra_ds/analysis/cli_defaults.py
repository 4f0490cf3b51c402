"""The analysis commands' flag defaults without the analysis stack, so ``analyze.py --help`` starts fast.

``report.Params`` imports numpy, pandas, scikit-learn and scipy (about 3 s) to
read its defaults from the modules that use them. The command line only needs
the values to build its signatures and help, so they are listed here;
``tests/package/test_one_definition.py`` checks that they equal ``Params()`` field by
field, so the two cannot drift apart. Nothing here imports anything.
"""


class Defaults:
    """Each ``report.Params`` default, as a class attribute (``Defaults.n_clusters``, as ``Params.n_clusters`` reads)."""

    n_clusters = 6
    n_bins = 24
    quantile = 0.96
    seed = 0
    skip_layers_below = 2
    stats = ("MIN", "MAX", "MEAN", "STD", "SKEW", "KURTOSIS")
    n_bands = 5
    embedding = "pca"
    method = "consensus"
    features = "log"
    k = "auto"
    permutations = 999
    min_layers = 10
    format = "png"
    dpi = 100.0


def as_dict() -> dict:
    """The defaults as ``{field: value}`` (compare with ``dataclasses.asdict(report.Params())``)."""
    return {name: value for name, value in vars(Defaults).items() if not name.startswith("_")}
