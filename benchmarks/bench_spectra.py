#!/usr/bin/env python
"""Spectral kernel vs the original study's algorithm, same process, device and dtype.

For a Llama-3.1-8B-shaped layer (32 query heads / 8 key heads, d_head 128,
d_model 4096) and a Gemma-2-9B-shaped layer (16 / 8, d_head 256, d_model 3584)
with anisotropic random weights (singular values of each head's W_Q, W_K spread
over ~3 orders of magnitude), time

- baseline: the original's shape, float64: per query head a thin SVD of W_Q^T and
  of the repeated W_K^T, then the SVD of the d_head x d_head core (pairing
  corrected so that both are exact);
- ours: ``qk_layer_spectra`` (Cholesky of Gram matrices, one factorization per key
  head, batched), with and without the positivity metric (eigenvalues, which
  the baseline does not compute);

and check both against a dense float64 SVD of W_QK on a sample of heads.

Variants (issue 12), on the Llama-3.1-8B-shaped layer: ``qk_layer_variants`` with
raw + folded + null and 16 offsets (0, 1, 2, 4, ..., 2^14; llama3 rope scaling)
for each of raw and folded, against ``qk_layer_spectra`` (raw alone, with
positivity) in the same run (target <= 3x), once with the 1e3 spread (every
positional core takes the SVD route) and once with real heads' conditioning.
Prints medians of several runs and the ratios last.

    python benchmarks/bench_spectra.py [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from qk_spectra_ds.builder.kernel import qk_layer_spectra, qk_layer_variants
from qk_spectra_ds.builder.rotary import Rotary, inverse_frequencies
from qk_spectra_ds.builder.spectra import dense_qk_singular_values
from qk_spectra_ds.builder.variants import LayerFolding, LayerPlan, haar_rotations

SHAPES = {
    "Llama-3.1-8B layer": dict(n_heads=32, n_kv=8, d_head=128, d_model=4096),
    "Gemma-2-9B layer": dict(n_heads=16, n_kv=8, d_head=256, d_model=3584),
}


VARIANT_SPREADS = (
    (1e3, "pessimistic: every positional core is ill-conditioned and takes the SVD route"),
    (10.0, "like real heads, MiniLM's head blocks have condition 2 to 6: the Gram route"),
)
"""Conditioning of the variants benchmark's head blocks (see variants.GRAM_ROUTE_COND_MAX)."""


def anisotropic(n: int, d_head: int, d_model: int, spread: float, gen: torch.Generator, device: str) -> torch.Tensor:
    """Random (n, d_head, d_model) blocks whose singular values span ``spread`` (log-uniform)."""
    w = torch.randn(n, d_head, d_model, dtype=torch.float64, generator=gen).to(device)
    u, _, vh = torch.linalg.svd(w, full_matrices=False)
    exponents = torch.rand(n, d_head, dtype=torch.float64, generator=gen).to(device) * np.log10(spread)
    s = torch.sort(10.0 ** (-exponents), descending=True).values
    return (u * s[:, None, :]) @ vh


def original_algorithm(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The original study's per-head route, with the factor pairing corrected."""
    group = q.shape[0] // k.shape[0]
    k_rep = k.repeat_interleave(group, dim=0)
    out = []
    for h in range(q.shape[0]):
        _, s_a, vh_a = torch.linalg.svd(q[h].T, full_matrices=False)  # W_Q^T = U_A S_A Vh_A
        _, s_b, vh_b = torch.linalg.svd(k_rep[h].T, full_matrices=False)
        core = (s_a[:, None] * (vh_a @ vh_b.T)) * s_b[None, :]  # W_QK = U_A core U_B^T
        out.append(torch.linalg.svdvals(core))
    return torch.stack(out)


def variant_plan(n_heads: int, d_head: int, d_model: int, n_offsets: int = 16) -> LayerPlan:
    """raw + folded + null with Llama-3.1-8B's rope (llama3 scaling) at 0, 1, 2, 4, ... (n_offsets offsets)."""
    rng = np.random.default_rng(1)
    scaling = dict(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192
    )
    inv, a, kind = inverse_frequencies(500000.0, d_head, scaling, 131072)
    folding = LayerFolding(rng.normal(1.0, 0.3, d_model), False, None, None, d_head**-0.5)
    offsets = (0,) + tuple(2**i for i in range(n_offsets - 1))
    return LayerPlan(
        ("raw", "folded", "null"),
        folding,
        Rotary(inv, a, False, kind),
        offsets,
        haar_rotations(0, "bench", 0, n_heads, d_head),
    )


def work_floor(q: torch.Tensor, k: torch.Tensor, plan: LayerPlan, t_raw: float, repeats: int, device: str):
    """Seconds of the work every variant needs, each piece timed alone with the kernel's threading.

    raw and folded: a raw kernel each (factors, crosses, SVDs, eigenvalues); null: the SVDs and
    eigenvalues of its cores and crosses; positional: per offset other than 0 and per variant
    (raw, folded), the cores of every head against the rotated key factors and their singular
    values by the route the kernel takes (eigvalsh of core core^T for well-conditioned heads,
    else an SVD). Returns (seconds, what they are made of).
    """
    from qk_spectra_ds.builder import raw_numpy
    from qk_spectra_ds.builder.spectra import r_factors
    from qk_spectra_ds.builder.variants import _core_singular_values, _well_conditioned

    group = q.shape[0] // k.shape[0]
    lq, lk = r_factors(q.cpu()), r_factors(k.cpu(), 0, group)
    kv = torch.arange(q.shape[0]) // group
    lq_t = lq.transpose(-1, -2).contiguous()
    cores = (lq_t @ lk[kv]).numpy()
    crosses = np.ascontiguousarray(cores.transpose(0, 2, 1))
    route = _well_conditioned(lq_t, lk, kv.numpy())

    def per_core(fn):
        with raw_numpy.single_threaded_blas():
            torch.set_num_threads(1)
            try:
                raw_numpy.per_core(fn, q.shape[0])
            finally:
                torch.set_num_threads(threads)

    threads = torch.get_num_threads()
    t_small = median_time(
        lambda: per_core(lambda h: raw_numpy.core_problems(cores[h.start : h.stop], crosses[h.start : h.stop])),
        repeats,
        device,
    )
    lq_np, lk_np = lq_t.numpy(), lk.numpy()

    def one_offset(h: range):
        block = np.matmul(
            lq_np[h.start : h.stop], lk_np[kv.numpy()[h.start : h.stop]]
        )  # the cores against R(delta) L_k
        return _core_singular_values(block[None], route[h.start : h.stop])

    t_offset = median_time(lambda: per_core(one_offset), repeats, device)
    n_pos = 2 * sum(1 for delta in plan.offsets if delta != 0)
    floor = 2 * t_raw + t_small + n_pos * t_offset
    parts = (
        f"2 x raw kernel {t_raw:.3f}s + null small problems {t_small:.3f}s + {n_pos} positional offset passes "
        f"x {t_offset * 1e3:.1f} ms"
    )
    return floor, parts


def median_time(fn, repeats: int, device: str) -> float:
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per method (median reported)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--sample", type=int, default=4, help="heads checked against a dense float64 SVD")
    parser.add_argument("--variants-only", action="store_true", help="only the variants timing (skip the baseline)")
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, float64")
    lines = []
    for name, shape in {} if args.variants_only else SHAPES.items():
        q = anisotropic(shape["n_heads"], shape["d_head"], shape["d_model"], 1e3, gen, args.device)
        k = anisotropic(shape["n_kv"], shape["d_head"], shape["d_model"], 1e3, gen, args.device)
        original_algorithm(q[:2], k[:1])  # warm up LAPACK / kernels
        qk_layer_spectra(q, k)
        t_base = median_time(lambda q=q, k=k: original_algorithm(q, k), args.repeats, args.device)
        t_sv = median_time(lambda q=q, k=k: qk_layer_spectra(q, k, with_positivity=False), args.repeats, args.device)
        t_all = median_time(lambda q=q, k=k: qk_layer_spectra(q, k), args.repeats, args.device)
        ours = qk_layer_spectra(q, k).singular_values
        base = original_algorithm(q, k).cpu().numpy()
        group = shape["n_heads"] // shape["n_kv"]
        heads = np.linspace(0, shape["n_heads"] - 1, args.sample).astype(int)
        err_ours = err_base = 0.0
        for h in heads:
            ref = dense_qk_singular_values(q[h].cpu().numpy(), k[h // group].cpu().numpy())
            err_ours = max(err_ours, float(np.max(np.abs(ours[h] - ref) / ref)))
            err_base = max(err_base, float(np.max(np.abs(base[h] - ref) / ref)))
        print(
            f"{name}: baseline {t_base:.3f}s | ours, singular values {t_sv:.3f}s | ours with positivity {t_all:.3f}s"
            f" | max rel err vs dense SVD ({len(heads)} heads): ours {err_ours:.1e}, baseline {err_base:.1e}"
        )
        lines.append(
            f"RATIO {name}: kernel (singular values) {t_base / t_sv:.1f}x faster, "
            f"with positivity {t_base / t_all:.1f}x faster, max rel err {err_ours:.1e} (target >= 8x, <= 1e-6)"
        )
    name, shape = "Llama-3.1-8B layer", SHAPES["Llama-3.1-8B layer"]
    plan = variant_plan(shape["n_heads"], shape["d_head"], shape["d_model"])
    for spread, what in VARIANT_SPREADS:
        gen = torch.Generator().manual_seed(0)
        q = anisotropic(shape["n_heads"], shape["d_head"], shape["d_model"], spread, gen, args.device)
        k = anisotropic(shape["n_kv"], shape["d_head"], shape["d_model"], spread, gen, args.device)
        qk_layer_variants(q, k, plan)  # warm up
        t_raw = median_time(lambda q=q, k=k: qk_layer_spectra(q, k), args.repeats, args.device)
        t_var = median_time(lambda q=q, k=k: qk_layer_variants(q, k, plan), args.repeats, args.device)
        t_raw_again = median_time(lambda q=q, k=k: qk_layer_spectra(q, k), args.repeats, args.device)
        t_raw = min(t_raw, t_raw_again)  # the machine may be shared: the faster of two raw timings (conservative ratio)
        out = qk_layer_variants(q, k, plan)
        floor, parts = work_floor(q, k, plan, t_raw, args.repeats, args.device)
        same = np.array_equal(out["raw"].singular_values, qk_layer_spectra(q, k).singular_values)
        print(
            f"{name}, head blocks with singular values spread {spread:g} ({what}): raw alone (with positivity) "
            f"{t_raw:.3f}s | raw + folded + null + {len(plan.offsets)} offsets for raw and folded {t_var:.3f}s | "
            f"raw rows identical to qk_layer_spectra: {same}"
        )
        print(f"  work floor {floor:.3f}s = {parts}")
        lines.append(
            f"RATIO variants {name}, spread {spread:g}: all variants / raw alone = {t_var / t_raw:.2f}x "
            f"(target <= 3x); / work floor {floor / t_raw:.2f}x raw = {t_var / floor:.2f}x (target <= 1.2x)"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
