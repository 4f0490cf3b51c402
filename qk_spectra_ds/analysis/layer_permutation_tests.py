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
- **depth profile by permutation** (non-monotone shapes too): the share of
  the series' variance explained by a cubic polynomial in layer position
  (``profile_r2``), same permutations, one-sided;
- **effect sizes** beside every p-value: BDS with its permutation null's
  2.5/97.5% quantiles, Spearman's rho with a 95% interval (Fisher z, standard
  error ``1.06 / sqrt(n - 3)``, Fieller, Hartley and Pearson 1957), the
  profile's R^2 with its null's 95% quantile;
- **Holm's correction** over the model's tests (all statistics, the three
  tests: ``*_holm``) and across every test of the report (all models:
  ``*_holm_all``, :func:`correct_across`), named in the ``correction`` column;
- **power** at the series' length (``power_note``): how often each test,
  at the report's level after the model's Holm correction, finds a linear
  trend and a hump of 2 standard deviations of i.i.d. noise
  (:func:`power_at`, simulated with fixed seeds). "Not significant" with
  low power means "not seen", never "flat".

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
from scipy.stats import rankdata

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
    for name, fn in (("bds", bds_statistic), ("trend_rho", spearman_trend), ("profile_r2", profile_r2)):
        observed = float(fn(x)[0])
        null = fn(perms)
        null = null[np.isfinite(null)]
        out[f"{name}_null_q025"], out[f"{name}_null_q975"] = (
            (float(np.quantile(null, 0.025)), float(np.quantile(null, 0.975))) if len(null) else (np.nan, np.nan)
        )
        if not np.isfinite(observed):
            out[name], out[f"p_{name}"] = float("nan"), float("nan")
            continue
        tol = 1e-12 * max(1.0, abs(observed))  # ties of the discrete statistic count as extreme
        if name == "profile_r2":  # one-sided: more variance explained than chance
            extreme = np.count_nonzero(null >= observed - tol)
        else:
            extreme = np.count_nonzero(np.abs(null) >= abs(observed) - tol)
        out[name], out[f"p_{name}"] = observed, (1 + extreme) / (1 + len(null))
    return out


PROFILE_DEGREE = 3


def profile_r2(series: np.ndarray, degree: int = PROFILE_DEGREE) -> np.ndarray:
    """Share of each row's variance explained by a polynomial of ``degree`` in position (humps, U shapes, trends)."""
    y = np.atleast_2d(np.asarray(series, dtype=np.float64))
    n = y.shape[1]
    t = np.linspace(-1.0, 1.0, n)
    basis = np.stack([t**d for d in range(1, int(degree) + 1)], axis=1)
    basis -= basis.mean(axis=0)
    q = np.linalg.qr(basis)[0]
    yc = y - y.mean(axis=1, keepdims=True)
    with np.errstate(all="ignore"):
        return ((yc @ q) ** 2).sum(axis=1) / (yc**2).sum(axis=1)


def spearman_interval(rho: float, n: int) -> tuple[float, float]:
    """95% interval of Spearman's rho: Fisher z with standard error 1.06 / sqrt(n - 3) (NaN for n <= 3)."""
    if not np.isfinite(rho) or n <= 3:
        return float("nan"), float("nan")
    z = np.arctanh(np.clip(rho, -0.999999, 0.999999))
    half = 1.959964 * 1.06 / np.sqrt(n - 3)
    return float(np.tanh(z - half)), float(np.tanh(z + half))


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
    model_id: str,
    stat: str,
    medians: np.ndarray,
    original_p: float = float("nan"),
    n_permutations: int = N_PERMUTATIONS,
    min_layers: int = MIN_LAYERS,
    seed: int = 0,
) -> dict:
    """One row of the layer-test table for one model and statistic (permutation BDS, trend; untested if short)."""
    x = np.asarray(medians, dtype=np.float64)
    row = {
        "model": model_id,
        "stat": stat,
        "n_layers": len(x),
        "bds": np.nan,
        "bds_null_q025": np.nan,
        "bds_null_q975": np.nan,
        "p_bds_permutation": np.nan,
        "trend_rho": np.nan,
        "trend_rho_low": np.nan,
        "trend_rho_high": np.nan,
        "p_trend_permutation": np.nan,
        "profile_r2": np.nan,
        "profile_r2_null_q975": np.nan,
        "p_profile_permutation": np.nan,
        "p_bds_asymptotic": float(original_p),
        "note": "",
        "power_note": "",
    }
    if len(x) < int(min_layers):
        row["note"] = f"not tested: {len(x)} layers < {int(min_layers)}"
        return row
    if np.ptp(x) == 0 or not np.isfinite(x).all():
        row["note"] = "not tested: constant or non-finite series"
        return row
    rng = np.random.default_rng(seed_for(model_id, stat, seed=seed))
    res = permutation_pvalues(x, n_permutations, rng)
    low, high = spearman_interval(res["trend_rho"], len(x))
    row.update(
        bds=res["bds"],
        bds_null_q025=res["bds_null_q025"],
        bds_null_q975=res["bds_null_q975"],
        p_bds_permutation=res["p_bds"],
        trend_rho=res["trend_rho"],
        trend_rho_low=low,
        trend_rho_high=high,
        p_trend_permutation=res["p_trend_rho"],
        profile_r2=res["profile_r2"],
        profile_r2_null_q975=res["profile_r2_null_q975"],
        p_profile_permutation=res["p_profile_r2"],
        power_note=power_note(len(x)),
    )
    return row


TESTS = ("bds", "trend", "profile")

LAYER_TEST_COLUMNS = [
    "model",
    "stat",
    "n_layers",
    "bds",
    "bds_null_q025",
    "bds_null_q975",
    "p_bds_permutation",
    "p_bds_permutation_holm",
    "p_bds_permutation_holm_all",
    "trend_rho",
    "trend_rho_low",
    "trend_rho_high",
    "p_trend_permutation",
    "p_trend_permutation_holm",
    "p_trend_permutation_holm_all",
    "profile_r2",
    "profile_r2_null_q975",
    "p_profile_permutation",
    "p_profile_permutation_holm",
    "p_profile_permutation_holm_all",
    "correction",
    "p_bds_asymptotic",
    "p_bds_asymptotic_kind",
    "original_significant",
    "survives",
    "note",
    "power_note",
]
"""``*_holm``: Holm within the model (its statistics x the three tests); ``*_holm_all``: Holm across every
test of the report (all models), filled by :func:`correct_across`; ``survives`` uses the report-wide column."""

CORRECTION = "Holm (family-wise error): *_holm within the model, *_holm_all across all {m} tests of the report"


def layer_test_table(rows: list[dict], alpha: float = ALPHA) -> pd.DataFrame:
    """The per-model table: Holm within each model over both tests, and which original BDS results survive.

    ``original_significant``: the original's asymptotic p < ``alpha``;
    ``survives``: that, and the permutation BDS p-value after Holm < ``alpha``.
    """
    table = pd.DataFrame(rows)
    for test in TESTS:
        table[f"p_{test}_permutation_holm"] = np.nan
    for idx in table.groupby("model", sort=False).groups.values():
        _holm_columns(table, idx, "holm")
    table["p_bds_asymptotic_kind"] = ASYMPTOTIC_LABEL
    table["original_significant"] = table["p_bds_asymptotic"] < alpha
    return correct_across(table, alpha)


def _holm_columns(table: pd.DataFrame, idx, suffix: str) -> None:
    """Holm over the three tests' p-values of the rows ``idx``, written to ``p_<test>_permutation_<suffix>``."""
    stacked = np.concatenate([table.loc[idx, f"p_{t}_permutation"].to_numpy(np.float64) for t in TESTS])
    adjusted = holm(stacked)
    for i, test in enumerate(TESTS):
        table.loc[idx, f"p_{test}_permutation_{suffix}"] = adjusted[i * len(idx) : (i + 1) * len(idx)]


def correct_across(table: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """Holm across every test in ``table`` (all models): ``*_holm_all``, ``correction``, ``survives``.

    ``survives``: the original's asymptotic BDS was significant, and the
    permutation BDS is too after the report-wide correction.
    """
    table = table.copy().reset_index(drop=True)
    _holm_columns(table, table.index, "holm_all")
    m = int(sum(np.isfinite(table[f"p_{t}_permutation"].to_numpy(np.float64)).sum() for t in TESTS))
    table["correction"] = CORRECTION.format(m=m)
    table["survives"] = table["original_significant"].astype(bool) & (table["p_bds_permutation_holm_all"] < alpha)
    return table[
        [c for c in LAYER_TEST_COLUMNS if c in table.columns]
        + [c for c in table.columns if c not in LAYER_TEST_COLUMNS]
    ]


POWER_SIMULATIONS = 400
POWER_NULL_DRAWS = 4000
POWER_EFFECT_SD = 2.0
"""Effect of the power study: the depth profile spans this many noise standard deviations (lowest to highest point)."""


def shapes(n: int, effect: float = POWER_EFFECT_SD) -> dict[str, np.ndarray]:
    """Depth profiles of ``n`` layers spanning ``effect`` (max - min): ``linear`` and a ``hump`` (peak mid-depth)."""
    t = np.linspace(-1.0, 1.0, n)
    return {"linear": effect * (t - t.min()) / np.ptp(t), "hump": effect * (1.0 - t**2)}


def simulated_power(
    n: int,
    n_sim: int = POWER_SIMULATIONS,
    effect: float = POWER_EFFECT_SD,
    alpha: float = ALPHA,
    seed: int = 0,
    n_stats: int = 6,
    null_draws: int = POWER_NULL_DRAWS,
    n_permutations: int = N_PERMUTATIONS,
) -> dict:
    """Rejection rates of the three tests at ``alpha`` after Holm over ``3 * n_stats`` tests, per shape.

    Shapes: ``null`` (i.i.d. Gaussian noise), ``linear`` and ``hump``
    (:func:`shapes`) plus unit noise. The permutation tests are approximated
    by one Monte Carlo null of ``null_draws`` i.i.d. Gaussian series (exact
    for Spearman's rho, whose permutation null is the same for every series;
    the benchmark checks the others against real permutations), each
    simulated series compared with ``n_permutations`` of them, so that the
    p-values have the report's resolution. The model's other ``n_stats - 1``
    statistics are taken as null (p uniform).
    """
    rng = np.random.default_rng(np.random.SeedSequence(entropy=int(seed), spawn_key=(int(n), 7)))
    fns = {"bds": bds_statistic, "trend": spearman_trend, "profile": profile_r2}
    null = {name: fn(rng.standard_normal((int(null_draws), n))) for name, fn in fns.items()}
    out = {}
    for shape, signal in {"null": np.zeros(n), **shapes(n, effect)}.items():
        x = signal + rng.standard_normal((int(n_sim), n))
        p = np.empty((int(n_sim), 3))
        pick = rng.integers(0, int(null_draws), (int(n_sim), int(n_permutations)))
        for j, (name, fn) in enumerate(fns.items()):
            obs, ref = fn(x), null[name][pick]
            with np.errstate(invalid="ignore"):
                if name == "profile":
                    extreme = ref >= obs[:, None]
                else:
                    extreme = np.abs(ref) >= np.abs(obs)[:, None]
            p[:, j] = (1 + (extreme & np.isfinite(ref)).sum(axis=1)) / (1 + np.isfinite(ref).sum(axis=1))
        others = rng.uniform(size=(int(n_sim), 3 * (int(n_stats) - 1)))
        adjusted = np.array([holm(np.concatenate([p[i], others[i]]))[:3] for i in range(int(n_sim))])
        out[shape] = dict(zip(TESTS, (adjusted < alpha).mean(axis=0)))
    return out


_POWER_CACHE: dict[int, dict] = {}


def power_at(n: int) -> dict:
    """:func:`simulated_power` for ``n`` layers (cached per process)."""
    if n not in _POWER_CACHE:
        _POWER_CACHE[n] = simulated_power(int(n))
    return _POWER_CACHE[n]


def power_note(n: int) -> str:
    """The power of the three tests at ``n`` layers, in words (for the table's notes)."""
    p = power_at(int(n))
    return (
        f"power at {n} layers, Holm over 6 stats x 3 tests, {POWER_SIMULATIONS} simulations; profile spanning "
        f"{POWER_EFFECT_SD:g} noise sd: "
        f"linear: trend {p['linear']['trend']:.0%}, BDS {p['linear']['bds']:.0%}, "
        f"profile {p['linear']['profile']:.0%}; hump: trend {p['hump']['trend']:.0%}, "
        f"BDS {p['hump']['bds']:.0%}, profile {p['hump']['profile']:.0%}; i.i.d. noise: "
        f"{max(p['null'].values()):.0%} at most"
    )


def figure_title_text(row: pd.Series | dict, n_permutations: int = N_PERMUTATIONS, min_layers: int = MIN_LAYERS) -> str:
    """What a default-method box plot's title says about its series: permutation p-values (Holm) or why untested.

    Never the asymptotic BDS p-value, which is invalid at these lengths.
    """
    row = dict(row)
    if not np.isfinite(row.get("p_bds_permutation", np.nan)) and not np.isfinite(
        row.get("p_trend_permutation", np.nan)
    ):
        note = str(row.get("note") or "")
        n = int(row.get("n_layers", 0))
        return (
            f"not tested (n = {n} < {int(min_layers)} layers)"
            if "layers <" in note or not note
            else f"not tested ({note.removeprefix('not tested: ')})"
        )

    def p(name: str) -> str:
        value = row.get(f"p_{name}_permutation_holm", np.nan)
        return "NaN" if not np.isfinite(value) else f"{value:.3f}"

    return (
        f"permutation tests ({n_permutations} shufflings), p Holm-adjusted within the model: "
        f"BDS {row['bds']:.2f} (null 95%: {row['bds_null_q025']:.2f}..{row['bds_null_q975']:.2f}), p = {p('bds')}; "
        f"trend ρ = {row['trend_rho']:.2f} [{row['trend_rho_low']:.2f}, {row['trend_rho_high']:.2f}], p = {p('trend')}; "
        f"profile R² = {row['profile_r2']:.2f}, p = {p('profile')}"
    )
