"""The raw spectra on the CPU with numpy alone: :mod:`.spectra`'s math, without importing torch.

A CPU build of raw rows without positional spectra runs entirely here and never
imports torch (~1.5 s of a 2-core machine's time, more than the whole kernel of a
1B model). The torch kernel's CPU route (:mod:`.kernel`) calls these same
functions for its raw factors and small problems, so raw rows are bit-identical
whichever variants a build asks for.

Per layer: Gram matrices W W^T per head (BLAS syrk), their range check, Cholesky
factors L (QR of W^T for the heads :func:`qr_fallback_heads` names), the crosses
W_K W_Q^T (one GEMM per key head), then per query head the singular values of
R_a R_b^T = L_q^T L_k and the eigenvalues of the cross. Heads are split into one
contiguous chunk per core, each run on one thread with single-threaded BLAS.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import numpy as np

from ..statistics import positivity_from_eigenvalues
from .spectra import (
    CHOLESKY_KAPPA_MAX,
    GRAM_FLOOR,
    LayerSpectra,
    gram_ceiling,
    report_unsafe_blocks,
)

T = TypeVar("T")


def gram_matrices(w: np.ndarray) -> np.ndarray:
    """W W^T per head, float64: ``a @ a.T`` is a BLAS symmetric rank-k update (syrk), half a GEMM's flops."""
    gram = np.empty(w.shape[:-1] + w.shape[-2:-1], dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # out-of-range weights: check_range reports them
        for i, block in enumerate(w):
            np.matmul(block, block.T, out=gram[i])
    return gram


def check_range(gram: np.ndarray, w: np.ndarray, first: int = 0, group: int = 0) -> None:
    """:func:`.spectra.check_range` for numpy arrays: a WeightRangeError unless every block is safe to factor."""
    g = gram.diagonal(axis1=-2, axis2=-1).max(axis=-1)
    if not ((g >= GRAM_FLOOR) & (g <= gram_ceiling(w.shape[-2]))).all():
        report_unsafe_blocks(g, w, first, group)


def qr_fallback_heads(gram: np.ndarray, lower: np.ndarray, failed: np.ndarray) -> np.ndarray:
    """:func:`.spectra.qr_fallback` in numpy: the Cholesky failed, or eps * kappa_F^2 exceeds the error budget.

    ||L^-1||_F comes from the inverse of each triangular factor (LAPACK getrf/getri: numpy has no
    batched triangular solve); it only decides the route, and a NaN or Inf bound means QR.
    """
    eye = np.eye(lower.shape[-1])
    usable = np.where(failed[:, None, None], eye, lower)  # a failed factor holds garbage
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        try:
            inverse_sq = np.square(np.linalg.inv(usable)).sum(axis=(-2, -1))
        except np.linalg.LinAlgError:  # an exactly singular factor (a zero pivot): QR for all of them
            return np.ones(len(gram), dtype=bool)
        kappa_sq = gram.diagonal(axis1=-2, axis2=-1).sum(-1) * inverse_sq
    return failed | ~(kappa_sq <= CHOLESKY_KAPPA_MAX**2)


def cholesky_lower(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower Cholesky factors and a mask of the heads whose Gram matrix is not positive definite."""
    failed = np.zeros(len(gram), dtype=bool)
    try:
        return np.linalg.cholesky(gram), failed
    except np.linalg.LinAlgError:  # numpy refuses the whole stack: factor one by one
        lower = np.empty_like(gram)
        for i, matrix in enumerate(gram):
            try:
                lower[i] = np.linalg.cholesky(matrix)
            except np.linalg.LinAlgError:
                failed[i] = True
                lower[i] = 0.0
        return lower, failed


def r_factors(w: np.ndarray, first: int = 0, group: int = 0) -> np.ndarray:
    """Lower L with W W^T = L L^T per head (:func:`.spectra.r_factors`), numpy float64 in and out."""
    gram = gram_matrices(w)
    check_range(gram, w, first, group)
    lower, failed = cholesky_lower(gram)
    redo = np.flatnonzero(qr_fallback_heads(gram, lower, failed))
    if redo.size:
        r = np.linalg.qr(np.ascontiguousarray(w[redo].transpose(0, 2, 1)), mode="r")
        lower[redo] = r.transpose(0, 2, 1)
    return lower


def cross_matrices(q: np.ndarray, k: np.ndarray, heads: range, group: int, q_first: int = 0) -> np.ndarray:
    """W_K^g (W_Q^h)^T for the query heads ``heads``: one GEMM per key head, no repeated K.

    ``q[i]`` is query head ``q_first + i`` (a chunk's own blocks: ``q_first = heads.start``).
    """
    d_head, d_model = q.shape[-2:]
    out = np.empty((len(heads), d_head, d_head))
    for g in range(heads.start // group, (heads.stop - 1) // group + 1):
        lo, hi = max(heads.start, g * group), min(heads.stop, (g + 1) * group)
        block = k[g] @ q[lo - q_first : hi - q_first].reshape(-1, d_model).T  # (dh, n * dh)
        out[lo - heads.start : hi - heads.start] = block.reshape(d_head, hi - lo, d_head).transpose(1, 0, 2)
    return out


def small_problems(
    lq: np.ndarray, lk: np.ndarray, cross: np.ndarray | None, heads: range, group: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Singular values of R_a R_b^T = L_q^T L_k and eigenvalues of the crosses, for the query heads ``heads``.

    ``lq`` and ``cross`` hold just these heads, ``lk`` every key head of the layer.
    """
    kv_index = np.arange(heads.start, heads.stop) // group
    return core_problems(np.matmul(lq.transpose(0, 2, 1), lk[kv_index]), cross)


def core_problems(core: np.ndarray, cross: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Singular values of the cores (LAPACK gesdd) and eigenvalues of the crosses (geev), float64 numpy."""
    return np.linalg.svd(core, compute_uv=False), None if cross is None else np.linalg.eigvals(cross)


def raw_layer_spectra(q: np.ndarray, k: np.ndarray, with_positivity: bool = True) -> LayerSpectra:
    """Singular values of W_QK for every query head of a layer, and their positivity (numpy, CPU threads).

    ``q``: (H, d_head, d_model), ``k``: (H_kv, d_head, d_model), any float dtype (the
    factorization is float64). Raises :class:`.spectra.WeightRangeError` naming the
    head for NaN/Inf or out-of-range blocks, before LAPACK sees them.
    """
    k = np.asarray(k, dtype=np.float64)
    n_heads, n_kv = q.shape[0], k.shape[0]
    if n_heads % n_kv:
        raise ValueError(f"{n_heads} query heads are not a multiple of {n_kv} key heads")
    group = n_heads // n_kv

    def chunk(heads: range):
        own = np.asarray(q[heads.start : heads.stop], dtype=np.float64)  # widened per core, in parallel
        lq = r_factors(own, first=heads.start)
        cross = cross_matrices(own, k, heads, group, q_first=heads.start) if with_positivity else None
        return small_problems(lq, lk, cross, heads, group)

    with single_threaded_blas():
        lk = np.concatenate(per_core(lambda kv: r_factors(k[kv.start : kv.stop], kv.start, group), n_kv))
        parts = per_core(chunk, n_heads)
    singular_values = np.concatenate([sv for sv, _ in parts])
    if not with_positivity:
        return LayerSpectra(singular_values, np.full(n_heads, np.nan))
    mu = np.concatenate([mu for _, mu in parts])
    return LayerSpectra(singular_values, positivity_from_eigenvalues(mu), eigenvalues=mu)


_POOL: ThreadPoolExecutor | None = None


def per_core(fn: Callable[[range], T], n: int) -> list[T]:
    """``fn`` over contiguous ranges splitting ``range(n)``, one per CPU core, in threads.

    numpy (and torch) release the GIL in BLAS and LAPACK, so the chunks run in parallel.
    """
    global _POOL
    chunks = head_chunks(n)
    if len(chunks) <= 1:
        return [fn(chunk) for chunk in chunks]
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=cores(), thread_name_prefix="qk-kernel")
    return list(_POOL.map(fn, chunks))


def head_chunks(n: int) -> list[range]:
    """``range(n)`` split into contiguous ranges, one per CPU core (fewer when n is smaller)."""
    workers = max(min(cores(), n), 1)
    bounds = [round(i * n / workers) for i in range(workers + 1)]
    return [range(lo, hi) for lo, hi in itertools.pairwise(bounds)]


def submit(fn: Callable[..., T], *args):
    """``fn(*args)`` on the kernel's thread pool (a future): the GPU path's small problems overlap its next batch."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=cores(), thread_name_prefix="qk-kernel")
    return _POOL.submit(fn, *args)


def cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


_BLAS = None


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """numpy's BLAS (OpenBLAS) on one thread while the per-core workers run: its spinning threads would fight them."""
    global _BLAS
    from threadpoolctl import ThreadpoolController

    if _BLAS is None:
        _BLAS = ThreadpoolController()
    with _BLAS.limit(limits=1, user_api="blas"):
        yield
