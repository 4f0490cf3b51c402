"""Consensus classes of attention heads, with their stability (the default method).

The original study's classes (one ``KMeans(6, random_state=0)`` on heads in
file order) change with the seed, the bins, the quantile and even the row
order. This module gives classes that do not:

1. **Canonical order** (:mod:`.consensus_features`). Each model's heads are sorted by (layer, head) before
   anything random, so shuffled rows give identical results.
2. **Features** (:data:`.consensus_features.FEATURES`): ``log`` (default) keeps the whole
   spectrum: a density histogram of ``log10(l / mean l)`` on the fixed range
   :data:`.consensus_features.LOG_RANGE`, values beyond it counted in the end bins (nothing is
   cut); ``linear`` is the original's histogram on ``[0, q]``, which drops
   every eigenvalue above the ``quantile`` (the energy it keeps is reported).
3. **Consensus** (:mod:`.consensus_runs`). :data:`.consensus_runs.N_RUNS` KMeans runs, each with its own seed on a
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
5. **Stability table** (:mod:`.consensus_stability`). ARI of the consensus classes against the consensus
   with other master seeds, other bin counts (16, 32), other feature ranges
   (quantile 0.90/0.99 or log range -3/-5), between bootstrap runs, and, for
   comparison, of the original single KMeans(6) across seeds 1-10.

This module picks k (:func:`select_k`, the one definition) and runs one model
end to end (:func:`analyze`); the figure is :mod:`.consensus_figures`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import AnalysisError
from . import features as original_features
from .consensus_features import DEFAULT_FEATURES, LOG_RANGE, canonical_order, head_features
from .consensus_result import ConsensusResult
from .consensus_runs import N_RUNS, consensus, mean_pairwise_ari, silhouette
from .consensus_stability import stability_rows

K_RANGE = tuple(range(2, 9))
STABLE_ARI = 0.8


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


# ---------------------------------------------------------------- one model, end to end


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


consensus_classes = analyze
"""The public name of :func:`analyze` (``qk_spectra_ds.consensus_classes``): one model's default-method classes."""
