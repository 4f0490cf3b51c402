"""The joint taxonomy by the default method: one consensus over all models of a config, k = 1 possible.

The original joint taxonomy is one ``KMeans(6)`` over the pooled heads: its
classes change with the seed and with the order of the models. Here:

1. **Order.** Models sorted by id, heads by (layer, head): any order of the
   models or rows gives the same classes.
2. **Pool.** At most :data:`MAX_POOL` heads enter the consensus (its
   co-association matrix is heads x heads): a sample chosen by a digest of
   each head's (model, layer, head), so it does not depend on the order
   either; every head is then assigned to the class with the nearest mean
   features.
3. **Structure first.** The structure test (:mod:`.structure`) on the pool;
   no evidence of classes -> k = 1 ("a continuum"); else k from the k scan,
   as for one model (:func:`.consensus.choose_classes`).
4. **Stability.** Mean ARI between the bootstrap runs at the chosen k, and
   the ARI of the classes against the consensus with other master seeds
   (:data:`.consensus_stability.PERTURBED_SEEDS`), median and 5-95% range.
5. **Crosswalk** (:func:`crosswalk`). Two class systems side by side: heads
   per pair of classes and the ARI per model (each model's own consensus
   classes against the joint ones; the original's joint KMeans against the
   joint consensus).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from ..statistics import spectrum_metrics
from . import class_profiles, consensus, consensus_features, consensus_runs, consensus_stability
from .consensus_result import JointConsensusResult
from .taxonomy import ModelHeads, depth_bands

MAX_POOL = 2000
JOINT = "<joint: all models>"


def _key_rank(model: str, layers: np.ndarray, heads: np.ndarray, seed: int) -> np.ndarray:
    """A pseudo-random number per head from a digest of (seed, model, layer, head): the pool's order-free sample."""
    out = np.empty(len(layers), dtype=np.uint64)
    for i, (layer, head) in enumerate(zip(layers, heads)):
        digest = hashlib.sha256(f"{seed}\x1f{model}\x1f{int(layer)}\x1f{int(head)}".encode()).digest()
        out[i] = int.from_bytes(digest[:8], "little")
    return out


def pooled(
    models: list[ModelHeads], kind: str, n_bins: int, quantile: float
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """``(keys, eigenvalues, features)`` of every head, models sorted by id and heads by (layer, head)."""
    keys, evs = [], []
    for m in sorted(models, key=lambda m: m.model_id):
        order = np.lexsort((m.heads, m.layers))
        keys.append(
            pd.DataFrame(
                {
                    "model": m.model_id,
                    "layer": np.asarray(m.layers)[order],
                    "head": np.asarray(m.heads)[order],
                    "n_layers": m.n_layers,
                }
            )
        )
        evs.append(np.asarray(m.eigenvalues, dtype=np.float64)[order])
    widths = {e.shape[1] for e in evs}
    if len(widths) > 1:  # different d_head: compare normalised spectra by their histograms only (same bins)
        features = np.vstack([consensus_features.head_features(e, kind, n_bins, quantile)[0] for e in evs])
    else:
        features = consensus_features.head_features(np.vstack(evs), kind, n_bins, quantile)[0]
    return pd.concat(keys, ignore_index=True), evs, features


def joint_consensus(
    models: list[ModelHeads],
    kind: str = consensus_features.DEFAULT_FEATURES,
    k: int | str = "auto",
    n_bins: int = 24,
    quantile: float = 0.96,
    seed: int = 0,
    n_bands: int = 5,
    structure_draws: int | None = None,
) -> JointConsensusResult:
    """The joint classes as a :class:`.consensus_result.JointConsensusResult`: the k used and the tables
    ``taxonomy_structure``, ``taxonomy_k_selection``, ``taxonomy_consensus_classes``, ``taxonomy_consensus_labels``,
    ``taxonomy_stability``."""
    keys, evs, X = pooled(models, kind, n_bins, quantile)
    rank = np.concatenate(
        [_key_rank(m, g["layer"].to_numpy(), g["head"].to_numpy(), seed) for m, g in keys.groupby("model", sort=True)]
    )
    pool = np.sort(np.argsort(rank, kind="stable")[:MAX_POOL]) if len(X) > MAX_POOL else np.arange(len(X))
    Xp = X[pool]
    chosen, scan, results, test = consensus.choose_classes(JOINT, Xp, k, seed, structure_draws)
    pool_labels, _, runs = results[chosen]
    classes = np.unique(pool_labels)
    centres = np.array([Xp[pool_labels == c].mean(axis=0) for c in classes])
    labels = classes[np.argmin(((X[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2), axis=1)]
    labels[pool] = pool_labels
    bands = np.concatenate(
        [
            depth_bands(g["layer"].to_numpy(), int(g["n_layers"].iloc[0]), n_bands)
            for _, g in keys.groupby("model", sort=True)
        ]
    )
    out_labels = keys.assign(band=bands, **{"class": labels})
    if chosen >= 2:
        bootstrap = consensus_runs.mean_pairwise_ari(runs)
        seeds = [
            consensus_runs.ari(pool_labels, consensus_runs.consensus(Xp, chosen, consensus_runs.N_RUNS, seed + s)[0])
            for s in consensus_stability.PERTURBED_SEEDS
        ]
        stability = pd.DataFrame(
            [
                consensus_stability.ari_summary("bootstrap runs (pairwise)", bootstrap),
                consensus_stability.ari_summary("consensus: master seed", seeds),
            ]
        )
    else:
        stability = pd.DataFrame(
            [
                {
                    "perturbation": "k = 1 (no classes): stability not applicable",
                    "n": 0,
                    "ari_median": np.nan,
                    "ari_min": np.nan,
                    "ari_q05": np.nan,
                    "ari_q95": np.nan,
                }
            ]
        )
    ev_all = np.vstack(evs) if len({e.shape[1] for e in evs}) == 1 else None
    rows = pd.DataFrame({"layer": keys["layer"], "n_layers": keys["n_layers"]})
    if ev_all is not None:  # the metrics the eigenvalues give (the rest of the rows is not in ModelHeads)
        metrics_of = spectrum_metrics(np.sqrt(np.clip(ev_all, 0.0, None)))
        rows = rows.assign(
            stable_rank=metrics_of["stable_rank"],
            effective_rank=metrics_of["effective_rank"],
            spectral_norm=metrics_of["spectral_norm"],
        )
    metrics = class_profiles.metrics_table(JOINT, rows, labels)
    names = {int(c): class_profiles.class_name(metrics[metrics["class"] == c], len(classes)) for c in classes}
    table = pd.DataFrame(
        [
            {
                "class": int(c),
                "name": names[int(c)],
                "n_heads": int((labels == c).sum()),
                "share": float((labels == c).mean()),
            }
            for c in classes
        ]
    )
    return JointConsensusResult(
        k=chosen,
        taxonomy_structure=test.assign(pooled_heads=len(pool), all_heads=len(X)),
        taxonomy_k_selection=scan.assign(model=JOINT),
        taxonomy_consensus_classes=table,
        taxonomy_consensus_labels=out_labels[["model", "layer", "head", "band", "class"]],
        taxonomy_stability=stability.assign(k=chosen),
    )


CROSSWALK_COLUMNS = ["system_a", "system_b", "model", "class_a", "class_b", "n_heads", "ari"]


def crosswalk(a: pd.DataFrame, b: pd.DataFrame, system_a: str, system_b: str) -> pd.DataFrame:
    """Per model: heads in each (class in ``a``, class in ``b``) pair and the ARI of the two labelings of its heads.

    ``a``, ``b``: label tables (model, layer, head, class) of two class systems, matched on (model, layer, head).
    """
    merged = a[["model", "layer", "head", "class"]].merge(
        b[["model", "layer", "head", "class"]], on=["model", "layer", "head"], suffixes=("_a", "_b")
    )
    parts = []
    for model, g in merged.groupby("model", sort=True):
        counts = g.groupby(["class_a", "class_b"]).size().rename("n_heads").reset_index()
        parts.append(
            counts.assign(
                model=model,
                system_a=system_a,
                system_b=system_b,
                ari=consensus_runs.ari(g["class_a"].to_numpy(), g["class_b"].to_numpy()),
            )
        )
    if not parts:
        return pd.DataFrame(columns=CROSSWALK_COLUMNS)
    table = pd.concat(parts, ignore_index=True)[CROSSWALK_COLUMNS]
    if "variant" in a.columns:  # as every table of a report: the variant the classes were computed on
        table.insert(
            table.columns.get_loc("model") + 1, "variant", table["model"].map(a.groupby("model")["variant"].first())
        )
    return table
