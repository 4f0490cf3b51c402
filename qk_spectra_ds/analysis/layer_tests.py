"""Valid tests for the per-layer series of classification B (the default method).

The original study tests the series of per-layer medians with statsmodels'
BDS statistic and its *asymptotic* normal p-value. At 16-36 layers that
p-value is not valid (it rejects i.i.d. noise far more often than the nominal
level), and BDS tests i.i.d.-ness, not nonlinearity. Here, for the same
series:

- **BDS by permutation**: the same statistic (embedding dimension 2,
  epsilon = 1.5 standard deviations, as statsmodels' defaults), its null
  distribution from :data:`N_PERMUTATIONS` random shufflings of the layer
  order (exchangeability is exactly the i.i.d. null), two-sided p-value
  ``(1 + #{|T*| >= |T|}) / (1 + P)``;
- **depth trend by permutation**: Spearman's rho between layer position and
  value, same permutations, two-sided;
- **Holm's correction** over the model's tests (all statistics, both tests).

Series shorter than :data:`MIN_LAYERS` are not tested (NaN, ``note`` says
why): with so few layers the permutation distribution of the BDS indicator
statistic has only a handful of distinct values and no test has useful power.

Permutations are seeded per (model, statistic) from a digest of their names,
so a result does not depend on which other models or statistics are analysed
or in which order.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

N_PERMUTATIONS = 999
MIN_LAYERS = 10
BDS_DISTANCE = 1.5
ALPHA = 0.05
ASYMPTOTIC_LABEL = "asymptotic, invalid at these lengths"


def bds_statistic(series: np.ndarray, distance: float = BDS_DISTANCE) -> np.ndarray:
    """The BDS statistic (embedding dimension 2) of each row of ``series`` ``(P, n)``, vectorised.

    The same formula as ``statsmodels.tsa.stattools.bds(x, max_dim=2)``
    (epsilon = ``distance`` x the row's std with ddof 1), for many series at
    once: one ``(P, n, n)`` indicator array instead of a Python call per series.
    """
    x = np.atleast_2d(np.asarray(series, dtype=np.float64))
    n = x.shape[1]
    eps = distance * x.std(axis=1, ddof=1)
    ind = (np.abs(x[:, :, None] - x[:, None, :]) < eps[:, None, None]).astype(np.float64)
    iu = np.triu_indices(n, 1)
    c1_full = ind[:, iu[0], iu[1]].mean(axis=1)
    k = ((ind.sum(axis=1) ** 2).sum(axis=1) - 3 * ind.sum(axis=(1, 2)) + 2 * n) / (n * (n - 1) * (n - 2))
    variance = 4 * (k**2 + 2 * k * c1_full**2 + c1_full**4 - 4 * k * c1_full**2)
    joint = ind[:, 1:, 1:] * ind[:, :-1, :-1]
    iu1 = np.triu_indices(n - 1, 1)
    c2 = joint[:, iu1[0], iu1[1]].mean(axis=1)
    c1 = ind[:, 1:, 1:][:, iu1[0], iu1[1]].mean(axis=1)
    with np.errstate(all="ignore"):
        return np.sqrt(n - 1) * (c2 - c1**2) / np.sqrt(variance)


def spearman_trend(series: np.ndarray) -> np.ndarray:
    """Spearman's rho between position (0..n-1) and value, for each row of ``series`` ``(P, n)``."""
    from scipy.stats import rankdata

    r = rankdata(np.atleast_2d(series), axis=1)
    r = r - r.mean(axis=1, keepdims=True)
    t = np.arange(r.shape[1], dtype=np.float64)
    t -= t.mean()
    with np.errstate(all="ignore"):
        return (r @ t) / np.sqrt((r**2).sum(axis=1) * (t**2).sum())


def seed_for(*names: object, seed: int = 0) -> np.random.SeedSequence:
    """A SeedSequence keyed by ``names`` (sha256, never Python's salted ``hash``) and ``seed``."""
    digest = hashlib.sha256("\x1f".join(map(str, names)).encode()).digest()
    return np.random.SeedSequence(entropy=int(seed), spawn_key=(int.from_bytes(digest[:8], "little"),))


def permutation_pvalues(
    series: np.ndarray, n_permutations: int = N_PERMUTATIONS, rng: np.random.Generator | None = None
) -> dict[str, float]:
    """BDS and Spearman-trend statistics of ``series`` with two-sided permutation p-values (layer order shuffled)."""
    x = np.asarray(series, dtype=np.float64)
    rng = rng if rng is not None else np.random.default_rng(0)
    perms = rng.permuted(np.broadcast_to(x, (int(n_permutations), len(x))), axis=1)
    out = {}
    for name, fn in (("bds", bds_statistic), ("trend_rho", spearman_trend)):
        observed = float(fn(x)[0])
        null = fn(perms)
        if not np.isfinite(observed):
            out[name], out[f"p_{name}"] = float("nan"), float("nan")
            continue
        tol = 1e-12 * max(1.0, abs(observed))  # ties of the discrete statistic count as extreme
        extreme = np.count_nonzero(np.abs(null[np.isfinite(null)]) >= abs(observed) - tol)
        out[name], out[f"p_{name}"] = observed, (1 + extreme) / (1 + len(null))
    return out


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN entries ignored and kept NaN)."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    running = 0.0
    for i, idx in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[idx]))
        out[idx] = running
    return out


def series_tests(
    model_id: str, stat: str, medians: np.ndarray, original_p: float = float("nan"),
    n_permutations: int = N_PERMUTATIONS, min_layers: int = MIN_LAYERS, seed: int = 0,
) -> dict:
    """One row of the layer-test table for one model and statistic (permutation BDS, trend; untested if short)."""
    x = np.asarray(medians, dtype=np.float64)
    row = {"model": model_id, "stat": stat, "n_layers": len(x), "bds": np.nan, "p_bds_permutation": np.nan,
           "trend_rho": np.nan, "p_trend_permutation": np.nan,
           "p_bds_asymptotic": float(original_p), "note": ""}  # fmt: skip
    if len(x) < int(min_layers):
        row["note"] = f"not tested: {len(x)} layers < {int(min_layers)}"
        return row
    if np.ptp(x) == 0 or not np.isfinite(x).all():
        row["note"] = "not tested: constant or non-finite series"
        return row
    rng = np.random.default_rng(seed_for(model_id, stat, seed=seed))
    res = permutation_pvalues(x, n_permutations, rng)
    row.update(bds=res["bds"], p_bds_permutation=res["p_bds"], trend_rho=res["trend_rho"],
               p_trend_permutation=res["p_trend_rho"])  # fmt: skip
    return row


LAYER_TEST_COLUMNS = [
    "model", "stat", "n_layers", "bds", "p_bds_permutation", "p_bds_permutation_holm", "trend_rho",
    "p_trend_permutation", "p_trend_permutation_holm", "p_bds_asymptotic", "p_bds_asymptotic_kind",
    "original_significant", "survives", "note",
]  # fmt: skip


def layer_test_table(rows: list[dict], alpha: float = ALPHA) -> pd.DataFrame:
    """The per-model table: Holm within each model over both tests, and which original BDS results survive.

    ``original_significant``: the original's asymptotic p < ``alpha``;
    ``survives``: that, and the permutation BDS p-value after Holm < ``alpha``.
    """
    table = pd.DataFrame(rows)
    table["p_bds_permutation_holm"] = np.nan
    table["p_trend_permutation_holm"] = np.nan
    for _, idx in table.groupby("model", sort=False).groups.items():
        both = np.concatenate([table.loc[idx, "p_bds_permutation"], table.loc[idx, "p_trend_permutation"]])
        adjusted = holm(both)
        table.loc[idx, "p_bds_permutation_holm"] = adjusted[: len(idx)]
        table.loc[idx, "p_trend_permutation_holm"] = adjusted[len(idx):]
    table["p_bds_asymptotic_kind"] = ASYMPTOTIC_LABEL
    table["original_significant"] = table["p_bds_asymptotic"] < alpha
    table["survives"] = table["original_significant"] & (table["p_bds_permutation_holm"] < alpha)
    return table[LAYER_TEST_COLUMNS]
