"""Scheduling the spectral math of one layer over CPU cores or a GPU.

The math (:mod:`qk_spectra_ds.build.spectra`) is pure; this module decides where
it runs. On the CPU the heads are split into one contiguous chunk per core, each
chunk running start to finish on one thread with single-threaded BLAS and LAPACK.
On a GPU the O(d_model) work is one batch on the device and the small
d_head x d_head problems, latency-bound there, run on the CPU cores.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

import numpy as np
import torch
from threadpoolctl import ThreadpoolController

from ..statistics import positivity_from_eigenvalues
from .spectra import LayerSpectra, query_matrices, r_factors, small_problems

T = TypeVar("T")
_BLAS = ThreadpoolController()
"""numpy's BLAS (OpenBLAS), limited to one thread while the kernel runs its own per-core threads."""


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"



def qk_layer_spectra(q: torch.Tensor, k: torch.Tensor, with_positivity: bool = True) -> LayerSpectra:
    """Singular values of W_QK for every query head of a layer, and their positivity.

    ``q``: (H, d_head, d_model), ``k``: (H_kv, d_head, d_model), both float64 on
    any device. Query head h uses key head h // (H / H_kv).

    On the CPU the heads are split into one contiguous chunk per core and each chunk
    runs start to finish on one thread with single-threaded BLAS and LAPACK: no hand-
    overs between thread pools, no spinning OpenMP workers fighting BLAS threads. On a
    GPU the O(d_model) work is one batch on the device; the small d_head x d_head SVDs
    and eigenproblems, latency-bound there, run on the CPU cores.

    Raises :class:`WeightRangeError` (naming the head) for blocks with NaN/Inf or
    out-of-range values, before any of them reaches LAPACK.
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
        lk = torch.cat(_per_core(lambda kv: r_factors(k[kv.start : kv.stop], kv.start, group), k.shape[0]))
        return _per_core(
            lambda heads: small_problems(*query_matrices(q, k, lk, heads, group, with_positivity)), q.shape[0]
        )


def _device_batch(q: torch.Tensor, k: torch.Tensor, group: int, with_positivity: bool) -> list:
    """GPU: the O(d_model) work as one batch on the device, then the small problems on the CPU cores."""
    core, cross = query_matrices(q, k, r_factors(k, 0, group), range(q.shape[0]), group, with_positivity)
    core, cross = core.cpu(), None if cross is None else cross.cpu()
    with _single_threaded():
        return _per_core(
            lambda h: small_problems(core[h.start : h.stop], None if cross is None else cross[h.start : h.stop]),
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
