"""The spectral math: singular values of every head's QK circuit, exactly and cheaply.

For query head h with key head g, W_QK = (W_Q^h)^T W_K^g is d_model x d_model
with rank <= d_head. With the thin factorizations (W_Q^h)^T = Q_a R_a and
(W_K^g)^T = Q_b R_b (Q_a, Q_b orthonormal columns),

    W_QK = Q_a (R_a R_b^T) Q_b^T   so   s(W_QK) = s(R_a R_b^T),

a d_head x d_head problem. R comes from the Cholesky factor of the float64
Gram matrix W W^T = R^T R (one batched GEMM and one batched Cholesky per
layer); a head whose Gram matrix is not positive definite (rank-deficient
weights) falls back to a QR of its thin transpose. Each key head is factored
once and shared by its H / H_kv query heads.

The non-zero eigenvalues mu of W_QK are those of W_K^g (W_Q^h)^T
(d_head x d_head), which gives the positivity metric.

Pure functions of tensors; no I/O. The d_head x d_head SVDs and eigenvalue
problems run on the CPU (LAPACK), where small batched problems are fast; the
O(d_model) work (Gram matrices, Cholesky) runs on ``device``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from .statistics import positivity_from_eigenvalues


@dataclass
class LayerSpectra:
    """Spectra of one layer's query heads, float64, on the CPU."""

    singular_values: np.ndarray  # (H, d_head), descending
    positivity: np.ndarray  # (H,)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


SPLIT_GRAM_MIN_ROWS = 192
"""From this d_head on, the Gram matrix is built from 3 of its 4 row-blocks (25% fewer flops);
below it the smaller GEMMs lose more in efficiency than they save (measured on CPU)."""


def _gram(w: torch.Tensor) -> torch.Tensor:
    """W W^T per head; for large d_head the upper block is mirrored instead of multiplied."""
    n = w.shape[-2]
    if n < SPLIT_GRAM_MIN_ROWS:
        return w @ w.transpose(-1, -2)
    h = n // 2
    top, bottom = w[..., :h, :], w[..., h:, :]
    gram = torch.empty(w.shape[:-2] + (n, n), dtype=w.dtype, device=w.device)
    gram[..., :h, :h] = top @ top.transpose(-1, -2)
    gram[..., h:, :h] = bottom @ top.transpose(-1, -2)
    gram[..., h:, h:] = bottom @ bottom.transpose(-1, -2)
    gram[..., :h, h:] = gram[..., h:, :h].transpose(-1, -2)
    return gram


def _r_factors(w: torch.Tensor) -> torch.Tensor:
    """Lower-triangular L with W W^T = L L^T per head, i.e. R = L^T of W^T = Q R.

    ``w`` is (n, d_head, d_model) float64. Cholesky of the Gram matrix, with a
    QR fallback for the heads where it fails (singular Gram matrix).
    """
    gram = _gram(w)
    lower, info = torch.linalg.cholesky_ex(gram)
    failed = torch.nonzero(info).flatten()
    if failed.numel():
        r = torch.linalg.qr(w[failed].transpose(-1, -2), mode="r")[1]
        lower[failed] = r.transpose(-1, -2)
    return lower


def _cross(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """W_K^g (W_Q^h)^T for every query head: one GEMM per key group, no repeated K."""
    n_heads, d_head, d_model = q.shape
    n_kv = k.shape[0]
    group = n_heads // n_kv
    stacked = k @ q.reshape(n_kv, group * d_head, d_model).transpose(-1, -2)  # (H_kv, dh, G*dh)
    return stacked.reshape(n_kv, d_head, group, d_head).permute(0, 2, 1, 3).reshape(n_heads, d_head, d_head)


def qk_layer_spectra(q: torch.Tensor, k: torch.Tensor, with_positivity: bool = True) -> LayerSpectra:
    """Singular values of W_QK for every query head of a layer, and their positivity.

    ``q``: (H, d_head, d_model), ``k``: (H_kv, d_head, d_model), both float64 on
    any device. Query head h uses key head h // (H / H_kv).
    """
    n_heads, n_kv = q.shape[0], k.shape[0]
    if n_heads % n_kv:
        raise ValueError(f"{n_heads} query heads are not a multiple of {n_kv} key heads")
    group = n_heads // n_kv
    kv_index = torch.arange(n_heads, device=q.device) // group
    lq = _r_factors(q)  # (H, dh, dh), R_a = lq^T
    lk = _r_factors(k)  # (H_kv, dh, dh), R_b = lk^T
    core = lq.transpose(-1, -2) @ lk[kv_index]  # R_a R_b^T
    cross = _cross(q, k) if with_positivity else None  # W_K^g (W_Q^h)^T, (H, dh, dh)
    with _single_threaded():
        singular_values = _per_core(torch.linalg.svdvals, core.cpu())
        if cross is not None:
            positivity = positivity_from_eigenvalues(_per_core(torch.linalg.eigvals, cross.cpu()))
        else:
            positivity = np.full(n_heads, np.nan)
    return LayerSpectra(singular_values, positivity)


_POOL: ThreadPoolExecutor | None = None


def _per_core(fn, batch: torch.Tensor) -> np.ndarray:
    """``fn`` over a batch of small matrices, split across the CPU cores (torch releases the GIL)."""
    global _POOL
    workers = min(os.cpu_count() or 1, batch.shape[0])
    if workers <= 1:
        return fn(batch).numpy()
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=os.cpu_count(), thread_name_prefix="qk-lapack")
    return torch.cat(list(_POOL.map(fn, batch.chunk(workers)))).numpy()


@contextmanager
def _single_threaded() -> Iterator[None]:
    """Run small batched LAPACK problems on one thread.

    MKL's threaded SVD of a batch of d_head x d_head matrices was 2x slower than one thread
    on an idle 2-core machine, and up to 40x slower when the prefetch thread or another
    process competed for the cores (OpenMP workers spinning).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def dense_qk_singular_values(wq_head: np.ndarray, wk_head: np.ndarray) -> np.ndarray:
    """Reference: dense float64 SVD of the d_model x d_model W_QK (tests only: O(d^3))."""
    w_qk = np.asarray(wq_head, np.float64).T @ np.asarray(wk_head, np.float64)
    return np.linalg.svd(w_qk, compute_uv=False)[: wq_head.shape[0]]
