"""The cross's eigenvalues survive matrices of tiny scale (torch's eigensolver gave up on them).

``tests/data/tiny_ov_cross.npz`` is the folded OV cross (80 x 80, entries ~1e-20) of a GPT-2 head
whose output projection is all zero (the planted model of the behaviour tests, layer 1):
``torch.linalg.eigvals`` failed to converge on it and the whole model failed to build.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from qk_spectra_ds.builder.spectra import scaled_eigvals, small_problems

DATA = Path(__file__).resolve().parents[1] / "data" / "tiny_ov_cross.npz"


def test_tiny_cross_has_eigenvalues_and_they_match_numpy():
    cross = np.load(DATA)["cross"]
    core = torch.zeros_like(torch.from_numpy(cross))
    _, mu = small_problems(core, torch.from_numpy(cross))  # raised _LinAlgError before the scaling
    mu = mu.numpy()
    assert np.isfinite(mu).all()
    scale = np.abs(cross).max()
    assert abs(mu.sum() - np.trace(cross[0])) <= 1e-9 * scale * cross.shape[-1]
    reference = np.linalg.eigvals(cross[0])
    assert np.abs(np.sort(np.abs(mu[0]))[::-1][:3] - np.sort(np.abs(reference))[::-1][:3]).max() <= 1e-9 * scale


def test_scaling_by_a_power_of_two_leaves_ordinary_eigenvalues_as_they_were():
    rng = np.random.default_rng(0)
    matrices = torch.from_numpy(
        rng.standard_normal((6, 40, 40)) * np.array([1e-30, 1e-3, 1.0, 7.0, 1e6, 0.0])[:, None, None]
    )
    ours = scaled_eigvals(matrices).numpy()
    plain = torch.linalg.eigvals(matrices).numpy()
    for i in range(6):
        scale = max(np.abs(matrices[i].numpy()).max(), 1e-300)
        assert np.allclose(np.sort_complex(ours[i]), np.sort_complex(plain[i]), rtol=0, atol=1e-10 * scale), i
