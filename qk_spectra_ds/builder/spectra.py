"""The spectral math: singular values of every head's QK circuit, exactly and cheaply.

For query head h with key head g, W_QK = (W_Q^h)^T W_K^g is d_model x d_model
with rank <= d_head. With the thin factorizations (W_Q^h)^T = Q_a R_a and
(W_K^g)^T = Q_b R_b (Q_a, Q_b orthonormal columns),

    W_QK = Q_a (R_a R_b^T) Q_b^T   so   s(W_QK) = s(R_a R_b^T),

a d_head x d_head problem. R comes from the Cholesky factor of the float64
Gram matrix W W^T = R^T R (a symmetric rank-k update and a Cholesky per
head); a head whose Gram matrix is not positive definite (rank-deficient
weights) or too ill-conditioned for the Cholesky route's accuracy (see
``CHOLESKY_KAPPA_MAX``) falls back to a QR of its thin transpose. Each key head
is factored once and shared by its H / H_kv query heads.

Nothing reaches LAPACK unchecked: every head block's largest squared row norm
(the Gram diagonal, free once the Gram matrix exists) must lie in
``[GRAM_FLOOR, gram_ceiling(d_head)]`` or the block must be exactly zero;
anything else (NaN, Inf, 1e200 weights) is a :class:`WeightRangeError` naming
the head, never a LAPACK error or a crash. :func:`float32_storage_problem`
then tells whether the results fit the dataset's float32 columns.

The non-zero eigenvalues mu of W_QK are those of W_K^g (W_Q^h)^T
(d_head x d_head), which gives the positivity metric.

Pure functions of tensors; no I/O, no threads. How the heads of a layer are
scheduled over CPU cores or a GPU is :mod:`qk_spectra_ds.builder.kernel`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import WeightRangeError

if TYPE_CHECKING:  # torch is imported where a function needs it: raw CPU builds never import it (raw_numpy)
    import torch


_F64 = np.finfo(np.float64)
_F32 = np.finfo(np.float32)

GRAM_FLOOR = float(np.sqrt(_F64.tiny))
"""Smallest allowed largest squared row norm of a non-zero head block (~1.5e-154).

Below it the squares of the weights underflow in the Gram matrix (a non-zero head
would silently factor as zero), and products of two such blocks leave the normal
float64 range.
"""

_SQRT_F64_MAX = float(np.sqrt(_F64.max))


def gram_ceiling(d_head: int) -> float:
    """Largest allowed largest squared row norm g of a head block: sqrt(float64 max) / d_head^2.

    Every matrix handed to LAPACK is then safe: Gram entries are at most g
    (Cauchy-Schwarz), entries of R_a R_b^T at most d_head * g, of W_K W_Q^T at
    most g, so each such d_head x d_head matrix has a Frobenius norm at most
    d_head^2 * g <= sqrt(float64 max): even a naive sum of squares of its
    entries stays finite. (For d_head 128 this allows weights up to ~1e73.)
    """
    return _SQRT_F64_MAX / float(d_head) ** 2


CHOLESKY_ERROR_BUDGET = 1e-6
"""A head stays on the Cholesky route only while eps * kappa_F^2 <= this.

Forming and factoring W W^T perturbs it by about c * eps * ||W W^T||, a
multiplicative perturbation of R of relative size ~ c * eps * kappa^2 (kappa =
cond(W)) that the singular values of R_a R_b^T inherit; QR of W^T is accurate to
about eps * kappa instead. kappa_F = ||L||_F ||L^-1||_F >= kappa is a bound that
costs one triangular solve per head. Measured against the QR route on random head
blocks (d_model 48 to 1024, log-spaced, random, one-small, one-large and graded
spectra, kappa 3e4 to 1e6), the Cholesky route's largest relative error was
0.35 * eps * kappa_F^2 (0.003 at d_model >= 512): at most 3.5e-7 within this
budget, plus 6e-8 float32 rounding, inside the 1e-6 target.
"""

CHOLESKY_KAPPA_MAX = float(np.sqrt(CHOLESKY_ERROR_BUDGET / _F64.eps))
"""Largest Frobenius condition number kappa_F (~6.7e4) kept on the Cholesky route.

kappa_F is at most d_head times cond(W) and never below it, so a head is never
kept on the Cholesky route by an underestimate; well-conditioned heads (real
models' head blocks: cond ~ 3 to 10; the benchmark's 1e3 spread: kappa_F up to
2.3e4) keep the fast route.
"""

FLOAT32_SV_MAX = float(np.sqrt(_F32.max))
"""Largest singular value whose eigenvalue s^2 fits a float32 (~1.8e19)."""

FLOAT32_SV_MIN = float(np.sqrt(_F32.tiny))
"""Smallest singular value whose eigenvalue s^2 is a normal float32 (~1.1e-19)."""

ACCURACY_FLOOR = 1e-12
"""Singular values below ACCURACY_FLOOR * s_max are beyond the kernel's accuracy promise.

They are rounding noise of a rank-deficient block as often as not, so they may be
stored as float32 zeros or subnormals; every larger one must be stored faithfully.
"""


@dataclass
class LayerSpectra:
    """Spectra of one layer's query heads, float64, on the CPU."""

    singular_values: np.ndarray  # (H, d_head), descending
    positivity: np.ndarray  # (H,)
    positional: np.ndarray | None = None  # none here: the raw rows of a build without positional spectra
    eigenvalues: np.ndarray | None = None  # (H, d_head) complex mu of the crosses, when computed


def gram_matrices(w: torch.Tensor) -> torch.Tensor:
    """W W^T per head (float64).

    On the CPU through numpy, whose ``a @ a.T`` is a BLAS symmetric rank-k update
    (syrk: half the flops of a general product, ~1.5x faster than torch's batched
    GEMM on the benchmark machine). On a GPU, one batched GEMM.
    """
    import torch

    if w.device.type != "cpu":
        return w @ w.transpose(-1, -2)
    blocks = w.reshape(-1, *w.shape[-2:]).numpy()
    gram = np.empty((blocks.shape[0],) + blocks.shape[1:2] * 2, dtype=blocks.dtype)
    with np.errstate(over="ignore", invalid="ignore"):  # out-of-range weights: check_range reports them
        for i, block in enumerate(blocks):
            np.matmul(block, block.T, out=gram[i])
    return torch.from_numpy(gram).reshape(w.shape[:-1] + w.shape[-2:-1])


def r_factors(w: torch.Tensor, first: int = 0, group: int = 0) -> torch.Tensor:
    """Lower-triangular L with W W^T = L L^T per head, i.e. R = L^T of W^T = Q R.

    ``w`` is (n, d_head, d_model) float64, the heads ``first``, ``first + 1``, ...
    (query heads if ``group`` is 0, else key heads of ``group`` query heads each:
    only for messages). Cholesky of the Gram matrix, after checking its range;
    QR of W^T for the heads where the Cholesky fails (singular Gram matrix) or
    is not accurate enough (:func:`qr_fallback`).
    """
    import torch

    gram = gram_matrices(w)
    check_range(gram, w, first, group)
    lower, info = torch.linalg.cholesky_ex(gram)
    redo = torch.nonzero(qr_fallback(gram, lower, info)).flatten()
    if redo.numel():
        r = torch.linalg.qr(w[redo].transpose(-1, -2), mode="r")[1]
        lower[redo] = r.transpose(-1, -2)
    return lower


def check_range(gram: torch.Tensor, w: torch.Tensor, first: int = 0, group: int = 0) -> None:
    """Raise :class:`WeightRangeError` unless every head block is safe to factor in float64.

    A block is safe when its largest squared row norm g (the Gram diagonal's
    maximum) lies in ``[GRAM_FLOOR, gram_ceiling(d_head)]``, or when it is exactly
    zero (an all-zero head: its spectrum is exactly zero). NaN or Inf weights make
    g NaN or Inf, which fails the test too, so LAPACK only ever sees bounded,
    finite matrices.
    """
    g = gram.diagonal(dim1=-2, dim2=-1).amax(-1)
    if bool(((g >= GRAM_FLOOR) & (g <= gram_ceiling(w.shape[-2]))).all()):
        return
    report_unsafe_blocks(g.cpu().numpy(), w.cpu().numpy(), first, group)


def report_unsafe_blocks(g: np.ndarray, w: np.ndarray, first: int = 0, group: int = 0) -> None:
    """Raise the :class:`WeightRangeError` of the first unsafe block (numpy ``g``, the largest squared row norms).

    All-zero blocks are safe (their spectrum is exactly zero); shared by the torch and numpy kernels.
    """
    ceiling = gram_ceiling(w.shape[-2])
    bad = ~((g >= GRAM_FLOOR) & (g <= ceiling))
    for i in np.flatnonzero(bad).tolist():
        if float(g[i]) == 0.0 and not w[i].any():
            continue  # an all-zero head block
        head = _head_name(first + i, group)
        if not np.isfinite(w[i]).all():
            raise WeightRangeError(f"{head}: NaN or Inf weights: the checkpoint is corrupt")
        raise WeightRangeError(
            f"{head}: weights up to {float(np.abs(w[i]).max()):.1e} in absolute value (largest squared row norm "
            f"{float(g[i]):.1e}) are outside what a float64 factorization handles safely (squared row norms "
            f"{GRAM_FLOOR:.1e} to {ceiling:.1e}): the checkpoint is corrupt or mis-scaled"
        )


def _head_name(index: int, group: int) -> str:
    """``head 5`` for a query head; ``key head 1 (query heads 2-3)`` for a key head."""
    if not group:
        return f"head {index}"
    heads = f"head {index * group}" if group == 1 else f"heads {index * group}-{(index + 1) * group - 1}"
    return f"key head {index} (query {heads})"


def qr_fallback(gram: torch.Tensor, lower: torch.Tensor, info: torch.Tensor) -> torch.Tensor:
    """Heads whose R must come from QR: the Cholesky failed, or its accuracy would miss the target.

    The Cholesky route's relative error grows as eps * kappa^2 (see
    ``CHOLESKY_KAPPA_MAX``); kappa is bounded above by the Frobenius condition number
    ||L||_F ||L^-1||_F, with ||L||_F^2 = trace(W W^T) and ||L^-1||_F from one
    triangular solve per head (d_head^3 / 3 flops, next to the Gram's
    d_head^2 * d_model). A NaN or Inf bound also means QR.
    """
    import torch

    failed = info != 0
    eye = torch.eye(lower.shape[-1], dtype=lower.dtype, device=lower.device)
    usable = torch.where(failed[:, None, None], eye, lower)  # a failed factor holds garbage
    inverse = torch.linalg.solve_triangular(usable, eye.expand_as(usable), upper=False)
    trace = gram.diagonal(dim1=-2, dim2=-1).sum(-1)
    kappa_sq = trace * inverse.square().sum(dim=(-2, -1))
    return failed | ~(kappa_sq <= CHOLESKY_KAPPA_MAX**2)


def cross_matrices(q: torch.Tensor, k: torch.Tensor, heads: range, group: int) -> torch.Tensor:
    """W_K^g (W_Q^h)^T for the query heads ``heads``: one GEMM per key head, no repeated K."""
    import torch

    d_head, d_model = q.shape[-2:]
    blocks = []
    for g in range(heads.start // group, (heads.stop - 1) // group + 1):
        lo, hi = max(heads.start, g * group), min(heads.stop, (g + 1) * group)
        block = k[g] @ q[lo:hi].reshape(-1, d_model).transpose(0, 1)  # (dh, n * dh)
        blocks.append(block.reshape(d_head, hi - lo, d_head).transpose(0, 1))
    return torch.cat(blocks)


def query_matrices(
    q: torch.Tensor, k: torch.Tensor, lk: torch.Tensor, heads: range, group: int, with_positivity: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The d_head x d_head problems of the query heads ``heads``: R_a R_b^T and W_K W_Q^T."""
    import torch

    lq = r_factors(q[heads.start : heads.stop], first=heads.start)  # R_a = lq^T
    kv_index = torch.arange(heads.start, heads.stop, device=q.device) // group
    core = lq.transpose(-1, -2) @ lk[kv_index]  # R_a R_b^T
    return core, cross_matrices(q, k, heads, group) if with_positivity else None


def small_problems(core: torch.Tensor, cross: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Singular values of the cores and eigenvalues of the crosses (CPU tensors, LAPACK)."""
    import torch

    return torch.linalg.svdvals(core), None if cross is None else scaled_eigvals(cross)


def scaled_eigvals(matrices: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of each (..., n, n) matrix, solved on the matrix scaled by a power of two.

    torch's general eigensolver fails to converge ("ill-conditioned or has too many repeated
    eigenvalues") on matrices whose entries are all tiny, e.g. ~1e-20: the folded OV cross of a
    head whose output columns are zero. Scaling by 2^-floor(log2 max|m|) brings the largest entry
    into [1, 2) without rounding a single bit, and the eigenvalues scale back exactly.
    """
    import torch

    peak = matrices.abs().amax(dim=(-2, -1), keepdim=True)
    exponent = torch.where(peak > 0, torch.floor(torch.log2(peak)), torch.zeros_like(peak))
    scale = torch.pow(torch.full_like(peak, 2.0), exponent)
    return torch.linalg.eigvals(matrices / scale) * scale[..., 0]


def float32_storage_problem(singular_values: np.ndarray) -> str | None:
    """Why a layer's (H, d_head) float64 singular values cannot go into the float32 columns, or None.

    The dataset stores s and l = s^2 as float32. A head fails when its s_max is not
    finite or exceeds ``FLOAT32_SV_MAX`` (l would be Inf), or when a singular value
    above ``ACCURACY_FLOOR * s_max`` is below ``FLOAT32_SV_MIN`` (its l would be a
    float32 zero or subnormal). Exact zeros (an all-zero head) are stored exactly.
    The answer names the first failing head (``head 3: ...``).
    """
    s = np.asarray(singular_values, dtype=np.float64)
    top = s.max(axis=-1, initial=0.0)
    too_big = ~(top <= FLOAT32_SV_MAX)
    significant = s > ACCURACY_FLOOR * top[:, None]
    too_small = (significant & (s < FLOAT32_SV_MIN)).any(axis=-1)
    bad = np.flatnonzero(too_big | too_small)
    if not bad.size:
        return None
    head = int(bad[0])
    if too_big[head]:
        value = float(top[head])
        problem = f"does not fit the dataset's float32 columns (eigenvalues up to {_F32.max:.1e})"
    else:
        value = float(s[head][significant[head] & (s[head] < FLOAT32_SV_MIN)].max())
        problem = f"underflows the dataset's float32 columns (eigenvalues from {_F32.tiny:.1e})"
    return (
        f"head {head}: singular value {value:.2e} (eigenvalue {value * value:.2e}) {problem}: "
        "the weights are corrupt or mis-scaled"
    )


def dense_qk_singular_values(wq_head: np.ndarray, wk_head: np.ndarray) -> np.ndarray:
    """Reference: dense float64 SVD of the d_model x d_model W_QK (tests only: O(d^3))."""
    w_qk = np.asarray(wq_head, np.float64).T @ np.asarray(wk_head, np.float64)
    return np.linalg.svd(w_qk, compute_uv=False)[: wq_head.shape[0]]
