"""Folded, positional (RoPE) and null QK spectra from the kernel's own factors: the pure math.

For layer l, query head h, key head g (the card's "Method" section for the raw circuit):

- **raw**: s(W_Q^h^T W_K^g) = s(L_q^T L_k), L the lower Cholesky factors of the head
  blocks' Gram matrices (:func:`spectra.r_factors`).
- **folded**: s(M_h), M_h = c P D W_Q^h^T G_q G_k W_K^g D P (:mod:`.folding` says where D,
  P, G and c come from; the rotary attention factor a scales the rotating dims: a^2 in c
  when the whole head rotates, else a diagonal on the q/k gains). With X = W D P
  (each row scaled by the gain, then centred when the norm is a LayerNorm) and L_X its
  factor, s(M_h) = |c| s(L_Xq^T G_q G_k L_Xk): a diagonal on the d_head side scales the
  rows of L. X is formed by explicit centring (a rank-1 downdate of the Gram matrix
  cancels catastrophically when rows have large means), one head at a time in a
  reused scratch buffer.
- **positional**: for an offset delta >= 0 (key delta tokens before the query), the
  logit matrix with the model's rotary embedding applied at p + delta and p is
  c P D W_Q^T G_q R(delta)^T G_k W_K D P (rotation between the q/k gains, where the
  model applies it), so s = |c| s(L_Xq^T G_q R(delta)^T G_k L_Xk): the key factor's rows
  are rotated in O(d_head^2). Raw positional: the same without D, P, G, c, a.
  Independent of p; at delta = 0 equal to the non-positional spectrum.
- **null**: |c| s(L_Xq^T G_q O_h G_k L_Xk), O_h Haar-random orthogonal (d_head x d_head),
  drawn per head from a recorded seed: each factor keeps its spectrum, the pairing of
  query and key directions is broken.

Positivity: the non-zero eigenvalues of M are those of the d_head x d_head
c G_k X_k X_q^T G_q (folded), times O_h for the null (eig(O_h C)).

Pure functions of arrays; scheduling is :mod:`.kernel`'s job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..schema import VARIANT_FOLDED, VARIANT_NULL, VARIANT_RAW
from ..statistics import positional_summaries  # noqa: F401  (numpy only: the loader recomputes the summaries too)
from .rotary import Rotary, rotate_key_rows
from .seeds import null_seed_key
from .spectra import GRAM_FLOOR, check_range, gram_ceiling, qr_fallback

RAW, FOLDED, NULL = VARIANT_RAW, VARIANT_FOLDED, VARIANT_NULL  # short names for the schema's (defined there)


@dataclass(frozen=True)
class LayerFolding:
    """One layer's numeric folding: gain D (None: identity), centring P, q/k gains, scale c."""

    gain: np.ndarray | None  # (d_model,)
    centre: bool
    q_gain: np.ndarray | None  # (H, d_head)
    k_gain: np.ndarray | None  # (H_kv, d_head)
    scale: float  # c, with the rotary factor a^2 when every dim rotates (else a sits in q_gain/k_gain)


@dataclass(frozen=True)
class LayerPlan:
    """What to compute for one layer besides the raw spectra."""

    variants: tuple[str, ...]
    folding: LayerFolding | None = None  # needed for folded and null
    rotary: Rotary | None = None  # None: no positional spectra (no rotary, or no offsets)
    offsets: tuple[int, ...] = ()
    null_rotations: np.ndarray | None = None  # (H, d_head, d_head)
    folded_blocks: tuple | None = None  # (q, k) already folded (MLA: gains inside the latent maps); folding.gain None


@dataclass
class VariantSpectra:
    """One variant of one layer: (H, d_head) singular values, (H,) positivity, (n_off, H, d_head) positional, mu."""

    singular_values: np.ndarray
    positivity: np.ndarray
    positional: np.ndarray | None = None
    eigenvalues: np.ndarray | None = None  # (H, d_head) complex mu of the cross (symmetry, copying: :mod:`.circuits`)


# ---------------------------------------------------------------- folded factors


def fold_rows(w: np.ndarray, gain: np.ndarray | None, centre: bool, out: np.ndarray) -> np.ndarray:
    """X = W D P into ``out``: columns scaled by the norm gain, each row centred for a LayerNorm."""
    if gain is None:
        out[...] = w
    else:
        np.multiply(w, gain, out=out)
    if centre:
        out -= out.mean(axis=-1, keepdims=True)
    return out


def folded_r_factors(w: torch.Tensor, folding: LayerFolding, first: int = 0, group: int = 0) -> torch.Tensor:
    """Lower L with X X^T = L L^T for the folded blocks X = W D P of ``w`` (n, d_head, d_model), CPU float64.

    Each head is folded into one reused (d_head, d_model) scratch buffer and its
    Gram matrix formed at once (no folded copy of the layer); the range check and
    the QR fallback of :func:`spectra.r_factors` apply to X unchanged (the few
    heads that need X again are refolded).
    """
    blocks = w.numpy()
    n, d_head, _ = blocks.shape
    scratch = np.empty(blocks.shape[1:])
    gram = np.empty((n, d_head, d_head))
    with np.errstate(over="ignore", invalid="ignore"):
        for i in range(n):
            x = fold_rows(blocks[i], folding.gain, folding.centre, scratch)
            np.matmul(x, x.T, out=gram[i])
    gram_t = torch.from_numpy(gram)
    top = gram.diagonal(axis1=-2, axis2=-1).max(axis=-1)
    if not ((top >= GRAM_FLOOR) & (top <= gram_ceiling(d_head))).all():
        check_range(gram_t, fold_blocks(w, folding), first, group)
    lower, info = torch.linalg.cholesky_ex(gram_t)
    redo = torch.nonzero(qr_fallback(gram_t, lower, info)).flatten()
    if redo.numel():
        x = fold_blocks(w[redo], folding)
        lower[redo] = torch.linalg.qr(x.transpose(-1, -2), mode="r")[1].transpose(-1, -2)
    return lower


def fold_blocks(w: torch.Tensor, folding: LayerFolding) -> torch.Tensor:
    """X = W D P for a batch of blocks on any device (a folded copy: used only on rare or device paths)."""
    x = w if folding.gain is None else w * torch.as_tensor(folding.gain, dtype=w.dtype, device=w.device)
    return x - x.mean(dim=-1, keepdim=True) if folding.centre else x.clone()


def folded_cross(q: torch.Tensor, k: torch.Tensor, folding: LayerFolding, heads: range, group: int) -> torch.Tensor:
    """c G_k X_k X_q^T G_q for the query heads ``heads`` (CPU float64; X refolded per head into scratch)."""
    qb, kb = q.numpy(), k.numpy()
    d_head = qb.shape[1]
    xq, xk = np.empty(qb.shape[1:]), np.empty(kb.shape[1:])
    out = np.empty((len(heads), d_head, d_head))
    current = -1
    with np.errstate(over="ignore", invalid="ignore"):
        for i, h in enumerate(heads):
            if h // group != current:
                current = h // group
                fold_rows(kb[current], folding.gain, folding.centre, xk)
            fold_rows(qb[h], folding.gain, folding.centre, xq)
            np.matmul(xk, xq.T, out=out[i])
    cross = torch.from_numpy(out)
    return _gain_cross(cross, folding, heads, group)


def folded_cross_batch(q: torch.Tensor, k: torch.Tensor, folding: LayerFolding, group: int) -> torch.Tensor:
    """The same as :func:`folded_cross` for all heads at once on a device (folded copies of the layer)."""
    xq, xk = fold_blocks(q, folding), fold_blocks(k, folding)
    kv = torch.arange(q.shape[0], device=q.device) // group
    cross = xk[kv] @ xq.transpose(-1, -2)
    return _gain_cross(cross, folding, range(q.shape[0]), group)


def _gain_cross(cross: torch.Tensor, folding: LayerFolding, heads: range, group: int) -> torch.Tensor:
    """Scale the cross matrices' rows by G_k, columns by G_q, and the whole by c."""
    idx = np.arange(heads.start, heads.stop)
    if folding.k_gain is not None:
        cross = cross * torch.as_tensor(folding.k_gain[idx // group], device=cross.device)[:, :, None]
    if folding.q_gain is not None:
        cross = cross * torch.as_tensor(folding.q_gain[idx], device=cross.device)[:, None, :]
    return cross * folding.scale


def with_head_gains(lower: torch.Tensor, gains: np.ndarray | None, heads: range) -> torch.Tensor:
    """G L: the per-head q/k norm gains scale the rows of L (the d_head side)."""
    if gains is None:
        return lower
    return lower * torch.as_tensor(gains[heads.start : heads.stop], device=lower.device)[:, :, None]


# ---------------------------------------------------------------- small problems


GRAM_ROUTE_COND_MAX = 3e4
"""Heads whose factors' condition numbers multiply to at most this take the Gram route for positional spectra.

The singular values of core(delta) = A R(delta)^T B then come from the symmetric eigenvalues
of core core^T (LAPACK syevd after one GEMM: ~0.55x the time of an SVD of the core here),
whose relative error on s_k grows as eps (s_1 / s_k)^2. cond(A R B) <= cond(A) cond(B) for
every rotation R, so one bound per head covers all its offsets. Measured on 128 x 128 cores
with log-spaced spectra against their exact singular values: 1.3e-8 at condition 3e4
(1.7e-9 at 1e4, 1.3e-7 at 1e5), inside the 1e-6 promise with the float32 storage's 6e-8.
Real heads are far inside it (MiniLM's head blocks: condition 2 to 6 each); anything else
(ill-conditioned or rank-deficient factors) takes the SVD, exact to ~eps s_1 / s_k.
"""


def positional_singular_values(
    lq_t: torch.Tensor,
    lk: torch.Tensor,
    kv_index: torch.Tensor,
    rotary: Rotary,
    offsets: Sequence[int],
    base: torch.Tensor | None = None,
) -> np.ndarray:
    """(n_off, n, d_head) unscaled s(lq_t @ R(delta)^T lk[kv]) per offset, descending.

    ``lq_t`` = L_q^T G_q (n, dh, dh), ``lk`` = G_k L_k of the key heads indexed by
    ``kv_index``. Offset 0 reuses ``base`` (the non-positional values) when given.
    Each key head used is rotated once per offset (O(d_head^2)) and multiplied by all
    its query heads' factors stacked (one GEMM per key head and offset, straight into
    the cores). Well-conditioned heads then take the Gram route, the others a batched
    SVD (:data:`GRAM_ROUTE_COND_MAX`).
    """
    lk_np, lq_np = lk.numpy(), lq_t.numpy()
    n, d_head = lq_np.shape[0], lq_np.shape[-1]
    out = np.empty((len(offsets), n, d_head))
    todo = [i for i, delta in enumerate(offsets) if not (delta == 0 and base is not None)]
    for i in range(len(offsets)):
        if i not in todo:
            out[i] = base
    if not todo:
        return out
    kv = kv_index.numpy()
    gram_route = _well_conditioned(lq_t, lk, kv)
    block = max(1, CORE_BUFFER_BYTES // (n * d_head * d_head * 8))  # offsets per pass: bounded memory
    cores = np.empty((min(block, len(todo)), n, d_head, d_head))
    rotated = np.empty((d_head, d_head))
    for first in range(0, len(todo), block):
        part = todo[first : first + block]
        buffer = cores[: len(part)]
        for g in np.unique(kv):
            heads = np.flatnonzero(kv == g)
            lo, hi = heads[0], heads[-1] + 1  # a key head's query heads are contiguous
            stacked = lq_np[lo:hi].reshape(-1, d_head)  # (m dh, dh): every query head of g against one rotated key
            for j, i in enumerate(part):
                rotate_key_rows(lk_np[g], offsets[i], rotary, out=rotated)
                np.matmul(stacked, rotated, out=buffer[j, lo:hi].reshape(-1, d_head))
        out[part] = _core_singular_values(buffer, gram_route)
    return out


CORE_BUFFER_BYTES = 8 << 20
"""Memory for one pass of positional cores (per CPU core): offsets are taken in blocks that fit."""


def _core_singular_values(cores: np.ndarray, gram_route: np.ndarray) -> np.ndarray:
    """(n_off, n, dh) descending singular values of (n_off, n, dh, dh) cores, by the route each head takes."""
    if gram_route.all():  # the usual case: no copies of the cores
        return _gram_route(cores)
    if not gram_route.any():
        return torch.linalg.svdvals(torch.from_numpy(cores)).numpy()
    values = np.empty(cores.shape[:-1])
    values[:, gram_route] = _gram_route(cores[:, gram_route])
    values[:, ~gram_route] = torch.linalg.svdvals(torch.from_numpy(cores[:, ~gram_route])).numpy()
    return values


def _gram_route(cores: np.ndarray) -> np.ndarray:
    """Descending singular values of well-conditioned cores from the eigenvalues of core core^T."""
    flat = cores.reshape(-1, *cores.shape[-2:])
    gram = np.empty_like(flat)
    for core, out in zip(flat, gram):
        np.matmul(core, core.T, out=out)  # a symmetric rank-k update (half a GEMM's flops)
    eig = torch.linalg.eigvalsh(torch.from_numpy(gram)).numpy().reshape(cores.shape[:-1])
    return np.sqrt(np.maximum(eig[..., ::-1], 0.0))


def _well_conditioned(lq_t: torch.Tensor, lk: torch.Tensor, kv: np.ndarray) -> np.ndarray:
    """(n,) True where cond(query factor) * cond(its key factor) <= GRAM_ROUTE_COND_MAX (False for singular ones)."""
    sq, sk = torch.linalg.svdvals(lq_t).numpy(), torch.linalg.svdvals(lk).numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = (sq[:, 0] / sq[:, -1]) * (sk[kv, 0] / sk[kv, -1])
    return bound <= GRAM_ROUTE_COND_MAX


def haar_rotations(seed: int, model_id: str, layer: int, n_heads: int, d_head: int) -> np.ndarray:
    """(H, d_head, d_head) Haar-random orthogonal matrices, one per query head, reproducible from the seed.

    numpy PCG64 from SeedSequence(entropy=seed, spawn_key=(sha256(model_id)[:8] LE, layer, head)),
    standard_normal (d_head, d_head), QR with the signs of R's diagonal moved into Q (Mezzadri 2007).
    """
    from .raw_numpy import single_threaded_blas

    key = null_seed_key(model_id)
    out = np.empty((n_heads, d_head, d_head))
    with single_threaded_blas():  # 128 x 128 QRs: OpenBLAS's threads only spin here (0.45 s each on a busy 2-core box)
        for h in range(n_heads):
            rng = np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(key, layer, h)))
            q, r = np.linalg.qr(rng.standard_normal((d_head, d_head)))
            out[h] = q * np.sign(np.diag(r))
    return out
