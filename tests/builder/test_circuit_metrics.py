"""Symmetry, copying score and the matched null (qk_spectra_ds.builder.circuits) against dense definitions and draws."""

from __future__ import annotations

import numpy as np
import pytest

from qk_spectra_ds.builder import circuits


def _frames(rng, n: int, d: int, k: int) -> np.ndarray:
    """n Haar-random d x k orthonormal frames, directly (QR of Gaussians, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((n, d, k)))
    return q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]


def test_metrics_equal_their_dense_definitions():
    rng = np.random.default_rng(0)
    d, dh = 14, 4
    a, b = rng.standard_normal((dh, d)), rng.standard_normal((dh, d))
    a[:, :3] += b[:, :3]  # some alignment, so the metrics are not all near their null values
    m = a.T @ b  # the circuit, d x d
    s = np.linalg.svd(m, compute_uv=False)[:dh]
    mu = np.linalg.eigvals(b @ a.T)  # the cross: M's non-zero eigenvalues
    dense_mu = np.linalg.eigvals(m)
    assert circuits.symmetry(s, mu) == pytest.approx(np.square((m + m.T) / 2).sum() / np.square(m).sum(), rel=1e-12)
    assert circuits.copying_score(mu) == pytest.approx(dense_mu.real.sum() / np.abs(dense_mu).sum(), rel=1e-9)
    positive = np.abs(dense_mu[dense_mu.real > 0]).sum() / np.abs(dense_mu).sum()
    assert circuits.positive_share(mu) == pytest.approx(positive, rel=1e-9)
    sym = circuits.symmetry(np.array([1.0, 1.0]), np.array([1.0, 1.0]))  # the identity on a plane: symmetric
    anti = circuits.symmetry(np.array([1.0, 1.0]), np.array([1j, -1j]))  # a rotation by 90 degrees: antisymmetric
    assert (sym, anti) == (1.0, 0.0)
    assert np.isnan(circuits.symmetry(np.zeros(3), np.zeros(3))) and np.isnan(circuits.copying_score(np.zeros(3)))


@pytest.mark.slow
def test_haar_block_draws_match_direct_frames():
    """V^T U of two Haar frames vs the Bartlett-drawn block: the moments the analytic symmetry null uses."""
    d, dh, n = 9, 3, 60000
    block = circuits.haar_block_draws(np.random.default_rng(1), n, d, dh)
    direct = np.einsum("nij,nik->njk", *(_frames(np.random.default_rng(s), n, d, dh) for s in (2, 3)))
    small = circuits.haar_block_draws(np.random.default_rng(4), n, 5, 3)  # d - dh < dh: Y drawn directly
    for w in (block, direct):
        assert (w[:, 0, 0] ** 2).mean() == pytest.approx(1 / d, rel=0.02)
        assert (w[:, 0, 0] ** 4).mean() == pytest.approx(3 / (d * (d + 2)), rel=0.05)
        assert (w[:, 0, 0] ** 2 * w[:, 1, 1] ** 2).mean() == pytest.approx((d + 1) / (d * (d - 1) * (d + 2)), rel=0.05)
        assert (w[:, 0, 1] ** 2 * w[:, 1, 0] ** 2).mean() == pytest.approx((d + 1) / (d * (d - 1) * (d + 2)), rel=0.05)
    assert (small[:, 0, 0] ** 2).mean() == pytest.approx(1 / 5, rel=0.02)
    assert np.linalg.norm(small, ord=2, axis=(1, 2)).max() <= 1 + 1e-12  # a block of an orthogonal matrix


@pytest.mark.slow
def test_matched_null_z_scores_are_calibrated(monkeypatch):
    """On heads drawn from the matched null itself, symmetry and positivity z have mean 0 and sd 1.

    256 Monte Carlo draws (not the builder's adaptive count, up to 4096 for heads this small): the
    per-head sd error then adds ~(3%)^2 to the variance of z, far inside the tolerance.
    """
    monkeypatch.setattr(circuits, "MIN_DRAWS", 256)
    monkeypatch.setattr(circuits, "MAX_DRAWS", 256)
    rng = np.random.default_rng(5)
    n, d, dh = 300, 24, 8
    s = np.sort(np.exp(rng.normal(0, 1, (n, dh))), axis=1)[:, ::-1]
    m = _frames(rng, n, d, dh) * s[:, None, :] @ _frames(rng, n, d, dh).transpose(0, 2, 1)  # U diag(s) V^T
    sym = np.square((m + m.transpose(0, 2, 1)) / 2).sum((1, 2)) / np.square(m).sum((1, 2))
    mean, sd = circuits.symmetry_null_moments(s, d)
    z = circuits.z_scores(sym, mean, sd)
    assert abs(z.mean()) < 4 / np.sqrt(n) and abs(z.std() - 1) < 0.08
    eig = np.linalg.eigvals(m)
    top = np.take_along_axis(eig, np.argsort(-np.abs(eig), axis=1)[:, :dh], axis=1)
    p_mean, p_sd, draws = circuits.positivity_null_moments(s, d, np.random.default_rng(6))
    assert (p_mean == 0).all() and draws >= circuits.MIN_DRAWS
    z = circuits.z_scores(circuits.copying_score(top), p_mean, p_sd)
    assert abs(z.mean()) < 4 / np.sqrt(n) and abs(z.std() - 1) < 0.08


def test_monte_carlo_null_sd_is_reproducible_and_within_its_error():
    s = np.sort(np.abs(np.random.default_rng(7).standard_normal((3, 16))), axis=1)[:, ::-1] + 0.1
    one = circuits.positivity_null_moments(s, 64, circuits.matched_null_rng(0, 1, 2, 1, 0))
    again = circuits.positivity_null_moments(s, 64, circuits.matched_null_rng(0, 1, 2, 1, 0))
    other = circuits.positivity_null_moments(s, 64, circuits.matched_null_rng(1, 1, 2, 1, 0))
    np.testing.assert_array_equal(one[1], again[1])
    assert one[2] <= circuits.MAX_DRAWS
    np.testing.assert_allclose(one[1], other[1], rtol=4 * circuits.SD_REL_ERROR)  # two seeds agree within ~4 errors


def test_symmetry_null_is_calibrated_where_d_model_is_small():
    """At d_model 10 the exact Haar moments matter (a Gaussian or a wrong fourth moment is off by 5-20% in sd)."""
    rng = np.random.default_rng(8)
    n, d, dh = 4000, 10, 4
    s = np.sort(np.exp(rng.normal(0, 1, (n, dh))), axis=1)[:, ::-1]
    m = _frames(rng, n, d, dh) * s[:, None, :] @ _frames(rng, n, d, dh).transpose(0, 2, 1)
    sym = np.square((m + m.transpose(0, 2, 1)) / 2).sum((1, 2)) / np.square(m).sum((1, 2))
    z = circuits.z_scores(sym, *circuits.symmetry_null_moments(s, d))
    assert abs(z.mean()) < 4 / np.sqrt(n) and abs(z.std() - 1) < 0.05


def test_error_bound_factor_is_the_chi_square_upper_bound():
    """sqrt(dof / chi2_dof(0.1)): the draws stop on this bound of the error, not on its noisy estimate."""
    from scipy.stats import chi2

    for dof in (3, 4, 7, 15, 31, 63, 127, 1023):
        exact = np.sqrt(dof / chi2.ppf(0.1, dof))
        assert circuits.error_bound_factor(dof) == pytest.approx(exact, rel=0.013)


@pytest.mark.slow  # 150 seeds per shape: ~2-5 s each
@pytest.mark.parametrize("d_model, d_head, spread", [(24, 8, 1.0), (64, 16, 1.0), (256, 32, 0.3)])
def test_monte_carlo_null_sd_error_is_the_claimed_error(d_model, d_head, spread):
    """Over 150 seeds the null sd's relative spread is at most SD_REL_ERROR (up to the spread's own error).

    The shapes span both regimes: many draws (d_model 24: 16-256 per layer) and the minimum
    (d_model 256, a narrow spectrum: mostly 4). A target the draws did not reach, or an error
    estimate too optimistic to stop on (no confidence bound, fewer draws), fails it; so does a
    rule that overshoots the target fivefold (the spread far below it: wasted draws).
    """
    rng = np.random.default_rng(11)
    s = np.sort(np.exp(rng.normal(0, spread, (3, d_head))), axis=1)[:, ::-1]
    runs = [circuits.positivity_null_moments(s, d_model, np.random.default_rng(seed)) for seed in range(150)]
    sds = np.array([sd for _, sd, _ in runs])
    relative = sds.std(axis=0, ddof=1) / sds.mean(axis=0)
    # the spread of 150 estimates is itself uncertain by ~6% (more with heavy tails): 1.2x allows ~3 of those
    assert relative.max() <= 1.2 * circuits.SD_REL_ERROR, relative
    assert relative.min() >= circuits.SD_REL_ERROR / 5, relative
    assert min(n for _, _, n in runs) >= circuits.MIN_DRAWS


@pytest.mark.slow  # transformers makes the model, two builds
def test_files_of_an_earlier_matched_null_are_rebuilt(tmp_path, monkeypatch):
    """Method 5 changed the matched null's draws (target 1/30, stopping on a bound): method-4 files rebuild."""
    import pyarrow.parquet as pq
    from tiny_models import make_saved

    from qk_spectra_ds import schema
    from qk_spectra_ds.builder.pipeline import build_model

    assert schema.METHOD_VERSION >= 5
    model_dir = make_saved("llama-gqa", tmp_path / "m")[1]
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setattr(schema, "METHOD_VERSION", 4)
        old = build_model(str(model_dir), "Trust", out, device="cpu", progress=False, variants=["raw"])
    assert set(pq.read_table(old.path)["method_version"].to_pylist()) == {4}
    assert build_model(str(model_dir), "Trust", out, device="cpu", progress=False, variants=["raw"]).status == "built"
    assert set(pq.read_table(old.path)["method_version"].to_pylist()) == {schema.METHOD_VERSION}
