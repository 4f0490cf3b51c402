"""Scheduling the spectral math of one layer over CPU cores or a GPU.

The math (:mod:`qk_spectra_ds.builder.spectra`) is pure; this module decides where
it runs. On the CPU the heads are split into one contiguous chunk per core, each
chunk running start to finish on one thread with single-threaded BLAS and LAPACK.
On a GPU the O(d_model) work is one batch on the device and the small
d_head x d_head problems, latency-bound there, run on the CPU cores.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import numpy as np
import torch
from threadpoolctl import ThreadpoolController

from ..errors import BuildError
from ..statistics import positivity_from_eigenvalues
from . import raw_numpy
from .spectra import LayerSpectra, cross_matrices, query_matrices, r_factors, scaled_eigvals

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
    if q.device.type == "cpu":  # numpy's per-core route, the same numbers as a torch-free raw build
        return raw_numpy.raw_layer_spectra(q.numpy(), k.numpy(), with_positivity)
    parts = _device_batch(q, k, group, with_positivity)
    singular_values = np.concatenate([sv for sv, _ in parts])
    if not with_positivity:
        return LayerSpectra(singular_values, np.full(n_heads, np.nan))
    mu = np.concatenate([mu for _, mu in parts])
    return LayerSpectra(singular_values, positivity_from_eigenvalues(mu), eigenvalues=mu)


def _device_batch(q: torch.Tensor, k: torch.Tensor, group: int, with_positivity: bool) -> list:
    """GPU: the O(d_model) work in batches on the device, the small problems on CPU threads overlapping it.

    cuSOLVER's batched SVD/eigh are Jacobi kernels for at most 32 x 32 (torch loops matrix by
    matrix above that) and torch's eigvals runs through MAGMA on the host: the d_head x d_head
    problems (64 to 256) go to LAPACK on the host's cores (numpy, as on the CPU route). The
    query heads go to the device in one batch per core: while the CPU threads solve one
    batch's cores and crosses, the device computes the next batch's factors. With
    :data:`SMALL_PROBLEMS` ``"device"`` they are solved by torch on the device instead;
    ``benchmarks/bench_gpu.py`` times both on the device it runs on and says which is faster.
    """
    lk = r_factors(k, 0, group)
    n = q.shape[0]
    if small_problems_on() == "device":
        core, cross = query_matrices(q, k, lk, range(n), group, with_positivity)
        sv, mu = torch.linalg.svdvals(core), None if cross is None else scaled_eigvals(cross)
        return [(sv.cpu().numpy(), None if mu is None else mu.cpu().numpy())]
    pending = []
    with _single_threaded():
        for heads in raw_numpy.head_chunks(n):
            core, cross = query_matrices(q, k, lk, heads, group, with_positivity)
            core, cross = (
                core.cpu().numpy(),
                None if cross is None else cross.cpu().numpy(),
            )  # waits for this batch only
            pending.append(raw_numpy.submit(raw_numpy.core_problems, core, cross))
        return [p.result() for p in pending]


SMALL_PROBLEMS_ENV = "QK_SPECTRA_SMALL_PROBLEMS"
"""``cpu`` (default: LAPACK threads on the host, overlapping the GPU) or ``device`` (torch on the GPU)."""


def small_problems_on() -> str:
    """Where the GPU path solves the d_head x d_head problems: $QK_SPECTRA_SMALL_PROBLEMS, cpu or device."""
    value = os.environ.get(SMALL_PROBLEMS_ENV, "cpu").strip().lower() or "cpu"
    if value not in ("cpu", "device"):
        raise BuildError(f"{SMALL_PROBLEMS_ENV}={value!r}: set it to cpu or device, or unset it (default cpu)")
    return value


_per_core = raw_numpy.per_core  # one thread pool for both kernels
_cores = raw_numpy.cores


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


def qk_layer_variants(q: torch.Tensor, k: torch.Tensor, plan) -> dict:
    """Every variant of a layer's spectra (:mod:`.variants`): variant name -> ``VariantSpectra``.

    Stage 1, the O(d_model) work, produces the factors: raw L_q, L_k and crosses
    W_K W_Q^T; for folded/null the folded factors (each head folded into a scratch
    buffer, never a folded copy of the layer on the CPU) and the folded crosses
    c G_k X_k X_q^T G_q. On the CPU it runs per core (key heads, then query heads);
    on a GPU as one batch. Stage 2, the d_head x d_head problems (SVDs, eigenvalues,
    positional offsets, null rotations), runs per core on the CPU. Raw values are
    computed exactly as :func:`qk_layer_spectra` computes them. ``plan.folded_blocks``,
    when set, are blocks already folded by their reader (MLA, whose gains sit inside
    the latent maps): the folded factors come from them, not from ``q`` and ``k``.
    """
    from .variants import FOLDED, NULL, RAW, VariantSpectra

    n_heads, n_kv = q.shape[0], k.shape[0]
    if n_heads % n_kv:
        raise ValueError(f"{n_heads} query heads are not a multiple of {n_kv} key heads")
    group = n_heads // n_kv
    want_folded = FOLDED in plan.variants or NULL in plan.variants
    factors = (_variant_factors_cpu if q.device.type == "cpu" else _variant_factors_device)(
        q, k, group, plan, want_folded
    )
    with _single_threaded():
        parts = _per_core(lambda heads: _variant_small_problems(factors, heads, group, plan, want_folded), n_heads)
    out = {}
    for name in (RAW, FOLDED, NULL):
        if name not in plan.variants:
            continue
        sv = np.concatenate([p[name][0] for p in parts])
        mu = np.concatenate([p[name][1] for p in parts])
        pos = [p[name][2] for p in parts]
        positional = None if pos[0] is None else np.concatenate(pos, axis=1)
        out[name] = VariantSpectra(sv, positivity_from_eigenvalues(mu), positional, eigenvalues=mu)
    return out


def _variant_factors_cpu(q, k, group, plan, want_folded) -> dict:
    """Stage 1 on the CPU: factors and crosses, one contiguous chunk of heads per core."""
    from .variants import RAW, folded_cross, folded_r_factors

    n_heads, n_kv = q.shape[0], k.shape[0]
    factors = {}
    with _single_threaded():
        if RAW in plan.variants:  # numpy's functions: raw rows identical to a torch-free raw build
            qn, kn = q.numpy(), k.numpy()
            for name, fn, n in (
                ("lk", lambda kv: raw_numpy.r_factors(kn[kv.start : kv.stop], kv.start, group), n_kv),
                ("lq", lambda h: raw_numpy.r_factors(qn[h.start : h.stop], h.start), n_heads),
                ("cross", lambda h: raw_numpy.cross_matrices(qn, kn, h, group), n_heads),
            ):
                factors[name] = torch.from_numpy(np.concatenate(_per_core(fn, n)))
        if want_folded:
            f = plan.folding
            fq, fk = plan.folded_blocks or (q, k)
            factors["lk_f"] = torch.cat(
                _per_core(lambda kv: folded_r_factors(fk[kv.start : kv.stop], f, kv.start, group), n_kv)
            )
            factors["lq_f"] = torch.cat(
                _per_core(lambda h: folded_r_factors(fq[h.start : h.stop], f, h.start), n_heads)
            )
            factors["cross_f"] = torch.cat(_per_core(lambda h: folded_cross(fq, fk, f, h, group), n_heads))
    return factors


def _variant_factors_device(q, k, group, plan, want_folded) -> dict:
    """Stage 1 on a GPU: the same factors as one batch each, moved to the CPU."""
    from .variants import RAW, fold_blocks, folded_cross_batch

    factors = {}
    if RAW in plan.variants:
        every = range(q.shape[0])
        factors.update(lq=r_factors(q), lk=r_factors(k, 0, group), cross=cross_matrices(q, k, every, group))
    if want_folded:
        fq, fk = plan.folded_blocks or (q, k)
        factors["lq_f"] = r_factors(fold_blocks(fq, plan.folding))
        factors["lk_f"] = r_factors(fold_blocks(fk, plan.folding), 0, group)
        factors["cross_f"] = folded_cross_batch(fq, fk, plan.folding, group)
    return {name: value.cpu() for name, value in factors.items()}


def _variant_small_problems(factors, heads: range, group: int, plan, want_folded) -> dict:
    """Stage 2 for the query heads ``heads``: (singular values, eigenvalues mu, positional or None) per variant."""
    from .variants import FOLDED, NULL, RAW, positional_singular_values, with_head_gains

    kv_index = torch.arange(heads.start, heads.stop) // group
    positional = plan.rotary is not None and len(plan.offsets) > 0
    out = {}
    if RAW in plan.variants:
        lq_t = factors["lq"][heads.start : heads.stop].transpose(-1, -2)
        sv, mu = raw_numpy.small_problems(
            factors["lq"][heads.start : heads.stop].numpy(),
            factors["lk"].numpy(),
            factors["cross"][heads.start : heads.stop].numpy(),
            heads,
            group,
        )
        pos = (
            positional_singular_values(lq_t, factors["lk"], kv_index, plan.rotary, plan.offsets, sv)
            if positional
            else None
        )
        out[RAW] = (sv, mu, pos)
    if not want_folded:
        return out
    f = plan.folding
    scale = abs(f.scale)
    lq_tf = with_head_gains(factors["lq_f"][heads.start : heads.stop], f.q_gain, heads).transpose(-1, -2)
    lk_f = with_head_gains(factors["lk_f"], f.k_gain, range(factors["lk_f"].shape[0]))
    cross_f = factors["cross_f"][heads.start : heads.stop]
    if FOLDED in plan.variants:
        sv_f = torch.linalg.svdvals(lq_tf @ lk_f[kv_index]).numpy()
        pos = None
        if positional:
            pos = scale * positional_singular_values(lq_tf, lk_f, kv_index, plan.rotary, plan.offsets, sv_f)
        out[FOLDED] = (scale * sv_f, scaled_eigvals(cross_f).numpy(), pos)
    if NULL in plan.variants:
        rot = torch.from_numpy(plan.null_rotations[heads.start : heads.stop])
        sv_n = torch.linalg.svdvals(lq_tf @ rot @ lk_f[kv_index]).numpy()
        out[NULL] = (scale * sv_n, scaled_eigvals(rot @ cross_f).numpy(), None)
    return out
