"""The spectral math: singular values of every head's QK circuit, exactly and cheaply.

For query head h with key head g, W_QK = (W_Q^h)^T W_K^g is d_model x d_model
with rank <= d_head. With the thin factorizations (W_Q^h)^T = Q_a R_a and
(W_K^g)^T = Q_b R_b (Q_a, Q_b orthonormal columns),

    W_QK = Q_a (R_a R_b^T) Q_b^T   so   s(W_QK) = s(R_a R_b^T),

a d_head x d_head problem. R comes from the Cholesky factor of the float64
Gram matrix W W^T = R^T R (a symmetric rank-k update and a Cholesky per
head); a head whose Gram matrix is not positive definite (rank-deficient
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
from typing import Callable, Iterator, TypeVar

import numpy as np
import torch
from threadpoolctl import ThreadpoolController

from .statistics import positivity_from_eigenvalues

T = TypeVar("T")
_BLAS = ThreadpoolController()
"""numpy's BLAS (OpenBLAS), limited to one thread while the kernel runs its own per-core threads."""


@dataclass
class LayerSpectra:
    """Spectra of one layer's query heads, float64, on the CPU."""

    singular_values: np.ndarray  # (H, d_head), descending
    positivity: np.ndarray  # (H,)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _gram(w: torch.Tensor) -> torch.Tensor:
    """W W^T per head (float64).

    On the CPU through numpy, whose ``a @ a.T`` is a BLAS symmetric rank-k update
    (syrk: half the flops of a general product, ~1.5x faster than torch's batched
    GEMM on the benchmark machine). On a GPU, one batched GEMM.
    """
    if w.device.type != "cpu":
        return w @ w.transpose(-1, -2)
    blocks = w.reshape(-1, *w.shape[-2:]).numpy()
    gram = np.empty((blocks.shape[0],) + blocks.shape[1:2] * 2, dtype=blocks.dtype)
    for i, block in enumerate(blocks):
        np.matmul(block, block.T, out=gram[i])
    return torch.from_numpy(gram).reshape(w.shape[:-1] + w.shape[-2:-1])


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


def _cross(q: torch.Tensor, k: torch.Tensor, heads: range, group: int) -> torch.Tensor:
    """W_K^g (W_Q^h)^T for the query heads ``heads``: one GEMM per key head, no repeated K."""
    d_head, d_model = q.shape[-2:]
    blocks = []
    for g in range(heads.start // group, (heads.stop - 1) // group + 1):
        lo, hi = max(heads.start, g * group), min(heads.stop, (g + 1) * group)
        block = k[g] @ q[lo:hi].reshape(-1, d_model).transpose(0, 1)  # (dh, n * dh)
        blocks.append(block.reshape(d_head, hi - lo, d_head).transpose(0, 1))
    return torch.cat(blocks)


def _query_matrices(
    q: torch.Tensor, k: torch.Tensor, lk: torch.Tensor, heads: range, group: int, with_positivity: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The d_head x d_head problems of the query heads ``heads``: R_a R_b^T and W_K W_Q^T."""
    lq = _r_factors(q[heads.start : heads.stop])  # R_a = lq^T
    kv_index = torch.arange(heads.start, heads.stop, device=q.device) // group
    core = lq.transpose(-1, -2) @ lk[kv_index]  # R_a R_b^T
    return core, _cross(q, k, heads, group) if with_positivity else None


def _small_problems(core: torch.Tensor, cross: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Singular values of the cores and eigenvalues of the crosses (CPU tensors, LAPACK)."""
    return torch.linalg.svdvals(core), None if cross is None else torch.linalg.eigvals(cross)


def qk_layer_spectra(q: torch.Tensor, k: torch.Tensor, with_positivity: bool = True) -> LayerSpectra:
    """Singular values of W_QK for every query head of a layer, and their positivity.

    ``q``: (H, d_head, d_model), ``k``: (H_kv, d_head, d_model), both float64 on
    any device. Query head h uses key head h // (H / H_kv).

    On the CPU the heads are split into one contiguous chunk per core and each chunk
    runs start to finish on one thread with single-threaded BLAS and LAPACK: no hand-
    overs between thread pools, no spinning OpenMP workers fighting BLAS threads. On a
    GPU the O(d_model) work is one batch on the device; the small d_head x d_head SVDs
    and eigenproblems, latency-bound there, run on the CPU cores.
    """
    n_heads, n_kv = q.shape[0], k.shape[0]
    if n_heads % n_kv:
        raise ValueError(f"{n_heads} query heads are not a multiple of {n_kv} key heads")
    group = n_heads // n_kv
    run = _per_core_chunks if q.device.type == "cpu" else _device_batch
    parts = run(q, k, group, with_positivity)
    singular_values = torch.cat([sv for sv, _ in parts]).numpy()
    if with_positivity:
        positivity = positivity_from_eigenvalues(torch.cat([mu for _, mu in parts]).numpy())
    else:
        positivity = np.full(n_heads, np.nan)
    return LayerSpectra(singular_values, positivity)


def _per_core_chunks(q: torch.Tensor, k: torch.Tensor, group: int, with_positivity: bool) -> list:
    """CPU: each core takes a contiguous chunk of heads through every step, single-threaded."""
    with _single_threaded():
        lk = torch.cat(_per_core(lambda kv: _r_factors(k[kv.start : kv.stop]), k.shape[0]))
        return _per_core(
            lambda heads: _small_problems(*_query_matrices(q, k, lk, heads, group, with_positivity)), q.shape[0]
        )


def _device_batch(q: torch.Tensor, k: torch.Tensor, group: int, with_positivity: bool) -> list:
    """GPU: the O(d_model) work as one batch on the device, then the small problems on the CPU cores."""
    core, cross = _query_matrices(q, k, _r_factors(k), range(q.shape[0]), group, with_positivity)
    core, cross = core.cpu(), None if cross is None else cross.cpu()
    with _single_threaded():
        return _per_core(
            lambda h: _small_problems(core[h.start : h.stop], None if cross is None else cross[h.start : h.stop]),
            q.shape[0],
        )


_POOL: ThreadPoolExecutor | None = None


def _per_core(fn: Callable[[range], T], n: int) -> list[T]:
    """``fn`` over contiguous ranges splitting ``range(n)``, one per CPU core, in threads.

    torch and numpy release the GIL in BLAS and LAPACK, so the chunks run in parallel.
    """
    global _POOL
    workers = min(_cores(), n)
    bounds = [round(i * n / workers) for i in range(workers + 1)]
    chunks = [range(lo, hi) for lo, hi in zip(bounds, bounds[1:])]
    if workers <= 1:
        return [fn(chunk) for chunk in chunks]
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=_cores(), thread_name_prefix="qk-kernel")
    return list(_POOL.map(fn, chunks))


def _cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def _single_threaded() -> Iterator[None]:
    """torch (MKL, OpenMP) and numpy's BLAS on one thread each, for the per-core workers.

    MKL's threaded SVD of a batch of d_head x d_head matrices was 2x slower than one thread
    on an idle 2-core machine, and up to 40x slower when the prefetch thread or another
    process competed for the cores (OpenMP workers spinning); OpenBLAS's threads spinning
    between calls slowed torch's next operation the same way.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with _BLAS.limit(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(previous)


def dense_qk_singular_values(wq_head: np.ndarray, wk_head: np.ndarray) -> np.ndarray:
    """Reference: dense float64 SVD of the d_model x d_model W_QK (tests only: O(d^3))."""
    w_qk = np.asarray(wq_head, np.float64).T @ np.asarray(wk_head, np.float64)
    return np.linalg.svd(w_qk, compute_uv=False)[: wq_head.shape[0]]
