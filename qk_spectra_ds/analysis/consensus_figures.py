"""The default method's figure of one model: the k curve and each consensus class's mean histogram against the null."""

from __future__ import annotations

import numpy as np

from . import plots, rmt_null
from .consensus_result import ConsensusResult

LEGACY_NOTE = "legacy: the original study's spectra, with its SVD pairing error"


def plot_consensus(
    result: ConsensusResult,
    path,
    title: str,
    dpi: float | None = None,
    variant: str | None = None,
    circuit: str | None = None,
):
    """k curve (stability, silhouette; chosen k marked) and each class's mean histogram with the null overlaid.

    ``variant``, ``circuit``: of the spectra, named at the end of the title.
    """
    means, edges, scan = result.class_means, result.edges, result.k_selection
    n = len(means)
    with plots.style():
        fig = plots.new_figure((4.5 * (n + 1), 4))
        axes = fig.subplots(1, n + 1, squeeze=False)[0]
        ax = axes[0]
        ax.plot(scan["k"], scan["stability_ari_mean"], "o-", label="stability (ARI)")
        ax.plot(scan["k"], scan["silhouette"], "s--", label="silhouette")
        ax.axvline(result.k, color="grey", lw=1)
        ax.set_xlabel("k (number of classes)")
        ax.set_ylabel("stability ARI / silhouette")
        ax.legend(fontsize=9)
        test = result.structure_row
        said = (
            f"structure test p = {test['p_value']:.3f}: {test['conclusion']}"
            if test.get("tested")
            else str(test.get("conclusion", ""))
        )
        ax.set_title(f"k = {result.k}\n{said}", fontsize=9)
        centers = (edges[:-1] + edges[1:]) / 2
        expected = None
        if result.null_c is not None:
            expected = rmt_null.null_histogram(
                result.null_c, edges, log10=result.kind == "log", clip=result.kind == "log"
            )
        table = result.consensus_classes
        sizes = [int(x) for x in table["n_heads"]] if len(table) == n else None
        for i, axc in enumerate(axes[1:]):
            axc.bar(centers, means[i], width=np.diff(edges), alpha=0.6, label=f"class {i}")
            if expected is not None:
                axc.plot(centers, expected, "r--", lw=1.5, label=f"Gaussian null (c={result.null_c:.3f})")
            if result.null_features is not None:
                axc.plot(centers, result.null_features.mean(axis=0), "k:", lw=1.2, label="Monte Carlo")
            axc.set_xlabel("log10(λ / mean λ of the head)" if result.kind == "log" else "λ / mean λ of the head")
            axc.set_ylabel("density")
            axc.set_title(f"class {i}" + (f" (n={sizes[i]} heads)" if sizes else ""))
            axc.legend(fontsize=8)
            axc.set_xlim(*plots.occupied_range(edges, [means[i]] + ([expected] if expected is not None else [])))
        fig.suptitle(
            title + plots.variant_suffix(variant, circuit) + (f" [{LEGACY_NOTE}]" if result.legacy else ""), fontsize=12
        )
        plots.tight_layout(fig)
        return plots.save_figure(fig, path, plots.DEFAULT_DPI if dpi is None else dpi)
