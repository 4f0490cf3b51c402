"""The two routes of the positional spectra: Gram (symmetric eigenvalues) for well-conditioned heads, SVD otherwise.

Reference: the rotation R(delta) formed as a dense matrix from the pairs and angles, the core
A R(delta)^T B formed densely, numpy's float64 SVD. A Gram route taken for an ill-conditioned head
would lose ~eps * cond^2 of relative accuracy on the smallest singular values (1e-5 at cond 1e6):
the guard must send such heads to the SVD.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qk_spectra_ds.builder import variants
from qk_spectra_ds.builder.rotary import Rotary
from qk_spectra_ds.builder.variants import GRAM_ROUTE_COND_MAX, positional_singular_values

D_HEAD = 32
OFFSETS = (0, 1, 7, 300, 40000)


def _factor(rng, cond: float) -> np.ndarray:
    """A dense d_head x d_head factor with condition number ``cond`` (log-spaced singular values).

    Dense, not triangular: a triangular factor's graded rows can make the Gram route accurate
    beyond its bound, which would hide a missing guard.
    """
    u, _ = np.linalg.qr(rng.standard_normal((D_HEAD, D_HEAD)))
    v, _ = np.linalg.qr(rng.standard_normal((D_HEAD, D_HEAD)))
    return (u * np.logspace(0, -np.log10(cond), D_HEAD)) @ v.T


def _rotation(rotary: Rotary, delta: int) -> np.ndarray:
    """R(delta) as a dense matrix: (R v)[i] = v[i] cos - v[j] sin, (R v)[j] = v[j] cos + v[i] sin."""
    r = np.eye(D_HEAD)
    i, j = rotary.pairs()
    c, s = np.cos(delta * rotary.inv_freq), np.sin(delta * rotary.inv_freq)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("buffer_bytes", [None, 1])  # 1: one offset per pass
def test_each_head_takes_a_route_that_keeps_every_singular_value_exact(interleaved, buffer_bytes, monkeypatch):
    if buffer_bytes is not None:
        monkeypatch.setattr(variants, "CORE_BUFFER_BYTES", buffer_bytes)
    rng = np.random.default_rng(3)
    conds = [3.0, 30.0, 1e3, 1e6]  # query-factor conditions; key factors have condition 10
    lq_t = np.stack([_factor(rng, c) for c in conds])  # A (the query side)
    lk = np.stack([_factor(rng, 10.0), _factor(rng, 10.0)])  # B (the key side)
    kv = np.array([0, 0, 1, 1])
    inv_freq = 1.0 / 10000.0 ** (np.arange(0, D_HEAD, 2) / D_HEAD)
    rotary = Rotary(inv_freq, 1.0, interleaved, "default")
    ours = positional_singular_values(
        torch.from_numpy(lq_t), torch.from_numpy(lk), torch.from_numpy(kv), rotary, OFFSETS
    )
    assert 3.0 * 10.0 <= GRAM_ROUTE_COND_MAX < 1e6 * 10.0  # both routes are exercised
    for o, delta in enumerate(OFFSETS):
        for h in range(len(conds)):
            ref = np.linalg.svd(lq_t[h] @ _rotation(rotary, delta).T @ lk[kv[h]], compute_uv=False)
            err = np.max(np.abs(ours[o, h] - ref) / ref)
            assert err <= 1e-7, (delta, conds[h], err)  # the Gram route at its bound: ~1.3e-8; unguarded: 1e-5


def test_a_rank_deficient_head_takes_the_svd_and_keeps_its_zeros():
    rng = np.random.default_rng(4)
    a = _factor(rng, 5.0)
    a[-3:] = 0.0  # rank d_head - 3
    b = _factor(rng, 5.0)
    rotary = Rotary(1.0 / 500000.0 ** (np.arange(0, D_HEAD, 2) / D_HEAD), 1.0, False, "default")
    ours = positional_singular_values(
        torch.from_numpy(a[None]), torch.from_numpy(b[None]), torch.tensor([0]), rotary, (5,)
    )
    ref = np.linalg.svd(a @ _rotation(rotary, 5).T @ b, compute_uv=False)
    assert np.allclose(ours[0, 0, :-3], ref[:-3], rtol=1e-12) and np.all(ours[0, 0, -3:] <= 1e-14 * ref[0])
