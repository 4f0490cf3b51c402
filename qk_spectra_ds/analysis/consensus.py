"""Consensus classes of attention heads, with their stability (the default method).

The original study's classes (one ``KMeans(6, random_state=0)`` on heads in
file order) change with the seed, the bins, the quantile and even the row
order. This module gives classes that do not:

1. **Canonical order.** Each model's heads are sorted by (layer, head) before
   anything random, so shuffled rows give identical results.
2. **Features** (:data:`FEATURES`): ``log`` (default) keeps the whole
   spectrum: a density histogram of ``log10(l / mean l)`` on the fixed range
   :data:`LOG_RANGE`, values beyond it counted in the end bins (nothing is
   cut); ``linear`` is the original's histogram on ``[0, q]``, which drops
   every eigenvalue above the ``quantile`` (the energy it keeps is reported).
3. **Consensus.** :data:`N_RUNS` KMeans runs, each with its own seed on a
   bootstrap resample of the heads (``n_init=1``), each run predicting every
   head; the co-association matrix (share of runs putting two heads together);
   the final classes by average-linkage clustering of ``1 - co-association``
   cut at ``k`` clusters (deterministic given the matrix). Classes are
   numbered by the centre of mass of their mean histogram (ascending). Each
   head's *confidence* is its mean co-association with the other heads of its
   class.
4. **k from the data.** For each k in :data:`K_RANGE`: the *stability* (mean
   adjusted Rand index between all pairs of the runs) and the silhouette of
   the consensus classes. Criterion: among the k whose stability is at least
   :data:`STABLE_ARI`, the one with the highest silhouette; if none is that
   stable, the most stable k. ``k`` may also be fixed (the original's 6).
5. **Stability table.** ARI of the consensus classes against the consensus
   with other master seeds, other bin counts (16, 32), other feature ranges
   (quantile 0.90/0.99 or log range -3/-5), between bootstrap runs, and, for
   comparison, of the original single KMeans(6) across seeds 1-10.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd

from ..errors import AnalysisError
from . import features as original_features
from .consensus_result import ConsensusResult

FEATURES = ("log", "linear")
DEFAULT_FEATURES = "log"
LOG_RANGE = (-4.0, 2.5)
"""log10(l / mean l) range of the ``log`` features: 1e-4 x the mean to 316 x the mean (a head of d_head <= 316 cannot exceed it)."""
N_RUNS = 30
K_RANGE = tuple(range(2, 9))
STABLE_ARI = 0.8
PERTURBED_SEEDS = tuple(range(1, 9))
"""Other master seeds for the stability table: 8, so that the stated ARI has a spread (its 5-95% range)."""
PERTURBED_BINS = (16, 32)
PERTURBED_QUANTILES = (0.90, 0.99)
PERTURBED_LOG_LOW = (-3.0, -5.0)
ORIGINAL_SEEDS = tuple(range(1, 11))


def canonical_order(rows: pd.DataFrame) -> pd.DataFrame:
    """One model's rows sorted by (layer, head): the order every random step sees."""
    return rows.sort_values(["layer", "head"], kind="stable").reset_index(drop=True)


def log_histograms(eigenvalues: np.ndarray, n_bins: int, log_range: tuple[float, float] = LOG_RANGE):
    """``(histograms, edges, energy_in_range)``: density histograms of log10(l / mean l), end bins catching the rest."""
    ev = np.asarray(eigenvalues, dtype=np.float64)
    mean = ev.mean(axis=1, keepdims=True)
    norm = ev / np.where(mean > 0, mean, 1.0)
    with np.errstate(divide="ignore"):
        logs = np.log10(norm)
    lo, hi = float(log_range[0]), float(log_range[1])
    edges = np.linspace(lo, hi, int(n_bins) + 1)
    inside = (logs >= lo) & (logs <= hi)
    total = ev.sum(axis=1)
    energy = np.where(total > 0, (ev * inside).sum(axis=1) / np.where(total > 0, total, 1.0), 1.0)
    counts = original_features.bin_counts(np.clip(logs, lo, hi), edges)
    return counts / np.diff(edges) / ev.shape[1], edges, energy


def linear_energy_kept(eigenvalues: np.ndarray, top: float) -> np.ndarray:
    """Share of each head's spectral energy (sum l) at normalised values <= ``top`` (what the original's bins keep)."""
    ev = np.asarray(eigenvalues, dtype=np.float64)
    mean = ev.mean(axis=1, keepdims=True)
    norm = ev / np.where(mean > 0, mean, 1.0)
    total = ev.sum(axis=1)
    return np.where(total > 0, (ev * (norm <= top)).sum(axis=1) / np.where(total > 0, total, 1.0), 1.0)


def head_features(
    eigenvalues: np.ndarray,
    kind: str = DEFAULT_FEATURES,
    n_bins: int = original_features.N_BINS,
    quantile: float = original_features.QUANTILE,
    log_low: float = LOG_RANGE[0],
):
    """``(histograms, edges, energy_kept)`` for the ``kind`` of features (:data:`FEATURES`)."""
    if kind == "log":
        return log_histograms(eigenvalues, n_bins, (log_low, LOG_RANGE[1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hists, edges = original_features.eigenvalue_histograms(np.asarray(eigenvalues, np.float32), n_bins, quantile)
    return hists, edges, linear_energy_kept(eigenvalues, edges[-1])


def ari(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two labelings (same formula as sklearn's, without its overhead)."""
    a = np.unique(np.asarray(a), return_inverse=True)[1]
    b = np.unique(np.asarray(b), return_inverse=True)[1]
    n = len(a)
    table = np.bincount(a * (b.max() + 1) + b, minlength=(a.max() + 1) * (b.max() + 1)).astype(np.float64)

    def pairs(x):
        return (x * (x - 1) / 2).sum()

    sum_cells = pairs(table)
    sum_a = pairs(np.bincount(a).astype(np.float64))
    sum_b = pairs(np.bincount(b).astype(np.float64))
    expected = sum_a * sum_b / (n * (n - 1) / 2)
    top = (sum_a + sum_b) / 2
    if top == expected:
        return 1.0
    return float((sum_cells - expected) / (top - expected))


def kmeans_runs(X: np.ndarray, k: int, n_runs: int = N_RUNS, seed: int = 0) -> np.ndarray:
    """``(n_runs, heads)`` labels: run r fits KMeans(k, n_init=1) on a bootstrap resample, seeded by (seed, r), and predicts all heads."""
    from sklearn.cluster import KMeans

    n = len(X)
    out = np.empty((int(n_runs), n), dtype=np.int64)
    children = np.random.SeedSequence(entropy=int(seed), spawn_key=(int(k),)).spawn(int(n_runs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate points in a resample: fewer distinct points than k is handled below
        for r, child in enumerate(children):
            rng = np.random.default_rng(child)
            sample = X[rng.integers(0, n, n)]
            state = int(rng.integers(0, 2**31 - 1))
            km = KMeans(n_clusters=min(int(k), len(np.unique(sample, axis=0))), n_init=1, random_state=state).fit(
                sample
            )
            out[r] = km.predict(X)
    return out


def coassociation(runs: np.ndarray) -> np.ndarray:
    """``(heads, heads)`` share of the runs that put two heads in the same class."""
    n_runs, n = runs.shape
    width = int(runs.max()) + 1
    onehot = np.zeros((n, n_runs * width), dtype=np.float32)
    onehot[np.arange(n)[:, None], runs.T + np.arange(n_runs) * width] = 1.0
    return (onehot @ onehot.T) / n_runs


def consensus_labels(coassoc: np.ndarray, k: int, X: np.ndarray) -> np.ndarray:
    """Average-linkage classes of ``1 - coassoc`` cut at ``k``, numbered by their mean histogram's centre of mass."""
    from scipy.cluster.hierarchy import fcluster, linkage

    n = len(coassoc)
    if n < 2 or k <= 1:
        return np.zeros(n, dtype=np.int64)
    iu = np.triu_indices(n, 1)
    tree = linkage(np.clip(1.0 - coassoc[iu].astype(np.float64), 0.0, None), method="average")
    raw = fcluster(tree, t=int(k), criterion="maxclust") - 1
    ids = np.unique(raw)
    centre = np.array(
        [
            (X[raw == c].mean(axis=0) * np.arange(X.shape[1])).sum() / max(X[raw == c].mean(axis=0).sum(), 1e-300)
            for c in ids
        ]
    )
    order = ids[np.argsort(centre, kind="stable")]
    relabel = np.empty(raw.max() + 1, dtype=np.int64)
    relabel[order] = np.arange(len(order))
    return relabel[raw]


def confidence(coassoc: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per head: mean co-association with the other heads of its class (1 for a class of one)."""
    out = np.ones(len(labels))
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) > 1:
            block = coassoc[np.ix_(idx, idx)]
            out[idx] = (block.sum(axis=1) - np.diag(block)) / (len(idx) - 1)
    return out


def mean_pairwise_ari(runs: np.ndarray) -> np.ndarray:
    """ARI between every pair of runs."""
    return np.array([ari(runs[i], runs[j]) for i, j in itertools.combinations(range(len(runs)), 2)])


def silhouette(X: np.ndarray, labels: np.ndarray) -> float:
    """Silhouette of the labels on the features (NaN for one class or one head per class)."""
    from sklearn.metrics import silhouette_score

    n_classes = len(np.unique(labels))
    if n_classes < 2 or n_classes >= len(labels):
        return float("nan")
    return float(silhouette_score(X, labels))


def consensus(X: np.ndarray, k: int, n_runs: int = N_RUNS, seed: int = 0):
    """``(labels, confidence, runs)`` of the consensus classes at ``k``."""
    runs = kmeans_runs(X, k, n_runs, seed)
    co = coassociation(runs)
    labels = consensus_labels(co, k, X)
    return labels, confidence(co, labels), runs


def choose_k(stability: dict[int, float], silhouettes: dict[int, float], threshold: float = STABLE_ARI) -> int:
    """Among k with stability >= ``threshold`` the highest silhouette (ties: smaller k); else the most stable k."""
    eligible = [k for k in sorted(stability) if stability[k] >= threshold and np.isfinite(silhouettes.get(k, np.nan))]
    if eligible:
        return max(eligible, key=lambda k: (silhouettes[k], -k))
    return max(sorted(stability), key=lambda k: (stability[k], -k))


def k_scan(X: np.ndarray, ks=K_RANGE, n_runs: int = N_RUNS, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Per k: stability and silhouette of the consensus; returns the table and the consensus results by k."""
    rows, results = [], {}
    for k in ks:
        if k >= len(X):
            continue
        labels, conf, runs = consensus(X, k, n_runs, seed)
        pair = mean_pairwise_ari(runs)
        results[k] = (labels, conf, runs)
        rows.append(
            {
                "k": int(k),
                "stability_ari_mean": float(pair.mean()),
                "stability_ari_min": float(pair.min()),
                "silhouette": silhouette(X, labels),
                "n_classes": int(len(np.unique(labels))),
            }
        )
    return pd.DataFrame(rows), results


def ari_summary(kind: str, aris) -> dict:
    aris = np.asarray(list(aris), dtype=np.float64)
    return {
        "perturbation": kind,
        "n": int(len(aris)),
        "ari_median": float(np.median(aris)),
        "ari_min": float(aris.min()),
        "ari_q05": float(np.quantile(aris, 0.05)),
        "ari_q95": float(np.quantile(aris, 0.95)),
    }


def stability_rows(
    eigenvalues: np.ndarray,
    labels: np.ndarray,
    runs: np.ndarray,
    k: int,
    kind: str,
    n_bins: int,
    quantile: float,
    n_runs: int = N_RUNS,
    seed: int = 0,
) -> list[dict]:
    """ARI of the consensus ``labels`` against the consensus under each perturbation (see the module docstring)."""
    rows = []
    X, _, _ = head_features(eigenvalues, kind, n_bins, quantile)
    rows.append(
        ari_summary(
            "consensus: master seed", (ari(labels, consensus(X, k, n_runs, seed + s)[0]) for s in PERTURBED_SEEDS)
        )
    )
    rows.append(
        ari_summary(
            "consensus: bins",
            (
                ari(labels, consensus(head_features(eigenvalues, kind, b, quantile)[0], k, n_runs, seed)[0])
                for b in PERTURBED_BINS
            ),
        )
    )
    if kind == "log":
        others = (head_features(eigenvalues, kind, n_bins, quantile, low)[0] for low in PERTURBED_LOG_LOW)
        rows.append(
            ari_summary(
                "consensus: log range low edge", (ari(labels, consensus(Y, k, n_runs, seed)[0]) for Y in others)
            )
        )
    else:
        others = (head_features(eigenvalues, kind, n_bins, q)[0] for q in PERTURBED_QUANTILES)
        rows.append(ari_summary("consensus: quantile", (ari(labels, consensus(Y, k, n_runs, seed)[0]) for Y in others)))
    rows.append(ari_summary("bootstrap runs (pairwise)", mean_pairwise_ari(runs)))
    rows.append(ari_summary("original KMeans(6): seeds 1-10 vs 0", original_seed_aris(eigenvalues)))
    return rows


def original_seed_aris(eigenvalues: np.ndarray, n_clusters: int = 6) -> list[float]:
    """ARI of the original's single ``KMeans(6, random_state=s, n_init="auto")`` for s in 1..10 against s = 0."""
    from sklearn.cluster import KMeans

    X, _, _ = head_features(eigenvalues, "linear")
    k = min(int(n_clusters), len(X) - 1)
    base = KMeans(n_clusters=k, random_state=0, n_init="auto").fit_predict(X)
    return [ari(base, KMeans(n_clusters=k, random_state=s, n_init="auto").fit_predict(X)) for s in ORIGINAL_SEEDS]


# ---------------------------------------------------------------- one model, end to end

LEGACY_NOTE = "legacy: the original study's spectra, with its SVD pairing error"


def select_k(name: str, X: np.ndarray, k: int | str = "auto", seed: int = 0, structure: bool | None = None):
    """``(k, scan, results)``: the one definition of how the default method picks its number of classes.

    ``k`` fixed (an int or its digits): that k. ``k="auto"``: k = 1 (one class)
    when ``structure`` is False (the structure test found no evidence of
    classes), else :func:`choose_k` on the k scan over :data:`K_RANGE`;
    ``structure=None`` (not tested, as for :mod:`.variants_compare`) scans
    without the k = 1 option. ``scan`` starts with the k = 1 row and marks the
    ``chosen`` k; ``results[k]`` is ``(labels, confidence, runs)``, ``results[1]``
    always the one-class answer.
    """
    ks = K_RANGE if k == "auto" else ((int(k),) if int(k) >= 2 else ())
    scan, results = k_scan(X, ks, N_RUNS, seed)
    if scan.empty and (k == "auto" or int(k) >= 2):
        raise AnalysisError(f"{name}: {len(X)} head(s) are too few for consensus classes (need at least 3)")
    if k != "auto":
        chosen = int(k)
    elif structure is False:
        chosen = 1
    else:
        chosen = choose_k(dict(zip(scan["k"], scan["stability_ari_mean"])), dict(zip(scan["k"], scan["silhouette"])))
    one = {"k": 1, "stability_ari_mean": np.nan, "stability_ari_min": np.nan, "silhouette": np.nan, "n_classes": 1}
    scan = pd.concat([pd.DataFrame([one]), scan], ignore_index=True)
    scan["chosen"] = scan["k"] == chosen
    results[1] = (np.zeros(len(X), dtype=np.int64), np.ones(len(X)), np.zeros((1, len(X)), dtype=np.int64))
    return chosen, scan, results


def choose_classes(name: str, X: np.ndarray, k: int | str = "auto", seed: int = 0, structure_draws: int | None = None):
    """``(k, scan, results, structure_row)``: the structure test (:mod:`.structure`), then :func:`select_k`.

    ``k="auto"``: k = 1 (one class, no consensus) when the structure test finds
    no evidence of classes, else the k scan's choice among :data:`K_RANGE`.
    """
    from . import structure

    draws = structure.N_DRAWS if structure_draws is None else int(structure_draws)
    test = structure.structure_row(name, X, draws, seed)
    chosen, scan, results = select_k(name, X, k, seed, bool(test["structure"].iloc[0]))
    return chosen, scan, results, test.assign(k=chosen)


def analyze(
    model_id: str,
    rows: pd.DataFrame,
    kind: str = DEFAULT_FEATURES,
    k: int | str = "auto",
    n_bins: int = original_features.N_BINS,
    quantile: float = original_features.QUANTILE,
    seed: int = 0,
    null_eigenvalues: np.ndarray | None = None,
    structure_draws: int | None = None,
) -> ConsensusResult:
    """Consensus classes, k curve, stability, energy and the random-matrix null for one model's rows.

    Returns a :class:`.consensus_result.ConsensusResult`: the tables (each with
    ``legacy_pairing_error``), the chosen ``k`` and what the figure needs.
    ``null_eigenvalues``: the model's ``null`` variant rows, when the dataset has them.
    """
    from . import class_profiles, rmt_null

    rows = canonical_order(rows)
    ev = np.stack(rows["eigenvalues"].tolist()).astype(np.float64)
    legacy = bool((rows["variant"] == "legacy").any()) if "variant" in rows else False
    X, edges, energy = head_features(ev, kind, n_bins, quantile)
    chosen, scan, results, test = choose_classes(model_id, X, k, seed, structure_draws)
    labels, conf, runs = results[chosen]
    if chosen >= 2:
        stability = pd.DataFrame(stability_rows(ev, labels, runs, chosen, kind, n_bins, quantile, N_RUNS, seed))
    else:
        stability = pd.DataFrame(
            [
                {
                    "perturbation": "k = 1 (no classes): stability not applicable",
                    "n": 0,
                    "ari_median": np.nan,
                    "ari_min": np.nan,
                }
            ]
        )
    _, lin_edges, lin_energy = head_features(ev, "linear", n_bins, quantile)
    energy_table = pd.DataFrame(
        [
            {
                "features": "linear (original: [0, q] bins)",
                "energy_kept_median": float(np.median(lin_energy)),
                "energy_kept_min": float(lin_energy.min()),
            },
            {
                "features": f"log (log10 range {LOG_RANGE[0]}..{LOG_RANGE[1]}, in range)",
                "energy_kept_median": float(np.median(energy if kind == "log" else head_features(ev, "log")[2])),
                "energy_kept_min": float((energy if kind == "log" else head_features(ev, "log")[2]).min()),
            },
        ]
    )
    d_model, d_source = rmt_null.d_model_of(model_id, rows)
    d_head = ev.shape[1]
    labels_table = pd.DataFrame(
        {
            "model": model_id,
            "layer": rows["layer"].to_numpy(),
            "head": rows["head"].to_numpy(),
            "class": labels,
            "confidence": conf,
        }
    )
    null_classes = pd.DataFrame()
    null_c, null_features, mc = None, None, None
    if d_model is not None and d_model >= d_head:
        c = d_head / d_model
        dist, outside = rmt_null.head_distances(ev, c)
        frob = np.sqrt(ev.sum(axis=1))
        mc = rmt_null.matched_monte_carlo(d_head, d_model, frob, rmt_null.N_MONTE_CARLO, seed)
        mc_dist, mc_out = rmt_null.head_distances(mc, c)
        var_dist = (
            rmt_null.head_distances(null_eigenvalues, c)[0]
            if null_eigenvalues is not None and len(null_eigenvalues)
            else None
        )
        labels_table["ks_distance_to_null"] = dist
        labels_table["fraction_outside_null_edges"] = outside
        null_classes = rmt_null.class_null_table(model_id, labels, dist, outside, mc_dist, var_dist, seed=seed)
        null_classes.insert(2, "c", c)
        null_classes["d_model_source"] = d_source
        null_c, null_features = c, head_features(mc, kind, n_bins, quantile)[0] if kind == "log" else None
    described = class_profiles.describe(model_id, rows, ev, labels, mc)
    classes = pd.DataFrame(
        [
            {
                "model": model_id,
                "class": int(c_),
                "name": described.names[int(c_)],
                "n_heads": int((labels == c_).sum()),
                "share": float((labels == c_).mean()),
                "confidence_mean": float(conf[labels == c_].mean()),
                "confidence_min": float(conf[labels == c_].min()),
            }
            for c_ in np.unique(labels)
        ]
    )
    frames = {
        "consensus_classes": classes,
        "consensus_labels": labels_table,
        "k_selection": scan.assign(model=model_id),
        "stability": stability.assign(model=model_id, k=chosen),
        "energy": energy_table.assign(model=model_id),
        "null_classes": null_classes,
        "structure": test,
        "class_profiles": described.class_profiles,
        "class_metrics": described.class_metrics,
    }
    for name, frame in frames.items():
        if len(frame):
            frame = frame[["model"] + [col for col in frame.columns if col != "model"]]
            frames[name] = frame.assign(legacy_pairing_error=legacy)
    means = np.array([X[labels == c_].mean(axis=0) for c_ in np.unique(labels)])
    return ConsensusResult(
        model=model_id,
        k=chosen,
        kind=kind,
        legacy=legacy,
        **frames,
        class_means=means,
        edges=edges,
        null_c=null_c,
        null_features=null_features,
        d_model_source=d_source,
    )


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
    from . import plots, rmt_null

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


consensus_classes = analyze
"""The public name of :func:`analyze` (``qk_spectra_ds.consensus_classes``): one model's default-method classes."""
